"""The observer: poll results, and the few other events of the sources, into metrics and log lines.

Nothing else counts or logs a poll's outcome, so the `result` values, the
outage lines (one when it starts, a reminder at most every
OUTAGE_REMINDER_SECONDS, a new failure reason once per outage, one on
recovery), the series each poll touches and the lines of a SOURCES_FILE
reload are decided here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sensor_sd.sources import Source
from sensor_sd.log import event
from sensor_sd.metrics import Metrics, SourceMetrics
from sensor_sd.poller import PollResult, Result, describe_fault
from sensor_sd.decode import Validated

OUTAGE_REMINDER_SECONDS = 300.0  # while a source fails, one reminder line at most this often
LOG_NAMES = 10  # target names per log line; the counts are exact
_FAULTS_REMEMBERED = 16  # distinct internal faults logged with a traceback per source; then the reminders only


@dataclass(slots=True)
class _Outage:
    """What the observer remembers of one source between polls (touched only from the event loop)."""

    metrics: SourceMetrics
    url: str  # shown without credentials
    failures: int = 0  # failed polls in a row, as of the last result
    since: float | None = None  # first failed poll of the current outage
    reminded: float | None = None  # last time the outage was logged
    reasons: set[str] = field(default_factory=set)  # reasons already logged in this outage (a new one is news)
    faults: set[str] = field(default_factory=set)  # signatures of internal faults already logged with a traceback


class Observer:
    """Turns `PollResult`s and source events into `sensor_sd_*` metrics and one log line per event."""

    def __init__(self, metrics: Metrics, logger: logging.Logger, *, confirmations: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._log = logger
        self._confirmations = confirmations
        self._clock = clock
        self._sources: dict[str, _Outage] = {}

    def track(self, source: Source) -> None:
        """A new source: export every series from the start, so rate() and absent() behave; a changed one: its URL."""
        known = self._sources.get(source.name)
        if known is None:
            self._sources[source.name] = _Outage(self._metrics.init_source(source.name), source.display_url)
        else:
            known.url = source.display_url

    def loaded(self, name: str, validated: Validated, file: str) -> None:
        """A source's group taken from the targets file at start; what validation dropped is counted and logged."""
        for reason, count in validated.invalid.items():
            self._metrics.invalid.labels(source=name, reason=reason).inc(count)
        if validated.invalid:
            event(self._log, logging.WARNING, "invalid entries in the targets file dropped", source=name,
                  file=file, invalid=dict(validated.invalid), examples=[f"{r}: {e}" for r, e in validated.examples])
        self._sources[name].metrics.targets.set(len(validated.targets))

    def reset_guard(self, name: str) -> None:
        """A retiring source came back: nothing is held any more."""
        self._sources[name].metrics.guard_active.set(0)

    def polled(self, r: PollResult) -> None:
        """One poll's metrics and log lines, in the order an operator reads them."""
        o = self._sources[r.source]
        if r.retiring:
            self._retired(r, o)
            return
        m = o.metrics
        if r.request is not None:
            m.request_duration.observe(r.request)
        if r.result is Result.ERROR:
            self._failed(r, o)
            return
        self._recovered(r, o)
        m.inventory_up.set(1)
        if r.answered is not None:
            m.last_success.set(r.answered)
        for reason, count in r.invalid:
            self._metrics.invalid.labels(source=r.source, reason=reason).inc(count)
        if r.invalid:
            event(self._log, logging.WARNING, "invalid inventory entries dropped", source=r.source,
                  invalid=dict(r.invalid), examples=[f"{reason}: {e}" for reason, e in r.examples])
        if r.dry_run:
            return  # `check`: a verdict, nothing applied; no sync to count or log
        if r.result is Result.HELD:
            assert r.guard is not None
            m.guard_active.set(1)
            event(self._log, logging.WARNING, "large drop held back by the drop guard", source=r.source,
                  result=r.result.value, current=r.previous or 0,
                  new=(r.previous or 0) + len(r.added) - len(r.removed), removed=len(r.removed),
                  largest_in_window=r.guard.baseline, seen=r.guard.seen, confirmations=self._confirmations,
                  held_since=r.guard.since, release_not_before=r.guard.release,
                  removed_names=list(r.removed[:LOG_NAMES]))
        else:
            m.guard_active.set(0)
        if r.result is Result.SUCCESS:
            m.targets.set(r.targets)
            self._metrics.added.inc(len(r.added))
            self._metrics.removed.inc(len(r.removed))
        m.syncs[r.result].inc()
        if r.result is not Result.HELD:
            fields: dict[str, object] = {"source": r.source, "result": r.result.value, "targets": r.targets,
                                         "duration": round(r.duration, 4)}
            if r.added or r.removed:
                fields.update(added=len(r.added), removed=len(r.removed), added_names=list(r.added[:LOG_NAMES]),
                              removed_names=list(r.removed[:LOG_NAMES]))
            event(self._log, logging.INFO if r.result is Result.SUCCESS else logging.DEBUG, "inventory synced",
                  **fields)

    def _retired(self, r: PollResult, o: _Outage) -> None:
        """A removed source's step: held back by the guard, or withdrawn (its series dropped)."""
        if r.result is Result.HELD:
            assert r.guard is not None
            o.metrics.guard_active.set(1)
            o.metrics.syncs[Result.HELD].inc()
            event(self._log, logging.WARNING, "removed source's targets held back by the drop guard",
                  source=r.source, result=r.result.value, current=r.previous or 0, seen=r.guard.seen,
                  confirmations=self._confirmations, held_since=r.guard.since, release_not_before=r.guard.release)
            return
        del self._sources[r.source]
        self._metrics.remove_source(r.source)
        if r.removed:
            self._metrics.removed.inc(len(r.removed))
        event(self._log, logging.INFO, "removed source's targets withdrawn", source=r.source, removed=len(r.removed))

    def _failed(self, r: PollResult, o: _Outage) -> None:
        """Counted always; logged when an outage starts, at most every OUTAGE_REMINDER_SECONDS, on a new reason.

        An internal fault is logged with its traceback once per distinct fault
        (type and place), so a bug hit on every poll does not flood the log.
        """
        assert r.reason is not None
        o.failures = r.failures
        o.metrics.syncs[Result.ERROR].inc()
        self._metrics.errors.labels(source=r.source, reason=r.reason).inc()
        o.metrics.inventory_up.set(0)
        now = self._clock()
        if r.failures == 1 or o.since is None:
            o.since = now
        traceback = r.fault is not None and _first_sighting(o, r.fault)
        first = r.failures == 1
        new_reason = r.reason not in o.reasons  # e.g. 503 turning into time-outs: logged once
        o.reasons.add(r.reason)
        if not (first or new_reason or traceback or o.reminded is None
                or now - o.reminded >= OUTAGE_REMINDER_SECONDS):
            return
        o.reminded = now
        known = {"kept": r.previous} if r.previous is not None else {}  # never claim what never existed
        if first:
            msg = ("inventory poll failed, keeping last known good targets" if known else
                   "inventory poll failed, no targets known yet")
        else:
            msg = "inventory still failing, keeping last known good targets" if known else \
                "inventory still failing, no targets known yet"
        error = r.error or ""  # "<reason>: <message>"; the line has the two apart
        fields: dict[str, object] = {
            "source": r.source, "url": o.url, "result": Result.ERROR.value, "reason": r.reason,
            "error": error[len(r.reason) + 2:] if error.startswith(f"{r.reason}: ") else error, **known,
            "failures": r.failures, "duration": round(r.duration, 4)}
        if not first:
            fields.update(failing_since=o.since, failing_for=round(now - o.since, 1))
        level = logging.ERROR if r.fault is not None else logging.WARNING
        self._log.log(level, msg, extra=fields, exc_info=r.fault if traceback else None)

    def _recovered(self, r: PollResult, o: _Outage) -> None:
        """The first good answer after an outage: one line with its length, and the outage state reset."""
        if o.failures and o.since is not None:
            event(self._log, logging.INFO, "inventory recovered", source=r.source, url=o.url, failures=o.failures,
                  failed_for=round(self._clock() - o.since, 1))
        o.failures = 0
        o.since = o.reminded = None
        o.reasons.clear()

    def reload_refused(self, trigger: str, error: str, *, running: int) -> None:
        """SOURCES_FILE could not be used: counted, one ERROR line; the running sources stay."""
        self._metrics.sources_reloads.labels(result="failure").inc()
        self._metrics.sources_reload_ok.set(0)
        event(self._log, logging.ERROR, "sources file refused, running sources kept", trigger=trigger,
              error=error, sources=running)

    def reloaded(self, trigger: str, total: int, added: Sequence[str] | None = None,
                 changed: Sequence[str] = (), removed: Sequence[str] = ()) -> None:
        """SOURCES_FILE applied; `added` None: its bytes had not changed."""
        self._metrics.sources_reloads.labels(result="success").inc()
        self._metrics.sources_reload_ok.set(1)
        if added is None:
            event(self._log, logging.INFO, "sources file reloaded, no change", trigger=trigger)
            return
        event(self._log, logging.INFO, "sources file reloaded", trigger=trigger, sources=total,
              added=len(added), changed=len(changed), removed=len(removed), added_names=list(added[:LOG_NAMES]),
              changed_names=list(changed[:LOG_NAMES]), removed_names=list(removed[:LOG_NAMES]))

    def publish_failed(self, names: Iterable[str], exc: BaseException) -> None:
        """A bug of ours while publishing after these sources' polls: counted for each, the traceback logged once."""
        names = list(names)
        fresh = [_first_sighting(self._sources[n], exc) for n in names if n in self._sources]  # each records it
        for name in names:
            self._metrics.errors.labels(source=name, reason="internal").inc()
        if any(fresh):
            self._log.error("publishing failed with an internal error, previous targets kept",
                            extra={"sources": names, "error": describe_fault(exc)}, exc_info=exc)


def _first_sighting(o: _Outage, exc: BaseException) -> bool:
    """True the first time this fault (type and innermost place) is seen for the source: log its traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    signature = f"{type(exc).__qualname__}@{where}"
    if signature in o.faults or len(o.faults) >= _FAULTS_REMEMBERED:
        return False
    o.faults.add(signature)
    return True
