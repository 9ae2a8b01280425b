"""Soak: `sensor-sd run` for N minutes under churn on every poll with faults mixed in.

    python tests/chaos/soak.py               # 10 minutes (make soak)
    python tests/chaos/soak.py --minutes 1   # shorter

Starts the inventory simulator and `sensor-sd run` on loopback (ephemeral
ports, a temporary directory) with UPDATE_INTERVAL=0.1. A driver thread
changes the inventory every 0.1 s: 200 stable sensors that never leave plus a
rotating window of churning ones (5 in, 5 out per step), sometimes with
invalid entries mixed in. A fault thread injects a random inventory fault
every few seconds (counted, so it clears by itself; `empty` only for fewer
polls than DROP_CONFIRMATIONS, so the guard must hold it). A reader thread
parses the targets file continuously; a sampler records RSS, open fds and
threads of the sensor-sd process once a second.

A stable sensor missing from the file or from /targets is a lost target.
Exit 0 when nothing was lost, no read was torn, RSS grew < 10 MB after
warm-up, the fd and thread counts stayed bounded and the file converged to the
final inventory. The figures go to stdout as JSON and into the marked soak
section of docs/RELIABILITY.md (unless --no-doc).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # localstack/ is the checkout's tooling, not installed

from localstack.config import Ports, StackConfig  # noqa: E402
from localstack.net import StackError, http_get, http_request, wait_until  # noqa: E402
from localstack.stack import Stack  # noqa: E402
DOC = REPO / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
STABLE = [f"stable_{i}" for i in range(200)]
WINDOW = 50  # churning sensors present at any time
STEP = 5  # churning sensors replaced per step
INVALID = ["bad host", 42, None, "http://sensor_x:9100", "user@sensor_y", "sensor_z:99999", "x" * 300]
MAX_RSS_GROWTH_MB = 10.0
# The SD may hold up to MAX_RESPONSE_BYTES while it reads an oversized body, and the allocator
# may keep that memory afterwards. A small cap keeps that allowance out of the growth figure,
# so growth means a leak; the 80 MB oversized faults still exceed it.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

# (mode, extra params, weight): every fault the inventory simulator can produce.
FAULTS: list[tuple[str, dict[str, Any], int]] = [
    ("status", {"code": 500}, 3), ("status", {"code": 503}, 2), ("status", {"code": 404}, 1),
    ("status", {"code": 401}, 1), ("hang", {"seconds": 2}, 2), ("slow", {"seconds": 0.2, "chunks": 4}, 2),
    ("truncated", {}, 2), ("garbage", {"bytes": 4096}, 2), ("html", {}, 2), ("object", {}, 2),
    ("nonutf8", {}, 2), ("oversized", {"bytes": 80 * 1024 * 1024}, 1),
    ("oversized", {"bytes": 80 * 1024 * 1024, "chunked": True}, 1), ("empty", {}, 2), ("reset", {}, 2),
    ("redirect_loop", {}, 2),
]


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (kB), threads and open fds of a process, from /proc."""
    stats: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                stats["rss_kb"] = int(value.split()[0])
            elif key == "Threads":
                stats["threads"] = int(value)
    stats["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return stats


def file_targets(body: bytes) -> set[str]:
    """All targets of a file_sd / http_sd body; raises ValueError when it is not a non-empty valid list."""
    data = json.loads(body)
    if not isinstance(data, list) or not data:
        raise ValueError("not a non-empty list")
    out: set[str] = set()
    for group in data:
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list) or not group["targets"]:
            raise ValueError("bad group")
        out.update(group["targets"])
    return out


@dataclass
class Figures:
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    file_reads: int = 0
    bad_reads: int = 0
    lost_file: int = 0  # reads where a stable sensor was missing from the file
    lost_http: int = 0  # /targets answers where a stable sensor was missing
    http_checks: int = 0
    healthy_max: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, error: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(error)


