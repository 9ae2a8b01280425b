"""sensor_sd.checks: the one set of value checks behind the settings, the web config, the sources file and the
simulators, so each speaks the same grammar and words its errors the same way."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor_sd import checks, config
from sensor_sd.errors import ConfigError
from sensor_sd.sim._common import AdminError, count_arg, get_int, get_number, port_arg, seconds_arg
from sensor_sd.web.config import load as load_web_config


@pytest.mark.parametrize("text", ["1_000", "١٢", "１２", "1e3", " 12", "12\n", "+1", "0x10", "inf", "nan",
                                  "9" * 5000])
def test_the_simulators_flags_speak_the_grammar_of_the_variables(text: str) -> None:
    """What a variable refuses (config's number grammar), a simulator's flag refuses too, with the same words."""
    with pytest.raises(ConfigError) as refused:
        config.load({}, {"METRICS_PORT": text})
    for parse in (count_arg, port_arg, seconds_arg(allow_zero=True)):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse(text)
        assert str(info.value).startswith("expected ") and "\n" not in str(info.value)
    assert "an integer from 1 to 65535" in str(refused.value)


def test_the_simulators_flags_keep_their_ranges() -> None:
    assert (count_arg("0"), port_arg("65535"), seconds_arg(allow_zero=True)("0"), seconds_arg(allow_zero=False)(".5")) \
        == (0, 65535, 0.0, 0.5)
    for parse, text in ((port_arg, "65536"), (seconds_arg(allow_zero=False), "0"), (count_arg, "-1")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


DUPLICATE = "a: 1\na: 2\n"


def test_one_strict_yaml_reading_for_the_web_config_and_the_sources_file(tmp_path: Path) -> None:
    """The same duplicate key is refused with the same words, line and column by both files."""
    (tmp_path / "web.yml").write_text(DUPLICATE)
    (tmp_path / "sources.yml").write_text(DUPLICATE)
    with pytest.raises(ValueError) as web:
        load_web_config(tmp_path / "web.yml")
    with pytest.raises(ConfigError) as sources:
        config.load({}, {"SOURCES_FILE": str(tmp_path / "sources.yml")})
    expected = "valid YAML at line 2, column 1 (duplicate key 'a')"
    assert str(web.value) == expected
    assert str(sources.value).endswith(f": {expected}")


def test_a_huge_interval_in_a_sources_file_is_a_config_error(tmp_path: Path) -> None:
    """A 400-digit YAML integer overflowed float() (a traceback, not exit 2); the shared number check refuses it."""
    path = tmp_path / "sources.yml"
    path.write_text(f"- name: a\n  url: http://127.0.0.1:1/inv\n  interval: {'9' * 400}\n")
    with pytest.raises(ConfigError) as info:
        config.load({}, {"SOURCES_FILE": str(path)})
    assert "interval:" in str(info.value) and "is not a number of seconds" in str(info.value)
    assert "\n" not in str(info.value)


def test_one_type_name_for_every_document() -> None:
    """The simulators' admin errors name a JSON value's type as the web config names a YAML value's."""
    with pytest.raises(AdminError) as admin:
        get_int({"code": "500"}, "code", 500, 400, 599)
    assert str(admin.value) == "'code' must be an integer, got a string"
    with pytest.raises(AdminError, match="got a boolean"):
        get_number({"seconds": True}, "seconds", None, 0, 10)
    assert [checks.type_name(v) for v in ({}, [], "", True, 1, 1.0, None)] == [
        "a mapping", "a list", "a string", "a boolean", "an integer", "a number", "empty"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=8)


CHECKS: tuple[checks.Check, ...] = (
    lambda v, w: checks.integer(v, w, 0, 10), lambda v, w: checks.number(v, w, 0, 10), checks.string,
    checks.string_list, checks.boolean, checks.one_of("a", "b"), checks.mapping,
    lambda v, w: checks.fields(v, w, {"x": checks.string}))


@given(json_values)
def test_every_check_answers_any_decoded_value_with_a_value_or_one_line(value: Any) -> None:
    for check in CHECKS:
        try:
            result = check(value, "k")
        except ValueError as exc:
            assert str(exc).startswith("k") and "\n" not in str(exc)
        else:
            if isinstance(result, float):
                assert math.isfinite(result) and 0 <= result <= 10
