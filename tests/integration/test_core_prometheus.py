"""sensor-sd + inventory simulator + the real Prometheus (file_sd): targets appear, follow churn, survive faults."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localstack.net import admin_call, http_get, wait_until
from localstack.stack import Stack

SENSORS = {f"sensor_{i}:9100" for i in range(100)}


def admin(stack: Stack, method: str, path: str, body: Any = None) -> None:
    admin_call(stack.url("inventory", path), method, body)


def prometheus_targets(stack: Stack) -> set[str]:
    return {t["discoveredLabels"]["__address__"] for t in stack.active_targets("sensors")}


def wait_targets(stack: Stack, expected: set[str], timeout: float = 30) -> None:
    wait_until(lambda: prometheus_targets(stack) == expected, timeout, f"Prometheus to show {len(expected)} targets")


def file_bytes(stack: Stack) -> bytes:
    return stack.cfg.targets_file.read_bytes()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from localstack.config import Ports, StackConfig

    s = Stack(StackConfig(tmp_path_factory.mktemp("core"), Ports.ephemeral(), update_interval=0.2,
                          scrape_interval="1s", evaluation_interval="1s",
                          sd_env={"REQUEST_TIMEOUT": "0.5", "DROP_CONFIRMATIONS": "1000"}))
    s.start(("inventory", "sd", "prometheus"))
    try:
        yield s
    finally:
        s.stop()


def test_100_targets_appear(stack: Stack) -> None:
    wait_targets(stack, SENSORS)
    labels = {t["labels"]["source"] for t in stack.active_targets("sensors")}
    assert labels == {"inventory"}


def test_churn_is_reflected(stack: Stack) -> None:
    wait_targets(stack, SENSORS)
    admin(stack, "POST", "/admin/sensors/add", {"names": [f"new_{i}" for i in range(10)]})
    admin(stack, "POST", "/admin/sensors/remove", {"names": [f"sensor_{i}" for i in range(5)]})
    expected = (SENSORS | {f"new_{i}:9100" for i in range(10)}) - {f"sensor_{i}:9100" for i in range(5)}
    wait_targets(stack, expected)
    admin(stack, "PUT", "/admin/sensors", [f"sensor_{i}" for i in range(100)])
    wait_targets(stack, SENSORS)


FAULTS = [
    {"mode": "status", "code": 503}, {"mode": "hang"}, {"mode": "truncated"}, {"mode": "object"},
    {"mode": "nonutf8"}, {"mode": "oversized", "bytes": 80_000_000}, {"mode": "empty"},
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f["mode"] for f in FAULTS])
def test_fault_keeps_targets_and_health(stack: Stack, fault: dict[str, Any]) -> None:
    wait_targets(stack, SENSORS)
    wait_until(lambda: len(json.loads(file_bytes(stack))[0]["targets"]) == 100, 10, "the file to hold 100 targets")
    before = file_bytes(stack)
    errors_before = _errors(stack)
    admin(stack, "PUT", "/admin/fault", fault)
    try:
        # Several polls go by under the fault; the SD counts them and stays healthy.
        wait_until(lambda: _errors(stack) + _held(stack) >= errors_before + 3, 20, "three failed or held polls")
        assert http_get(stack.url("sd", "/-/healthy"))[0] == 200
        assert http_get(stack.url("sd", "/-/ready"))[0] == 200
        assert file_bytes(stack) == before
        assert prometheus_targets(stack) == SENSORS
    finally:
        admin(stack, "DELETE", "/admin/fault")
    # Recovery on the first good poll (Prometheus itself follows within its 5 s discovery throttle).
    admin(stack, "POST", "/admin/sensors/add", {"names": ["after_fault"]})
    wait_until(lambda: b'"after_fault:9100"' in file_bytes(stack), 10, "the file to pick up the change")
    admin(stack, "POST", "/admin/sensors/remove", {"names": ["after_fault"]})
    wait_until(lambda: b'"after_fault:9100"' not in file_bytes(stack), 10, "the file to drop the change")


def test_refused_and_restart_while_down_keep_targets(stack: Stack) -> None:
    wait_targets(stack, SENSORS)
    before = file_bytes(stack)
    stack.stop("inventory")
    stack.stop("sensor-sd")
    stack.start_sd(ready_path="/-/ready")  # ready from the loaded file, with the inventory refusing
    wait_until(lambda: _errors(stack) >= 2, 20, "failed polls after restart")
    assert file_bytes(stack) == before
    assert prometheus_targets(stack) == SENSORS
    stack.start_inventory()
    wait_until(lambda: _metric(stack, 'sensor_sd_inventory_up{source="inventory"}') == 1, 20, "recovery")
    wait_targets(stack, SENSORS)


def test_once_against_dead_url_exits_1_and_keeps_file(stack: Stack, tmp_path: Path) -> None:
    """On a copy of the stack's file: the running daemon holds the writer lock of its own (once would exit 2)."""
    before = file_bytes(stack)
    copy = tmp_path / "targets.json"
    copy.write_bytes(before)
    env = {**stack.sd_env(), "INVENTORY_URL": "inventory=http://127.0.0.1:1/inventory", "LISTEN_ADDRESS": "127.0.0.1:1",
           "TARGETS_FILE": str(copy)}
    proc = subprocess.run([sys.executable, "-m", "sensor_sd", "once"], env={**_base_env(), **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "keeping last known good targets" in proc.stderr
    assert copy.read_bytes() == before
    env["TARGETS_FILE"] = str(stack.cfg.targets_file)
    refused = subprocess.run([sys.executable, "-m", "sensor_sd", "once"], env={**_base_env(), **env},
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "written by another sensor-sd" in refused.stderr
    assert file_bytes(stack) == before


def _base_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _metric(stack: Stack, series: str) -> float:
    status, body = http_get(stack.url("sd", "/metrics"))
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _errors(stack: Stack) -> float:
    return _metric(stack, 'sensor_sd_syncs_total{result="error",source="inventory"}')


def _held(stack: Stack) -> float:
    return _metric(stack, 'sensor_sd_syncs_total{result="held",source="inventory"}')
