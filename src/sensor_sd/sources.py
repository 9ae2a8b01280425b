"""The inventories to poll: `Source`, INVENTORY_URL's name=url list, and SOURCES_FILE.

SOURCES_FILE holds many inventories (e.g. one per store) in a YAML or JSON file.

Why a file and not a longer INVENTORY_URL: each source carries its own
labels (`store`, `region`), credentials and interval, and the set changes
while the daemon runs (stores open and close), so the file is re-read on
SIGHUP and when it changes. The whole file is validated before anything is
used: an invalid file is refused as a whole with one line naming the entry
and the field, and the running set stays.

The format (JSON is accepted anywhere; YAML needs PyYAML, an optional extra, and is read as strictly as
the web config: `checks.yaml_document`)::

    sources:
      - name: store7
        url: https://store7.example.com/inventory
        labels: {store: "7", region: eu-west}
        token_file: /run/secrets/store7.token   # optional
        ca_file: /etc/ssl/store-ca.pem          # optional
        interval: 60                            # optional seconds, else UPDATE_INTERVAL

A bare list of sources is accepted too.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from sensor_sd import checks
from sensor_sd.errors import ConfigError
from sensor_sd.files import CA_FILE_LIMIT, TOKEN_FILE_LIMIT, UnreadableFile, read_regular

VARIABLE = "SOURCES_FILE"
MAX_FILE_BYTES = 64 * 1024 * 1024  # 100k sources of ~300 bytes each fit with room to spare
MAX_SOURCES = 100_000
_KEYS = frozenset({"name", "url", "labels", "token_file", "ca_file", "interval"})
_MIN_INTERVAL, _MAX_INTERVAL = 0.001, 86400.0
_URL_ALLOWED = "an http(s) URL with a host"


SOURCE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True, slots=True)
class Source:
    """One inventory endpoint; `name` becomes the `source` label."""

    name: str
    url: str
    # Set per source by SOURCES_FILE only (sensor_sd.sources); None/empty: the global settings apply.
    labels: tuple[tuple[str, str], ...] = ()
    token_file: Path | None = None
    ca_file: Path | None = None
    interval: float | None = None

    @property
    def display_url(self) -> str:
        """The URL with any user:password removed, safe to log and show."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """The URL without user:password, query values or fragment: safe to log, show or label.

    Tokens often ride in the query string, so its values are masked too.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))



_ENCODE_HINT = "; percent-encode , / ? # @ in user:password"


def parse_inventory_url(text: str) -> tuple[Source, ...]:
    """INVENTORY_URL: one URL, or name=url,name=url; raises ValueError(allowed)."""
    allowed = "an http(s) URL, or name=url,name=url with names of letters, digits, _ . -"
    if "@" in text:
        allowed += _ENCODE_HINT
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ValueError(allowed)
    sources: list[Source] = []
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or "://" in name:
            name, url = "", item
        elif not name.strip():
            raise ValueError(f"{allowed}; a name before '=' is never empty")
        check_url(url, allowed)
        if not name:
            name = urlsplit(url).hostname or ""
        if not SOURCE_NAME_RE.fullmatch(name):
            raise ValueError(allowed)
        if any(s.name == name for s in sources):
            raise ValueError(f"distinct source names (duplicate {name!r})")
        sources.append(Source(name, url))
    return tuple(sources)


def check_url(url: str, allowed: str) -> None:
    if checks.CONTROL_RE.search(url) or " " in url:
        raise ValueError(allowed)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(allowed) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(allowed)
    if "@" in url[url.index("://") + 3 + len(parts.netloc):]:
        # `http://u:12/x@h/`, `http://u:12#x@h/`: an unencoded password, cut at / ? or #, whose tail
        # would end up in a path, query or fragment (and in logs); no inventory needs an @ there.
        raise ValueError(f"{allowed} (an @ after the host)")


