"""POST /-/refresh: with a 300 s interval, an inventory change is on /targets when the POST returns."""

from __future__ import annotations

import requests

from localstack.net import wait_until


def _targets(url: str) -> set[str]:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    return {t for g in r.json() for t in g["targets"]}


def test_refresh_publishes_before_it_answers(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(sensors=50, update_interval=300.0)
    stack.start(["inventory", "sd"])
    wait_until(lambda: requests.get(stack.url("sd", "/-/ready"), timeout=2).status_code == 200, 20, "sensor-sd ready")
    before = _targets(stack.url("sd", "/targets"))
    assert len(before) == 50
    r = requests.post(stack.url("inventory", "/admin/sensors/add"), json={"names": ["fresh_1", "fresh_2"]}, timeout=5)
    assert r.ok
    r = requests.post(stack.url("inventory", "/admin/sensors/remove"), json={"names": ["sensor_0"]}, timeout=5)
    assert r.ok
    # Nothing polls for 300 s: without the refresh the change would stay invisible.
    assert _targets(stack.url("sd", "/targets")) == before

    answer = requests.post(stack.url("sd", "/-/refresh"), timeout=10)
    assert answer.status_code == 200
    summary = answer.json()
    assert summary["status"] == "success" and summary["targets"] == 51
    assert summary["sources"] == [{"source": "inventory", "result": "success", "targets": 51, "added": 2,
                                   "removed": 1}]
    expected = (before | {"fresh_1:9100", "fresh_2:9100"}) - {"sensor_0:9100"}
    assert _targets(stack.url("sd", "/targets")) == expected
    # file_sd was published by the same snapshot before the answer, byte for byte.
    assert stack.cfg.targets_file.read_bytes() == requests.get(stack.url("sd", "/targets"), timeout=5).content
    page = requests.get(stack.url("sd", "/"), timeout=5).text
    assert "fresh_1:9100" in page and "sensor_0:9100" in page

    # A refresh with nothing new is still a 200, and GET is not how to ask for one.
    assert requests.post(stack.url("sd", "/-/refresh"), timeout=10).json()["sources"][0]["result"] == "unchanged"
    assert requests.get(stack.url("sd", "/-/refresh"), timeout=5).status_code == 405
