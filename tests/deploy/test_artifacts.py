"""Static validation of the deployment artefacts with the real tools.

promtool / amtool come from Debian's prometheus packages; hadolint,
check-jsonschema and kubernetes-validate from the project's `lint` extra.
A missing tool is a failure, not a skip: CI installs all of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULES_DIR = PROM / "rules"
RULE_TESTS_DIR = RULES_DIR / "tests"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
K8S = DEPLOY / "kubernetes"
RUNBOOK = ROOT / "docs" / "runbook.md"
COMPOSE_FILES = ["compose.yaml", "compose.demo.yaml"]

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))
# Every Prometheus config except rule files and their tests.
PROM_CONFIGS = sorted(p for p in PROM.rglob("*.yml") if RULES_DIR not in p.parents)
K8S_MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")

SENSOR_JOBS = {"sensors", "sensors-http"}
SEVERITIES = {"critical", "warning"}

# The public metric names (SPEC + histogram/counter series) and sensor metrics.
SD_METRICS = {
    "sensor_sd_syncs_total",
    "sensor_sd_inventory_request_duration_seconds_bucket",
    "sensor_sd_inventory_request_duration_seconds_sum",
    "sensor_sd_inventory_request_duration_seconds_count",
    "sensor_sd_targets",
    "sensor_sd_targets_added_total",
    "sensor_sd_targets_removed_total",
    "sensor_sd_last_success_timestamp_seconds",
    "sensor_sd_inventory_up",
    "sensor_sd_invalid_entries_total",
    "sensor_sd_drop_guard_active",
    "sensor_sd_build_info",
    "sensor_sd_update_interval_seconds",
    "sensor_sd_publish_errors_total",
}
SENSOR_METRICS = {
    "sensor_temperature_celsius",
    "sensor_battery_ratio",
    "sensor_uptime_seconds",
    "sensor_events_total",
    "sensor_info",
    "sensor_humidity_ratio",
}
PROMETHEUS_METRICS = {"up"}


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def tool(name: str) -> str:
    """Path of a CLI tool from PATH or the running interpreter's bin dir."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(
            f"{name} not found on PATH nor in {Path(sys.executable).parent}: "
            "install it (Debian prometheus/prometheus-alertmanager, or the project's "
            "[lint] extra) — deployment artefacts cannot be validated without it"
        )
    return found


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).strip()


def load_yaml(p: Path):
    return yaml.safe_load(p.read_text())


