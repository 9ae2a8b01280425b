"""One poll of one source: fetch, decode and validate, ask the drop guard; a typed `PollResult` out.

Like a Prometheus discoverer's refresh, a poller neither logs nor counts nor
publishes: it returns what happened, and the scheduler (`scheduler.Discoverer`) hands that to
the store (an applied list) and the observer (metrics, log lines). It keeps
only what one source needs between polls: the cache validators, the drop
guard, and the times and outcome the status page shows.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sensor_sd.sources import Source
from sensor_sd.decode import Validated, decode
from sensor_sd.errors import InternalError, InventoryError
from sensor_sd.guard import Decision, DropGuard
from sensor_sd.inventory import Client, Validators

_DIFF_BLOCK = 4096


class Result(enum.StrEnum):
    """What a poll did; the values are the `result` label of `sensor_sd_syncs_total` and of the log lines."""

    SUCCESS = "success"  # a new list applied
    UNCHANGED = "unchanged"  # 304, or the same list
    ERROR = "error"  # the poll failed; the last known good list stays
    HELD = "held"  # a large drop held back by the drop guard


GOOD = frozenset({Result.SUCCESS, Result.UNCHANGED})  # the inventory answered and what it said stands


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of one source did: everything the store, the observer and the CLI need, nothing to look up."""

    source: str
    result: Result
    targets: int  # the source's targets after the poll (a dry run: the fetched list's)
    added: tuple[str, ...] = ()  # the change against the previous list (held: the change held back)
    removed: tuple[str, ...] = ()
    duration: float = 0.0
    error: str | None = None  # "<reason>: <message>" of a failed poll
    reason: str | None = None
    guard: Decision | None = None  # the drop guard's decision when the list was a large drop
    # For the store and the observer:
    new: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # the list to apply (SUCCESS)
    previous: int | None = None  # the source's targets before the poll; None when none were known
    request: float | None = None  # the inventory request's duration; None when it never ended (an internal fault)
    answered: float | None = None  # clock time of the inventory's good answer (last success)
    failures: int = 0  # failed polls in a row, this one included
    invalid: tuple[tuple[str, int], ...] = ()  # (reason, count) of dropped entries
    examples: tuple[tuple[str, str], ...] = ()  # (reason, entry), a few, for the log
    fault: BaseException | None = field(default=None, repr=False, compare=False)  # a bug of ours behind an ERROR
    dry_run: bool = False  # `check`: nothing was applied or remembered
    retiring: bool = False  # the source left SOURCES_FILE: its targets leave through the guard, nothing fetched

    def summary(self) -> dict[str, object]:
        """The `/-/refresh` answer for this source: what was applied (a held change applied nothing)."""
        applied = self.result is not Result.HELD
        out: dict[str, object] = {"source": self.source, "result": self.result.value, "targets": self.targets,
                                  "added": len(self.added) if applied else 0,
                                  "removed": len(self.removed) if applied else 0}
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A read-only view of one source, for the status page and the CLI."""

    name: str
    url: str
    targets: int | None
    last_poll: float | None
    last_result: Result | None
    last_success: float | None
    last_error: str | None
    guard_held: int | None  # size of the held list, None when the guard is idle
    guard_seen: int
    guard_since: float | None = None  # first sighting of the held list
    guard_release: float | None = None  # earliest time it may be applied (since + DROP_HOLD)


def diff(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(added, removed) between two target lists, each sorted and without duplicates (as `validate` makes them).

    A merge that skips equal runs a block at a time: comparing two tuple
    slices runs at C speed, so a 1M-target list with a few changes costs
    about one pass of string comparisons, and no set of 1M strings is built.
    """
    if old == new:
        return (), ()
    if not old or not new:  # first sync or emptied: no copy of a 1M-target tuple
        return new, old
    added: list[str] = []
    removed: list[str] = []
    i = j = 0
    n, m = len(old), len(new)
    while i < n and j < m:
        k = min(_DIFF_BLOCK, n - i, m - j)
        if old[i:i + k] == new[j:j + k]:
            i += k
            j += k
            continue
        lo, hi = 0, k - 1  # bisect the first mismatch: old[i+lo] != new[j+lo], everything before it equal
        while lo < hi:
            mid = (lo + hi) // 2
            if old[i + lo:i + mid + 1] == new[j + lo:j + mid + 1]:
                lo = mid + 1
            else:
                hi = mid
        i += lo
        j += lo
        if old[i] < new[j]:
            removed.append(old[i])
            i += 1
        else:
            added.append(new[j])
            j += 1
    removed.extend(old[i:])
    added.extend(new[j:])
    return tuple(added), tuple(removed)


def describe_fault(exc: BaseException) -> str:
    """One bounded line for an unexpected exception (its text may be huge, multi-line, or fail to render)."""
    try:
        text = " ".join(str(exc)[:1000].split())[:200]
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails is still a fault to report
        text = "(no message)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _validate_and_diff(box: list[bytes], port: int, current: tuple[str, ...] | None
                       ) -> tuple[Validated, tuple[tuple[str, ...], tuple[str, ...]]]:
    """In a worker thread: the body's validated targets and their diff against `current`."""
    validated = decode(box, port)
    return validated, diff(current or (), validated.targets)


