"""The local stack on loopback: inventory + fleet + sensor-sd + Prometheus + Alertmanager.

`make run` calls `python -m sensor_sd.sim.stack`; the integration tests start
the same pieces through `Stack` with ephemeral ports and a temporary
directory. Prometheus' configuration is derived from the shipped
`deploy/prometheus/prometheus.yml` (hosts rewritten to loopback, sensors
reached through the fleet's `proxy_url`), and the shipped rule files are used
unchanged, so the demo runs what production runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


def free_port() -> int:
    """An ephemeral loopback port that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; StackError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways until ready
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:g}s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_ok(url: str) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == 200
    except OSError:
        return False


@dataclass
class Proc:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, argv: Sequence[str], logdir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    return Proc(name, popen, log)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed (make installs it: apt-get install {name})")
    return path


def sensor_sd_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sensor_sd", *args]


@dataclass(frozen=True)
class Ports:
    inventory: int = 1337
    fleet: int = 9101
    sd: int = 8080
    prometheus: int = 9090
    alertmanager: int = 9093

    @classmethod
    def ephemeral(cls) -> Ports:
        return cls(*(free_port() for _ in range(5)))


@dataclass
class StackConfig:
    workdir: Path
    ports: Ports = field(default_factory=Ports)
    sensors: int = 100
    update_interval: float = 2.0
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    extra_rule_files: tuple[Path, ...] = ()
    sd_env: Mapping[str, str] = field(default_factory=dict)
    inventory_args: tuple[str, ...] = ()
    http_sd: bool = False  # also add the sensors-http job (http_sd) to Prometheus

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"


def prometheus_config(cfg: StackConfig) -> dict[str, Any]:
    """The shipped prometheus.yml, rewritten for loopback ports and the fleet proxy."""
    import yaml

    doc = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    p = cfg.ports
    hosts = {"localhost:9090": p.prometheus, "prometheus:9090": p.prometheus, "sensor-sd:8080": p.sd,
             "inventory_server:1337": p.inventory, "alertmanager:9093": p.alertmanager}

    def loopback(target: str) -> str:
        return f"{LOOPBACK}:{hosts[target]}" if target in hosts else target

    doc["global"]["scrape_interval"] = cfg.scrape_interval
    doc["global"]["evaluation_interval"] = cfg.evaluation_interval
    for am in doc.get("alerting", {}).get("alertmanagers", []):
        for sc in am.get("static_configs", []):
            sc["targets"] = [loopback(t) for t in sc["targets"]]
    rules = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    doc["rule_files"] = [str(r) for r in rules] + [str(r) for r in cfg.extra_rule_files]
    jobs = []
    for job in doc["scrape_configs"]:
        for sc in job.get("static_configs", []):
            sc["targets"] = [loopback(t) for t in sc["targets"]]
        if job["job_name"] == "sensors":
            job["scrape_interval"] = cfg.scrape_interval
            job["scrape_timeout"] = cfg.scrape_interval if _seconds(cfg.scrape_interval) < 10 else "10s"
            job["file_sd_configs"] = [{"files": [str(cfg.targets_file)], "refresh_interval": "30s"}]
            job["proxy_url"] = f"http://{LOOPBACK}:{p.fleet}"
            if cfg.http_sd:
                http_job = {**job, "job_name": "sensors-http"}
                del http_job["file_sd_configs"]
                http_job["http_sd_configs"] = [{"url": f"http://{LOOPBACK}:{p.sd}/targets", "refresh_interval": "5s"}]
                jobs.append(http_job)
        jobs.append(job)
    doc["scrape_configs"] = sorted(jobs, key=lambda j: j["job_name"] == "sensors-http")
    return doc


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    return float(duration)


