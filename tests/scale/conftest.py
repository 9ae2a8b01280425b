"""Scale-out tests: many stores, and the real scraping engines (vmagent, Prometheus agent,
victoria-metrics, vmalert, Alertmanager) on loopback with ephemeral ports.

The parts are started through `sensor_sd.sim.engines` (shared with bench/scale.py);
every process is stopped by pid at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor_sd.sim.engines import Procs


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/scale/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()
