"""Fuzz the inventory body parser and the entry validation against an independent oracle.

Properties, for any input:

* `decode.parse_body(bytes)` returns a list or raises `DecodeError`, nothing else;
* `decode.validate(entries)` never raises; the published targets are exactly
  the ones the oracle below accepts (written from the contract, SPEC §4, not
  from the implementation), sorted, deduplicated; every other entry is counted
  under one of the known reasons;
* the rendered snapshot parses back as file_sd with the same targets.

The unmarked tests run in `make test` with the `default` profile (200
examples); the `slow` copies run in `make fuzz` with `--hypothesis-profile=long`
(10k examples each).
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sensor_sd.errors import DecodeError
from sensor_sd.decode import REASONS, parse_body, validate
from sensor_sd.targets import Snapshot, TargetGroup, parse_file

PORT = 9100

# --- the oracle ----------------------------------------------------------------
# A target is host[:port]. host: dot-separated labels of ASCII letters, digits,
# '_' and '-', 1-63 chars, not starting or ending with '-', optionally one
# trailing dot, at most 253 chars without that dot and the port; or a
# bracketed IPv6 address without a zone. port: decimal 1-65535 written without
# leading zeros. Nothing else: no whitespace, scheme, userinfo, path, query.
# Published in one canonical form (SPEC §7): the host in lower case without
# the trailing dot, IPv6 in RFC 5952 form, always with a port.

_ORACLE_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?", re.ASCII)


def _oracle_host(host: str) -> str | None:
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    ok = bool(host) and len(host) <= 253 and all(len(lb) <= 63 and _ORACLE_LABEL.fullmatch(lb) for lb in labels)
    return host.lower() if ok else None


def _oracle_port(port: str) -> bool:
    return port.isascii() and port.isdigit() and str(int(port)) == port and 1 <= int(port) <= 65535


def rfc5952(addr: ipaddress.IPv6Address) -> str:
    """RFC 5952 text written from the RFC, not with the library's own formatting."""
    words = [int(addr.packed[i:i + 2].hex(), 16) for i in range(0, 16, 2)]
    if words[:6] == [0, 0, 0, 0, 0, 0xFFFF]:  # §5: IPv4-mapped addresses keep the dotted quad
        return "::ffff:" + ".".join(str(b) for b in addr.packed[12:])
    best, best_len, i = -1, 1, 0  # §4.2.2: a single zero field is never compressed
    while i < 8:
        if words[i] == 0:
            j = i
            while j < 8 and words[j] == 0:
                j += 1
            if j - i > best_len:  # §4.2.3: the longest run, the first one on a tie
                best, best_len = i, j - i
            i = j
        else:
            i += 1
    hexes = [f"{w:x}" for w in words]  # §4.1 no leading zeros, §4.3 lower case
    if best < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best]) + "::" + ":".join(hexes[best + best_len:])


def oracle(entry: object) -> str | None:
    """The target `entry` publishes as, or None when it must be dropped."""
    if not isinstance(entry, str) or not entry:
        return None
    if any(c in "@/?#\\" or c.isspace() or unicodedata.category(c)[0] in "CZ" for c in entry):
        return None  # whitespace, control and format characters, userinfo, scheme or path
    if entry.startswith("["):
        addr, sep, rest = entry[1:].partition("]")
        if not sep or "%" in addr:
            return None
        try:
            text = rfc5952(ipaddress.IPv6Address(addr))
        except ValueError:
            return None
        if rest == "":
            return f"[{text}]:{PORT}"
        return f"[{text}]{rest}" if rest.startswith(":") and _oracle_port(rest[1:]) else None
    host, sep, port = entry.rpartition(":")
    if not sep:
        canonical = _oracle_host(entry)
        return None if canonical is None else f"{canonical}:{PORT}"
    canonical = _oracle_host(host)
    return f"{canonical}:{port}" if canonical is not None and _oracle_port(port) else None


def check_validated(entries: list[Any]) -> None:
    result = validate(entries, PORT)
    expected = {t for t in map(oracle, entries) if t is not None}
    assert set(result.targets) == expected, (sorted(set(result.targets) ^ expected)[:5])
    assert list(result.targets) == sorted(set(result.targets)), "not sorted and deduplicated"
    rejected = sum(1 for e in entries if oracle(e) is None)
    assert sum(result.invalid.values()) == rejected
    assert set(result.invalid) <= set(REASONS)
    assert len(result.examples) == min(10, rejected)
    for reason, text in result.examples:
        assert reason in REASONS and isinstance(text, str) and len(text) <= 80
    # The published bytes parse back (file_sd) to the same targets.
    snap = Snapshot.build([TargetGroup("inv", result.targets, (("source", "inv"),))])
    back = parse_file(snap.body)
    assert [t for g in back for t in g.targets] == list(result.targets)
    for target in result.targets:
        assert oracle(target) == target  # published targets are valid entries themselves


# --- strategies ------------------------------------------------------------------

_label = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,20}[A-Za-z0-9_])?", fullmatch=True)
hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join).flatmap(
    lambda h: st.sampled_from([h, h.upper(), h.lower(), h + "."]))
ports = st.one_of(st.integers(1, 65535).map(str), st.sampled_from(["0", "65536", "99999", "09100", "", "-1", "1e3",
                                                                 "٩١٠٠", "9100 ", "+80"]))
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hostile_chars = st.sampled_from(list(" \t\n\r\x00\x7f\x85\u00a0\u200b\u2028\ufeff/?#@:[]%\\.-_é中😀"))