def churn_driver(stack: Stack, stop: threading.Event, fig: Figures, rng: random.Random) -> list[Any]:
    """Change the inventory every 0.1 s; return the last list sent."""
    first = 0
    items: list[Any] = []
    while not stop.is_set():
        first += STEP
        items = STABLE + [f"churn_{i}" for i in range(first, first + WINDOW)]
        if rng.random() < 0.1:
            items = items + rng.sample(INVALID, 2)
        rng.shuffle(items)
        try:
            status, body = http_request(stack.url("inventory", "/admin/sensors"), "PUT", items)
            if status != 200:
                fig.note(f"PUT /admin/sensors -> {status} {body[:100]!r}")
        except OSError as exc:
            fig.note(f"PUT /admin/sensors: {exc}")
        fig.steps += 1
        stop.wait(0.1)
    return items


def fault_driver(stack: Stack, stop: threading.Event, fig: Figures, rng: random.Random,
                 only: set[str] | None = None) -> None:
    modes = [f for f in FAULTS for _ in range(f[2]) if only is None or f[0] in only]
    while not stop.wait(rng.uniform(1.0, 3.0)):
        mode, params, _ = rng.choice(modes)
        count = rng.randint(1, 3)
        if mode == "empty":
            count = 2  # fewer sightings than DROP_CONFIRMATIONS: the guard must hold it every time
        elif mode == "redirect_loop":
            count *= 6  # one poll follows 5 redirects before giving up
        try:
            status, body = http_request(stack.url("inventory", "/admin/fault"), "PUT", {"mode": mode, "count": count, **params})
            if status != 200:
                fig.note(f"PUT /admin/fault {mode} -> {status} {body[:100]!r}")
                continue
        except OSError as exc:
            fig.note(f"PUT /admin/fault: {exc}")
            continue
        fig.faults[mode] += count


def file_reader(path: Path, stop: threading.Event, fig: Figures) -> None:
    stable = set(STABLE)
    while not stop.is_set():
        try:
            body = path.read_bytes()
            targets = {t.rsplit(":", 1)[0] for t in file_targets(body)}
        except (OSError, ValueError) as exc:
            fig.bad_reads += 1
            fig.note(f"bad file read: {exc}")
        else:
            if not stable <= targets:
                fig.lost_file += 1
                fig.note(f"file lost stable sensors: {sorted(stable - targets)[:5]}")
        fig.file_reads += 1
        time.sleep(0.005)  # pacing of the reader, not a readiness wait


def metrics(stack: Stack) -> dict[str, float]:
    _, body = http_get(stack.url("sd", "/metrics"), timeout=5)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name.startswith("sensor_sd_"):
                key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "source") + "}"
                out[key] = out.get(key, 0.0) + s.value
    return out


