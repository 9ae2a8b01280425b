#!/usr/bin/env python3
"""Scale-out figures for docs/scaling.md: sensor-sd over many stores, and sensors per scraper.

    make bench-scale                  # full plan (~15 minutes), rewrites the measured part of docs/scaling.md
    python bench/scale.py --quick     # shorter windows, fewer sizes (~6 minutes), same doc
    python bench/scale.py --smoke     # seconds: every code path at tiny sizes, writes nothing in docs/

(1) sensor-sd polling S stores x M sensors (one source per store, a real
    `sensor-sd run` against the inventory simulator's /stores/<name>/inventory):
    time from start to every target on /targets, RSS, and CPU over a window of
    UPDATE_INTERVAL=30 polls that all answer 304.
(2) Sensors per scraper: a Prometheus server and a vmagent (remote-writing to
    victoria-metrics), each alone on the whole fleet, at 1k / 5k / 10k simulated
    sensors scraped through the fleet simulator: RSS, CPU, scrape duration, and
    the fleet simulator's own CPU (when it is saturated, it is what limits the
    scrape durations).
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    OUT, REPO, Table, machine_facts, proc_cpu_seconds, proc_kib, rel, run_measured, sd_argv, sd_env, size_label,
)
from localstack.config import load_yaml  # noqa: E402
from localstack.engines import (  # noqa: E402
    VMAGENT_CONFIG, all_targets, for_loopback, metric_samples, scrape_metrics, start_fleet, start_inventory,
    start_prometheus, start_sd, start_victoria_metrics, start_vmagent, url, vm_query,
)
from localstack.procs import Procs  # noqa: E402
from sensor_sd.sim.inventory import sources_env, store_names  # noqa: E402
from localstack.net import StackError, wait_until  # noqa: E402

DOC = REPO / "docs" / "scaling.md"
BEGIN, END = "<!-- bench-scale:begin -->", "<!-- bench-scale:end -->"
PER_STORE = 100
CPU_GOAL_PCT, RSS_GOAL_MIB = 1.0, 80.0
SD_REFRESH = "5s"


@dataclass(frozen=True)
class Plan:
    name: str
    shapes: list[tuple[int, int]]  # (stores, sensors per store) for sensor-sd
    update_interval: float
    cpu_window: float  # seconds of steady 304 polling measured at each shape
    scraper_sizes: list[int]
    scrape_interval: float
    scrape_window: float


PLANS = {
    "full": Plan("full", [(10, 100), (100, 100), (1000, 100)], 30.0, 90.0, [1000, 5000, 10_000], 30.0, 60.0),
    "quick": Plan("quick", [(10, 100), (1000, 100)], 30.0, 60.0, [1000, 5000], 30.0, 30.0),
    "smoke": Plan("smoke", [(3, 5)], 1.0, 2.0, [20], 2.0, 4.0),
}


def _wait_window(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))  # the measurement window itself


def _sum(text: str, name: str, **labels: str) -> float:
    return sum(v for lab, v in metric_samples(text, name) if all(lab.get(k) == x for k, x in labels.items()))


# --- (1) sensor-sd over many stores -------------------------------------------------------------


def measure_sd(stores: int, per_store: int, plan: Plan, workdir: Path) -> dict[str, Any]:
    procs = Procs(workdir / f"sd-{stores}x{per_store}")
    procs.workdir.mkdir(parents=True)
    total = stores * per_store
    try:
        inv = start_inventory(procs, stores, per_store)
        # One sync of every store as a whole process (`sensor-sd once`: poll all, publish once, exit).
        once_env = sd_env(**sources_env(url(inv), store_names(stores), procs.workdir / "once.sources.json"),
                          TARGETS_FILE=str(procs.workdir / "once.json"))
        once_wall, once_kib, code, err = run_measured(sd_argv("once"), once_env)
        if code != 0:
            raise StackError(f"sensor-sd once exited {code}: {err}")
        started = time.monotonic()
        sd = start_sd(procs, inv, store_names(stores), interval=plan.update_interval, extra={"LOG_LEVEL": "info"})
        wait_until(lambda: len(all_targets(sd)) == total, 300, f"{total} targets on /targets", 0.02)
        synced = time.monotonic() - started
        pid = procs.started[-1].popen.pid
        sync_hwm = proc_kib(pid, "VmHWM") / 1024
        writes = _sum(scrape_metrics(sd), "sensor_sd_file_writes_total")
        path = "/stores/{store}/inventory"
        # Steady state: every store has answered a poll with 304 once before the window opens.
        wait_until(lambda: _sum(scrape_metrics(inv), "inventory_sim_http_requests_total", path=path, code="304")
                   >= stores, 3 * plan.update_interval + 60, "a 304 from every store", 0.5)
        polls0 = _sum(scrape_metrics(inv), "inventory_sim_http_requests_total", path=path)
        cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
        _wait_window(plan.cpu_window)
        cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
        inv_text = scrape_metrics(inv)
        polls = _sum(inv_text, "inventory_sim_http_requests_total", path=path) - polls0
        not_modified = _sum(inv_text, "inventory_sim_http_requests_total", path=path, code="304")
        errors = _sum(scrape_metrics(sd), "sensor_sd_inventory_errors_total")
        rss, hwm = proc_kib(pid, "VmRSS") / 1024, proc_kib(pid, "VmHWM") / 1024
    finally:
        procs.stop_all()
    cpu = cpu1 - cpu0
    return {"stores": stores, "per_store": per_store, "targets": total, "start_to_all": synced,
            "once": once_wall, "once_peak": once_kib / 1024, "file_writes": writes, "sync_hwm": sync_hwm, "rss": rss, "hwm": hwm,
            "cpu_pct": 100 * cpu / (t1 - t0), "cpu_ms_per_poll": 1000 * cpu / polls if polls else None,
            "polls": polls, "window": t1 - t0, "not_modified": not_modified, "errors": errors}


def sd_table(rows: list[dict[str, Any]], plan: Plan) -> Table:
    t = Table(f"sensor-sd over many stores (UPDATE_INTERVAL={plan.update_interval:g}, one source per store "
              "in a SOURCES_FILE)",
              ["stores × sensors", "targets", "`once`: sync every store (s)", "`once` peak RSS (MiB)",
               "daemon: start → all on /targets (s)", "daemon file writes in its first sync",
               "daemon peak RSS after first sync (MiB)", "daemon RSS steady (MiB)",
               "CPU, % of one core (304s)", "CPU ms per poll", "polls in window"])
    for r in rows:
        t.add(f"{r['stores']:,} × {r['per_store']}", r["targets"], r["once"], r["once_peak"], r["start_to_all"],
              int(r["file_writes"]), r["sync_hwm"], f"{r['rss']:.1f} (peak {r['hwm']:.1f})",
              f"{r['cpu_pct']:.2f}%", r["cpu_ms_per_poll"], int(r["polls"]))
    t.notes += [
        "`once`: the whole `sensor-sd once` process (interpreter start and imports, about 0.3 s, included) polling "
        "every store concurrently and publishing once; peak RSS from GNU time. `start → all`: spawn of `sensor-sd run` "
        "until /targets holds every target.",
        "`file writes in the first sync`: the daemon publishes after every poll that changed a source's list, but "
        "the file is written only when its bytes change and concurrent first polls coalesce: a handful of writes, "
        "not one per store. After a 304 nothing is published (the file is checked at most once per interval).",
        f"CPU: utime+stime of the sensor-sd process (/proc/PID/stat, 10 ms ticks) over a window of "
        f"{plan.cpu_window:g} s that starts once every store has answered 304; the inventory simulator runs in its own "
        "process and is not counted.",
    ]
    return t


# --- (2) sensors per scraper -------------------------------------------------------------------


def _prom_value(port: int, query: str) -> float | None:
    result = vm_query(port, query)  # the Prometheus query API answers the same way
    return float(result[0]["value"][1]) if result else None


def _timeout(interval: float) -> str:
    """The shipped sensors' scrape timeout, or the interval when that is shorter (smoke runs)."""
    shipped = load_yaml(VMAGENT_CONFIG)["scrape_configs"][-1]["scrape_timeout"]
    return shipped if float(shipped.rstrip("s")) <= interval else f"{interval:g}s"


