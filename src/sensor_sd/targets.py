"""Targets: inventory entries -> validated, deduplicated, sorted target groups -> snapshot.

Validation is per entry so one bad hostname never costs the good ones. The
common body (bare hostnames, no ports) is checked with a few C-speed scans of
the joined list instead of a regex per entry: that keeps a 1M-host sync near
the cost of parsing the JSON.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import operator
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

MAX_ENTRY_LENGTH = 253

# A DNS-ish hostname label; `_` is allowed because the real sensors use it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_HOST_PORT_RE = re.compile(rf"({_LABEL}(?:\.{_LABEL})*\.?)(?::([0-9]{{1,5}}))?")
_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f\x80-\x9f\u200b\u2028\u2029\ufeff]")

# The reasons an entry is dropped; stable words used as metric label values.
REASONS = ("not_string", "empty", "too_long", "whitespace", "scheme", "userinfo", "path", "bad_port", "bad_host")


def normalize(entry: object, default_port: int) -> tuple[str | None, str | None]:
    """Return (target, None) for a valid entry, (None, reason) for an invalid one."""
    if type(entry) is not str:
        return None, "not_string"
    if not entry:
        return None, "empty"
    if len(entry) > MAX_ENTRY_LENGTH:
        return None, "too_long"
    m = _HOST_PORT_RE.fullmatch(entry)
    if m is not None:  # the common case: host or host:port
        port = m.group(2)
        if port is None:
            return f"{entry}:{default_port}", None
        return (entry, None) if _valid_port(port) else (None, "bad_port")
    return None, _reason(entry, default_port)


def _valid_port(text: str) -> bool:
    return 1 <= int(text) <= 65535 and not (len(text) > 1 and text[0] == "0")


def _reason(entry: str, default_port: int) -> str | None:
    """Classify why an entry failed the fast path (or accept bracketed IPv6)."""
    if _SPACE_RE.search(entry):
        return "whitespace"
    if "://" in entry:
        return "scheme"
    if "@" in entry:
        return "userinfo"
    if any(c in entry for c in "/?#\\"):
        return "path"
    if entry.startswith("["):
        addr, _, rest = entry[1:].partition("]")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            return "bad_host"
        if rest == "" or (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit() and len(rest) <= 6 and _valid_port(rest[1:])):
            return None
        return "bad_port"
    host, sep, port = entry.rpartition(":")
    if sep and _HOST_RE.fullmatch(host):
        return "bad_port"
    return "bad_host"


@dataclass(frozen=True, slots=True)
class Validated:
    """The result of validating one inventory body."""

    targets: tuple[str, ...]  # deduplicated, sorted in plain string order
    invalid: Counter[str]
    examples: tuple[tuple[str, str], ...]  # up to 10 (reason, entry) for the log


def validate(entries: Sequence[object], default_port: int) -> Validated:
    """Validate every entry; invalid ones are dropped and counted by reason."""
    targets = _fast_targets(entries, default_port)
    if targets is not None:
        return Validated(_sorted_unique(targets), Counter(), ())
    valid: list[str] = []
    invalid: Counter[str] = Counter()
    examples: list[tuple[str, str]] = []
    for entry in entries:
        target, reason = normalize(entry, default_port)
        if target is None and reason is None:  # bracketed IPv6 without a port
            target = entry if "]:" in entry else f"{entry}:{default_port}"  # type: ignore[operator]
        if target is not None:
            valid.append(target)
            continue
        invalid[reason] += 1  # type: ignore[index]
        if len(examples) < 10:
            examples.append((reason or "", _short(entry)))
    return Validated(_sorted_unique(valid), invalid, tuple(examples))


# Characters of a bare hostname list joined by newlines; anything else takes the slow path.
_BARE_RE = re.compile(r"[A-Za-z0-9_.\n-]*")
_BAD_SEQUENCES = ("\n\n", "\n-", "\n.", "-\n", ".-", "-.", "..")
_LONG_LABEL_RE = re.compile(r"[^.\n]{64}")


def _fast_targets(entries: Sequence[object], port: int) -> list[str] | None:
    """Targets for the common body (all bare hostnames), checked with C-speed string scans.

    Returns None when any entry might be invalid or carries a port; the caller
    then validates entry by entry. Equivalent to `normalize` on the entries it accepts.
    """
    if not entries:
        return []
    try:
        joined = "\n".join(entries)  # type: ignore[arg-type]
    except TypeError:  # an entry is not a string
        return None
    longest = max(map(len, entries))  # type: ignore[arg-type]
    if (
        not joined
        or joined.count("\n") != len(entries) - 1  # an entry with a newline of its own
        or not _BARE_RE.fullmatch(joined)
        or joined[0] in "-.\n"
        or joined[-1] in "-\n"
        or any(seq in joined for seq in _BAD_SEQUENCES)
        or longest > MAX_ENTRY_LENGTH
        or (longest > 63 and _LONG_LABEL_RE.search(joined))  # a label over 63 chars is possible only then
    ):
        return None
    return list(map(operator.add, entries, itertools.repeat(f":{port}")))  # type: ignore[arg-type]


def _sorted_unique(targets: list[str]) -> tuple[str, ...]:
    targets.sort()
    if any(map(operator.eq, targets, itertools.islice(targets, 1, None))):
        return tuple(dict.fromkeys(targets))
    return tuple(targets)


def _short(entry: object, limit: int = 80) -> str:
    text = entry if isinstance(entry, str) else orjson.dumps(entry, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode("utf-8", "replace") if _jsonable(entry) else repr(entry)
    return text[:limit]


def _jsonable(entry: object) -> bool:
    try:
        orjson.dumps(entry)
    except TypeError:
        return False
    return True


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
        return cls(groups, body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')

    @property
    def count(self) -> int:
        return sum(len(g.targets) for g in self.groups)

    def group(self, source: str) -> TargetGroup | None:
        return next((g for g in self.groups if g.source == source), None)


def hashmod(value: str, modulus: int) -> int:
    """Prometheus relabel `hashmod`: md5, last 8 bytes as big-endian uint64, mod N."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def shard(groups: Iterable[TargetGroup], index: int, total: int) -> tuple[TargetGroup, ...]:
    """Keep the targets whose hashmod of `__address__` equals `index`."""
    return tuple(
        TargetGroup(g.source, tuple(t for t in g.targets if hashmod(t, total) == index), g.labels) for g in groups
    )


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
        if not all(isinstance(t, str) for t in targets):
            raise ValueError("a target is not a string")
        groups.append(TargetGroup(labels.get("source", ""), tuple(targets), tuple(sorted(labels.items()))))
    return groups
