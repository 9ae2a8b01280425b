"""Validation of inventory entries, rendering, sharding and the file round trip."""

from __future__ import annotations

import hashlib
import re

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sensor_sd.decode import REASONS, normalize, validate, validate_body
from sensor_sd.targets import Snapshot, TargetGroup, address_hashes, group_labels, hashmod, parse_file, render, shard


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("sensor_0", "sensor_0:9100"), ("Sensor-7.store.example", "sensor-7.store.example:9100"),
        ("host:80", "host:80"), ("10.0.0.1", "10.0.0.1:9100"), ("10.0.0.1:9", "10.0.0.1:9"),
        ("fqdn.example.", "fqdn.example:9100"), ("FQDN.Example.:80", "fqdn.example:80"), ("a" * 63, "a" * 63 + ":9100"),
        ("[2001:DB8::A]", "[2001:db8::a]:9100"), ("[2001:db8:0:0::a]:80", "[2001:db8::a]:80"),
        ("[::FFFF:192.0.2.1]", "[::ffff:192.0.2.1]:9100"), ("[2001:db8:0:1:1:1:1:1]", "[2001:db8:0:1:1:1:1:1]:9100"),
    ],
)
def test_valid_entries(entry: str, expected: str) -> None:
    assert normalize(entry, 9100) == (expected, None)
    assert validate([entry], 9100).targets == (expected,)


def test_bracketed_ipv6() -> None:
    assert validate(["[::1]", "[2001:db8::1]:8080"], 9100).targets == ("[2001:db8::1]:8080", "[::1]:9100")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (1, "not_string"), (None, "not_string"), (True, "not_string"), ([], "not_string"), ({}, "not_string"),
        ("", "empty"), ("a" * 254, "too_long"), ("sensor 1", "whitespace"), ("sensor\t1", "whitespace"),
        ("sensor\n1", "whitespace"), ("sensor\x001", "whitespace"), ("http://sensor_1", "scheme"),
        ("user@sensor_1", "userinfo"), ("sensor_1/metrics", "path"), ("sensor_1?x", "path"),
        ("sensor_1:0", "bad_port"), ("sensor_1:65536", "bad_port"), ("sensor_1:abc", "bad_port"),
        ("sensor_1:", "bad_port"), ("sensor_1:080", "bad_port"), ("-sensor", "bad_host"), ("a..b", "bad_host"),
        ("sensor-", "bad_host"), (".sensor", "bad_host"), ("::1", "bad_host"), ("[zz]", "bad_host"),
        ("[::1]:0", "bad_port"), ("a" * 64, "bad_host"), ("sénsor", "bad_host"), ("sensor_1:9:9", "bad_host"),
        ("[::1", "bad_host"), ("[fe80::6%25eth0]", "ipv6_zone"), ("[fe80::6%eth0]:9100", "ipv6_zone"),
        ("SENSOR\u0130", "bad_host"), (".", "bad_host"), ("a..", "bad_host"),
    ],
)
def test_invalid_entries_are_dropped_with_reason(entry: object, reason: str) -> None:
    result = validate(["good", entry, "good2"], 9100)
    assert result.targets == ("good2:9100", "good:9100")
    assert dict(result.invalid) == {reason: 1}
    assert reason in REASONS


def test_dedup_and_plain_string_sort() -> None:
    result = validate(["sensor_10", "sensor_1", "sensor_2", "sensor_1", "sensor_1:9100"], 9100)
    assert result.targets == ("sensor_10:9100", "sensor_1:9100", "sensor_2:9100")


def test_identical_inventories_give_identical_bytes() -> None:
    labels = group_labels("inv", "/metrics", (("env", "prod"),))
    a = render([TargetGroup("inv", validate(["b", "a", "c"], 9100).targets, labels)])
    b = render([TargetGroup("inv", validate(["c", "a", "b", "a"], 9100).targets, labels)])
    assert a == b
    assert orjson.loads(a) == [{"targets": ["a:9100", "b:9100", "c:9100"],
                                "labels": {"__metrics_path__": "/metrics", "env": "prod", "source": "inv"}}]


def test_snapshot_etag_follows_content() -> None:
    labels = group_labels("s", "/metrics", ())
    one = Snapshot.build([TargetGroup("s", ("a:1",), labels)])
    same = Snapshot.build([TargetGroup("s", ("a:1",), labels)])
    other = Snapshot.build([TargetGroup("s", ("b:1",), labels)])
    assert one.etag == same.etag != other.etag
    assert one.count == 1


def test_file_round_trip() -> None:
    groups = [TargetGroup("a", ("x:1", "y:1"), group_labels("a", "/m", ())),
              TargetGroup("b", ("z:1",), group_labels("b", "/m", ()))]
    assert parse_file(render(groups)) == groups


