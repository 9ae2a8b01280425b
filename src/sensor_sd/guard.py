"""Drop guard: a poll that removes too many targets waits for confirmation.

An empty or truncated inventory looks exactly like a mass decommission. The
guard holds such a change back until the same list has been seen
DROP_CONFIRMATIONS polls in a row, so a one-off glitch never wipes Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    removed: int  # targets the new list would remove
    seen: int  # sightings of the held list so far (0 when nothing is held)


class DropGuard:
    """Per-source state of the guard; pure logic, no I/O."""

    def __init__(self, max_ratio: float, confirmations: int) -> None:
        self.max_ratio = max_ratio
        self.confirmations = confirmations
        self._pending: tuple[str, ...] | None = None
        self._seen = 0

    @property
    def active(self) -> bool:
        return self._pending is not None

    @property
    def pending(self) -> tuple[str, ...] | None:
        return self._pending

    @property
    def seen(self) -> int:
        return self._seen

    def check(self, current: tuple[str, ...] | None, new: tuple[str, ...], removed: int) -> Decision:
        """Decide whether `new` may replace `current` (which it would shrink by `removed`)."""
        if current is None or not current or self.max_ratio >= 1 or removed / len(current) <= self.max_ratio:
            self.reset()
            return Decision(True, removed, 0)
        if self._pending == new:
            self._seen += 1
        else:
            self._pending, self._seen = new, 1
        if self._seen >= self.confirmations:
            self.reset()
            return Decision(True, removed, self.confirmations)
        return Decision(False, removed, self._seen)

    def reset(self) -> None:
        self._pending, self._seen = None, 0
