"""The scheduler: one loop per source, wiring poller -> store -> publishers, with the observer beside.

Each source keeps its own last-known-good group in the store; a failed or
held poll leaves that group untouched, so the snapshot (and with it the file
and /targets) only ever changes to another good state. This module decides
when to poll (interval, backoff, refresh coalescing, SOURCES_FILE reload)
and what to do with a result; how to poll is `poller`, what to count and log
is `observe`, what is published is `store`, where it goes is `publish` and
`server`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace

from sensor_sd import sources
from sensor_sd.config import Settings
from sensor_sd.sources import Source
from sensor_sd.errors import ConfigError
from sensor_sd.guard import DropGuard
from sensor_sd.inventory import Client
from sensor_sd.log import event
from sensor_sd.metrics import Metrics
from sensor_sd.observe import Observer
from sensor_sd.poller import GOOD, Poller, PollResult, Result, SourceStatus
from sensor_sd.publish.file import FileOutput
from sensor_sd.store import Change, Store
from sensor_sd.decode import validate_targets
from sensor_sd.targets import Snapshot, TargetGroup, group_labels

BACKOFF_MAX_EXPONENT = 30  # 2**30 s is far above any UPDATE_INTERVAL: the cap, not the exponent, decides
SOURCES_CHECK_SECONDS = 5.0  # how often SOURCES_FILE is stat'ed for a change (or UPDATE_INTERVAL if shorter)


class _SourceState:
    """Mutable per-source state; private to the Discoverer, touched only from its event loop."""

    def __init__(self, poller: Poller, labels: tuple[tuple[str, str], ...]) -> None:
        self.poller = poller
        self.labels = labels  # the group's labels
        self.retiring = False  # removed from SOURCES_FILE: its targets leave through the drop guard
        self.lock = asyncio.Lock()

    @property
    def source(self) -> Source:
        return self.poller.source


class Discoverer:
    """Polls every source on its schedule, applies the good results to the store and publishes it.

    Built with the store and the file output of `settings` unless given them; the HTTP server
    reads `store`, never the discoverer.
    """

    def __init__(self, settings: Settings, client: Client, metrics: Metrics, logger: logging.Logger,
                 *, clock: Callable[[], float] = time.time, store: Store | None = None,
                 file: FileOutput | None = None) -> None:
        self.settings = settings
        self._client = client
        self._log = logger
        self._clock = clock
        self.observer = Observer(metrics, logger, confirmations=settings.drop_confirmations, clock=clock)
        if store is None:
            store = Store()
            if file is None and settings.targets_file:
                file = FileOutput(settings.targets_file, metrics, logger, interval=settings.update_interval)
            if file is not None:
                store.subscribe(file)
        self.store = store
        self._file = file
        self._states: dict[str, _SourceState] = {}
        for source in settings.sources:
            self._add_state(source)
        self._refresh: asyncio.Future[list[PollResult]] | None = None
        metrics.update_interval.set(settings.update_interval)
        self._stop: asyncio.Event | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sources_stamp = sources.file_stamp(settings.sources_file) if settings.sources_file else None
        self._sources_digest: str | None = None
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Future[bool]] = set()
        if settings.sources_file:
            metrics.sources_reload_ok.set(1)

    def _labels(self, source: Source) -> tuple[tuple[str, str], ...]:
        """The group's labels: TARGET_LABELS, then the source's own labels (which win), then `source`."""
        s = self.settings
        return group_labels(source.name, s.metrics_path, tuple({**dict(s.target_labels), **dict(source.labels)}.items()))

    def _add_state(self, source: Source) -> _SourceState:
        s = self.settings
        guard = DropGuard(s.max_drop_ratio, s.drop_confirmations, window=s.drop_window, hold=s.drop_hold)
        st = self._states[source.name] = _SourceState(
            Poller(source, self._client, guard, s.metrics_port, self._clock), self._labels(source))
        self.observer.track(source)
        return st

    # --- read side -------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The published snapshot (the store's); None until a good poll or a loaded file."""
        return self.store.snapshot

    def status(self) -> tuple[SourceStatus, ...]:
        out = []
        for name, st in self._states.items():
            group = self.store.group(name)
            out.append(st.poller.status(len(group.targets) if group else None))
        return tuple(out)

    @property
    def file(self) -> FileOutput | None:
        """The targets file's output (the CLI claims and keeps it); None when TARGETS_FILE is empty."""
        return self._file

    # --- start-up --------------------------------------------------------

    def load_file(self) -> bool:
        """Take an existing targets file as last known good; True when one was loaded."""
        if self._file is None:
            return False
        groups = self._file.load()
        if groups is None:
            return False
        loaded = 0
        for group in groups:
            st = self._states.get(group.source)
            if st is not None and self.store.group(group.source) is None:
                # Validated like a poll's list (canonical, sorted, deduplicated, as `diff` expects): the file
                # may be older than today's rules or edited by hand; what validation drops is never served.
                validated = validate_targets(group.targets, self.settings.metrics_port)
                self.observer.loaded(group.source, validated, str(self._file.path))
                self.store.put(TargetGroup(group.source, validated.targets, st.labels))
                loaded += len(validated.targets)
        self.store.seed(self._file.publisher.written)
        event(self._log, logging.INFO, "loaded targets file as last known good", file=str(self._file.path),
              targets=loaded)
        return True

    # --- polling ---------------------------------------------------------

    async def poll(self, name: str, *, force: bool = False, dry_run: bool = False) -> PollResult:
        """Poll one source, apply a new list to its group in the store and observe the result (no publishing).

        `dry_run` (for `sensor-sd check`): fetch, validate and ask the guard, change nothing.
        """
        st = self._states[name]
        async with st.lock:
            group = self.store.group(name)
            result = await st.poller.poll(group.targets if group else None, force=force, dry_run=dry_run)
            if result.result is Result.SUCCESS and not dry_run:
                assert result.new is not None and result.answered is not None
                self.store.put(TargetGroup(name, result.new, st.labels),
                               Change.of(result.answered, name, result.added, result.removed, first=group is None))
            self.observer.polled(result)
            return result

    async def publish(self) -> Snapshot | None:
        """Build the snapshot from every source's group and hand it to the publishers (the file)."""
        return await self.store.publish()

    async def poll_all(self, *, force: bool = False) -> list[PollResult]:
        """Poll every source concurrently, then publish once."""
        results = await asyncio.gather(*(self.poll(name, force=force) for name, st in list(self._states.items())
                                         if not st.retiring))
        good = [r.source for r in results if r.result in GOOD]
        if good:
            await self._publish_fenced(good)
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
                # After a new list, or a good poll while an earlier publish failed; never merely to check the
                # file (that is `FileOutput.keep`'s): 1,000 stores answering 304 cost no thread hop or stat each.
                if result.result is Result.SUCCESS or (result.result in GOOD and self.store.behind):
                    await self._publish_fenced([name])
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
                self.observer.reload_refused(trigger, str(exc), running=len(self._states))
                return False
            if loaded.digest == self._sources_digest:
                self.observer.reloaded(trigger, len(loaded.sources))
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
                st.poller.guard.reset()
                self.observer.reset_guard(source.name)
                st.poller.forget_validators()
                changed.append(source.name)
            if st.source == source:
                continue
            old = st.source
            if (old.url, old.token_file, old.ca_file) != (source.url, source.token_file, source.ca_file):
                st.poller.forget_validators()  # another endpoint or identity: its ETag means nothing here
            st.poller.source = source
            self.observer.track(source)
            st.labels = self._labels(source)
            group = self.store.group(source.name)
            if group is not None and group.labels != st.labels:
                self.store.put(TargetGroup(source.name, group.targets, st.labels))
                relabeled = True
            changed.append(source.name)
        self.settings = replace(self.settings, sources=new_sources)
        self._client.forget_cached()
        self.observer.reloaded(trigger, len(new_sources), added, changed, retired)
        return relabeled

    async def _retire_step(self, st: _SourceState) -> bool:
        """One 'poll' of a removed source: its targets leave through the drop guard; True once it is gone."""
        name = st.source.name
        async with st.lock:
            if not st.retiring:
                return False
            group = self.store.group(name)
            result = st.poller.retire(group.targets if group else ())
            if result.result is not Result.HELD:
                del self._states[name]
                assert result.answered is not None
                self.store.remove(name, Change.of(result.answered, name, (), result.removed) if result.removed
                                  else None)
            self.observer.polled(result)
            if result.result is Result.HELD:
                return False
        await self.publish()
        return True

    async def _publish_fenced(self, names: list[str]) -> None:
        """`publish`, with a bug of ours in it counted and logged as an internal fault instead of raising.

        Counted for the sources whose polls led to it; the traceback is logged
        once per distinct fault, like a poll's.
        """
        try:
            await self.publish()
        except Exception as exc:  # the fence; the previous file and snapshot stay
            self.observer.publish_failed(names, exc)

    def _delay(self, st: _SourceState) -> float:
        """The source's interval, or after failures exponential backoff with full jitter capped by it."""
        interval = st.source.interval or self.settings.update_interval
        if st.retiring:
            return interval
        return backoff_delay(interval, st.poller.failures)


def backoff_delay(interval: float, failures: int) -> float:
    """The interval, or after failures exponential backoff with full jitter capped by it.

    The exponent is capped, so any number of failures (a weekend-long
    outage, or millions of polls at a tiny interval) stays finite arithmetic.
    """
    if failures <= 0:
        return interval
    cap = min(interval, min(1.0, interval) * 2.0 ** min(failures - 1, BACKOFF_MAX_EXPONENT))
    return max(cap / 10, random.uniform(0, cap))
