"""A 90-second soak in `make test`: memory, descriptors and threads do not grow (the long one is `make soak`).

The same run as `tests/chaos/soak.py` (churn on every 0.1 s poll, a fault every
1-3 s, a reader parsing the file continuously) with its own limits: RSS grows
less than 10 MB after warm-up, open fds end within 4 of the warm-up count,
threads stay at most 64, nothing lost, no torn read, convergence to the final
inventory and a clean SIGTERM exit. The figures are printed, not written to
the docs (the long soak's block is `make soak`'s).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

MINUTES = 1.5


def _soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sensor_sd_soak", Path(__file__).with_name("soak.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_short_soak_does_not_grow() -> None:
    soak = _soak()
    result, ok = soak.run(MINUTES, seed=1)
    shown = {k: v for k, v in result.items() if k != "rss_mb_series"}
    print(json.dumps(shown, indent=1))
    assert result["faults_total"] > 0 and result["inventory_changes"] > 100, shown  # the run did stress it
    assert result["rss_growth_mb"] < soak.MAX_RSS_GROWTH_MB, shown
    assert result["fds"][2] <= result["fds_warm"] + 4 and result["threads"][1] <= 64, shown
    assert ok, shown
