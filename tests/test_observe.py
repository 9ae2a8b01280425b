"""The observer alone: poll results in, the metric contract and one log line per event out (no network)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from sensor_sd.sources import Source
from sensor_sd.guard import Decision
from sensor_sd.metrics import Metrics
from sensor_sd.observe import OUTAGE_REMINDER_SECONDS, Observer
from sensor_sd.poller import PollResult, Result
from tests.conftest import Records

SOURCE = Source("inv", "http://user:secret@127.0.0.1:1/inventory")


def observer(now: list[float]) -> tuple[Observer, Metrics, Records]:
    logger = logging.getLogger("sensor_sd.test.observe")
    records = Records()
    logger.handlers[:] = [records]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    metrics = Metrics(CollectorRegistry())
    o = Observer(metrics, logger, confirmations=3, clock=lambda: now[0])
    o.track(SOURCE)
    return o, metrics, records


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_the_result_label_values_are_the_documented_ones_and_exported_from_the_start() -> None:
    assert [r.value for r in Result] == ["success", "unchanged", "error", "held"]
    _, metrics, _ = observer([0.0])
    for result in ("success", "unchanged", "error", "held"):
        assert metrics.registry.get_sample_value("sensor_sd_syncs_total", {"source": "inv", "result": result}) == 0


def test_a_dry_run_counts_no_sync_and_logs_none() -> None:
    o, metrics, records = observer([0.0])
    o.polled(PollResult("inv", Result.SUCCESS, 2, ("a:1", "b:1"), (), request=0.01, answered=5.0, dry_run=True))
    assert value(metrics, "sensor_sd_syncs_total", source="inv", result="success") == 0
    assert value(metrics, "sensor_sd_inventory_up", source="inv") == 1  # the inventory did answer
    assert [r.getMessage() for r in records.records] == []


def test_an_outage_is_one_line_a_reminder_per_period_a_new_reason_once_and_one_recovery() -> None:
    now = [1000.0]
    o, metrics, records = observer(now)
    step = OUTAGE_REMINDER_SECONDS / 10
    for failures in range(1, 22):  # 20 steps: two reminder periods
        reason = "timeout" if failures == 15 else "http_status"
        o.polled(PollResult("inv", Result.ERROR, 4, error=f"{reason}: boom", reason=reason, previous=4,
                            request=0.1, failures=failures))
        now[0] += step
    o.polled(PollResult("inv", Result.UNCHANGED, 4, previous=4, request=0.1, answered=now[0]))
    lines = [r for r in records.records if r.getMessage() != "inventory synced"]
    # the start; a reminder 300 s later; the new reason (it restarts the reminder period); the recovery
    assert [(r.getMessage().split(",")[0], r.__dict__.get("failures")) for r in lines] == [
        ("inventory poll failed", 1), ("inventory still failing", 11), ("inventory still failing", 15),
        ("inventory recovered", 21)]
    assert all(r.__dict__["url"] == SOURCE.display_url and "secret" not in r.__dict__["url"] for r in lines)
    assert lines[0].__dict__["error"] == "boom" and lines[0].__dict__["kept"] == 4
    assert value(metrics, "sensor_sd_syncs_total", source="inv", result="error") == 21
    assert value(metrics, "sensor_sd_inventory_errors_total", source="inv", reason="timeout") == 1
    assert value(metrics, "sensor_sd_inventory_up", source="inv") == 1


def test_a_held_drop_sets_the_gauge_and_logs_what_it_holds_back() -> None:
    o, metrics, records = observer([0.0])
    held = Decision(False, 3, 1, 4, True, 0.0, 60.0)
    o.polled(PollResult("inv", Result.HELD, 4, (), ("a:1", "b:1", "c:1"), guard=held, previous=4, request=0.1,
                        answered=0.0))
    assert value(metrics, "sensor_sd_drop_guard_active", source="inv") == 1
    assert value(metrics, "sensor_sd_syncs_total", source="inv", result="held") == 1
    [line] = records.records
    assert line.getMessage() == "large drop held back by the drop guard"
    assert (line.__dict__["current"], line.__dict__["new"], line.__dict__["removed"]) == (4, 1, 3)
