#!/usr/bin/env python3
"""Cold start: whole-process `sensor-sd once` / `check` against the seed design, side by side in one run.

    python bench/cold_start.py                 # 100 hosts, 15 rounds -> bench/out/cold-start.md
    python bench/cold_start.py --runs 5 --hosts 1000
    python bench/cold_start.py --ref <commit>  # also `once` from that commit's src/, in the same rounds

`make bench` runs it too (section 6 of docs/BENCHMARKS.md, and its goal row).

A one-shot sync at small sizes is mostly interpreter start and imports, so
this is where a heavy import shows. Each round runs every command once, in
turn (interpreter alone, the seed design, `once`, `check`), so load from
other processes on the machine falls on all of them alike; the table gives
min / median per command and each median against the seed's. A second table
is one `once` run under `python -X importtime`, its import time by package,
so a regression points at the package that brought it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, PY, REPO, SEED, Inventory, Table, min_med, rel, run_measured, sd_argv, sd_env  # noqa: E402


SEED_ROW = f"seed design (`{rel(SEED)}`)"
ONCE_ROW = "`sensor-sd once`, first sync"


def _importtime(argv: list[str], env: dict[str, str], top: int) -> list[tuple[str, int, float]]:
    """(package, modules, ms of their own import time) of one run under -X importtime, costliest first.

    Self times add up to the whole import cost without overlap, so a package's row is what it costs;
    the standard library is one row.
    """
    out = subprocess.run([PY, "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} exited {out.returncode}: {out.stderr[-400:]}")
    groups: dict[str, list[float]] = {}
    for line in out.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header, or another line on stderr
        root = fields[2].strip().split(".")[0]
        key = "standard library" if root in sys.stdlib_module_names else root
        groups.setdefault(key, []).append(int(fields[0]) / 1000)
    rows = [(name, len(ms), sum(ms)) for name, ms in groups.items()]
    return sorted(rows, key=lambda r: -r[2])[:top]


def _without_flag(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _export_src(ref: str, into: Path) -> Path:
    """src/ of a commit, unpacked into `into`; first on PYTHONPATH, it shadows the checkout's package."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run(runs: int, hosts: int, ref: str | None = None) -> dict[str, Any]:
    """The two tables, and the medians of the seed and of `once` (the goal compares them)."""
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        d = Path(tmp)
        inv = Inventory(hosts, d / "logs")
        try:
            target = d / "targets.json"
            # Bytecode cached, as in an installed package (pip compiles it): a private cache, filled by the
            # first (untimed) round, so the checkout is not touched. One row compiles every run, as an
            # editable checkout does under PYTHONDONTWRITEBYTECODE=1.
            cache = {"PYTHONPYCACHEPREFIX": str(d / "pycache")}
            env = sd_env(INVENTORY_URL=f"inv={inv.url}", TARGETS_FILE=str(target), MAX_DROP_RATIO="1")
            cached, env_cached = ({**_without_flag(e), **cache} for e in (os.environ, env))
            commands = {
                "interpreter alone (`python -c pass`)": ([PY, "-c", "pass"], cached),
                SEED_ROW: ([PY, str(SEED), inv.url, str(d / "seed.json")], cached),
                ONCE_ROW: (sd_argv("once"), env_cached),
                "`sensor-sd check` (file exists)": (sd_argv("check"), env_cached),
                "`sensor-sd once`, no bytecode cache (sources compiled each run)":
                    (sd_argv("once"), {**env, "PYTHONDONTWRITEBYTECODE": "1"}),
            }
            if ref:
                commands[f"`sensor-sd once` at {ref}, first sync"] = (
                    sd_argv("once"), {**env_cached, "PYTHONPATH": str(_export_src(ref, d / "ref"))})
            times: dict[str, list[float]] = {name: [] for name in commands}
            for rnd in range(runs + 1):
                for name, (cmd, cmd_env) in commands.items():
                    if "once" in name:
                        target.unlink(missing_ok=True)
                    wall, _, rc, err = run_measured(cmd, cmd_env, timeout=120)
                    if rc != 0:
                        raise RuntimeError(f"{name} exited {rc}: {err}")
                    if rnd:  # round 0 fills the bytecode cache
                        times[name].append(wall)
            target.unlink(missing_ok=True)
            imports = _importtime(sd_argv("once"), env_cached, 8)
        finally:
            inv.stop()

    seed_median = min_med(times[SEED_ROW])[1]
    wall = Table(f"Cold start at {hosts} hosts: whole-process wall time in seconds ({runs} rounds)",
                 ["command", "min", "median", "median ÷ seed's"])
    for name, values in times.items():
        low, mid = min_med(values)
        wall.add(name, low, mid, f"{mid / seed_median:.2f}×")
    wall.notes.append("Each round runs the commands in turn; `once` deletes the targets file first (a first "
                      "sync: fetch, validate, durable write), `check` reads it and writes nothing. Bytecode is "
                      "cached (an untimed first round fills a private cache) except in the `no bytecode cache` row.")
    top = Table("What `sensor-sd once` imports (one run under `python -X importtime`): own import time by package",
                ["package", "modules", "ms"])
    for name, count, ms in imports:
        top.add(name, count, ms)
    top.notes.append("Under -X importtime every import is slower than in the timed runs; compare rows, not totals.")
    return {"tables": [wall, top], "hosts": hosts, "seed": seed_median, "once": min_med(times[ONCE_ROW])[1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="rounds (each runs every command once)")
    ap.add_argument("--hosts", type=int, default=100, help="sensors in the inventory simulator")
    ap.add_argument("--out", type=Path, default=OUT / "cold-start.md", help="Markdown report")
    ap.add_argument("--ref", help="also time `once` from this git commit's src/ (e.g. a commit before a change)")
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    tables = run(args.runs, args.hosts, args.ref)["tables"]
    for t in tables:
        print(t.text(), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python bench/cold_start.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.write_text("\n\n".join([
        "# Cold start",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC; a shared machine, so read the medians "
        "side by side rather than as absolutes.",
        *(f"## {t.title}\n\n{t.markdown()}" + "".join(f"\n\n{n}" for n in t.notes) for t in tables),
    ]) + "\n")
    print(f"wrote {rel(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
