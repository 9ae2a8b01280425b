"""The local stack on loopback: inventory + fleet + sensor-sd + Prometheus + Alertmanager.

`make run` calls `python -m localstack` from the checkout: it starts the
stack on fixed ports (or --<part>-port), serves the console page, prints
the banner with every URL once all sensors are up in Prometheus, and stops
everything on Ctrl-C or SIGTERM. Every child runs in its own session (Ctrl-C
in a terminal reaches only this process, which stops the children in
reverse order) and dies with this process if it is killed (see procs.py),
so a killed `make run` leaves no orphans holding the ports.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localstack.config import DEMO_DROP_HOLD, PARTS, Ports, StackConfig, _seconds, rules_with_for
from localstack.console import Console, Link
from localstack.net import LOOPBACK, StackError, wait_until
from localstack.procs import proc_status_kib
from localstack.stack import Stack


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = Ports()
    p = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=100)
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="state and logs (default ./data, git-ignored)")
    p.add_argument("--update-interval", type=float, default=2.0, help="sensor-sd UPDATE_INTERVAL (default 2)")
    p.add_argument("--scrape-interval", default=None,
                   help="Prometheus scrape/evaluation interval (default 5s; 30s, the production value, above 1000 sensors)")
    p.add_argument("--http-sd", action="store_true",
                   help="also scrape the sensors through http_sd (job sensors-http): doubles scrapes and per-sensor alerts")
    p.add_argument("--alert-for", metavar="DURATION", default=None,
                   help="run the shipped rules with every `for:` set to DURATION (e.g. 10s) to see alerts in seconds")
    p.add_argument("--churn", action="store_true", help="let the inventory add and remove sensors all the time")
    p.add_argument("--measure", type=float, metavar="SECONDS", default=None,
                   help="print startup time and Prometheus memory as JSON, again after SECONDS, then stop")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all sensors up (default 300)")
    for part in ("inventory", "fleet", "sd", "prometheus", "alertmanager", "console"):
        p.add_argument(f"--{part}-port", type=int, default=int(os.environ.get(f"{part.upper()}_PORT", getattr(d, part))),
                       help=f"default {getattr(d, part)}, or ${part.upper()}_PORT")
    return p.parse_args(argv)


@dataclass(frozen=True)
class RunLock:
    """One `make run` per data directory: an flock on `stack.lock`, which names the holder's pid.

    The kernel drops the lock when the holder exits, however it exits, so a
    stale file never blocks; the file itself is left in place (deleting it
    would race with the next runner opening it).
    """

    path: Path
    fd: int

    @classmethod
    def acquire(cls, workdir: Path) -> RunLock:
        """The lock, or StackError naming the runner that holds it."""
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "stack.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StackError(f"another local stack (pid {holder}) is running in {workdir}; stop it first "
                             "(Ctrl-C in its terminal) or give this one another --data-dir and ports") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        os.close(self.fd)


class _Interrupted(Exception):
    """Ctrl-C/SIGTERM while starting: unwinds the start so everything begun is stopped."""


@dataclass
class _Run:
    """Signal state of one `make run`, owned by main() (no module-level state)."""

    stop: bool = False
    starting: bool = True

    def on_signal(self, signum: int, frame: object) -> None:
        self.stop = True
        if self.starting:  # raise once only, so the cleanup that follows is not interrupted itself
            self.starting = False
            raise _Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    ports = Ports(args.inventory_port, args.fleet_port, args.sd_port, args.prometheus_port, args.alertmanager_port,
                  args.console_port)
    inventory_args = ("--churn-add", "3", "--churn-remove", "2", "--churn-every", "20") if args.churn else ()
    # One Python process plays every sensor: 10k sensors every 5 s would be 2000 proxied scrapes a second.
    interval = args.scrape_interval or ("5s" if args.sensors <= 1000 else "30s")
    workdir = args.data_dir.resolve()
    fast = (workdir / "rules" / f"for-{args.alert_for}.rules.yml",) if args.alert_for else ()
    cfg = StackConfig(workdir, ports, sensors=args.sensors, update_interval=args.update_interval,
                      scrape_interval=interval, evaluation_interval=interval, extra_rule_files=fast,
                      shipped_rules=not fast, inventory_args=inventory_args, http_sd=args.http_sd,
                      sd_env={"DROP_HOLD": DEMO_DROP_HOLD})
    # Nothing in the data directory is written or deleted before this runner
    # holds its lock and every port is free: a second `make run` leaves a
    # running stack alone.
    try:
        lock = RunLock.acquire(workdir)
    except StackError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_locked(args, cfg)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, cfg: StackConfig) -> int:
    stack = Stack(cfg)
    try:
        stack.check_ports((*PARTS, "console"))
    except StackError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    if args.alert_for:
        rules_with_for(cfg.extra_rule_files[0], args.alert_for)
    run = _Run()
    previous = {sig: signal.signal(sig, run.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started, started_unix = time.monotonic(), time.time()
    console: Console | None = None
    try:
        print(f"starting the local stack in {cfg.workdir} (logs in {stack.logdir}) ...", flush=True)
        # The inventory simulator starts afresh each run: a targets file left by
        # an earlier run describes another fleet (and would trip the drop guard).
        cfg.targets_file.unlink(missing_ok=True)
        stack.start()
        console = start_console(stack)
        wait_until(lambda: stack.all_sensors_up(args.sensors, started_unix), args.timeout,
                   f"{args.sensors} sensors up in Prometheus", 0.5)
        run.starting = False
        elapsed = time.monotonic() - started
        if args.measure is not None:
            return _measure(stack, args.sensors, elapsed, args.measure, run)
        print(_banner(stack, elapsed), flush=True)
        while not run.stop:
            dead = [p.name for p in stack.procs.values() if not p.alive()]
            if dead:
                print(f"stopped: {', '.join(dead)} exited; see {stack.logdir}", file=sys.stderr)
                return 1
            time.sleep(0.2)  # the watch period of a long-running loop, not a readiness wait
    except _Interrupted:
        pass
    except StackError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    finally:
        run.starting = False
        if console is not None:
            console.stop()
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("local stack stopped.", flush=True)
    return 0


def _measure(stack: Stack, sensors: int, elapsed: float, window: float, run: _Run) -> int:
    """Startup time and Prometheus memory at all-up and after `window` seconds of steady scraping."""
    pid = stack.procs["prometheus"].popen.pid
    report: dict[str, Any] = {"sensors": sensors, "scrape_interval": stack.cfg.scrape_interval,
                              "seconds_to_all_up": round(elapsed, 1),
                              "ready_seconds": {k: round(v, 2) for k, v in stack.ready_seconds.items()},
                              "prometheus_rss_mib_at_all_up": round(proc_status_kib(pid, "VmRSS") / 1024, 1)}
    print(json.dumps(report), flush=True)
    deadline = time.monotonic() + window
    while not run.stop and time.monotonic() < deadline:
        time.sleep(0.2)  # the measurement window itself, not a readiness wait
    report.update({"after_seconds": window, "sensors_up": stack.sensors_up(time.time() - 2 * _seconds(stack.cfg.scrape_interval)),
                   "prometheus_rss_mib_after": round(proc_status_kib(pid, "VmRSS") / 1024, 1),
                   "prometheus_rss_mib_peak": round(proc_status_kib(pid, "VmHWM") / 1024, 1),
                   "prometheus_head_series": int(float(stack.prometheus_query("prometheus_tsdb_head_series")[0]["value"][1]))})
    print(json.dumps(report), flush=True)
    return 0


def links(stack: Stack) -> list[Link]:
    """The pages of the local stack, for the banner and the console.

    Debian's Prometheus serves only its classic UI (under /classic/; /targets
    is a 404) and Debian's Alertmanager no UI at all, hence the console and
    Alertmanager's API.
    """
    return [Link("console", stack.url("console", "/")),
            Link("Prometheus targets", stack.url("prometheus", "/classic/targets")),
            Link("Prometheus alerts", stack.url("prometheus", "/classic/alerts")),
            Link("Prometheus query", stack.url("prometheus", "/classic/graph?g0.expr=up&g0.tab=1")),
            Link("Alertmanager alerts", stack.url("alertmanager", "/api/v2/alerts")),
            Link("sensor-sd status", stack.url("sd", "/")),
            Link("sensor-sd http_sd", stack.url("sd", "/targets")),
            Link("inventory", stack.url("inventory", "/inventory")),
            Link("inventory admin", stack.url("inventory", "/admin/state")),
            Link("fleet admin", stack.url("fleet", "/admin/state"))]


def start_console(stack: Stack) -> Console:
    """The console page on the stack's console port, served by this process."""
    try:
        return Console(LOOPBACK, stack.cfg.ports.console, stack.url("prometheus"), stack.url("alertmanager"),
                       [link for link in links(stack) if link.label != "console"]).start()
    except OSError as exc:
        raise StackError(f"console port {stack.cfg.ports.console}: {exc.strerror or exc}") from None


_NOTES = {"console": "targets and alerts on one page",
          "Alertmanager alerts": "JSON: Debian's Alertmanager has no UI; the console shows them"}


def _banner(stack: Stack, elapsed: float) -> str:
    down = ("curl -X PUT -d '{\"sensors\": [\"sensor_1\", \"sensor_2\", \"sensor_3\"]}' "
            + stack.url("fleet", "/admin/down"))
    pages = [f"  {link.label:<20}{link.url}" + (f"  ({_NOTES[link.label]})" if link.label in _NOTES else "")
             for link in links(stack)]
    return "\n".join([
        f"local stack is up ({elapsed:.1f}s from start to all {stack.cfg.sensors} sensors up in Prometheus).",
        *pages,
        f"Take sensors down:  {down}",
        "More in docs/local-stack.md. Ctrl-C stops everything.",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
