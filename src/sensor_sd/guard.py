"""Drop guard: a poll that removes too many targets waits for confirmation.

An empty or truncated inventory looks exactly like a mass decommission. The
guard holds such a change back until the same list has been seen
DROP_CONFIRMATIONS polls in a row *and* for DROP_HOLD seconds, so neither a
one-off glitch nor a glitch that repeats quickly (a short UPDATE_INTERVAL)
wipes Prometheus.

A large drop is a new list that removes something and either
  * removes more than MAX_DROP_RATIO of the current targets
    (removed / len(current) > ratio), or
  * is smaller than the largest list published within DROP_WINDOW seconds by
    more than that share ((largest - len(new)) / largest > ratio, i.e.
    len(new) < (1 - ratio) * largest),
so a slow shrink (100 -> 60 -> 36 -> ...), each step under the ratio, is held
once it adds up. A list counts from its publication until DROP_WINDOW seconds
after it was replaced; replacement times are rounded up to DROP_WINDOW /
WINDOW_SLOTS, so the guard never forgets early and remembers at most
WINDOW_SLOTS + 1 sizes however often the list changes. A confirmed drop
becomes the new baseline (the window starts over from it), as does a forced
one (`accept`). MAX_DROP_RATIO=1 turns all of it off.

Pure logic: no I/O, no clock of its own (every call takes `now`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW_SLOTS = 64


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    removed: int  # targets the new list would remove from the current one
    seen: int  # sightings of this list as a held drop, this one included (0: not a drop)
    baseline: int  # the size the drop is measured against: max(current, largest in the window)
    drop: bool = False  # a large drop (applied only once confirmed)
    since: float | None = None  # first sighting of the held list
    release: float | None = None  # earliest time it may be applied (since + DROP_HOLD)
    needed: int = 0  # sightings a large drop needs (DROP_CONFIRMATIONS); 0 when not a drop
    hold: float = 0.0  # seconds a large drop must be seen before it applies (DROP_HOLD)

    @property
    def held(self) -> bool:
        """A large drop the guard holds back (for now)."""
        return self.drop and not self.apply

    @property
    def waits_for_time(self) -> bool:
        """Held although seen often enough: only DROP_HOLD's time is missing (the polls alone would apply it)."""
        return self.held and self.seen >= self.needed and self.hold > 0


class DropGuard:
    """Per-source state of the guard; pure logic, no I/O."""

    def __init__(self, max_ratio: float, confirmations: int, *, window: float = 0.0, hold: float = 0.0) -> None:
        self.max_ratio = max_ratio
        self.confirmations = confirmations
        self.window = window
        self.hold = hold
        self._pending: tuple[str, ...] | None = None
        self._seen = 0
        self._since = 0.0
        # (remembered until this time + window, size): times rising, sizes strictly falling, so the
        # first entry still inside the window is the largest size in it.
        self._window: deque[tuple[float, int]] = deque()

    @property
    def active(self) -> bool:
        return self._pending is not None

    @property
    def pending(self) -> tuple[str, ...] | None:
        return self._pending

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def since(self) -> float | None:
        """When the held list was first seen; None when nothing is held."""
        return self._since if self._pending is not None else None

    @property
    def release(self) -> float | None:
        """The earliest time the held list may be applied; None when nothing is held."""
        return self._since + self.hold if self._pending is not None else None

    def decide(self, current: tuple[str, ...] | None, new: tuple[str, ...], removed: int, now: float) -> Decision:
        """What `check` would decide for `new` at `now`, without changing any state (`sensor-sd check`)."""
        size = len(current) if current else 0
        baseline = max(size, self._largest(now))
        if not current or removed == 0 or self.max_ratio >= 1 or not (
                removed / size > self.max_ratio or (baseline - len(new)) / baseline > self.max_ratio):
            return Decision(True, removed, 0, baseline)
        repeat = self._pending == new
        seen = self._seen + 1 if repeat else 1
        since = self._since if repeat else now
        confirmed = seen >= self.confirmations and now - since >= self.hold
        return Decision(confirmed, removed, seen, baseline, True, since, since + self.hold, self.confirmations,
                        self.hold)

    def check(self, current: tuple[str, ...] | None, new: tuple[str, ...], removed: int, now: float) -> Decision:
        """Decide whether `new` may replace `current` (which it would shrink by `removed`) and remember it."""
        decision = self.decide(current, new, removed, now)
        if not decision.apply:
            assert decision.since is not None
            self._pending, self._seen, self._since = new, decision.seen, decision.since
            return decision
        if decision.drop:
            self.accept()  # confirmed: the new list is the baseline
        else:
            self._pending, self._seen = None, 0
            if current and new != current:
                self.record(len(current), now)  # published until now
        return decision

    def record(self, size: int, now: float) -> None:
        """Remember that a list of `size` targets was published until `now`."""
        if self.window <= 0:
            return
        slots = now / (self.window / WINDOW_SLOTS)
        # Rounded up to a slot so it is never forgotten early (a window too small for slots: exact time).
        until = max(now, math.ceil(slots) * (self.window / WINDOW_SLOTS)) if slots < 2.0**53 else now
        while self._window and self._window[0][0] < now - self.window:
            self._window.popleft()
        if self._window:
            until = max(until, self._window[-1][0])  # a clock stepping back never shortens memory
        while self._window and self._window[-1][1] <= size:
            self._window.pop()  # smaller and not remembered longer: never the maximum again
        if not self._window or self._window[-1][0] < until:
            self._window.append((until, size))
        # else: a larger size in the same slot already covers this one

    def accept(self) -> None:
        """Forget the held list and the window: the list now published is the new baseline (confirmed or forced)."""
        self._pending, self._seen = None, 0
        self._window.clear()

    def reset(self) -> None:
        """Forget the held list (the window stays)."""
        self._pending, self._seen = None, 0

    def _largest(self, now: float) -> int:
        for until, size in self._window:
            if until >= now - self.window:
                return size
        return 0
