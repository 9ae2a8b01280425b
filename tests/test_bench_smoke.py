"""The benchmark scripts still run: `bench/run.py --smoke` exercises every code path at tiny sizes.

No timing is asserted (figures come from `make bench` only); this only keeps bench/ from rotting.
It starts the real Prometheus binary (propagation), hence the integration mark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_bench_smoke_runs_every_section(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--doc", str(doc),
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for section in ("Sync cost", "Where the time goes", "Idle cost", "Goals"):
        assert section in out.stdout, out.stdout[-2000:]
    assert not doc.exists()  # --smoke never writes the benchmark doc
