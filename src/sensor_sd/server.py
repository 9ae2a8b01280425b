"""The SD's own HTTP server: http_sd targets, metrics, health, refresh, status page.

Handlers only read the current immutable snapshot; every body they send was
rendered when the snapshot changed, so a request costs no JSON work.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import gc
import gzip
import logging
import socket
import ssl
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from sensor_sd import __version__, status
from sensor_sd.config import Settings
from sensor_sd.metrics import Metrics
from sensor_sd.poller import PollResult, Result, SourceStatus
from sensor_sd.store import Store
from sensor_sd.targets import Snapshot, TargetGroup, hashmod, render

JSON = "application/json"
MAX_SHARDS = 1000
_MAX_SHARD_DIGITS = 6  # leading zeros allowed, thousands of them not
# Request limits: a request line or header line over 8 KiB is a 400 from aiohttp's parser, more
# than 64 header lines too; the middleware answers 431 above 32 KiB of headers in total.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 64
MAX_HEADER_BYTES = 32 * 1024
# No endpoint takes a body; 1 KiB is plenty for an empty POST /-/refresh. Larger is a 413, decided on
# Content-Length before any of the body is read, and the connection is closed rather than drained.
MAX_BODY_BYTES = 1024
# Idle keep-alive connections and unfinished request headers are closed after this long;
# above Prometheus' 5 s http_sd refresh so its connection is reused.
IDLE_TIMEOUT_SECONDS = 15.0
_SHARD_CACHE = 64  # rendered shard bodies kept per snapshot
CLOSE_REASONS = ("over_limit", "evicted", "write_timeout")
_GZIP_MIN_BYTES = 1024  # below this gzip saves nothing worth the header


@dataclass(frozen=True, slots=True)
class _Body:
    data: bytes
    etag: str


class _ShardCache:
    """Shard bodies rendered once per (snapshot, shards, shard) and reused.

    At 100k targets hashing every address costs ~65 ms, so it runs in a thread
    (never on the event loop, which must keep answering /-/healthy), once per
    snapshot, and concurrent requests for the same shard share one rendering.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._hashes: asyncio.Future[tuple[tuple[int, ...], ...]] | None = None
        self._bodies: OrderedDict[tuple[int, int], asyncio.Future[_Body]] = OrderedDict()

    async def get(self, snapshot: Snapshot, index: int, total: int) -> _Body:
        if snapshot is not self._snapshot:
            self._snapshot, self._hashes, self._bodies = snapshot, None, OrderedDict()
        key = (index, total)
        body = self._bodies.get(key)
        if body is None or (body.done() and body.exception() is not None):
            body = asyncio.ensure_future(self._render(snapshot, index, total))
            self._bodies[key] = body
            if len(self._bodies) > _SHARD_CACHE:
                self._bodies.popitem(last=False)
        return await asyncio.shield(body)

    async def _render(self, snapshot: Snapshot, index: int, total: int) -> _Body:
        if self._hashes is None or (self._hashes.done() and self._hashes.exception() is not None):
            self._hashes = asyncio.ensure_future(asyncio.to_thread(_address_hashes, snapshot))
        hashes = await asyncio.shield(self._hashes)
        data = await asyncio.to_thread(_render_shard, snapshot, hashes, index, total)
        return _Body(data, f'{snapshot.etag[:-1]}-{index}-{total}"')


class _GzipCache:
    """gzip copies of the last few bodies, compressed once in a thread.

    Prometheus' Go HTTP client asks for gzip; a 100k-target body shrinks
    from 2 MB to well under 200 KB, which is what bounds serving latency.
    """

    def __init__(self) -> None:
        self._bodies: OrderedDict[str, asyncio.Future[_Body]] = OrderedDict()

    async def get(self, body: _Body) -> _Body:
        future = self._bodies.get(body.etag)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.ensure_future(asyncio.to_thread(_gzip_body, body))
            self._bodies[body.etag] = future
            if len(self._bodies) > _SHARD_CACHE:
                self._bodies.popitem(last=False)
        return await asyncio.shield(future)


def _gzip_body(body: _Body) -> _Body:
    # mtime=0: identical bodies give identical bytes; level 6 is 10x smaller on target lists.
    return _Body(gzip.compress(body.data, compresslevel=6, mtime=0), f'{body.etag[:-1]}-gzip"')


def _accepts_gzip(request: web.Request) -> bool:
    for coding in request.headers.get("Accept-Encoding", "").split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            return True
    return False


