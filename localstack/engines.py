"""The scale-out engines on loopback: many stores, sensor-sd, and the real scrapers and stores.

Used by the scale tests and `bench/scale.py`. vmagent, Prometheus agents,
victoria-metrics and vmalert are the Debian binaries; their configurations
are the shipped ones under `deploy/` with hostnames rewritten to loopback
ports and the sensors reached through the fleet simulator's proxy, so what
is tested is what is deployed. Checkout tooling, like the stack: it reads
`deploy/` from the checkout and needs PyYAML (the `test` extra).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from localstack.config import DEPLOY, alertmanager_config, load_yaml, write_yaml
from localstack.net import LOOPBACK, StackError, free_port, http_get
from localstack.procs import Procs, binary, sensor_sd_argv
from sensor_sd.sim.inventory import sources_env

VMAGENT_CONFIG = DEPLOY / "vmagent" / "scrape.yml"
VM_RELABEL = DEPLOY / "victoria-metrics" / "relabel.yml"
VMALERT_NOTIFIER = DEPLOY / "vmalert" / "notifier.yml"
AGENT_SHARDED = DEPLOY / "prometheus" / "agent-sharded"
AGENT_HA = DEPLOY / "prometheus" / "agent-ha"
SENSOR_JOB = "sensors-http"


def url(port: int, path: str = "") -> str:
    return f"http://{LOOPBACK}:{port}{path}"


# --- the parts --------------------------------------------------------------------


def start_inventory(p: Procs, stores: int, per_store: int, name: str = "inventory") -> int:
    """One simulator serving store0..store{stores-1}, `per_store` sensors each."""
    port = free_port()
    p.start(name, sensor_sd_argv("inventory-server", "--host", LOOPBACK, "--port", str(port), "--sensors", "0",
                                 "--stores", str(stores), "--sensors-per-store", str(per_store)),
            url(port, "/-/healthy"))
    return port


def start_fleet(p: Procs, name: str = "fleet") -> int:
    """The sensor fleet as an HTTP proxy: every `<store>_sensor_<n>:9100` answers."""
    port = free_port()
    p.start(name, sensor_sd_argv("fleet", "--host", LOOPBACK, "--port", str(port)), url(port, "/-/healthy"))
    return port


def start_sd(p: Procs, inventory_port: int, stores: Iterable[str], *, name: str = "sensor-sd",
             interval: float = 1.0, extra: Mapping[str, str] | None = None) -> int:
    """sensor-sd with one source per store from a SOURCES_FILE (`source` and `store` labels = the store's name)."""
    port = free_port()
    env = {**sources_env(url(inventory_port), stores, p.workdir / f"{name}.sources.json"),
           "UPDATE_INTERVAL": str(interval),
           "LISTEN_ADDRESS": f"{LOOPBACK}:{port}", "TARGETS_FILE": str(p.workdir / f"{name}.targets.json"),
           "LOG_LEVEL": "error", **(extra or {})}
    p.start(name, sensor_sd_argv("run"), url(port, "/-/healthy"), env=env)
    return port


def start_victoria_metrics(p: Procs, *flags: str, name: str = "victoria-metrics") -> int:
    """Single-node victoria-metrics; samples are queryable 1 s after they arrive (default 30 s)."""
    port = free_port()
    p.start(name, [binary("victoria-metrics"), f"-storageDataPath={p.workdir / name}",
                   f"-httpListenAddr={LOOPBACK}:{port}", "-search.latencyOffset=1s", "-loggerLevel=WARN", *flags],
            url(port, "/health"))
    return port


def start_vmagent(p: Procs, config: Mapping[str, Any], vm_port: int, *, name: str, flags: Sequence[str] = (),
                  sd_check: str = "1s") -> int:
    """vmagent with `config` (see `vmagent_config`), re-reading http_sd every `sd_check`, writing to victoria-metrics."""
    port = free_port()
    path = write_yaml(p.workdir / f"{name}.yml", dict(config))
    p.start(name, [binary("vmagent"), f"-promscrape.config={path}", f"-promscrape.httpSDCheckInterval={sd_check}",
                   f"-remoteWrite.url={url(vm_port, '/api/v1/write')}", f"-remoteWrite.tmpDataPath={p.workdir / name}",
                   f"-httpListenAddr={LOOPBACK}:{port}", "-loggerLevel=WARN", *flags],
            url(port, "/health"))
    return port


def cluster_flags(members: int, member: int, replication: int) -> list[str]:
    return [f"-promscrape.cluster.membersCount={members}", f"-promscrape.cluster.memberNum={member}",
            f"-promscrape.cluster.replicationFactor={replication}"]


def start_prometheus(p: Procs, config: Mapping[str, Any], *, name: str = "prometheus", agent: bool = False) -> int:
    """A Prometheus server (local TSDB), or with `agent` a Prometheus agent (WAL only, remote_write)."""
    port = free_port()
    path = write_yaml(p.workdir / f"{name}.yml", dict(config))
    storage = ["--enable-feature=agent", f"--storage.agent.path={p.workdir / name}"] if agent else \
        [f"--storage.tsdb.path={p.workdir / name}"]
    p.start(name, [binary("prometheus"), f"--config.file={path}", *storage, f"--web.listen-address={LOOPBACK}:{port}",
                   "--log.level=warn"], url(port, "/-/ready"))
    return port


def start_alertmanager(p: Procs, name: str = "alertmanager") -> int:
    """Alertmanager with the shipped routing (receivers without delivery, as in the local stack)."""
    port = free_port()
    path = write_yaml(p.workdir / f"{name}.yml", alertmanager_config())
    p.start(name, [binary("prometheus-alertmanager"), f"--config.file={path}", f"--storage.path={p.workdir / name}",
                   f"--web.listen-address={LOOPBACK}:{port}", "--cluster.listen-address=", "--log.level=warn"],
            url(port, "/-/ready"))
    return port


def start_vmalert(p: Procs, rules: Sequence[Path], vm_port: int, am_port: int, *, name: str = "vmalert",
                  interval: str = "1s") -> int:
    """vmalert evaluating `rules` against victoria-metrics, writing its results back, notifying Alertmanager
    through the shipped deploy/vmalert/notifier.yml (pointed at `am_port`)."""
    notifier = load_yaml(VMALERT_NOTIFIER)
    for sc in notifier["static_configs"]:
        sc["targets"] = [f"{LOOPBACK}:{am_port}" if t == "alertmanager:9093" else t for t in sc["targets"]]
    notifier_file = write_yaml(p.workdir / f"{name}-notifier.yml", notifier)
    port = free_port()
    p.start(name, [binary("vmalert"), *(f"-rule={r}" for r in rules), f"-datasource.url={url(vm_port)}",
                   f"-notifier.config={notifier_file}", f"-remoteWrite.url={url(vm_port)}",
                   f"-evaluationInterval={interval}", f"-httpListenAddr={LOOPBACK}:{port}", "-loggerLevel=WARN"],
            url(port, "/health"))
    return port


# --- the shipped configs, for loopback -------------------------------------------


def _loopback_hosts(sd_port: int, inventory_port: int) -> dict[str, str]:
    return {"sensor-sd:8080": f"{LOOPBACK}:{sd_port}", "inventory_server:1337": f"{LOOPBACK}:{inventory_port}"}


def for_loopback(doc: dict[str, Any], *, sd_port: int, inventory_port: int, fleet_port: int, interval: str,
                 vm_port: int | None = None, timeout: str | None = None) -> dict[str, Any]:
    """A shipped scrape config (vmagent or Prometheus agent) pointed at loopback ports.

    Static targets and http_sd URLs keep their path and query (`?shard=I&shards=N`);
    the sensors are scraped through the fleet's proxy every `interval` (timeout:
    `timeout`, default the interval).
    """
    hosts = _loopback_hosts(sd_port, inventory_port)
    doc["global"]["scrape_interval"] = interval
    for job in doc["scrape_configs"]:
        for sc in job.get("static_configs", []):
            sc["targets"] = [hosts.get(t, t) for t in sc["targets"]]
        for sd in job.get("http_sd_configs", []):
            parts = urlsplit(sd["url"])
            sd["url"] = parts._replace(netloc=hosts[parts.netloc]).geturl()
            if "refresh_interval" in sd:
                sd["refresh_interval"] = "1s"
        if job["job_name"] == SENSOR_JOB:
            job["scrape_interval"] = interval
            job["scrape_timeout"] = timeout or interval
            job["proxy_url"] = url(fleet_port)
    for rw in doc.get("remote_write", []):
        assert vm_port is not None, "a remote_write config needs vm_port"
        rw["url"] = url(vm_port, "/api/v1/write")
        rw.setdefault("queue_config", {})["batch_send_deadline"] = "1s"
    return doc


def vmagent_config(**ports: Any) -> dict[str, Any]:
    """deploy/vmagent/scrape.yml for loopback (keyword arguments of `for_loopback`)."""
    return for_loopback(load_yaml(VMAGENT_CONFIG), **ports)


# --- reading what happened ------------------------------------------------------


def sd_targets(sd_port: int, query: str = "") -> dict[str, set[str]]:
    """source -> targets, as sensor-sd serves them on /targets (none before its first good snapshot: 503)."""
    status, body = http_get(url(sd_port, f"/targets{query}"), timeout=5)
    if status == 503:
        return {}
    if status != 200:
        raise ValueError(f"/targets answered {status}: {body[:200]!r}")  # retried by wait_until, unlike StackError
    return {g["labels"]["source"]: set(g["targets"]) for g in json.loads(body)}


def all_targets(sd_port: int, query: str = "") -> set[str]:
    return set().union(*sd_targets(sd_port, query).values())


def scraper_targets(port: int, job: str = SENSOR_JOB) -> set[str]:
    """`__address__` of the active targets of `job` on a vmagent or Prometheus (same targets API)."""
    status, body = http_get(url(port, "/api/v1/targets?state=active"), timeout=10)
    if status != 200:
        raise StackError(f"/api/v1/targets answered {status}")
    return {t["discoveredLabels"]["__address__"] for t in json.loads(body)["data"]["activeTargets"]
            if t["labels"].get("job") == job}


def vm_query(vm_port: int, query: str, **params: str) -> list[dict[str, Any]]:
    status, body = http_get(url(vm_port, "/api/v1/query?" + urlencode({"query": query, **params})), timeout=10)
    data = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise StackError(f"query {query!r} failed: {body[:300]!r}")
    return list(data["data"]["result"])


def vm_export(vm_port: int, match: str, start: float, end: float) -> list[dict[str, Any]]:
    """Raw samples of every series matching `match` in [start, end]: [{metric, values, timestamps (ms)}]."""
    query = urlencode({"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})
    status, body = http_get(url(vm_port, f"/api/v1/export?{query}"), timeout=30)
    if status != 200:
        raise StackError(f"export answered {status}: {body[:300]!r}")
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def longest_gaps(series: Iterable[Mapping[str, Any]], start: float, end: float, key: str = "instance"
                 ) -> dict[str, float]:
    """Per `key` label: the longest stretch of [start, end] (seconds) without a sample of that series.

    Samples of all series with the same `key` count together (a sensor is covered
    if any of its series has a sample), and the edges count: a series that stops
    at the middle of the window has a gap from there to `end`.
    """
    stamps: dict[str, list[float]] = {}
    for s in series:
        stamps.setdefault(s["metric"][key], []).extend(t / 1000 for t in s["timestamps"])
    gaps = {}
    for name, ts in stamps.items():
        inside = sorted(t for t in ts if start <= t <= end)
        points = [start, *inside, end]
        gaps[name] = max(b - a for a, b in zip(points, points[1:]))
    return gaps


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `name` in a text exposition."""
    # Label values may hold braces (`path="/stores/{store}/inventory"`): quoted strings are skipped whole.
    sample = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? '
                        r'(?P<value>\S+)')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    out = []
    for line in text.splitlines():
        m = sample.match(line)
        if m and m["name"] == name:
            out.append((dict(label.findall(m["labels"] or "")), float(m["value"])))
    return out


def scrape_metrics(port: int) -> str:
    status, body = http_get(url(port, "/metrics"), timeout=5)
    if status != 200:
        raise StackError(f"/metrics answered {status}")
    return body.decode()

