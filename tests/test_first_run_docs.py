"""README's "First run" section tells a new user what the two commands need and install, and its sizes hold.

The figures are compared with what bench/first_run.py measures now (the
virtualenv this test runs in; apt's resolver for the Debian packages), within
a margin that absorbs version bumps but not a wrong order of magnitude.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
MARGIN = 0.35


def _first_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("first_run", REPO / "bench" / "first_run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["first_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _section() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^### First run\n(.*?)(?=^#)", text, re.M | re.S)
    assert match, "README.md has no '### First run' section"
    return match.group(1)


def _mb(pattern: str) -> float:
    match = re.search(pattern, _section())
    assert match, f"README's first-run section does not state {pattern!r}"
    return float(match.group(1).replace(",", ""))


def _close(stated: float, measured: float) -> bool:
    return abs(stated - measured) <= MARGIN * measured


def test_first_run_section_says_what_is_needed_and_where_the_figures_come_from() -> None:
    section = _section()
    for needed in ("root or sudo", "python3-venv", "`make`", "chromium", "bench/first_run.py", "make test-quick"):
        assert needed in section, needed
    for package in _first_run().SYSTEM_DEPS:
        assert f"`{package}`" in (REPO / "README.md").read_text(), package


def test_venv_size_matches_the_measurement() -> None:
    stated = _mb(r"`\.venv` \| ([\d,]+) MB on disk")
    measured = _first_run().du_bytes(Path(sys.prefix)) / 1e6
    assert _close(stated, measured), f"README says {stated:.0f} MB, this virtualenv is {measured:.0f} MB"


@pytest.mark.integration  # asks the system's apt (~20 s), like the other tests of real parts
def test_debian_download_size_matches_apt() -> None:
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get: not a Debian/Ubuntu machine")
    sets = _first_run().apt_sets()
    for pattern, key in ((r"\*\*([\d,]+) MB to download\*\*", "all"), (r"`chromium`[^|]*? ([\d,]+) MB /", "chromium")):
        stated, measured = _mb(pattern), sets[key].download_bytes / 1e6
        assert _close(stated, measured), f"README says {stated:.0f} MB for {key}, apt says {measured:.0f} MB"
