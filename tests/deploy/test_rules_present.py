"""Alerts describe the present: the promtool cases in present.rules.test.yml cover every alert.

promtool runs those cases (tests/deploy/test_artifacts.py runs every rule test
file); this checks that none is missing: a healthy case in which no alert goes
even pending, and for each alert a case where it fires and is gone one
evaluation after its cause went away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
PRESENT = RULES / "tests" / "present.rules.test.yml"


def _minutes(duration: str) -> float:
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    return float(duration[:-1]) * units[duration[-1]]


def _alerts() -> list[str]:
    return sorted(r["alert"] for f in RULES.glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"]
                  for r in g["rules"] if "alert" in r)


def _cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load(PRESENT.read_text())["tests"])


def test_a_healthy_case_watches_every_evaluation_for_any_alert() -> None:
    doc = yaml.safe_load(PRESENT.read_text())
    exprs = [(t["expr"], t["exp_samples"]) for c in doc["tests"] for t in c.get("promql_expr_test") or []]
    assert any(e.startswith("count_over_time(ALERTS[") and samples == [] for e, samples in exprs), exprs
    assert _minutes(doc["evaluation_interval"]) * 60 <= 1  # every phase of a 5 s scrape is tried


@pytest.mark.parametrize("alert", _alerts())
def test_alert_resolves_one_evaluation_after_recovery(alert: str) -> None:
    pairs = []
    for case in _cases():
        step = _minutes(case["interval"])
        times = {(_minutes(t["eval_time"]), bool(t["exp_alerts"])) for t in case.get("alert_rule_test") or []
                 if t["alertname"] == alert}
        pairs += [t for t, fires in times if fires and (t + step, False) in times]
    assert pairs, f"no case in {PRESENT.name} where {alert} fires and is gone at the next sample"
