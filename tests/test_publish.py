"""File publisher: atomic, durable, skipped when unchanged, old file kept on error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensor_sd.errors import PublishError
from sensor_sd.publish import FilePublisher, write_atomic


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


def test_load_removes_temp_files_of_killed_writers(tmp_path: Path) -> None:
    """A SIGKILL between temp-file creation and rename leaves `.t.json.<pid>.tmp`; the next start cleans up."""
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
    assert FilePublisher(tmp_path / "t.json").load() == b"[]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "t.json"])
