"""`bench/scale.py --smoke` still runs every section at tiny sizes (figures come from `make bench-scale` only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_scale_smoke_runs_every_section(tmp_path: Path) -> None:
    doc = tmp_path / "scaling.md"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--smoke", "--doc", str(doc),
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for section in ("sensor-sd over many stores", "Sensors per scraper", "Prometheus 2.42", "vmagent 1.79"):
        assert section in out.stdout, out.stdout[-2000:]
    assert not doc.exists()  # --smoke never writes the doc
