"""The local stack on loopback: inventory + fleet + sensor-sd + Prometheus + Alertmanager.

`make run` calls `python -m sensor_sd.sim.stack`; the integration tests start
the same pieces through `Stack` with ephemeral ports and a temporary
directory. Prometheus' configuration is derived from the shipped
`deploy/prometheus/prometheus.yml` (hosts rewritten to loopback, sensors
reached through the fleet's `proxy_url`), the shipped rule files are used
unchanged and Alertmanager runs the shipped routing, so the demo runs what
production runs. A development tool: it reads `deploy/` from the checkout and
needs PyYAML (the `test` extra).

Every child runs in its own session (Ctrl-C in a terminal reaches only this
process, which stops the children in reverse order) and, on Linux, is told
by the kernel to terminate if this process dies without cleaning up, so a
killed `make run` leaves no orphans holding the ports.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sensor_sd.sim.console import Console, Link

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
    """True when a listener holds `port`; SO_REUSEADDR so TIME_WAIT left by a previous run does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; StackError after `timeout` seconds.

    A StackError raised by the predicate (e.g. "the process exited") ends the
    wait at once: nothing will become ready any more.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StackError:
            raise
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways until ready
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:g}s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def http_request(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a request with an optional JSON body; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback URLs only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    return http_request(url, timeout=timeout)


def admin_call(url: str, method: str, body: Any = None) -> Any:
    """A simulator admin API call that must succeed; its JSON answer (StackError otherwise)."""
    status, data = http_request(url, method, body)
    if not 200 <= status < 300:
        raise StackError(f"{method} {url} answered {status}: {data[:200]!r}")
    return json.loads(data or b"null")


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
        """SIGTERM to the child's process group (its own session), SIGKILL after `timeout`; reaps it.

        The group is signalled only while the leader is unreaped, so the group id
        cannot belong to anyone else yet.
        """
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
        return int(self.popen.returncode)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            self.popen.send_signal(signum)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when its parent dies (no orphans after a kill -9).

    The kernel ties this to the spawning *thread*: start children from a
    thread that lives as long as the stack (the main thread in practice).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: preexec must not import or allocate much
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(name: str, argv: Sequence[str], logdir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Start `argv` in its own session with output appended to `logdir/name.log`."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                                 preexec_fn=_die_with_parent())
    return Proc(name, popen, log)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed (make installs it: apt-get install {name})")
    return path


def sensor_sd_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sensor_sd", *args]


PARTS = ("inventory", "fleet", "sd", "alertmanager", "prometheus")
# sensor-sd's settings in `make run`: with 2 s polls, DROP_CONFIRMATIONS alone would release an emptied
# inventory after ~6 s; a one-minute DROP_HOLD keeps the hold on screen long enough to look at it.
DEMO_DROP_HOLD = "60"


@dataclass(frozen=True)
class Ports:
    inventory: int = 1337
    fleet: int = 9101
    sd: int = 8080
    prometheus: int = 9090
    alertmanager: int = 9093
    console: int = 9095  # make run's page over Prometheus' and Alertmanager's APIs (sim/console.py), not a process

    @classmethod
    def ephemeral(cls) -> Ports:
        """Distinct free ports: all sockets are held open together so the kernel cannot hand one out twice."""
        with contextlib.ExitStack() as held:
            socks = [held.enter_context(socket.socket()) for _ in fields(cls)]
            for sock in socks:
                sock.bind((LOOPBACK, 0))
            return cls(*(int(sock.getsockname()[1]) for sock in socks))

    def items(self) -> list[tuple[str, int]]:
        """(part, port) pairs, in start order, then the console's."""
        return [(part, getattr(self, part)) for part in (*PARTS, "console")]


@dataclass
class StackConfig:
    """What to run and where; everything the stack writes goes under `workdir`."""

    workdir: Path
    ports: Ports = field(default_factory=Ports)
    sensors: int = 100
    update_interval: float = 2.0
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    extra_rule_files: tuple[Path, ...] = ()
    # False loads only extra_rule_files: tests load a copy of the shipped rules
    # with short `for:` and must not get every alert twice from two groups.
    shipped_rules: bool = True
    sd_env: Mapping[str, str] = field(default_factory=dict)
    inventory_args: tuple[str, ...] = ()
    fleet_args: tuple[str, ...] = ()
    http_sd: bool = False  # also add the sensors-http job (http_sd) to Prometheus

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"

    def rule_files(self) -> list[Path]:
        shipped = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")) if self.shipped_rules else []
        return [*shipped, *self.extra_rule_files]


def _to_loopback(doc: dict[str, Any], ports: Ports) -> None:
    """Point the static targets of a shipped Prometheus config (scrape jobs, Alertmanagers) at loopback ports."""
    hosts = {"localhost:9090": ports.prometheus, "prometheus:9090": ports.prometheus, "sensor-sd:8080": ports.sd,
             "inventory_server:1337": ports.inventory, "alertmanager:9093": ports.alertmanager}
    configs = [sc for am in doc.get("alerting", {}).get("alertmanagers", []) for sc in am.get("static_configs", [])]
    configs += [sc for job in doc.get("scrape_configs", []) for sc in job.get("static_configs", [])]
    for sc in configs:
        sc["targets"] = [f"{LOOPBACK}:{hosts[t]}" if t in hosts else t for t in sc["targets"]]


def _short_scrapes(job: dict[str, Any], cfg: StackConfig) -> None:
    job["scrape_interval"] = cfg.scrape_interval
    job["scrape_timeout"] = cfg.scrape_interval if _seconds(cfg.scrape_interval) < 10 else "10s"


def prometheus_config(cfg: StackConfig) -> dict[str, Any]:
    """The shipped prometheus.yml, rewritten for loopback ports and the fleet proxy."""
    import yaml

    doc = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    p = cfg.ports
    _to_loopback(doc, p)
    doc["global"]["scrape_interval"] = cfg.scrape_interval
    doc["global"]["evaluation_interval"] = cfg.evaluation_interval
    doc["rule_files"] = [str(r) for r in cfg.rule_files()]
    jobs = []
    for job in doc["scrape_configs"]:
        if job["job_name"] == "sensors":
            _short_scrapes(job, cfg)
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


def agent_configs(cfg: StackConfig, central_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped agent-mode pair (deploy/prometheus/agent/) for loopback: (agent, central).

    The agent (on `cfg.ports.prometheus`) discovers the sensors through
    sensor-sd's http_sd, scrapes them through the fleet proxy and
    remote-writes everything to the central Prometheus on `central_port`.
    """
    import yaml

    agent = yaml.safe_load((DEPLOY / "prometheus" / "agent" / "prometheus-agent.yml").read_text())
    central = yaml.safe_load((DEPLOY / "prometheus" / "agent" / "prometheus-central.yml").read_text())
    _to_loopback(agent, cfg.ports)
    _to_loopback(central, replace(cfg.ports, prometheus=central_port))
    agent["global"]["scrape_interval"] = central["global"]["scrape_interval"] = cfg.scrape_interval
    central["global"]["evaluation_interval"] = cfg.evaluation_interval
    central["rule_files"] = [str(r) for r in cfg.rule_files()]
    for job in agent["scrape_configs"]:
        for sd in job.get("http_sd_configs", []):
            sd["url"] = f"http://{LOOPBACK}:{cfg.ports.sd}/targets"
            _short_scrapes(job, cfg)
            job["proxy_url"] = f"http://{LOOPBACK}:{cfg.ports.fleet}"
    for rw in agent["remote_write"]:
        rw["url"] = f"http://{LOOPBACK}:{central_port}/api/v1/write"
        rw.setdefault("queue_config", {})["batch_send_deadline"] = "1s"  # forward within a second locally
    return agent, central


def rules_with_for(dst: Path, for_: str) -> Path:
    """A copy of the shipped rules with every `for:` set to `for_`, written to `dst`.

    For demos and tests that cannot wait minutes; load it with
    `shipped_rules=False` so each alert is defined once. Expressions, labels
    and annotations stay exactly as shipped.
    """
    import yaml

    groups = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = for_
            groups.append(group)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return dst


def alertmanager_config() -> dict[str, Any]:
    """The shipped alertmanager.yml with delivery removed: routing, grouping and inhibition unchanged.

    The shipped receivers post to webhooks on other hosts; locally alerts are
    read in Alertmanager's UI/API, and a dead webhook would only log a DNS
    failure per group every group_interval.
    """
    import yaml

    doc = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    doc["receivers"] = [{"name": r["name"]} for r in doc.get("receivers", [])]
    return dict(doc)


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
        self.ready_seconds: dict[str, float] = {}  # per part, spawn to ready: where startup time goes
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
        """Fail before starting anything when a port is taken, naming each one (not a child's log later)."""
        names = {"sd": "sensor-sd"}
        taken = [f"{part} port {getattr(self.cfg.ports, part)}" for part in parts
                 if names.get(part, part) not in self.procs and port_in_use(getattr(self.cfg.ports, part))]
        if taken:
            raise StackError("already in use on " + LOOPBACK + ": " + ", ".join(taken)
                             + " (stop what listens there, or choose other ports: --<part>-port or <PART>_PORT)")

    def _start(self, name: str, argv: Sequence[str], ready_url: str, timeout: float = 30.0,
               env: Mapping[str, str] | None = None) -> Proc:
        began = time.monotonic()
        proc = spawn(name, argv, self.logdir, env)
        self.procs[name] = proc

        def ready() -> bool:
            if not proc.alive():
                raise StackError(f"{name} exited with code {proc.popen.returncode} before it was ready")
            return http_ok(ready_url)

        try:
            wait_until(ready, timeout, f"{name} at {ready_url}")
        except StackError as exc:
            raise StackError(f"{exc}\n--- {name} log ---\n{proc.tail()}") from None
        self.ready_seconds[name] = time.monotonic() - began
        return proc

    def start_inventory(self) -> Proc:
        p = self.cfg.ports
        return self._start("inventory", sensor_sd_argv("inventory-server", "--host", LOOPBACK, "--port",
                                                       str(p.inventory), "--sensors", str(self.cfg.sensors),
                                                       *self.cfg.inventory_args),
                           self.url("inventory", "/-/healthy"))

    def start_fleet(self) -> Proc:
        p = self.cfg.ports
        # The fleet follows the inventory as often as sensor-sd does, so churned sensors answer when discovered.
        return self._start("fleet", sensor_sd_argv("fleet", "--host", LOOPBACK, "--port", str(p.fleet),
                                                   "--inventory-url", self.url("inventory", "/inventory"),
                                                   "--inventory-refresh", str(self.cfg.update_interval),
                                                   *self.cfg.fleet_args),
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

    def start_agent_mode(self, central_port: int) -> None:
        """Instead of one Prometheus: a central Prometheus with the remote-write receiver, and an agent feeding it."""
        import yaml

        agent, central = agent_configs(self.cfg, central_port)
        paths = {name: self.cfg.workdir / f"prometheus-{name}.yml" for name in ("agent", "central")}
        paths["agent"].write_text(yaml.safe_dump(agent, sort_keys=False))
        paths["central"].write_text(yaml.safe_dump(central, sort_keys=False))
        self._start("prometheus-central", [
            binary("prometheus"), f"--config.file={paths['central']}", f"--storage.tsdb.path={self.cfg.workdir / 'central'}",
            f"--web.listen-address={LOOPBACK}:{central_port}", "--web.enable-remote-write-receiver", "--log.level=warn",
        ], f"http://{LOOPBACK}:{central_port}/-/ready", timeout=60)
        self._start("prometheus-agent", [
            binary("prometheus"), "--enable-feature=agent", f"--config.file={paths['agent']}",
            f"--storage.agent.path={self.cfg.workdir / 'agent'}",
            f"--web.listen-address={LOOPBACK}:{self.cfg.ports.prometheus}", "--log.level=warn",
        ], self.url("prometheus", "/-/ready"), timeout=60)

    def write_alertmanager_config(self) -> Path:
        import yaml

        path = self.cfg.workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(alertmanager_config(), sort_keys=False))
        return path

    def start_alertmanager(self) -> Proc:
        argv = [binary("prometheus-alertmanager"), f"--config.file={self.write_alertmanager_config()}",
                f"--storage.path={self.cfg.workdir / 'alertmanager'}",
                f"--web.listen-address={LOOPBACK}:{self.cfg.ports.alertmanager}", "--cluster.listen-address=",
                "--log.level=warn"]
        return self._start("alertmanager", argv, self.url("alertmanager", "/-/ready"), timeout=60)

    def start(self, parts: Sequence[str] = PARTS) -> Stack:
        """Start `parts` in order, each ready before the next; on any failure stop what was started.

        sensor-sd must be *ready* (targets file written) when the inventory is
        part of the start, so Prometheus reads the targets at its first load.
        """
        self.check_ports(parts)
        sd_ready = "/-/ready" if "inventory" in parts else "/-/healthy"
        starters: dict[str, Callable[[], Proc]] = {
            "inventory": self.start_inventory, "fleet": self.start_fleet, "sd": lambda: self.start_sd(sd_ready),
            "alertmanager": self.start_alertmanager, "prometheus": self.start_prometheus}
        try:
            for part in parts:
                starters[part]()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, name: str | None = None) -> None:
        """Stop one part (by process name: inventory, fleet, sensor-sd, alertmanager, prometheus) or all, newest first."""
        names = [name] if name else list(reversed(self.procs))
        for n in names:
            proc = self.procs.pop(n, None)
            if proc is not None:
                proc.stop()

    # --- queries used by make run and the tests

    def prometheus_query(self, query: str, base: str | None = None) -> list[dict[str, Any]]:
        """An instant query against the stack's Prometheus, or the one at `base` (e.g. the agent's central)."""
        from urllib.parse import quote

        status, body = http_get((base or self.url("prometheus")) + f"/api/v1/query?query={quote(query)}")
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise StackError(f"query {query!r} failed: {body[:300]!r}")
        return list(data["data"]["result"])

    def active_targets(self, job: str | None = None) -> list[dict[str, Any]]:
        status, body = http_get(self.url("prometheus", "/api/v1/targets?state=active"))
        if status != 200:
            raise StackError(f"/api/v1/targets answered {status}")
        targets = json.loads(body)["data"]["activeTargets"]
        return [t for t in targets if job is None or t["labels"].get("job") == job]

    def alertmanager_alerts(self, alertname: str | None = None) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (active, suppressed and unprocessed; resolved ones drop out)."""
        from urllib.parse import quote

        query = f"?filter={quote(f'alertname={json.dumps(alertname)}')}" if alertname else ""
        status, body = http_get(self.url("alertmanager", f"/api/v2/alerts{query}"))
        if status != 200:
            raise StackError(f"/api/v2/alerts answered {status}: {body[:300]!r}")
        return list(json.loads(body))

    def rss_bytes(self, name: str) -> int:
        """Resident memory of a running part, from /proc/PID/status (Linux)."""
        return proc_status_kib(self.procs[name].popen.pid, "VmRSS") * 1024

    def sensors_up(self, since: float = 0.0) -> int:
        """Targets of the file_sd job whose latest scrape, after unix time `since`, succeeded.

        `since` matters with a reused ./data: samples of an earlier run stay
        visible for the 5 minute lookback and would count as up.
        """
        result = self.prometheus_query(f'count(up{{job="sensors"}} == 1 and timestamp(up{{job="sensors"}}) > {since:.3f})')
        return int(float(result[0]["value"][1])) if result else 0

    def all_sensors_up(self, sensors: int, since: float = 0.0) -> bool:
        """At least `sensors` sensors up (churn may add more); False while Prometheus cannot answer."""
        with contextlib.suppress(StackError, OSError, ValueError):
            return self.sensors_up(since) >= sensors
        return False


def proc_status_kib(pid: int, key: str) -> int:
    """A `kB` field (VmRSS, VmHWM, ...) of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise StackError(f"no {key} in /proc/{pid}/status")


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
