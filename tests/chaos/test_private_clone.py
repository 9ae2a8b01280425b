"""The non-root disk-fault tests pass in a clone that other users cannot enter (say, in root's 0700 home).

A copy of this working tree (tracked and untracked files, not the ignored
ones: what a clone of it would hold) goes into a fresh 0700 directory, gets
its own virtualenv through `make venv` (from the package registry, about a
minute), and runs tests/chaos/test_disk_faults.py there. Slow: select with
`-m slow`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.mark.slow
def test_disk_fault_tests_pass_in_a_clone_inside_a_0700_directory(tmp_path: Path) -> None:
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs a git checkout to know which files a clone holds")
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    clone = private / "sensor-sd"
    for name in _tree_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clone / name)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    venv = subprocess.run(["make", "venv"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert venv.returncode == 0, venv.stdout[-2000:] + venv.stderr[-2000:]
    run = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-rs", "tests/chaos/test_disk_faults.py"], cwd=clone, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and (os.geteuid() != 0 or "skipped" not in run.stdout), run.stdout[-2000:]
