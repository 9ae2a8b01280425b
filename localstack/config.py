"""What the local stack runs with: ports, the stack's settings, and the shipped configs rewritten for loopback.

Prometheus' configuration is derived from the shipped
`deploy/prometheus/prometheus.yml` (hosts rewritten to loopback, sensors
reached through the fleet's `proxy_url`), the shipped rule files are used
unchanged and Alertmanager runs the shipped routing, so the demo runs what
production runs. Reads `deploy/` from the checkout and needs PyYAML (the
`test` extra): checkout tooling, not part of the installed package.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from localstack.net import LOOPBACK

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"

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
    console: int = 9095  # make run's page over Prometheus' and Alertmanager's APIs (console.py), not a process

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
    doc = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
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
    agent = load_yaml(DEPLOY / "prometheus" / "agent" / "prometheus-agent.yml")
    central = load_yaml(DEPLOY / "prometheus" / "agent" / "prometheus-central.yml")
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
    groups = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = for_
            groups.append(group)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_yaml(dst, {"groups": groups})


def alertmanager_config() -> dict[str, Any]:
    """The shipped alertmanager.yml with delivery removed: routing, grouping and inhibition unchanged.

    The shipped receivers post to webhooks on other hosts; locally alerts are
    read in Alertmanager's UI/API, and a dead webhook would only log a DNS
    failure per group every group_interval.
    """
    doc = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    doc["receivers"] = [{"name": r["name"]} for r in doc.get("receivers", [])]
    return dict(doc)


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    return float(duration)


def load_yaml(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def write_yaml(path: Path, doc: Any) -> Path:
    """`doc` as YAML in `path`, keys in the order given (generated configs read like the shipped ones)."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
