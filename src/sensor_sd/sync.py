"""The discoverer: one loop per source, one snapshot, published on every change.

Each source keeps its own last-known-good group; a failed or held poll leaves
that group untouched, so the snapshot (and with it the file and /targets)
only ever changes to another good state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from sensor_sd import sources
from sensor_sd.config import Settings, Source
from sensor_sd.errors import ConfigError, InternalError, InventoryError, PublishError
from sensor_sd.guard import Decision, DropGuard
from sensor_sd.inventory import Client, Validators, parse_body
from sensor_sd.log import event
from sensor_sd.metrics import Metrics, SourceMetrics
from sensor_sd.publish import FilePublisher
from sensor_sd.targets import (
    Snapshot,
    TargetGroup,
    Validated,
    group_labels,
    parse_file,
    validate,
    validate_body,
    validate_targets,
)

RECENT_CHANGES = 20
OUTAGE_REMINDER_SECONDS = 300.0  # while a source fails, one reminder line at most this often
BACKOFF_MAX_EXPONENT = 30  # 2**30 s is far above any UPDATE_INTERVAL: the cap, not the exponent, decides
CHANGE_NAMES = 5  # names kept per change for the status page; the counts are exact
_LOG_NAMES = 10
SOURCES_CHECK_SECONDS = 5.0  # how often SOURCES_FILE is stat'ed for a change (or UPDATE_INTERVAL if shorter)


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of one source did."""

    source: str
    result: str  # success | unchanged | error | held
    targets: int  # targets of the source after the poll
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    duration: float = 0.0
    error: str | None = None
    reason: str | None = None
    guard: Decision | None = None  # the drop guard's decision when the list was a large drop

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"source": self.source, "result": self.result, "targets": self.targets,
                                  "added": len(self.added), "removed": len(self.removed)}
        if self.error:
            out["error"] = self.error
        return out


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


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A read-only view of one source, for the status page and the CLI."""

    name: str
    url: str
    targets: int | None
    last_poll: float | None
    last_result: str | None
    last_success: float | None
    last_error: str | None
    guard_held: int | None  # size of the held list, None when the guard is idle
    guard_seen: int
    guard_since: float | None = None  # first sighting of the held list
    guard_release: float | None = None  # earliest time it may be applied (since + DROP_HOLD)


class _SourceState:
    """Mutable per-source state; private to the Discoverer, touched only from its event loop."""

    def __init__(self, source: Source, guard: DropGuard, metrics: SourceMetrics) -> None:
        self.source = source
        self.guard = guard
        self.m = metrics
        self.retiring = False  # removed from SOURCES_FILE: its targets leave through the drop guard
        self.group: TargetGroup | None = None
        self.validators = Validators()
        self.lock = asyncio.Lock()
        self.last_poll: float | None = None
        self.last_result: str | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.outage_since: float | None = None  # first failed poll of the current outage
        self.reminded: float | None = None  # last time the outage was logged
        self.outage_reasons: set[str] = set()  # reasons already logged in this outage (a new one is news)
        self.faults_logged: set[str] = set()  # signatures of internal faults already logged with their traceback


_DIFF_BLOCK = 4096


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


class Discoverer:
    """Polls every source, applies the drop guard and publishes one snapshot."""

    def __init__(self, settings: Settings, client: Client, metrics: Metrics, logger: logging.Logger,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._client = client
        self._metrics = metrics
        self._log = logger
        self._clock = clock
        self._file = (FilePublisher(settings.targets_file, on_restore=self._file_restored)
                      if settings.targets_file else None)
        self._labels: dict[str, tuple[tuple[str, str], ...]] = {}
        self._states: dict[str, _SourceState] = {}
        for source in settings.sources:
            self._add_state(source)
        self._snapshot: Snapshot | None = None
        self._publish_lock = asyncio.Lock()
        self._refresh: asyncio.Future[list[PollResult]] | None = None
        self.changes: deque[Change] = deque(maxlen=RECENT_CHANGES)
        metrics.update_interval.set(settings.update_interval)
        self._stop: asyncio.Event | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_publish = 0.0  # monotonic time of the last publish (the file's health is checked then)
        self._sources_stamp = sources.file_stamp(settings.sources_file) if settings.sources_file else None
        self._sources_digest: str | None = None
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Future[bool]] = set()
        if settings.sources_file:
            metrics.sources_reload_ok.set(1)

    def _add_labels(self, source: Source) -> None:
        """The group's labels: TARGET_LABELS, then the source's own labels (which win), then `source`."""
        s = self.settings
        self._labels[source.name] = group_labels(source.name, s.metrics_path,
                                                 tuple({**dict(s.target_labels), **dict(source.labels)}.items()))

    def _add_state(self, source: Source) -> _SourceState:
        s = self.settings
        self._add_labels(source)
        st = self._states[source.name] = _SourceState(
            source, DropGuard(s.max_drop_ratio, s.drop_confirmations, window=s.drop_window, hold=s.drop_hold),
            self._metrics.init_source(source.name))
        return st

    # --- read side -------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The published snapshot; None until a good poll or a loaded file."""
        return self._snapshot

    def status(self) -> tuple[SourceStatus, ...]:
        return tuple(
            SourceStatus(st.source.name, st.source.display_url, len(st.group.targets) if st.group else None,
                         st.last_poll, st.last_result, st.last_success, st.last_error,
                         len(st.guard.pending) if st.guard.pending is not None else None, st.guard.seen,
                         st.guard.since, st.guard.release)
            for st in self._states.values()
        )

    @property
    def file(self) -> FilePublisher | None:
        """The targets file's publisher (the CLI claims and watches it); None when TARGETS_FILE is empty."""
        return self._file

    def _file_restored(self, why: str) -> None:
        """The published file vanished or changed under us and was rewritten from the snapshot."""
        self._metrics.file_restores.inc()
        event(self._log, logging.WARNING, "targets file changed under sensor-sd, rewritten from the snapshot",
              file=str(self.settings.targets_file), found=why)

    # --- start-up --------------------------------------------------------

    def load_file(self) -> bool:
        """Take an existing targets file as last known good; True when one was loaded."""
        if self._file is None:
            return False
        try:
            data = self._file.load()
            if data is None:
                return False
            groups = parse_file(data)
        except (PublishError, ValueError) as exc:
            # A corrupt file is reported and left in place for a human to look at.
            self._metrics.publish_errors.labels(output="file_load").inc()
            event(self._log, logging.ERROR, "existing targets file unusable, not loaded",
                  file=str(self._file.path), error=str(exc))
            return False
        loaded = 0
        for group in groups:
            st = self._states.get(group.source)
            if st is not None and st.group is None:
                targets = self._validate_loaded(group)
                st.group = TargetGroup(group.source, targets, self._labels[group.source])
                st.m.targets.set(len(targets))
                loaded += len(targets)
        self._snapshot = Snapshot.build(self._groups())
        event(self._log, logging.INFO, "loaded targets file as last known good", file=str(self._file.path),
              targets=loaded)
        return True

    def _validate_loaded(self, group: TargetGroup) -> tuple[str, ...]:
        """A loaded group's targets validated like a poll's: canonical, sorted, deduplicated (as `diff` expects).

        The file may be older than today's rules or edited by hand; what the
        validation drops is counted and logged, never served.
        """
        validated = validate_targets(group.targets, self.settings.metrics_port)
        for reason, count in validated.invalid.items():
            self._metrics.invalid.labels(source=group.source, reason=reason).inc(count)
        if validated.invalid:
            event(self._log, logging.WARNING, "invalid entries in the targets file dropped", source=group.source,
                  file=str(self._file.path) if self._file else "", invalid=dict(validated.invalid),
                  examples=[f"{r}: {e}" for r, e in validated.examples])
        return validated.targets

    # --- polling ---------------------------------------------------------

    async def poll(self, name: str, *, force: bool = False, dry_run: bool = False) -> PollResult:
        """Poll one source and update its last-known-good group (no publishing).

        `dry_run` (for `sensor-sd check`): fetch, validate and ask the guard, change nothing.
        """
        st = self._states[name]
        async with st.lock:
            started = time.perf_counter()
            try:
                return await self._poll_locked(st, force, dry_run)
            except Exception as exc:  # the fence: a bug of ours fails this poll, never the daemon
                st.validators = Validators()  # fetch the whole body next time, not a 304 for a list never applied
                return self._failed(st, InternalError(_describe_fault(exc)), time.perf_counter() - started, exc)

    async def _poll_locked(self, st: _SourceState, force: bool, dry_run: bool = False) -> PollResult:
        name = st.source.name
        m = self._metrics
        started = time.perf_counter()
        st.last_poll = self._clock()
        try:
            response = await self._client.fetch(st.source, st.validators)
            duration = time.perf_counter() - started
            st.m.request_duration.observe(duration)
            validators = response.validators
            current = st.group.targets if st.group else None
            changes: tuple[tuple[str, ...], tuple[str, ...]] | None = None
            if response.body is None:
                validated = None
            else:
                # The body leaves `response` in a box so the thread can free it once decoded (16 MB at 1M hosts);
                # validation and the diff share one trip to the thread.
                box = [response.body]
                del response
                validated, changes = await asyncio.to_thread(self._validate_and_diff, box, current)
        except InventoryError as exc:
            duration = time.perf_counter() - started
            st.m.request_duration.observe(duration)
            return self._failed(st, exc, duration)
        st.validators = validators
        self._recovered(st)
        st.last_success = self._clock()
        st.last_error = None
        st.m.inventory_up.set(1)
        st.m.last_success.set(st.last_success)
        if validated is not None:
            for reason, count in validated.invalid.items():
                m.invalid.labels(source=name, reason=reason).inc(count)
            if validated.invalid:
                event(self._log, logging.WARNING, "invalid inventory entries dropped", source=name,
                      invalid=dict(validated.invalid), examples=[f"{r}: {e}" for r, e in validated.examples])
            new = validated.targets
        elif st.guard.pending is not None:
            new = st.guard.pending  # 304 while a drop is held: one more sighting of the same list
        else:
            return self._finish(st, "unchanged", (), (), duration)
        if changes is None:  # a 304 while a drop is held
            changes = await asyncio.to_thread(diff, current or (), new)
        added, removed = changes
        now = self._clock()
        if dry_run:  # the guard's answer for this list, its state untouched
            verdict = st.guard.decide(current, new, len(removed), now)
            result = ("held" if not verdict.apply else
                      "unchanged" if st.group is not None and not added and not removed else "success")
            return PollResult(name, result, len(new), added, removed, duration,
                              guard=verdict if verdict.drop else None)
        decision = st.guard.check(current, new, len(removed), now) if not force else None
        if decision is not None and not decision.apply:
            st.m.guard_active.set(1)
            event(self._log, logging.WARNING, "large drop held back by the drop guard", source=name,
                  result="held", current=len(current or ()), new=len(new), removed=len(removed),
                  largest_in_window=decision.baseline, seen=decision.seen,
                  confirmations=self.settings.drop_confirmations, held_since=decision.since,
                  release_not_before=decision.release, removed_names=list(removed[:_LOG_NAMES]))
            return self._finish(st, "held", (), (), duration, decision)
        if force:
            st.guard.accept()
        st.m.guard_active.set(0)
        if st.group is not None and not added and not removed:
            return self._finish(st, "unchanged", (), (), duration)
        st.group = TargetGroup(name, new, self._labels[name])
        st.m.targets.set(len(new))
        m.added.inc(len(added))
        m.removed.inc(len(removed))
        self.changes.append(Change(now, name, len(added), len(removed), added[:CHANGE_NAMES], removed[:CHANGE_NAMES],
                                   first=current is None))
        return self._finish(st, "success", added, removed, duration, decision if decision and decision.drop else None)

    def _validate_and_diff(self, box: list[bytes], current: tuple[str, ...] | None
                           ) -> tuple[Validated, tuple[tuple[str, ...], tuple[str, ...]]]:
        """In a worker thread: the body's validated targets and their diff against `current`."""
        validated = validate_body(box, self.settings.metrics_port)
        if validated is None:
            validated = validate(parse_body(box.pop()), self.settings.metrics_port)
        return validated, diff(current or (), validated.targets)

    def _failed(self, st: _SourceState, exc: InventoryError, duration: float,
                fault: BaseException | None = None) -> PollResult:
        name = st.source.name
        st.failures += 1
        st.last_result = "error"
        st.last_error = f"{exc.reason}: {exc}"
        st.m.syncs["error"].inc()
        self._metrics.errors.labels(source=name, reason=exc.reason).inc()
        st.m.inventory_up.set(0)
        kept = len(st.group.targets) if st.group else 0
        self._log_failure(st, exc, duration, fault)
        return PollResult(name, "error", kept, duration=duration, error=st.last_error, reason=exc.reason)

    def _log_failure(self, st: _SourceState, exc: InventoryError, duration: float,
                     fault: BaseException | None) -> None:
        """One line when an outage starts, a reminder at most every OUTAGE_REMINDER_SECONDS, not one per poll.

        An internal fault is logged with its traceback once per distinct fault
        (type and place), so a bug hit on every poll does not flood the log.
        """
        now = self._clock()
        if st.failures == 1 or st.outage_since is None:
            st.outage_since = now
        traceback = fault is not None and _first_sighting(st, fault)
        first = st.failures == 1
        new_reason = exc.reason not in st.outage_reasons  # e.g. 503 turning into time-outs: logged once
        st.outage_reasons.add(exc.reason)
        if not (first or new_reason or traceback or st.reminded is None
                or now - st.reminded >= OUTAGE_REMINDER_SECONDS):
            return
        st.reminded = now
        known = {"kept": len(st.group.targets)} if st.group is not None else {}  # never claim what never existed
        if first:
            msg = ("inventory poll failed, keeping last known good targets" if known else
                   "inventory poll failed, no targets known yet")
        else:
            msg = "inventory still failing, keeping last known good targets" if known else \
                "inventory still failing, no targets known yet"
        fields: dict[str, object] = {
            "source": st.source.name, "url": st.source.display_url, "result": "error", "reason": exc.reason,
            "error": str(exc), **known, "failures": st.failures, "duration": round(duration, 4)}
        if not first:
            fields.update(failing_since=st.outage_since, failing_for=round(now - st.outage_since, 1))
        level = logging.ERROR if fault is not None else logging.WARNING
        self._log.log(level, msg, extra=fields, exc_info=fault if traceback else None)

    def _recovered(self, st: _SourceState) -> None:
        """The first good poll after an outage: one line with its length, and the outage state reset."""
        if st.failures and st.outage_since is not None:
            event(self._log, logging.INFO, "inventory recovered", source=st.source.name,
                  url=st.source.display_url, failures=st.failures,
                  failed_for=round(self._clock() - st.outage_since, 1))
        st.failures = 0
        st.outage_since = st.reminded = None
        st.outage_reasons.clear()

    def _finish(self, st: _SourceState, result: str, added: tuple[str, ...], removed: tuple[str, ...],
                duration: float, guard: Decision | None = None) -> PollResult:
        name = st.source.name
        st.last_result = result
        st.m.syncs[result].inc()
        count = len(st.group.targets) if st.group else 0
        level = logging.INFO if result == "success" else logging.DEBUG
        fields: dict[str, object] = {"source": name, "result": result, "targets": count,
                                     "duration": round(duration, 4)}
        if added or removed:
            fields.update(added=len(added), removed=len(removed), added_names=list(added[:_LOG_NAMES]),
                          removed_names=list(removed[:_LOG_NAMES]))
        if result != "held":
            event(self._log, level, "inventory synced", **fields)
        return PollResult(name, result, count, added, removed, duration, guard=guard)

    # --- publishing ------------------------------------------------------

    def _groups(self) -> Iterable[TargetGroup]:
        """Groups in order of source name, whatever the order of the configuration: replicas render the same bytes."""
        return (st.group for _, st in sorted(self._states.items()) if st.group is not None)

    async def publish(self) -> Snapshot | None:
        """Build the snapshot from every source's group and write the file if it changed."""
        async with self._publish_lock:
            groups = tuple(self._groups())
            if not groups and self._snapshot is None:
                return None  # nothing good yet: never publish an empty list by accident
            if self._snapshot is None or self._snapshot.groups != groups:
                self._snapshot = await asyncio.to_thread(Snapshot.build, groups)
            if self._file is not None:
                try:
                    if await asyncio.to_thread(self._file.publish, self._snapshot.body):
                        self._metrics.file_writes.inc()
                        event(self._log, logging.DEBUG, "targets file written", file=str(self._file.path),
                              targets=self._snapshot.count)
                except PublishError as exc:
                    self._metrics.publish_errors.labels(output="file").inc()
                    event(self._log, logging.ERROR, "targets file not written, previous file kept", error=str(exc))
            self._last_publish = time.monotonic()
            return self._snapshot

    async def _publish_if_due(self, st: _SourceState, result: PollResult) -> None:
        """Publish after a change; after a 304 or an unchanged list only to check the file once per interval.

        Publishing after every poll cost a thread hop and a stat per source per interval
        (1,000 stores: 33 a second) for a snapshot that had not changed.
        """
        now = time.monotonic()
        if result.result == "success" or (
                result.result == "unchanged" and now - self._last_publish >= min(self.settings.update_interval, 30.0)):
            self._last_publish = now  # before the await: the polls finishing meanwhile need not publish too
            await self._publish_fenced(st)

    async def poll_all(self, *, force: bool = False) -> list[PollResult]:
        """Poll every source concurrently, then publish once."""
        results = await asyncio.gather(*(self.poll(name, force=force) for name, st in list(self._states.items())
                                         if not st.retiring))
        good = [self._states[r.source] for r in results if r.result in ("success", "unchanged")]
        if good:
            await self._publish_fenced(*good)
        return list(results)

    async def refresh(self) -> list[PollResult]:
        """Poll now and return after publishing; concurrent callers share one poll."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self.poll_all())
        return await asyncio.shield(self._refresh)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every source on its own schedule until `stop` is set; watch SOURCES_FILE meanwhile."""
        self._stop = stop
        for name in self._states:
            self._start_loop(name)
        watch = asyncio.ensure_future(self._watch_sources(stop)) if self.settings.sources_file else None
        try:
            await stop.wait()
        finally:
            tasks = [*self._tasks.values(), *([watch] if watch else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start_loop(self, name: str) -> None:
        assert self._stop is not None
        task = self._tasks[name] = asyncio.ensure_future(self._loop(name, self._stop))
        task.add_done_callback(functools.partial(self._loop_ended, name))

    def _loop_ended(self, name: str, task: asyncio.Task[None]) -> None:
        """A source's loop ended: normal when stopping or retired; after a crash, restarted one interval later.

        Each source runs in a task of its own, so an exception that escaped a poll would otherwise
        silently stop that source alone while the others go on.
        """
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if task.cancelled() or task.exception() is None or self._stop is None or self._stop.is_set():
            return
        st = self._states.get(name)
        if st is None:
            return
        exc = task.exception()
        self._log.error("source loop crashed, restarting it after one interval", exc_info=exc,
                        extra={"source": name})
        asyncio.get_running_loop().call_later(
            self._delay(st), lambda: None if name in self._tasks or self._states.get(name) is not st
            or self._stop is None or self._stop.is_set() else self._start_loop(name))

    async def _loop(self, name: str, stop: asyncio.Event) -> None:
        st = self._states[name]
        while not stop.is_set() and self._states.get(name) is st:
            if st.retiring:
                if await self._retire_step(st):
                    return
            else:
                result = await self.poll(name)
                await self._publish_if_due(st, result)
            # A plain sleep: `run` cancels every loop when `stop` is set. wait_for(stop.wait()) cost a task,
            # a future and a timer per poll (a fifth of the daemon's CPU at 1,000 stores answering 304).
            await asyncio.sleep(self._delay(st))

    # --- SOURCES_FILE: reload and retirement ---------------------------------

    def request_reload(self) -> None:
        """SIGHUP: re-read SOURCES_FILE in the background (a signal handler must not block)."""
        if not self.settings.sources_file:
            event(self._log, logging.INFO, "SIGHUP ignored: no SOURCES_FILE to reload")
            return
        task = asyncio.ensure_future(self.reload("SIGHUP"))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _watch_sources(self, stop: asyncio.Event) -> None:
        """Reload when the file changes: a stat per check, the bytes read only when the stat differs."""
        path = self.settings.sources_file
        assert path is not None
        period = min(self.settings.update_interval, SOURCES_CHECK_SECONDS)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), period)
            except asyncio.TimeoutError:
                pass
            if not stop.is_set() and sources.file_stamp(path) != self._sources_stamp:
                await self.reload("file changed")

    async def reload(self, trigger: str) -> bool:
        """Re-read SOURCES_FILE and apply it; an invalid file is refused whole and the running sources stay."""
        path = self.settings.sources_file
        assert path is not None
        async with self._reload_lock:
            self._sources_stamp = sources.file_stamp(path)  # before reading: a write during the read is seen next time
            try:
                loaded = await asyncio.to_thread(sources.read, path)
                sources.check_global_token(path, loaded.sources, self.settings.inventory_token_file)
            except ConfigError as exc:
                self._metrics.sources_reloads.labels(result="failure").inc()
                self._metrics.sources_reload_ok.set(0)
                event(self._log, logging.ERROR, "sources file refused, running sources kept", trigger=trigger,
                      error=str(exc), sources=len(self._states))
                return False
            self._metrics.sources_reloads.labels(result="success").inc()
            self._metrics.sources_reload_ok.set(1)
            if loaded.digest == self._sources_digest:
                event(self._log, logging.INFO, "sources file reloaded, no change", trigger=trigger)
                return True
            self._sources_digest = loaded.digest
            relabeled = self._apply_sources(loaded.sources, trigger)
        if relabeled:
            await self.publish()
        return True

    def _apply_sources(self, new_sources: tuple[Source, ...], trigger: str) -> bool:
        """Start new sources, update changed ones in place, retire removed ones; True when labels changed."""
        wanted = {s.name: s for s in new_sources}
        added: list[str] = []
        changed: list[str] = []
        retired = [name for name, st in self._states.items() if name not in wanted and not st.retiring]
        for name in retired:
            self._states[name].retiring = True
        relabeled = False
        for source in new_sources:
            st = self._states.get(source.name)
            if st is None:
                self._add_state(source)
                added.append(source.name)
                if self._stop is not None:
                    self._start_loop(source.name)
                continue
            if st.retiring:  # back before its targets were gone: a fresh GET decides, nothing held stays
                st.retiring = False
                st.guard.reset()
                st.m.guard_active.set(0)
                st.validators = Validators()
                changed.append(source.name)
            if st.source == source:
                continue
            old = st.source
            if (old.url, old.token_file, old.ca_file) != (source.url, source.token_file, source.ca_file):
                st.validators = Validators()  # another endpoint or identity: its ETag means nothing here
            st.source = source
            self._add_labels(source)
            if st.group is not None and st.group.labels != self._labels[source.name]:
                st.group = TargetGroup(source.name, st.group.targets, self._labels[source.name])
                relabeled = True
            changed.append(source.name)
        self.settings = replace(self.settings, sources=new_sources)
        self._client.forget_cached()
        event(self._log, logging.INFO, "sources file reloaded", trigger=trigger, sources=len(new_sources),
              added=len(added), changed=len(changed), removed=len(retired), added_names=added[:_LOG_NAMES],
              changed_names=changed[:_LOG_NAMES], removed_names=retired[:_LOG_NAMES])
        return relabeled

    async def _retire_step(self, st: _SourceState) -> bool:
        """One 'poll' of a removed source: its targets leave through the drop guard; True once it is gone."""
        name = st.source.name
        async with st.lock:
            if not st.retiring:
                return False
            current = st.group.targets if st.group else ()
            now = self._clock()
            decision = st.guard.check(current, (), len(current), now) if current else None
            if decision is not None and not decision.apply:
                st.last_result = "held"
                st.m.guard_active.set(1)
                st.m.syncs["held"].inc()
                event(self._log, logging.WARNING, "removed source's targets held back by the drop guard",
                      source=name, result="held", current=len(current), seen=decision.seen,
                      confirmations=self.settings.drop_confirmations, held_since=decision.since,
                      release_not_before=decision.release)
                return False
            del self._states[name]
            del self._labels[name]
            self._metrics.remove_source(name)
            if current:
                self._metrics.removed.inc(len(current))
                self.changes.append(Change(now, name, 0, len(current), (), current[:CHANGE_NAMES]))
            event(self._log, logging.INFO, "removed source's targets withdrawn", source=name, removed=len(current))
        await self.publish()
        return True

    async def _publish_fenced(self, *states: _SourceState) -> None:
        """`publish`, with a bug of ours in it counted and logged as an internal fault instead of raising.

        Counted for the sources whose polls led to it; the traceback is logged
        once per distinct fault, like a poll's.
        """
        try:
            await self.publish()
        except Exception as exc:  # the fence; the previous file and snapshot stay
            fresh = [_first_sighting(st, exc) for st in states]  # every source records it
            for st in states:
                self._metrics.errors.labels(source=st.source.name, reason=InternalError.reason).inc()
            if any(fresh):
                self._log.error("publishing failed with an internal error, previous targets kept",
                                extra={"sources": [st.source.name for st in states], "error": _describe_fault(exc)},
                                exc_info=exc)

    def _delay(self, st: _SourceState) -> float:
        """The source's interval, or after failures exponential backoff with full jitter capped by it."""
        interval = st.source.interval or self.settings.update_interval
        if st.retiring:
            return interval
        return backoff_delay(interval, st.failures)


def backoff_delay(interval: float, failures: int) -> float:
    """The interval, or after failures exponential backoff with full jitter capped by it.

    The exponent is capped, so any number of failures (a weekend-long
    outage, or millions of polls at a tiny interval) stays finite arithmetic.
    """
    if failures <= 0:
        return interval
    cap = min(interval, min(1.0, interval) * 2.0 ** min(failures - 1, BACKOFF_MAX_EXPONENT))
    return max(cap / 10, random.uniform(0, cap))


_FAULTS_REMEMBERED = 16  # distinct internal faults logged with a traceback per source; then the reminders only


def _describe_fault(exc: BaseException) -> str:
    """One bounded line for an unexpected exception (its text may be huge, multi-line, or fail to render)."""
    try:
        text = " ".join(str(exc)[:1000].split())[:200]
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails is still a fault to report
        text = "(no message)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_sighting(st: _SourceState, exc: BaseException) -> bool:
    """True the first time this fault (type and innermost place) is seen for the source: log its traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    signature = f"{type(exc).__qualname__}@{where}"
    if signature in st.faults_logged or len(st.faults_logged) >= _FAULTS_REMEMBERED:
        return False
    st.faults_logged.add(signature)
    return True
