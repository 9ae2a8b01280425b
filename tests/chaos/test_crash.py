"""Crash torture: SIGKILL `sensor-sd run` at random moments while the inventory flips between two lists.

The inventory alternates between lists A and B every 50 ms and the SD polls
every 20 ms, so it rewrites the targets file all the time and many kills land
in the middle of a write. A reader thread parses the file continuously: every
read must be a complete file holding exactly A or B, never torn, empty or
unparsable; after each kill the file on disk is A or B. The short run (50
kills, CRASH_KILLS to change) is part of `make test`; the 1000-kill run is
marked `slow`.

`test_fsync_order` checks the durable-write sequence with strace: the temp
file is created in the target directory, written, fsync'ed, renamed over the
target, then the directory is fsync'ed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localstack.config import Ports, StackConfig
from localstack.net import admin_call, http_ok, wait_until
from localstack.procs import sensor_sd_argv, spawn
from localstack.stack import Stack

LIST_A = [f"sensor_{i}" for i in range(100)]
LIST_B = [f"sensor_{i}" for i in range(10, 110)]  # 10 % different: the drop guard lets it through
SET_A = {f"{h}:9100" for h in LIST_A}
SET_B = {f"{h}:9100" for h in LIST_B}


def put(url: str, body: Any) -> None:
    admin_call(url, "PUT", body)


def file_set(body: bytes) -> set[str]:
    data = json.loads(body)
    if not isinstance(data, list) or len(data) != 1:
        raise ValueError("not exactly one target group")
    return set(data[0]["targets"])


@dataclass
class Reader:
    """Parses the targets file in a loop; anything but A or B is a bad read."""

    path: Path
    reads: int = 0
    versions: int = 0  # distinct inodes seen: file replacements observed
    bad: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        last_inode = None
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as fh:
                    inode = os.fstat(fh.fileno()).st_ino
                    body = fh.read()
            except FileNotFoundError:
                if last_inode is not None:
                    self.bad.append("file vanished")
                continue
            try:
                targets = file_set(body)
                if targets not in (SET_A, SET_B):
                    self.bad.append(f"neither A nor B: {len(targets)} targets")
            except (ValueError, KeyError, TypeError) as exc:
                self.bad.append(f"unparsable ({len(body)} bytes): {exc}")
            self.reads += 1
            if inode != last_inode:
                self.versions += 1
                last_inode = inode


@dataclass
class Torture:
    stack: Stack
    reader: Reader
    flips: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def flip(self) -> None:
        url = self.stack.url("inventory", "/admin/sensors")
        while not self.stop.wait(0.05):
            put(url, LIST_A if self.flips % 2 else LIST_B)
            self.flips += 1


@pytest.fixture
def torture(tmp_path: Path) -> Iterator[Torture]:
    cfg = StackConfig(workdir=tmp_path, ports=Ports.ephemeral(), update_interval=0.02,
                      sd_env={"LOG_LEVEL": "warning", "REQUEST_TIMEOUT": "2"})
    with Stack(cfg) as stack:
        stack.start(("inventory",))
        put(stack.url("inventory", "/admin/sensors"), LIST_A)
        t = Torture(stack, Reader(cfg.targets_file))
        threads = [threading.Thread(target=t.flip, daemon=True), threading.Thread(target=t.reader.run, daemon=True)]
        for th in threads:
            th.start()
        try:
            yield t
        finally:
            t.stop.set()
            t.reader.stop.set()
            for th in threads:
                th.join(10)


def _torture(t: Torture, kills: int, budget: float) -> None:
    rng = random.Random(kills)
    stack, path = t.stack, t.stack.cfg.targets_file
    env = stack.sd_env()
    healthy = stack.url("sd", "/-/healthy")
    started = time.monotonic()
    for i in range(kills):
        proc = spawn("sensor-sd", sensor_sd_argv("run"), stack.logdir, env)
        try:
            if rng.random() < 0.25:  # some kills during start-up (loading the file, first poll)
                time.sleep(rng.uniform(0, 0.5))  # the random kill moment itself
            else:
                wait_until(lambda proc=proc: proc.popen.poll() is not None or http_ok(healthy), 30, "sensor-sd up")
                assert proc.alive(), f"sensor-sd exited with {proc.popen.returncode}:\n{proc.tail()}"
                time.sleep(rng.uniform(0, 0.3))  # the random kill moment itself
        finally:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(10)
        if path.exists():
            assert file_set(path.read_bytes()) in (SET_A, SET_B), f"after kill {i}"
        assert not t.reader.bad, t.reader.bad[:5]
        assert time.monotonic() - started < budget, f"only {i} kills within {budget:g}s"
    # After the last kill a fresh process serves the current list again and stops cleanly.
    assert path.exists(), "no kill ever left a file: the SD never wrote one"
    proc = spawn("sensor-sd", sensor_sd_argv("run"), stack.logdir, env)
    try:
        wait_until(lambda: http_ok(stack.url("sd", "/-/ready")), 30, "sensor-sd ready after the torture")
        versions = t.reader.versions
        wait_until(lambda: t.reader.versions > versions + 2, 30, "the restarted SD to keep writing")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(10) == 0
    finally:
        if proc.alive():
            proc.popen.kill()
            proc.popen.wait()
    assert not t.reader.bad, t.reader.bad[:5]
    assert file_set(path.read_bytes()) in (SET_A, SET_B)
    assert t.reader.reads > kills and t.reader.versions > kills / 2, (t.reader.reads, t.reader.versions)
    strays = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(strays) <= 1, f"temp files left behind by killed writers: {strays[:5]} ({len(strays)})"
    (stack.cfg.workdir / "crash-figures.json").write_text(json.dumps(
        {"kills": kills, "reads": t.reader.reads, "versions": t.reader.versions, "flips": t.flips,
         "seconds": round(time.monotonic() - started, 1)}))


def test_crash_torture_short(torture: Torture) -> None:
    _torture(torture, int(os.environ.get("CRASH_KILLS", "50")), budget=300)  # a hang guard, not a speed test


@pytest.mark.slow
def test_crash_torture_1000_kills(torture: Torture) -> None:
    _torture(torture, 1000, budget=3600)


# strace lines look like: 1234  openat(AT_FDCWD, "/x/.targets.json.1234.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 7
_SYSCALL = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")


def test_fsync_order(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    assert strace, "strace is not installed (make installs it: apt-get install strace)"
    cfg = StackConfig(workdir=tmp_path, ports=Ports.ephemeral())
    with Stack(cfg) as stack:
        stack.start(("inventory",))
        target = tmp_path / "out" / "targets.json"
        trace = tmp_path / "strace.txt"
        env = {**os.environ, **stack.sd_env(), "TARGETS_FILE": str(target)}
        for _ in range(2):  # the second run replaces an existing file
            put(stack.url("inventory", "/admin/sensors"), LIST_A if not target.exists() else LIST_B)
            done = subprocess.run([strace, "-f", "-qq", "-o", str(trace), "-e",
                                   "trace=fsync,fdatasync,rename,renameat,renameat2,openat,close",
                                   *sensor_sd_argv("once")], env=env, capture_output=True, timeout=60)
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            _check_trace(trace.read_text(), target)
        assert file_set(target.read_bytes()) == SET_B


def _check_trace(text: str, target: Path) -> None:
    directory = str(target.parent)
    tmp_fd = dir_fd = None
    steps: list[str] = []
    for line in text.splitlines():
        m = _SYSCALL.match(line)
        if not m:
            continue
        _, call, args, ret = m.groups()
        if call == "openat" and f'"{directory}/.{target.name}.' in args and "O_CREAT" in args:
            tmp_fd = ret
            steps.append("create tmp")
        elif call in ("fsync", "fdatasync") and tmp_fd is not None and args == tmp_fd and "fsync tmp" not in steps:
            steps.append("fsync tmp")
        elif call == "close" and args == tmp_fd and "fsync tmp" in steps and "close tmp" not in steps:
            steps.append("close tmp")
        elif call.startswith("rename") and f'"{target}"' in args and f"/.{target.name}." in args:
            steps.append("rename")
        elif call == "openat" and f'"{directory}"' in args and "O_DIRECTORY" in args and "rename" in steps:
            dir_fd = ret
        elif call in ("fsync", "fdatasync") and dir_fd is not None and args == dir_fd:
            steps.append("fsync dir")
    assert steps == ["create tmp", "fsync tmp", "close tmp", "rename", "fsync dir"], steps