# Where a new item of a raw INVENTORY_URL starts: `,url` or `,name=url`.
_ITEM_START_RE = re.compile(r",\s*(?:[A-Za-z0-9_.-]*=)?https?://", re.IGNORECASE)


def redact_raw(text: str) -> str:
    """A raw INVENTORY_URL with every user:password masked, for error lines; works on values that do not parse.

    A password may hold unencoded `,` `/` `?` `#` (that is why the value is wrong): in each item the span
    from `://` (or the item's start) to its last `@` is masked, so whatever precedes the host never shows.
    """
    cuts = [0] + [m.start() + 1 for m in _ITEM_START_RE.finditer(text)] + [len(text)]
    out = []
    for start, end in zip(cuts, cuts[1:]):
        item = text[start:end]
        at = item.rfind("@")
        if at >= 0:
            scheme = item.find("://")
            begin = scheme + 3 if 0 <= scheme < at else item.find("=") + 1 if item.find("=") < at else 0
            item = item[:begin] + "***" + item[at:]
        out.append(item)
    return "".join(out)


class SourcesFileError(ConfigError):
    """The sources file (or one entry of it) is invalid; the message names the entry and field."""

    def __init__(self, path: Path, where: str, problem: str) -> None:
        super().__init__(VARIABLE, str(path), f"{where}: {problem}" if where else problem)


@dataclass(frozen=True, slots=True)
class SourcesFile:
    """A validated sources file: its sources and the digest of the bytes they came from."""

    path: Path
    sources: tuple[Source, ...]
    digest: str


def file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime ns) of the file, or None when it cannot be stat'ed: a cheap change check."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read(path: Path) -> SourcesFile:
    """Read and validate the whole file; raises SourcesFileError (a ConfigError) naming what is wrong."""
    try:  # bounded and non-blocking: a FIFO or /dev/zero in its place is refused, not waited on
        data = read_regular(path, MAX_FILE_BYTES)
    except UnreadableFile as exc:
        raise SourcesFileError(path, "", f"a readable file ({exc})") from None
    return SourcesFile(path, parse(path, data), hashlib.sha256(data).hexdigest())


def check_global_token(path: Path, found: tuple[Source, ...], global_token: Path | None) -> None:
    """INVENTORY_TOKEN_FILE applies to the sources without a token_file: none of them may carry user:password.

    The HTTP client refuses a request with both (and Prometheus allows only one of them).
    """
    if global_token is None:
        return
    for index, source in enumerate(found):
        if source.token_file is None and "@" in source.url.partition("://")[2].split("/", 1)[0]:
            raise SourcesFileError(path, f"source #{index + 1} ({source.name})",
                                   "user:password in url while INVENTORY_TOKEN_FILE applies to it; use one of them")


def parse(path: Path, data: bytes) -> tuple[Source, ...]:
    """The sources of a file's bytes (JSON, or YAML when PyYAML is installed)."""
    doc = _load(path, data)
    if isinstance(doc, Mapping):
        extra = sorted(set(map(str, doc)) - {"sources"})
        if extra:
            raise SourcesFileError(path, "top level", f"unknown key {extra[0]!r} (allowed: sources)")
        doc = doc.get("sources")
    if not isinstance(doc, list):
        raise SourcesFileError(path, "top level", "a list of sources, or a mapping with the key 'sources'")
    if not doc:
        raise SourcesFileError(path, "sources", "at least one source (an empty list would drop every target)")
    if len(doc) > MAX_SOURCES:
        raise SourcesFileError(path, "sources", f"at most {MAX_SOURCES} sources")
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(doc):
        source = _source(path, index, entry)
        if source.name in seen:
            raise SourcesFileError(path, f"source #{index + 1} ({source.name})",
                                   f"duplicate name (also source #{seen[source.name] + 1})")
        seen[source.name] = index
        sources.append(source)
    return tuple(sources)


