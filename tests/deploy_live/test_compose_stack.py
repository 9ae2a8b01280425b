"""compose.yaml + compose.demo.yaml under a real Docker engine, checked with real traffic.

The stack is the shipped one plus a test override (compose.test.yaml,
generated): every port published on 127.0.0.1 with an ephemeral host port,
a copy of the shipped rules whose `for:` is shortened to FOR (minutes would
otherwise pass before an alert fires; expressions, labels and routing are as
shipped) and a second Prometheus running the shipped http_sd config (with the
demo's `proxy_url` added so it reaches the simulated sensors). Notifications
reach the demo's `alert-webhook`. The test talks only to published loopback
ports or runs commands inside containers with `exec`.

The tests run in file order on one stack: the disruptive ones (kill, stop,
`down -v`) come last. Grafana is a stand-in answering /api/health only.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from docker_engine import (COMPOSE_FILES, PROJECT_PREFIX, REPO, Compose, Engine, EngineError, Figures, Images, poll,
                           write_override)

from localstack.config import rules_with_for
from localstack.net import admin_call, http_get

FOR = "10s"  # every alert's `for:` in the test copy of the rules (shipped: minutes)
SENSORS = 100
DOWN = "sensor_42"
SOURCE = "inventory_server"  # the source label of a single unnamed INVENTORY_URL: its host
PROMETHEUS = {"prometheus": "sensors", "prometheus-http": "sensors-http"}  # service -> its sensor job


@dataclass
class Live:
    compose: Compose
    engine: Engine
    up_seconds: float

    def url(self, service: str, path: str) -> str:
        port = {"sensor-sd": 8080, "alertmanager": 9093, "grafana": 3000, "inventory_server": 1337,
                "fleet": 9101}.get(service, 9090)
        return self.compose.url(service, port, path)

    def get(self, service: str, path: str) -> Any:
        status, body = http_get(self.url(service, path), timeout=10)
        assert status == 200, f"{service} {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def query(self, service: str, expr: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        data = self.get(service, f"/api/v1/query?query={quote(expr)}")
        return list(data["data"]["result"])

    def targets(self, service: str) -> list[dict[str, Any]]:
        """Active targets of that Prometheus' sensor job."""
        data = self.get(service, "/api/v1/targets?state=active")["data"]["activeTargets"]
        return [t for t in data if t["labels"]["job"] == PROMETHEUS[service]]

    def sensors_up(self, service: str) -> int:
        return sum(t["health"] == "up" for t in self.targets(service))

    def am_alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("alertmanager", "/api/v2/alerts") if a["labels"]["alertname"] == name]

    def targets_file(self) -> bytes:
        """/shared/targets.json as the Prometheus container sees it (read-only mount of the shared volume)."""
        proc = self.compose.exec("prometheus", "cat", "/shared/targets.json")
        return proc.stdout.encode()

    def notifications(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, body) of every webhook notification Alertmanager delivered so far."""
        logs = self.compose("logs", "--no-log-prefix", "--no-color", "alert-webhook").stdout
        found = []
        for line in logs.splitlines():
            if line.startswith("NOTIFY "):
                path, _, body = line[len("NOTIFY "):].partition(" ")
                found.append((path, json.loads(body)))
        return found

    def webhook_notifications(self) -> tuple[float, float]:
        """(attempted, failed) webhook requests, from Alertmanager's own counters (each retry counts)."""
        status, body = http_get(self.url("alertmanager", "/metrics"), timeout=10)
        assert status == 200
        counts = {"alertmanager_notification_requests_total": 0.0,
                  "alertmanager_notification_requests_failed_total": 0.0}
        for line in body.decode().splitlines():
            name, _, rest = line.partition("{")
            if name in counts and 'integration="webhook"' in rest:
                counts[name] += float(line.rsplit(" ", 1)[1])
        return counts["alertmanager_notification_requests_total"], counts["alertmanager_notification_requests_failed_total"]

    def hosts(self, targets_json: bytes) -> set[str]:
        return {t for group in json.loads(targets_json) for t in group["targets"]}


def _diagnostics(compose: Compose) -> str:
    ps = compose("ps", "--all", check=False).stdout
    logs = compose("logs", "--no-color", "--tail", "30", check=False).stdout
    return f"\n--- compose ps ---\n{ps}\n--- compose logs (tail) ---\n{logs[-6000:]}"


