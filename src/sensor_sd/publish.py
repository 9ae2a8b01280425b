"""Publishers: put a snapshot where Prometheus reads it.

The file is replaced atomically and durably (temp file in the same directory,
fsync, rename, fsync of the directory): a reader sees the old bytes or the new
bytes, never a torn or empty file, even across a crash or power loss.
"""

from __future__ import annotations

import os
from pathlib import Path

from sensor_sd.errors import PublishError


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably; raise PublishError and leave the old file."""
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise PublishError(f"cannot write {path}: {exc.strerror or exc}") from None


def remove_stale_temps(path: Path) -> int:
    """Delete temp files that killed writers left next to `path`; returns how many.

    A SIGKILL between creating `.<name>.<pid>.tmp` and the rename leaves it
    behind, and every restart has a new pid. Files of a live other process are
    kept (its rename would fail otherwise); ours and dead pids' go.
    """
    removed = 0
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return 0
    for name in names:
        pid = name[len(prefix):-len(".tmp")] if name.startswith(prefix) and name.endswith(".tmp") else ""
        if not pid.isascii() or not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            os.unlink(path.parent / name)
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


class FilePublisher:
    """Writes the file_sd file, skipping the write when the bytes are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: tuple[bytes, int, int] | None = None  # bytes, size, mtime_ns of our last write

    def load(self) -> bytes | None:
        """The existing file's bytes (last known good at start), or None when absent."""
        remove_stale_temps(self.path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PublishError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._remember(data)
        return data

    def publish(self, data: bytes) -> bool:
        """Write `data` unless the file already holds exactly it; True when written."""
        if self._unchanged(data):
            return False
        write_atomic(self.path, data)
        self._remember(data)
        return True

    def _unchanged(self, data: bytes) -> bool:
        if self._written is None or self._written[0] != data:
            return False
        try:
            st = self.path.stat()
        except OSError:
            return False  # removed behind our back: write it again
        return (st.st_size, st.st_mtime_ns) == self._written[1:]

    def _remember(self, data: bytes) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._written = None
            return
        self._written = (data, st.st_size, st.st_mtime_ns)
