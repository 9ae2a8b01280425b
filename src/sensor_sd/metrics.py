"""The SD's own metrics, on a registry of its own (no global state).

prometheus_client is imported only when metrics are made for export: its
package import brings its HTTP exposition (http.server, wsgiref, urllib),
which is a good part of a one-shot run that exports nothing (`once`,
`check` use `Discarded`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sensor_sd import __version__
from sensor_sd.poller import Result

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

CLOSE_REASONS = ("over_limit", "evicted", "write_timeout")  # why the HTTP server closed a connection
# Inventory requests take ms to seconds; REQUEST_TIMEOUT caps them.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Counting(Protocol):
    """What the code does to a counter (prometheus_client's Counter has it, and so has `_Discard`)."""

    def labels(self, *values: str, **labels: str) -> Counting: ...
    def inc(self, amount: float = 1) -> None: ...


class Setting(Protocol):
    """What the code does to a gauge."""

    def labels(self, *values: str, **labels: str) -> Setting: ...
    def set(self, value: float) -> None: ...


class Observing(Protocol):
    """What the code does to a histogram."""

    def labels(self, *values: str, **labels: str) -> Observing: ...
    def observe(self, amount: float) -> None: ...


class Metrics:
    """All `sensor_sd_*` metrics; one instance per process, passed to who needs it."""

    registry: CollectorRegistry
    syncs: Counting
    request_duration: Observing
    targets: Setting
    added: Counting
    removed: Counting
    last_success: Setting
    inventory_up: Setting
    invalid: Counting
    errors: Counting
    guard_active: Setting
    publish_errors: Counting
    file_writes: Counting
    file_restores: Counting
    update_interval: Setting
    build_info: Setting
    sources_reloads: Counting
    sources_reload_ok: Setting

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            GCCollector,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )

        self.registry = registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        ns = "sensor_sd"
        self.syncs = Counter("syncs", "Inventory polls by source and result (success, unchanged, error, held).",
                             ["source", "result"], namespace=ns, registry=registry)
        self.request_duration = Histogram("inventory_request_duration_seconds", "Duration of inventory requests.",
                                          ["source"], namespace=ns, registry=registry, buckets=_DURATION_BUCKETS)
        self.targets = Gauge("targets", "Targets currently published, by source.", ["source"],
                             namespace=ns, registry=registry)
        self.added = Counter("targets_added", "Targets added to the published set.", namespace=ns, registry=registry)
        self.removed = Counter("targets_removed", "Targets removed from the published set.",
                               namespace=ns, registry=registry)
        self.last_success = Gauge("last_success_timestamp_seconds", "Time of the last successful poll, by source.",
                                  ["source"], namespace=ns, registry=registry)
        self.inventory_up = Gauge("inventory_up", "1 when the last poll of the source succeeded.", ["source"],
                                  namespace=ns, registry=registry)
        self.invalid = Counter("invalid_entries", "Inventory entries dropped, by source and reason.",
                               ["source", "reason"], namespace=ns, registry=registry)
        self.errors = Counter("inventory_errors", "Failed polls by source and reason.", ["source", "reason"],
                              namespace=ns, registry=registry)
        self.guard_active = Gauge("drop_guard_active", "1 while a large drop is held back for confirmation.",
                                  ["source"], namespace=ns, registry=registry)
        self.publish_errors = Counter("publish_errors", "Failed writes of an output.", ["output"],
                                      namespace=ns, registry=registry)
        self.file_writes = Counter("file_writes", "Times the targets file was rewritten.",
                                   namespace=ns, registry=registry)
        self.file_restores = Counter("file_restores", "Times the targets file, removed or changed by someone "
                                     "else, was rewritten from the snapshot.", namespace=ns, registry=registry)
        self.update_interval = Gauge("update_interval_seconds", "Configured UPDATE_INTERVAL.",
                                     namespace=ns, registry=registry)
        self.build_info = Gauge("build_info", "Build information; always 1.", ["version"],
                                namespace=ns, registry=registry)
        self.build_info.labels(version=__version__).set(1)
        self.sources_reloads = Counter("sources_reloads", "Reloads of SOURCES_FILE by result (success, failure).",
                                       ["result"], namespace=ns, registry=registry)
        self.sources_reload_ok = Gauge("sources_last_reload_successful",
                                       "1 when the last reload of SOURCES_FILE was applied, 0 when it was refused.",
                                       namespace=ns, registry=registry)
        for result in ("success", "failure"):
            self.sources_reloads.labels(result=result)
        self.sources_reload_ok.set(1)  # as Prometheus' config_last_reload_successful: 1 until a reload fails

    def init_source(self, source: str) -> SourceMetrics:
        """Export every per-source series from the start, so rate() and absent() behave.

        Returns the source's label children: a poll updates them directly instead of looking
        each one up by label values (a dict lookup and a lock per call, 1,000 sources per interval).
        """
        return SourceMetrics(
            syncs={r: self.syncs.labels(source=source, result=r.value) for r in Result},
            request_duration=self.request_duration.labels(source=source),
            targets=self.targets.labels(source=source),
            inventory_up=self.inventory_up.labels(source=source),
            guard_active=self.guard_active.labels(source=source),
            last_success=self.last_success.labels(source=source),
        )

    def remove_source(self, source: str) -> None:
        """Drop every series of a source that left the configuration, so no stale `up`/targets linger."""
        families: tuple[Any, ...] = (self.syncs, self.request_duration, self.targets, self.inventory_up,
                                     self.guard_active, self.last_success, self.invalid, self.errors)
        for metric in families:  # prometheus_client's own classes here; `Discarded` overrides this
            names = metric._labelnames  # noqa: SLF001 - prometheus_client has no public "remove matching"
            at = names.index("source")
            for values in list(metric._metrics):  # noqa: SLF001
                if values[at] == source:
                    metric.remove(*values)