def _mutate(draw: Callable[..., Any], text: str) -> str:
    pos = draw(st.integers(0, len(text)))
    return text[:pos] + draw(hostile_chars) + text[pos:]


@st.composite
def entries(draw: Callable[..., Any]) -> object:
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return draw(hostnames)
    if kind == 3:
        return f"{draw(hostnames)}:{draw(ports)}"
    if kind == 4:
        addr = draw(ipv6)
        return draw(st.sampled_from([addr, f"{addr}:{draw(ports)}", addr[1:-1], addr + "x", addr[:-1], addr.upper(),
                                     addr[:-1] + "%eth0]", addr[:-1] + "%25" + draw(_label) + "]"]))
    if kind == 5:
        return _mutate(draw, draw(hostnames))
    if kind == 6:
        return draw(st.sampled_from(["http://", "https://", "u@", "u:p@", ""])) + draw(hostnames) + \
            draw(st.sampled_from(["", "/metrics", ":9100/x", "?a=1", "#f", "."]))
    if kind == 7:
        return draw(st.text(max_size=30))
    if kind == 8:
        if draw(st.booleans()):
            return "a" * draw(st.integers(240, 270))
        long = ".".join(["a" * 63] * 3 + ["b" * draw(st.integers(58, 64))])  # around the 253-character limit
        return draw(st.sampled_from([long, long + ".", f"{long}:{draw(ports)}", f"{long}.:{draw(ports)}",
                                     ".".join([draw(_label)] * draw(st.integers(1, 3))) + "." + "b" * 63]))
    return draw(json_scalars | st.lists(json_scalars, max_size=3) | st.dictionaries(st.text(max_size=5), json_scalars,
                                                                                       max_size=3))


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


@st.composite
def bodies(draw: Callable[..., Any]) -> bytes:
    """Inventory bodies: valid JSON lists of entries, other JSON, then byte-level damage."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        body = orjson.dumps(draw(st.lists(entries(), max_size=40)))
    elif kind == 1:
        body = orjson.dumps(draw(json_values))
    elif kind == 2:
        return draw(st.binary(max_size=300))
    else:
        body = json.dumps(draw(st.lists(entries(), max_size=20)), ensure_ascii=draw(st.booleans())).encode()
    damage = draw(st.integers(0, 5))
    if damage == 1 and body:  # truncate
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif damage == 2:  # insert bytes (invalid UTF-8 included)
        pos = draw(st.integers(0, len(body)))
        body = body[:pos] + draw(st.binary(min_size=1, max_size=4)) + body[pos:]
    elif damage == 3:  # surrounding whitespace, BOM, nesting
        body = draw(st.sampled_from([b" ", b"\n", b"\xef\xbb\xbf", b"[", b""])) + body + \
            draw(st.sampled_from([b" ", b"\n", b"]", b"", b"\x00"]))
    return body


# --- properties ----------------------------------------------------------------------


def prop_parse_then_validate(body: bytes) -> None:
    try:
        data = parse_body(body)
    except DecodeError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(data, list)
    check_validated(data)


def prop_validate(items: list[Any]) -> None:
    check_validated(items)


def prop_single_defect(host: str, defect: str) -> None:
    """One defect added to a valid hostname is counted under that defect's reason."""
    entry, reason = {
        "whitespace": (f"{host} x", "whitespace"),
        "scheme": (f"http://{host}", "scheme"),
        "userinfo": (f"user@{host}", "userinfo"),
        "path": (f"{host}/metrics", "path"),
        "bad_port": (f"{host}:65536", "bad_port"),
        "too_long": ((host + ".") * (254 // (len(host) + 1) + 1), "too_long"),
        "not_string": (len(host), "not_string"),
    }[defect]
    result = validate([host, entry], PORT)
    assert result.targets == (oracle(host),)
    assert dict(result.invalid) == {reason: 1}


_bodies = given(bodies())
_lists = given(st.lists(entries(), max_size=60))
_defects = given(hostnames.filter(lambda h: len(h) < 120),
                 st.sampled_from(["whitespace", "scheme", "userinfo", "path", "bad_port", "too_long", "not_string"]))


@_bodies
@example(b"")
@example(b"[]")
@example(b'["sensor_1", "sensor_1", 1, null, "a b"]')
@example(b'["sensor_\xc3\x28"]')
@example(b"[" * 2000 + b"]" * 2000)
@example(b'[18446744073709551616]')
@example(b'{"sensors": []}')
def test_parse_body_only_decode_errors(body: bytes) -> None:
    prop_parse_then_validate(body)


@_lists
@example(["sensor_1\n", "sensor_2"])
@example(["", "sensor_1"])
@example(["-", ".", "a.", "a..b", "_", "a_-_b"])
@example(["[::1]", "[::1]:9100", "[::1]:0", "::1", "[fe80::1%eth0]", "[::1]x"])
def test_validate_matches_oracle(items: list[Any]) -> None:
    prop_validate(items)


@_defects
def test_single_defect_reason(host: str, defect: str) -> None:
    prop_single_defect(host, defect)


# make fuzz: the same properties, marked slow, 10k examples each with the long profile.

@pytest.mark.slow
@_bodies
def test_parse_body_only_decode_errors_long(body: bytes) -> None:
    prop_parse_then_validate(body)


@pytest.mark.slow
@_lists
def test_validate_matches_oracle_long(items: list[Any]) -> None:
    prop_validate(items)


@pytest.mark.slow
@_defects
def test_single_defect_reason_long(host: str, defect: str) -> None:
    prop_single_defect(host, defect)