class Stack:
    """Starts, waits for and stops the parts; usable as a context manager."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, Proc] = {}
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        self.logdir = cfg.workdir / "logs"

    # URLs of each part
    def url(self, part: str, path: str = "") -> str:
        return f"http://{LOOPBACK}:{getattr(self.cfg.ports, part)}{path}"

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_ports(self, parts: Sequence[str]) -> None:
        taken = [f"{part} port {getattr(self.cfg.ports, part)}" for part in parts
                 if part not in self.procs and port_in_use(getattr(self.cfg.ports, part))]
        if taken:
            raise StackError("already in use: " + ", ".join(taken) + " (stop what uses it or choose other ports)")

    def _start(self, name: str, argv: Sequence[str], ready_url: str, timeout: float = 30.0,
               env: Mapping[str, str] | None = None) -> Proc:
        proc = spawn(name, argv, self.logdir, env)
        self.procs[name] = proc

        def ready() -> bool:
            if not proc.alive():
                raise StackError(f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            return http_ok(ready_url)

        try:
            wait_until(ready, timeout, f"{name} at {ready_url}")
        except StackError as exc:
            raise StackError(f"{exc}\n--- {name} log ---\n{proc.tail()}") from None
        return proc

    def start_inventory(self) -> Proc:
        p = self.cfg.ports
        return self._start("inventory", sensor_sd_argv("inventory-server", "--host", LOOPBACK, "--port",
                                                       str(p.inventory), "--sensors", str(self.cfg.sensors),
                                                       *self.cfg.inventory_args),
                           self.url("inventory", "/-/healthy"))

    def start_fleet(self) -> Proc:
        p = self.cfg.ports
        return self._start("fleet", sensor_sd_argv("fleet", "--host", LOOPBACK, "--port", str(p.fleet),
                                                   "--inventory-url", self.url("inventory", "/inventory")),
                           self.url("fleet", "/-/healthy"))

    def sd_env(self) -> dict[str, str]:
        return {"INVENTORY_URL": f"inventory={self.url('inventory', '/inventory')}",
                "UPDATE_INTERVAL": str(self.cfg.update_interval), "TARGETS_FILE": str(self.cfg.targets_file),
                "LISTEN_ADDRESS": f"{LOOPBACK}:{self.cfg.ports.sd}", "LOG_FORMAT": "json",
                **self.cfg.sd_env}

    def start_sd(self, ready_path: str = "/-/healthy") -> Proc:
        return self._start("sensor-sd", sensor_sd_argv("run"), self.url("sd", ready_path), env=self.sd_env())

    def write_prometheus_config(self) -> Path:
        import yaml

        path = self.cfg.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(prometheus_config(self.cfg), sort_keys=False))
        return path

    def start_prometheus(self) -> Proc:
        config = self.write_prometheus_config()
        argv = [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={self.cfg.workdir / 'prometheus'}",
                f"--web.listen-address={LOOPBACK}:{self.cfg.ports.prometheus}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d", "--log.level=warn"]
        return self._start("prometheus", argv, self.url("prometheus", "/-/ready"), timeout=60)

    def start_alertmanager(self) -> Proc:
        argv = [binary("prometheus-alertmanager"), f"--config.file={DEPLOY / 'alertmanager' / 'alertmanager.yml'}",
                f"--storage.path={self.cfg.workdir / 'alertmanager'}",
                f"--web.listen-address={LOOPBACK}:{self.cfg.ports.alertmanager}", "--cluster.listen-address=",
                "--log.level=warn"]
        return self._start("alertmanager", argv, self.url("alertmanager", "/-/ready"), timeout=60)

    def start(self, parts: Sequence[str] = ("inventory", "fleet", "sd", "alertmanager", "prometheus")) -> Stack:
        self.check_ports(parts)
        starters = {"inventory": self.start_inventory, "fleet": self.start_fleet, "sd": self.start_sd,
                    "alertmanager": self.start_alertmanager, "prometheus": self.start_prometheus}
        try:
            for part in parts:
                starters[part]()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, name: str | None = None) -> None:
        names = [name] if name else list(reversed(self.procs))
        for n in names:
            proc = self.procs.pop(n, None)
            if proc is not None:
                proc.stop()

    # --- queries used by make run and the tests

    def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        import json
        from urllib.parse import quote

        status, body = http_get(self.url("prometheus", f"/api/v1/query?query={quote(query)}"))
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise StackError(f"query {query!r} failed: {body[:300]!r}")
        return list(data["data"]["result"])

    def active_targets(self, job: str | None = None) -> list[dict[str, Any]]:
        import json

        status, body = http_get(self.url("prometheus", "/api/v1/targets?state=active"))
        if status != 200:
            raise StackError(f"/api/v1/targets answered {status}")
        targets = json.loads(body)["data"]["activeTargets"]
        return [t for t in targets if job is None or t["labels"].get("job") == job]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = Ports()
    p = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=100)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--update-interval", type=float, default=2.0)
    p.add_argument("--churn", action="store_true", help="let the inventory add and remove sensors all the time")
    for part in ("inventory", "fleet", "sd", "prometheus", "alertmanager"):
        p.add_argument(f"--{part}-port", type=int, default=int(os.environ.get(f"{part.upper()}_PORT", getattr(d, part))))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    ports = Ports(args.inventory_port, args.fleet_port, args.sd_port, args.prometheus_port, args.alertmanager_port)
    inventory_args = ("--churn-add", "3", "--churn-remove", "2", "--churn-every", "20") if args.churn else ()
    cfg = StackConfig(args.data_dir.resolve(), ports, sensors=args.sensors, update_interval=args.update_interval,
                      inventory_args=inventory_args, http_sd=True)
    stack = Stack(cfg)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        print(f"starting the local stack in {cfg.workdir} (logs in {stack.logdir}) ...", flush=True)
        stack.start()
        wait_until(lambda: stop or _all_up(stack, args.sensors), 120, f"{args.sensors} sensors up in Prometheus", 0.5)
        if not stop:
            print(_banner(stack, time.monotonic() - started), flush=True)
        while not stop:
            dead = [p.name for p in stack.procs.values() if not p.alive()]
            if dead:
                print(f"stopped: {', '.join(dead)} exited; see {stack.logdir}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    except StackError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        print("local stack stopped.", flush=True)
    return 0


def _all_up(stack: Stack, sensors: int) -> bool:
    with contextlib.suppress(StackError, OSError, ValueError):
        result = stack.prometheus_query('count(up{job="sensors"} == 1)')
        return bool(result) and int(float(result[0]["value"][1])) >= sensors
    return False


def _banner(stack: Stack, elapsed: float) -> str:
    return "\n".join([
        f"local stack is up ({elapsed:.1f}s): all sensors are scraped by Prometheus.",
        f"  Prometheus       {stack.url('prometheus', '/targets')}",
        f"  Alertmanager     {stack.url('alertmanager')}",
        f"  sensor-sd status {stack.url('sd', '/')}",
        f"  sensor-sd http_sd {stack.url('sd', '/targets')}",
        f"  inventory        {stack.url('inventory', '/inventory')}",
        f"  fleet (proxy)    {stack.url('fleet', '/admin/state')}",
        "Ctrl-C stops everything.",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
