"""The local stack on loopback: inventory + fleet + sensor-sd + Prometheus + Alertmanager, started in order.

`make run` (`python -m localstack`) runs it on fixed ports; the integration
tests start the same pieces through `Stack` with ephemeral ports and a
temporary directory. Each part is ready (polled) before the next starts, and
the parts are stopped in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from localstack.config import PARTS, StackConfig, agent_configs, alertmanager_config, prometheus_config, write_yaml
from localstack.net import LOOPBACK, StackError, http_get, http_ok, port_in_use, wait_until
from localstack.procs import Proc, binary, sensor_sd_argv, spawn


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
        return write_yaml(self.cfg.workdir / "prometheus.yml", prometheus_config(self.cfg))

    def start_prometheus(self) -> Proc:
        config = self.write_prometheus_config()
        argv = [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={self.cfg.workdir / 'prometheus'}",
                f"--web.listen-address={LOOPBACK}:{self.cfg.ports.prometheus}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d", "--log.level=warn"]
        return self._start("prometheus", argv, self.url("prometheus", "/-/ready"), timeout=60)

    def start_agent_mode(self, central_port: int) -> None:
        """Instead of one Prometheus: a central Prometheus with the remote-write receiver, and an agent feeding it."""
        agent, central = agent_configs(self.cfg, central_port)
        paths = {name: write_yaml(self.cfg.workdir / f"prometheus-{name}.yml", doc)
                 for name, doc in (("agent", agent), ("central", central))}
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
        return write_yaml(self.cfg.workdir / "alertmanager.yml", alertmanager_config())

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
        query = f"?filter={quote(f'alertname={json.dumps(alertname)}')}" if alertname else ""
        status, body = http_get(self.url("alertmanager", f"/api/v2/alerts{query}"))
        if status != 200:
            raise StackError(f"/api/v2/alerts answered {status}: {body[:300]!r}")
        return list(json.loads(body))

    def rss_bytes(self, name: str) -> int:
        """Resident memory of a running part, from /proc/PID/status (Linux)."""
        return self.procs[name].rss_bytes()

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
