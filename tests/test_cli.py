"""The CLI as a user runs it: real processes, real signals, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sensor_sd.sim.stack import admin_call, Stack, free_port, http_get, http_ok, wait_until


def sd(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor_sd", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


@pytest.fixture
def inventory(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack()
    stack.start(("inventory",))
    return stack


def env_for(stack: Stack, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"INVENTORY_URL": f"inv={stack.url('inventory', '/inventory')}", "TARGETS_FILE": str(tmp_path / "t.json"),
            "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", "LOG_FORMAT": "json", **extra}


def put_sensors(stack: Stack, names: list[str]) -> None:
    admin_call(stack.url("inventory", "/admin/sensors"), "PUT", names)


def targets(path: Path) -> list[str]:
    return [t for g in json.loads(path.read_bytes()) for t in g["targets"]]


def test_once_publishes_then_holds_a_mass_drop_until_forced(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path)
    assert sd(["once"], env).returncode == 0
    assert len(targets(tmp_path / "t.json")) == 100
    before = (tmp_path / "t.json").read_bytes()
    put_sensors(inventory, ["sensor_1"])
    held = sd(["once"], env)
    assert held.returncode == 1
    assert "drop guard" in held.stderr
    assert (tmp_path / "t.json").read_bytes() == before
    assert sd(["once", "--force"], env).returncode == 0
    assert targets(tmp_path / "t.json") == ["sensor_1:9100"]


def test_check_prints_the_diff_and_writes_nothing(inventory: Stack, tmp_path: Path) -> None:
    env = env_for(inventory, tmp_path)
    sd(["once"], env)
    before = (tmp_path / "t.json").read_bytes()
    put_sensors(inventory, [f"sensor_{i}" for i in range(1, 100)] + ["fresh"])
    out = sd(["check"], env)
    assert out.returncode == 0, out.stderr
    assert "+ fresh:9100" in out.stdout.splitlines()
    assert "- sensor_0:9100" in out.stdout.splitlines()
    assert "inv: 100 targets, +1 -1 against the current file" in out.stdout
    assert (tmp_path / "t.json").read_bytes() == before


def test_check_with_dead_inventory_exits_1(tmp_path: Path) -> None:
    out = sd(["check"], {"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json")})
    assert out.returncode == 1
    assert "inventory failed" in out.stdout
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_on_signal_within_2s_with_file_intact(inventory: Stack, tmp_path: Path, sig: int) -> None:
    env = env_for(inventory, tmp_path, UPDATE_INTERVAL="0.05")
    url = f"http://{env['LISTEN_ADDRESS']}"
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: http_ok(url + "/-/ready"), 20, "sensor-sd ready")
        assert http_get(url + "/targets")[0] == 200
        body = (tmp_path / "t.json").read_bytes()
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
        proc.communicate()
    assert (tmp_path / "t.json").read_bytes() == body
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_run_stops_promptly_while_a_poll_hangs(inventory: Stack, tmp_path: Path) -> None:
    admin_call(inventory.url("inventory", "/admin/fault"), "PUT", {"mode": "hang"})
    env = env_for(inventory, tmp_path, REQUEST_TIMEOUT="30")
    url = f"http://{env['LISTEN_ADDRESS']}"
    proc = subprocess.Popen([sys.executable, "-m", "sensor_sd", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: http_ok(url + "/-/healthy"), 20, "sensor-sd healthy")
        assert http_get(url + "/-/ready")[0] == 503  # nothing good yet: not ready, /targets refuses
        assert http_get(url + "/targets")[0] == 503
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
        proc.wait()


def test_listen_address_taken_exits_2_with_a_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = sd(["run"], {"INVENTORY_URL": "http://127.0.0.1:1/inv", "TARGETS_FILE": str(tmp_path / "t.json"),
                           "LISTEN_ADDRESS": f"127.0.0.1:{port}"})
    assert out.returncode == 2
    assert f"cannot listen on LISTEN_ADDRESS=127.0.0.1:{port}" in out.stderr


def test_json_logs_one_object_per_line_with_change_details(inventory: Stack, tmp_path: Path) -> None:
    out = sd(["once"], env_for(inventory, tmp_path))
    events = [json.loads(line) for line in out.stderr.splitlines()]
    synced = [e for e in events if e["msg"] == "inventory synced"]
    assert synced and synced[0]["source"] == "inv" and synced[0]["added"] == 100
    assert len(synced[0]["added_names"]) == 10
    assert {"ts", "level", "duration", "result", "targets"} <= synced[0].keys()
