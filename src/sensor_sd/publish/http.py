"""http_sd: a snapshot's bytes as Prometheus asks for them, whole or one hashmod shard, gzip or not.

Every body is made once and reused. A shard is rendered in a thread (the md5 of 100k
addresses takes ~65 ms, and the event loop must keep answering /-/healthy), once per
(snapshot, shard, shards), and concurrent requests share one rendering; a gzip copy is
made the same way. The server turns a request into `shard_params`, `accepts_gzip` and
`HttpOutput.body`, and the body into HTTP; nothing here knows of aiohttp.
"""

from __future__ import annotations

import asyncio
import gzip
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sensor_sd.targets import Hashes, Snapshot, address_hashes, render, shard

MAX_SHARDS = 1000
_MAX_SHARD_DIGITS = 6  # leading zeros allowed, thousands of them not
_CACHE = 64  # bodies kept of each kind (shards of the snapshot, gzip copies)
_GZIP_MIN_BYTES = 1024  # below this gzip saves nothing worth the header


class BadShard(ValueError):
    """`?shard=&shards=` that is not one shard of at most MAX_SHARDS; the text is the reason, one line."""


@dataclass(frozen=True, slots=True)
class Body:
    """The bytes of one answer and their ETag (the snapshot's, marked with the shard and the coding)."""

    data: bytes
    etag: str
    gzip: bool = False


def shard_params(shard_values: Sequence[str], shards_values: Sequence[str]) -> tuple[int, int] | None:
    """(index, total) from every `shard` and `shards` query value; None when both are absent.

    The text is checked before any int(): Python refuses to convert more than 4300 digits,
    and that must be a BadShard (a 400), never a bug.
    """
    if not shard_values and not shards_values:
        return None
    if len(shard_values) != 1 or len(shards_values) != 1:
        raise BadShard("shard and shards must be given together, once each")
    for text in (shard_values[0], shards_values[0]):
        if not (0 < len(text) <= _MAX_SHARD_DIGITS and text.isascii() and text.isdigit()):
            raise BadShard(f"shard and shards must be non-negative integers of at most {_MAX_SHARD_DIGITS} digits")
    index, total = int(shard_values[0]), int(shards_values[0])
    if not 1 <= total <= MAX_SHARDS:
        raise BadShard(f"shards must be from 1 to {MAX_SHARDS}")
    if index >= total:
        raise BadShard("shard must be less than shards")
    return index, total


def accepts_gzip(accept_encoding: str) -> bool:
    """True when an Accept-Encoding value takes gzip (or `*`) with a non-zero q."""
    for coding in accept_encoding.split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            return True
    return False


class HttpOutput:
    """The bodies of `/targets` for the snapshot the server hands in."""

    def __init__(self) -> None:
        self._shards = _ShardCache()
        self._gzip = _GzipCache()

    async def body(self, snapshot: Snapshot, part: tuple[int, int] | None, gzipped: bool) -> Body:
        body = Body(snapshot.body, snapshot.etag) if part is None else await self._shards.get(snapshot, *part)
        if gzipped and len(body.data) >= _GZIP_MIN_BYTES:
            body = await self._gzip.get(body)
        return body


class _ShardCache:
    """Shard bodies of the current snapshot, rendered once per (shard, shards) from one hashing."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._hashes: asyncio.Future[Hashes] | None = None
        self._bodies: OrderedDict[tuple[int, int], asyncio.Future[Body]] = OrderedDict()

    async def get(self, snapshot: Snapshot, index: int, total: int) -> Body:
        if snapshot is not self._snapshot:
            self._snapshot, self._hashes, self._bodies = snapshot, None, OrderedDict()
        key = (index, total)
        body = self._bodies.get(key)
        if body is None or (body.done() and body.exception() is not None):
            body = asyncio.ensure_future(self._render(snapshot, index, total))
            self._bodies[key] = body
            if len(self._bodies) > _CACHE:
                self._bodies.popitem(last=False)
        return await asyncio.shield(body)

    async def _render(self, snapshot: Snapshot, index: int, total: int) -> Body:
        if self._hashes is None or (self._hashes.done() and self._hashes.exception() is not None):
            self._hashes = asyncio.ensure_future(asyncio.to_thread(address_hashes, snapshot.groups))
        hashes = await asyncio.shield(self._hashes)
        data = await asyncio.to_thread(_render_shard, snapshot, hashes, index, total)
        return Body(data, f'{snapshot.etag[:-1]}-{index}-{total}"')


def _render_shard(snapshot: Snapshot, hashes: Hashes, index: int, total: int) -> bytes:
    return render(shard(snapshot.groups, index, total, hashes))


class _GzipCache:
    """gzip copies of the last few bodies, compressed once in a thread.

    Prometheus' Go HTTP client asks for gzip; a 100k-target body shrinks
    from 2 MB to well under 200 KB, which is what bounds serving latency.
    """

    def __init__(self) -> None:
        self._bodies: OrderedDict[str, asyncio.Future[Body]] = OrderedDict()

    async def get(self, body: Body) -> Body:
        future = self._bodies.get(body.etag)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.ensure_future(asyncio.to_thread(_gzip_body, body))
            self._bodies[body.etag] = future
            if len(self._bodies) > _CACHE:
                self._bodies.popitem(last=False)
        return await asyncio.shield(future)


def _gzip_body(body: Body) -> Body:
    # mtime=0: identical bodies give identical bytes; level 6 is 10x smaller on target lists.
    return Body(gzip.compress(body.data, compresslevel=6, mtime=0), f'{body.etag[:-1]}-gzip"', gzip=True)
