"""Settings: parsed once from environment and flags into a frozen object.

Every variable of the contract has a `--flag`; flags win over the environment.
Any bad value raises `ConfigError` naming the variable, the value and what is
allowed, so the CLI can exit 2 before doing anything.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from sensor_sd import checks, sources
from sensor_sd.errors import ConfigError
from sensor_sd.files import CA_FILE_LIMIT, TOKEN_FILE_LIMIT, WEB_CONFIG_LIMIT, UnreadableFile, read_regular
from sensor_sd.sources import Source

if TYPE_CHECKING:
    from sensor_sd.web.config import WebConfig

_T = TypeVar("_T")
LABEL_NAME_RE = checks.LABEL_NAME_RE
_CONTROL_RE = checks.CONTROL_RE
SECONDS_RANGE = (0.001, 86400.0)  # UPDATE_INTERVAL, REQUEST_TIMEOUT: a millisecond to a day


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # "" means all interfaces
    port: int


# --- value parsers: each takes the raw text and returns the typed value or raises ValueError(allowed);
# numbers speak the one grammar of sensor_sd.checks (plain ASCII decimal).

def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value == "warn":
            value = "warning"
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value

    return parse


def _targets_file(text: str) -> Path | None:
    if not text:
        return None
    if "\x00" in text:
        raise ValueError("a file path, or empty to disable the file")
    return Path(text)


def _sources_file(text: str) -> Path | None:
    if "\x00" in text:
        raise ValueError("a file path, or empty for INVENTORY_URL alone")
    return Path(text) if text else None


def _metrics_path(text: str) -> str:
    if not text.startswith("/") or _CONTROL_RE.search(text) or " " in text or "?" in text or "#" in text:
        raise ValueError("an URL path starting with / without spaces, ? or #")
    return text


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    allowed = "k=v,k=v with Prometheus label names ([a-zA-Z_][a-zA-Z0-9_]*, not __*, not source)"
    if not text.strip():
        return ()
    labels: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or checks.label_name_problem(key):
            raise ValueError(allowed)
        if key in labels:
            raise ValueError(f"distinct label names (duplicate {key!r})")
        if _CONTROL_RE.search(value):
            raise ValueError("label values without control characters")
        labels[key] = value.strip()
    return tuple(sorted(labels.items()))


def _listen(text: str) -> ListenAddress:
    allowed = "host:port or :port with a port from 1 to 65535 (IPv6 as [addr]:port)"
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(allowed)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(allowed)
    elif ":" in host or _CONTROL_RE.search(host) or " " in host:
        raise ValueError(allowed)
    try:
        number = checks.whole(1, 65535)(port)
    except ValueError:
        raise ValueError(allowed) from None
    return ListenAddress(host, number)


def _readable_file(limit: int, convert: Callable[[Path, bytes], _T]) -> Callable[[str], _T | None]:
    """A path to a non-empty regular file of at most `limit` bytes, read once and handed to `convert` with its bytes.

    A FIFO, device or directory is refused, never read; empty text means unset (None).
    """
    def parse(text: str) -> _T | None:
        if not text:
            return None
        path = Path(text)
        try:
            data = read_regular(path, limit)
        except UnreadableFile as exc:
            raise ValueError(f"a readable regular file of at most {limit} bytes ({exc})") from None
        if not data.strip():
            raise ValueError("a non-empty file")
        return convert(path, data)

    return parse


def _token(path: Path, data: bytes) -> Path:
    try:
        data.decode()
    except UnicodeDecodeError:
        raise ValueError("a UTF-8 text file holding the token") from None
    return path


def _ca(path: Path, data: bytes) -> Path:
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"a PEM CA bundle ({exc})") from None
    return path


def _web_config(path: Path, data: bytes) -> WebConfig:
    """Parsed here, once, and carried by Settings (imported lazily: PyYAML is only needed when the file is set)."""
    from sensor_sd.web import config as web_config

    return web_config.parse(path, data)


@dataclass(frozen=True, slots=True)
class _Option:
    """One variable: its name, the Settings field, the parser, its default (as the environment would spell it)."""

    env: str
    field: str
    parse: Callable[[str], Any]
    default: str
    help: str
    shown: Callable[[str], str] = str  # how a bad raw value appears in the error line

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


# The one table of variables: adding a variable is one row here, a field in Settings, a row in README.
OPTIONS: tuple[_Option, ...] = (
    _Option("INVENTORY_URL", "sources", sources.parse_inventory_url, "http://inventory_server:1337/inventory",
            "inventory URL, or name=url,name=url", shown=sources.redact_raw),
    _Option("UPDATE_INTERVAL", "update_interval", checks.decimal(*SECONDS_RANGE), "30", "seconds between polls"),
    _Option("TARGETS_FILE", "targets_file", _targets_file, "./data/targets.json",
            "file_sd output file; empty disables it"),
    _Option("METRICS_PORT", "metrics_port", checks.whole(1, 65535), "9100",
            "sensors' port, added to hostnames without one"),
    _Option("METRICS_PATH", "metrics_path", _metrics_path, "/metrics", "__metrics_path__ label"),
    _Option("TARGET_LABELS", "target_labels", _labels, "", "extra labels k=v,k=v"),
    _Option("LISTEN_ADDRESS", "listen_address", _listen, ":8080", "the SD's own HTTP server"),
    _Option("REQUEST_TIMEOUT", "request_timeout", checks.decimal(*SECONDS_RANGE), "5", "seconds per inventory request"),
    _Option("MAX_RESPONSE_BYTES", "max_response_bytes", checks.whole(1, 2**40), "67108864",
            "largest inventory body accepted"),
    _Option("MAX_DROP_RATIO", "max_drop_ratio", checks.decimal(0, 1), "0.5",
            "share of targets a poll may remove at once"),
    _Option("DROP_CONFIRMATIONS", "drop_confirmations", checks.whole(1, 1000), "3",
            "polls in a row that confirm a held drop"),
    _Option("DROP_WINDOW", "drop_window", checks.decimal(0, 604800), "3600",
            "seconds a published list stays the yardstick for drops; 0: the current list only"),
    _Option("DROP_HOLD", "drop_hold", checks.decimal(0, 604800), "300",
            "seconds a held drop must be seen before it applies; 0: the polls alone decide"),
    _Option("INVENTORY_TOKEN_FILE", "inventory_token_file", _readable_file(TOKEN_FILE_LIMIT, _token), "",
            "bearer token file"),
    _Option("INVENTORY_CA_FILE", "inventory_ca_file", _readable_file(CA_FILE_LIMIT, _ca), "",
            "CA bundle for the inventory"),
    _Option("WEB_CONFIG_FILE", "web_config", _readable_file(WEB_CONFIG_LIMIT, _web_config), "",
            "exporter-toolkit web config"),
    _Option("WEB_MAX_CONNECTIONS", "web_max_connections", checks.whole(1, 1_000_000), "512",
            "cap on open connections to the SD's HTTP server (as Prometheus' --web.max-connections)"),
    _Option("SOURCES_FILE", "sources_file", _sources_file, "",
            "YAML or JSON file of sources (not with INVENTORY_URL)"),
    _Option("LOG_FORMAT", "log_format", _choice("json", "text"), "json", "json or text"),
    _Option("LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error"), "info",
            "debug, info, warning, error"),
)
_BY_ENV: Mapping[str, _Option] = {o.env: o for o in OPTIONS}

# Spelled as Prometheus spells its own flag, besides the --web-max-connections every variable gets.
_FLAG_ALIASES: Mapping[str, tuple[str, ...]] = {"WEB_MAX_CONNECTIONS": ("--web.max-connections",)}

# Each variable's default as text (a view of the table, for help texts, docs checks and deployment tests).
DEFAULTS: Mapping[str, str] = {o.env: o.default for o in OPTIONS}


def _default(env: str) -> Any:
    """The typed default of a Settings field: the table's default text, parsed (so it is written once)."""
    opt = _BY_ENV[env]
    return opt.parse(opt.default)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, typed; the defaults come from OPTIONS (sources have none: a run needs an inventory)."""

    sources: tuple[Source, ...]
    update_interval: float = _default("UPDATE_INTERVAL")
    targets_file: Path | None = _default("TARGETS_FILE")
    metrics_port: int = _default("METRICS_PORT")
    metrics_path: str = _default("METRICS_PATH")
    target_labels: tuple[tuple[str, str], ...] = _default("TARGET_LABELS")
    listen_address: ListenAddress = _default("LISTEN_ADDRESS")
    request_timeout: float = _default("REQUEST_TIMEOUT")
    max_response_bytes: int = _default("MAX_RESPONSE_BYTES")
    max_drop_ratio: float = _default("MAX_DROP_RATIO")
    drop_confirmations: int = _default("DROP_CONFIRMATIONS")
    drop_window: float = _default("DROP_WINDOW")
    drop_hold: float = _default("DROP_HOLD")
    inventory_token_file: Path | None = _default("INVENTORY_TOKEN_FILE")
    inventory_ca_file: Path | None = _default("INVENTORY_CA_FILE")
    web_config: WebConfig | None = _default("WEB_CONFIG_FILE")  # parsed once; its TLS context built once
    web_max_connections: int = _default("WEB_MAX_CONNECTIONS")
    log_format: str = _default("LOG_FORMAT")
    log_level: str = _default("LOG_LEVEL")
    sources_file: Path | None = _default("SOURCES_FILE")

    @property
    def web_config_file(self) -> Path | None:
        return self.web_config.path if self.web_config is not None else None



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per variable; unset flags stay None so the environment applies."""
    for opt in OPTIONS:
        parser.add_argument(opt.flag, *_FLAG_ALIASES.get(opt.env, ()), dest=opt.field, default=None, metavar=opt.env,
                            help=f"{opt.help} (env {opt.env}, default {opt.default!r})")


