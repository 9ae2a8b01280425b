"""A second `make run` while one runs touches nothing and says why in one line.

The first runner is a real `python -m localstack` with 100 sensors.
Second runners on the same ports and/or the same data directory must exit
non-zero with one line (naming the holder's pid when the data directory is
locked), never claim to have stopped a stack they did not start, and leave
the first one's files byte for byte, so its Prometheus keeps all 100 targets
up.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localstack.config import Ports, StackConfig
from localstack.net import wait_until
from localstack.stack import Stack

SENSORS = 100


def runner_argv(data: Path, ports: Ports, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "localstack", "--sensors", str(SENSORS), "--data-dir", str(data), *extra]
    return argv + [arg for part, port in ports.items() for arg in (f"--{part}-port", str(port))]


def files(data: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime of the runner's own files (the parts' state directories and logs change by themselves)."""
    out = {}
    for path in sorted(data.rglob("*")):
        rel = path.relative_to(data)
        if path.is_file() and rel.parts[0] not in {"prometheus", "alertmanager", "logs"}:
            out[str(rel)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


@dataclass
class First:
    proc: subprocess.Popen[str]
    data: Path
    ports: Ports
    stack: Stack  # not started here: only its URLs and queries


@pytest.fixture
def first(tmp_path: Path) -> Iterator[First]:
    data, ports = tmp_path / "data", Ports.ephemeral()
    proc = subprocess.Popen(runner_argv(data, ports, "--alert-for", "10s"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:  # until the banner's last line (or the runner's exit)
            seen.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert proc.poll() is None, "".join(seen)
        yield First(proc, data, ports, Stack(StackConfig(data, ports)))
    finally:
        proc.terminate()
        proc.wait(30)


def second(argv: list[str]) -> tuple[int, list[str]]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return out.returncode, [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]


def test_second_make_run_touches_nothing(first: First, tmp_path: Path) -> None:
    before = files(first.data)
    assert "targets.json" in before and "stack.lock" in before
    attempts = {
        "same ports, same data": runner_argv(first.data, first.ports, "--alert-for", "7s"),
        "other ports, same data": runner_argv(first.data, Ports.ephemeral(), "--alert-for", "7s"),
        "same ports, other data": runner_argv(tmp_path / "other", first.ports),
    }
    for what, argv in attempts.items():
        code, lines = second(argv)
        assert code != 0, (what, lines)
        assert len(lines) == 1 and lines[0].startswith("make run: "), (what, lines)
        assert "stopped" not in lines[0] and "Traceback" not in lines[0], (what, lines)
        if "same data" in what:
            assert f"pid {first.proc.pid}" in lines[0], (what, lines)
        else:
            assert f"{first.ports.prometheus}" in lines[0], (what, lines)
        assert files(first.data) == before, what
    assert not (tmp_path / "other" / "targets.json").exists()
    # Long enough for Prometheus to notice a vanished file (inotify, then its 5 s discovery throttle) and scrape again.
    watched_from = time.time()
    while time.time() < watched_from + 15:
        targets = first.stack.active_targets("sensors")
        assert len(targets) == SENSORS and {t["health"] for t in targets} == {"up"}
        time.sleep(0.5)  # the polling period of the observation window, not a readiness wait
    wait_until(lambda: first.stack.sensors_up(watched_from) == SENSORS, 30, "100 fresh scrapes up", 0.5)
    assert files(first.data) == before
    assert first.proc.poll() is None
