"""docs/RELIABILITY.md's figures, written by a command (`make reliability-report`), never by hand.

    python bench/reliability.py --run          # run the tests that measure, keep their figures, rewrite the doc
    python bench/reliability.py --run --slow   # the same plus the 1000-kill torture (~10 min more)
    python bench/reliability.py                # rewrite the doc from docs/reliability-figures.json only
    python bench/reliability.py --check        # exit 1 when the doc differs from what the figures give

The tests already write figure files (`crash-figures.json` from the crash
torture, `hostile-figures.json` from the hostile clients); `--run` runs them
under a known temporary directory, keeps each file in
docs/reliability-figures.json with the commit it measured, and renders the
tables into the doc between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->`: everything outside those blocks is prose and hand
rows, left as it is. The soak has its own block, written by `make soak`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "RELIABILITY.md"
FIGURES = REPO / "docs" / "reliability-figures.json"
WORK = REPO / "bench" / "out" / "reliability"
MAX_RSS_GROWTH_MB = 10  # the hostile test's limit (MAX_RSS_GROWTH_KB), restated for the table


def commit() -> str:
    """HEAD's short hash, marked when the measured code (src/, tests/) differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "tests"], capture_output=True, text=True,
                           cwd=REPO)
    name = head.stdout.strip() or "unknown"
    return name + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _pytest(basetemp: Path, *args: str) -> None:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *args]
    print("+", " ".join(argv[1:]), flush=True)
    done = subprocess.run(argv, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"reliability: the measuring tests failed (exit {done.returncode}); the doc is unchanged")


def _one(basetemp: Path, name: str) -> dict[str, Any]:
    found = sorted(basetemp.rglob(name))
    if len(found) != 1:
        raise SystemExit(f"reliability: expected one {name} under {basetemp}, found {len(found)}")
    return dict(json.loads(found[0].read_text()))


def measure(slow: bool) -> dict[str, Any]:
    """Run the measuring tests; return their figures, each stamped with the commit and the command."""
    stamp = {"commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    shutil.rmtree(WORK, ignore_errors=True)
    figures: dict[str, Any] = {}
    runs = [("crash", "crash-figures.json", ["tests/chaos/test_crash.py::test_crash_torture_short"]),
            ("hostile", "hostile-figures.json", ["tests/chaos/test_hostile_clients.py"])]
    if slow:
        runs.append(("crash_long", "crash-figures.json",
                     ["tests/chaos/test_crash.py::test_crash_torture_1000_kills", "-m", "slow"]))
    for key, name, args in runs:
        basetemp = WORK / key
        WORK.mkdir(parents=True, exist_ok=True)
        _pytest(basetemp, *args)
        figures[key] = {**stamp, "command": "pytest " + " ".join(args), **_one(basetemp, name)}
    return figures


# --- rendering ----------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,}"


def _mb(kib: float) -> str:
    return f"{kib / 1024:.1f} MB"


def render(figures: Mapping[str, Any]) -> dict[str, str]:
    """The body of every generated block, from the figures alone."""
    rows = ["| run | commit | kills | reader parses | file replacements seen | bad reads | after each kill |",
            "|---|---|---|---|---|---|---|"]
    for key, label in (("crash", "`make test`"), ("crash_long", "`-m slow`")):
        f = figures.get(key)
        if f is None:
            rows.append(f"| {label} | not measured: `make reliability-report SLOW=1` | | | | | |")
            continue
        when = f"{f['date']}; {f['note']}" if f.get("note") else f["date"]
        rows.append(f"| {label} | {f['commit']} ({when}) | {_n(f['kills'])} ({f['seconds']:g} s) | "
                    f"{_n(f['reads'])} | {_n(f['versions'])} | 0 | A or B |")
    blocks = {"crash": "\n".join(rows)}

    h = figures["hostile"]
    growth = h["rss_kb_after"] - h["rss_kb_baseline"]
    lines = [f"Measured at {h['commit']} ({h['date']}), {_n(h['connections'])} hostile connections in all:", "",
             "| after | open fds | RSS |", "|---|---|---|",
             f"| warm-up (baseline) | {h['fds_baseline']} | {_mb(h['rss_kb_baseline'])} |"]
    lines += [f"| {phase.removeprefix('test_').replace('_', ' ')} | {fds} | {_mb(rss)} |"
              for phase, fds, rss in h["phases"]]
    lines += [f"| all phases, connections closed | {h['fds_after']} | {_mb(h['rss_kb_after'])} |", "",
              f"RSS growth over the baseline: {growth / 1024:+.1f} MB (limit {MAX_RSS_GROWTH_MB} MB); open fds "
              f"{h['fds_baseline']} before, {h['fds_after']} after."]
    if "healthy_slowest_s" in h:
        lines.append(f"Slowest `/-/healthy` during the phases: {h['healthy_slowest_s']:.2f} s (limit 1 s).")
    blocks["hostile"] = "\n".join(lines)
    return blocks


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


def update(text: str, blocks: Mapping[str, str]) -> str:
    """`text` with each block's content replaced; a block whose markers are missing is an error."""
    for name, body in blocks.items():
        begin, end = _markers(name)
        head, found, rest = text.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise ValueError(f"{DOC.name} has no {begin} ... {end} block")
        text = f"{head}{begin}\n{body}\n{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="run the measuring tests first and keep their figures")
    p.add_argument("--slow", action="store_true", help="with --run: also the 1000-kill torture")
    p.add_argument("--check", action="store_true", help="only say whether the doc matches the figures")
    args = p.parse_args(argv)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    if args.run:
        figures.update(measure(args.slow))
        FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"wrote {FIGURES.relative_to(REPO)}")
    text = DOC.read_text()
    new = update(text, render(figures))
    if args.check:
        if new != text:
            print(f"{DOC.relative_to(REPO)} is out of date with {FIGURES.relative_to(REPO)}: "
                  "run python bench/reliability.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
