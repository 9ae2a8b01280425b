"""The SD's own HTTP server: http_sd targets, metrics, health, refresh.

Handlers only read the current immutable snapshot; every body they send was
rendered when the snapshot changed, so a request costs no JSON work.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sensor_sd.config import Settings
from sensor_sd.metrics import Metrics
from sensor_sd.sync import Discoverer
from sensor_sd.targets import Snapshot, render, shard

JSON = "application/json"
MAX_SHARDS = 1000
_SHARD_CACHE = 64  # rendered shard bodies kept per snapshot


@dataclass(frozen=True, slots=True)
class _Body:
    data: bytes
    etag: str


class _ShardCache:
    """Shard bodies rendered once per (snapshot, shards, shard) and reused."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._bodies: OrderedDict[tuple[int, int], _Body] = OrderedDict()

    def get(self, snapshot: Snapshot, index: int, total: int) -> _Body:
        if snapshot is not self._snapshot:
            self._snapshot, self._bodies = snapshot, OrderedDict()
        key = (index, total)
        body = self._bodies.get(key)
        if body is None:
            data = render(shard(snapshot.groups, index, total))
            body = _Body(data, f'{snapshot.etag[:-1]}-{index}-{total}"')
            self._bodies[key] = body
            if len(self._bodies) > _SHARD_CACHE:
                self._bodies.popitem(last=False)
        return body


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"status": "error", "error": message}), content_type=JSON)


def _shard_params(query: "web.BaseRequest") -> tuple[int, int] | None:
    """(index, total) from ?shard=I&shards=N, None when absent; raises HTTPBadRequest when wrong."""
    shard_text, shards_text = query.query.get("shard"), query.query.get("shards")
    if shard_text is None and shards_text is None:
        return None
    if shard_text is None or shards_text is None:
        raise web.HTTPBadRequest(text="shard and shards must be given together", content_type="text/plain")
    if not (shard_text.isascii() and shard_text.isdigit() and shards_text.isascii() and shards_text.isdigit()):
        raise web.HTTPBadRequest(text="shard and shards must be non-negative integers", content_type="text/plain")
    index, total = int(shard_text), int(shards_text)
    if not 1 <= total <= MAX_SHARDS:
        raise web.HTTPBadRequest(text=f"shards must be from 1 to {MAX_SHARDS}", content_type="text/plain")
    if index >= total:
        raise web.HTTPBadRequest(text="shard must be less than shards", content_type="text/plain")
    return index, total


class Handlers:
    """Request handlers bound to one discoverer and its metrics."""

    def __init__(self, discoverer: Discoverer, metrics: Metrics) -> None:
        self.discoverer = discoverer
        self.metrics = metrics
        self._shards = _ShardCache()

    async def targets(self, request: web.Request) -> web.Response:
        params = _shard_params(request)
        snapshot = self.discoverer.snapshot
        if snapshot is None:
            # Never an empty list: Prometheus would drop every target it has.
            return _json_error(503, "no good inventory snapshot yet")
        body = _Body(snapshot.body, snapshot.etag) if params is None else self._shards.get(snapshot, *params)
        headers = {"ETag": body.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == body.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body.data, content_type=JSON, headers=headers)

    async def metrics_page(self, request: web.Request) -> web.Response:
        data = generate_latest(self.metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="sensor-sd is healthy.\n")

    async def ready(self, request: web.Request) -> web.Response:
        if self.discoverer.snapshot is None:
            return web.Response(status=503, text="sensor-sd is not ready: no good inventory snapshot yet.\n")
        return web.Response(text="sensor-sd is ready.\n")

    async def refresh(self, request: web.Request) -> web.Response:
        results = await self.discoverer.refresh()
        failed = [r for r in results if r.result == "error"]
        snapshot = self.discoverer.snapshot
        body = {"status": "error" if failed else "success", "targets": snapshot.count if snapshot else 0,
                "sources": [r.summary() for r in results]}
        return web.Response(status=502 if failed else 200, body=orjson.dumps(body), content_type=JSON)


def make_app(discoverer: Discoverer, metrics: Metrics) -> web.Application:
    h = Handlers(discoverer, metrics)
    app = web.Application(client_max_size=1024)
    app.router.add_get("/targets", h.targets)
    app.router.add_get("/metrics", h.metrics_page)
    app.router.add_get("/-/healthy", h.healthy)
    app.router.add_get("/-/ready", h.ready)
    app.router.add_post("/-/refresh", h.refresh)
    app["handlers"] = h
    return app


async def start(app: web.Application, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Bind and serve; raises OSError when the address is taken."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
    await runner.setup()
    addr = settings.listen_address
    site = web.TCPSite(runner, addr.host or None, addr.port, ssl_context=ssl_context, backlog=1024,
                       reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