def _address_hashes(snapshot: Snapshot) -> tuple[tuple[int, ...], ...]:
    """hashmod's 64-bit value of every `__address__`, per group; the modulus is applied later."""
    return tuple(tuple(hashmod(t, 1 << 64) for t in g.targets) for g in snapshot.groups)


def _render_shard(snapshot: Snapshot, hashes: tuple[tuple[int, ...], ...], index: int, total: int) -> bytes:
    groups = (TargetGroup(g.source, tuple(t for t, h in zip(g.targets, hs) if h % total == index), g.labels)
              for g, hs in zip(snapshot.groups, hashes))
    return render(groups)


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"status": "error", "error": message}), content_type=JSON)


def _shard_params(query: "web.BaseRequest") -> tuple[int, int] | None:
    """(index, total) from ?shard=I&shards=N, None when absent; raises HTTPBadRequest when wrong.

    The text is checked before any int(): Python refuses to convert more than
    4300 digits, and that must be a 400 here, never a 500.
    """
    shard_all, shards_all = query.query.getall("shard", []), query.query.getall("shards", [])
    if not shard_all and not shards_all:
        return None
    if len(shard_all) != 1 or len(shards_all) != 1:
        raise _bad_request("shard and shards must be given together, once each")
    shard_text, shards_text = shard_all[0], shards_all[0]
    for text in (shard_text, shards_text):
        if not (0 < len(text) <= _MAX_SHARD_DIGITS and text.isascii() and text.isdigit()):
            raise _bad_request(f"shard and shards must be non-negative integers of at most {_MAX_SHARD_DIGITS} digits")
    index, total = int(shard_text), int(shards_text)
    if not 1 <= total <= MAX_SHARDS:
        raise _bad_request(f"shards must be from 1 to {MAX_SHARDS}")
    if index >= total:
        raise _bad_request("shard must be less than shards")
    return index, total


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=reason + "\n", content_type="text/plain")


class Polling(Protocol):
    """What the server asks of the scheduler: a refresh now (`/-/refresh`), the sources' state (`/`)."""

    async def refresh(self) -> list[PollResult]: ...
    def status(self) -> tuple[SourceStatus, ...]: ...


