"""SOURCES_FILE reloads in a real `sensor-sd run`: real file edits, a real SIGHUP, a real inventory simulator.

Unchanged sources keep their state and last known good; a new source starts
polling; a removed source's targets leave through the drop guard; an invalid
file is refused with one error line and the running sources stay.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from localstack.engines import metric_samples, scrape_metrics, sd_targets, start_inventory, url
from localstack.procs import Procs
from sensor_sd.sim.inventory import sources_doc
from localstack.net import LOOPBACK, admin_call, free_port, http_get, wait_until
from localstack.procs import sensor_sd_argv

PER_STORE = 4


def write_atomic(path: Path, doc: Any) -> None:
    """As an editor or a config manager does: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, path)


def groups(port: int) -> dict[str, dict[str, Any]]:
    status, body = http_get(url(port, "/targets"), timeout=5)
    if status == 503:  # no snapshot yet
        return {}
    assert status == 200
    return {g["labels"]["source"]: g for g in json.loads(body)}


def reloads(port: int) -> dict[str, float]:
    return {labels["result"]: value
            for labels, value in metric_samples(scrape_metrics(port), "sensor_sd_sources_reloads_total")}


def start(procs: Procs, sources_file: Path, **extra: str) -> int:
    port = free_port()
    env = {"SOURCES_FILE": str(sources_file), "UPDATE_INTERVAL": "0.3", "LISTEN_ADDRESS": f"{LOOPBACK}:{port}",
           "TARGETS_FILE": str(procs.workdir / "targets.json"), "DROP_CONFIRMATIONS": "3", "DROP_HOLD": "1",
           "LOG_LEVEL": "info", **extra}
    procs.start("sensor-sd", sensor_sd_argv("run"), url(port, "/-/healthy"), env=env)
    return port


def test_file_edits_add_change_and_retire_sources_through_the_guard(procs: Procs, tmp_path: Path) -> None:
    inv = start_inventory(procs, 4, PER_STORE)
    base = url(inv)
    path = tmp_path / "sources.json"
    write_atomic(path, sources_doc(base, ["store0", "store1", "store2"], {"store0": {"region": "eu"}}))
    sd = start(procs, path)
    wait_until(lambda: set(groups(sd)) == {"store0", "store1", "store2"}, 30, "three stores on /targets")
    assert groups(sd)["store0"]["labels"] == {"__metrics_path__": "/metrics", "source": "store0", "store": "store0",
                                              "region": "eu"}

    # store1 fails from now on: its last known good must survive the reload untouched.
    admin_call(base + "/admin/stores/store1/fault", "PUT", {"mode": "status", "code": 503})
    kept = groups(sd)["store1"]["targets"]
    assert len(kept) == PER_STORE

    # store2 removed, store3 added, store0 relabelled, store1 unchanged (and failing).
    write_atomic(path, sources_doc(base, ["store0", "store1", "store3"], {"store0": {"region": "us"}}))
    wait_until(lambda: "store3" in groups(sd), 15, "the new store3 polled and published")
    assert groups(sd)["store0"]["labels"]["region"] == "us"
    assert groups(sd)["store1"]["targets"] == kept
    # The removed store's targets are held by the drop guard first (3 polls and DROP_HOLD=1 s), then go.
    assert "store2" in groups(sd), "a removed source's targets went at once, past the drop guard"
    # Held at store2's next step (its loop may still sleep when store3 appears): watched, not sampled once.
    wait_until(lambda: [v for labels, v in metric_samples(scrape_metrics(sd), "sensor_sd_drop_guard_active")
                        if labels["source"] == "store2"] == [1.0], 15, "store2's drop held by the guard")
    assert "store2" in groups(sd), "a removed source's targets went before three polls and DROP_HOLD"
    wait_until(lambda: "store2" not in groups(sd), 15, "store2's targets withdrawn after the guard")
    assert not [s for s in metric_samples(scrape_metrics(sd), "sensor_sd_targets") if s[0]["source"] == "store2"]
    assert reloads(sd) == {"success": 1.0, "failure": 0.0}
    assert set(json.loads((procs.workdir / "targets.json").read_bytes())[i]["labels"]["source"]
               for i in range(3)) == {"store0", "store1", "store3"}


