"""The snapshot store: groups merged in source order, subscribers awaited in order, a failed publish due again."""

from __future__ import annotations

import asyncio

import pytest

import sensor_sd.store
from sensor_sd.store import RECENT_CHANGES, Change, Store
from sensor_sd.targets import Snapshot, TargetGroup


def group(source: str, *targets: str) -> TargetGroup:
    return TargetGroup(source, targets, (("source", source),))


def test_nothing_is_published_before_a_group_and_groups_go_out_in_source_order() -> None:
    async def main() -> None:
        store = Store()
        seen: list[Snapshot] = []

        async def subscriber(snapshot: Snapshot) -> None:
            seen.append(snapshot)

        store.subscribe(subscriber)
        assert await store.publish() is None and seen == []  # never an empty list by accident
        store.put(group("b", "b:1"))
        store.put(group("a", "a:1"))
        snapshot = await store.publish()
        assert snapshot is not None and [g.source for g in snapshot.groups] == ["a", "b"]
        assert seen == [snapshot] and store.snapshot is snapshot
        assert await store.publish() is snapshot  # unchanged groups: the same snapshot, handed on again
        assert seen == [snapshot, snapshot]

    asyncio.run(main())


def test_a_failed_publish_leaves_the_store_behind_until_one_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        @staticmethod
        def build(groups: object) -> None:
            raise KeyError("a bug of ours")

    async def main() -> None:
        store = Store()
        assert not store.behind
        store.put(group("a", "a:1"))
        assert store.behind
        monkeypatch.setattr(sensor_sd.store, "Snapshot", Broken)
        with pytest.raises(KeyError):
            await store.publish()
        assert store.behind and store.snapshot is None  # the next good poll publishes again
        monkeypatch.undo()
        assert (await store.publish()) is not None and not store.behind

    asyncio.run(main())


def test_the_change_history_is_bounded_and_keeps_exact_counts() -> None:
    store = Store()
    names = tuple(f"t{i}:9100" for i in range(100))
    for i in range(RECENT_CHANGES + 5):
        store.put(group("a", *names), Change.of(float(i), "a", names, ()))
    changes = store.changes
    assert len(changes) == RECENT_CHANGES and changes[0].time == 5.0
    assert changes[-1].added == 100 and len(changes[-1].added_names) == sensor_sd.store.CHANGE_NAMES
    store.remove("a", Change.of(99.0, "a", (), names))
    assert store.group("a") is None and store.changes[-1].removed == 100
