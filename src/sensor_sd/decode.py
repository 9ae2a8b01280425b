"""Decoding: an inventory body -> validated, canonical, deduplicated, sorted targets.

One entry point, `decode`, used by the poller and the one-shot commands. The
common body (a JSON list of bare hostnames) is checked with a few C-speed
scans of the raw bytes instead of a regex per entry, which keeps a 1M-host
sync near the cost of parsing the JSON; any other body is parsed and checked
entry by entry, so one bad hostname never costs the good ones.
"""

from __future__ import annotations

import ipaddress
import itertools
import operator
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

from sensor_sd.errors import DecodeError

MAX_ENTRY_LENGTH = 253  # of the host, without its port and its trailing dot (the DNS limit)
_MAX_WITH_PORT = MAX_ENTRY_LENGTH + len(".:65535")  # no valid entry is longer than this

# A DNS-ish hostname label; `_` is allowed because the real sensors use it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_HOST_PORT_RE = re.compile(rf"({_LABEL}(?:\.{_LABEL})*)\.?(?::([0-9]{{1,5}}))?")
_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f\x80-\x9f\u200b\u2028\u2029\ufeff]")
_HOST_END_RE = re.compile(r"\.?(?::[0-9]{0,5})?\Z")  # where the host of "host[.][:port]" ends

# The reasons an entry is dropped; stable words used as metric label values.
REASONS = ("not_string", "empty", "too_long", "whitespace", "scheme", "userinfo", "path", "bad_port", "bad_host",
           "ipv6_zone")


def normalize(entry: object, default_port: int) -> tuple[str | None, str | None]:
    """Return (target, None) for a valid entry, (None, reason) for an invalid one.

    The target is the entry's one canonical form, so the same sensor spelled
    two ways is one target: DNS names in lower case (they are
    case-insensitive) without the trailing dot, IPv6 literals in RFC 5952
    form inside brackets, and always a port.
    """
    if type(entry) is not str:
        return None, "not_string"
    if not entry:
        return None, "empty"
    if len(entry) > MAX_ENTRY_LENGTH and (
            len(entry) > _MAX_WITH_PORT or _HOST_END_RE.search(entry).start() > MAX_ENTRY_LENGTH):  # type: ignore[union-attr]
        return None, "too_long"
    m = _HOST_PORT_RE.fullmatch(entry)
    if m is not None:  # the common case: host or host:port
        host, port = m.groups()
        if port is None:
            return f"{host.lower()}:{default_port}", None
        return (f"{host.lower()}:{port}", None) if _valid_port(port) else (None, "bad_port")
    return _slow(entry, default_port)


def _valid_port(text: str) -> bool:
    return 1 <= int(text) <= 65535 and not (len(text) > 1 and text[0] == "0")


def _slow(entry: str, default_port: int) -> tuple[str | None, str | None]:
    """Classify why an entry failed the fast path, or accept a bracketed IPv6 literal."""
    if _SPACE_RE.search(entry):
        return None, "whitespace"
    if "://" in entry:
        return None, "scheme"
    if "@" in entry:
        return None, "userinfo"
    if any(c in entry for c in "/?#\\"):
        return None, "path"
    if entry.startswith("["):
        addr, sep, rest = entry[1:].partition("]")
        if not sep:
            return None, "bad_host"
        if "%" in addr:  # a zone (`fe80::1%eth0`) names an interface of one machine: meaningless to Prometheus
            return None, "ipv6_zone"
        try:
            ip = ipaddress.IPv6Address(addr)
        except ValueError:
            return None, "bad_host"
        if rest == "":
            return f"[{ipv6_text(ip)}]:{default_port}", None
        port = rest[1:]
        if rest.startswith(":") and port.isascii() and port.isdigit() and len(port) <= 5 and _valid_port(port):
            return f"[{ipv6_text(ip)}]:{port}", None
        return None, "bad_port"
    host, sep, port = entry.rpartition(":")
    if sep and _HOST_RE.fullmatch(host):
        return None, "bad_port"
    return None, "bad_host"


def ipv6_text(ip: ipaddress.IPv6Address) -> str:
    """RFC 5952 text: lower case, longest zero run compressed; IPv4-mapped addresses end in dotted quad (§5)."""
    mapped = ip.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else ip.compressed


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
        return Validated(sorted_unique(targets), Counter(), ())
    valid: list[str] = []
    invalid: Counter[str] = Counter()
    examples: list[tuple[str, str]] = []
    for entry in entries:
        target, reason = normalize(entry, default_port)
        if target is not None:
            valid.append(target)
            continue
        invalid[reason] += 1  # type: ignore[index]
        if len(examples) < 10:
            examples.append((reason or "", _short(entry)))
    return Validated(sorted_unique(valid), invalid, tuple(examples))


