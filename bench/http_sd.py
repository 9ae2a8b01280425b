"""(3) http_sd serving: GET /targets of sensor-sd vs prometheus-http-sd (PyPI), loaded with wrk.

The peer lives in its own virtualenv under bench/out/ (it pins old Flask and
prometheus-client), created here on first use with pip. It runs as its users
run it: its default cache refresh (no flag), warmed up (answering our targets)
before any timing; that is the headline comparison. A second, labelled table
runs it with a 1 s cache refresh, where its cache file is rewritten under its
readers and most answers are 500s: a stress configuration, not its normal one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from _common import OUT, Inventory, Table, fmt, sd_argv, sd_env, size_label
from localstack.net import LOOPBACK, free_port, http_get, http_ok, wait_until
from localstack.procs import spawn

PEER_VENV = OUT / "peer-venv"
PEER_PACKAGE = "prometheus-http-sd"
# (name, extra serve flags): the peer as shipped, and the stressed setting of earlier comparisons.
PEER_DEFAULT, PEER_STRESSED = "default", "stressed"
PEER_SETTINGS: dict[str, tuple[str, ...]] = {PEER_DEFAULT: (), PEER_STRESSED: ("--cache-refresh-interval", "1")}
# Its first answer per URL is a 500 "cache miss" until its next refresh (60 s by default in 3.0.x).
PEER_WARMUP_SECONDS = 180


def ensure_peer(install: bool) -> Path | None:
    """The peer's console script, installing it into its own venv when asked; None when unavailable."""
    exe = PEER_VENV / "bin" / "prometheus-http-sd"
    if exe.exists() or not install:
        return exe if exe.exists() else None
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"  creating {PEER_VENV.name} with {PEER_PACKAGE} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", PEER_PACKAGE], check=True, timeout=600)
    return exe if exe.exists() else None


def peer_version() -> str:
    out = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('prometheus-http-sd'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, conns: int, seconds: float, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    threads = min(2, conns)
    extra = [arg for h in headers for arg in ("-H", h)]
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
                          *extra, url], capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    res: dict[str, Any] = {"raw": text}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", text, re.M)
        res[f"p{q}"] = _ms(m.group(1)) if m else None
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["errors"] = sum(int(x) for x in m.groups()) if m else 0
    res["ok_rps"] = res["rps"] * (1 - (res["non2xx"] + res["errors"]) / res["requests"]) if res["requests"] else 0.0
    return res


