"""Static validation of deploy/kubernetes-scale/ (sources file + vmagent cluster + victoria-metrics).

kubernetes-validate (the `lint` extra) checks every manifest against the
Kubernetes schemas; vmagent (Debian's victoria-metrics package) dry-runs the
embedded scrape config; sensor-sd's own loader reads the sources file and the
environment the overlay leaves (the base's INVENTORY_URL removed), so the
overlay starts a daemon instead of exiting 2. A missing tool is a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sensor_sd import config, sources

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
SCALE = ROOT / "deploy" / "kubernetes-scale"
KUST = yaml.safe_load((SCALE / "kustomization.yaml").read_text())
PATCHES = [SCALE / p["path"] for p in KUST["patches"]]
MANIFESTS = sorted(SCALE / r for r in KUST["resources"] if not r.startswith(".."))


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found: install it (Debian victoria-metrics, or the [lint] extra)")
    return found


def doc(name: str, kind: str | None = None) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((SCALE / name).read_text()) if d]
    return next(d for d in docs if kind is None or d["kind"] == kind)


def args(container: dict[str, Any]) -> dict[str, str]:
    return dict(a.lstrip("-").split("=", 1) for a in container["args"])


def test_kustomization_lists_every_manifest() -> None:
    assert KUST["resources"][0] == "../kubernetes"
    listed = {p.name for p in MANIFESTS} | {p.name for p in PATCHES} | {"kustomization.yaml"}
    assert listed == {p.name for p in SCALE.glob("*.yaml")}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_validate_strict(manifest: Path) -> None:
    proc = subprocess.run([tool("kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "passed" in out and "WARN" not in out, out


def test_the_overlay_leaves_a_configuration_sensor_sd_accepts(tmp_path: Path) -> None:
    """Base ConfigMap + patch (INVENTORY_URL deleted, SOURCES_FILE set) + the mounted sources file: it loads."""
    env = dict(yaml.safe_load((BASE / "configmap.yaml").read_text())["data"])
    cm_patch, dep_patch = list(yaml.safe_load_all(PATCHES[0].read_text()))
    for key, value in cm_patch["data"].items():
        if value is None:
            env.pop(key)  # a strategic-merge null deletes the key
        else:
            env[key] = value
    assert "INVENTORY_URL" not in env
    (container,) = dep_patch["spec"]["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = dep_patch["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == doc("sources-configmap.yaml")["metadata"]["name"]
    assert volume["name"] == mount["name"]
    sources_text = doc("sources-configmap.yaml")["data"]["sources.yaml"]
    mounted = tmp_path / Path(env["SOURCES_FILE"]).relative_to(mount["mountPath"])
    mounted.write_text(sources_text)
    assert Path(env["SOURCES_FILE"]).parent == Path(mount["mountPath"])
    env.update(SOURCES_FILE=str(mounted), TARGETS_FILE=str(tmp_path / "targets.json"))
    settings = config.load({}, env)
    assert [s.name for s in settings.sources] == ["store1", "store2", "store3"]
    assert all(dict(s.labels)["store"] for s in settings.sources)
    assert sources.parse(mounted, sources_text.encode()) == settings.sources


def test_vmagent_dry_run_accepts_the_embedded_scrape_config(tmp_path: Path) -> None:
    path = tmp_path / "scrape.yml"
    path.write_text(doc("vmagent-configmap.yaml")["data"]["scrape.yml"])
    proc = subprocess.run([tool("vmagent"), "-dryRun", f"-promscrape.config={path}"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_sensor_job_is_the_shipped_one_with_cluster_names() -> None:
    shipped = yaml.safe_load((ROOT / "deploy" / "vmagent" / "scrape.yml").read_text())
    ours = yaml.safe_load(doc("vmagent-configmap.yaml")["data"]["scrape.yml"])
    job = {j["job_name"]: j for j in ours["scrape_configs"]}["sensors-http"]
    want = {j["job_name"]: j for j in shipped["scrape_configs"]}["sensors-http"]
    svc = doc("../kubernetes/service.yaml")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{svc['spec']['ports'][0]['port']}"
    want["http_sd_configs"] = [{"url": f"http://{host}/targets"}]
    assert job == want


def test_cluster_membership_follows_the_statefulset() -> None:
    sts = doc("vmagent-statefulset.yaml")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    a = args(c)
    assert int(a["promscrape.cluster.membersCount"]) == sts["spec"]["replicas"]
    assert 1 <= int(a["promscrape.cluster.replicationFactor"]) <= sts["spec"]["replicas"]
    # vmagent takes the number from the pod name's suffix (vmagent-2 -> 2).
    assert a["promscrape.cluster.memberNum"] == "$(POD_NAME)"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]} == {"POD_NAME": "metadata.name"}
    assert sts["spec"]["serviceName"] == doc("vmagent-service.yaml")["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert a["promscrape.config"].startswith(mounts["config"] + "/")
    assert a["remoteWrite.tmpDataPath"] == mounts["buffer"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_remote_write_reaches_victoria_metrics_with_dedup_at_the_scrape_interval() -> None:
    (c,) = doc("vmagent-statefulset.yaml")["spec"]["template"]["spec"]["containers"]
    svc = doc("victoria-metrics-service.yaml")
    assert args(c)["remoteWrite.url"] == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/api/v1/write"
    vm = doc("victoria-metrics-statefulset.yaml")
    (vmc,) = vm["spec"]["template"]["spec"]["containers"]
    assert svc["spec"]["selector"].items() <= vm["spec"]["template"]["metadata"]["labels"].items()
    ours = yaml.safe_load(doc("vmagent-configmap.yaml")["data"]["scrape.yml"])
    interval = {j["job_name"]: j for j in ours["scrape_configs"]}["sensors-http"]["scrape_interval"]
    assert args(vmc)["dedup.minScrapeInterval"] == interval


def test_network_policy_lets_the_members_read_targets() -> None:
    np = doc("networkpolicy-vmagent.yaml")["spec"]
    labels = doc("vmagent-statefulset.yaml")["spec"]["template"]["metadata"]["labels"]
    (rule,) = np["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for p in rule["ports"]] == [8080]
    base = yaml.safe_load((BASE / "deployment.yaml").read_text())
    assert np["podSelector"]["matchLabels"].items() <= base["spec"]["template"]["metadata"]["labels"].items()


def test_the_docs_name_the_overlay() -> None:
    text = (ROOT / "docs" / "scaling.md").read_text()
    assert re.search(r"deploy/kubernetes-scale", text)