def validate_targets(targets: Sequence[object], default_port: int) -> Validated:
    """`validate` for published targets (`host:port`, as a targets file holds them), the same result.

    A file we wrote has one port throughout: with it stripped, the hosts take
    the C-speed string scans of a poll instead of one regex per target.
    """
    first = targets[0] if targets else None
    if type(first) is str:
        host, sep, port = first.rpartition(":")
        if sep and "]" not in host and len(port) <= 5 and port.isascii() and port.isdigit() and _valid_port(port):
            suffix = sep + port
            if all(type(t) is str and t.endswith(suffix) for t in targets):
                cut = len(suffix)
                fast = _fast_targets([t[:-cut] for t in targets], int(port))  # type: ignore[index]
                if fast is not None:
                    return Validated(sorted_unique(fast), Counter(), ())
    return validate(targets, default_port)


# Characters of bare hostnames joined by ":port\n"; anything else takes the slow path.
_BARE_RE = re.compile(r"[A-Za-z0-9_.:\n-]*")
_LONG_LABEL_RE = re.compile(r"[^.:\n]{64}")


def _fast_targets(entries: Sequence[object], port: int) -> list[str] | None:
    """Targets for the common body (all bare hostnames), checked with C-speed string scans.

    Returns None when any entry might be invalid or carries a port; the caller
    then validates entry by entry. Equivalent to `normalize` on the entries it accepts.
    """
    if not entries:
        return []
    suffix = f":{port}"
    try:
        text = (suffix + "\n").join(entries)  # type: ignore[arg-type]
    except TypeError:  # an entry is not a string
        return None
    longest = max(map(len, entries))  # type: ignore[arg-type]
    joins = len(entries) - 1
    if (
        text.count("\n") != joins  # an entry with a newline of its own
        or text.count(":") != joins  # an entry with a colon (a port) of its own
        or not _BARE_RE.fullmatch(text)
        or _invalid_joined(text)
        or longest > MAX_ENTRY_LENGTH
        or (longest > 63 and _LONG_LABEL_RE.search(text))  # a label over 63 chars is possible only then
        or _trailing_dot(text)
    ):
        return None
    targets = text.lower().split("\n")  # ASCII only here: lower() keeps every length
    targets[-1] += suffix
    return targets


# Bytes a bare hostname may consist of; whatever a body holds besides them must be JSON punctuation.
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_JSON_SPACE = b" \t\r\n"
_SEPARATORS = (b'","', b'", "')  # compact (orjson, JS) and Python's json.dumps default
# In "host:port\nhost:port..." a sequence that only an invalid entry produces (see _invalid_joined),
# grouped by the character they need: a one-character search runs at memchr speed, the pairs ~20x slower.
_BAD_AFTER_NEWLINE = "\n:"  # an empty entry
_BAD_WITH_DASH = ("\n-", "-:")  # a leading or trailing '-'
_BAD_WITH_DOT = ("\n.", "..")  # a leading '.' or an empty label
_BAD_WITH_BOTH = (".-", "-.")  # a label that starts or ends with '-'


def _invalid_joined(text: str) -> bool:
    """True when hostnames joined as "host:port\nhost" hold an entry `normalize` would reject.

    The characters are checked by the caller; this finds the empty entry and the
    label that is empty or starts or ends with '-', which a character scan cannot.
    """
    dash, dot = "-" in text, "." in text
    return (
        not text
        or text[0] in ".-:"  # the first entry is empty or starts with '.'/'-'
        or text[-1] in "-\n"  # the last entry ends with '-' or is empty
        or _BAD_AFTER_NEWLINE in text
        or (dash and any(seq in text for seq in _BAD_WITH_DASH))
        or (dot and any(seq in text for seq in _BAD_WITH_DOT))
        or (dash and dot and any(seq in text for seq in _BAD_WITH_BOTH))
    )


def _trailing_dot(text: str) -> bool:
    """True when an entry of "host:port\nhost" ends in '.': rare, left to `normalize`, which drops the dot."""
    return ".:" in text or text.endswith(".")