@pytest.fixture(scope="module")
def live(engine: Engine, images: Images, tmp_path_factory: pytest.TempPathFactory, figures: Figures) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("compose")
    rules = work / "rules"
    rules_with_for(rules / "sensor-sd.rules.yml", FOR)
    # The shipped http_sd config, plus the demo's way of reaching simulated sensors.
    http_sd = work / "prometheus-http"
    (http_sd / "rules").mkdir(parents=True)
    (http_sd / "rules" / "sensor-sd.rules.yml").write_text((rules / "sensor-sd.rules.yml").read_text())
    doc = yaml.safe_load((REPO / "deploy/prometheus/prometheus-http-sd.yml").read_text())
    demo = yaml.safe_load((REPO / "deploy/prometheus/demo/prometheus.yml").read_text())
    proxy = {j["job_name"]: j for j in demo["scrape_configs"]}["sensors"]["proxy_url"]
    for job in doc["scrape_configs"]:
        if job["job_name"] == "sensors-http":
            job["proxy_url"] = proxy
    (http_sd / "prometheus.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    override = write_override(work, rules_dir=rules, http_sd_dir=http_sd, extra_ports={"fleet": 9101})
    project = f"{PROJECT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    compose = Compose(engine, project, (*COMPOSE_FILES, override))
    began = time.monotonic()
    try:
        try:
            compose("up", "--detach", "--wait", "--wait-timeout", "300", "--no-build", "--pull", "never", timeout=420)
        except EngineError as exc:
            raise EngineError(f"{exc}{_diagnostics(compose)}") from None
        live = Live(compose, engine, time.monotonic() - began)
        figures.add(f"compose up --wait (every service healthy): {live.up_seconds:.0f}s")
        for service in PROMETHEUS:
            poll(lambda s=service: live.sensors_up(s) == SENSORS, 180, f"{SENSORS} sensors up in {service}", 1)
        figures.add(f"all {SENSORS} sensors up in both Prometheus servers: {time.monotonic() - began:.0f}s after `up`")
        yield live
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


# --------------------------------------------------------------------------
# The stack as it comes up
# --------------------------------------------------------------------------

def test_every_service_is_healthy(live: Live) -> None:
    rows = [json.loads(line) for line in live.compose("ps", "--all", "--format", "json").stdout.splitlines()]
    expected = {"sensor-sd", "prometheus", "alertmanager", "grafana", "inventory_server", "fleet",
                "prometheus-http", "alert-webhook"}
    assert {r["Service"] for r in rows} == expected
    for row in rows:
        assert row["State"] == "running", row
        healthcheck = live.compose.inspect(row["Service"])["Config"].get("Healthcheck")
        if healthcheck:
            assert row["Health"] == "healthy", row
    # Every service with a healthcheck in the shipped files has one that passed.
    shipped = {n for f in COMPOSE_FILES for n, s in yaml.safe_load(f.read_text())["services"].items()
               if "healthcheck" in s}
    assert shipped <= {r["Service"] for r in rows if r["Health"] == "healthy"}
    # The Grafana stand-in (health endpoint only) sees the shipped provisioning and dashboard.
    assert live.get("grafana", "/api/health")["database"] == "ok"
    for path in ("/etc/grafana/provisioning/datasources/prometheus.yml",
                 "/var/lib/grafana/dashboards/sensor-sd.json"):
        live.compose.exec("grafana", "test", "-s", path)


def test_sensor_sd_runs_as_nobody_on_a_read_only_root_and_writes_the_shared_file(live: Live) -> None:
    info = live.compose.inspect("sensor-sd")
    assert info["Config"]["User"] == "65534:65534"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"] == ["ALL"]
    assert live.compose.exec("sensor-sd", "id", "-u").stdout.strip() == "65534"
    # PID 1 is sensor-sd itself: it receives the SIGTERM of `docker stop`.
    assert "sensor-sd" in live.compose.exec("sensor-sd", "cat", "/proc/1/cmdline").stdout
    denied = live.compose.exec("sensor-sd", "touch", "/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    stat = live.compose.exec("sensor-sd", "stat", "-c", "%u %a", "/shared/targets.json").stdout.split()
    assert stat[0] == "65534"
    # Written by sensor-sd, read by Prometheus through its read-only mount: the same 100 targets.
    from_prometheus = live.targets_file()
    assert live.hosts(from_prometheus) == {f"sensor_{i}:9100" for i in range(SENSORS)}
    assert live.compose.exec("sensor-sd", "cat", "/shared/targets.json").stdout.encode() == from_prometheus
    assert [g["labels"]["source"] for g in json.loads(from_prometheus)] == [SOURCE]


@pytest.mark.parametrize("service", sorted(PROMETHEUS))
def test_prometheus_discovers_and_scrapes_every_sensor(live: Live, service: str) -> None:
    """`prometheus` through the shared file (file_sd), `prometheus-http` through GET /targets (http_sd)."""
    targets = live.targets(service)
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(f"sensor_{i}" for i in range(SENSORS))
    assert {t["health"] for t in targets} == {"up"}
    assert {t["labels"]["source"] for t in targets} == {SOURCE}
    config = yaml.safe_load(live.get(service, "/api/v1/status/config")["data"]["yaml"])
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == PROMETHEUS[service]]
    assert {k for k in job if k.endswith("_sd_configs")} == {
        "file_sd_configs" if service == "prometheus" else "http_sd_configs"}
    for job in ("sensor-sd", "inventory"):
        assert [r["value"][1] for r in live.query(service, f'up{{job="{job}"}}')] == ["1"], job


# --------------------------------------------------------------------------
# Faults, alerts, notifications
# --------------------------------------------------------------------------

def test_a_sensor_taken_down_fires_sensor_down_and_a_notification_goes_out(live: Live) -> None:
    began = time.monotonic()
    admin_call(live.url("fleet", "/admin/down"), "PUT", {"sensors": [DOWN]})
    try:
        def both_jobs() -> list[dict[str, Any]]:
            alerts = [a for a in live.am_alerts("SensorDown") if a["labels"]["instance"] == DOWN]
            return alerts if {a["labels"]["job"] for a in alerts} == set(PROMETHEUS.values()) else []

        alerts = poll(both_jobs, 150, f"SensorDown for {DOWN} from file_sd and http_sd in Alertmanager", 1)
        fired = time.monotonic() - began
        assert all(a["labels"]["severity"] == "warning" and a["labels"]["source"] == SOURCE for a in alerts)
        assert all(a["status"]["state"] == "active" for a in alerts)
        assert live.am_alerts("SensorFleetDegraded") == []  # 1 % is below the 10 % threshold

        def delivered() -> list[dict[str, Any]]:
            total, failed = live.webhook_notifications()
            assert failed == 0, (f"Alertmanager failed {failed:g} of {total:g} webhook requests:\n"
                                 + "\n".join(live.compose("logs", "--no-color", "alertmanager").stdout.splitlines()[-5:]))
            return [body for path, body in live.notifications() if path == "/team"
                    and any(a["labels"]["alertname"] == "SensorDown" and a["labels"]["instance"] == DOWN
                            and a["status"] == "firing" for a in body["alerts"])]

        notes = poll(delivered, 90, "the SensorDown notification at the team webhook", 1)
        assert notes[0]["receiver"] == "team-webhook" and notes[0]["groupLabels"] == {
            "alertname": "SensorDown", "source": SOURCE}
        print(f"\nSensorDown in Alertmanager {fired:.0f}s, notification {time.monotonic() - began:.0f}s "
              f"after {DOWN} went down (for: {FOR} in the test rules)")
    finally:
        admin_call(live.url("fleet", "/admin/faults"), "DELETE")
    for service in PROMETHEUS:
        poll(lambda s=service: live.sensors_up(s) == SENSORS, 90, f"{DOWN} up again in {service}", 1)


def test_inventory_down_keeps_every_target_and_fires_inventory_down(live: Live) -> None:
    before = live.targets_file()
    began = time.monotonic()
    live.compose("stop", "inventory_server")
    try:
        def both_views() -> list[dict[str, Any]]:
            alerts = live.am_alerts("InventoryDown")
            # sensor-sd's failing polls (by source) and Prometheus' failing scrape of the inventory.
            return alerts if {a["labels"]["job"] for a in alerts} == {"sensor-sd", "inventory"} else []

        alerts = poll(both_views, 150, "InventoryDown (both views) in Alertmanager", 1)
        assert all(a["labels"]["severity"] == "critical" for a in alerts)
        print(f"\nInventoryDown in Alertmanager {time.monotonic() - began:.0f}s after the inventory stopped")
        # Meanwhile nothing is lost: same file, every target still discovered and scraped by both.
        assert live.targets_file() == before
        for service in PROMETHEUS:
            assert len(live.targets(service)) == SENSORS and live.sensors_up(service) == SENSORS, service
        assert [r["value"][1] for r in live.query("prometheus", "sensor_sd_inventory_up")] == ["0"]
        assert http_get(live.url("sensor-sd", "/-/ready"))[0] == 200
        assert len(live.hosts(http_get(live.url("sensor-sd", "/targets"))[1])) == SENSORS
    finally:
        live.compose("start", "inventory_server")
    poll(lambda: not live.query("prometheus", 'ALERTS{alertname="InventoryDown"}'), 150,
         "InventoryDown to resolve", 1)
    assert live.targets_file() == before


# --------------------------------------------------------------------------
# The dashboard's queries on the stack's real data
# --------------------------------------------------------------------------

DASHBOARD = REPO / "deploy/grafana/dashboards/sensor-sd.json"
# Panels whose queries must return data on a healthy demo stack.
CORE_PANELS = ("Targets per source", "Sync results", "Inventory request latency", "Sensors up",
               "Discovered / up", "Sensors up ratio", "Targets published")


def panel_queries() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return out


def rate_interval() -> str:
    """Grafana's $__rate_interval for this datasource: four times its scrape interval (timeInterval)."""
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    scrape = ds["datasources"][0]["jsonData"]["timeInterval"]
    seconds = int(scrape.rstrip("s"))
    return f"{4 * seconds}s"


def substitute(expr: str, source: str) -> str:
    """Grafana's variables as Grafana would expand them for a query over the last minutes."""
    return (expr.replace("$__rate_interval", rate_interval()).replace("$__interval", "15s")
            .replace("${source}", source).replace("$source", source))


def test_every_dashboard_query_runs_on_the_stack_and_the_core_panels_have_data(live: Live) -> None:
    from urllib.parse import urlencode

    dash = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in dash["templating"]["list"] if v["name"] == "source"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()  # type: ignore[union-attr]
    values = live.get("prometheus", f"/api/v1/label/{label}/values?match[]={metric}")["data"]
    assert values == [SOURCE]
    # "All" (the variable's allValue) and each value the variable offers, as Grafana's regex escaping leaves it.
    choices = [variable["allValue"], *values]
    queries = panel_queries()
    assert {t for t, _ in queries} >= set(CORE_PANELS)
    end = time.time()
    empty: list[str] = []
    for title, expr in queries:
        for choice in choices:
            promql = substitute(expr, choice)
            assert "$" not in promql, promql
            for path, params in (("query", {"query": promql, "time": f"{end:.3f}"}),
                                 ("query_range", {"query": promql, "start": f"{end - 300:.3f}", "end": f"{end:.3f}",
                                                  "step": "15"})):
                body = live.get("prometheus", f"/api/v1/{path}?{urlencode(params)}")
                assert body["status"] == "success" and not body.get("warnings"), (title, promql, body)
                result = body["data"]["result"]
                if title in CORE_PANELS and path == "query_range" and not result:
                    empty.append(f"{title}: {promql}")
                if title in CORE_PANELS and path == "query" and result:
                    for series in result:
                        assert math.isfinite(float(series["value"][1])), (title, promql, series)
    assert not empty, "core panels without data:\n" + "\n".join(empty)
    up = live.query("prometheus", substitute('sum(job:sensors_up:sum)', ".*"))
    assert [r["value"][1] for r in up] == [str(SENSORS)]


# --------------------------------------------------------------------------
# Footprint
# --------------------------------------------------------------------------

def _mib(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)\s*([KMG]i?B|B)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024,
                           "kB": 1e3 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20}[unit]


