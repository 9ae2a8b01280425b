"""The local stack end to end, with the real Prometheus and Alertmanager binaries.

Alerts run from a copy of the shipped rules whose `for:` is shortened
(`rules_with_for`, generated from the shipped file at test time; the shipped
files are never edited) and which is loaded *instead of* the shipped rules,
so each alert exists once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from localstack.config import PARTS, Ports, StackConfig, rules_with_for
from localstack.net import StackError, admin_call, http_get, port_in_use, wait_until
from localstack.stack import Stack

FOR = "3s"  # every alert's `for:` in the test copy: long enough to ride out a single 1 s scrape hiccup
INTERVAL = 1.0  # sensor-sd UPDATE_INTERVAL, Prometheus scrape and evaluation interval
DOWN = ["sensor_3", "sensor_42", "sensor_77"]


admin = admin_call


def firing(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    """Alerts of that name firing in Prometheus (from /api/v1/alerts, with activeAt)."""
    status, body = http_get(stack.url("prometheus", "/api/v1/alerts"))
    assert status == 200
    return [a for a in json.loads(body)["data"]["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def active_at(alert: dict[str, Any]) -> float:
    """Prometheus' activeAt (RFC 3339, nanoseconds) as unix seconds."""
    from datetime import datetime

    stamp = alert["activeAt"]
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def rule_names(stack: Stack) -> list[str]:
    status, body = http_get(stack.url("prometheus", "/api/v1/rules?type=alert"))
    assert status == 200
    return [r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]]


def sessions_alive(sids: set[int]) -> list[str]:
    """Live (non-zombie) processes in any of these sessions, read from /proc: grandchildren count too."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        comm_end = stat.rindex(")")
        state, _ppid, _pgrp, session = stat[comm_end + 2:].split()[:4]
        if int(session) in sids and state not in ("Z", "X"):
            found.append(f"{entry.name} {stat[:comm_end + 1]}")
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One full stack for the alert tests (startup is the slow part); each test undoes its faults."""
    workdir = tmp_path_factory.mktemp("stack")
    cfg = StackConfig(workdir, Ports.ephemeral(), sensors=100, update_interval=INTERVAL,
                      scrape_interval=f"{INTERVAL:g}s", evaluation_interval=f"{INTERVAL:g}s",
                      extra_rule_files=(rules_with_for(workdir / "fast.rules.yml", FOR),), shipped_rules=False,
                      sd_env={"REQUEST_TIMEOUT": "0.5"})
    s = Stack(cfg)
    s.start()
    try:
        wait_until(lambda: s.all_sensors_up(100), 30, "100 sensors up", 0.2)
        # Prometheus hands out even static targets only after its ~5 s discovery
        # throttle, so absent(up{job="sensor-sd"}) is briefly true at startup
        # and, with a 3 s `for:`, SensorSDDown can flash once. Let it settle.
        wait_until(lambda: not s.prometheus_query("ALERTS") and not s.alertmanager_alerts(), 20,
                   "no alerts on the healthy stack", 0.2)
        yield s
    finally:
        s.stop()


def test_all_100_sensors_up_and_quiet(stack: Stack) -> None:
    targets = stack.active_targets("sensors")
    assert len(targets) == 100
    assert {t["labels"]["instance"] for t in targets} == {f"sensor_{i}" for i in range(100)}
    assert {t["labels"]["source"] for t in targets} == {"inventory"}
    assert {t["health"] for t in targets} == {"up"}
    assert [r["value"][1] for r in stack.prometheus_query('up{job="sensors"} == 1')] == ["1"] * 100
    # Every alert is defined once (the test copy only), and a healthy stack raises none of them.
    names = rule_names(stack)
    assert sorted(names) == sorted(set(names)) and "SensorDown" in names
    pending_or_firing = stack.prometheus_query("ALERTS")
    assert pending_or_firing == [], pending_or_firing


