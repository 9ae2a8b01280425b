"""(2) Idle cost of `sensor-sd run` at UPDATE_INTERVAL=1 against an unchanged 100-host inventory (304s)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _common import Inventory, Table, proc_cpu_seconds, proc_kib, sd_argv, sd_env
from localstack.net import LOOPBACK, free_port, http_get, http_ok, wait_until
from localstack.procs import spawn


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(window: float, workdir: Path) -> dict[str, Any]:
    d = workdir / "idle"
    d.mkdir(parents=True, exist_ok=True)
    inv = Inventory(100, d / "logs")
    port = free_port()
    sd = spawn("sensor-sd-idle", sd_argv("run"), d / "logs", sd_env(
        INVENTORY_URL=f"inv={inv.url}", UPDATE_INTERVAL="1", TARGETS_FILE=str(d / "targets.json"),
        LISTEN_ADDRESS=f"{LOOPBACK}:{port}", LOG_LEVEL="info"))
    try:
        base = f"http://{LOOPBACK}:{port}"
        wait_until(lambda: http_ok(base + "/-/ready"), 30, "sensor-sd ready")
        # Steady state: at least two polls answered 304 ("unchanged") before the window opens.
        wait_until(lambda: _counter(http_get(base + "/metrics")[1].decode(), "sensor_sd_syncs_total",
                                    result="unchanged") >= 2, 30, "two unchanged polls")
        inv_before = _counter(http_get(inv.url.replace("/inventory", "/metrics"))[1].decode(),
                              "inventory_sim_http_requests_total", path="/inventory", code="304")
        pid = sd.popen.pid
        cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
        deadline = t0 + window
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))  # the measurement window itself
        cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
        rss, hwm = proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM")
        inv_after = _counter(http_get(inv.url.replace("/inventory", "/metrics"))[1].decode(),
                             "inventory_sim_http_requests_total", path="/inventory", code="304")
    finally:
        sd.stop()
        inv.stop()
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    per_hour = cpu / elapsed * 3600
    share = 100 * cpu / elapsed
    polls = inv_after - inv_before
    table = Table(f"Idle cost: `sensor-sd run`, UPDATE_INTERVAL=1, 100 hosts unchanged ({elapsed:.0f} s window)",
                  ["CPU seconds in window", "polls answered 304", "CPU ms per poll", "CPU s per hour",
                   "% of one core", "RSS MiB (now / peak)"])
    table.add(cpu, int(polls), 1000 * cpu / polls if polls else None, per_hour, f"{share:.2f}%",
              f"{rss / 1024:.1f} / {hwm / 1024:.1f}")
    table.notes.append("utime+stime from /proc/PID/stat (10 ms ticks) over the window, extrapolated to an hour; "
                       "304 count from the inventory simulator's own metrics.")
    return {"table": table, "per_hour": per_hour, "share": share, "rss_mib": rss / 1024, "hwm_mib": hwm / 1024}


