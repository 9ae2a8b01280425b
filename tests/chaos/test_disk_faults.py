"""Disk faults under `sensor-sd run`: read-only directory, file size limit, directory removed.

For each fault: one clear ERROR log line per failed write naming the file and
the OS error, `sensor_sd_publish_errors_total{output="file"}` counts it, the
previous file stays byte for byte (where one exists), no temp file is left,
the SD stays healthy and ready, and the next poll after the fault clears
writes the current targets.

Permissions only mean something for a non-root process, and CI runs as root:
the read-only case runs the SD as `nobody` when the tests run as root (as the
current user otherwise). The child imports sensor-sd as root, then drops to
`nobody` before it reads any setting or touches the targets file: the clone
and its virtualenv may sit where `nobody` cannot read (a 0700 home
directory), yet every file operation under test runs without privileges.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localstack.config import Ports, StackConfig
from localstack.net import LOOPBACK, admin_call, free_port, http_get, http_ok, wait_until
from localstack.procs import Proc, sensor_sd_argv, spawn
from localstack.stack import Stack

NOBODY = 65534
LIST_A = [f"sensor_{i}" for i in range(100)]
LIST_B = LIST_A + [f"sensor_{i}" for i in range(100, 110)]
NOT_WRITTEN = "targets file not written, previous file kept"


def put(url: str, body: Any) -> None:
    admin_call(url, "PUT", body)


def targets(body: bytes) -> set[str]:
    return {t.rsplit(":", 1)[0] for g in json.loads(body) for t in g["targets"]}


@dataclass
class SD:
    proc: Proc
    port: int

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def publish_errors(self) -> float:
        status, body = http_get(self.url("/metrics"))
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == "sensor_sd_publish_errors_total" and s.labels.get("output") == "file":
                    return s.value
        return 0.0

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.proc.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def served(self) -> set[str]:
        status, body = http_get(self.url("/targets"))
        assert status == 200
        return targets(body)

    def healthy(self) -> None:
        assert http_ok(self.url("/-/healthy")) and http_ok(self.url("/-/ready"))


@dataclass
class Env:
    stack: Stack
    dir: Path  # the targets directory, inside a directory every user may traverse

    @property
    def file(self) -> Path:
        return self.dir / "targets.json"

    def inventory(self, items: list[str]) -> None:
        put(self.stack.url("inventory", "/admin/sensors"), items)

    def start(self, as_nobody: bool = False) -> SD:
        port = free_port()
        env = {**self.stack.sd_env(), "TARGETS_FILE": str(self.file), "LISTEN_ADDRESS": f"{LOOPBACK}:{port}",
               "UPDATE_INTERVAL": "0.2", "LOG_LEVEL": "warning"}
        argv = sensor_sd_argv("run")
        if as_nobody and os.geteuid() == 0:
            argv = [sys.executable, "-c", AS_NOBODY, str(NOBODY), "run"]
        proc = spawn(f"sensor-sd-{port}", argv, self.stack.logdir, env)
        sd = SD(proc, port)
        wait_until(lambda: proc.popen.poll() is not None or http_ok(sd.url("/-/ready")), 30, "sensor-sd ready")
        assert proc.alive(), proc.tail()
        if as_nobody and os.geteuid() == 0:
            assert _ids(proc.popen.pid) == {NOBODY}, "sensor-sd must run with no root uid or gid left"
        return sd

    def once(self) -> None:
        proc = spawn("sensor-sd-once", sensor_sd_argv("once"), self.stack.logdir,
                     {**self.stack.sd_env(), "TARGETS_FILE": str(self.file)})
        assert proc.popen.wait(30) == 0, proc.tail()


# Imports every sensor_sd module (and the thread pool asyncio.to_thread loads lazily) as root, then drops
# uid, gid and supplementary groups for good before sensor-sd's main runs.
AS_NOBODY = """
import concurrent.futures.thread, importlib, os, pkgutil, sys
import sensor_sd, sensor_sd.cli
for mod in pkgutil.walk_packages(sensor_sd.__path__, "sensor_sd."):
    if not mod.name.endswith("__main__"):  # that one would run the CLI on import
        importlib.import_module(mod.name)
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
raise SystemExit(sensor_sd.cli.main(sys.argv[2:]))
"""


def _ids(pid: int) -> set[int]:
    """Every real, effective, saved and filesystem uid and gid of a process (/proc/PID/status)."""
    ids: set[int] = set()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("Uid:", "Gid:")):
            ids.update(int(x) for x in line.split()[1:])
    return ids


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Env]:
    cfg = StackConfig(workdir=tmp_path, ports=Ports.ephemeral())
    base = Path(tempfile.mkdtemp(prefix="sensor-sd-disk-"))  # pytest's tmp dirs are private to root
    try:
        base.chmod(0o755)
        (base / "targets").mkdir(mode=0o755)
        with Stack(cfg) as stack:
            stack.start(("inventory",))
            yield Env(stack, base / "targets")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _counted_and_logged(sd: SD) -> tuple[float, list[dict[str, Any]]] | None:
    """The failed-write counter and the NOT_WRITTEN log lines, read while no write failed in between.

    sensor-sd counts and logs a failed write in one step of its event loop, so with the
    counter unchanged across the log read, the two describe the same writes.
    """
    before = sd.publish_errors()
    lines = [e for e in sd.log() if e.get("msg") == NOT_WRITTEN]
    return (before, lines) if sd.publish_errors() == before else None


def _fault_window(sd: SD, env: Env, old: bytes | None, reason: str, expected: list[str] = LIST_B,
                  polls: int = 3) -> None:
    """The SD has the new list but cannot write it: errors counted and logged, old file kept."""
    wait_until(lambda: sd.publish_errors() >= polls, 30, f"{polls} failed writes")
    if old is None:
        assert not env.file.exists()
    else:
        assert env.file.read_bytes() == old
    assert sd.served() == set(expected)  # http_sd still serves the current snapshot
    sd.healthy()
    counted, lines = wait_until(lambda: _counted_and_logged(sd), 10, "a moment between two failed writes")
    # One line per failed write, no more, no fewer: the log and the counter agree exactly.
    assert len(lines) == counted >= polls and all(e["level"] == "error" for e in lines), (counted, lines)
    assert all(str(env.file) in e["error"] and reason in e["error"] for e in lines), lines[0]
    if env.dir.is_dir():
        assert not [p for p in env.dir.iterdir() if p.name.endswith(".tmp")]


def _recovered(sd: SD, env: Env, expected: list[str] = LIST_B) -> None:
    wait_until(lambda: env.file.is_file() and targets(env.file.read_bytes()) == set(expected), 30,
               "the file to be written once the fault clears")
    sd.healthy()
    assert not [p for p in env.dir.iterdir() if p.name.endswith(".tmp")]
    sd.proc.popen.send_signal(15)
    assert sd.proc.popen.wait(10) == 0


def test_read_only_directory_as_non_root(disk: Env) -> None:
    """The targets directory belongs to root; sensor-sd runs as nobody and cannot write into it."""
    disk.inventory(LIST_A)
    disk.once()  # written by root: the last known good file
    old = disk.file.read_bytes()
    sd = disk.start(as_nobody=True)
    if os.geteuid() != 0:
        disk.dir.chmod(0o555)
    assert sd.served() == set(LIST_A)  # loaded and polled, nothing to write yet
    disk.inventory(LIST_B)
    _fault_window(sd, disk, old, "Permission denied")
    if os.geteuid() == 0:
        os.chown(disk.dir, NOBODY, NOBODY)  # the operator fixes the ownership
    else:
        disk.dir.chmod(0o755)
    _recovered(sd, disk)


def test_file_size_limit(disk: Env) -> None:
    """RLIMIT_FSIZE below the new file's size: the write fails with EFBIG (SIGXFSZ is ignored by Python)."""
    big = LIST_A + [f"sensor_with_a_rather_long_name_{i}" for i in range(3000)]  # ~120 KB of JSON
    disk.inventory(LIST_A)
    sd = disk.start()
    wait_until(lambda: disk.file.exists() and targets(disk.file.read_bytes()) == set(LIST_A), 30, "first file")
    old = disk.file.read_bytes()
    _, hard = resource.prlimit(sd.proc.popen.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(sd.proc.popen.pid, resource.RLIMIT_FSIZE, (64 * 1024, hard))  # soft limit only
    disk.inventory(big)
    _fault_window(sd, disk, old, "File too large", big)
    assert sd.proc.alive()  # SIGXFSZ did not kill it
    resource.prlimit(sd.proc.popen.pid, resource.RLIMIT_FSIZE, (hard, hard))  # the fault clears
    _recovered(sd, disk, big)


def test_directory_removed_is_recreated(disk: Env) -> None:
    """The directory vanishes while running: the next poll recreates it with the current targets."""
    disk.inventory(LIST_A)
    sd = disk.start()
    wait_until(lambda: disk.file.exists() and targets(disk.file.read_bytes()) == set(LIST_A), 30, "first file")
    shutil.rmtree(disk.dir)
    wait_until(lambda: disk.file.exists() and targets(disk.file.read_bytes()) == set(LIST_A), 30,
               "file recreated after its directory was removed")
    assert sd.publish_errors() == 0
    sd.healthy()


def test_directory_replaced_by_a_file(disk: Env) -> None:
    """The directory is removed and a plain file takes its path: writes fail until it is cleared."""
    disk.inventory(LIST_A)
    sd = disk.start()
    wait_until(lambda: disk.file.exists(), 30, "first file")
    shutil.rmtree(disk.dir)
    disk.dir.write_bytes(b"not a directory\n")
    disk.inventory(LIST_B)
    _fault_window(sd, disk, None, "File exists")
    disk.dir.unlink()
    _recovered(sd, disk)


def test_directory_removed_and_parent_read_only_as_non_root(disk: Env) -> None:
    """As nobody, a removed directory cannot be recreated under a root-owned parent: error until restored."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the directory's owner (nobody) differs from its parent's (root)")
    disk.inventory(LIST_A)
    os.chown(disk.dir, NOBODY, NOBODY)
    sd = disk.start(as_nobody=True)
    wait_until(lambda: disk.file.exists() and targets(disk.file.read_bytes()) == set(LIST_A), 30, "first file")
    shutil.rmtree(disk.dir)
    disk.inventory(LIST_B)
    _fault_window(sd, disk, None, "Permission denied")
    disk.dir.mkdir(mode=0o755)
    os.chown(disk.dir, NOBODY, NOBODY)
    _recovered(sd, disk)
