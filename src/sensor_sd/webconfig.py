"""TLS and basic auth for the SD's own server, from a Prometheus exporter-toolkit web config.

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
instead of being half applied. `bcrypt` and `PyYAML` are imported lazily: they
are only needed when WEB_CONFIG_FILE is set (`pip install sensor-sd[web]`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sensor_sd.files import WEB_CONFIG_LIMIT, UnreadableFile, read_regular

MAX_FILE_BYTES = WEB_CONFIG_LIMIT
UNAUTHENTICATED_ALLOWED = frozenset({"/-/healthy", "/-/ready"})
_AUTH_CACHE = 1024  # verified (user, password) pairs remembered; bcrypt costs ~50-250 ms each
_BCRYPT_PARALLEL = 2  # bcrypt checks at once, so a flood of bad passwords cannot take every thread
_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# Go crypto/tls names -> OpenSSL names (TLS 1.2; TLS 1.3 suites are not configurable in Go either).
_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS13_CIPHERS = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
# exporter-toolkit's allowed extra headers; None = any value.
_HEADERS: Mapping[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """`tls_server_config`, paths already resolved against the config file's directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None  # inline PEM
    key: str | None = None
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True, slots=True)
class WebConfig:
    path: Path
    tls: TLSServerConfig | None = None
    users: tuple[tuple[str, str], ...] = ()  # (user, bcrypt hash)
    headers: tuple[tuple[str, str], ...] = ()
    unauthenticated_paths: frozenset[str] = frozenset()


# --- loading ---------------------------------------------------------------


def load_web_config(path: Path | str) -> WebConfig:
    """Parse and validate the file, loading certificates once; ValueError says what is wrong and where."""
    path = Path(path)
    try:
        raw = read_regular(path, MAX_FILE_BYTES)  # a FIFO or /dev/zero is refused, never read
    except UnreadableFile as exc:
        raise ValueError(f"a readable regular web config file of at most {MAX_FILE_BYTES} bytes ({exc})") from None
    doc = _yaml(raw)
    if doc is None:
        doc = {}  # like exporter-toolkit: an empty file means plain HTTP, no auth
    _mapping(doc, "the top level")
    _keys(doc, "the top level", {"tls_server_config", "http_server_config", "basic_auth_users", "sensor_sd"},
          unsupported={"rate_limit"})
    base = path.parent
    tls = _tls(doc["tls_server_config"], base) if doc.get("tls_server_config") is not None else None
    users = _users(doc.get("basic_auth_users"))
    headers = _http_server(doc.get("http_server_config"))
    extension = doc.get("sensor_sd")
    open_paths: frozenset[str] = frozenset()
    if extension is not None:
        _mapping(extension, "sensor_sd")
        _keys(extension, "sensor_sd", {"unauthenticated_paths"})
        listed = _str_list(extension.get("unauthenticated_paths"), "sensor_sd.unauthenticated_paths")
        bad = sorted(set(listed) - UNAUTHENTICATED_ALLOWED)
        if bad:
            raise ValueError(f"sensor_sd.unauthenticated_paths: {bad[0]!r} cannot be opened; "
                             f"only {', '.join(sorted(UNAUTHENTICATED_ALLOWED))} may be listed")
        open_paths = frozenset(listed)
    config = WebConfig(path, tls, users, headers, open_paths)
    if tls is not None:
        tls_context(tls)  # fail at start, not on the first handshake
    return config


def _yaml(raw: bytes) -> Any:
    try:
        import yaml
    except ImportError:
        raise ValueError("PyYAML installed to read a web config (pip install 'sensor-sd[web]')") from None

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate keys, as Go's strict YAML decoding does."""

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key is not a plain value",
                                                        key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(raw, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"valid YAML{where} ({problem})") from None


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "empty"}.get(type(value), type(value).__name__)


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {_type(value)}")
    return value


