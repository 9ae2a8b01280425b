"""Shared helpers of the benchmarks: children, timing, tables, machine facts.

Every child runs on loopback with an ephemeral port and is stopped by its own
process id (its own session, via the checkout's localstack.procs, shared with
the tests). Readiness is always polled (wait_until), never slept for.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # localstack/ is the checkout's tooling, not installed

# Process helpers live in localstack.procs; re-exported under the names the bench scripts use.
from localstack.net import LOOPBACK, free_port, http_ok, wait_until  # noqa: E402
from localstack.procs import proc_cpu_seconds, spawn, stop_all  # noqa: E402, F401
from localstack.procs import proc_status_kib as proc_kib  # noqa: E402, F401
from localstack.procs import sensor_sd_argv as sd_argv  # noqa: E402, F401
OUT = BENCH / "out"
PY = sys.executable
SEED = BENCH / "seed_design.py"  # the seed design, re-implemented in the repo as a yardstick


def rel(path: Path) -> str:
    """A path for the doc: relative to the repo (never an absolute machine path)."""
    try:
        return os.path.relpath(path, REPO)
    except ValueError:
        return path.name


@dataclass
class Table:
    """One result table: printed as text and written as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.columns)} |", "|" + "---|" * len(self.columns)]
        lines += [f"| {' | '.join(md(fmt(c)) for c in row)} |" for row in self.rows]
        return "\n".join(lines)

    def text(self) -> str:
        cells = [self.columns] + [[fmt(c) for c in row] for row in self.rows]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.columns))]
        out = [f"== {self.title}"]
        for k, r in enumerate(cells):
            out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
            if k == 0:
                out.append("  ".join("-" * w for w in widths))
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


def md(text: str) -> str:
    """A table cell for Markdown: no raw HTML, no column breaks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "—" if value is None else str(value)


def min_med(values: Sequence[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n >= 1000 else str(n)


# --- children ----------------------------------------------------------------------------------------

def sd_env(**env: str) -> dict[str, str]:
    """Environment for a sensor-sd child: only what the bench sets (no inherited INVENTORY_URL etc.)."""
    base = {k: v for k, v in os.environ.items() if k not in {
        "INVENTORY_URL", "UPDATE_INTERVAL", "TARGETS_FILE", "METRICS_PORT", "METRICS_PATH", "TARGET_LABELS",
        "LISTEN_ADDRESS", "REQUEST_TIMEOUT", "MAX_RESPONSE_BYTES", "MAX_DROP_RATIO", "DROP_CONFIRMATIONS",
        "DROP_WINDOW", "DROP_HOLD", "INVENTORY_TOKEN_FILE", "INVENTORY_CA_FILE", "WEB_CONFIG_FILE", "SOURCES_FILE",
        "LOG_FORMAT",
        "LOG_LEVEL"}}
    return {**base, "LOG_FORMAT": "json", "LOG_LEVEL": "warning", **env}


class Inventory:
    """The inventory simulator with N sensors on an ephemeral loopback port."""

    def __init__(self, sensors: int, logdir: Path, name: str = "inventory") -> None:
        self.port = free_port()
        self.proc = spawn(name, sd_argv("inventory-server", "--host", LOOPBACK, "--port", str(self.port),
                                        "--sensors", str(sensors), "--seed", "1"), logdir)
        self.url = f"http://{LOOPBACK}:{self.port}/inventory"
        timeout = 30 + sensors / 20_000
        wait_until(lambda: self._ready(), timeout, f"inventory simulator with {sensors} sensors", 0.05)

    def _ready(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"inventory simulator exited: {self.proc.tail()}")
        return http_ok(f"http://{LOOPBACK}:{self.port}/-/healthy")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{LOOPBACK}:{self.port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read() or b"null")

    def churn(self, add: int = 10, remove: int = 5) -> None:
        self.admin("POST", "/admin/sensors/remove", {"count": remove})
        self.admin("POST", "/admin/sensors/add", {"count": add})

    def stop(self) -> None:
        self.proc.stop()


TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def run_measured(argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 300) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS in KiB, exit code, stderr tail) of one child.

    Peak RSS comes from GNU time's %M when installed: a child forked straight
    from this (large) process inherits its resident size into ru_maxrss at
    exec (vfork shares the parent's memory), which would put a floor of this
    process' RSS under every small child. Without GNU time, wait4's rusage.
    """
    started = time.perf_counter()
    rss_file = None
    if TIME:
        fd, name = tempfile.mkstemp(prefix="rss-", suffix=".txt")
        os.close(fd)
        rss_file = Path(name)
        argv = [TIME, "-f", "%M", "-o", name, *argv]
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def kill() -> None:  # bounded: a hung child (and GNU time's own child) is killed, then reaped below
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group id is the unreaped child's pid
        except ProcessLookupError:
            pass

    killer = threading.Timer(timeout, kill)
    killer.start()
    try:
        err_bytes = proc.stderr.read() if proc.stderr else b""  # until the child closes it (exits)
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = err_bytes.decode(errors="replace")[-400:]
    if proc.stderr:
        proc.stderr.close()
    maxrss = int(usage.ru_maxrss)
    if rss_file is not None:
        text = rss_file.read_text().strip().splitlines()
        rss_file.unlink()
        maxrss = int(text[-1]) if text and text[-1].isdigit() else maxrss
        if text and text[0].startswith("Command exited with non-zero status"):
            proc.returncode = int(text[0].rsplit(" ", 1)[1])
    return wall, maxrss, proc.returncode, err


# --- machine facts -----------------------------------------------------------------------------------

def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import aiohttp
    import orjson

    prom = _first_line(["prometheus", "--version"]) if shutil.which("prometheus") else "not installed"
    wrk = _first_line(["wrk", "--version"]) if shutil.which("wrk") else "not installed"
    return {
        "CPU": cpu,
        "cores (os.cpu_count)": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "aiohttp / orjson": f"{aiohttp.__version__} / {orjson.__version__}",
        "Prometheus": re.sub(r"\s*\(.*", "", prom),
        "wrk": re.sub(r"\s*\[.*|Copyright.*", "", wrk).strip(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def measured_commit() -> str:
    """HEAD's short hash, marked when the measured code (src/, bench/) differs from it: figures name their code."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "bench"], capture_output=True,
                               text=True, cwd=REPO)
    except OSError:  # no git on this machine
        return "unknown (no git)"
    name = head.stdout.strip() if head.returncode == 0 else "unknown (not a git checkout)"
    return name + (" + uncommitted changes" if dirty.stdout.strip() else "")
