"""Basic auth, the client-certificate SAN check and the extra headers of a web config, on the aiohttp app.

Imported by `run` only (it needs aiohttp's server and bcrypt); the parsed
file comes from `Settings.web_config` (sensor_sd.web.config), so nothing here
reads or parses it again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from sensor_sd.web.config import WebConfig

_AUTH_CACHE = 1024  # verified (user, password) pairs remembered; bcrypt costs ~50-250 ms each
_BCRYPT_PARALLEL = 2  # bcrypt checks at once, so a flood of bad passwords cannot take every thread


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


def install(app: web.Application, config: WebConfig) -> None:
    """Add basic auth, the SAN check and the configured headers to `app` (before it starts).

    The TLS context is not built here: `config.ssl_context` was built once, when the file was loaded.
    """
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