def run(minutes: float, seed: int, only: set[str] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES) -> tuple[dict[str, Any], bool]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="sensor-sd-soak-") as tmp:
        cfg = StackConfig(Path(tmp), Ports.ephemeral(), sensors=0, update_interval=0.1,
                          sd_env={"REQUEST_TIMEOUT": "0.5", "LOG_LEVEL": "warning", "DROP_CONFIRMATIONS": "3",
                                  "MAX_RESPONSE_BYTES": str(max_response_bytes)})
        stack = Stack(cfg)
        fig = Figures()
        stop = threading.Event()
        with stack:
            stack.start(("inventory",))
            status, _ = http_request(stack.url("inventory", "/admin/sensors"), "PUT", STABLE)
            assert status == 200
            sd = stack.start_sd()
            pid = sd.popen.pid
            wait_until(lambda: cfg.targets_file.exists() and len(file_targets(cfg.targets_file.read_bytes())) == 200,
                       30, "first targets file")
            last: list[list[Any]] = []
            threads = [
                threading.Thread(target=lambda: last.append(churn_driver(stack, stop, fig, rng)), daemon=True),
                threading.Thread(target=fault_driver, args=(stack, stop, fig, random.Random(seed + 1), only),
                                 daemon=True),
                threading.Thread(target=file_reader, args=(cfg.targets_file, stop, fig), daemon=True),
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + minutes * 60
            stable = set(STABLE)
            try:
                while time.monotonic() < deadline and sd.alive():
                    t0 = time.monotonic()
                    status, _ = http_get(stack.url("sd", "/-/healthy"), timeout=5)
                    fig.healthy_max = max(fig.healthy_max, time.monotonic() - t0)
                    if status != 200:
                        fig.note(f"/-/healthy -> {status}")
                    status, body = http_get(stack.url("sd", "/targets"), timeout=5)
                    fig.http_checks += 1
                    try:
                        if status != 200 or not stable <= {t.rsplit(":", 1)[0] for t in file_targets(body)}:
                            fig.lost_http += 1
                            fig.note(f"/targets lost stable sensors (status {status})")
                    except ValueError as exc:
                        fig.lost_http += 1
                        fig.note(f"/targets unparsable: {exc}")
                    fig.samples.append({"t": round(time.monotonic() - fig.started, 1), **proc_stats(pid)})
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))  # sampling period
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
            alive = sd.alive()
            http_request(stack.url("inventory", "/admin/fault"), "DELETE")
            final = {x for x in (last[0] if last else STABLE)
                     if isinstance(x, str) and x.startswith(("stable_", "churn_"))}
            converged = True
            try:
                wait_until(lambda: {t.rsplit(":", 1)[0] for t in file_targets(cfg.targets_file.read_bytes())} == final,
                           30, "file converges to the final inventory")
            except StackError as exc:
                converged = False
                fig.note(str(exc))
            m = metrics(stack) if alive else {}
            sd.popen.send_signal(15)
            t0 = time.monotonic()
            try:
                code = sd.popen.wait(10)
            except Exception:  # noqa: BLE001
                code = -1
            stop_seconds = time.monotonic() - t0
    return summarize(fig, m, minutes, alive, converged, code, stop_seconds, max_response_bytes)


