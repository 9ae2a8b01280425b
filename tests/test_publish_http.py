"""publish.http: the bodies of http_sd's /targets, made from a snapshot without a server."""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest

from sensor_sd.publish import http as http_sd
from sensor_sd.targets import Snapshot, TargetGroup, hashmod

LABELS = (("__metrics_path__", "/metrics"), ("source", "inv"))


def snapshot_of(count: int, source: str = "inv") -> Snapshot:
    return Snapshot.build([TargetGroup(source, tuple(sorted(f"sensor_{i}:9100" for i in range(count))), LABELS)])


@pytest.mark.parametrize(("shard", "shards", "expected"), [
    ([], [], None), (["0"], ["1"], (0, 1)), (["2"], ["3"], (2, 3)), (["000002"], ["000003"], (2, 3)),
    (["999"], ["1000"], (999, 1000)),
])
def test_shard_params_accepts_one_shard_of_at_most_1000(shard: list[str], shards: list[str],
                                                         expected: tuple[int, int] | None) -> None:
    assert http_sd.shard_params(shard, shards) == expected


@pytest.mark.parametrize(("shard", "shards"), [
    (["0"], []), ([], ["2"]), (["0", "1"], ["2"]), (["0"], ["2", "3"]), (["3"], ["3"]), (["0"], ["0"]),
    (["0"], ["1001"]), (["a"], ["2"]), (["-1"], ["2"]), (["+1"], ["2"]), ([" 1"], ["2"]), (["1.5"], ["3"]),
    (["²"], ["3"]), (["１"], ["2"]), ([""], [""]), (["0"], ["9" * 5000]), (["0" * 5000], ["2"]),
    (["0000001"], ["2"]), (["1\x00"], ["2"]), (["0x1"], ["2"]),
])
def test_shard_params_refuses_anything_else_with_one_line(shard: list[str], shards: list[str]) -> None:
    with pytest.raises(http_sd.BadShard) as info:
        http_sd.shard_params(shard, shards)
    assert "shard" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("header", "takes"), [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("*", True), ("gzip; q=1", True),
    ("", False), ("identity", False), ("gzip;q=0", False), ("gzip; q=0.000", False), ("x-gzip", False),
    ("br, deflate", False), (",,,;;;", False), ("gzip" + ";" * 10000, True),
])
def test_accepts_gzip(header: str, takes: bool) -> None:
    assert http_sd.accepts_gzip(header) is takes


def test_whole_body_is_the_snapshots_own_bytes() -> None:
    snap = snapshot_of(300)
    body = asyncio.run(http_sd.HttpOutput().body(snap, None, False))
    assert body.data is snap.body and body.etag == snap.etag and not body.gzip


@pytest.mark.parametrize("total", [1, 2, 7])
def test_shards_partition_by_prometheus_hashmod(total: int) -> None:
    snap = snapshot_of(500)

    async def shards() -> list[http_sd.Body]:
        out = http_sd.HttpOutput()
        return [await out.body(snap, (i, total), False) for i in range(total)]

    seen: list[str] = []
    etags = set()
    for index, body in enumerate(asyncio.run(shards())):
        groups = orjson.loads(body.data)
        targets = [t for g in groups for t in g["targets"]]
        assert all(hashmod(t, total) == index for t in targets)  # the definition, not the code under test
        assert all(g["labels"] == dict(LABELS) for g in groups)
        seen += targets
        etags.add(body.etag)
    assert sorted(seen) == sorted(snap.groups[0].targets)
    assert len(etags) == total and snap.etag not in etags


def test_gzip_copy_decompresses_to_the_body_and_small_bodies_stay_plain() -> None:
    big, small = snapshot_of(300), snapshot_of(2)
    out = http_sd.HttpOutput()
    zipped = asyncio.run(out.body(big, None, True))
    assert zipped.gzip and gzip.decompress(zipped.data) == big.body
    assert zipped.etag != big.etag and zipped.etag.startswith(big.etag[:-1])
    plain = asyncio.run(out.body(small, None, True))
    assert plain.data is small.body and not plain.gzip


def test_concurrent_requests_share_one_hashing_and_one_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"hash": 0, "render": 0}
    real_hashes, real_render = http_sd.address_hashes, http_sd._render_shard

    def counted_hashes(groups: tuple[TargetGroup, ...]) -> http_sd.Hashes:
        calls["hash"] += 1
        return real_hashes(groups)

    def counted_render(*args: object) -> bytes:
        calls["render"] += 1
        return real_render(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(http_sd, "address_hashes", counted_hashes)
    monkeypatch.setattr(http_sd, "_render_shard", counted_render)
    first, second = snapshot_of(1000), snapshot_of(999)

    async def crowd() -> None:
        out = http_sd.HttpOutput()
        bodies = await asyncio.gather(*(out.body(first, (1, 4), False) for _ in range(20)))
        assert len({id(b) for b in bodies}) == 1
        await asyncio.gather(*(out.body(first, (i, 4), False) for i in range(4)))
        assert calls == {"hash": 1, "render": 4}  # one hashing serves every shard of a snapshot
        await out.body(second, (1, 4), False)  # a new snapshot: hashed and rendered anew
        assert calls == {"hash": 2, "render": 5}

    asyncio.run(crowd())


def test_a_shard_asked_for_while_an_older_snapshots_renders_uses_its_own_hashes() -> None:
    """Two snapshots of as many targets, asked for in one loop turn (a new snapshot published while a request
    for the old one was in flight): each shard must come from its own snapshot's hashes."""
    old = Snapshot.build([TargetGroup("inv", tuple(f"old_{i}:9100" for i in range(500)), LABELS)])
    new = Snapshot.build([TargetGroup("inv", tuple(f"new_{i}:9100" for i in range(500)), LABELS)])

    async def both() -> tuple[http_sd.Body, http_sd.Body]:
        out = http_sd.HttpOutput()
        first, second = await asyncio.gather(out.body(old, (0, 2), False), out.body(new, (0, 2), False))
        return first, second

    for snap, body in zip((old, new), asyncio.run(both()), strict=True):
        expected = [t for t in snap.groups[0].targets if hashmod(t, 2) == 0]
        assert [t for g in orjson.loads(body.data) for t in g["targets"]] == expected
