"""The SD's own HTTP server: http_sd targets, metrics, health, refresh, status page.

Handlers only read the current immutable snapshot; every body they send was
rendered when the snapshot changed (`publish.http` makes the shard and gzip
bodies, once each), so a request costs no JSON work. Request limits and the
handler fence are here; the connection cap and bounded writes are
`web.connections`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.helpers import ETAG_ANY
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sensor_sd import __version__, status
from sensor_sd.config import Settings
from sensor_sd.metrics import HttpMetrics, Metrics
from sensor_sd.poller import PollResult, Result, SourceStatus
from sensor_sd.publish import http as http_sd
from sensor_sd.store import Store
from sensor_sd.web import connections

JSON = "application/json"
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


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"status": "error", "error": message}), content_type=JSON)


def _etag_matches(request: web.Request, etag: str) -> bool:
    """If-None-Match (aiohttp's parser): `*`, or one of its tags equal to `etag` in RFC 9110's weak comparison."""
    return any(tag.value == ETAG_ANY or f'"{tag.value}"' == etag for tag in request.if_none_match or ())


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
        self._http_sd = http_sd.HttpOutput()

    async def targets(self, request: web.Request) -> web.StreamResponse:
        try:
            part = http_sd.shard_params(request.query.getall("shard", []), request.query.getall("shards", []))
        except http_sd.BadShard as exc:
            raise _bad_request(str(exc)) from None
        snapshot = self.store.snapshot
        if snapshot is None:
            # Never an empty list: Prometheus would drop every target it has.
            return _json_error(503, "no good inventory snapshot yet")
        body = await self._http_sd.body(snapshot, part, http_sd.accepts_gzip(request.headers.get("Accept-Encoding", "")))
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding", "ETag": body.etag}
        if body.gzip:
            headers["Content-Encoding"] = "gzip"
        if _etag_matches(request, body.etag):
            return web.Response(status=304, headers=headers)
        return await connections.send(request, body.data, headers, JSON)

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


def _fence(metrics: HttpMetrics, logger: logging.Logger) -> Middleware:
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


HANDLERS = web.AppKey("handlers", Handlers)
HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)
CONNECTIONS = web.AppKey("connections", connections.Connections)


def make_app(store: Store, settings: Settings, polling: Polling, metrics: Metrics) -> web.Application:
    h = Handlers(store, settings, polling, metrics)
    http_metrics = HttpMetrics(metrics.registry)
    gate = connections.Connections(http_metrics)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[
        gate.middleware(), _fence(http_metrics, _server_logger()), _limit_request])
    app.router.add_get("/", h.status_page)
    app.router.add_get("/favicon.ico", h.favicon)
    app.router.add_get("/targets", h.targets)
    app.router.add_get("/metrics", h.metrics_page)
    app.router.add_get("/-/healthy", h.healthy)
    app.router.add_get("/-/ready", h.ready)
    app.router.add_post("/-/refresh", h.refresh, expect_handler=_expect)
    app[HANDLERS] = h
    app[HTTP_METRICS] = http_metrics
    app[CONNECTIONS] = gate
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
    app[HTTP_METRICS].max_connections.set(gate.limit)
    addr = settings.listen_address
    site = connections.GatedSite(runner, gate, addr.host or None, addr.port, ssl_context=ssl_context, backlog=1024,
                      reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
