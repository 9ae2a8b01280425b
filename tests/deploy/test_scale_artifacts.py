"""Static validation of the scale-out artefacts with the real tools.

vmagent / vmalert / victoria-metrics from Debian's victoria-metrics package,
promtool from prometheus, check-jsonschema from the `lint` extra. The
Prometheus agent configs under deploy/prometheus/ are also checked by
test_artifacts.py (promtool --agent, references); here: what is new to the
scale-out topologies. A missing tool is a failure, not a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VMAGENT = DEPLOY / "vmagent" / "scrape.yml"
VM_RELABEL = DEPLOY / "victoria-metrics" / "relabel.yml"
NOTIFIER = DEPLOY / "vmalert" / "notifier.yml"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
AGENT_DIRS = [DEPLOY / "prometheus" / "agent-sharded", DEPLOY / "prometheus" / "agent-ha"]
COMPOSE_SCALE = ROOT / "compose.scale.yaml"
SCALING_DOC = ROOT / "docs" / "scaling.md"


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found: install it (Debian victoria-metrics / prometheus, or the [lint] extra)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def load(p: Path) -> dict:
    return yaml.safe_load(p.read_text())


@pytest.mark.system
def test_vmagent_dry_run_accepts_the_scrape_config_and_relabel_file() -> None:
    proc = run(tool("vmagent"), "-dryRun", f"-promscrape.config={VMAGENT}", f"-remoteWrite.relabelConfig={VM_RELABEL}")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.system
def test_vmagent_dry_run_can_fail(tmp_path: Path) -> None:
    """The check above means something: vmagent refuses what it does not support (e.g. refresh_interval)."""
    doc = load(VMAGENT)
    doc["scrape_configs"][-1]["http_sd_configs"][0]["refresh_interval"] = "5s"
    bad = tmp_path / "scrape.yml"
    bad.write_text(yaml.safe_dump(doc))
    proc = run(tool("vmagent"), "-dryRun", f"-promscrape.config={bad}")
    assert proc.returncode != 0 and "refresh_interval" in proc.stderr


def test_vmagent_config_matches_the_rules_and_sensor_sd() -> None:
    jobs = {j["job_name"]: j for j in load(VMAGENT)["scrape_configs"]}
    assert {"sensor-sd", "inventory", "sensors-http"} <= set(jobs)
    sensors = jobs["sensors-http"]
    assert sensors["http_sd_configs"] == [{"url": "http://sensor-sd:8080/targets"}]
    instance = [r for r in sensors["relabel_configs"] if r.get("target_label") == "instance"]
    assert instance and instance[-1]["replacement"] == "$1"
    rules = "\n".join(r.read_text() for r in RULES)
    assert 'job=~"sensors|sensors-http"' in rules  # the job name the alerts select


@pytest.mark.system
def test_vmalert_dry_run_accepts_the_shipped_rules_unchanged() -> None:
    proc = run(tool("vmalert"), "-dryRun", *(f"-rule={r}" for r in RULES))
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.system
def test_vmalert_dry_run_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rules.yml"
    bad.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n"
                   "    annotations: {summary: '{{ $value | noSuchFunction }}'}\n")
    proc = run(tool("vmalert"), "-dryRun", f"-rule={bad}")
    assert proc.returncode != 0 and "noSuchFunction" in proc.stderr


def test_notifier_config_points_at_alertmanager() -> None:
    assert load(NOTIFIER) == {"static_configs": [{"targets": ["alertmanager:9093"]}]}


def test_relabel_file_drops_only_the_replica_label() -> None:
    assert load(VM_RELABEL) == [{"action": "labeldrop", "regex": "replica"}]


@pytest.mark.system
@pytest.mark.parametrize("cfg", [c for d in AGENT_DIRS for c in sorted(d.glob("*.yml"))], ids=lambda p: p.name)
def test_promtool_accepts_agent_configs(cfg: Path) -> None:
    proc = run(tool("promtool"), "check", "config", "--agent", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_agent_shards_cover_every_shard_once() -> None:
    docs = [load(c) for c in sorted((DEPLOY / "prometheus" / "agent-sharded").glob("*.yml"))]
    urls = [j["http_sd_configs"][0]["url"] for d in docs for j in d["scrape_configs"] if j["job_name"] == "sensors-http"]
    shards = sorted(tuple(map(int, re.search(r"shard=(\d+)&shards=(\d+)", u).groups())) for u in urls)  # type: ignore[union-attr]
    assert shards == [(i, len(docs)) for i in range(len(docs))]
    assert [d["global"]["external_labels"]["shard"] for d in docs] == [str(i) for i in range(len(docs))]


def test_ha_replicas_differ_only_by_the_replica_label() -> None:
    a, b = (load(c) for c in sorted((DEPLOY / "prometheus" / "agent-ha").glob("*.yml")))
    assert (a["global"]["external_labels"]["replica"], b["global"]["external_labels"]["replica"]) == ("a", "b")
    a["global"]["external_labels"]["replica"] = b["global"]["external_labels"]["replica"]
    assert a == b


# --- compose.scale.yaml -------------------------------------------------------------


def test_compose_scale_schema() -> None:
    proc = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE_SCALE.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg.lstrip("-").partition("=")[::2] for arg in command)


def test_compose_scale_cluster_is_consistent() -> None:
    services = load(COMPOSE_SCALE)["services"]
    members = {name: flags(s["command"]) for name, s in services.items() if name.startswith("vmagent-")}
    counts = {f["promscrape.cluster.membersCount"] for f in members.values()}
    assert counts == {str(len(members))}, "every member must know the same membersCount"
    assert sorted(int(f["promscrape.cluster.memberNum"]) for f in members.values()) == list(range(len(members)))
    replication = {int(f["promscrape.cluster.replicationFactor"]) for f in members.values()}
    assert len(replication) == 1 and 1 <= replication.pop() <= len(members)
    vm = flags(services["victoria-metrics"]["command"])
    assert vm["dedup.minScrapeInterval"] == load(VMAGENT)["scrape_configs"][-1]["scrape_interval"]
    for f in members.values():
        assert f["promscrape.config"] == "/etc/vmagent/scrape.yml"
        assert f["remoteWrite.url"] == "http://victoria-metrics:8428/api/v1/write"


def test_compose_scale_mounts_existing_artefacts() -> None:
    services = load(COMPOSE_SCALE)["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
              if v.startswith("./")}
    for source in mounts.values():
        assert (ROOT / source).exists(), source
    # Each file a command names inside the container comes from a mounted deploy/ file.
    for s in services.values():
        for value in flags(s["command"]).values():
            if value.startswith("/etc/"):
                mount = next(m for m in mounts if value.startswith(m + "/"))
                pattern = mounts[mount] + value[len(mount):]
                assert list(ROOT.glob(pattern.removeprefix("./"))), f"{value} -> {pattern} matches nothing"


@pytest.mark.parametrize("service,binary", [("victoria-metrics", "victoria-metrics"), ("vmagent-0", "vmagent"),
                                            ("vmalert", "vmalert")])
@pytest.mark.system
def test_compose_scale_flags_exist_in_the_binaries(service: str, binary: str) -> None:
    """Every flag the overlay passes is one the tested release (the Debian package) knows."""
    proc = run(tool(binary), "-help")
    known = set(re.findall(r"^\s+-([\w.]+)", proc.stdout + proc.stderr, re.M))
    used = set(flags(load(COMPOSE_SCALE)["services"][service]["command"]))
    assert used <= known, used - known


@pytest.mark.parametrize("f", [COMPOSE_SCALE, SCALING_DOC, VMAGENT, VM_RELABEL, NOTIFIER], ids=lambda p: p.name)
def test_no_machine_paths(f: Path) -> None:
    assert not re.search(r"(?<![\w.])/(work|home|root|Users)/", f.read_text())
