"""The exporter-toolkit web config file: loaded, checked against its schema, parsed once.

The file format is the one Prometheus' exporters read with `--web.config.file`,
so operators reuse the file (and the bcrypt hashes) they already have:

    tls_server_config:
      cert_file: server.crt          # relative paths: against this file's directory
      key_file: server.key
      client_ca_file: ca.crt         # optional mTLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt

As in exporter-toolkit, unknown keys are errors and, once `basic_auth_users`
is set, *every* path needs a password, `/-/healthy` included. Probes that
cannot send one (a Kubernetes `httpGet` probe without headers) are let in by
a sensor-sd extension of the format, which accepts only the two paths that
reveal nothing:

    sensor_sd:
      unauthenticated_paths: ["/-/healthy", "/-/ready"]

Where Python's `ssl` cannot do what the Go toolkit does (`RequestClientCert`,
`RequireAnyClientCert`: accepting unverified client certificates;
`curve_preferences`; `rate_limit`), the file is rejected with that reason
instead of being half applied. The keys and their types are tables (`_TOP`,
`_TLS`, `_HTTP`, `_EXTENSION`) checked by `sensor_sd.checks`; what spans keys
(a certificate from a file or inline, a CA with a verifying mode) is checked
by hand below. PyYAML is imported lazily: it is only needed when
WEB_CONFIG_FILE is set (`pip install sensor-sd[web]`).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor_sd import checks
from sensor_sd.checks import Check
from sensor_sd.files import WEB_CONFIG_LIMIT, UnreadableFile, read_regular
from sensor_sd.web.tls import (CIPHERS, CLIENT_AUTH, CLIENT_AUTH_UNSUPPORTED, TLS13_CIPHERS, VERSIONS,
                               TLSServerConfig, tls_context)

MAX_FILE_BYTES = WEB_CONFIG_LIMIT
UNAUTHENTICATED_ALLOWED = frozenset({"/-/healthy", "/-/ready"})
_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
# exporter-toolkit's allowed extra headers; None = any value.
_HEADERS: Mapping[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The parsed file; `ssl_context` is built once at load (which proves the certificate and key fit)."""

    path: Path
    tls: TLSServerConfig | None = None
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (user, bcrypt hash): kept out of reprs
    headers: tuple[tuple[str, str], ...] = ()
    unauthenticated_paths: frozenset[str] = frozenset()
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


def load(path: Path | str) -> WebConfig:
    """Read, parse and validate the file; ValueError says in one line what is wrong and where."""
    path = Path(path)
    try:
        raw = read_regular(path, MAX_FILE_BYTES)  # a FIFO or /dev/zero is refused, never read
    except UnreadableFile as exc:
        raise ValueError(f"a readable regular web config file of at most {MAX_FILE_BYTES} bytes ({exc})") from None
    return parse(path, raw)


def _any(value: Any, where: str) -> Any:
    return value


# The schema: each section's keys and the check of each value (sensor_sd.checks; absent values are None).
_TOP: Mapping[str, Check] = {"tls_server_config": _any, "http_server_config": _any, "basic_auth_users": _any,
                             "sensor_sd": _any}
_HTTP: Mapping[str, Check] = {"http2": checks.boolean, "headers": _any}
_EXTENSION: Mapping[str, Check] = {"unauthenticated_paths": checks.string_list}


def parse(path: Path, raw: bytes) -> WebConfig:
    """The file's bytes as a WebConfig (relative paths against `path`'s directory); ValueError as `load`."""
    doc = _yaml(raw)
    if doc is None:
        doc = {}  # like exporter-toolkit: an empty file means plain HTTP, no auth
    top = checks.fields(doc, "the top level", _TOP, unsupported={"rate_limit"})
    tls = _tls(top["tls_server_config"], path.parent) if top["tls_server_config"] is not None else None
    users = _users(top["basic_auth_users"])
    headers = _http_server(top["http_server_config"])
    open_paths: frozenset[str] = frozenset()
    if top["sensor_sd"] is not None:
        listed = checks.fields(top["sensor_sd"], "sensor_sd", _EXTENSION)["unauthenticated_paths"]
        bad = sorted(set(listed) - UNAUTHENTICATED_ALLOWED)
        if bad:
            raise ValueError(f"sensor_sd.unauthenticated_paths: {bad[0]!r} cannot be opened; "
                             f"only {', '.join(sorted(UNAUTHENTICATED_ALLOWED))} may be listed")
        open_paths = frozenset(listed)
    context = tls_context(tls) if tls is not None else None  # fail at start, not on the first handshake
    return WebConfig(path, tls, users, headers, open_paths, context)


def _yaml(raw: bytes) -> Any:
    try:
        return checks.yaml_document(raw)
    except ImportError:
        raise ValueError("PyYAML installed to read a web config (pip install 'sensor-sd[web]')") from None


