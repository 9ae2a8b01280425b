"""The benchmark scripts still run: `bench/run.py --smoke` exercises every code path at tiny sizes.

No timing is asserted (figures come from `make bench` only); this only keeps bench/ from rotting.
It starts the real Prometheus binary (propagation), hence the integration mark.
"""

from __future__ import annotations

import re
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
    # The seed design is the repository's own (bench/seed_design.py): its columns are filled on any clone.
    wall, rss = _sync_rows(out.stdout)
    assert wall["seed design (whole process)"] != "—" and float(wall["seed design (whole process)"].split(" / ")[1]) > 0
    assert wall["seed ÷ daemon"].endswith("×"), wall
    assert float(rss["seed design"]) > 0, rss


def _sync_rows(stdout: str) -> tuple[dict[str, str], dict[str, str]]:
    """The 100-host row of the two sync-cost tables as {column: cell} (columns are 2+ spaces apart)."""
    rows = []
    lines = stdout.splitlines()
    for title in ("== Sync cost: wall time", "== Sync cost: peak RSS"):
        at = next(i for i, line in enumerate(lines) if line.startswith(title))
        header, row = lines[at + 1], lines[at + 3]
        starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]
        cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        rows.append(dict(zip([header[a:b].strip() for a, b in zip(starts, [*starts[1:], None])], cells)))
    return rows[0], rows[1]
