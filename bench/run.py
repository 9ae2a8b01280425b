#!/usr/bin/env python3
"""sensor-sd benchmarks: sync cost, idle cost, http_sd serving, propagation, profile.

    make bench         # full: up to 1M hosts, writes docs/BENCHMARKS.md
    make bench-quick   # up to 100k hosts, shorter windows (a few minutes), writes bench/out/BENCHMARKS-quick.md
    python bench/run.py --smoke   # seconds: every code path at tiny sizes, writes nothing

Only the full plan writes the tracked docs/BENCHMARKS.md: quick figures are
for a look while working and stay under bench/out/ (git-ignored).

Baselines run in the same run on the same machine: the seed design
(bench/seed_design.py, re-implemented here), an in-process floor, and
prometheus-http-sd (installed into its own venv under bench/out/ on first use).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cold_start  # noqa: E402
import http_sd  # noqa: E402
import idle  # noqa: E402
import propagation  # noqa: E402
import sync_cost  # noqa: E402
from _common import OUT, REPO, SEED, Table, machine_facts, measured_commit, rel, size_label  # noqa: E402


@dataclass(frozen=True)
class Plan:
    name: str
    sync_sizes: list[int]
    runs: int
    profile_size: int
    idle_window: float
    http_sizes: list[int]
    http_conns: list[int]
    http_seconds: float
    install_peer: bool
    changes: int
    gap: tuple[float, float]
    slow_interval: str
    cold_runs: int


PLANS = {
    "full": Plan("full", [100, 10_000, 100_000, 1_000_000], 5, 1_000_000, 60.0, [100, 100_000], [1, 16, 64], 8.0,
                 True, 24, (1.0, 7.0), "30", 21),
    "quick": Plan("quick", [100, 10_000, 100_000], 5, 100_000, 15.0, [100, 100_000], [1, 16, 64], 2.0,
                  True, 6, (0.5, 3.0), "30", 11),
    # Smoke: each code path once at tiny sizes; propagation with a short "slow" interval so it takes seconds.
    "smoke": Plan("smoke", [100], 1, 100, 2.0, [100], [1], 1.0, False, 1, (0.1, 0.2), "2", 2),
}


def _goals(res: dict[str, Any], plan: Plan) -> Table:
    t = Table("Goals", ["goal", "measured", "met?", "what limits it"])
    sync = res.get("sync", {}).get("sizes", {})
    big = max(sync) if sync else None

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**not met**")

    if big is not None:
        s = sync[big]
        lbl = size_label(big)
        scale = "" if big == 1_000_000 else f" (this run's largest size is {lbl}; the goal is stated for 1M)"
        ok = s["ratio_floor"] <= 1.3
        t.add(f"{lbl} steady-state sync ≤ 1.3× the floor{scale}",
              f"{s['ratio_floor']:.2f}× (daemon {s['mm']['daemon'][1]:.3f} s vs floor {s['mm']['floor'][1]:.3f} s, "
              f"medians; floor without fsync {s['mm']['floor_nofsync'][1]:.3f} s)",
              verdict(ok), "" if ok else "work the floor skips: the validation scans, the sort and dedup check, the "
              "diff against the previous generation and freeing it (see the profile); on this shared machine "
              "the ratio moves between runs, so re-run before reading much into the second decimal")
        if s["ratio_seed"] is not None:
            ok = s["ratio_seed"] >= 2
            t.add(f"{lbl} steady-state sync ≥ 2× faster than the seed design{scale}",
                  f"{s['ratio_seed']:.2f}× (seed {s['mm']['seed'][1]:.3f} s whole process)", verdict(ok),
                  "" if ok else f"the seed skips validation, sort, diff and both fsyncs: its whole process "
                  f"(median {s['mm']['seed'][1]:.2f} s, min {s['mm']['seed'][0]:.2f} s in this run) is only "
                  f"{s['mm']['seed'][1] / s['mm']['floor'][1]:.2f}× the in-process floor, so 2× needs a daemon sync "
                  f"within {s['mm']['seed'][1] / 2 / s['mm']['floor'][1]:.2f}× the floor (measured "
                  f"{s['ratio_floor']:.2f}×): what limits it is what limits the floor ratio above")
        ok = s["first_rss_mib"] <= 150  # MB read as MiB, like the seed's /usr/bin/time figures
        t.add(f"peak RSS at {lbl} ≤ 150 MB (`sensor-sd once`, first sync){scale}", f"{s['first_rss_mib']:.0f} MiB "
              f"(file exists: {s['exist_rss_mib']:.0f} MiB; daemon: {s['daemon_rss_mib']:.0f} MiB)", verdict(ok),
              "" if ok else "1M targets are 1M Python str objects (one per target, the port included) plus the "
              f"rendered body and the interpreter ({sync[min(sync)]['first_rss_mib']:.0f}"
              f" MiB at {size_label(min(sync))} hosts); with a previous generation (file loaded, or a daemon's last "
              "known good) two generations are alive during the diff")
    if "idle" in res:
        i = res["idle"]
        ok = i["rss_mib"] <= 40
        t.add("daemon idle RSS at 100 hosts ≤ 40 MB", f"{i['rss_mib']:.1f} MiB (peak {i['hwm_mib']:.1f})",
              verdict(ok), "" if ok else "interpreter + aiohttp + prometheus_client imports")
        ok = i["share"] <= 2
        t.add("idle CPU ≤ 2% of one core (UPDATE_INTERVAL=1, 304s)", f"{i['share']:.2f}% ({i['per_hour']:.1f} CPU s/h)",
              verdict(ok), "" if ok else "per-poll cost of the aiohttp request")
    if "http" in res:
        cells = res["http"]["cells"]
        big_n = max(n for n, _ in cells) if cells else None
        if big_n is not None:
            c1 = cells.get((big_n, 1))
            p99 = c1["ours"]["p99"] if c1 else None
            ok = p99 is not None and p99 <= 20
            t.add(f"http_sd p99 ≤ 20 ms at {size_label(big_n)} targets, 1 connection (one Prometheus polling)",
                  f"{p99:.1f} ms" if p99 is not None else "—", verdict(ok if p99 is not None else None),
                  "" if ok else "copying the body to the socket")
            many = sorted((c, v["ours"]["p99"]) for (n, c), v in cells.items() if n == big_n and c > 1)
            if many:
                ok = all(p is not None and p <= 20 for _, p in many)
                t.add(f"http_sd p99 ≤ 20 ms at {size_label(big_n)} targets, " + " and ".join(str(c) for c, _ in many)
                      + " connections", ", ".join(f"{p:.0f} ms at {c}" for c, p in many), verdict(ok),
                      "" if ok else "one event loop writes the whole body per answer, so with c connections an "
                      "answer waits behind the others (p99 ≈ c ÷ req/s), and wrk shares the 2 cores")
                gz = sorted((c, v["ours_gzip"]["p99"]) for (n, c), v in cells.items() if n == big_n)
                ok = all(p is not None and p <= 20 for _, p in gz)
                t.add(f"http_sd p99 ≤ 20 ms at {size_label(big_n)} targets with Accept-Encoding: gzip (as Prometheus "
                      "asks), " + ", ".join(str(c) for c, _ in gz) + " connections",
                      ", ".join(f"{p:.0f} ms at {c}" for c, p in gz), verdict(ok),
                      "" if ok else "the compressed body is ~10x smaller; what remains is per-request overhead and "
                      "wrk on the same 2 cores")
            big_cells = [v for (n, _), v in cells.items() if n == big_n and v["peer"]]
            ratios = [v["ours"]["rps"] / v["peer"]["rps"] for v in big_cells if v["peer"]["rps"]]
            good = [v["ours"]["rps"] / max(v["peer"]["ok_rps"], 1e-9) for v in big_cells]
            if ratios:
                ok = min(good) >= 10
                t.add(f"http_sd ≥ 10× the peer's requests/s at {size_label(big_n)} targets, every concurrency "
                      "(the peer with its default cache refresh, warmed up; judged on answers Prometheus can use: 2xx)",
                      f"{min(good):.1f}× to {max(good):.1f}× against the peer's 2xx answers; "
                      f"{min(ratios):.1f}× to {max(ratios):.1f}× against all its answers",
                      verdict(ok), "" if ok else "see the http_sd table")
            stressed = [v for v in big_cells if v.get("peer_stressed") and v["peer_stressed"]["rps"]]
            if stressed:
                good = [v["ours"]["rps"] / max(v["peer_stressed"]["ok_rps"], 1e-9) for v in stressed]
                t.add(f"for reference, not a goal: the peer stressed with a 1 s cache refresh, {size_label(big_n)} "
                      "targets", f"{min(good):.0f}× to {max(good):.0f}× against its 2xx answers (mostly 500s)",
                      verdict(None), "its cache file is rewritten under its readers every second")
    if "cold" in res:
        c = res["cold"]
        ok = c["once"] <= c["seed"]
        t.add(f"whole-process `sensor-sd once` at {c['hosts']} hosts no slower than the seed design's (medians of "
              "interleaved rounds)", f"{c['once']:.3f} s vs {c['seed']:.3f} s ({c['once'] / c['seed']:.2f}×)",
              verdict(ok), "" if ok else "interpreter start and imports (see the import table in section 6); "
              "the two are within the machine's noise of each other")
    if "prop" in res and res["prop"].get("stats"):
        st = res["prop"]["stats"].get("refresh")
        ok = st is not None and st["p95"] <= 5.5
        t.add("propagation (c) POST /-/refresh p95 ≤ 5.5 s", f"p95 {st['p95']:.2f} s" if st else "—", verdict(ok),
              "Prometheus' 5 s discovery throttle" if not ok else "")
    return t


def _doc(plan: Plan, res: dict[str, Any], facts: dict[str, str], started: datetime.datetime, seconds: float,
         command: str) -> str:
    out = ["# Benchmarks", "",
           f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} minutes "
           f"({plan.name} plan). Every figure below comes from that run; do not edit them by hand — run the "
           "command again.", "",
           "**These figures are from a shared 2-core machine** on which other engineers ran test suites at the same "
           "time: absolute numbers are noisy, which is why each cell is repeated and reported as min / median and "
           "why baselines are measured in the same run, interleaved with our own measurements.", "",
           "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in facts.items()]
    out += ["", f"Seed design: `{rel(SEED)}` (requests + urllib3 Retry, `response.json()`, `json.dump(indent=2)`, "
            "no fsync). Floor: `bench/inproc.py floor`. Peer: prometheus-http-sd from PyPI in `bench/out/peer-venv`.",
            "", "## Goals", "", res["goals"].markdown(), ""]
    sections = [("1. Sync cost", res.get("sync", {}).get("tables", [])),
                ("2. Idle cost", [res["idle"]["table"]] if "idle" in res else []),
                ("3. http_sd serving", [t for t in (res["http"]["table"], res["http"].get("stressed_table")) if t]
                 if "http" in res else []),
                ("4. Propagation to a real Prometheus", [res["prop"]["table"]] if res.get("prop", {}).get("table") else []),
                ("5. Profile of the largest sync", res.get("profile_tables", [])),
                ("6. Cold start: `sensor-sd once` against the seed design, interleaved", res.get("cold", {}).get("tables", []))]
    for title, tables in sections:
        out += [f"## {title}", ""]
        if not tables:
            out += ["Not run in this plan (or a tool was missing).", ""]
        for tab in tables:
            out += [f"**{tab.title}**", "", tab.markdown(), ""]
            out += [f"* {n}" for n in tab.notes]
            out.append("")
        if title.startswith("5") and "profile_text" in res:
            out += [res["profile_text"], ""]
    return "\n".join(out) + "\n"


def _profile_text(res: dict[str, Any]) -> str:
    prof = res["sync"]["profile"]
    stages = prof["stages"]
    big = max(res["sync"]["sizes"])
    floor = res["sync"]["sizes"][big]["floor_phases"]
    parts = {k.strip(): v for k, v in stages.items()}
    fetch = parts.get("fetch (aiohttp GET + capped read)", 0)
    validate = parts.get("validate_body (decode, checks, split)", 0)
    sort = parts.get("sort + dedup check + tuple", 0)
    build = parts.get("Snapshot.build (render + etag)", 0)
    write = parts.get("write_atomic (write, fsync, rename, fsync dir)", 0)
    dif = parts.get("diff (block merge against previous)", 0)
    return "\n".join([
        "Reading the profile:",
        "",
        f"* **Fetch** ({fetch:.3f} s): the HTTP GET of a {size_label(big)}-host body through aiohttp, read in "
        f"whatever pieces the parser buffers and joined once. The floor's urllib fetch takes {floor['fetch'][1]:.3f} s.",
        f"* **Validation** ({validate:.3f} s, of which sort/dedup {sort:.3f} s): the body is proved to be a list of "
        "bare hostnames by a `bytes.translate` and a few substring scans, then one `str.replace` appends the port "
        "and one `split` makes the targets — one Python string per target, never one per hostname first. The floor "
        f"spends {floor['parse'][1]:.3f} s in orjson.loads alone (then another pass to append the port).",
        f"* **Diff** ({dif:.3f} s): a merge of two sorted tuples that skips equal runs 4096 at a time with C-speed "
        "tuple-slice comparisons, instead of building a set of each generation.",
        f"* **Snapshot.build** ({build:.3f} s): orjson render plus a SHA-256 etag. The "
        f"floor's render, which also appends the port, takes {floor['render'][1]:.3f} s.",
        f"* **write_atomic** ({write:.3f} s): almost all of it is the two fsyncs the contract asks for "
        f"(the floor's plain write takes {floor['write'][1]:.3f} s, its fsyncs {floor['fsync'][1]:.3f} s).",
        "* What remains is Python-object work that any design holding the targets as Python strings pays: "
        "creating ~1M str objects once and sorting them.",
    ])


def doc_path(plan: Plan) -> Path | None:
    """Where a plan's report goes by default: docs/ for the full plan only, nowhere for the smoke plan."""
    return {"full": REPO / "docs" / "BENCHMARKS.md", "quick": OUT / "BENCHMARKS-quick.md"}.get(plan.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="up to 100k hosts, short windows (a few minutes)")
    g.add_argument("--smoke", action="store_true", help="seconds: every code path at tiny sizes, no doc written")
    p.add_argument("--only", default="sync,idle,http,prop,cold", help="comma-separated sections (default: all)")
    p.add_argument("--doc", type=Path, default=None,
                   help="report file (default: docs/BENCHMARKS.md for the full plan, bench/out/ for the quick one)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch space (default bench/out/<plan>)")
    args = p.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    only = set(args.only.split(","))
    workdir = (args.workdir or OUT / plan.name).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    facts = {"commit measured": measured_commit(), **machine_facts()}
    print(f"sensor-sd benchmarks, {plan.name} plan", flush=True)
    res: dict[str, Any] = {}
    if "sync" in only:
        print("(1) sync cost ...", flush=True)
        res["sync"] = sync_cost.run(plan.sync_sizes, plan.runs, workdir, plan.profile_size)
        if "profile" in res["sync"]:
            res["profile_tables"] = sync_cost.profile_tables(res["sync"]["profile"])
            res["profile_text"] = _profile_text(res)
    if "idle" in only:
        print("(2) idle cost ...", flush=True)
        res["idle"] = idle.run(plan.idle_window, workdir)
    if "http" in only:
        if shutil.which("wrk"):
            print("(3) http_sd serving ...", flush=True)
            res["http"] = http_sd.run(plan.http_sizes, plan.http_conns, plan.http_seconds, workdir, plan.install_peer)
        else:
            print("(3) http_sd serving: skipped, wrk is not installed (make installs it)", flush=True)
    if "prop" in only:
        print("(4) propagation ...", flush=True)
        res["prop"] = propagation.run(plan.changes, plan.gap, workdir, plan.slow_interval)
    if "cold" in only:
        print("(6) cold start ...", flush=True)
        res["cold"] = cold_start.run(plan.cold_runs, 100)
    res["goals"] = _goals(res, plan)
    tables: list[Table] = [*res.get("sync", {}).get("tables", []), *res.get("profile_tables", [])]
    tables += [res[k]["table"] for k in ("idle", "http", "prop") if k in res and res[k].get("table")]
    tables += res.get("cold", {}).get("tables", [])
    tables.append(res["goals"])
    print()
    for tab in tables:
        print(tab.text(), end="\n\n")
    elapsed = time.monotonic() - t0
    print(f"done in {elapsed:.0f} s", flush=True)
    doc = args.doc or doc_path(plan)
    if plan.name != "smoke" and doc is not None:
        command = "make bench" if plan.name == "full" else "make bench-quick"
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(_doc(plan, res, facts, started, elapsed, command))
        print(f"wrote {rel(doc)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