class HttpMetrics:
    """The HTTP server's own series, on the process registry: fenced failures and connection bounds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge

        ns = "sensor_sd"
        self.internal_errors = Counter("http_internal_errors", "Requests answered 500 because a handler failed "
                                       "unexpectedly (a bug), by handler.", ["handler"], namespace=ns, registry=registry)
        self.connections = Gauge("http_connections", "Open connections to the SD's HTTP server.",
                                 namespace=ns, registry=registry)
        self.max_connections = Gauge("http_max_connections", "WEB_MAX_CONNECTIONS: the cap on open connections.",
                                     namespace=ns, registry=registry)
        self.write_buffered = Gauge("http_write_buffer_bytes", "Answer bytes held in the server's connection buffers "
                                    "until their clients read them.", namespace=ns, registry=registry)
        self.closed = Counter("http_connections_closed", "Connections the server closed to stay within its bounds, "
                              "by reason (over_limit, evicted, write_timeout).", ["reason"],
                              namespace=ns, registry=registry)
        for reason in CLOSE_REASONS:
            self.closed.labels(reason=reason)


@dataclass(frozen=True, slots=True)
class SourceMetrics:
    """The label children of one source, looked up once."""

    syncs: Mapping[Result, Any]
    request_duration: Any
    targets: Any
    inventory_up: Any
    guard_active: Any
    last_success: Any


class _Discard:
    """A counter, gauge and histogram at once that keeps nothing."""

    def labels(self, *values: str, **labels: str) -> _Discard:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class Discarded(Metrics):
    """Metrics for a one-shot command (`once`, `check`): updated like the daemon's, kept by no one.

    It has no `registry`: nothing is exported, so prometheus_client is never imported.
    """

    def __init__(self) -> None:  # not Metrics.__init__: no registry, no import
        d = _Discard()
        self.syncs = self.added = self.removed = self.invalid = self.errors = d
        self.publish_errors = self.file_writes = self.file_restores = d
        self.request_duration = d
        self.targets = self.last_success = self.inventory_up = self.guard_active = d
        self.update_interval = self.build_info = d
        self.sources_reloads = self.sources_reload_ok = d

    def remove_source(self, source: str) -> None:
        """Nothing is kept, so nothing to drop."""
