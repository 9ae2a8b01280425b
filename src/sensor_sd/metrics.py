"""The SD's own metrics, on a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector

from sensor_sd import __version__

# Inventory requests take ms to seconds; REQUEST_TIMEOUT caps them.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """All `sensor_sd_*` metrics; one instance per process, passed to who needs it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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

    def init_source(self, source: str) -> None:
        """Export every per-source series from the start, so rate() and absent() behave."""
        for result in ("success", "unchanged", "error", "held"):
            self.syncs.labels(source=source, result=result)
        self.request_duration.labels(source=source)
        self.targets.labels(source=source)
        self.inventory_up.labels(source=source)
        self.guard_active.labels(source=source)
        self.last_success.labels(source=source)
