"""The model: target groups, the immutable snapshot rendered once, hashmod shards, the file read back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson


@dataclass(frozen=True, slots=True)
class TargetGroup:
    """Targets of one source with their labels, as one file_sd/http_sd group."""

    source: str
    targets: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]

    def as_json(self) -> dict[str, object]:
        return {"targets": self.targets, "labels": dict(self.labels)}


def group_labels(source: str, metrics_path: str, extra: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"__metrics_path__": metrics_path, "source": source, **dict(extra)}.items()))


def render(groups: Iterable[TargetGroup]) -> bytes:
    """file_sd/http_sd JSON; identical groups give identical bytes."""
    return orjson.dumps([g.as_json() for g in groups if g.targets], option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable view of all targets and its pre-rendered bytes.

    Both publishers serve `body`, so file_sd and http_sd always agree.
    """

    groups: tuple[TargetGroup, ...]
    body: bytes = field(repr=False)
    etag: str

    @classmethod
    def build(cls, groups: Iterable[TargetGroup]) -> Snapshot:
        groups = tuple(groups)
        body = render(groups)
        # SHA-256 (cut to 96 bits) runs at ~2 GB/s where the CPU has SHA extensions: ~12 ms for 1M targets.
        return cls(groups, body, '"' + hashlib.sha256(body).hexdigest()[:24] + '"')

    @property
    def count(self) -> int:
        return sum(len(g.targets) for g in self.groups)

    def group(self, source: str) -> TargetGroup | None:
        return next((g for g in self.groups if g.source == source), None)


def hashmod(value: str, modulus: int) -> int:
    """Prometheus relabel `hashmod`: md5, last 8 bytes as big-endian uint64, mod N."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


Hashes = tuple[tuple[int, ...], ...]


def address_hashes(groups: Iterable[TargetGroup]) -> Hashes:
    """hashmod's 64-bit value of every `__address__`, per group, before any modulus.

    One hashing serves every shard count (`h % total` is `hashmod(t, total)`): http_sd computes
    it once per snapshot, as md5 over 100k addresses costs ~65 ms.
    """
    return tuple(tuple(hashmod(t, 1 << 64) for t in g.targets) for g in groups)


def shard(groups: Iterable[TargetGroup], index: int, total: int, hashes: Hashes | None = None
          ) -> tuple[TargetGroup, ...]:
    """Keep the targets whose hashmod of `__address__` equals `index` (Prometheus' `hashmod` relabel).

    `hashes`, when given, are `address_hashes(groups)`, so a shard costs no md5.
    """
    groups = tuple(groups)
    if hashes is None:
        hashes = address_hashes(groups)
    return tuple(TargetGroup(g.source, tuple(t for t, h in zip(g.targets, hs) if h % total == index), g.labels)
                 for g, hs in zip(groups, hashes, strict=True))


def parse_file(body: bytes) -> list[TargetGroup]:
    """Parse a file_sd file (ours) back into groups keyed by the `source` label.

    Raises ValueError when the file is not a list of {targets: [str], labels: {str: str}}.
    """
    data = orjson.loads(body)
    if not isinstance(data, list):
        raise ValueError("not a JSON list")
    groups: list[TargetGroup] = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("targets"), list):
            raise ValueError("a group is not {targets: [...], labels: {...}}")
        labels = item.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ValueError("group labels are not a string map")
        targets = item["targets"]
        if targets and not set(map(type, targets)) <= {str}:  # orjson makes exact types; one C-speed pass
            raise ValueError("a target is not a string")
        groups.append(TargetGroup(labels.get("source", ""), tuple(targets), tuple(sorted(labels.items()))))
    return groups