@pytest.mark.parametrize("body", [b"{}", b'[{"targets": "x"}]', b'[{"targets": [1]}]', b'[{"targets": [], "labels": {"a": 1}}]', b"[1]"])
def test_parse_file_rejects_foreign_shapes(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_file(body)


def test_hashmod_matches_prometheus_definition() -> None:
    # Prometheus: binary.BigEndian.Uint64(md5(value)[8:]) % modulus
    value = "sensor_17:9100"
    digest = hashlib.md5(value.encode()).digest()
    assert hashmod(value, 7) == int.from_bytes(digest[8:], "big") % 7


def test_shards_partition_the_targets() -> None:
    targets = tuple(f"sensor_{i}:9100" for i in range(200))
    groups = [TargetGroup("s", targets, ())]
    parts = [shard(groups, i, 3)[0].targets for i in range(3)]
    assert sorted(sum(parts, ())) == sorted(targets)
    assert all(hashmod(t, 3) == i for i, part in enumerate(parts) for t in part)


@pytest.mark.parametrize("total", [1, 2, 3, 1000])
def test_precomputed_hashes_give_the_same_shards(total: int) -> None:
    groups = [TargetGroup("a", tuple(f"sensor_{i}:9100" for i in range(300)), ()),
              TargetGroup("b", ("[::1]:9100", "x:1"), (("k", "v"),)), TargetGroup("c", (), ())]
    hashes = address_hashes(groups)
    for index in {0, total // 2, total - 1}:
        assert shard(groups, index, total, hashes) == shard(groups, index, total)


# --- property tests: nothing escapes, every published target is valid --------------------------------

_ORACLE = re.compile(
    r"(?:(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
    r"|\[[0-9A-Fa-f:.]+\]):([1-9][0-9]{0,4})"
)

hostish = st.text(alphabet=st.sampled_from("abcXYZ019_-.:/@[] \t\n\x00é"), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostish | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


@given(st.lists(json_values, max_size=60))
@example([-(2**63) - 1])  # below orjson's int range, but above -2**64: the log preview once raised on it
@example([2**64, -(2**64), 2**63 - 1, -(2**63)])
def test_validate_never_raises_and_publishes_only_valid_targets(entries: list[object]) -> None:
    result = validate(entries, 9100)
    assert list(result.targets) == sorted(set(result.targets))
    for target in result.targets:
        m = _ORACLE.fullmatch(target)
        assert m is not None, target
        assert 1 <= int(m.group(1)) <= 65535
        assert len(target) <= 253 + 6
    assert sum(result.invalid.values()) + len(result.targets) <= len(entries)


@given(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), max_size=50))
def test_fast_path_agrees_with_per_entry_path(names: list[str]) -> None:
    fast = validate(names, 9100)
    slow = validate([*names, 1], 9100)  # a non-string forces the per-entry path
    assert fast.targets == slow.targets
    assert dict(slow.invalid) == {"not_string": 1}


# --- one canonical form per host (SPEC §7) ------------------------------------------------------------

_LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters, the DNS limit


@pytest.mark.parametrize(
    ("spellings", "target"),
    [
        (["Sensor_1", "sensor_1", "SENSOR_1", "sensor_1:9100", "SeNsOr_1.:9100"], "sensor_1:9100"),
        (["sensor_2.", "sensor_2", "SENSOR_2."], "sensor_2:9100"),
        (["[2001:DB8::A]", "[2001:db8:0::a]", "[2001:0db8:0000:0000:0000:0000:0000:000a]:9100"], "[2001:db8::a]:9100"),
        (["[::ffff:c000:201]", "[::FFFF:192.0.2.1]:9100"], "[::ffff:192.0.2.1]:9100"),
    ],
)
def test_each_host_has_one_canonical_target(spellings: list[str], target: str) -> None:
    """The same sensor spelled several ways is one target, whichever path (fast or entry by entry) sees it."""
    assert validate(spellings, 9100).targets == (target,)
    for spelling in spellings:
        assert normalize(spelling, 9100) == (target, None)
    bare = [s for s in spellings if ":" not in s and not s.endswith(".")]  # the bodies the fast paths take
    if bare:
        assert validate(bare, 9100).targets == (target,)
        assert validate_body([orjson.dumps(bare)], 9100) == validate(bare, 9100)


def test_the_253_character_limit_counts_the_host_without_its_port() -> None:
    assert len(_LONG_HOST) == 253
    for entry in (_LONG_HOST, _LONG_HOST + ".", _LONG_HOST + ":9100", _LONG_HOST.upper() + ".:65535"):
        target, reason = normalize(entry, 9100)
        assert reason is None and target is not None and target.rpartition(":")[0] == _LONG_HOST, entry
    for entry in ("e" + _LONG_HOST, "e" + _LONG_HOST + ":9100", "e" + _LONG_HOST + ".:1"):
        assert normalize(entry, 9100) == (None, "too_long"), entry


def test_targets_are_their_own_canonical_form() -> None:
    """Validating published targets again changes nothing (a loaded file is validated like a poll)."""
    targets = validate(["A.b.", "[2001:DB8::1]:80", "x:1", "Y"], 9100).targets
    assert validate(list(targets), 1).targets == targets