def measure_scraper(kind: str, sensors: int, plan: Plan, workdir: Path) -> dict[str, Any]:
    procs = Procs(workdir / f"{kind}-{sensors}")
    procs.workdir.mkdir(parents=True)
    stores = max(1, sensors // PER_STORE)
    per_store = sensors // stores
    interval = f"{plan.scrape_interval:g}s"
    window = int(plan.scrape_window)
    try:
        inv = start_inventory(procs, stores, per_store)
        fleet = start_fleet(procs)
        sd = start_sd(procs, inv, store_names(stores), interval=30.0)
        wait_until(lambda: len(all_targets(sd)) == stores * per_store, 120, "every sensor on /targets", 0.1)
        ports = {"sd_port": sd, "inventory_port": inv, "fleet_port": fleet, "interval": interval,
                 "timeout": _timeout(plan.scrape_interval)}
        # Both re-read /targets every SD_REFRESH, as the shipped Prometheus configs and compose.scale.yaml do.
        if kind == "prometheus":
            config = for_loopback(load_yaml(VMAGENT_CONFIG), **ports)
            for job in config["scrape_configs"]:
                for sd_config in job.get("http_sd_configs", []):
                    sd_config["refresh_interval"] = SD_REFRESH
            query_port = start_prometheus(procs, config)
            selector = 'job="sensors-http"'
        else:
            query_port = start_victoria_metrics(procs)
            ports["vm_port"] = query_port
            start_vmagent(procs, for_loopback(load_yaml(VMAGENT_CONFIG), **ports), query_port, name="vmagent",
                          flags=["-remoteWrite.label=bench=scraper"], sd_check=SD_REFRESH)
            selector = 'job="sensors-http", bench="scraper"'
        scraper_pid = procs.started[-1].popen.pid
        fleet_pid = next(p.popen.pid for p in procs.started if p.name == "fleet")
        total = stores * per_store
        wait_until(lambda: (_prom_value(query_port, f"count(up{{{selector}}})") or 0) >= total,
                   4 * plan.scrape_interval + 60, f"{total} sensors scraped by {kind}", 0.5)
        cpu0 = {p: proc_cpu_seconds(p) for p in (scraper_pid, fleet_pid)}
        t0 = time.monotonic()
        _wait_window(plan.scrape_window)
        elapsed = time.monotonic() - t0
        cpu = {p: 100 * (proc_cpu_seconds(p) - c) / elapsed for p, c in cpu0.items()}
        rss, hwm = proc_kib(scraper_pid, "VmRSS") / 1024, proc_kib(scraper_pid, "VmHWM") / 1024
        rng = f"[{window}s]"
        avg_ms = _prom_value(query_port, f"avg(avg_over_time(scrape_duration_seconds{{{selector}}}{rng}))")
        p99_ms = _prom_value(query_port, f"quantile(0.99, max_over_time(scrape_duration_seconds{{{selector}}}{rng}))")
        up = _prom_value(query_port, f"avg(avg_over_time(up{{{selector}}}{rng}))")
        series = _prom_value(query_port, "prometheus_tsdb_head_series") if kind == "prometheus" else None
    finally:
        procs.stop_all()
    return {"kind": kind, "sensors": total, "rss": rss, "hwm": hwm, "cpu_pct": cpu[scraper_pid],
            "fleet_cpu_pct": cpu[fleet_pid], "avg_ms": 1000 * avg_ms if avg_ms is not None else None,
            "p99_ms": 1000 * p99_ms if p99_ms is not None else None, "up": up, "series": series}


def scraper_table(rows: list[dict[str, Any]], plan: Plan) -> Table:
    t = Table(f"Sensors per scraper (scrape every {plan.scrape_interval:g} s, {plan.scrape_window:g} s window)",
              ["scraper", "sensors", "RSS (MiB, peak)", "MiB per 1k sensors", "CPU, % of one core",
               "scrape duration avg / p99 (ms)", "up (share of scrapes)", "fleet simulator CPU %"])
    base: dict[str, dict[str, Any]] = {}
    for r in rows:
        first = base.setdefault(r["kind"], r)
        slope = ((r["rss"] - first["rss"]) / ((r["sensors"] - first["sensors"]) / 1000)
                 if r is not first and r["sensors"] != first["sensors"] else None)
        name = "Prometheus 2.42 (server, local TSDB)" if r["kind"] == "prometheus" else \
            "vmagent 1.79 (remote-writing to victoria-metrics)"
        t.add(name, r["sensors"], f"{r['rss']:.0f} ({r['hwm']:.0f})", slope, f"{r['cpu_pct']:.1f}%",
              f"{r['avg_ms']:.1f} / {r['p99_ms']:.0f}" if r["avg_ms"] is not None else None,
              f"{r['up']:.3f}" if r["up"] is not None else None, f"{r['fleet_cpu_pct']:.0f}%")
    t.notes += [
        "Each scraper runs alone on the fleet with the shipped deploy/vmagent/scrape.yml jobs (http_sd from sensor-sd "
        f"re-read every {SD_REFRESH}, the shipped 10 s scrape timeout), every sensor scraped through one fleet "
        "simulator process (a Python HTTP proxy answering for every sensor). `MiB per 1k sensors`: the RSS slope "
        "from the smallest size.",
        "Memory is read after one warm-up round and the window, i.e. after a few minutes of scraping. vmagent keeps "
        "no local storage and is near its steady state by then; a Prometheus server's head block keeps growing "
        "until its first compaction (2 h), so its figures are a lower bound.",
        "Scrape durations come from each scraper's own `scrape_duration_seconds` series (queried on Prometheus, and on "
        "victoria-metrics for vmagent) over the window; they include the fleet simulator's answer time, so when its "
        "CPU nears 100% of a core the durations measure the simulator, not the scraper.",
    ]
    return t


def rule_of_thumb(rows: list[dict[str, Any]]) -> list[str]:
    """Sizing text from the measured slopes (MiB per 1k sensors) of each scraper."""
    out = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    for kind, rs in by_kind.items():
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        slope = (hi["rss"] - lo["rss"]) / ((hi["sensors"] - lo["sensors"]) / 1000)
        base = lo["rss"] - slope * lo["sensors"] / 1000
        cap = max(0.0, (2048 - base) / slope * 1000) if slope > 0 else math.inf
        caveat = " (a lower bound for a Prometheus server: its head grows for hours)" if kind == "prometheus" else ""
        out.append(f"{kind}: about {base:.0f} MiB plus {slope:.1f} MiB per 1,000 sensors here{caveat}, so a 2 GiB "
                   f"memory budget holds at most about {cap:,.0f} sensors (linear extrapolation from "
                   f"{lo['sensors']:,} to {hi['sensors']:,} sensors)")
    return out


# --- the doc -------------------------------------------------------------------------------------


def goals(sd_rows: list[dict[str, Any]]) -> Table:
    t = Table("Goal", ["goal", "measured", "met?"])
    big = [r for r in sd_rows if r["stores"] >= 1000]
    for r in big:
        ok = r["cpu_pct"] <= CPU_GOAL_PCT and r["rss"] <= RSS_GOAL_MIB
        t.add(f"{r['stores']:,} stores × {r['per_store']} sensors, UPDATE_INTERVAL=30, answers 304: ≤ "
              f"{CPU_GOAL_PCT:g}% of one core and ≤ {RSS_GOAL_MIB:g} MB RSS",
              f"{r['cpu_pct']:.2f}% of one core, {r['rss']:.1f} MiB RSS (peak {r['hwm']:.1f})",
              "met" if ok else "**not met**")
    return t


def render(tables: list[Table], thumb: list[str], facts: dict[str, str], started: datetime.datetime,
           seconds: float, command: str) -> str:
    out = [BEGIN, "",
           f"Measured by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} minutes on a shared "
           f"{facts['cores (os.cpu_count)']}-core machine ({facts['CPU']}, {facts['memory']}, load average at start "
           f"{facts['load average at start']}), other engineers' test suites running at the same time. Do not edit "
           "these figures by hand: run the command again.", ""]
    for tab in tables:
        out += [f"**{tab.title}**", "", tab.markdown(), ""]
        out += [f"* {n}" for n in tab.notes]
        out.append("")
    if thumb:
        out += ["Memory per scraper, from the table:", ""] + [f"* {line}" for line in thumb] + [""]
    out.append(END)
    return "\n".join(out)


def write_doc(doc: Path, block: str) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{rel(doc)} has no {BEGIN} ... {END} block to fill")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="fewer sizes, shorter windows")
    g.add_argument("--smoke", action="store_true", help="seconds: every code path at tiny sizes, no doc written")
    p.add_argument("--only", default="sd,scrapers", help="comma-separated sections (default: sd,scrapers)")
    p.add_argument("--scrapers", default="prometheus,vmagent", help="comma-separated: prometheus, vmagent")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--workdir", type=Path, default=None, help="scratch space (default bench/out/scale-<plan>)")
    args = p.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    only = set(args.only.split(","))
    workdir = (args.workdir or OUT / f"scale-{plan.name}").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    facts = machine_facts()
    print(f"sensor-sd scale-out figures, {plan.name} plan", flush=True)
    tables: list[Table] = []
    thumb: list[str] = []
    if "sd" in only:
        rows = []
        for stores, per_store in plan.shapes:
            print(f"(1) sensor-sd at {stores} stores x {per_store} sensors ...", flush=True)
            rows.append(measure_sd(stores, per_store, plan, workdir))
        tables += [goals(rows), sd_table(rows, plan)]
    if "scrapers" in only:
        rows = []
        for kind in args.scrapers.split(","):
            for sensors in plan.scraper_sizes:
                print(f"(2) {kind} scraping {size_label(sensors)} sensors ...", flush=True)
                try:
                    rows.append(measure_scraper(kind, sensors, plan, workdir))
                except StackError as exc:
                    print(f"    {kind} at {sensors}: {exc}", flush=True)
                    raise
        tables.append(scraper_table(rows, plan))
        thumb = rule_of_thumb(rows)
    for tab in tables:
        print(tab.text(), end="\n\n")
    for line in thumb:
        print(f"  {line}")
    elapsed = time.monotonic() - t0
    print(f"done in {elapsed:.0f} s", flush=True)
    if plan.name != "smoke":
        command = "make bench-scale" if plan.name == "full" else "python bench/scale.py --quick"
        write_doc(args.doc, render(tables, thumb, facts, started, elapsed, command))
        print(f"wrote {rel(args.doc)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
