"""`decode`, its raw-body fast path and the merge diff agree with their plain definitions."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

import pytest

from sensor_sd.decode import decode, validate, validate_body, validate_targets
from sensor_sd.errors import DecodeError
from sensor_sd.poller import diff

# Mostly hostname characters so the fast path is taken often; the rest makes it bail out.
names = st.text(alphabet=st.sampled_from("aB9_-.:\"\\é \n"), max_size=12)
hostnames = st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,15}", fullmatch=True)
entries = st.lists(st.one_of(hostnames, names, st.integers(-1000, 1000)), max_size=40)


def _bodies(values: list[object]) -> list[bytes]:
    return [orjson.dumps(values), json.dumps(values).encode(), json.dumps(values, indent=1).encode(),
            b" \n" + orjson.dumps(values) + b"\n"]


def _check(body: bytes, port: int = 9100) -> None:
    expected = validate(orjson.loads(body), port)
    box = [body]
    got = validate_body(box, port)
    if got is None:
        assert box == [body]  # handed back untouched for the full path
    else:
        assert box == []
        assert got == expected


@given(entries)
def test_body_fast_path_agrees_with_validate(values: list[object]) -> None:
    for body in _bodies(values):
        _check(body)


@given(st.lists(hostnames, min_size=1, max_size=40))
def test_body_fast_path_takes_bare_hostname_lists(values: list[str]) -> None:
    for body in _bodies(values)[:2]:
        expected = validate(values, 9100)
        box = [body]
        got = validate_body(box, 9100)
        if not expected.invalid and not any(v.endswith(".") for v in values):  # a trailing dot: rare, full path
            assert got == expected
        else:
            assert got is None or got == expected


def test_body_fast_path_edge_cases() -> None:
    for body in (b'[""]', b'["",""]', b'["a",""]', b'["","a"]', b'["a-"]', b'["-a"]', b'[".a"]', b'["a."]',
                 b'["a..b"]', b'["a.-b"]', b'["a-.b"]', b'["a","-b"]', b'["a-","b"]', b'["' + b"x" * 64 + b'"]',
                 b'["' + b"x" * 63 + b'"]', b'["' + b"a." * 127 + b'"]', b'["' + b"a." * 126 + b'a"]', b'["a", "b"]',
                 b'["a","b", "c"]', b'["a"]', b"[]", b'["a"', b'"a"]', b'["a\\u0041"]', b'["a","a"]'):
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            box = [body]
            assert validate_body(box, 9100) is None and box == [body]
            continue
        _check(body)


sorted_sets = st.lists(st.text(alphabet="abc:019", max_size=4), max_size=60).map(lambda v: tuple(sorted(set(v))))


@given(sorted_sets, sorted_sets)
def test_diff_matches_set_difference(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    assert diff(old, new) == (tuple(sorted(set(new) - set(old))), tuple(sorted(set(old) - set(new))))


def test_diff_across_blocks() -> None:
    old = tuple(sorted(f"sensor_{i}:9100" for i in range(20000)))
    new = tuple(sorted(set(old) - {old[5], old[4096], old[19999]} | {"sensor_x:9100", "a:1", "zz:1"}))
    assert diff(old, new) == (tuple(sorted(set(new) - set(old))), tuple(sorted(set(old) - set(new))))


ports = st.sampled_from(["9100", "80", "1", "65535", "0", "09", "65536", "", "x", "9" * 5000])
published = st.lists(st.one_of(st.tuples(st.one_of(hostnames, names), ports).map(":".join), names,
                               st.integers(0, 9)), max_size=40)


@given(published, st.sampled_from([9100, 1]))
def test_published_targets_fast_path_agrees_with_validate(values: list[object], port: int) -> None:
    assert validate_targets(values, port) == validate(values, port)
    same_port = [f"{v}:9100" for v in values if isinstance(v, str)]
    assert validate_targets(same_port, port) == validate(same_port, port)


@given(entries)
def test_decode_is_validate_of_the_parsed_body_and_empties_the_box(values: list[object]) -> None:
    for body in _bodies(values):
        box = [body]
        assert decode(box, 9100) == validate(orjson.loads(body), 9100)
        assert box == []  # the caller keeps no reference: the bytes go as soon as they are decoded


@pytest.mark.parametrize("body", [b"{}", b'"sensor_1"', b"null", b"[", b"\xff[]", b""])
def test_decode_refuses_a_body_that_is_not_a_json_list(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode([body], 9100)