def summarize(fig: Figures, m: dict[str, float], minutes: float, alive: bool, converged: bool, code: int,
              stop_seconds: float, max_response_bytes: int) -> tuple[dict[str, Any], bool]:
    samples = fig.samples
    warm = samples[min(len(samples) - 1, max(5, len(samples) // 10))] if samples else {}
    end = samples[-1] if samples else {}
    rss_growth = (end.get("rss_kb", 0) - warm.get("rss_kb", 0)) / 1024
    syncs = {k.split("result=")[1].rstrip("}"): int(v) for k, v in m.items() if k.startswith("sensor_sd_syncs_total")}
    errors = {k.split("reason=")[1].rstrip("}"): int(v) for k, v in m.items()
              if k.startswith("sensor_sd_inventory_errors_total")}
    invalid = {k.split("reason=")[1].rstrip("}"): int(v) for k, v in m.items()
               if k.startswith("sensor_sd_invalid_entries_total")}
    result: dict[str, Any] = {
        "minutes": round((samples[-1]["t"] if samples else 0) / 60, 2),
        "requested_minutes": minutes,
        "max_response_bytes": max_response_bytes,
        "inventory_changes": fig.steps,
        "faults_injected": dict(sorted(fig.faults.items())),
        "faults_total": sum(fig.faults.values()),
        "syncs": syncs,
        "inventory_errors": errors,
        "invalid_entries": invalid,
        "guard_held": syncs.get("held", 0),
        "file_writes": int(m.get("sensor_sd_file_writes_total{}", 0)),
        "file_reads": fig.file_reads,
        "bad_reads": fig.bad_reads,
        "lost_file": fig.lost_file,
        "lost_http": fig.lost_http,
        "http_checks": fig.http_checks,
        "healthy_max_seconds": round(fig.healthy_max, 3),
        "rss_mb_warm": round(warm.get("rss_kb", 0) / 1024, 1),
        "rss_mb_end": round(end.get("rss_kb", 0) / 1024, 1),
        "rss_mb_max": round(max((s["rss_kb"] for s in samples), default=0) / 1024, 1),
        "rss_growth_mb": round(rss_growth, 1),
        "fds": [min((s["fds"] for s in samples), default=0), max((s["fds"] for s in samples), default=0),
                end.get("fds", 0)],
        "fds_warm": warm.get("fds", 0),
        "threads": [min((s["threads"] for s in samples), default=0),
                    max((s["threads"] for s in samples), default=0)],
        "alive": alive,
        "converged": converged,
        "exit_code": code,
        "stop_seconds": round(stop_seconds, 2),
        "errors": fig.errors,
        "rss_mb_series": [round(s["rss_kb"] / 1024, 1) for s in samples[:: max(1, len(samples) // 20)]],
    }
    ok = (alive and converged and code == 0 and fig.bad_reads == 0 and fig.lost_file == 0 and fig.lost_http == 0
          and rss_growth < MAX_RSS_GROWTH_MB and end.get("fds", 0) <= warm.get("fds", 0) + 4
          and result["threads"][1] <= 64 and fig.file_reads > 0)
    result["ok"] = ok
    return result, ok


def doc_section(r: dict[str, Any]) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in r["faults_injected"].items())
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["inventory_errors"].items()))
    syncs = ", ".join(f"{k} {v}" for k, v in sorted(r["syncs"].items()))
    rows = [
        ("commit measured", f"{r.get('commit', 'unknown')} ({r.get('date', 'unknown date')})"),
        ("duration", f"{r['minutes']} min at UPDATE_INTERVAL=0.1 s, MAX_RESPONSE_BYTES={r['max_response_bytes']}"),
        ("inventory changes (churn steps)", str(r["inventory_changes"])),
        ("faults injected (poll answers)", f"{r['faults_total']}: {faults}"),
        ("polls by result", syncs),
        ("inventory errors by reason", errors),
        ("drop guard holds", str(r["guard_held"])),
        ("targets file writes / reads by the checker", f"{r['file_writes']} / {r['file_reads']}"),
        ("torn, empty or unparsable reads", str(r["bad_reads"])),
        ("lost stable targets (file reads / `/targets` checks)", f"{r['lost_file']} / {r['lost_http']} of {r['http_checks']}"),
        ("RSS after warm-up -> end (max)", f"{r['rss_mb_warm']} -> {r['rss_mb_end']} MB ({r['rss_mb_max']} MB), growth {r['rss_growth_mb']} MB"),
        ("open fds min / max / end", " / ".join(map(str, r["fds"]))),
        ("threads min / max", " / ".join(map(str, r["threads"]))),
        ("slowest `/-/healthy`", f"{r['healthy_max_seconds']} s"),
        ("converged to the final inventory, SIGTERM exit", f"{r['converged']}, exit {r['exit_code']} in {r['stop_seconds']} s"),
        ("verdict", "pass" if r["ok"] else "FAIL"),
    ]
    lines = [BEGIN, "", "| soak figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", END]
    return "\n".join(lines)


def write_doc(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def _commit() -> str:
    """HEAD's short hash, marked when the measured code (src/, tests/) differs from it."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "tests"], capture_output=True, text=True,
                           cwd=REPO)
    return (head.stdout.strip() or "unknown") + (" + uncommitted changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    p.add_argument("--seed", type=int, default=1, help="seed of the churn and fault choices")
    p.add_argument("--doc", type=Path, default=DOC, help="markdown file whose soak section is rewritten")
    p.add_argument("--no-doc", action="store_true", help="print the figures only")
    p.add_argument("--max-response-bytes", type=int, default=MAX_RESPONSE_BYTES,
                   help=f"sensor-sd MAX_RESPONSE_BYTES (default {MAX_RESPONSE_BYTES})")
    p.add_argument("--faults", default="", help="comma-separated fault modes to inject (default: all)")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        p.error("--minutes must be > 0 and at most one day")
    only = {m.strip() for m in args.faults.split(",") if m.strip()} or None
    unknown = (only or set()) - {f[0] for f in FAULTS}
    if unknown:
        p.error(f"unknown fault modes: {', '.join(sorted(unknown))}")
    result, ok = run(args.minutes, args.seed, only, args.max_response_bytes)
    result["commit"], result["date"] = _commit(), time.strftime("%Y-%m-%d", time.gmtime())
    print(json.dumps(result, indent=2))
    if not args.no_doc:
        write_doc(args.doc, doc_section(result))
        print(f"soak figures written to {args.doc}")
    print("soak: " + ("pass" if ok else "FAIL"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