def all_rules() -> list[dict]:
    return [r for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"]]


def alert_names() -> set[str]:
    return {r["alert"] for r in all_rules() if "alert" in r}


def recorded_names() -> set[str]:
    return {r["record"] for r in all_rules() if "record" in r}


def github_slug(heading: str) -> str:
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", RUNBOOK.read_text(), re.M)}


# --------------------------------------------------------------------------
# Prometheus configs
# --------------------------------------------------------------------------

def is_agent(p: Path) -> bool:
    return p.parent.name.startswith("agent") and "agent" in p.name


# Where each directory's agents remote-write: a central Prometheus, or victoria-metrics (docs/scaling.md).
AGENT_REMOTE_WRITE = {"agent": "http://prometheus-central:9090/api/v1/write",
                      "agent-sharded": "http://victoria-metrics:8428/api/v1/write",
                      "agent-ha": "http://victoria-metrics:8428/api/v1/write"}


def test_expected_prometheus_configs_exist():
    names = {rel(p) for p in PROM_CONFIGS}
    for want in [
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/prometheus-http-sd.yml",
        "deploy/prometheus/agent/prometheus-agent.yml",
        "deploy/prometheus/agent/prometheus-central.yml",
    ]:
        assert want in names
    assert len([n for n in names if n.startswith("deploy/prometheus/sharded/")]) >= 4
    assert RULE_FILES and RULE_TEST_FILES


@pytest.mark.system
@pytest.mark.parametrize("cfg", PROM_CONFIGS, ids=rel)
def test_promtool_check_config(cfg: Path):
    args = [tool("promtool"), "check", "config"]
    if is_agent(cfg):
        args.append("--agent")
    proc = run(args + [cfg.name], cwd=cfg.parent)
    out = output(proc)
    assert proc.returncode == 0, out
    # The only tolerated warning: the file_sd file that sensor-sd writes at
    # runtime into the /shared volume, absent on a build machine.
    warnings = [l for l in out.splitlines() if "WARNING" in l]
    unexpected = [l for l in warnings if not re.search(r'file "/shared/[^"]+" for file_sd', l)]
    assert not unexpected, out


@pytest.mark.parametrize("cfg", PROM_CONFIGS, ids=rel)
def test_prometheus_config_references(cfg: Path):
    """rule_files globs match real files; sensor jobs follow the naming contract."""
    conf = load_yaml(cfg)
    for pattern in conf.get("rule_files") or []:
        assert list(cfg.parent.glob(pattern)), f"{rel(cfg)}: rule_files {pattern!r} matches nothing"
    if is_agent(cfg):
        assert "rule_files" not in conf and "alerting" not in conf
        urls = [rw["url"] for rw in conf["remote_write"]]
        assert AGENT_REMOTE_WRITE[cfg.parent.name] in urls
    else:
        am = conf["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
        assert am == ["alertmanager:9093"]
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    for name, job in jobs.items():
        if name == "sensors":
            assert job["file_sd_configs"][0]["files"] == ["/shared/targets.json"]
        if name == "sensors-http":
            sd = job["http_sd_configs"][0]
            assert urlsplit(sd["url"]).path == "/targets"
            assert sd["refresh_interval"] == "5s"
        if name in SENSOR_JOBS:
            instance = [r for r in job["relabel_configs"] if r.get("target_label") == "instance"]
            assert instance and instance[-1]["replacement"] == "$1", "instance must drop the port"
            assert not any(r.get("action") == "labeldrop" and "source" in r.get("regex", "")
                           for r in job["relabel_configs"]), "source label must be kept"
    if "central" not in cfg.name:
        assert "sensor-sd" in jobs and SENSOR_JOBS & set(jobs), rel(cfg)


def test_production_configs_use_both_sd_variants():
    fs = {j["job_name"] for j in load_yaml(PROM / "prometheus.yml")["scrape_configs"]}
    http = load_yaml(PROM / "prometheus-http-sd.yml")["scrape_configs"]
    assert {"prometheus", "sensor-sd", "inventory", "sensors"} <= fs
    job = {j["job_name"]: j for j in http}["sensors-http"]
    assert job["http_sd_configs"][0]["url"] == "http://sensor-sd:8080/targets"


def test_sharding_configs_are_consistent():
    """Each of the N shards appears once, in both variants, with the same N."""
    shard_dir = PROM / "sharded"
    server = sorted(shard_dir.glob("prometheus-shard-*.yml"))
    hashmod = sorted(shard_dir.glob("prometheus-hashmod-shard-*.yml"))
    n = len(server)
    assert n >= 2 and len(hashmod) == n
    seen_server, seen_hashmod = set(), set()
    for cfg in server:
        conf = load_yaml(cfg)
        job = {j["job_name"]: j for j in conf["scrape_configs"]}["sensors-http"]
        q = parse_qs(urlsplit(job["http_sd_configs"][0]["url"]).query)
        assert q["shards"] == [str(n)], rel(cfg)
        seen_server.add(int(q["shard"][0]))
        assert conf["global"]["external_labels"]["shard"] == q["shard"][0]
    for cfg in hashmod:
        conf = load_yaml(cfg)
        job = {j["job_name"]: j for j in conf["scrape_configs"]}["sensors"]
        relabels = job["relabel_configs"]
        hm = [r for r in relabels if r.get("action") == "hashmod"]
        assert len(hm) == 1 and hm[0]["source_labels"] == ["__address__"] and hm[0]["modulus"] == n
        # hashmod must see the published address, before any rewrite.
        assert relabels.index(hm[0]) == 0
        keep = [r for r in relabels if r.get("action") == "keep" and r["source_labels"] == [hm[0]["target_label"]]]
        assert len(keep) == 1, rel(cfg)
        seen_hashmod.add(int(keep[0]["regex"]))
    assert seen_server == seen_hashmod == set(range(n))


@pytest.mark.system
def test_kubernetes_prometheus_configmap_is_valid_config(tmp_path: Path):
    cm = load_yaml(K8S / "prometheus-scrape-configmap.yaml")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(cm["data"]["prometheus.yml"])
    proc = run([tool("promtool"), "check", "config", str(cfg)])
    assert proc.returncode == 0, output(proc)
    jobs = {j["job_name"]: j for j in yaml.safe_load(cfg.read_text())["scrape_configs"]}
    url = jobs["sensors-http"]["http_sd_configs"][0]["url"]
    svc = load_yaml(K8S / "service.yaml")
    assert url == f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:8080/targets"


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------

@pytest.mark.system
@pytest.mark.parametrize("rules", RULE_FILES, ids=rel)
def test_promtool_check_rules(rules: Path):
    proc = run([tool("promtool"), "check", "rules", rules.name], cwd=rules.parent)
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in output(proc)


@pytest.mark.system
@pytest.mark.parametrize("tests", RULE_TEST_FILES, ids=rel)
def test_promtool_test_rules(tests: Path):
    proc = run([tool("promtool"), "test", "rules", tests.name], cwd=tests.parent)
    assert proc.returncode == 0, output(proc)


def test_required_alerts_and_recordings_exist():
    assert {
        "SensorDown", "SensorFleetDegraded", "SensorSDSyncFailing", "SensorSDStale",
        "SensorSDDropGuardActive", "InventoryDown", "SensorSDDown",
    } <= alert_names()
    assert {"source:sensors_up:ratio", "job:sensors_up:sum", "job:sensors_discovered:count"} <= recorded_names()


@pytest.mark.parametrize("alert", sorted(alert_names()))
def test_alert_has_labels_annotations_and_runbook(alert: str):
    anchors = runbook_anchors()
    for r in (r for r in all_rules() if r.get("alert") == alert):
        assert r["labels"]["severity"] in SEVERITIES
        ann = r["annotations"]
        assert ann.get("summary") and ann.get("description")
        url = ann["runbook_url"]
        assert url.startswith("docs/runbook.md#"), url
        anchor = url.split("#", 1)[1]
        assert anchor == github_slug(alert)
        assert anchor in anchors, f"docs/runbook.md has no section for {alert}"


@pytest.mark.parametrize("alert", sorted(alert_names()))
def test_alert_has_firing_and_quiet_unit_tests(alert: str):
    fires = quiet = 0
    for f in RULE_TEST_FILES:
        for case in load_yaml(f)["tests"]:
            for t in case.get("alert_rule_test") or []:
                if t["alertname"] != alert:
                    continue
                if t.get("exp_alerts"):
                    fires += 1
                else:
                    quiet += 1
    assert fires, f"no promtool test where {alert} fires"
    assert quiet, f"no promtool test where {alert} stays quiet"


def test_rules_carry_no_hostnames():
    """The local stack reuses these rule files with loopback addresses."""
    for r in all_rules():
        expr = r["expr"]
        assert "instance" not in re.sub(r"by \([^)]*\)|on \([^)]*\)", "", expr), expr
        assert not re.search(r"[\w.-]+:\d{2,5}", expr), expr


# --------------------------------------------------------------------------
# Alertmanager
# --------------------------------------------------------------------------

@pytest.mark.system
def test_amtool_check_config():
    proc = run([tool("amtool"), "check-config", str(AM_CONFIG)])
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in output(proc)


@pytest.mark.parametrize("labels,receiver", [
    (["alertname=SensorFleetDegraded", "severity=critical", "source=north"], "oncall-webhook"),
    (["alertname=SensorDown", "severity=warning", "source=north"], "team-webhook"),
    (["alertname=Unknown"], "null"),
])
@pytest.mark.system
def test_alertmanager_routing(labels: list[str], receiver: str):
    proc = run([tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}",
                f"--verify.receivers={receiver}", *labels])
    assert proc.returncode == 0, output(proc)


def test_every_rule_severity_is_routed():
    am = load_yaml(AM_CONFIG)
    routed = {m for r in am["route"]["routes"] for m in r["matchers"]}
    for sev in {r["labels"]["severity"] for r in all_rules() if "alert" in r}:
        assert f'severity="{sev}"' in routed
    assert am["route"]["group_by"] == ["alertname", "source"]


def test_alertmanager_inhibitions():
    pairs = set()
    for rule in load_yaml(AM_CONFIG)["inhibit_rules"]:
        src = re.findall(r'alertname=~?"([^"]+)"', " ".join(rule["source_matchers"]))[0]
        tgt = re.findall(r'alertname=~?"([^"]+)"', " ".join(rule["target_matchers"]))[0]
        for a in src.split("|"):
            for b in tgt.split("|"):
                assert a in alert_names() and b in alert_names(), (a, b)
                pairs.add((a, b))
    assert ("InventoryDown", "SensorSDSyncFailing") in pairs
    assert ("SensorSDDown", "SensorSDStale") in pairs


# --------------------------------------------------------------------------
# Docker
# --------------------------------------------------------------------------

def test_hadolint():
    proc = run([tool("hadolint"), "--no-color", "Dockerfile"])
    assert proc.returncode == 0 and not output(proc), output(proc)


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    froms = [l for l in lines if l.startswith("FROM ")]
    assert len(froms) >= 2 and all(l.split()[1] == "python:3.11-slim" for l in froms)
    final = lines[lines.index(froms[-1]):]
    assert [l for l in final if l.startswith("USER ")][-1].split()[1].split(":")[0] == "65534"
    assert 'ENTRYPOINT ["sensor-sd"]' in final and 'CMD ["run"]' in final
    health = [l for l in final if l.startswith("HEALTHCHECK")]
    assert health and "urllib" in health[0] and "http://127.0.0.1:8080/-/healthy" in health[0]
    env = " ".join(l for l in final if l.startswith("ENV "))
    assert "TARGETS_FILE=/shared/targets.json" in env and "LISTEN_ADDRESS=:8080" in env


def test_dockerignore_keeps_build_inputs():
    rules = [l for l in (ROOT / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")]
    assert rules[0] == "*"
    for needed in ("pyproject.toml", "README.md", "src/"):
        assert f"!{needed}" in rules


# --------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_schema(name: str):
    proc = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", name])
    assert proc.returncode == 0, output(proc)


def test_compose_production_contract():
    c = load_yaml(ROOT / "compose.yaml")
    svc = c["services"]
    assert {"sensor-sd", "prometheus", "alertmanager", "grafana"} <= set(svc)
    sd, prom = svc["sensor-sd"], svc["prometheus"]
    assert sd["read_only"] is True
    assert "shared:/shared" in sd["volumes"]
    assert "shared:/shared:ro" in prom["volumes"]
    assert sd["environment"]["INVENTORY_URL"].endswith(":-http://inventory_server:1337/inventory}")
    for name, s in svc.items():
        assert "healthcheck" in s, f"{name} has no healthcheck"
    # Bind mounts point at artefacts that exist, and the config Prometheus is
    # started with is one of the validated ones.
    for s in svc.values():
        for v in s.get("volumes", []):
            if v.startswith("./"):
                assert (ROOT / v.split(":")[0]).exists(), v
    conf_flag = [a for a in prom["command"] if a.startswith("--config.file=")][0]
    assert conf_flag == "--config.file=/etc/prometheus/prometheus.yml"


def test_compose_demo_contract():
    d = load_yaml(ROOT / "compose.demo.yaml")["services"]
    assert d["inventory_server"]["command"][:3] == ["inventory-server", "--host", "0.0.0.0"]
    assert d["fleet"]["command"][0] == "fleet"
    conf_flag = [a for a in d["prometheus"]["command"] if a.startswith("--config.file=")][0]
    demo_cfg = PROM / conf_flag.split("=", 1)[1].removeprefix("/etc/prometheus/")
    assert demo_cfg.is_file(), conf_flag
    jobs = {j["job_name"]: j for j in load_yaml(demo_cfg)["scrape_configs"]}
    proxy = urlsplit(jobs["sensors"]["proxy_url"])
    port = str(proxy.port)
    assert proxy.hostname == "fleet" and port in d["fleet"]["command"]


# --------------------------------------------------------------------------
# The environments and commands the artefacts give sensor-sd are accepted by
# sensor-sd itself: `check` gets past the configuration (exit 2) and fails
# only at the inventory (exit 1), with its one-line message, no traceback.
# --------------------------------------------------------------------------

def compose_default(value: str) -> str:
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def dockerfile_env() -> dict[str, str]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    text = text[text.rindex("\nFROM "):]  # the runtime stage only
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(kv.split("=", 1) for kv in line[4:].split() if "=" in kv)
    return {k: v for k, v in env.items() if not k.startswith(("PATH", "PYTHON"))}


def deployment_envs() -> dict[str, dict[str, str]]:
    compose = load_yaml(ROOT / "compose.yaml")["services"]["sensor-sd"]["environment"]
    demo = load_yaml(ROOT / "compose.demo.yaml")["services"]["sensor-sd"]["environment"]
    merged = {k: compose_default(v) for k, v in compose.items()}
    return {
        "Dockerfile": dockerfile_env(),
        "compose.yaml": merged,
        "compose.yaml+compose.demo.yaml": {**merged, **{k: str(v) for k, v in demo.items()}},
        "kubernetes/configmap.yaml": load_yaml(K8S / "configmap.yaml")["data"],
    }


# The source name `check` reports for each environment: the configmap names its
# source, the others take it from the URL's host (here the closed local port).
EXPECTED_SOURCE = {
    "Dockerfile": "127.0.0.1",
    "compose.yaml": "127.0.0.1",
    "compose.yaml+compose.demo.yaml": "127.0.0.1",
    "kubernetes/configmap.yaml": "inventory_server",
}


def test_every_deployment_env_has_an_expectation():
    assert sorted(EXPECTED_SOURCE) == sorted(deployment_envs())


@pytest.mark.parametrize("where", sorted(deployment_envs()))
def test_deployment_env_accepted_by_sensor_sd(where: str, tmp_path: Path):
    from sensor_sd.config import DEFAULTS

    env = dict(deployment_envs()[where])
    # Keep each URL's form (name=url) but aim at a closed local port, so the run is
    # fast and offline (an environment without INVENTORY_URL runs on the default).
    env.setdefault("INVENTORY_URL", DEFAULTS["INVENTORY_URL"])
    env["INVENTORY_URL"] = re.sub(r"//[^/,]+", "//127.0.0.1:1", env["INVENTORY_URL"])
    targets = tmp_path / "targets.json"
    env["TARGETS_FILE"] = str(targets)  # /shared is not writable here
    proc = subprocess.run([sys.executable, "-m", "sensor_sd", "check", "--summary=never"], capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ.get("PATH", ""), **env})
    out = output(proc)
    assert "Traceback" not in out, f"{where}: {out}"
    # 1 = the inventory failed: the configuration passed (2 would be a bad one).
    assert proc.returncode == 1, f"{where}: exit {proc.returncode}: {out}"
    source = EXPECTED_SOURCE[where]
    assert proc.stdout.splitlines() == [
        f"{source}: inventory failed: unreachable: connection refused: 127.0.0.1:1"], f"{where}: {out}"
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # every log line is one JSON object
    assert [(e["level"], e["source"], e["reason"]) for e in events if e.get("result") == "error"] == [
        ("warning", source, "unreachable")], f"{where}: {out}"
    assert not targets.exists(), "check writes nothing"


def test_rule_and_dashboard_metrics_are_exposed_by_sensor_sd():
    """The sensor_sd_* names the artefacts rely on are what sensor-sd exports."""
    from sensor_sd.metrics import Metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    # Families, not samples: labelled counters have no sample before the first event.
    exposed = {fam.name + sfx for fam in Metrics().registry.collect() for sfx in suffixes.get(fam.type, [""])}
    exprs = [r["expr"] for r in all_rules()] + [e for d in DASHBOARDS for _, e in panel_exprs(json.loads(d.read_text()))]
    used = {n for e in exprs for n in metric_names(substitute_grafana_vars(e)) if n.startswith("sensor_sd_")}
    assert used <= SD_METRICS, sorted(used - SD_METRICS)
    assert not SD_METRICS - exposed, f"not exported by sensor-sd: {sorted(SD_METRICS - exposed)}"


@pytest.mark.parametrize("service", ["inventory_server", "fleet"])
def test_demo_commands_use_existing_flags(service: str):
    command = load_yaml(ROOT / "compose.demo.yaml")["services"][service]["command"]
    proc = subprocess.run([sys.executable, "-m", "sensor_sd", command[0], "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, output(proc)
    for flag in (a for a in command[1:] if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", proc.stdout), f"{service}: unknown flag {flag}"


# --------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("manifest", K8S_MANIFESTS, ids=rel)
def test_kubernetes_validate_strict(manifest: Path):
    proc = run([tool("kubernetes-validate"), "--strict", str(manifest)])
    out = output(proc)
    assert proc.returncode == 0, out
    # A kind without a schema only warns: require an explicit pass.
    assert "passed" in out and "WARN" not in out, out


def test_kustomization_lists_every_manifest():
    kust = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S_MANIFESTS)


def test_kubernetes_deployment_contract():
    dep = load_yaml(K8S / "deployment.yaml")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1
    assert spec["securityContext"]["runAsNonRoot"] is True
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    assert any(m["mountPath"] == "/shared" for m in c["volumeMounts"])
    assert any("emptyDir" in v for v in spec["volumes"])
    svc = load_yaml(K8S / "service.yaml")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    np = load_yaml(K8S / "networkpolicy.yaml")["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}
    assert [p["port"] for r in np["ingress"] for p in r["ports"]] == [8080]
    assert sorted({p["port"] for r in np["egress"] for p in r["ports"]}) == [53, 1337]


# --------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan", "e"}


def panel_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def substitute_grafana_vars(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # label values
    e = re.sub(r"\{[^}]*\}", "", e)  # matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", e):
        if m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def test_metric_name_extractor():
    assert metric_names('sum by (source) (rate(sensor_sd_syncs_total{source=~"a"}[5m])) > 0') == {"sensor_sd_syncs_total"}
    assert metric_names("time() - max(foo_seconds) / on (job) group_left () bar") == {"foo_seconds", "bar"}


@pytest.mark.parametrize("dash", DASHBOARDS, ids=rel)
def test_dashboard_structure(dash: Path):
    d = json.loads(dash.read_text())
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    ds_uids = {ds["uid"] for ds in load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]}
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in ds_uids, p["title"]
        assert p["targets"], p["title"]
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for want in ("targets per source", "sync results", "latency", "last success", "drop guard",
                 "sensors up", "down sensors"):
        assert want in titles


@pytest.mark.system
@pytest.mark.parametrize("dash", DASHBOARDS, ids=rel)
def test_dashboard_exprs_parse(dash: Path, tmp_path: Path):
    """Every panel query goes through Prometheus' own PromQL parser."""
    exprs = panel_exprs(json.loads(dash.read_text()))
    assert exprs
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substitute_grafana_vars(e)} for i, (_, e) in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-exprs.yml"
    f.write_text(yaml.safe_dump(rules))
    proc = run([tool("promtool"), "check", "rules", str(f)])
    assert proc.returncode == 0, output(proc)


@pytest.mark.parametrize("dash", DASHBOARDS, ids=rel)
def test_dashboard_uses_known_metrics(dash: Path):
    known = SD_METRICS | SENSOR_METRICS | PROMETHEUS_METRICS | recorded_names()
    for title, expr in panel_exprs(json.loads(dash.read_text())):
        unknown = metric_names(substitute_grafana_vars(expr)) - known
        assert not unknown, f"panel {title!r}: unknown metrics {unknown} in {expr}"


def test_grafana_provisioning_matches_compose():
    provider = load_yaml(GRAFANA / "provisioning/dashboards/sensor-sd.yml")["providers"][0]
    grafana = load_yaml(ROOT / "compose.yaml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# --------------------------------------------------------------------------
# House rules
# --------------------------------------------------------------------------

OWN_FILES = sorted(
    [p for p in DEPLOY.rglob("*") if p.is_file()]
    + [ROOT / n for n in ("Dockerfile", ".dockerignore", *COMPOSE_FILES)]
    + [RUNBOOK, ROOT / "docs" / "deployment.md"],
)


@pytest.mark.parametrize("f", OWN_FILES, ids=rel)
def test_no_machine_paths(f: Path):
    assert not re.search(r"(?<![\w.])/(work|home|root|Users)/", f.read_text()), rel(f)
