"""A real Prometheus discovers the same targets through http_sd as through file_sd, before and after churn."""

from __future__ import annotations

import shutil
import subprocess

import requests

ODD = {"10.0.0.5:9100", "host.example.com:9200", "[2001:db8::1]:9100", "[2001:db8::2]:9100"}


def _agree(env, expected: set[str]) -> bool:  # type: ignore[no-untyped-def]
    return env.prometheus_targets("sensors-http") == expected and env.prometheus_targets("sensors-file") == expected


def test_http_sd_and_file_sd_give_prometheus_the_same_targets(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    expected = env.sd_targets()
    assert len(expected) == 128 and ODD <= expected
    env.wait(lambda: _agree(env, expected), "Prometheus http_sd and file_sd jobs to match /targets")
    for labels in env.prometheus_labels("sensors-http"):
        assert labels["source"] == "inventory" and labels["__metrics_path__"] == "/metrics"
    http_labels = sorted(sorted(lbl.items()) for lbl in env.prometheus_labels("sensors-http"))
    file_labels = sorted(sorted(lbl.items()) for lbl in env.prometheus_labels("sensors-file"))
    strip = lambda labels: [[kv for kv in lbl if kv[0] != "job" and not kv[0].startswith("__meta_")] for lbl in labels]  # noqa: E731
    assert strip(http_labels) == strip(file_labels)


def test_after_churn_targets_and_prometheus_agree(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    before = env.sd_targets()
    env.inventory_admin("POST", "/admin/sensors/add", {"names": ["churn_new_1", "churn_new_2", "churn_new_3"]})
    env.inventory_admin("POST", "/admin/sensors/remove", {"names": ["sensor_1", "sensor_2"]})
    expected = (before | {"churn_new_1:9100", "churn_new_2:9100", "churn_new_3:9100"}) - {"sensor_1:9100",
                                                                                           "sensor_2:9100"}
    # UPDATE_INTERVAL is 1 s: the poll loop, not a refresh, must pick the change up.
    env.wait(lambda: env.sd_targets() == expected, "sensor-sd to poll the churned inventory", timeout=10)
    env.wait(lambda: _agree(env, expected), "Prometheus to follow the churn")
    assert env.sd_targets() == expected


def test_promtool_check_metrics(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed with prometheus (make test installs it)"
    body = requests.get(http_sd_env.sd("/metrics"), timeout=10).content
    for name in ("sensor_sd_syncs_total", "sensor_sd_inventory_request_duration_seconds_bucket",
                 "sensor_sd_targets", "sensor_sd_targets_added_total", "sensor_sd_targets_removed_total",
                 "sensor_sd_last_success_timestamp_seconds", "sensor_sd_inventory_up",
                 "sensor_sd_drop_guard_active", "sensor_sd_build_info"):
        assert f"\n{name}{{".encode() in body or f"\n{name} ".encode() in body, name
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", (proc.stdout + proc.stderr).decode()
