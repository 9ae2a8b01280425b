#!/usr/bin/env python3
"""Container figures: image build time and size, time to healthy, memory per container, stop time.

    make bench-container                   # writes the figures into docs/deployment.md
    python bench/container.py --no-doc     # prints them only
    python bench/container.py --cold       # also rebuilds the stand-in base images (about 2 minutes more)

Runs the shipped compose.yaml + compose.demo.yaml as they are, with only the
published ports moved to ephemeral 127.0.0.1 ports; the engine, stand-in base
images and classic builder are those of tests/deploy_live (docker_engine.py).
The project image is built with --no-cache, so its build time includes
installing the dependencies from the package index.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "deploy_live"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # localstack/ is the checkout's tooling, not installed

from docker_engine import (  # noqa: E402
    COMPOSE_FILES, PROJECT_PREFIX, REPO, STAND_IN_LABEL, Compose, Engine, build, ensure_stand_ins, image_size_bytes,
    poll, start_engine, write_override,
)

from localstack.net import http_get  # noqa: E402

DOC = REPO / "docs" / "deployment.md"
BEGIN, END = "<!-- container-figures:begin -->", "<!-- container-figures:end -->"
SENSORS = 100
SETTLE = 60.0  # seconds of steady state before memory is read


def _mib(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)\s*([KMG]i?B|B)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024,
                           "kB": 1e3 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20}[unit]


def _sensors_up(compose: Compose) -> int:
    status, body = http_get(compose.url("prometheus", 9090, "/api/v1/targets?state=active"), timeout=10)
    if status != 200:
        return 0
    return sum(t["health"] == "up" for t in json.loads(body)["data"]["activeTargets"]
               if t["labels"]["job"] == "sensors")


def measure(engine: Engine, workdir: Path, cold: bool) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if cold:
        for tag in ("debian:bookworm", "python:3.11-slim", "sensor-sd-stand-in/prometheus-base:bookworm",
                    "prom/prometheus:v2.42.0", "prom/alertmanager:v0.25.0", "grafana/grafana:10.4.2"):
            if engine.image_label(tag, STAND_IN_LABEL) is not None:  # never a real image
                engine.docker("image", "rm", "--force", tag, check=False)
    report = ensure_stand_ins(engine, workdir)
    if report.built:
        rows.append(("stand-in base images built (mmdebstrap, apt; sum of per-image times, two chains side by side)",
                     f"{sum(report.built.values()):.0f} s ("
                     + ", ".join(f"{t} {s:.0f} s" for t, s in report.built.items()) + ")"))
    tag = str(__import__("yaml").safe_load((REPO / "compose.yaml").read_text())["services"]["sensor-sd"]["image"])
    seconds = build(engine, REPO, tag, "--no-cache")
    rows.append(("project image build (`docker build --no-cache`, classic builder)", f"{seconds:.0f} s"))
    size, base = image_size_bytes(engine, tag), image_size_bytes(engine, "python:3.11-slim")
    rows.append((f"image size of {tag}", f"{size / 1e6:.0f} MB, of which {(size - base) / 1e6:.0f} MB "
                 f"on top of the base ({base / 1e6:.0f} MB here: the stand-in python:3.11-slim)"))

    override = write_override(workdir, extra_ports={"fleet": 9101})
    compose = Compose(engine, f"{PROJECT_PREFIX}{os.getpid()}-bench", (*COMPOSE_FILES, override))
    began = time.monotonic()
    try:
        compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-build", "--pull", "never", timeout=420)
        healthy = time.monotonic() - began
        poll(lambda: _sensors_up(compose) == SENSORS, 180, f"{SENSORS} sensors up", 0.5)
        all_up = time.monotonic() - began
        rows.append(("time to healthy (`compose up --wait`, every healthcheck passed)", f"{healthy:.0f} s"))
        rows.append((f"time to all {SENSORS} sensors up in Prometheus (from `up`)", f"{all_up:.0f} s"))
        settle_until = time.monotonic() + SETTLE
        poll(lambda: time.monotonic() > settle_until, SETTLE + 5, "steady state", 1)
        ids = compose("ps", "--quiet").stdout.split()
        out = engine.docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *ids).stdout
        for line in sorted(out.splitlines()):
            name, mem = line.split("\t")
            service = re.sub(rf"^{compose.project}[-_]|[-_]\d+$", "", name)
            rows.append((f"memory: {service} (`docker stats`, after {SETTLE:.0f} s)", f"{_mib(mem.split('/')[0]):.0f} MiB"))
        stop_began = time.monotonic()
        engine.docker("stop", "--time", "10", compose.container("sensor-sd"))
        rows.append(("`docker stop` of sensor-sd (SIGTERM to exit)", f"{time.monotonic() - stop_began:.2f} s"))
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
    left = compose.leftovers()
    rows.append(("left after `down -v` (containers, volumes, networks)", "none" if not left else str(left)))
    return rows


def render(rows: list[tuple[str, str]], engine: Engine) -> str:
    stamp = datetime.date.today().isoformat()
    lines = [BEGIN, "", f"Measured {stamp} by `make bench-container` on {os.cpu_count()} cores, "
             f"kernel {platform.release()}, Docker engine {engine.version} ({engine.driver}); "
             "Grafana is a stand-in answering /api/health only.", "",
             "| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", END]
    return "\n".join(lines)


def write_doc(block: str) -> None:
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/deployment.md alone")
    ap.add_argument("--cold", action="store_true", help="rebuild the stand-in base images too")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sensor-sd-bench-container-") as tmp:
        engine = start_engine(Path(tmp) / "dockerd.log")
        try:
            rows = measure(engine, Path(tmp), args.cold)
        finally:
            engine.stop()
    width = max(len(k) for k, _ in rows)
    print("== container figures")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    if not args.no_doc:
        write_doc(render(rows, engine))
        print(f"written to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
