"""The snapshot store: each source's last known good group, merged into one immutable `Snapshot`.

Like Prometheus' discovery manager it merges per-source groups and hands the
result to its consumers; it never knows where the groups came from. Readers
(the HTTP server, the status page) take `snapshot` and `changes`; publishers
(the targets file) subscribe and are awaited with every published snapshot,
in order, so a file never goes back to an older one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sensor_sd.targets import Snapshot, TargetGroup

RECENT_CHANGES = 20
CHANGE_NAMES = 5  # names kept per change for the status page; the counts are exact

Subscriber = Callable[[Snapshot], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Change:
    """One applied list of one source: exact counts, the first few names (bounded memory)."""

    time: float
    source: str
    added: int
    removed: int
    added_names: tuple[str, ...] = ()
    removed_names: tuple[str, ...] = ()
    first: bool = False  # the source's first list (nothing was known before)

    @classmethod
    def of(cls, time: float, source: str, added: tuple[str, ...], removed: tuple[str, ...],
           first: bool = False) -> Change:
        return cls(time, source, len(added), len(removed), added[:CHANGE_NAMES], removed[:CHANGE_NAMES], first)


class Store:
    """Groups by source, the published snapshot, the recent changes and the subscribers; one per process."""

    def __init__(self) -> None:
        self._groups: dict[str, TargetGroup] = {}
        self._snapshot: Snapshot | None = None
        self._changes: deque[Change] = deque(maxlen=RECENT_CHANGES)
        self._subscribers: list[Subscriber] = []
        self._lock = asyncio.Lock()
        self._behind = False  # groups changed since the snapshot was built (or its build failed)

    @property
    def snapshot(self) -> Snapshot | None:
        """The published snapshot; None until a good poll or a loaded file."""
        return self._snapshot

    @property
    def changes(self) -> tuple[Change, ...]:
        """The last RECENT_CHANGES applied lists, oldest first."""
        return tuple(self._changes)

    @property
    def behind(self) -> bool:
        """True when a group changed after the last snapshot was built: a `publish` is due (or failed)."""
        return self._behind

    def subscribe(self, subscriber: Subscriber) -> None:
        """`subscriber(snapshot)` is awaited on every `publish` (a publisher skips what it already holds)."""
        self._subscribers.append(subscriber)

    def group(self, source: str) -> TargetGroup | None:
        return self._groups.get(source)

    def put(self, group: TargetGroup, change: Change | None = None) -> None:
        """Set a source's group (published with the next `publish`), remembering the change when one is given."""
        self._groups[group.source] = group
        self._behind = True
        if change is not None:
            self._changes.append(change)

    def remove(self, source: str, change: Change | None = None) -> None:
        self._groups.pop(source, None)
        self._behind = True
        if change is not None:
            self._changes.append(change)

    def _ordered(self) -> tuple[TargetGroup, ...]:
        """Groups in order of source name, whatever the order of the configuration: replicas render the same bytes."""
        return tuple(group for _, group in sorted(self._groups.items()))

    def seed(self, current: bytes | None = None) -> None:
        """Build the snapshot from the groups without publishing (the targets file loaded at start).

        `current` is what the file holds. When the snapshot differs from it (an entry today's rules
        drop, labels changed since, a source no longer configured), a publish is due, so the first
        good poll rewrites the file even when the inventory has not changed.
        """
        self._snapshot = Snapshot.build(self._ordered())
        self._behind = current is not None and current != self._snapshot.body

    async def publish(self) -> Snapshot | None:
        """Build the snapshot from every group (when they changed) and hand it to each subscriber."""
        async with self._lock:
            groups = self._ordered()
            if not groups and self._snapshot is None:
                return None  # nothing good yet: never publish an empty list by accident
            self._behind = False  # before the awaits: a group put meanwhile makes it due again
            try:
                if self._snapshot is None or self._snapshot.groups != groups:
                    self._snapshot = await asyncio.to_thread(Snapshot.build, groups)
                for subscriber in self._subscribers:
                    await subscriber(self._snapshot)
            except BaseException:
                self._behind = True  # a bug of ours (or cancellation): the next good poll tries again
                raise
            return self._snapshot