def _keys(doc: dict[Any, Any], where: str, allowed: set[str], unsupported: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for key in doc:
        if key in unsupported:
            raise ValueError(f"{where}: {key!r} is not supported by sensor-sd")
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _str(value: Any, where: str, *, empty: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {_type(value)}")
    if not value and not empty:
        return None
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings, got {_type(value)}")
    return tuple(value)


def _file(value: Any, where: str, base: Path) -> Path | None:
    text = _str(value, where)
    if text is None:
        return None
    path = Path(text) if os.path.isabs(text) else base / text
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError(f"{where}: cannot read {str(path)!r}")
    return path


def _tls(value: Any, base: Path) -> TLSServerConfig:
    where = "tls_server_config"
    doc = _mapping(value, where)
    _keys(doc, where, {"cert_file", "key_file", "cert", "key", "client_ca_file", "client_ca", "client_auth_type",
                       "client_allowed_sans", "min_version", "max_version", "cipher_suites",
                       "prefer_server_cipher_suites"}, unsupported={"curve_preferences"})
    cert_file = _file(doc.get("cert_file"), f"{where}.cert_file", base)
    key_file = _file(doc.get("key_file"), f"{where}.key_file", base)
    cert, key = _str(doc.get("cert"), f"{where}.cert"), _str(doc.get("key"), f"{where}.key")
    if cert_file and cert:
        raise ValueError(f"{where}: give cert_file or cert, not both")
    if key_file and key:
        raise ValueError(f"{where}: give key_file or key, not both")
    if not (cert_file or cert):
        raise ValueError(f"{where}: cert_file is missing")
    if not (key_file or key):
        raise ValueError(f"{where}: key_file is missing")
    ca_file = _file(doc.get("client_ca_file"), f"{where}.client_ca_file", base)
    ca = _str(doc.get("client_ca"), f"{where}.client_ca")
    if ca_file and ca:
        raise ValueError(f"{where}: give client_ca_file or client_ca, not both")
    auth = _str(doc.get("client_auth_type"), f"{where}.client_auth_type") or "NoClientCert"
    if auth in _CLIENT_AUTH_UNSUPPORTED:
        raise ValueError(f"{where}.client_auth_type: {auth} is not supported by sensor-sd (it cannot accept "
                         "unverified client certificates); use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in _CLIENT_AUTH:
        raise ValueError(f"{where}.client_auth_type: {auth!r} is not one of {', '.join(_CLIENT_AUTH)}")
    if (ca_file or ca) and auth == "NoClientCert":
        raise ValueError(f"{where}: client CAs are configured without a client_auth_type")
    if auth != "NoClientCert" and not (ca_file or ca):
        raise ValueError(f"{where}: client_auth_type {auth} needs client_ca_file")
    sans = _str_list(doc.get("client_allowed_sans"), f"{where}.client_allowed_sans")
    if sans and auth == "NoClientCert":
        raise ValueError(f"{where}: client_allowed_sans needs a client_auth_type that verifies certificates")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = _str(doc.get(name), f"{where}.{name}") or default
        if version not in _TLS_VERSIONS:
            raise ValueError(f"{where}.{name}: {version!r} is not one of {', '.join(_TLS_VERSIONS)}")
        versions[name] = version
    if _TLS_VERSIONS[versions["min_version"]] > _TLS_VERSIONS[versions["max_version"]]:
        raise ValueError(f"{where}: min_version is above max_version")
    ciphers = _str_list(doc.get("cipher_suites"), f"{where}.cipher_suites")
    for suite in ciphers:
        if suite not in _CIPHERS and suite not in _TLS13_CIPHERS:
            raise ValueError(f"{where}.cipher_suites: unknown cipher suite {suite!r}")
    prefer = doc.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise ValueError(f"{where}.prefer_server_cipher_suites must be a boolean, got {_type(prefer)}")
    return TLSServerConfig(cert_file, key_file, cert, key, ca_file, ca, auth, sans, versions["min_version"],
                           versions["max_version"], ciphers, prefer)


def _users(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    doc = _mapping(value, "basic_auth_users")
    users = []
    for user, hashed in doc.items():
        if not isinstance(user, str) or not user:
            raise ValueError(f"basic_auth_users: user name {user!r} must be a non-empty string (quote it)")
        if ":" in user:
            raise ValueError(f"basic_auth_users: user name {user!r} cannot contain ':'")
        if not isinstance(hashed, str):
            raise ValueError(f"basic_auth_users.{user} must be a bcrypt hash string, got {_type(hashed)}")
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
    doc = _mapping(value, where)
    _keys(doc, where, {"http2", "headers"})
    if "http2" in doc and not isinstance(doc["http2"], bool):
        raise ValueError(f"{where}.http2 must be a boolean, got {_type(doc['http2'])}")
    raw = doc.get("headers")
    if raw is None:
        return ()
    headers = _mapping(raw, f"{where}.headers")
    out = []
    for name, text in headers.items():
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


# --- TLS -------------------------------------------------------------------


def tls_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """The server SSLContext; ValueError when the certificate, key or CA cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    except ValueError as exc:
        raise ValueError(f"tls_server_config: TLS versions {tls.min_version}..{tls.max_version} ({exc})") from None
    try:
        _load_chain(ctx, tls)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"tls_server_config: certificate and key cannot be loaded together ({_ssl_reason(exc)})") from None
    if tls.client_ca_file or tls.client_ca:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file) if tls.client_ca_file else None,
                                      cadata=tls.client_ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"tls_server_config: client CA cannot be loaded ({_ssl_reason(exc)})") from None
    ctx.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    suites = [_CIPHERS[s] for s in tls.cipher_suites if s in _CIPHERS]
    if suites:
        try:
            ctx.set_ciphers(":".join(dict.fromkeys(suites)))
        except ssl.SSLError as exc:
            raise ValueError(f"tls_server_config.cipher_suites: not available here ({_ssl_reason(exc)})") from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _load_chain(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    """load_cert_chain reads files only: inline PEM goes through a private temp dir, removed at once."""
    if tls.cert is None and tls.key is None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        return
    with tempfile.TemporaryDirectory(prefix="sensor-sd-tls-") as tmp:
        cert, key = str(tls.cert_file or ""), str(tls.key_file or "")
        if tls.cert is not None:
            cert = os.path.join(tmp, "cert.pem")
            _write_private(cert, tls.cert)
        if tls.key is not None:
            key = os.path.join(tmp, "key.pem")
            _write_private(key, tls.key)
        ctx.load_cert_chain(cert, key)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _ssl_reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


# --- basic auth ------------------------------------------------------------


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, as exporter-toolkit does.

    bcrypt is deliberately slow, so checks run in a thread (never on the event
    loop), at most `_BCRYPT_PARALLEL` at once, and verified pairs are kept
    in a small cache keyed by a keyed hash of the password (never the password
    itself). Unknown users are checked against a dummy hash so timing does not
    reveal which user names exist. `in_flight` counts the checks that are
    waiting for bcrypt or running it: how deep a burst of passwords is.
    """

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        import bcrypt  # lazily: only needed with basic_auth_users

        self._bcrypt = bcrypt
        self._users = {user: hashed.encode() for user, hashed in users}
        cost = min((int(h[4:6]) for _, h in users), default=10)
        self._dummy = bcrypt.hashpw(b"sensor-sd dummy password", bcrypt.gensalt(rounds=max(4, cost)))
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._slots = asyncio.Semaphore(_BCRYPT_PARALLEL)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Checks past the cache, queued for a bcrypt slot or hashing now."""
        return self._in_flight

    @staticmethod
    def credentials(header: str | None) -> tuple[str, str] | None:
        """(user, password) from an Authorization header, None when absent or malformed."""
        if not header:
            return None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    async def check(self, header: str | None) -> bool:
        creds = self.credentials(header)
        if creds is None:
            return False
        user, password = creds
        hashed = self._users.get(user)
        secret = password.encode()
        key = hmac.new(self._key, user.encode() + b"\0" + (hashed or b"") + b"\0" + secret, hashlib.sha256).digest()
        if hashed is not None and key in self._cache:
            self._cache.move_to_end(key)
            return True
        self._in_flight += 1
        try:
            async with self._slots:
                ok = await asyncio.to_thread(self._verify, secret, hashed or self._dummy)
        finally:
            self._in_flight -= 1
        if ok and hashed is not None:
            self._cache[key] = None
            if len(self._cache) > _AUTH_CACHE:
                self._cache.popitem(last=False)
            return True
        return False

    def _verify(self, password: bytes, hashed: bytes) -> bool:
        try:
            return bool(self._bcrypt.checkpw(password, hashed))
        except ValueError:  # e.g. a password over bcrypt's 72 bytes: never a match
            return False


# Where install() keeps the app's BasicAuth, for whoever needs its state (tests, diagnostics).
BASIC_AUTH = web.AppKey("sensor_sd_basic_auth", BasicAuth)


def _unauthorized() -> web.Response:
    return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="sensor-sd"'})


def _auth_middleware(auth: BasicAuth, open_paths: frozenset[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path in open_paths and request.method in ("GET", "HEAD"):
            return await handler(request)
        if not await auth.check(request.headers.get("Authorization")):
            return _unauthorized()
        return await handler(request)

    return middleware


def _sans_middleware(allowed: frozenset[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """client_allowed_sans: a verified client certificate must name one of these (DNS, IP, email or URI)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        names = {value for _, value in (cert or {}).get("subjectAltName", ())}
        if not names & allowed:
            return web.Response(status=403, text="client certificate not allowed\n")
        return await handler(request)

    return middleware


def install(app: web.Application, config: WebConfig) -> ssl.SSLContext | None:
    """Add basic auth and the configured headers to `app` (before it starts); return the TLS context."""
    if config.tls is not None and config.tls.client_allowed_sans:
        app.middlewares.append(_sans_middleware(frozenset(config.tls.client_allowed_sans)))
    if config.users:
        auth = BasicAuth(config.users)
        app[BASIC_AUTH] = auth
        app.middlewares.append(_auth_middleware(auth, config.unauthenticated_paths))
    if config.headers:
        headers = config.headers

        async def add_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
            for name, value in headers:
                response.headers[name] = value

        app.on_response_prepare.append(add_headers)
    return tls_context(config.tls) if config.tls is not None else None
