#!/usr/bin/env python3
"""Clients that never read: `sensor-sd run` at 100k targets under 3,000 of them.

    python bench/slow_clients.py            # 100k targets, 3,000 clients, 20 s hold, caps 512 and 4096 (~4 min);
                                            # writes bench/out/slow-clients-full.md and .json
    python bench/slow_clients.py --clients 1000 --caps 512   # a reduced run on a busy machine
    python bench/slow_clients.py --smoke    # seconds: 1k targets, 200 clients, writes nothing

Each client connects, sends `GET /targets` (1.9 MB at 100k targets) and never
reads a byte. Meanwhile a separate process (its own sockets, no shared event
loop or interpreter lock) asks `/-/healthy` on a fresh connection every 0.1 s.
Measured on the SD: peak RSS while they hold on, polls made against the
schedule, the connections it closed and why (sensor_sd_http_connections_closed_total),
and RSS once they are gone against RSS idle before. One row per
WEB_MAX_CONNECTIONS: the default (512), and one above the client count so every
client is served and only the per-connection write bound limits memory.

Goals (issue: bounded clients): RSS under 250 MB, /-/healthy under 100 ms,
polls on schedule, RSS back within 20% of idle after the clients leave.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import resource
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    OUT, Inventory, Table, machine_facts, percentile, proc_cpu_seconds, proc_kib, sd_argv, sd_env,
)
from localstack.net import LOOPBACK, free_port, http_get, http_ok, wait_until  # noqa: E402
from localstack.procs import spawn  # noqa: E402

PROBE_EVERY = 0.1
GOAL_RSS_MIB = 250
GOAL_HEALTHY_MS = 100
GOAL_RSS_BACK = 1.2


@dataclass(frozen=True)
class Plan:
    name: str
    sensors: int
    clients: int
    hold: float  # seconds the clients hold on (longer than the SD's 10 s write timeout)
    interval: float  # UPDATE_INTERVAL of the SD
    caps: tuple[int, ...]


PLANS = {
    "full": Plan("full", 100_000, 3000, 20.0, 2.0, (512, 4096)),
    "smoke": Plan("smoke", 1000, 200, 3.0, 1.0, (64,)),
}


@dataclass(frozen=True)
class Row:
    cap: int
    clients: int
    opened: int
    rss_idle_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    open_seconds: float
    healthy_opening: Probes
    healthy_holding: Probes
    cpu_seconds: float
    polls: int
    polls_expected: int
    closed: dict[str, float]


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] == name and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(base: str) -> str:
    """/metrics, retried: under the load measured here one answer may take seconds."""
    return str(wait_until(lambda: http_get(base + "/metrics", timeout=10)[1].decode(), 60, "a /metrics answer", 0.2))


def probe(port: int, stop: Any, out: Any) -> None:
    """In its own process: GET /-/healthy on a new connection every PROBE_EVERY s until `stop` is set.

    Puts a list of (wall-clock start, seconds, failure or "") on `out`.
    """
    checks: list[tuple[float, float, str]] = []
    request = b"GET /-/healthy HTTP/1.1\r\nHost: sd\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        wall, started = time.time(), time.perf_counter()
        failure = ""
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                s.sendall(request)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200 "):
                failure = data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"
        except OSError as exc:
            failure = exc.__class__.__name__
        checks.append((wall, time.perf_counter() - started, failure))
        stop.wait(PROBE_EVERY)
    out.put(checks)


@dataclass(frozen=True)
class Probes:
    """/-/healthy over one phase."""

    checks: int
    failures: int
    max_ms: float
    p99_ms: float

    @staticmethod
    def of(checks: list[tuple[float, float, str]], start: float, end: float) -> Probes:
        phase = [(ms * 1000, f) for t, ms, f in checks if start <= t < end]
        ms = [m for m, _ in phase] or [0.0]
        return Probes(len(phase), sum(1 for _, f in phase if f), max(ms), percentile(ms, 99))

    def cell(self) -> str:
        return f"{self.max_ms:.0f} / {self.p99_ms:.0f} ({self.failures} of {self.checks} failed)"


def open_clients(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each ask for /targets and never read."""
    conns = []
    for _ in range(count):
        try:
            s = socket.create_connection((LOOPBACK, port), timeout=5)
            s.sendall(b"GET /targets HTTP/1.1\r\nHost: sd\r\n\r\n")
        except OSError:
            continue  # refused or reset while opening: counted as not opened
        conns.append(s)
    return conns


