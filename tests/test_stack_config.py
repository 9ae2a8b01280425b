"""The local stack's generated Prometheus and Alertmanager configs, checked with promtool/amtool (no server started)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localstack.config import DEPLOY, Ports, StackConfig, alertmanager_config, prometheus_config, rules_with_for
from localstack.net import LOOPBACK
from localstack.stack import Stack

PORTS = Ports(inventory=41337, fleet=49101, sd=48080, prometheus=49090, alertmanager=49093)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: make deps installs it"  # a failure, not a skip: CI has it
    return path


def write(doc: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def jobs(doc: dict) -> dict[str, dict]:
    return {j["job_name"]: j for j in doc["scrape_configs"]}


@pytest.mark.system
@pytest.mark.parametrize("http_sd", [False, True])
def test_promtool_accepts_the_generated_config(tmp_path: Path, http_sd: bool) -> None:
    cfg = StackConfig(tmp_path, PORTS, http_sd=http_sd)
    path = write(prometheus_config(cfg), tmp_path / "prometheus.yml")
    proc = subprocess.run([tool("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sensors_are_reached_through_the_fleet_proxy(tmp_path: Path) -> None:
    doc = prometheus_config(StackConfig(tmp_path, PORTS, http_sd=True, scrape_interval="1s"))
    for name in ("sensors", "sensors-http"):
        job = jobs(doc)[name]
        assert job["proxy_url"] == f"http://{LOOPBACK}:{PORTS.fleet}"
        assert job["scrape_interval"] == "1s" and job["scrape_timeout"] == "1s"
        # The shipped relabeling (instance without port) is kept.
        assert job["relabel_configs"] == jobs(yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text()))["sensors"]["relabel_configs"]
    assert jobs(doc)["sensors"]["file_sd_configs"] == [{"files": [str(tmp_path / "targets.json")], "refresh_interval": "30s"}]
    assert jobs(doc)["sensors-http"]["http_sd_configs"][0]["url"] == f"http://{LOOPBACK}:{PORTS.sd}/targets"
    assert "sensors-http" not in jobs(prometheus_config(StackConfig(tmp_path, PORTS)))


def test_every_address_is_loopback(tmp_path: Path) -> None:
    doc = prometheus_config(StackConfig(tmp_path, PORTS))
    static = [t for j in doc["scrape_configs"] for sc in j.get("static_configs", []) for t in sc["targets"]]
    static += [t for am in doc["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert sorted(static) == sorted(f"{LOOPBACK}:{p}" for p in (PORTS.prometheus, PORTS.sd, PORTS.inventory,
                                                                  PORTS.alertmanager))
    assert jobs(doc)["inventory"]["static_configs"][0]["targets"] == [f"{LOOPBACK}:{PORTS.inventory}"]


def test_rule_files_exist_and_shipped_rules_can_be_replaced(tmp_path: Path) -> None:
    shipped = prometheus_config(StackConfig(tmp_path, PORTS))["rule_files"]
    assert shipped and all(Path(f).is_file() and Path(f).is_absolute() for f in shipped)
    assert {Path(f).name for f in shipped} == {p.name for p in (DEPLOY / "prometheus" / "rules").glob("*.yml")}

    extra = tmp_path / "fast.rules.yml"
    extra.write_text("groups: []\n")
    assert prometheus_config(StackConfig(tmp_path, PORTS, extra_rule_files=(extra,)))["rule_files"] == [*shipped, str(extra)]
    only = prometheus_config(StackConfig(tmp_path, PORTS, extra_rule_files=(extra,), shipped_rules=False))
    assert only["rule_files"] == [str(extra)]


@pytest.mark.system
def test_promtool_checks_the_rules_the_stack_loads(tmp_path: Path) -> None:
    files = prometheus_config(StackConfig(tmp_path, PORTS))["rule_files"]
    proc = subprocess.run([tool("promtool"), "check", "rules", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.system
def test_alertmanager_config_keeps_routing_and_drops_remote_delivery(tmp_path: Path) -> None:
    shipped = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    doc = alertmanager_config()
    assert doc["route"] == shipped["route"] and doc["inhibit_rules"] == shipped["inhibit_rules"]
    assert [r["name"] for r in doc["receivers"]] == [r["name"] for r in shipped["receivers"]]
    assert "http" not in yaml.safe_dump(doc["receivers"])
    path = write(doc, tmp_path / "alertmanager.yml")
    proc = subprocess.run([tool("amtool"), "check-config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stack_writes_both_configs_under_its_workdir(tmp_path: Path) -> None:
    stack = Stack(StackConfig(tmp_path / "data", PORTS))
    assert stack.write_prometheus_config().parent == tmp_path / "data"
    assert stack.write_alertmanager_config().parent == tmp_path / "data"
    assert stack.url("prometheus", "/-/ready") == f"http://{LOOPBACK}:{PORTS.prometheus}/-/ready"


def test_ephemeral_ports_are_distinct() -> None:
    for _ in range(20):
        ports = Ports.ephemeral()
        assert len({port for _, port in ports.items()}) == len(ports.items()) == 6  # five parts and the console


@pytest.mark.system
def test_rules_with_short_for_differ_from_the_shipped_ones_only_in_for(tmp_path: Path) -> None:
    fast = rules_with_for(tmp_path / "fast.rules.yml", "3s")
    proc = subprocess.run([tool("promtool"), "check", "rules", str(fast)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shipped = [g for f in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
               for g in yaml.safe_load(f.read_text())["groups"]]
    copied = yaml.safe_load(fast.read_text())["groups"]
    assert [r.get("for") for g in copied for r in g["rules"] if "alert" in r and "for" in r] != []
    assert {r["for"] for g in copied for r in g["rules"] if "for" in r} == {"3s"}
    for g in shipped:
        for r in g["rules"]:
            r.pop("for", None)
    for g in copied:
        for r in g["rules"]:
            r.pop("for", None)
    assert copied == shipped


def test_the_demo_holds_an_emptied_inventory_visibly_and_the_docs_say_how_long() -> None:
    """`make run` polls every 2 s: the hold must outlast DROP_CONFIRMATIONS polls by far, and the docs name it."""
    from sensor_sd import config
    from localstack.config import DEMO_DROP_HOLD

    settings = config.load({}, {"DROP_HOLD": DEMO_DROP_HOLD})
    polls_alone = settings.drop_confirmations * StackConfig(Path(".")).update_interval  # ~6 s
    assert settings.drop_hold >= 10 * polls_alone
    doc = (DEPLOY.parent / "docs" / "local-stack.md").read_text()
    assert f"`DROP_HOLD={DEMO_DROP_HOLD}`" in doc