def run(sizes: list[int], conns: list[int], seconds: float, workdir: Path, install_peer: bool) -> dict[str, Any]:
    # Plans without the peer (the smoke plan) skip it even when installed: its warm-up alone takes up to a minute.
    peer = ensure_peer(install_peer) if install_peer else None
    table = Table(f"http_sd GET /targets: wrk {seconds:g} s per cell, latency p50 / p99 in ms, requests/s; "
                  "the peer with its default cache refresh, warmed up",
                  ["targets", "connections", "sensor-sd p50 / p99", "sensor-sd req/s", "sensor-sd non-2xx",
                   "sensor-sd gzip p50 / p99", "sensor-sd gzip req/s",
                   "peer p50 / p99", "peer req/s (2xx only)", "peer non-2xx / requests",
                   "req/s ratio vs peer's 2xx (vs all its answers)"])
    stressed = Table("http_sd GET /targets against the peer with a 1 s cache refresh (stressed setting, not its "
                     "default): same cells, same sensor-sd runs",
                     ["targets", "connections", "sensor-sd req/s", "stressed peer p50 / p99",
                      "stressed peer req/s (2xx only)", "stressed peer non-2xx / requests",
                      "req/s ratio vs its 2xx (vs all its answers)"])
    results: dict[str, Any] = {"cells": {}, "peer": peer is not None}
    for n in sizes:
        d = workdir / f"http-{size_label(n)}"
        d.mkdir(parents=True, exist_ok=True)
        inv = Inventory(n, d / "logs")
        port = free_port()
        sd = spawn("sensor-sd-http", sd_argv("run"), d / "logs", sd_env(
            INVENTORY_URL=f"inv={inv.url}", UPDATE_INTERVAL="3600", TARGETS_FILE="",
            LISTEN_ADDRESS=f"{LOOPBACK}:{port}", REQUEST_TIMEOUT="120"))
        peer_procs = []
        try:
            ours = f"http://{LOOPBACK}:{port}/targets"
            wait_until(lambda port=port: http_ok(f"http://{LOOPBACK}:{port}/-/ready"), 60 + n / 10_000, "sensor-sd ready")
            status, body = http_get(ours, timeout=30)
            assert status == 200, status
            size = len(body)
            theirs: dict[str, str] = {}
            if peer is not None:
                root = d / "peer-root"
                root.mkdir(exist_ok=True)
                (root / "targets.json").write_bytes(body)
                for setting, flags in PEER_SETTINGS.items():
                    cache = d / f"peer-cache-{setting}"
                    cache.mkdir(exist_ok=True)
                    pport = free_port()
                    peer_procs.append(spawn(f"peer-{setting}", [str(peer), "serve", "-h", LOOPBACK, "-p", str(pport),
                                                                "--cache-dir", str(cache), *flags, str(root)], d / "logs"))
                    theirs[setting] = f"http://{LOOPBACK}:{pport}/targets/"
                for setting, url in theirs.items():  # warmed up: a 200 with our data before any timing
                    wait_until(lambda url=url, body=body: _peer_ok(url, body), PEER_WARMUP_SECONDS,
                               f"prometheus-http-sd ({setting} cache refresh) serving the targets", 0.5)
            for c in conns:
                a = wrk(ours, c, seconds)
                # Prometheus' Go client asks for gzip; sensor-sd then serves its once-compressed copy.
                z = wrk(ours, c, seconds, ("Accept-Encoding: gzip",))
                b = wrk(theirs[PEER_DEFAULT], c, seconds) if theirs else None
                bs = wrk(theirs[PEER_STRESSED], c, seconds) if theirs else None
                results["cells"][(n, c)] = {"ours": a, "ours_gzip": z, "peer": b, "peer_stressed": bs}
                if bs is not None:
                    stressed.add(size_label(n), c, a["rps"], f"{fmt(bs['p50'])} / {fmt(bs['p99'])}",
                                 f"{fmt(bs['rps'])} ({fmt(bs['ok_rps'])})",
                                 f"{bs['non2xx'] + bs['errors']:,} / {bs['requests']:,}", _ratio(a, bs))
                table.add(size_label(n), c, f"{fmt(a['p50'])} / {fmt(a['p99'])}", a["rps"], a["non2xx"] + a["errors"],
                          f"{fmt(z['p50'])} / {fmt(z['p99'])}", z["rps"],
                          f"{fmt(b['p50'])} / {fmt(b['p99'])}" if b else None,
                          f"{fmt(b['rps'])} ({fmt(b['ok_rps'])})" if b else None,
                          f"{b['non2xx'] + b['errors']:,} / {b['requests']:,}" if b else None,
                          _ratio(a, b) if b else None)
            results.setdefault("sizes_bytes", {})[n] = size
        finally:
            for proc in peer_procs:
                proc.stop()
            sd.stop()
            inv.stop()
        print(f"  http_sd {size_label(n)}: done", flush=True)
    table.notes += [
        "Body sizes: " + ", ".join(f"{size_label(n)} targets = {b / 1024:,.0f} KiB"
                                    for n, b in results.get("sizes_bytes", {}).items()) + ".",
        "wrk -t min(2, connections) --timeout 10s --latency; p50/p99 are wrk's latency distribution (answers of any "
        "status). `non-2xx` counts non-2xx/3xx answers plus socket errors; a peer's req/s counts all its answers, "
        "the 2xx-only figure those Prometheus can use.",
        f"Peer: prometheus-http-sd {peer_version() if peer else '(not installed)'} in its own venv, serving the same "
        "JSON from a file with --cache-dir and its default cache refresh (no --cache-refresh-interval), timed only "
        "once it answered 200 with these targets.",
    ]
    stressed.notes += [
        "The same peer with --cache-refresh-interval 1 (earlier comparisons used this): its cache file is rewritten "
        "every second under its readers, so a share of its answers are 500 (its non-2xx column). Kept as a stress row, not the "
        "headline.",
    ]
    results["table"] = table
    results["stressed_table"] = stressed if stressed.rows else None
    return results


def _ratio(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """Our req/s over the peer's 2xx req/s (and over all its answers)."""
    if not peer["rps"]:
        return "∞ (peer 0 req/s)"
    return f"{ours['rps'] / max(peer['ok_rps'], 1e-9):,.0f}× ({ours['rps'] / peer['rps']:.1f}×)"


def _peer_ok(url: str, body: bytes) -> bool:
    status, data = http_get(url, timeout=10)
    if status != 200:
        return False
    got = orjson.loads(data)
    want = orjson.loads(body)
    return sum(len(g["targets"]) for g in got) == sum(len(g["targets"]) for g in want)