def test_three_sensors_down_fire_sensor_down_in_alertmanager(stack: Stack) -> None:
    began = time.monotonic()
    admin(stack.url("fleet", "/admin/down"), "PUT", {"sensors": DOWN})
    try:
        def sensor_down_in_am() -> list[dict[str, Any]]:
            alerts = stack.alertmanager_alerts("SensorDown")
            return alerts if {a["labels"]["instance"] for a in alerts} == set(DOWN) else []

        alerts = wait_until(sensor_down_in_am, 30, "SensorDown for 3 sensors in Alertmanager", 0.2)
        print(f"\nSensorDown in Alertmanager {time.monotonic() - began:.1f}s after 3 sensors went down "
              f"(scrape/eval {INTERVAL:g}s, for: {FOR})")
        assert len(alerts) == 3
        for alert in alerts:
            assert alert["status"]["state"] == "active"
            assert alert["labels"]["job"] == "sensors" and alert["labels"]["source"] == "inventory"
            assert alert["labels"]["severity"] == "warning"
            assert alert["labels"]["instance"] in alert["annotations"]["summary"]
        assert len(firing(stack, "SensorDown")) == 3  # once per sensor, not once per rule group
        assert firing(stack, "SensorFleetDegraded") == []  # 3 % is below the 10 % threshold
        assert stack.sensors_up() == 97
    finally:
        admin(stack.url("fleet", "/admin/faults"), "DELETE")
    began = time.monotonic()
    wait_until(lambda: not stack.prometheus_query('ALERTS{alertname="SensorDown"}')
               and not stack.alertmanager_alerts("SensorDown"), 20, "SensorDown to resolve", 0.2)
    print(f"SensorDown resolved in Alertmanager {time.monotonic() - began:.1f}s after the sensors came back")
    wait_until(lambda: stack.sensors_up() == 100, 10, "100 sensors up again", 0.2)


def test_inventory_down_alerts_and_targets_stay(stack: Stack) -> None:
    before = stack.cfg.targets_file.read_bytes()
    stopped = time.time()
    stack.stop("inventory")
    try:
        def inventory_down_in_am() -> list[dict[str, Any]]:
            alerts = stack.alertmanager_alerts("InventoryDown")
            # Both views: sensor-sd's failing polls (by source) and Prometheus' failing scrape of the inventory.
            return alerts if {a["labels"]["job"] for a in alerts} == {"sensor-sd", "inventory"} else []

        alerts = wait_until(inventory_down_in_am, 30, "InventoryDown in Alertmanager", 0.2)
        print(f"\nInventoryDown in Alertmanager {time.time() - stopped:.1f}s after the inventory stopped")
        assert all(a["labels"]["severity"] == "critical" for a in alerts)
        assert {a["labels"].get("source") for a in alerts} == {"inventory", None}

        stale = wait_until(lambda: stack.alertmanager_alerts("SensorSDStale"), 30, "SensorSDStale in Alertmanager", 0.2)
        print(f"SensorSDStale in Alertmanager {time.time() - stopped:.1f}s after the inventory stopped")
        assert [a["labels"]["source"] for a in stale] == ["inventory"]
        assert stale[0]["status"]["state"] == "active"  # not inhibited: only SensorSDDown inhibits it
        # Stale means "no success for 3 update intervals": it cannot start before that, and starts after InventoryDown.
        [stale_alert] = firing(stack, "SensorSDStale")
        sd_view = [a for a in firing(stack, "InventoryDown") if a["labels"]["job"] == "sensor-sd"]
        assert active_at(stale_alert) >= stopped + 3 * INTERVAL - INTERVAL - 0.5
        assert active_at(stale_alert) > active_at(sd_view[0])

        # SensorSDSyncFailing is the symptom: Alertmanager holds it inhibited by InventoryDown (same source).
        failing = wait_until(lambda: stack.alertmanager_alerts("SensorSDSyncFailing"), 30,
                             "SensorSDSyncFailing in Alertmanager", 0.2)
        assert failing[0]["status"]["state"] == "suppressed" and failing[0]["status"]["inhibitedBy"]

        # Meanwhile the last known good targets stay: file untouched, all 100 still discovered and scraped.
        assert stack.cfg.targets_file.read_bytes() == before
        assert len(stack.active_targets("sensors")) == 100
        assert stack.sensors_up(time.time() - 3 * INTERVAL) == 100
        assert http_get(stack.url("sd", "/-/ready"))[0] == 200
    finally:
        if "inventory" not in stack.procs:
            stack.start(("inventory",))
    recovered = time.time()
    wait_until(lambda: not stack.prometheus_query('ALERTS{alertname=~"InventoryDown|SensorSDStale"}'), 30,
               "InventoryDown and SensorSDStale to resolve", 0.2)
    wait_until(lambda: not stack.alertmanager_alerts("InventoryDown"), 20, "InventoryDown to leave Alertmanager", 0.2)
    print(f"InventoryDown and SensorSDStale resolved {time.time() - recovered:.1f}s after the inventory came back")
    assert stack.cfg.targets_file.read_bytes() == before


