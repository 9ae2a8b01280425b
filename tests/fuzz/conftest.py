"""Fuzz tests: hypothesis properties of the parsers.

Tests marked `slow` (the 10k-example copies, `make fuzz`) run only when selected
(`-m slow`) or with SENSOR_SD_SLOW=1, so `make test` stays short.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("SENSOR_SD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: select with -m slow or SENSOR_SD_SLOW=1")
    for item in items:
        if "slow" in item.keywords and "/fuzz/" in str(item.fspath):
            item.add_marker(skip)
