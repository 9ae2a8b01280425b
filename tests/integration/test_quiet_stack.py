"""A healthy local stack raises no alert, not even a pending one.

The stack runs as `make run` does (shipped rules and `for:`, scrape every
5 s, UPDATE_INTERVAL 2 s, 100 sensors), except that rules are evaluated every
second instead of every 5 s: the gap between a scrape and the next evaluation
is fixed for one Prometheus run (both are phased by hashes), so evaluating
every second tries every gap `make run` can meet, instead of the one this run
happened to get. Once every sensor is up, Prometheus' alert state is polled
for six scrape intervals (30 evaluations), and at the end the `ALERTS` series
over that window is read back, so an alert that went pending between two
polls is seen too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.config import Ports, StackConfig, _seconds
from localstack.net import http_get, wait_until
from localstack.stack import Stack

SCRAPES = 6


@pytest.fixture
def healthy(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(StackConfig(tmp_path / "data", Ports.ephemeral(), evaluation_interval="1s"))  # else make run's
    stack.start()
    try:
        began = time.time()
        wait_until(lambda: stack.all_sensors_up(100, began), 120, "100 sensors up", 0.5)
        # Prometheus hands out even static targets after its 5 s discovery throttle:
        # the window starts once sensor-sd itself has been scraped.
        wait_until(lambda: stack.prometheus_query('up{job="sensor-sd"} == 1'), 60, "sensor-sd scraped", 0.5)
        yield stack
    finally:
        stack.stop()


def test_healthy_stack_raises_no_alert_over_six_scrapes(healthy: Stack) -> None:
    interval = _seconds(healthy.cfg.scrape_interval)
    start = time.time() + _seconds(healthy.cfg.evaluation_interval)  # from the next evaluation on
    seen: list[str] = []
    while time.time() < start + SCRAPES * interval:
        status, body = http_get(healthy.url("prometheus", "/api/v1/alerts"))
        assert status == 200
        seen += [f"{a['labels']['alertname']} {a['state']} {a['labels']}" for a in json.loads(body)["data"]["alerts"]]
        time.sleep(0.5)  # the polling period of the observation window, not a readiness wait
    window = int(time.time() - start) + 1
    over_window = healthy.prometheus_query(f"count_over_time(ALERTS[{window}s])")
    assert seen == [] and over_window == [], (sorted(set(seen)), over_window)
    assert healthy.sensors_up(time.time() - 2 * interval) == 100  # the stack was healthy throughout