def _start_and_stop(stack: Stack) -> None:
    stack.start()
    assert set(stack.procs) == {"inventory", "fleet", "sensor-sd", "alertmanager", "prometheus"}
    sids = {p.popen.pid for p in stack.procs.values()}  # each child leads its own session
    assert len(sessions_alive(sids)) >= len(sids)
    stack.stop()
    assert stack.procs == {}
    assert sessions_alive(sids) == []
    assert [part for part, port in stack.cfg.ports.items() if port_in_use(port)] == []


def test_starts_and_stops_cleanly_twice_on_the_same_ports(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(sensors=10, update_interval=INTERVAL, scrape_interval="1s", evaluation_interval="1s")
    _start_and_stop(stack)
    _start_and_stop(stack)  # same ports again: nothing lingers that would block a restart


def test_port_taken_is_a_clear_error_and_starts_nothing(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(sensors=10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack.cfg.ports.prometheus))
        taken.listen()
        with pytest.raises(StackError, match=rf"already in use on 127\.0\.0\.1: prometheus port {stack.cfg.ports.prometheus}"):
            stack.start()
        assert stack.procs == {}


def test_port_taken_after_the_check_names_the_part_and_shows_its_log(make_stack: Callable[..., Stack]) -> None:
    """The child losing the race for its port (taken after check_ports) still gives a readable error fast."""
    stack = make_stack(sensors=10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack.cfg.ports.inventory))
        taken.listen()
        began = time.monotonic()
        with pytest.raises(StackError, match=r"inventory exited with code \d+ before it was ready(.|\n)*inventory log"):
            stack.start_inventory()
        assert time.monotonic() - began < 10  # not the 30 s readiness deadline
    stack.stop()


def _runner(tmp_path: Path, ports: Ports, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "localstack", "--sensors", "10", "--data-dir", str(tmp_path / "data"),
            "--scrape-interval", "1s", "--update-interval", "1", *extra]
    argv += [arg for part, port in ports.items() for arg in (f"--{part}-port", str(port))]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), True)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} from make run:\n{''.join(seen)}")


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_make_run_leaves_no_process_behind(tmp_path: Path, how: str) -> None:
    """Ctrl-C stops all parts in order; even a SIGKILLed runner leaves no orphan (the kernel's parent-death signal)."""
    ports = Ports.ephemeral()
    runner = _runner(tmp_path, ports)
    try:
        banner = _read_until(runner, "Ctrl-C stops everything", 60)
        assert "all 10 sensors up in Prometheus" in banner and f"127.0.0.1:{ports.prometheus}" in banner
        kids = _children(runner.pid)
        assert len(kids) == len(PARTS)
        runner.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        runner.wait(20)
        if how == "ctrl-c":
            assert runner.returncode == 0
            assert "local stack stopped." in (runner.stdout.read() if runner.stdout else "")
        wait_until(lambda: sessions_alive(kids) == [], 15, f"children of make run to exit after {how}", 0.1)
        wait_until(lambda: not any(port_in_use(port) for _, port in ports.items()), 5, "ports to be free", 0.1)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def test_make_run_port_taken_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    ports = Ports.ephemeral()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.alertmanager))
        taken.listen()
        runner = _runner(tmp_path, ports)
        out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 1
    assert f"make run: already in use on 127.0.0.1: alertmanager port {ports.alertmanager}" in out
    assert "Traceback" not in out
