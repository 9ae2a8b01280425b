"""File publisher: atomic, durable, skipped when unchanged, old file kept on error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensor_sd.errors import PublishError
from sensor_sd.publish.file import FilePublisher, LockHeld, write_atomic


def test_creates_directory_and_writes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "targets.json"
    write_atomic(target, b"[1]\n")
    assert target.read_bytes() == b"[1]\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["targets.json"]  # no temp file left


def test_unchanged_bytes_are_not_rewritten(tmp_path: Path) -> None:
    pub = FilePublisher(tmp_path / "t.json")
    assert pub.publish(b"[]\n")
    inode = (tmp_path / "t.json").stat().st_ino
    assert not pub.publish(b"[]\n")
    assert (tmp_path / "t.json").stat().st_ino == inode
    assert pub.publish(b"[1]\n")
    assert (tmp_path / "t.json").stat().st_ino != inode  # replaced by rename, not rewritten in place


def test_file_removed_behind_our_back_is_rewritten(tmp_path: Path) -> None:
    pub = FilePublisher(tmp_path / "t.json")
    pub.publish(b"[]\n")
    (tmp_path / "t.json").unlink()
    assert pub.publish(b"[]\n")
    assert (tmp_path / "t.json").read_bytes() == b"[]\n"


def test_load_returns_existing_bytes(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_bytes(b"[7]")
    pub = FilePublisher(tmp_path / "t.json")
    assert pub.load() == b"[7]"
    assert not pub.publish(b"[7]")  # the loaded bytes count as written
    assert FilePublisher(tmp_path / "missing.json").load() is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; tests/chaos covers it as nobody")
def test_read_only_directory_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    target.write_bytes(b"old")
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PublishError, match="cannot write"):
            write_atomic(target, b"new")
    finally:
        tmp_path.chmod(0o755)
    assert target.read_bytes() == b"old"


def test_write_error_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    target.write_bytes(b"old")
    # A directory where the temp file should go makes the open fail, even as root.
    (tmp_path / f".t.json.{os.getpid()}.tmp").mkdir()
    with pytest.raises(PublishError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"


def test_target_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "t.json").mkdir()
    with pytest.raises(PublishError):
        write_atomic(tmp_path / "t.json", b"x")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_claim_removes_temp_files_of_killed_writers(tmp_path: Path) -> None:
    """A SIGKILL between temp-file creation and rename leaves `.t.json.<pid>.tmp`; the next writer's start cleans up.

    `load` alone (what `sensor-sd check` does) reads only: it deletes nothing.
    """
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".t.json.{dead.stdout.strip()}.tmp"
    own = tmp_path / f".t.json.{os.getpid()}.tmp"
    live = tmp_path / f".t.json.{os.getppid()}.tmp"  # a writer that is still running: left alone
    other = tmp_path / ".other.json.1.tmp"
    for p in (stale, own, live, other):
        p.write_bytes(b"[")
    (tmp_path / "t.json").write_bytes(b"[]\n")
    everything = sorted(p.name for p in tmp_path.iterdir())
    assert FilePublisher(tmp_path / "t.json").load() == b"[]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == everything
    pub = FilePublisher(tmp_path / "t.json")
    pub.claim()
    assert pub.load() == b"[]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "t.json", ".t.json-lock"])


# --- symlinks, non-regular files, one writer (issue 10 #6) ---------------------------------------


def test_a_symlinked_file_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    """Kubernetes-style volume: targets.json -> ..data/targets.json -> ..2026_v1/targets.json."""
    real_dir = tmp_path / "..2026_v1"
    real_dir.mkdir()
    (real_dir / "targets.json").write_bytes(b"[]\n")
    (tmp_path / "..data").symlink_to("..2026_v1")
    link = tmp_path / "targets.json"
    link.symlink_to("..data/targets.json")
    old_inode = (real_dir / "targets.json").stat().st_ino
    pub = FilePublisher(link)
    pub.claim()
    assert pub.load() == b"[]\n"
    assert pub.publish(b"[1]\n")
    assert link.is_symlink() and os.readlink(link) == "..data/targets.json"
    assert (tmp_path / "..data").is_symlink()
    assert (real_dir / "targets.json").read_bytes() == b"[1]\n"
    assert (real_dir / "targets.json").stat().st_ino != old_inode  # replaced by rename, in its own directory
    assert sorted(p.name for p in real_dir.iterdir()) == [".targets.json-lock", "targets.json"]  # no temp left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..2026_v1", "..data", "targets.json"]


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "t.json"
    link.symlink_to(tmp_path / "real" / "t.json")
    write_atomic(link, b"[]\n")
    assert link.is_symlink() and (tmp_path / "real" / "t.json").read_bytes() == b"[]\n"


@pytest.mark.parametrize("make", ["fifo", "directory", "symlink_to_fifo", "loop"])
def test_anything_but_a_regular_file_is_refused_never_replaced(tmp_path: Path, make: str) -> None:
    path = tmp_path / "t.json"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "directory":
        path.mkdir()
    elif make == "symlink_to_fifo":
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    else:
        path.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(path)
    before = os.lstat(path)
    pub = FilePublisher(path)
    for call in (pub.inspect, pub.claim, pub.load, lambda: pub.publish(b"[]\n"), lambda: write_atomic(path, b"[]")):
        with pytest.raises(PublishError, match="not a regular file"):
            call()
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_character_device_is_refused(tmp_path: Path) -> None:
    """A symlink to /dev/null stands for TARGETS_FILE=/dev/null: refused, /dev/null is only stat'ed."""
    link = tmp_path / "t.json"
    link.symlink_to("/dev/null")
    with pytest.raises(PublishError, match="a character device, not a regular file"):
        write_atomic(link, b"[]")
    assert Path("/dev/null").is_char_device()


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from sensor_sd.publish.file import FilePublisher\n"
        f"FilePublisher(Path({str(tmp_path / 't.json')!r})).claim(); print('locked', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(LockHeld, match=rf"another sensor-sd \(pid@host {holder.pid}@{socket.gethostname()}"):
            FilePublisher(tmp_path / "t.json").claim()
    finally:
        holder.communicate("", timeout=10)
    FilePublisher(tmp_path / "t.json").claim()  # the lock went with its process


def test_a_removed_lock_file_is_taken_again_before_the_next_write(tmp_path: Path) -> None:
    """The directory (and with it the lock file) removed: the writer re-locks the new directory's file."""
    import shutil

    path = tmp_path / "out" / "t.json"
    pub = FilePublisher(path)
    pub.claim()
    pub.publish(b"[]\n")
    shutil.rmtree(tmp_path / "out")
    assert pub.publish(b"[]\n")
    with pytest.raises(LockHeld):
        FilePublisher(path).claim()


def test_removed_or_changed_file_is_restored_and_reported(tmp_path: Path) -> None:
    seen: list[str] = []
    path = tmp_path / "t.json"
    pub = FilePublisher(path, on_restore=seen.append)
    assert pub.publish(b"[1]\n") and not pub.changed_under_us()
    path.unlink()
    assert pub.changed_under_us() and pub.publish(b"[1]\n") and seen == ["missing"]
    path.write_bytes(b"garbage")
    assert pub.changed_under_us() and pub.publish(b"[1]\n") and seen == ["missing", "changed"]
    assert path.read_bytes() == b"[1]\n"
    os.utime(path)  # touched, same bytes: nothing to restore
    assert pub.changed_under_us() and not pub.publish(b"[1]\n") and not pub.changed_under_us()
    assert pub.publish(b"[2]\n") and seen == ["missing", "changed"]  # a new snapshot is no restore