class Handlers:
    """Request handlers: they read the store, ask `polling` for a refresh or the sources' state."""

    def __init__(self, store: Store, settings: Settings, polling: Polling, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.polling = polling
        self.metrics = metrics
        self._shards = _ShardCache()
        self._gzip = _GzipCache()

    async def targets(self, request: web.Request) -> web.StreamResponse:
        params = _shard_params(request)
        snapshot = self.store.snapshot
        if snapshot is None:
            # Never an empty list: Prometheus would drop every target it has.
            return _json_error(503, "no good inventory snapshot yet")
        body = _Body(snapshot.body, snapshot.etag) if params is None else await self._shards.get(snapshot, *params)
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if _accepts_gzip(request) and len(body.data) >= _GZIP_MIN_BYTES:
            body = await self._gzip.get(body)
            headers["Content-Encoding"] = "gzip"
        headers["ETag"] = body.etag
        if _etag_matches(request.headers.get("If-None-Match"), body.etag):
            return web.Response(status=304, headers=headers)
        return await _send(request, body.data, headers)

    async def metrics_page(self, request: web.Request) -> web.Response:
        data = generate_latest(self.metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="sensor-sd is healthy.\n")

    async def ready(self, request: web.Request) -> web.Response:
        if self.store.snapshot is None:
            return web.Response(status=503, text="sensor-sd is not ready: no good inventory snapshot yet.\n")
        return web.Response(text="sensor-sd is ready.\n")

    async def refresh(self, request: web.Request) -> web.Response:
        results = await self.polling.refresh()
        failed = [r for r in results if r.result is Result.ERROR]
        snapshot = self.store.snapshot
        body = {"status": "error" if failed else "success", "targets": snapshot.count if snapshot else 0,
                "sources": [r.summary() for r in results]}
        return web.Response(status=502 if failed else 200, body=orjson.dumps(body), content_type=JSON)

    async def status_page(self, request: web.Request) -> web.Response:
        s = self.settings
        view = status.View(now=time.time(), version=__version__, sources=self.polling.status(),
                           changes=self.store.changes, snapshot=self.store.snapshot,
                           update_interval=s.update_interval, confirmations=s.drop_confirmations)
        return web.Response(body=status.render(view), headers=status.HEADERS)

    async def favicon(self, request: web.Request) -> web.Response:
        # Browsers ask for it on every page (JSON ones too); 204 keeps their console free of 404s.
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: one tag, a list, weak tags or `*` (RFC 9110 weak comparison)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


@web.middleware
async def _limit_request(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """431 past MAX_HEADER_BYTES of headers in total (aiohttp only caps each line); 413 past MAX_BODY_BYTES of body."""
    if sum(len(k) + len(v) + 4 for k, v in request.raw_headers) > MAX_HEADER_BYTES:
        return web.Response(status=431, text="request header fields too large\n")
    return await _oversized_body(request) or await handler(request)


async def _oversized_body(request: web.Request) -> web.Response | None:
    """413 for a body over MAX_BODY_BYTES, decided on Content-Length before a byte of it is read.

    A chunked body has no length up front: at most MAX_BODY_BYTES + 1 of it is read
    to decide. No endpoint uses a body, so nothing is lost by reading it here.
    """
    length = request.content_length  # aiohttp's parser already refused a malformed or negative one
    if length is not None:
        return await _too_large(request) if length > MAX_BODY_BYTES else None
    if not request.body_exists:
        return None
    seen = 0
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_SECONDS):
            while seen <= MAX_BODY_BYTES:
                chunk = await request.content.read(MAX_BODY_BYTES + 1 - seen)
                if not chunk:
                    return None
                seen += len(chunk)
    except TimeoutError:
        return await _refuse(request, 408, "request body not received in time")
    return await _too_large(request)


async def _too_large(request: web.Request) -> web.Response:
    return await _refuse(request, 413, f"request body over {MAX_BODY_BYTES} bytes")


async def _refuse(request: web.Request, status: int, reason: str) -> web.Response:
    """Answer, then close the connection instead of reading (and discarding) the rest of the body."""
    response = web.Response(status=status, text=reason + "\n", headers={"Connection": "close"})
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # flushes the answer, then closes
    return response


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """Expect: 100-continue: no "100 Continue" for a body that will be refused anyway (aiohttp's default sends it)."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}\n")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return await _too_large(request)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


class ServerMetrics:
    """The HTTP server's own series, on the process registry: fenced failures and connection bounds."""

    def __init__(self, registry: CollectorRegistry) -> None:
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


def _fence(metrics: ServerMetrics, logger: logging.Logger) -> Middleware:
    """Any unexpected exception in a handler becomes a 500, counted and logged once with its traceback.

    HTTP errors (4xx) and a client that went away are not bugs and pass through.
    """

    @web.middleware
    async def fence(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPException, asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            resource = request.match_info.route.resource
            name = resource.canonical if resource is not None else "unmatched"
            metrics.internal_errors.labels(handler=name).inc()
            logger.error("internal error in a request handler", exc_info=True,
                         extra={"handler": name, "method": request.method})
            return web.Response(status=500, text="internal error\n", headers={"Connection": "close"})

    return fence


# --- connection bounds -------------------------------------------------------------------------
# A client that never reads its answer must not hold memory or a connection slot for ever:
# bodies go out in writes the kernel takes whole, so at most one slice waits in the process per
# connection and UNSENT_LIMIT unsent bytes in the kernel; a connection whose writes stay paused for
# WRITE_TIMEOUT_SECONDS is aborted; at most WEB_MAX_CONNECTIONS are served at once.
WRITE_TIMEOUT_SECONDS = 10.0
# At the cap, a connection idle, or waiting for its client to read, this long may be displaced ...
STUCK_AFTER_SECONDS = 0.25
# ... and one whose request has not been answered (nor reached a handler) this long after its last byte.
SLOW_REQUEST_SECONDS = 2.0
# Unsent bytes the kernel holds per connection (TCP_NOTSENT_LOWAT). Without a bound, autotuning
# grows the send buffer to 4 MiB, and 512 clients that never read would pin 2 GiB of the host's
# TCP memory. Bounding what is *unsent* rather than the whole send buffer (SO_SNDBUF, as before)
# leaves autotuning the bytes in flight: a reading client gets the body in a few large writes
# (at 100k targets, 16 connections: p99 half of that with a 64 KiB SO_SNDBUF, bench/http_sd_ab.py).
UNSENT_LIMIT = 128 * 1024
_TCP_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS
_SIOCOUTQNSD = 0x894B  # Linux ioctl: the socket's unsent bytes
_WRITE_SLICE = 32 * 1024
# A crowd of this many connections leaves its memory behind: 50 connections with 64 KB of
# headers each held 3 MB in the heap until it was handed back.
_CROWD = 16
RELEASE_EVERY_SECONDS = 10.0
_RECHECK_SECONDS = 0.05  # how often waiting connections look for a slot
_OVER_LIMIT = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Connection: close\r\nContent-Length: 39\r\n\r\ntoo many connections (WEB_MAX_CONNECTIONS)")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def _release_memory() -> None:
    """Hand the heap pages a crowd of connections left free back to the system: glibc keeps
    freed pages inside its heap otherwise, and RSS would stay at the crowd's peak. The collection
    first frees what aiohttp's per-connection reference cycles still hold (once per crowd)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class _Conn:
    """What the gate knows of one served connection (mutable: it changes with every request)."""

    __slots__ = ("transport", "idle_since", "busy", "unanswered_since", "paused_since", "timer", "gone")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.idle_since = now  # its last request answered then
        self.busy = 0  # requests of it inside a handler
        # Served, or bytes of a request arrived, then; not answered since. A connection just served
        # counts as one: its request may be in the kernel still, waiting for a busy loop to read it.
        self.unanswered_since: float | None = now
        self.paused_since: float | None = None  # its writes wait for the client to read since then
        self.timer: asyncio.TimerHandle | None = None  # the write timeout while paused
        self.gone = False

    def displaceable_at(self) -> float | None:
        """When it may give its slot to a waiting connection; None while a handler works for it.

        Idle or not reading: after STUCK_AFTER_SECONDS. With request bytes not yet answered (the
        request may only be queued behind a busy loop, or be a slowloris): after SLOW_REQUEST_SECONDS.
        """
        if self.paused_since is not None:
            return self.paused_since + STUCK_AFTER_SECONDS
        if self.busy:
            return None
        if self.unanswered_since is not None:
            return self.unanswered_since + SLOW_REQUEST_SECONDS
        return self.idle_since + STUCK_AFTER_SECONDS


class Connections:
    """The connections of the server: at most `limit` (WEB_MAX_CONNECTIONS) served at once.

    As with Prometheus' --web.max-connections, connections past the cap wait (here:
    accepted, not read) until a slot frees, so a burst of real clients is served
    in turn. Unlike it, the newest waiting is served first (a health check does not
    queue behind a crowd), and a waiting connection may displace the served one
    stuck the longest: idle or not reading for STUCK_AFTER_SECONDS, or silent or
    unanswered for SLOW_REQUEST_SECONDS. So clients that never read, or never send,
    cannot lock out /-/healthy or Prometheus. At most `limit` more wait; past that
    the one waiting the longest gets a 503 and is closed.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self.limit = 512
        self.metrics = metrics
        self._open: dict[asyncio.Transport, _Conn] = {}
        self._waiting: deque[_Gated] = deque()
        self._recheck: asyncio.TimerHandle | None = None
        self._crowd = 0  # most connections served since memory was last handed back
        self._release: asyncio.TimerHandle | None = None
        self._released_at = -RELEASE_EVERY_SECONDS
        metrics.write_buffered.set_function(self._buffered)

    def _buffered(self) -> float:
        return float(sum(t.get_write_buffer_size() for t in list(self._open)))

    def arrive(self, proto: _Gated) -> None:
        """A new connection: served now, made to wait, or refused."""
        if len(self._waiting) >= self.limit:  # the longest waiting goes: a fresh one (a probe) has the better chance
            self.metrics.closed.labels(reason="over_limit").inc()
            self._waiting.popleft().refuse()
        proto.wait()
        self._waiting.append(proto)
        if len(self._open) < self.limit:
            self._admit_waiting()
        else:  # at the cap: one scan for all the connections accepted in this loop iteration
            self._schedule(0)

    def _admit_waiting(self) -> None:
        if self._recheck is not None:  # one pending run at most, however it was asked for
            self._recheck.cancel()
            self._recheck = None
        now = time.monotonic()
        victims: list[_Conn] | None = None
        while self._waiting:
            if len(self._open) >= self.limit:
                if victims is None:  # one scan for the whole batch: oldest stuck last, popped first
                    victims = self._stuck(now)
                if not victims:
                    break
                self._evict(victims.pop())
            proto = self._waiting.pop()  # newest first: a health check does not queue behind a crowd
            conn = self._open[proto.transport] = _Conn(proto.transport, now)
            proto.serve(conn)
        self.metrics.connections.set(len(self._open))
        self._crowd = max(self._crowd, len(self._open))
        if self._waiting:  # a served connection may become displaceable with time
            self._schedule(_RECHECK_SECONDS)

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._recheck is not None and self._recheck.when() <= loop.time() + delay:
            return
        if self._recheck is not None:
            self._recheck.cancel()
        self._recheck = loop.call_later(delay, self._admit_waiting)

    def _stuck(self, now: float) -> list[_Conn]:
        """Served connections that may be displaced now, the longest displaceable last."""
        stuck = [(at, i, c) for i, c in enumerate(self._open.values())
                 if (at := c.displaceable_at()) is not None and at <= now]
        stuck.sort(reverse=True)
        return [c for _, _, c in stuck]

    def _evict(self, conn: _Conn) -> None:
        self.metrics.closed.labels(reason="evicted").inc()
        self._drop(conn)
        conn.transport.abort()

    def forget(self, proto: _Gated) -> None:
        """A waiting connection closed by its client."""
        try:
            self._waiting.remove(proto)
        except ValueError:
            pass

    def release(self, conn: _Conn) -> None:
        self._drop(conn)
        if self._waiting:
            self._schedule(0)

    def _drop(self, conn: _Conn) -> None:
        if conn.gone:
            return
        conn.gone = True
        if conn.timer is not None:
            conn.timer.cancel()
        del self._open[conn.transport]
        self.metrics.connections.set(len(self._open))
        if self._crowd >= _CROWD and len(self._open) + len(self._waiting) <= self._crowd // 16:  # the crowd has gone
            self._crowd = len(self._open)
            self._release_soon()

    def _release_soon(self) -> None:
        """Hand memory back a second after a crowd left (its buffers are freed by then), and at
        most every RELEASE_EVERY_SECONDS: the collection pauses the loop in proportion to the heap."""
        if self._release is not None:  # the pending one covers this crowd too
            return
        loop = asyncio.get_running_loop()
        delay = max(1.0, self._released_at + RELEASE_EVERY_SECONDS - loop.time())
        self._release = loop.call_later(delay, self._released)

    def _released(self) -> None:
        _release_memory()
        self._release = None
        self._released_at = asyncio.get_running_loop().time()

    def paused(self, conn: _Conn) -> None:
        conn.paused_since = time.monotonic()
        if conn.timer is None and not conn.gone:
            conn.timer = asyncio.get_running_loop().call_later(WRITE_TIMEOUT_SECONDS, self._write_timeout, conn)

    def resumed(self, conn: _Conn) -> None:
        conn.paused_since = None
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _write_timeout(self, conn: _Conn) -> None:
        conn.timer = None
        if conn.gone:
            return
        self.metrics.closed.labels(reason="write_timeout").inc()
        self._drop(conn)
        conn.transport.abort()
        if self._waiting:
            self._admit_waiting()

    def middleware(self) -> Middleware:
        """Marks a connection busy while a handler runs for it: a busy connection is displaced only
        when its writes are stuck."""

        @web.middleware
        async def track(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
            conn = self._open.get(request.transport) if request.transport is not None else None
            if conn is None:
                return await handler(request)
            conn.busy += 1
            try:
                return await handler(request)
            finally:
                conn.busy -= 1
                conn.idle_since, conn.unanswered_since = time.monotonic(), None

        return track

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _Gated(inner, self)


class _Gated(asyncio.Protocol):
    """aiohttp's protocol behind the gate: it sees the connection only once it is served."""

    def __init__(self, inner: asyncio.Protocol, gate: Connections) -> None:
        self._inner = inner
        self._gate = gate
        self._transport: asyncio.Transport | None = None
        self._conn: _Conn | None = None
        self._waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # TCP, or TLS over it
        self._transport = transport
        self._gate.arrive(self)

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None, "used before connection_made"
        return self._transport

    def wait(self) -> None:
        self._waiting = True
        self.transport.pause_reading()  # its request stays in the kernel until it is served

    def refuse(self) -> None:
        self._waiting = False
        self.transport.write(_OVER_LIMIT)
        self.transport.close()

    def serve(self, conn: _Conn) -> None:
        transport = self.transport
        self._conn, self._waiting = conn, False
        # Paused as soon as a byte waits in the process, resumed once none does: `_send` then writes
        # straight to the kernel again, and a client that never reads holds at most one slice here.
        transport.set_write_buffer_limits(high=0, low=0)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            if _TCP_NOTSENT_LOWAT is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, UNSENT_LIMIT)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNSENT_LIMIT // 2)  # the kernel doubles it
        self._inner.connection_made(transport)
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._gate.release(self._conn)
            self._inner.connection_lost(exc)
        elif self._waiting:
            self._gate.forget(self)

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._conn.unanswered_since = time.monotonic()
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._conn is not None else None

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._gate.paused(self._conn)
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._gate.resumed(self._conn)
            self._inner.resume_writing()


class _GatedSite(web.TCPSite):
    """TCPSite whose every connection passes the gate first."""

    def __init__(self, runner: web.AppRunner, gate: Connections, host: str | None, port: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        gate = self._gate
        self._server = await asyncio.get_running_loop().create_server(
            lambda: gate.protocol(server()), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


async def _send(request: web.Request, data: bytes, headers: dict[str, str]) -> web.StreamResponse:
    """A large body in writes the kernel takes whole, each once the previous has left the process.

    web.Response would hand the whole body to the transport at once, which keeps a
    copy of what the client has not read yet: 1.9 MB per client that never reads.
    Each write is the room the kernel has (UNSENT_LIMIT less what it holds unsent)
    plus one slice, so a reading client gets the body in a few writes and no copy,
    and one that does not read leaves at most a slice in the transport's buffer.
    Memoryview slices of the shared body: nothing is copied in the process.
    """
    response = web.StreamResponse(headers=headers)
    response.content_type = JSON
    response.content_length = len(data)
    await response.prepare(request)
    if request.method != "HEAD":
        view = memoryview(data)
        fd = _plain_socket_fd(request.transport)
        start = 0
        while start < len(view):
            end = start + _WRITE_SLICE + (_kernel_room(fd) if fd is not None else 0)
            await response.write(view[start:end])
            start = end
            await request.writer.drain()
    await response.write_eof()
    return response


def _plain_socket_fd(transport: asyncio.BaseTransport | None) -> int | None:
    """The socket under a plain TCP transport; None under TLS, whose layer keeps its own buffer."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


def _kernel_room(fd: int) -> int:
    """Bytes the kernel takes now without passing UNSENT_LIMIT unsent; 0 when it cannot tell (not Linux)."""
    try:
        unsent = struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except OSError:
        return 0
    return max(0, UNSENT_LIMIT - int(unsent))


HANDLERS = web.AppKey("handlers", Handlers)
SERVER_METRICS = web.AppKey("server_metrics", ServerMetrics)
CONNECTIONS = web.AppKey("connections", Connections)


def make_app(store: Store, settings: Settings, polling: Polling, metrics: Metrics) -> web.Application:
    h = Handlers(store, settings, polling, metrics)
    server_metrics = ServerMetrics(metrics.registry)
    connections = Connections(server_metrics)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[
        connections.middleware(), _fence(server_metrics, _server_logger()), _limit_request])
    app.router.add_get("/", h.status_page)
    app.router.add_get("/favicon.ico", h.favicon)
    app.router.add_get("/targets", h.targets)
    app.router.add_get("/metrics", h.metrics_page)
    app.router.add_get("/-/healthy", h.healthy)
    app.router.add_get("/-/ready", h.ready)
    app.router.add_post("/-/refresh", h.refresh, expect_handler=_expect)
    app[HANDLERS] = h
    app[SERVER_METRICS] = server_metrics
    app[CONNECTIONS] = connections
    return app


class _ClientErrorFilter(logging.Filter):
    """Drops aiohttp's tracebacks for malformed requests: the client got its 400, a flood must not fill the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def _server_logger() -> logging.Logger:
    logger = logging.getLogger("sensor_sd.http")  # a child: JSON lines through the sensor_sd handler
    if not any(isinstance(f, _ClientErrorFilter) for f in logger.filters):
        logger.addFilter(_ClientErrorFilter())
    return logger


async def start(app: web.Application, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Bind and serve; raises OSError when the address is taken."""
    # keepalive_timeout also bounds a connection that never completes its request headers
    # (slowloris): aiohttp closes it when that timer fires and no request is in progress.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False, logger=_server_logger(),
                           max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS,
                           keepalive_timeout=IDLE_TIMEOUT_SECONDS)
    await runner.setup()
    gate = app[CONNECTIONS]
    gate.limit = settings.web_max_connections
    app[SERVER_METRICS].max_connections.set(gate.limit)
    addr = settings.listen_address
    site = _GatedSite(runner, gate, addr.host or None, addr.port, ssl_context=ssl_context, backlog=1024,
                      reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