# Every byte a label may hold mapped to "a": a run of 64 of them is a label over 63 characters.
_LABEL_TO_A = bytes(ord("a") if chr(c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-" else c
                    for c in range(256))


def validate_body(box: list[bytes], default_port: int) -> Validated | None:
    """`validate` straight from the raw inventory body, for the common body: a JSON list of bare hostnames.

    The same result as `validate(orjson.loads(body), default_port)`, without
    building a Python string per hostname first: the body is checked with a
    few C-speed scans (one `translate` proves it holds only hostname bytes and
    separators, so it is valid JSON and UTF-8 by construction), the port is
    appended to every entry with one `str.replace`, and one `split` builds the
    targets. `box` holds the body and is emptied, so the bytes can be freed as
    soon as they are decoded; when the body is anything else (ports,
    escapes, other whitespace, invalid entries, not a list) it is put back and
    None returned: the caller parses it and validates entry by entry.
    Equivalence with `validate` is a property test (tests/test_targets_body.py).
    """
    body = box.pop()
    end = len(body)
    while end and body[end - 1] in _JSON_SPACE:
        end -= 1
    start = 0
    while start < end and body[start] in _JSON_SPACE:
        start += 1
    if end - start < 5 or body[start:start + 2] != b'["' or body[end - 2:end] != b'"]':
        box.append(body)
        return None
    rest = body.translate(None, _HOST_BYTES)  # only the punctuation is left: '["' sep*k '"]' (+ outer space)
    tail = len(body) - end
    punct = rest[start + 2:len(rest) - tail - 2]
    sep = next((s for s in _SEPARATORS if punct.startswith(s)), _SEPARATORS[0])
    if punct != sep * (len(punct) // len(sep)):
        box.append(body)
        return None
    del rest, punct
    if b"a" * 64 in body.translate(_LABEL_TO_A):  # a label over 63 characters: let the full path classify it
        box.append(body)
        return None
    suffix = f":{default_port}"
    # One replace turns 'a","b' into 'a:9100\nb'; the last entry gets its suffix after the split.
    text = str(memoryview(body)[start + 2:end - 2], "ascii").replace(sep.decode(), suffix + "\n")
    if _invalid_joined(text) or _trailing_dot(text):
        box.append(body)
        return None
    del body
    dotted = "." in text  # without dots an entry is one label, at most 63 characters (checked above)
    targets = text.lower().split("\n")  # ASCII only here: lower() keeps every length
    del text
    targets[-1] += suffix
    if dotted and max(map(len, targets)) - len(suffix) > MAX_ENTRY_LENGTH:
        return validate([t[: -len(suffix)] for t in targets], default_port)  # rare: classify entry by entry
    return Validated(sorted_unique(targets), Counter(), ())


def sorted_unique(targets: list[str]) -> tuple[str, ...]:
    """Sort in place and return a tuple without duplicates (each a pass at C speed)."""
    targets.sort()
    if any(map(operator.eq, targets, itertools.islice(targets, 1, None))):
        return tuple(dict.fromkeys(targets))
    return tuple(targets)


def _short(entry: object, limit: int = 80) -> str:
    """A log preview of an entry: at most `limit` characters, built without recursion.

    An entry may be nested ~1,000 levels deep (the JSON parser's own limit);
    `repr` or a recursive encoder would raise RecursionError on it, so the
    preview walks the value with an explicit stack and stops at the limit.
    """
    if isinstance(entry, str):
        return entry[:limit]
    parts: list[str] = [f"{type(entry).__name__} "]
    size = len(parts[0])
    for token in _tokens(entry):
        parts.append(token)
        size += len(token)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def _tokens(value: object) -> Iterator[str]:
    """JSON-like text of a parsed value, token by token, depth-first with an explicit stack (no recursion)."""
    stack: list[tuple[Iterator[object], str]] = [(iter((value,)), "")]
    first = True
    while stack:
        items, close = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            first = False
            yield close
            continue
        if not first and close:
            yield ","
        first = False
        if isinstance(item, tuple):  # a (key, value) pair of a dict
            yield _scalar(item[0]) + ":"
            item = item[1]
        if isinstance(item, list):
            yield "["
            stack.append((iter(item), "]"))
            first = True
        elif isinstance(item, dict):
            yield "{"
            stack.append((iter(item.items()), "}"))
            first = True
        else:
            yield _scalar(item)


_END = object()


def _scalar(value: object) -> str:
    """A JSON scalar as text, bounded: long strings are cut before they are encoded."""
    if isinstance(value, str):
        return orjson.dumps(value[:40]).decode()
    if value is None or isinstance(value, (bool, int, float)):
        # orjson encodes ints from -2**63 to 2**64 - 1 only; anything wider is named, not written out
        fits = not isinstance(value, int) or -(2**63) <= value < 2**64
        return orjson.dumps(value).decode() if fits else "<int>"
    return f"<{type(value).__name__}>"


def parse_body(body: bytes) -> list[object]:
    """The body must be UTF-8 JSON whose top level is an array; entries are checked later."""
    try:
        data = orjson.loads(body)  # rejects invalid UTF-8 and invalid JSON as a whole
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    if not isinstance(data, list):
        raise DecodeError(f"JSON is a {type(data).__name__}, not a list")
    return data


def decode(box: list[bytes], default_port: int) -> Validated:
    """The validated targets of an inventory body; raises DecodeError when it is not a JSON list.

    `box` holds the only reference to the body and is emptied, so the bytes can
    be freed as soon as they are decoded (a 1M-host body is tens of MB).
    """
    validated = validate_body(box, default_port)
    if validated is None:
        validated = validate(parse_body(box.pop()), default_port)
    return validated
