"""Only the full benchmark plan writes the tracked docs/BENCHMARKS.md; the quick plan writes under bench/out/.

The scripts are copied into a temporary tree and run there with no section
selected (`--only none`), so each plan's report writer runs in seconds and
the real docs/ is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_plan(tree: Path, *plan: str) -> str:
    shutil.copytree(REPO / "bench", tree / "bench", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (tree / "docs").mkdir()
    out = subprocess.run([sys.executable, str(tree / "bench" / "run.py"), *plan, "--only", "none"],
                         capture_output=True, text=True, timeout=120, cwd=tree)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_quick_plan_writes_under_bench_out_only(tmp_path: Path) -> None:
    stdout = _run_plan(tmp_path, "--quick")
    assert list((tmp_path / "docs").iterdir()) == []
    report = tmp_path / "bench" / "out" / "BENCHMARKS-quick.md"
    assert "wrote bench/out/BENCHMARKS-quick.md" in stdout
    assert "(quick plan)" in report.read_text()


def test_full_plan_writes_docs(tmp_path: Path) -> None:
    stdout = _run_plan(tmp_path)
    assert "wrote docs/BENCHMARKS.md" in stdout
    doc = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "(full plan)" in doc
    assert "| commit measured | unknown (not a git checkout) |" in doc  # the temp tree is no checkout


def test_committed_benchmarks_name_the_commit_they_measured() -> None:
    """Figures belong to code: the tracked doc says which commit `make bench` measured."""
    doc = (REPO / "docs" / "BENCHMARKS.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| commit measured | ")]
    assert len(rows) == 1, "docs/BENCHMARKS.md names no measured commit: run `make bench`"
    commit = rows[0].split("|")[2].strip()
    assert commit[:7].isalnum() and "uncommitted" not in commit and "unknown" not in commit, rows[0]


def test_bench_out_is_ignored_by_git() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "check-ignore", "-q", "bench/out/BENCHMARKS-quick.md"], cwd=REPO)
    assert out.returncode == 0, "bench/out/ must be git-ignored: quick figures are not for the repository"
