"""Handing freed heap back to the system, after a burst that left it behind.

glibc keeps pages freed by Python inside its heap, so RSS stays at a burst's peak:
the start (imports, the configuration, the first poll's body and its decoding) and
a crowd of connections (`web.connections`) each leave megabytes that no one uses
again. A collection first frees what reference cycles still hold, then
`malloc_trim(0)` returns the free pages. Elsewhere than glibc, only the collection runs.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

AFTER_START_SECONDS = 5.0  # `run` hands the start's garbage back once, this long after it began serving


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def release() -> None:
    """One collection, then the heap's free pages back to the system (the loop pauses in proportion to the heap)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
