"""(4) Propagation to a real Prometheus: inventory change -> new target in /api/v1/targets.

One Prometheus and one inventory; each mode is its own sensor-sd and its own
scrape job, so every change is measured in all modes at once:

* file30  — file_sd, UPDATE_INTERVAL=30 (the seed's interval)
* file1   — file_sd, UPDATE_INTERVAL=1
* refresh — file_sd, UPDATE_INTERVAL=30, `POST /-/refresh` sent right after the change
* http5   — http_sd from the UPDATE_INTERVAL=1 sensor-sd, refresh_interval 5s

Changes (one new hostname each) come at random moments; a watcher polls
Prometheus' active targets every 100 ms and records when each one appears
in each job. Prometheus' discovery manager forwards updates at most every 5 s,
whatever the mechanism, so ~5 s is the floor.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import Inventory, Table, percentile, sd_argv, sd_env, stop_all
from localstack.net import LOOPBACK, free_port, http_get, http_ok, wait_until
from localstack.procs import Proc, spawn

MODES = {
    "file30": "(a) file_sd, UPDATE_INTERVAL=30",
    "file1": "(b) file_sd, UPDATE_INTERVAL=1",
    "refresh": "(c) file_sd + POST /-/refresh after the change",
    "http5": "(d) http_sd, refresh_interval 5s (sensor-sd at UPDATE_INTERVAL=1)",
}
WATCH_PERIOD = 0.1


def _prometheus_config(files: dict[str, Path], http_url: str) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = []
    for job, path in files.items():
        jobs.append({"job_name": job, "scrape_interval": "1m", "scrape_timeout": "10s",
                     "file_sd_configs": [{"files": [str(path)], "refresh_interval": "5m"}]})
    jobs.append({"job_name": "http5", "scrape_interval": "1m", "scrape_timeout": "10s",
                 "http_sd_configs": [{"url": http_url, "refresh_interval": "5s"}]})
    return {"global": {"scrape_interval": "1m", "evaluation_interval": "1m"}, "scrape_configs": jobs}


def _active(prom: str) -> dict[str, set[str]]:
    status, body = http_get(prom + "/api/v1/targets?state=active", timeout=5)
    if status != 200:
        return {}
    seen: dict[str, set[str]] = {}
    for t in json.loads(body)["data"]["activeTargets"]:
        seen.setdefault(t["labels"].get("job", ""), set()).add(t["labels"].get("instance", ""))
    return seen


def run(changes: int, gap: tuple[float, float], workdir: Path, slow_interval: str = "30") -> dict[str, Any]:
    if shutil.which("prometheus") is None:
        return {"table": None, "skipped": "prometheus is not installed"}
    d = workdir / "propagation"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    logs = d / "logs"
    rng = random.Random(5)
    procs: list[Proc | None] = []
    inv = Inventory(100, logs)
    try:
        sds: dict[str, tuple[Proc, int, Path]] = {}
        for mode, interval in (("file30", slow_interval), ("file1", "1"), ("refresh", slow_interval)):
            port = free_port()
            path = d / f"{mode}.json"
            proc = spawn(f"sd-{mode}", sd_argv("run"), logs, sd_env(
                INVENTORY_URL=f"inv={inv.url}", UPDATE_INTERVAL=interval, TARGETS_FILE=str(path),
                LISTEN_ADDRESS=f"{LOOPBACK}:{port}"))
            procs.append(proc)
            sds[mode] = (proc, port, path)
        for mode, (_, port, _) in sds.items():
            wait_until(lambda port=port: http_ok(f"http://{LOOPBACK}:{port}/-/ready"), 30, f"sensor-sd {mode} ready")
        config = d / "prometheus.yml"
        config.write_text(json.dumps(_prometheus_config({m: sds[m][2] for m in ("file30", "file1", "refresh")},
                                                        f"http://{LOOPBACK}:{sds['file1'][1]}/targets"), indent=1))
        pport = free_port()
        prom = f"http://{LOOPBACK}:{pport}"
        procs.append(spawn("prometheus", ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={d / 'tsdb'}",
                                          f"--web.listen-address={LOOPBACK}:{pport}", "--log.level=warn"], logs))
        wait_until(lambda: http_ok(prom + "/-/ready"), 60, "Prometheus ready")
        wait_until(lambda: all(len(_active(prom).get(m, ())) >= 100 for m in MODES), 60,
                   "all four jobs showing the 100 initial targets", 0.2)

        made: dict[str, float] = {}
        seen: dict[tuple[str, str], float] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                now = time.monotonic()
                try:
                    active = _active(prom)
                except OSError:
                    active = {}
                for job, instances in active.items():
                    for name in list(made):
                        if (job, name) not in seen and f"{name}:9100" in instances:
                            seen[(job, name)] = now
                stop.wait(WATCH_PERIOD)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        refresh_url = f"http://{LOOPBACK}:{sds['refresh'][1]}/-/refresh"
        try:
            for i in range(changes):
                time.sleep(rng.uniform(*gap))  # the random moment of the next change (not a readiness wait)
                name = f"bench_prop_{i}"
                inv.admin("POST", "/admin/sensors/add", {"names": [name]})
                made[name] = time.monotonic()
                req = urllib.request.Request(refresh_url, data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                    resp.read()
            drain = 40.0 + float(slow_interval)
            wait_until(lambda: len(seen) >= len(MODES) * changes, drain, "every change in every job", 0.2)
        finally:
            stop.set()
            watcher.join(5)
    finally:
        stop_all([inv.proc, *procs])
    table = Table(f"Propagation to Prometheus 2.x: inventory change -> target in /api/v1/targets, {changes} changes "
                  f"at random moments (gaps {gap[0]:g}-{gap[1]:g} s), seconds",
                  ["mode", "p50", "p95", "max", "seen"])
    stats: dict[str, dict[str, float]] = {}
    for mode, label in MODES.items():
        lat = [seen[(mode, n)] - t for n, t in made.items() if (mode, n) in seen]
        if lat:
            stats[mode] = {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "max": max(lat)}
            table.add(label, stats[mode]["p50"], stats[mode]["p95"], stats[mode]["max"], f"{len(lat)}/{changes}")
        else:
            table.add(label, None, None, None, f"0/{changes}")
    table.notes += [
        f"Watcher resolution {WATCH_PERIOD:g} s (a poll of /api/v1/targets); time from the inventory admin call "
        "returning to the first poll that lists the target. Percentiles are nearest-rank.",
        "All four modes run side by side against one Prometheus, so each change is timed in every mode; "
        "Prometheus' discovery manager forwards target updates at most every 5 s, the floor of every mode.",
    ]
    return {"table": table, "stats": stats}