class Poller:
    """Polls one source; `poll` never raises (a bug of ours becomes an ERROR result with reason `internal`)."""

    def __init__(self, source: Source, client: Client, guard: DropGuard, metrics_port: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.guard = guard
        self._client = client
        self._port = metrics_port
        self._clock = clock
        self.validators = Validators()
        self.failures = 0  # failed polls in a row (the scheduler's backoff)
        self.last_poll: float | None = None
        self.last_result: Result | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None

    def forget_validators(self) -> None:
        """Fetch the whole body next time (another endpoint, or a list that was never applied)."""
        self.validators = Validators()

    def status(self, targets: int | None) -> SourceStatus:
        g = self.guard
        return SourceStatus(self.source.name, self.source.display_url, targets, self.last_poll,
                            self.last_result, self.last_success, self.last_error,
                            len(g.pending) if g.pending is not None else None, g.seen, g.since, g.release)

    async def poll(self, current: tuple[str, ...] | None, *, force: bool = False,
                   dry_run: bool = False) -> PollResult:
        """Poll against `current` (the source's last known good list, None when none is known).

        `force` applies a drop the guard would hold; `dry_run` (for `sensor-sd check`) asks the guard
        without changing its state.
        """
        started = time.perf_counter()
        request: list[float] = []  # the request's duration, once it ended (an internal fault may come after)
        try:
            return await self._poll(current, force, dry_run, started, request)
        except Exception as exc:  # the fence: a bug of ours fails this poll, never the daemon
            self.validators = Validators()  # fetch the whole body next time, not a 304 for a list never applied
            return self._failed(current, InternalError(describe_fault(exc)), time.perf_counter() - started,
                                request[0] if request else None, dry_run, exc)

    async def _poll(self, current: tuple[str, ...] | None, force: bool, dry_run: bool, started: float,
                    request: list[float]) -> PollResult:
        self.last_poll = self._clock()
        try:
            response = await self._client.fetch(self.source, self.validators)
            duration = time.perf_counter() - started
            request.append(duration)
            validators = response.validators
            changes: tuple[tuple[str, ...], tuple[str, ...]] | None = None
            if response.body is None:
                validated = None
            else:
                # The body leaves `response` in a box so the thread can free it once decoded (16 MB at 1M hosts);
                # validation and the diff share one trip to the thread.
                box = [response.body]
                del response
                validated, changes = await asyncio.to_thread(_validate_and_diff, box, self._port, current)
        except InventoryError as exc:
            duration = time.perf_counter() - started
            return self._failed(current, exc, duration, duration, dry_run)
        self.validators = validators
        self.failures = 0
        self.last_success = answered = self._clock()
        self.last_error = None
        previous = len(current) if current is not None else None
        base = PollResult(self.source.name, Result.UNCHANGED, previous or 0, duration=duration, previous=previous,
                          request=duration, answered=answered, dry_run=dry_run)
        if validated is not None:
            base = replace(base, invalid=tuple(validated.invalid.items()), examples=validated.examples)
            new = validated.targets
        elif self.guard.pending is not None:
            new = self.guard.pending  # 304 while a drop is held: one more sighting of the same list
        else:
            return self._done(base)
        if changes is None:  # a 304 while a drop is held
            changes = await asyncio.to_thread(diff, current or (), new)
        added, removed = changes
        if dry_run:  # the guard's answer for this list, its state untouched
            verdict = self.guard.decide(current, new, len(removed), answered)
            result = (Result.HELD if not verdict.apply else
                      Result.UNCHANGED if current is not None and not added and not removed else Result.SUCCESS)
            return replace(base, result=result, targets=len(new), added=added, removed=removed,
                           guard=verdict if verdict.drop else None)
        decision = self.guard.check(current, new, len(removed), answered) if not force else None
        if decision is not None and not decision.apply:
            return self._done(replace(base, result=Result.HELD, added=added, removed=removed, guard=decision))
        if force:
            self.guard.accept()
        if current is not None and not added and not removed:
            return self._done(base)
        return self._done(replace(base, result=Result.SUCCESS, targets=len(new), added=added, removed=removed,
                                  guard=decision if decision and decision.drop else None, new=new))

    def _done(self, result: PollResult) -> PollResult:
        if not result.dry_run:
            self.last_result = result.result
        return result

    def _failed(self, current: tuple[str, ...] | None, exc: InventoryError, duration: float, request: float | None,
                dry_run: bool, fault: BaseException | None = None) -> PollResult:
        self.failures += 1
        self.last_result = Result.ERROR
        self.last_error = f"{exc.reason}: {exc}"
        kept = len(current) if current is not None else None
        return PollResult(self.source.name, Result.ERROR, kept or 0, duration=duration, error=self.last_error,
                          reason=exc.reason, previous=kept, request=request, failures=self.failures, fault=fault,
                          dry_run=dry_run)

    def retire(self, current: tuple[str, ...]) -> PollResult:
        """One 'poll' of a source removed from SOURCES_FILE: its list goes to empty, through the drop guard."""
        now = self._clock()
        decision = self.guard.check(current, (), len(current), now) if current else None
        if decision is not None and not decision.apply:
            self.last_result = Result.HELD
            return PollResult(self.source.name, Result.HELD, len(current), (), current, guard=decision,
                              previous=len(current), answered=now, retiring=True)
        return PollResult(self.source.name, Result.SUCCESS, 0, (), current, new=(), previous=len(current),
                          answered=now, retiring=True)