@pytest.mark.parametrize("bad", [
    "{not json",
    '{"sources": [{"name": "a", "url": "http://127.0.0.1:1/x", "labels": {"__address__": "x"}}]}',
    '{"sources": [{"name": "a", "url": "http://127.0.0.1:1/x"}, {"name": "a", "url": "http://127.0.0.1:1/y"}]}',
    '{"sources": []}',
])
def test_an_invalid_file_is_refused_and_the_running_sources_stay(procs: Procs, tmp_path: Path, bad: str) -> None:
    inv = start_inventory(procs, 2, PER_STORE)
    path = tmp_path / "sources.json"
    write_atomic(path, sources_doc(url(inv), ["store0", "store1"]))
    sd = start(procs, path)
    wait_until(lambda: set(groups(sd)) == {"store0", "store1"}, 30, "both stores on /targets")
    before = groups(sd)
    write_atomic(path, bad)
    wait_until(lambda: reloads(sd).get("failure") == 1.0, 15, "the refused reload counted")
    gauge = metric_samples(scrape_metrics(sd), "sensor_sd_sources_last_reload_successful")
    assert gauge == [({}, 0.0)]
    # Sources keep polling: a new sensor in store1 still arrives.
    admin_call(url(inv, "/admin/stores/store1/sensors/add"), "POST", {"count": 1})
    wait_until(lambda: len(groups(sd)["store1"]["targets"]) == PER_STORE + 1, 15, "store1 still polled")
    assert groups(sd)["store0"] == before["store0"]
    log = (procs.workdir / "logs" / "sensor-sd.log").read_text()
    refused = [json.loads(line) for line in log.splitlines() if "sources file refused" in line]
    assert len(refused) == 1 and refused[0]["error"].startswith(f'invalid SOURCES_FILE="{path}": ')
    assert procs.started[-1].alive()


def test_sighup_reloads_a_change_the_stat_cannot_see(procs: Procs, tmp_path: Path) -> None:
    """Rewritten in place with the same size and mtime: only SIGHUP can tell, and it does."""
    inv = start_inventory(procs, 10, PER_STORE)
    path = tmp_path / "sources.json"
    write_atomic(path, sources_doc(url(inv), ["store1"]))
    sd = start(procs, path)
    wait_until(lambda: set(groups(sd)) == {"store1"}, 30, "store1 on /targets")
    stat = path.stat()
    path.write_text(json.dumps(sources_doc(url(inv), ["store2"])))  # same length: store1 -> store2
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    with pytest.raises(Exception, match="store2"):
        wait_until(lambda: "store2" in groups(sd), 2, "store2 without SIGHUP")
    os.kill(procs.started[-1].popen.pid, signal.SIGHUP)
    wait_until(lambda: "store2" in groups(sd), 10, "store2 after SIGHUP")
    assert reloads(sd)["success"] == 1.0
    assert procs.started[-1].alive()


def test_sighup_without_a_sources_file_leaves_the_daemon_running(procs: Procs) -> None:
    inv = start_inventory(procs, 1, PER_STORE)
    port = free_port()
    proc = procs.start("sensor-sd", sensor_sd_argv("run"), url(port, "/-/healthy"), env={
        "INVENTORY_URL": url(inv, "/stores/store0/inventory"), "LISTEN_ADDRESS": f"{LOOPBACK}:{port}",
        "TARGETS_FILE": "", "UPDATE_INTERVAL": "0.3"})
    wait_until(lambda: sd_targets(port), 30, "targets")
    os.kill(proc.popen.pid, signal.SIGHUP)
    wait_until(lambda: "SIGHUP ignored" in (procs.workdir / "logs" / "sensor-sd.log").read_text(), 10, "the log line")
    assert proc.alive() and http_get(url(port, "/-/healthy"), timeout=5)[0] == 200