def _load(path: Path, data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourcesFileError(path, "", f"UTF-8 text (byte {exc.start} is not)") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except ValueError as exc:
            if path.suffix.lower() == ".json":
                raise SourcesFileError(path, "", f"valid JSON ({_first_line(exc)})") from None
    try:
        return checks.yaml_document(text)
    except ImportError:
        raise SourcesFileError(path, "", "JSON (YAML needs PyYAML: pip install 'sensor-sd[yaml]')") from None
    except ValueError as exc:  # not YAML, or a key given twice
        raise SourcesFileError(path, "", str(exc)) from None


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _source(path: Path, index: int, entry: object) -> Source:
    where = f"source #{index + 1}"
    if not isinstance(entry, Mapping):
        raise SourcesFileError(path, where, "a mapping with name and url")
    name = entry.get("name")
    if isinstance(name, str) and SOURCE_NAME_RE.fullmatch(name):
        where += f" ({name})"
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        raise SourcesFileError(path, where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})")
    if not isinstance(name, str) or not SOURCE_NAME_RE.fullmatch(name):
        raise SourcesFileError(path, where, f"name: {_shown(name)} is not 1-63 letters, digits, _ . - "
                                            "(not starting with . or -)")
    url = entry.get("url")
    if not isinstance(url, str):
        raise SourcesFileError(path, where, f"url: {_shown(url)} is not {_URL_ALLOWED}")
    try:
        check_url(url, _URL_ALLOWED)
    except ValueError:
        raise SourcesFileError(path, where, f"url: {_shown(_redacted(url))} is not {_URL_ALLOWED}") from None
    labels = _labels(path, where, entry.get("labels", {}))
    token_file = _file(path, where, "token_file", entry.get("token_file"))
    ca_file = _file(path, where, "ca_file", entry.get("ca_file"))
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise SourcesFileError(path, where, f"ca_file: {str(ca_file)!r} is not a PEM CA bundle ({exc})") from None
    if token_file is not None and "@" in url.partition("://")[2].split("/", 1)[0]:
        raise SourcesFileError(path, where, "token_file together with user:password in url; use one of them")
    interval = _interval(path, where, entry.get("interval"))
    return Source(name, url, labels=labels, token_file=token_file, ca_file=ca_file, interval=interval)


def _labels(path: Path, where: str, labels: object) -> tuple[tuple[str, str], ...]:
    if labels is None:
        return ()
    if not isinstance(labels, Mapping):
        raise SourcesFileError(path, where, "labels: a mapping of label name to string value")
    out: dict[str, str] = {}
    for key, value in labels.items():
        problem = checks.label_name_problem(key)
        if problem:
            raise SourcesFileError(path, where, f"labels: {_shown(key)} {problem}")
        if not isinstance(value, str) or checks.CONTROL_RE.search(value):
            raise SourcesFileError(path, where, f"labels: {key}={_shown(value)} is not a string without control "
                                                "characters (quote numbers: \"7\")")
        out[key] = value
    return tuple(sorted(out.items()))


def _file(path: Path, where: str, key: str, value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise SourcesFileError(path, where, f"{key}: {_shown(value)} is not a file path")
    file = Path(value)
    if not file.is_absolute():
        file = path.parent / file  # relative to the sources file, as Prometheus resolves its files
    try:
        data = read_regular(file, TOKEN_FILE_LIMIT if key == "token_file" else CA_FILE_LIMIT)
    except UnreadableFile as exc:
        raise SourcesFileError(path, where, f"{key}: {value!r} is not readable ({exc})") from None
    if not data.strip():
        raise SourcesFileError(path, where, f"{key}: {value!r} is empty")
    return file


def _interval(path: Path, where: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        return checks.number(value, "interval", _MIN_INTERVAL, _MAX_INTERVAL)
    except ValueError:
        raise SourcesFileError(path, where, f"interval: {_shown(value)} is not a number of seconds from "
                                            f"{_MIN_INTERVAL:g} to {_MAX_INTERVAL:g}") from None


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{tail.split('?', 1)[0]}"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