def measure(plan: Plan, cap: int, workdir: Path) -> Row:
    d = workdir / f"cap-{cap}"
    d.mkdir(parents=True)
    inv = Inventory(plan.sensors, d / "logs")
    port = free_port()
    sd = spawn(f"sensor-sd-{cap}", sd_argv("run"), d / "logs", sd_env(
        INVENTORY_URL=f"inv={inv.url}", UPDATE_INTERVAL=str(plan.interval), TARGETS_FILE=str(d / "targets.json"),
        LISTEN_ADDRESS=f"{LOOPBACK}:{port}", WEB_MAX_CONNECTIONS=str(cap)))
    conns: list[socket.socket] = []
    try:
        base = f"http://{LOOPBACK}:{port}"
        wait_until(lambda: http_ok(base + "/-/ready"), 60 + plan.sensors / 5000, "sensor-sd ready")
        pid = sd.popen.pid
        for _ in range(5):  # warm: every body rendered once
            assert http_get(base + "/targets")[0] == 200
        rss_idle = proc_kib(pid, "VmRSS")
        polls0 = metric_sum(scrape(base), "sensor_sd_syncs_total")
        stop, out = multiprocessing.Event(), multiprocessing.Queue()
        prober = multiprocessing.Process(target=probe, args=(port, stop, out), daemon=True)
        prober.start()
        t0, wall0, cpu0 = time.monotonic(), time.time(), proc_cpu_seconds(pid)
        conns = open_clients(port, plan.clients)
        opened_at, opened = time.time(), len(conns)
        peak = rss_idle
        deadline = t0 + plan.hold
        while time.monotonic() < deadline:  # the hold is the measurement window itself
            peak = max(peak, proc_kib(pid, "VmRSS"))
            time.sleep(0.2)
        held, wall1, cpu = time.monotonic() - t0, time.time(), proc_cpu_seconds(pid) - cpu0
        metrics = scrape(base)
        polls = metric_sum(metrics, "sensor_sd_syncs_total") - polls0
        for s in conns:
            s.close()
        conns = []
        stop.set()
        checks = out.get(timeout=30)
        prober.join(10)
        wait_until(lambda: metric_sum(scrape(base), "sensor_sd_http_connections") <= 1,
                   60, "the clients' connections closed on the SD", 0.2)
        closed = {r: metric_sum(scrape(base), "sensor_sd_http_connections_closed_total",
                                reason=r) for r in ("over_limit", "evicted", "write_timeout")}
        # RSS once they are gone: the lowest over 5 s (the allocator hands pages back as it can).
        after = proc_kib(pid, "VmRSS")
        settle = time.monotonic() + 5
        while time.monotonic() < settle:
            after = min(after, proc_kib(pid, "VmRSS"))
            time.sleep(0.2)
        assert sd.alive(), sd.tail()
    finally:
        for s in conns:
            s.close()
        sd.stop()
        inv.stop()
    return Row(cap, plan.clients, opened, rss_idle / 1024, peak / 1024, after / 1024,
               opened_at - wall0, Probes.of(checks, wall0, opened_at), Probes.of(checks, opened_at, wall1), cpu,
               int(polls), int(held // plan.interval), closed)


def table(rows: list[Row], plan: Plan) -> Table:
    t = Table(f"{plan.clients:,} clients that never read, `sensor-sd run` at {plan.sensors:,} targets "
              f"({plan.hold:.0f} s hold, UPDATE_INTERVAL={plan.interval:g})",
              ["WEB_MAX_CONNECTIONS", "RSS MiB idle / peak / after", "after vs idle",
               "/-/healthy ms max / p99 while they connect", "/-/healthy ms max / p99 once connected",
               "SD CPU s", "polls (expected)", "closed: over_limit / evicted / write_timeout", "goals met"])
    for r in rows:
        back = r.rss_after_mib / r.rss_idle_mib
        healthy = [r.healthy_opening, r.healthy_holding]
        met = (r.rss_peak_mib < GOAL_RSS_MIB and all(h.max_ms < GOAL_HEALTHY_MS and not h.failures for h in healthy)
               and r.polls >= r.polls_expected - 1 and back <= GOAL_RSS_BACK)
        t.add(r.cap, f"{r.rss_idle_mib:.0f} / {r.rss_peak_mib:.0f} / {r.rss_after_mib:.0f}", f"{back:.2f}x",
              r.healthy_opening.cell() + f", {r.open_seconds:.1f} s", r.healthy_holding.cell(), r.cpu_seconds,
              f"{r.polls} ({r.polls_expected})",
              " / ".join(f"{r.closed[k]:,.0f}" for k in ("over_limit", "evicted", "write_timeout")),
              "yes" if met else "no")
    t.notes += [f"goals: peak RSS < {GOAL_RSS_MIB} MiB, /-/healthy < {GOAL_HEALTHY_MS} ms and never failing, "
                f"polls on schedule (at most one short), RSS after within {GOAL_RSS_BACK - 1:.0%} of idle",
                "/-/healthy is probed from a separate process every 0.1 s on a fresh connection; RSS from "
                "/proc/PID/status, peak sampled every 0.2 s; 'after' is the lowest over 5 s once the SD reports "
                "its client connections closed"]
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="seconds: tiny sizes, writes nothing")
    p.add_argument("--clients", type=int, help="override the number of clients (a reduced run on a busy machine)")
    p.add_argument("--caps", help="comma-separated WEB_MAX_CONNECTIONS values (default: 512,4096)")
    args = p.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "full"]
    if args.clients or args.caps:
        plan = Plan(plan.name if not args.clients else f"{plan.name}-reduced", plan.sensors,
                    args.clients or plan.clients, plan.hold, plan.interval,
                    tuple(int(c) for c in args.caps.split(",")) if args.caps else plan.caps)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per client, here and in the SD
    workdir = (OUT / f"slow-clients-{plan.name}").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    facts = machine_facts()
    rows = []
    for cap in plan.caps:
        print(f"WEB_MAX_CONNECTIONS={cap}: {plan.clients} clients at {plan.sensors} targets ...", flush=True)
        rows.append(measure(plan, cap, workdir))
    tab = table(rows, plan)
    print(tab.text())
    if args.smoke:
        return 0
    out = OUT / f"slow-clients-{plan.name}.md"
    lines = [f"# Slow clients ({plan.name} plan)", "",
             f"`python bench/slow_clients.py`, {started:%Y-%m-%d %H:%M} UTC.", "", f"## {tab.title}", "",
             tab.markdown(), "", *[f"* {n}" for n in tab.notes], "", "## Machine", "",
             *[f"* {k}: {v}" for k, v in facts.items()], ""]
    out.write_text("\n".join(lines))
    (OUT / f"slow-clients-{plan.name}.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(f"wrote {out.relative_to(OUT.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
