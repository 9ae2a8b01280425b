"""GET /targets latency and throughput at 100k targets, measured with wrk.

Starts the inventory simulator with `--sensors N` and a real `sensor-sd run`
on loopback (through localstack.stack, ephemeral ports), waits until the
snapshot holds all N targets, then runs `wrk -t2 -c16 -d10s --latency` against:
the full body, one hashmod shard (after it is cached), a conditional GET that
is answered 304, and /-/healthy as the floor. Prints one table.

    .venv/bin/python bench/http_sd_quick.py [--sensors 100000] [--duration 10s]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # localstack/ is the checkout's tooling, not installed

from localstack.config import Ports, StackConfig  # noqa: E402
from localstack.net import wait_until  # noqa: E402
from localstack.stack import Stack  # noqa: E402


@dataclass(frozen=True)
class Result:
    name: str
    body_bytes: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, duration: str, headers: dict[str, str]) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, non-2xx/3xx responses) from wrk's --latency report."""
    argv = ["wrk", "-t2", "-c16", f"-d{duration}", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(bad.group(1)) if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=100_000)
    p.add_argument("--duration", default="10s")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sensor-sd-bench-") as tmp:
        cfg = StackConfig(workdir=Path(tmp), ports=Ports.ephemeral(), sensors=args.sensors, update_interval=300,
                          sd_env={"LOG_LEVEL": "warning"})
        with Stack(cfg) as stack:
            stack.start(["inventory", "sd"])
            url = stack.url("sd", "/targets")

            def loaded() -> bool:
                r = requests.get(url, timeout=10)
                return r.status_code == 200 and sum(len(g["targets"]) for g in r.json()) == args.sensors

            wait_until(loaded, 120, f"{args.sensors} targets on /targets")
            full = requests.get(url, timeout=10)
            shard_url = f"{url}?shard=0&shards=3"
            shard = requests.get(shard_url, timeout=30)  # renders and caches the shard before timing
            cases = [
                ("GET /targets", url, {}, len(full.content)),
                ("GET /targets?shard=0&shards=3", shard_url, {}, len(shard.content)),
                ("GET /targets If-None-Match (304)", url, {"If-None-Match": full.headers["ETag"]}, 0),
                ("GET /-/healthy", stack.url("sd", "/-/healthy"), {}, len(requests.get(stack.url("sd", "/-/healthy")).content)),
            ]
            results = [Result(name, size, *run_wrk(u, args.duration, h)) for name, u, h, size in cases]
    print(f"\nsensor-sd http_sd at {args.sensors:,} targets (wrk -t2 -c16 -d{args.duration} --latency, loopback)\n")
    print(f"{'request':36} {'body':>10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(f"{r.name:36} {r.body_bytes:>10,} {r.requests_per_s:>10,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.non_2xx:>7}")
    return 1 if any(r.non_2xx for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
