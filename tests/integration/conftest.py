"""Integration tests start the real Prometheus / Alertmanager binaries (Debian packages).

`http_sd_env` is one stack shared by the http_sd, shard, TLS and browser tests, so they
wait for one Prometheus start and one discovery round instead of one each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from localstack.config import Ports, StackConfig
from localstack.net import LOOPBACK, StackError, free_port, wait_until
from localstack.procs import Proc, sensor_sd_argv, spawn
from localstack.stack import Stack


# --- one stack shared by the http_sd, shard, TLS and browser tests -------------------------

SHARD_COUNTS = (2, 3)
SD_USER, SD_PASSWORD = "prometheus", "correct horse battery staple"
# Addresses of every form hashmod sees: bare names get :9100, others keep their port.
ODD_HOSTS = ["10.0.0.5", "host.example.com:9200", "[2001:db8::1]:9100", "[2001:db8::2]", "a-b.c_d.example",
             "UPPER_case", "x:1", "sensor_7.store-42.example:65535"]


class _HttpSdStack(Stack):
    """The stack with a Prometheus config made for these tests: file_sd and http_sd jobs side by side."""

    def __init__(self, cfg: StackConfig, tls_port: int, ca_file: Path) -> None:
        super().__init__(cfg)
        self.tls_port = tls_port
        self.ca_file = ca_file

    def write_prometheus_config(self) -> Path:
        import yaml

        sd = f"http://{LOOPBACK}:{self.cfg.ports.sd}/targets"
        tls = f"https://{LOOPBACK}:{self.tls_port}/targets"

        def http_job(name: str, url: str, **extra: Any) -> dict[str, Any]:
            return {"job_name": name, "http_sd_configs": [{"url": url, "refresh_interval": "5s", **extra}]}

        jobs = [{"job_name": "sensors-file",
                 "file_sd_configs": [{"files": [str(self.cfg.targets_file)], "refresh_interval": "5s"}]},
                http_job("sensors-http", sd)]
        for total in SHARD_COUNTS:
            for index in range(total):
                jobs.append(http_job(f"sd-shard-{total}-{index}", f"{sd}?shard={index}&shards={total}"))
                job = http_job(f"hashmod-{total}-{index}", sd)
                job["relabel_configs"] = [
                    {"source_labels": ["__address__"], "modulus": total, "target_label": "__tmp_shard",
                     "action": "hashmod"},
                    {"source_labels": ["__tmp_shard"], "regex": str(index), "action": "keep"}]
                jobs.append(job)
        tls_config = {"ca_file": str(self.ca_file)}
        jobs.append(http_job("sensors-tls", tls, tls_config=tls_config,
                             basic_auth={"username": SD_USER, "password": SD_PASSWORD}))
        jobs.append(http_job("sensors-tls-badpass", tls, tls_config=tls_config,
                             basic_auth={"username": SD_USER, "password": "wrong"}))
        # Discovery is what is tested: scrape rarely so 1000+ unreachable targets cost nothing.
        doc = {"global": {"scrape_interval": "10m", "scrape_timeout": "1s"}, "scrape_configs": jobs}
        path = self.cfg.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


@dataclass
class HttpSdEnv:
    """inventory + sensor-sd (plain) + sensor-sd (TLS + basic auth) + one Prometheus with every job."""

    stack: _HttpSdStack
    tls_port: int
    ca_file: Path
    web_config: Path
    user: str = SD_USER
    password: str = SD_PASSWORD

    def sd(self, path: str) -> str:
        return self.stack.url("sd", path)

    def tls(self, path: str) -> str:
        return f"https://{LOOPBACK}:{self.tls_port}{path}"

    def inventory_admin(self, method: str, path: str, body: Any) -> Any:
        r = requests.request(method, self.stack.url("inventory", path), json=body, timeout=10)
        assert r.ok, r.text
        return r.json()

    def sd_targets(self, query: str = "") -> set[str]:
        r = requests.get(self.sd(f"/targets{query}"), timeout=10)
        assert r.status_code == 200, r.text
        return {t for g in r.json() for t in g["targets"]}

    def prometheus_targets(self, job: str) -> set[str]:
        """`__address__` of every active target of `job`, as Prometheus discovered it."""
        r = requests.get(self.stack.url("prometheus", "/api/v1/targets?state=active"), timeout=10)
        r.raise_for_status()
        return {t["discoveredLabels"]["__address__"] for t in r.json()["data"]["activeTargets"]
                if t["labels"].get("job") == job}

    def prometheus_labels(self, job: str) -> list[dict[str, str]]:
        r = requests.get(self.stack.url("prometheus", "/api/v1/targets?state=active"), timeout=10)
        return [t["discoveredLabels"] for t in r.json()["data"]["activeTargets"] if t["labels"].get("job") == job]

    def refresh(self) -> dict[str, Any]:
        r = requests.post(self.sd("/-/refresh"), timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(self, predicate: Any, what: str, timeout: float = 40.0) -> Any:
        """Prometheus applies SD changes at most every 5 s, after a 5 s refresh: allow a few rounds."""
        return wait_until(predicate, timeout, what, interval=0.25)


@pytest.fixture(scope="session")
def http_sd_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpSdEnv]:
    import trustme

    workdir = tmp_path_factory.mktemp("http_sd")
    certs = workdir / "certs"
    certs.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert(LOOPBACK, "localhost")
    leaf.cert_chain_pems[0].write_to_path(certs / "server.crt")
    leaf.private_key_pem.write_to_path(certs / "server.key")
    ca.cert_pem.write_to_path(certs / "ca.crt")
    import bcrypt

    hashed = bcrypt.hashpw(SD_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web_config = certs / "web-config.yml"  # relative paths: resolved against this file's directory
    web_config.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                          f"basic_auth_users:\n  {SD_USER}: {hashed}\n"
                          "sensor_sd:\n  unauthenticated_paths: [/-/healthy]\n")
    tls_port = free_port()
    cfg = StackConfig(workdir=workdir, ports=Ports.ephemeral(), sensors=120, update_interval=1.0)
    stack = _HttpSdStack(cfg, tls_port, certs / "ca.crt")
    env = HttpSdEnv(stack, tls_port, certs / "ca.crt", web_config)
    try:
        stack.start(["inventory"])
        env.inventory_admin("PUT", "/admin/sensors", [f"sensor_{i}" for i in range(120)] + ODD_HOSTS)
        stack.start(["sd"])
        for attempt in range(3):  # an ephemeral port can be taken by someone else before we bind it
            tls_env = {**stack.sd_env(), "LISTEN_ADDRESS": f"{LOOPBACK}:{env.tls_port}", "TARGETS_FILE": "",
                       "WEB_CONFIG_FILE": str(web_config)}
            proc = spawn(f"sensor-sd-tls{attempt}", sensor_sd_argv("run"), stack.logdir, tls_env)
            stack.procs[proc.name] = proc  # stopped with the rest of the stack

            def tls_up(proc: Proc = proc) -> bool:
                if not proc.alive():
                    raise StackError(f"sensor-sd (TLS) exited:\n{proc.tail()}")
                return requests.get(env.tls("/-/healthy"), verify=str(env.ca_file), timeout=2).status_code == 200

            try:
                wait_until(tls_up, 30, "sensor-sd with TLS")
                break
            except StackError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                env.tls_port = stack.tls_port = free_port()
        wait_until(lambda: requests.get(env.sd("/-/ready"), timeout=2).status_code == 200, 30, "sensor-sd ready")
        stack.start(["prometheus"])
        yield env
    finally:
        stack.stop()
