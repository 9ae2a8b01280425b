"""Publishers: put a snapshot where Prometheus reads it.

The file is replaced atomically and durably (temp file in the same directory,
fsync, rename, fsync of the directory): a reader sees the old bytes or the new
bytes, never a torn or empty file, even across a crash or power loss.

`TARGETS_FILE` may be a symlink (Kubernetes volumes are built of them): the
write goes through to the link's final target, replaced in *its* directory, and
the link stays a link. Anything else that is not a regular file (a device, a
FIFO, a directory) is refused, never replaced: `TARGETS_FILE=/dev/null` must
not turn the system's /dev/null into a regular file. One writer per file: a
daemon claims an advisory lock (`flock` on `.<name>-lock` next to the target,
holding `pid@host`) and a second one is refused naming the first.

`FileOutput` is the file as the store's subscriber: it writes each snapshot,
counts and logs the writes, and while the daemon runs it alone checks the
file (one stat per check) and rewrites it when it vanished, was changed by
someone else, or its last write failed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensor_sd.errors import PublishError
from sensor_sd.files import UnreadableFile, kind, read_regular
from sensor_sd.log import event
from sensor_sd.metrics import Metrics
from sensor_sd.targets import Snapshot, TargetGroup, parse_file

TARGETS_FILE_LIMIT = 4 * 1024**3  # a sanity bound for reading back our own file (1M targets are ~25 MB)
_HOLDER_LIMIT = 4096
FILE_CHECK_SECONDS = 2.0  # how often, at most, the published file is checked for changes made by others
RETRY_SECONDS = 30.0  # how often, at most, a failed write is tried again while no new snapshot comes


class LockHeld(PublishError):
    """Another process holds the file's writer lock."""

    reason = "locked"


