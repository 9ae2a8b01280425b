#!/usr/bin/env python3
"""http_sd serving, this checkout against other versions of the code, interleaved in one run.

    python bench/http_sd_ab.py --ref main             # 100k targets, 1/16/64 connections, 3 rounds of 8 s cells
    python bench/http_sd_ab.py --ref old=abc123 --rounds 5 --seconds 4

The cells of bench/http_sd.py (wrk against GET /targets, plain and with
Accept-Encoding: gzip), but every version serves the same inventory from its
own `sensor-sd run` at once, and each round times every version in turn (the
order alternating), so load from other processes on a shared machine falls on
all of them alike. A version is this checkout, the src/ of a git commit
(unpacked into a temporary directory) or of a directory, first on PYTHONPATH. Prints one table
of medians with the spread (min-max) over the rounds; writes it with the raw
figures under bench/out/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, REPO, Inventory, Table, fmt, sd_argv, sd_env, size_label  # noqa: E402
from http_sd import wrk  # noqa: E402
from sensor_sd.sim.stack import LOOPBACK, Proc, free_port, http_get, http_ok, spawn, wait_until  # noqa: E402

THIS = "this checkout"


def _export_src(ref: str, into: Path) -> Path:
    """src/ of a commit, unpacked into `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _spread(values: list[float]) -> str:
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", action="append", default=[], metavar="[NAME=]COMMIT",
                    help="a version to compare with this checkout: a commit, or a directory holding src/ (repeatable)")
    ap.add_argument("--targets", type=int, default=100_000)
    ap.add_argument("--conns", default="1,16,64", help="comma-separated wrk connection counts")
    ap.add_argument("--seconds", type=float, default=8.0, help="wrk duration per cell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT / "http-sd-ab.md")
    args = ap.parse_args(argv)
    conns = [int(c) for c in args.conns.split(",")]
    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="http-sd-ab-") as tmp:
        d = Path(tmp)
        versions: dict[str, str | None] = {THIS: None}  # name -> PYTHONPATH (None: the installed checkout)
        for spec in args.ref:
            name, _, ref = spec.rpartition("=")
            tree = Path(ref) / "src"
            src = tree if tree.is_dir() else _export_src(ref, d / f"src-{len(versions)}")
            versions[name or ref] = str(src)
        inv = Inventory(args.targets, d / "logs")
        sds: dict[str, Proc] = {}
        urls: dict[str, str] = {}
        try:
            for i, (name, path) in enumerate(versions.items()):
                port = free_port()
                env = sd_env(INVENTORY_URL=f"inv={inv.url}", UPDATE_INTERVAL="3600", TARGETS_FILE="",
                             LISTEN_ADDRESS=f"{LOOPBACK}:{port}", REQUEST_TIMEOUT="120")
                if path is not None:
                    env["PYTHONPATH"] = path
                sds[name] = spawn(f"sd-{i}", sd_argv("run"), d / "logs", env)
                urls[name] = f"http://{LOOPBACK}:{port}/targets"
            for name, url in urls.items():
                base = url.removesuffix("/targets")
                wait_until(lambda base=base: http_ok(base + "/-/ready"), 60 + args.targets / 10_000, f"{name} ready")
                status, body = http_get(url, timeout=30)
                assert status == 200, (name, status)
            order = list(versions)
            for r in range(args.rounds):
                for c in conns:
                    for enc in ("plain", "gzip"):
                        for name in (order if r % 2 == 0 else order[::-1]):
                            headers = ("Accept-Encoding: gzip",) if enc == "gzip" else ()
                            res = wrk(urls[name], c, args.seconds, headers)
                            res.pop("raw")
                            results.setdefault(name, {}).setdefault(f"{c}/{enc}", []).append(res)
                print(f"  round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for proc in sds.values():
                proc.stop()
            inv.stop()
    table = Table(f"http_sd GET /targets at {size_label(args.targets)} targets: wrk {args.seconds:g} s per cell, "
                  f"{args.rounds} rounds interleaved; median (min–max) over the rounds",
                  ["version", "connections", "p50 ms", "p99 ms", "req/s", "gzip p50 ms", "gzip p99 ms", "gzip req/s",
                   "errors"])
    for c in conns:
        for name in versions:
            plain, gz = results[name][f"{c}/plain"], results[name][f"{c}/gzip"]
            table.add(name, c, *(_spread([x[k] for x in plain]) for k in ("p50", "p99", "rps")),
                      *(_spread([x[k] for x in gz]) for k in ("p50", "p99", "rps")),
                      sum(x["non2xx"] + x["errors"] for x in plain + gz))
    table.notes.append("Versions: " + ", ".join(f"{n} = {'the working tree' if n == THIS else s}" for n, s in
                                                 zip(versions, [THIS, *args.ref])) + ".")
    print(table.text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# http_sd A/B ({started:%Y-%m-%d %H:%M} UTC)\n\n**{table.title}**\n\n{table.markdown()}\n\n"
                        + "".join(f"* {n}\n" for n in table.notes))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {os.path.relpath(args.out, REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
