"""Bounded reads of operator-named files (token, CA bundle, web config and its PEM files, targets file).

A path in a variable may name anything: a FIFO blocks `open()` until a writer
comes, `/dev/zero` never ends, a directory or a socket cannot be read. Such a
file is refused with a clear reason before any byte is read: the path is
stat'ed first (a device is never opened), then opened non-blocking and
checked again on the open descriptor (it may have been swapped in between),
and at most `limit + 1` bytes are read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

TOKEN_FILE_LIMIT = 64 * 1024
CA_FILE_LIMIT = 16 * 1024 * 1024  # a full system bundle is ~0.2 MiB
WEB_CONFIG_LIMIT = 1024 * 1024
PEM_FILE_LIMIT = 1024 * 1024  # the web config's certificate chain or key: a few KiB

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class UnreadableFile(ValueError):
    """The file cannot be read as a bounded regular file; the message says why, without the path."""


def kind(mode: int) -> str:
    """'a FIFO', 'a directory', ... for a non-regular file mode."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; UnreadableFile otherwise, never blocking."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise UnreadableFile(_reason(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFile(f"{kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(_reason(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
            raise UnreadableFile(f"{kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UnreadableFile(f"{st.st_size} bytes, larger than the {limit} allowed")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UnreadableFile(_reason(exc)) from None
    finally:
        os.close(fd)
    if size > limit:  # grew while we read
        raise UnreadableFile(f"larger than the {limit} bytes allowed")
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)