def _file(base: Path) -> Check:
    """A path (relative ones against `base`, the config file's directory) to a readable file; None when absent."""
    def check(value: Any, where: str) -> Path | None:
        text = checks.string(value, where)
        if text is None:
            return None
        path = Path(text) if os.path.isabs(text) else base / text
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ValueError(f"{where}: cannot read {str(path)!r}")
        return path

    return check


def _client_auth(value: Any, where: str) -> str:
    auth = checks.string(value, where) or "NoClientCert"
    if auth in CLIENT_AUTH_UNSUPPORTED:
        raise ValueError(f"{where}: {auth} is not supported by sensor-sd (it cannot accept unverified client "
                         "certificates); use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    checks.one_of(*CLIENT_AUTH)(auth, where)
    return auth


def _cipher_suites(value: Any, where: str) -> tuple[str, ...]:
    suites = checks.string_list(value, where)
    for suite in suites:
        if suite not in CIPHERS and suite not in TLS13_CIPHERS:
            raise ValueError(f"{where}: unknown cipher suite {suite!r}")
    return suites


def _tls_schema(base: Path) -> Mapping[str, Check]:
    return {"cert_file": _file(base), "key_file": _file(base), "cert": checks.string, "key": checks.string,
            "client_ca_file": _file(base), "client_ca": checks.string, "client_auth_type": _client_auth,
            "client_allowed_sans": checks.string_list, "min_version": checks.one_of(*VERSIONS),
            "max_version": checks.one_of(*VERSIONS), "cipher_suites": _cipher_suites,
            "prefer_server_cipher_suites": checks.boolean}


def _tls(value: Any, base: Path) -> TLSServerConfig:
    where = "tls_server_config"
    v = checks.fields(value, where, _tls_schema(base), unsupported={"curve_preferences"})
    for file_key, inline_key in (("cert_file", "cert"), ("key_file", "key"), ("client_ca_file", "client_ca")):
        if v[file_key] and v[inline_key]:
            raise ValueError(f"{where}: give {file_key} or {inline_key}, not both")
    for file_key, inline_key in (("cert_file", "cert"), ("key_file", "key")):
        if not (v[file_key] or v[inline_key]):
            raise ValueError(f"{where}: {file_key} is missing")
    auth, has_ca = v["client_auth_type"], bool(v["client_ca_file"] or v["client_ca"])
    if has_ca and auth == "NoClientCert":
        raise ValueError(f"{where}: client CAs are configured without a client_auth_type")
    if auth != "NoClientCert" and not has_ca:
        raise ValueError(f"{where}: client_auth_type {auth} needs client_ca_file")
    if v["client_allowed_sans"] and auth == "NoClientCert":
        raise ValueError(f"{where}: client_allowed_sans needs a client_auth_type that verifies certificates")
    low, high = v["min_version"] or "TLS12", v["max_version"] or "TLS13"
    if VERSIONS[low] > VERSIONS[high]:
        raise ValueError(f"{where}: min_version is above max_version")
    prefer = v["prefer_server_cipher_suites"]
    return TLSServerConfig(v["cert_file"], v["key_file"], v["cert"], v["key"], v["client_ca_file"], v["client_ca"],
                           auth, v["client_allowed_sans"], low, high, v["cipher_suites"],
                           True if prefer is None else prefer)


def _users(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    users = []
    for user, hashed in checks.mapping(value, "basic_auth_users").items():
        if not isinstance(user, str) or not user:
            raise ValueError(f"basic_auth_users: user name {user!r} must be a non-empty string (quote it)")
        if ":" in user:
            raise ValueError(f"basic_auth_users: user name {user!r} cannot contain ':'")
        if not isinstance(hashed, str):
            raise ValueError(f"basic_auth_users.{user} must be a bcrypt hash string, got {checks.type_name(hashed)}")
        m = _BCRYPT_RE.fullmatch(hashed)
        if m is None or not 4 <= int(m.group(1)) <= 31:
            raise ValueError(f"basic_auth_users.{user} is not a bcrypt hash ($2y$<cost>$<53 characters>); "
                             "make one with htpasswd -nBC 10 '' or python -c 'import bcrypt; ...'")
        users.append((user, hashed))
    return tuple(users)


def _http_server(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    where = "http_server_config"
    raw = checks.fields(value, where, _HTTP)["headers"]
    if raw is None:
        return ()
    out = []
    for name, text in checks.mapping(raw, f"{where}.headers").items():
        if name not in _HEADERS:
            raise ValueError(f"{where}.headers: header {name!r} can not be configured "
                             f"(allowed: {', '.join(_HEADERS)})")
        if not isinstance(text, str) or "\r" in text or "\n" in text:
            raise ValueError(f"{where}.headers.{name} must be a one-line string")
        allowed = _HEADERS[name]
        if allowed is not None and text.lower() not in allowed:
            raise ValueError(f"{where}.headers.{name}: {text!r} is not one of {', '.join(allowed)}")
        out.append((name, text))
    return tuple(out)
