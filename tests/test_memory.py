"""memory.release: freed heap pages go back to the system (glibc), measured in a child's own RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sensor_sd import memory

# ~200 MB in 2 KiB blocks (malloc's, above pymalloc's 512 bytes); every tenth is kept, so the heap
# cannot shrink from its top by free() alone. Prints RSS (KiB) before and after the release.
CHILD = """
import re, sys
from sensor_sd import memory
if sys.argv[1] == "without-trim":
    memory._MALLOC_TRIM = None
rss = lambda: int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
blocks = [bytes(2048) for _ in range(100_000)]
kept = blocks[::10]
del blocks
before = rss()
memory.release()
print(before, rss())
"""


def _freed_kib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, out.stdout.split())
    return before - after


@pytest.mark.skipif(memory._MALLOC_TRIM is None, reason="not glibc: only the collection runs")
def test_release_hands_freed_heap_pages_back() -> None:
    assert _freed_kib("with-trim") > 100 * 1024  # of ~180 MB freed, most comes back
    assert _freed_kib("without-trim") < 20 * 1024  # the collection alone leaves the pages in the heap
