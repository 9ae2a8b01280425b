"""Hostile inventory bodies against the real daemon: nothing ends it, nothing wrong is published.

The inventory here is a tiny aiohttp server on 127.0.0.1 that answers with
whatever raw bytes and headers the test sets (the simulator re-encodes what
it is given, so it cannot serve a body nested deeper than its encoder allows
or a body whose Content-Encoding lies). sensor-sd runs as a real process.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from sensor_sd.sim._common import start_app
from localstack.net import free_port, http_get, http_request, wait_until
from tests.conftest import LoopThread

# `["sensor_1", [[[...]]]]`: ~1,000 levels, below the JSON parser's own depth limit (1,024).
NESTED = b'["sensor_1", ' + b"[" * 1000 + b"]" * 1000 + b"]"


@dataclass
class Answer:
    """What the raw inventory answers next (mutable: the test changes it between polls)."""

    body: bytes = b'["sensor_1"]'
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    requests: int = 0


@pytest.fixture
def raw_inventory(loop_thread: LoopThread) -> Iterator[tuple[str, Answer]]:
    answer = Answer()

    async def handler(request: web.Request) -> web.Response:
        answer.requests += 1
        return web.Response(body=answer.body, status=answer.status,
                            headers={"Content-Type": "application/json", **answer.headers})

    async def setup() -> str:
        app = web.Application()
        app.router.add_get("/inventory", handler)
        runner, port = await start_app(app, "127.0.0.1", 0)
        loop_thread.defer(runner.cleanup)
        return f"http://127.0.0.1:{port}/inventory"

    yield loop_thread.run(setup()), answer


def sd_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "INVENTORY_URL": f"inv={url}", "TARGETS_FILE": str(tmp_path / "t.json"),
            "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", "LOG_FORMAT": "json", "UPDATE_INTERVAL": "0.05", **extra}


def sd(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor_sd", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test, stopped (by their own pid) afterwards."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def start(env: dict[str, str], procs: list[subprocess.Popen[str]], log: Path) -> tuple[subprocess.Popen[str], str]:
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env=env, stdout=out, stderr=out, text=True)
    procs.append(proc)
    base = f"http://{env['LISTEN_ADDRESS']}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sensor-sd exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return http_get(f"{base}/-/ready")[0] == 200
        except OSError:
            return False

    wait_until(ready, 20, "sensor-sd ready")
    return proc, base


def served(base: str) -> list[str]:
    status, body = http_get(f"{base}/targets")
    assert status == 200
    return [t for g in json.loads(body) for t in g["targets"]]


def test_a_deeply_nested_entry_is_dropped_and_the_daemon_keeps_serving(
        raw_inventory: tuple[str, Answer], tmp_path: Path, daemon: list[subprocess.Popen[str]]) -> None:
    url, answer = raw_inventory
    answer.body = NESTED
    env = sd_env(url, tmp_path)
    proc, base = start(env, daemon, tmp_path / "run.log")
    assert served(base) == ["sensor_1:9100"]
    seen = answer.requests
    wait_until(lambda: answer.requests >= seen + 5, 20, "five more polls of the nested body")
    assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
    status, body = http_request(f"{base}/-/refresh", "POST")
    assert status == 200, body[:500]
    assert served(base) == ["sensor_1:9100"]
    status, metrics = http_get(f"{base}/metrics")
    assert b'sensor_sd_invalid_entries_total{reason="not_string",source="inv"}' in metrics
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log and "RecursionError" not in log
    dropped = [json.loads(line) for line in log.splitlines() if "invalid inventory entries dropped" in line]
    assert dropped and all(len(e) <= len("not_string: ") + 80 for line in dropped for e in line["examples"])
    proc.terminate()
    assert proc.wait(10) == 0

    for command in ("once", "check"):
        done = sd([command, "--summary", "never"], env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert all(len(line) < 1000 for line in done.stderr.splitlines())


def test_a_loaded_targets_file_is_validated_like_a_poll(
        raw_inventory: tuple[str, Answer], tmp_path: Path, daemon: list[subprocess.Popen[str]]) -> None:
    """Inventory down at start: /targets serves only the valid entries of the file, in canonical form."""
    url, answer = raw_inventory
    answer.status, answer.body = 503, b"down"
    labels = {"__metrics_path__": "/metrics", "source": "inv"}
    entries = ["sensor_1:9100", "bad host:9100", "http://x", "", "Sensor_1.:9100", "[2001:DB8::A]:9100",
               "[fe80::1%eth0]:9100", "sensor_2:9100"]
    (tmp_path / "t.json").write_text(json.dumps([{"targets": entries, "labels": labels}]))
    proc, base = start(sd_env(url, tmp_path), daemon, tmp_path / "run.log")
    assert served(base) == ["[2001:db8::a]:9100", "sensor_1:9100", "sensor_2:9100"]
    status, metrics = http_get(f"{base}/metrics")
    for reason, count in (("whitespace", 1), ("scheme", 1), ("empty", 1), ("ipv6_zone", 1)):
        assert f'sensor_sd_invalid_entries_total{{reason="{reason}",source="inv"}} {count}.0'.encode() in metrics
    assert "invalid entries in the targets file dropped" in (tmp_path / "run.log").read_text()


def test_a_body_falsely_labelled_gzip_is_a_decode_error(
        raw_inventory: tuple[str, Answer], tmp_path: Path, daemon: list[subprocess.Popen[str]]) -> None:
    url, answer = raw_inventory
    env = sd_env(url, tmp_path)
    answer.body = gzip.compress(b'["sensor_1", "sensor_2"]')
    answer.headers = {"Content-Encoding": "gzip"}
    proc, base = start(env, daemon, tmp_path / "run.log")
    assert served(base) == ["sensor_1:9100", "sensor_2:9100"]
    answer.body = b'["sensor_1"]'  # the label stays: now it lies
    wait_until(lambda: b'sensor_sd_inventory_errors_total{reason="decode",source="inv"}' in http_get(
        f"{base}/metrics")[1], 20, "a decode error counted")
    _, metrics = http_get(f"{base}/metrics")
    assert b'reason="unreachable"' not in metrics
    assert served(base) == ["sensor_1:9100", "sensor_2:9100"]
    proc.terminate()
    assert proc.wait(10) == 0
    done = sd(["once", "--summary", "always"], env)
    assert done.returncode == 1
    assert "inventory answer unusable" in done.stderr.splitlines()[-1]
