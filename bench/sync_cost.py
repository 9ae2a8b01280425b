"""(1) Sync cost: `sensor-sd once`, a steady-state sync inside a daemon, the seed design and the floor.

(5) Profile of the largest steady-state sync (cProfile, in a child process).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from _common import BENCH, PY, SEED, Inventory, Table, min_med, rel, run_measured, sd_argv, sd_env, size_label


def _inproc(mode: str, url: str, target: Path, arg: str, timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run([PY, str(BENCH / "inproc.py"), mode, url, str(target), arg], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"inproc {mode} failed: {out.stderr[-800:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(sizes: list[int], runs: int, workdir: Path, profile_size: int | None) -> dict[str, Any]:
    wall = Table("Sync cost: wall time in seconds (min / median of %d runs)" % runs,
                 ["hosts", "sensor-sd once, first sync", "once, file exists (+10/-5)", "daemon steady sync (+10/-5)",
                  "seed design (whole process)", "floor in-process (durable write)", "floor, no fsync",
                  "daemon ÷ floor", "seed ÷ daemon"])
    rss = Table("Sync cost: peak RSS in MiB (max of the runs)",
                ["hosts", "once, first sync", "once, file exists", "daemon (whole life: start + syncs)",
                 "seed design", "floor process"])
    results: dict[str, Any] = {"sizes": {}}
    for n in sizes:
        label = size_label(n)
        d = workdir / f"sync-{label}"
        d.mkdir(parents=True, exist_ok=True)
        inv = Inventory(n, d / "logs")
        try:
            target = d / "targets.json"
            env = sd_env(INVENTORY_URL=f"inv={inv.url}", TARGETS_FILE=str(target), REQUEST_TIMEOUT="120",
                         MAX_DROP_RATIO="1")
            first, first_rss, exist, exist_rss = [], [], [], []
            for _ in range(runs):
                target.unlink(missing_ok=True)
                w, r, rc, err = run_measured(sd_argv("once"), env)
                if rc != 0:
                    raise RuntimeError(f"sensor-sd once exited {rc}: {err}")
                first.append(w)
                first_rss.append(r)
            for _ in range(runs):
                inv.churn()
                w, r, rc, err = run_measured(sd_argv("once"), env)
                if rc != 0:
                    raise RuntimeError(f"sensor-sd once (file exists) exited {rc}: {err}")
                exist.append(w)
                exist_rss.append(r)
            seed, seed_rss = [], []
            for _ in range(runs):
                w, r, rc, err = run_measured([PY, str(SEED), inv.url, str(d / "seed.json")])
                if rc != 0:
                    raise RuntimeError(f"{SEED.name} exited {rc}: {err}")
                seed.append(w)
                seed_rss.append(r)
            daemon = _inproc("daemon", inv.url, d / "daemon.json", str(runs))
            floor = _inproc("floor", inv.url, d / "floor.json", str(runs))
            if profile_size == n:
                results["profile"] = _inproc("profile", inv.url, d / "profile.json", str(d / "sync.prof"))
                results["profile"]["hosts"] = n
        finally:
            inv.stop()
        mm = {k: min_med(v) for k, v in {"first": first, "exist": exist, "daemon": daemon["total"],
                                          "floor": floor["total"], "floor_nofsync": floor["no_fsync"],
                                          "seed": seed}.items()}
        ratio_floor = mm["daemon"][1] / mm["floor"][1]
        ratio_seed = mm["seed"][1] / mm["daemon"][1]
        wall.add(label, *(f"{fmt2(mm[k])}" for k in ("first", "exist", "daemon", "seed", "floor", "floor_nofsync")),
                 f"{ratio_floor:.2f}×", f"{ratio_seed:.1f}×")
        mib = lambda kib: kib / 1024  # noqa: E731
        rss.add(label, mib(max(first_rss)), mib(max(exist_rss)), mib(daemon["peak_kib"]), mib(max(seed_rss)),
                mib(floor["peak_kib"]))
        results["sizes"][n] = {"mm": mm, "ratio_floor": ratio_floor, "ratio_seed": ratio_seed,
                               "first_rss_mib": mib(max(first_rss)), "exist_rss_mib": mib(max(exist_rss)),
                               "daemon_rss_mib": mib(daemon["peak_kib"]),
                               "daemon_poll": min_med(daemon["poll"]), "daemon_publish": min_med(daemon["publish"]),
                               "floor_phases": {k: min_med(v) for k, v in floor["phases"].items()}}
        print(f"  sync {label}: done", flush=True)
    wall.notes += [
        "`once` is the whole process (interpreter start, imports, one poll, publish, exit); `file exists` means "
        "the previous file is loaded as last known good and the inventory changed by 10 added / 5 removed.",
        "`daemon steady sync` is `Discoverer.poll` + `publish` in a running process after a change of +10/-5 "
        "(fetch, validate, diff, drop guard, render, etag, durable atomic write).",
        "`floor` is urllib fetch + orjson parse + port appended + orjson render + write in one process, with no "
        "validation, sort, dedup or diff; `durable write` adds the fsync of file and directory that the contract "
        f"requires of sensor-sd (and that {SEED.name} skips).",
        f"`{rel(SEED)}` is the seed design re-implemented in this repository (requests + urllib3 Retry, "
        "`response.json()`, `json.dump(indent=2)`, `os.replace`, no fsync), run as a whole process.",
        "Ratios use medians.",
    ]
    rss.notes.append("MiB throughout (the goals' MB read as MiB). Peak RSS of `once` and the seed design from GNU time's %M; of the "
                     "in-process children from their own VmHWM (/proc/self/status). The daemon figure covers its "
                     "first full sync and the steady syncs.")
    results["tables"] = [wall, rss]
    return results


def fmt2(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} / {pair[1]:.3f}"


def profile_tables(prof: dict[str, Any]) -> list[Table]:
    stages = Table(f"Where the time goes: one steady-state sync at {size_label(prof['hosts'])} hosts "
                   f"(cProfile, {prof['wall']:.3f} s under the profiler)", ["stage", "seconds", "share"])
    for label, secs in prof["stages"].items():
        stages.add(label, secs, f"{100 * secs / prof['wall']:.0f}%")
    top = Table("Top functions by own time in that sync", ["function", "own s", "cumulative s"])
    for row in prof["top"]:
        top.add(row["function"], row["tottime"], row["cumtime"])
    return [stages, top]