def test_memory_per_container_fits_the_kubernetes_limit(live: Live, figures: Figures) -> None:
    ids = live.compose("ps", "--quiet").stdout.split()
    out = live.engine.docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *ids).stdout
    usage = {}
    for line in out.splitlines():
        name, mem = line.split("\t")
        service = re.sub(rf"^{live.compose.project}[-_]|[-_]\d+$", "", name)
        usage[service] = _mib(mem.split("/")[0])
    figures.add("memory (docker stats): " + ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(usage.items())))
    deployment = yaml.safe_load((REPO / "deploy/kubernetes/deployment.yaml").read_text())
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert 0 < usage["sensor-sd"] < int(limit[:-2]), usage


# --------------------------------------------------------------------------
# Crashes, kills, stops, teardown (last: they disturb the stack)
# --------------------------------------------------------------------------

def _watch_targets(live: Live, before: bytes, until: Any, what: str) -> int:
    """Until `until()` holds: the file stays byte-identical and both Prometheus keep all targets. Returns checks made."""
    checks = 0

    def step() -> bool:
        nonlocal checks
        assert live.targets_file() == before
        for service in PROMETHEUS:
            assert len(live.targets(service)) == SENSORS, service
        checks += 1
        return bool(until())

    poll(step, 120, what, 0.2)
    return checks


