"""docs/RELIABILITY.md's generated blocks are exactly what its figure file gives (`make reliability-report`)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_report", REPO / "bench" / "reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_matches_the_figures() -> None:
    tool = _tool()
    text = tool.DOC.read_text()
    assert tool.update(text, tool.render(json.loads(tool.FIGURES.read_text()))) == text, \
        "docs/RELIABILITY.md differs from docs/reliability-figures.json: run python bench/reliability.py"


def test_every_figure_names_its_commit_and_command() -> None:
    for key, figures in json.loads(_tool().FIGURES.read_text()).items():
        assert re.match(r"[0-9a-f]{7,}", figures["commit"]), key
        assert figures["command"] and figures["date"], key


def test_a_changed_figure_or_a_missing_block_is_caught() -> None:
    tool = _tool()
    figures = json.loads(tool.FIGURES.read_text())
    text = tool.DOC.read_text()
    figures["crash"]["reads"] += 1
    assert tool.update(text, tool.render(figures)) != text
    with pytest.raises(ValueError, match="generated:hostile"):
        tool.update(text.replace("<!-- /generated:hostile -->", ""), tool.render(figures))