def load(flags: Mapping[str, str | None] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from flags (winning) over environment over defaults.

    SOURCES_FILE is read first, since it decides what INVENTORY_URL means: with a sources file, INVENTORY_URL is
    not read at all, only required to be empty (a compose override or a ConfigMap can empty a variable, not
    remove it); without one, INVENTORY_URL is the sources.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    sources_file: Path | None = _parse(_BY_ENV["SOURCES_FILE"], flags, environ)
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.field == "sources" and sources_file is not None:
            if flags.get(opt.field) or environ.get(opt.env):  # its default does not count
                raise ConfigError(_named(_BY_ENV["SOURCES_FILE"], flags), str(sources_file),
                                  "not together with INVENTORY_URL; list every inventory in the sources file instead")
            continue
        values[opt.field] = sources_file if opt.field == "sources_file" else _parse(opt, flags, environ)
    if sources_file is not None:
        values["sources"] = _read_sources_file(sources_file, flags)
    if values["inventory_token_file"] is not None:
        with_credentials = [s.name for s in values["sources"] if urlsplit(s.url).username is not None]
        if with_credentials:  # aiohttp refuses both; Prometheus too allows only one of basic auth and a token
            raise ConfigError("INVENTORY_TOKEN_FILE", str(values["inventory_token_file"]),
                              "not together with user:password in INVENTORY_URL "
                              f"(source {with_credentials[0]}); use one of them")
    return Settings(**values)


def _raw(opt: _Option, flags: Mapping[str, str | None], environ: Mapping[str, str]) -> str:
    """The variable's text: the flag, else the environment, else the default."""
    raw = flags.get(opt.field)
    return raw if raw is not None else environ.get(opt.env, opt.default)


def _parse(opt: _Option, flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Any:
    raw = _raw(opt, flags, environ)
    try:
        return opt.parse(raw)
    except ValueError as exc:
        raise ConfigError(_named(opt, flags), opt.shown(raw), str(exc)) from None


def _named(opt: _Option, flags: Mapping[str, str | None]) -> str:
    """How an error names the setting: with its flag when the value came from one."""
    return f"{opt.env} ({opt.flag})" if flags.get(opt.field) is not None else opt.env


def _read_sources_file(path: Path, flags: Mapping[str, str | None]) -> tuple[Source, ...]:
    """The sources SOURCES_FILE lists; its errors are named after SOURCES_FILE (and its flag)."""
    try:
        return sources.read(path).sources
    except ConfigError as exc:
        raise ConfigError(_named(_BY_ENV["SOURCES_FILE"], flags), exc.value, exc.allowed) from None