def _sd_ready(live: Live) -> bool:
    state = live.compose.inspect("sensor-sd")["State"]
    return state["Running"] and http_get(live.url("sensor-sd", "/-/ready"))[0] == 200


def test_a_crash_is_restarted_by_the_restart_policy_and_no_target_is_lost(live: Live) -> None:
    """SIGKILL of sensor-sd's process (a crash, an OOM kill): `restart: unless-stopped` brings it back."""
    before = live.targets_file()
    state = live.compose.inspect("sensor-sd")["State"]
    restarts = live.compose.inspect("sensor-sd")["RestartCount"]
    os.kill(state["Pid"], signal.SIGKILL)  # the container's own process, started by this test's compose up

    def restarted() -> bool:
        info = live.compose.inspect("sensor-sd")
        return info["RestartCount"] == restarts + 1 and _sd_ready(live)

    _watch_targets(live, before, restarted, "sensor-sd restarted by its restart policy")
    assert live.hosts(http_get(live.url("sensor-sd", "/targets"))[1]) == live.hosts(before)


def test_docker_kill_is_a_manual_stop_and_still_no_target_is_lost(live: Live) -> None:
    """Docker treats `docker kill` as a manual stop: no restart policy applies (by design); nothing is lost meanwhile."""
    before = live.targets_file()
    cid = live.compose.container("sensor-sd")
    live.engine.docker("kill", cid)
    poll(lambda: live.compose.inspect("sensor-sd")["State"]["Status"] == "exited", 30, "sensor-sd to exit")
    # While it is down (past two of http_sd's 5 s refreshes and the 5 s discovery throttle), both keep every target.
    stopped = time.monotonic()
    _watch_targets(live, before, lambda: time.monotonic() - stopped > 15, "15 s with sensor-sd down")
    assert live.compose.inspect("sensor-sd")["State"]["Status"] == "exited"
    live.compose("up", "--detach", "--no-build", "--pull", "never", "sensor-sd")
    _watch_targets(live, before, lambda: _sd_ready(live), "sensor-sd back after `up`")


def test_docker_stop_ends_sensor_sd_within_2_seconds(live: Live) -> None:
    cid = live.compose.container("sensor-sd")
    began = time.monotonic()
    live.engine.docker("stop", "--time", "10", cid)
    elapsed = time.monotonic() - began
    state = live.compose.inspect("sensor-sd")["State"]
    assert state["ExitCode"] == 0, state  # its own SIGTERM handling, not the SIGKILL after --time
    assert elapsed < 2, f"docker stop took {elapsed:.2f}s"
    print(f"\ndocker stop of sensor-sd: {elapsed:.2f}s, exit code 0")
    live.compose("start", "sensor-sd")
    poll(lambda: _sd_ready(live), 60, "sensor-sd back after start")


def test_down_leaves_no_container_volume_or_network(live: Live, images: Images) -> None:
    assert live.compose.leftovers().keys() == {"containers", "volumes", "networks"}
    live.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    assert live.compose.leftovers() == {}
    # The images are kept for the next run.
    assert live.engine.image_exists(images.project) and live.engine.image_exists("prom/prometheus:v2.42.0")