def resolve(path: Path) -> Path:
    """The file a write to `path` replaces: `path` itself, or the end of its symlink chain.

    PublishError when that is not a regular file (or absent), or the links loop.
    """
    real = Path(os.path.realpath(path))
    try:
        mode = os.lstat(real).st_mode
    except OSError:
        return real  # absent (a first write, a dangling link) or unreachable: the write reports its own error
    if stat.S_ISLNK(mode):
        raise PublishError(f"{path} is a symlink loop, not a regular file: refusing to write it")
    if not stat.S_ISREG(mode):
        shown = f"{path}" if real == Path(os.path.abspath(path)) else f"{path} (-> {real})"
        raise PublishError(f"{shown} is {kind(mode)}, not a regular file: refusing to replace it")
    return real


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` (or its symlink's target) with `data` atomically and durably; PublishError leaves the old file."""
    real = resolve(path)
    directory = real.parent
    tmp = directory / f".{real.name}.{os.getpid()}.tmp"
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
        os.replace(tmp, real)
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
    """Delete temp files that killed writers left next to `path` (or its symlink's target); returns how many.

    A SIGKILL between creating `.<name>.<pid>.tmp` and the rename leaves it
    behind, and every restart has a new pid. Files of a live other process are
    kept (its rename would fail otherwise); ours and dead pids' go.
    """
    real = Path(os.path.realpath(path))
    removed = 0
    prefix = f".{real.name}."
    try:
        names = os.listdir(real.parent)
    except OSError:
        return 0
    for name in names:
        pid = name[len(prefix):-len(".tmp")] if name.startswith(prefix) and name.endswith(".tmp") else ""
        if not pid.isascii() or not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            os.unlink(real.parent / name)
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


class WriterLock:
    """An advisory `flock` on `.<name>-lock` beside the target: one writer per file, across processes.

    The lock file is never removed (removing it would let two writers lock two
    different inodes); its content names the holder for the refusal message.
    If the directory is removed or the lock file deleted, `ensure` notices (the
    path no longer names our inode) and locks the new file.
    """

    def __init__(self, target: Path) -> None:
        self.path = target.parent / f".{target.name}-lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Lock, or LockHeld naming the holder; OSError when the lock file cannot be created (read-only dir)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"{self.path.parent / self.path.name[1:-5]} is written by another sensor-sd "
                           f"({self.holder()}, lock {self.path}): one writer per file") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        self.release()
        self._fd = fd

    def holder(self) -> str:
        try:
            text = read_regular(self.path, _HOLDER_LIMIT).decode("utf-8", "replace").strip()
        except UnreadableFile:
            text = ""
        return f"pid@host {text}" if text else "holder unknown"

    def ensure(self) -> None:
        """Still ours? Re-lock when the lock file was removed or replaced under us (LockHeld if someone took it)."""
        if self._fd is not None:
            try:
                mine, now = os.fstat(self._fd), os.stat(self.path)
                if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                    return
            except OSError:
                pass
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.acquire()
        except LockHeld:
            raise
        except OSError:
            pass  # cannot lock here (read-only, gone): the write itself will fail and be reported

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@dataclass(frozen=True, slots=True)
class _Written:
    """What we last wrote (or loaded), and the file's identity right after."""

    data: bytes
    identity: tuple[int, int, int, int, int]  # dev, inode, size, mtime ns, ctime ns


def _identity(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FilePublisher:
    """Writes the file_sd file, skipping the write when the bytes are unchanged.

    A file removed or changed behind our back (another tool, a second
    `make run`) is noticed by its identity (inode, size, mtime, ctime) and
    rewritten from the snapshot; `on_restore` is told why.
    """

    def __init__(self, path: Path, *, on_restore: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._on_restore = on_restore
        self._written: _Written | None = None
        self._lock: WriterLock | None = None

    def inspect(self) -> None:
        """PublishError when the path is not a regular file, a symlink to one, or absent. Reads only."""
        resolve(self.path)

    def claim(self) -> None:
        """Become the file's one writer (a daemon or `once` at start): lock, then remove dead writers' temps.

        LockHeld when another process writes it; PublishError when it is not a regular file. A directory
        where no lock file can be created (read-only) does not stop the start: the writes report it.
        """
        real = resolve(self.path)
        self._lock = WriterLock(real)
        self._lock.ensure()
        remove_stale_temps(self.path)

    def load(self) -> bytes | None:
        """The existing file's bytes (last known good at start), or None when absent. Reads only."""
        try:
            real = resolve(self.path)
            data = read_regular(real, TARGETS_FILE_LIMIT)
        except UnreadableFile as exc:
            if not os.path.lexists(self.path) or not os.path.exists(self.path):
                return None
            raise PublishError(f"cannot read {self.path}: {exc}") from None
        self._remember(data)
        return data

    @property
    def written(self) -> bytes | None:
        """The bytes we last wrote or loaded; None before either."""
        return self._written.data if self._written is not None else None

    def changed_under_us(self) -> bool:
        """True when the file we last wrote is gone or is not what we wrote (cheap: one stat)."""
        return self._written is not None and _identity(self.path) != self._written.identity

    def publish(self, data: bytes) -> bool:
        """Write `data` unless the file already holds exactly it; True when written."""
        restore: str | None = None
        if self._written is not None and self._written.data == data:
            identity = _identity(self.path)
            if identity == self._written.identity:
                return False
            if identity is None:
                restore = "missing"
            elif self._holds(data):
                self._remember(data)  # touched or re-linked, same bytes: nothing to do
                return False
            else:
                restore = "changed"
        if self._lock is not None:
            self._lock.ensure()
        write_atomic(self.path, data)
        self._remember(data)
        if restore is not None and self._on_restore is not None:
            self._on_restore(restore)
        return True

    def _holds(self, data: bytes) -> bool:
        try:
            return read_regular(self.path, len(data)) == data
        except UnreadableFile:
            return False

    def _remember(self, data: bytes) -> None:
        identity = _identity(self.path)
        self._written = _Written(data, identity) if identity is not None else None


class FileOutput:
    """The targets file as a subscriber of the store: writes, counts and logs; `keep` watches it while running."""

    def __init__(self, path: Path, metrics: Metrics, logger: logging.Logger, *, interval: float) -> None:
        self.publisher = FilePublisher(path, on_restore=self._restored)
        self._metrics = metrics
        self._log = logger
        self._check = min(interval, FILE_CHECK_SECONDS)
        self._retry = min(interval, RETRY_SECONDS)
        self._lock = asyncio.Lock()  # one write at a time, so an older snapshot never follows a newer one
        self._failed: float | None = None  # monotonic time of the last failed write; None while the file is current

    @property
    def path(self) -> Path:
        return self.publisher.path

    def load(self) -> list[TargetGroup] | None:
        """The existing file's groups (last known good at start); None when absent or unusable (then logged)."""
        try:
            data = self.publisher.load()
            return None if data is None else parse_file(data)
        except (PublishError, ValueError) as exc:
            # A corrupt file is reported and left in place for a human to look at.
            self._metrics.publish_errors.labels(output="file_load").inc()
            event(self._log, logging.ERROR, "existing targets file unusable, not loaded", file=str(self.path),
                  error=str(exc))
            return None

    async def __call__(self, snapshot: Snapshot) -> None:
        """Write the snapshot unless the file holds it already; a failure keeps the previous file."""
        async with self._lock:
            await self._write(snapshot)

    async def _write(self, snapshot: Snapshot) -> None:
        try:
            if await asyncio.to_thread(self.publisher.publish, snapshot.body):
                self._metrics.file_writes.inc()
                event(self._log, logging.DEBUG, "targets file written", file=str(self.path), targets=snapshot.count)
            self._failed = None
        except PublishError as exc:
            self._failed = time.monotonic()
            self._metrics.publish_errors.labels(output="file").inc()
            event(self._log, logging.ERROR, "targets file not written, previous file kept", error=str(exc))

    def _restored(self, why: str) -> None:
        """The published file vanished or changed under us and was rewritten from the snapshot."""
        self._metrics.file_restores.inc()
        event(self._log, logging.WARNING, "targets file changed under sensor-sd, rewritten from the snapshot",
              file=str(self.path), found=why)

    async def keep(self, current: Callable[[], Snapshot | None], stop: asyncio.Event) -> None:
        """Until `stop`: rewrite the file from `current()` when it changed under us or its last write failed.

        Polls write only after a change; during an inventory outage this is what restores the file (a second
        `make run` used to delete it for minutes) and what retries a write that failed (a full disk freed).
        One stat per check, every min(UPDATE_INTERVAL, FILE_CHECK_SECONDS); a retry at most every
        min(UPDATE_INTERVAL, RETRY_SECONDS).
        """
        failing = False
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self._check)
                return
            except asyncio.TimeoutError:
                pass
            try:
                async with self._lock:  # `current()` read under the lock: the newest snapshot, never an older one
                    snapshot = current()
                    retry = self._failed is not None and time.monotonic() - self._failed >= self._retry
                    if snapshot is not None and (retry or self.publisher.changed_under_us()):
                        await self._write(snapshot)
                failing = False
            except Exception:  # noqa: BLE001 - a bug here must not end the daemon; the polls still publish
                if not failing:  # once per streak, with its traceback
                    self._log.exception("targets file check failed")
                failing = True
