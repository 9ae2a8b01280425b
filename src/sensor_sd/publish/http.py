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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

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
        self._shards: _Shards | None = None  # the latest snapshot's; an older one's are never asked for again
        self._gzip: _Shared[str, Body] = _Shared(_CACHE)

    async def body(self, snapshot: Snapshot, part: tuple[int, int] | None, gzipped: bool) -> Body:
        if part is None:
            body = Body(snapshot.body, snapshot.etag)
        else:
            if self._shards is None or self._shards.snapshot is not snapshot:
                self._shards = _Shards(snapshot)
            body = await self._shards.get(*part)
        if gzipped and len(body.data) >= _GZIP_MIN_BYTES:
            plain = body
            body = await self._gzip.get(plain.etag, lambda: asyncio.to_thread(_gzip_body, plain))
        return body


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Shared(Generic[_K, _V]):
    """The last `size` results by key, each made once and shared by the requests that ask meanwhile.

    A failed making is not kept: the next request makes it again.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._futures: OrderedDict[_K, asyncio.Future[_V]] = OrderedDict()

    async def get(self, key: _K, make: Callable[[], Awaitable[_V]]) -> _V:
        future = self._futures.get(key)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.ensure_future(make())
            self._futures[key] = future
            if len(self._futures) > self._size:
                self._futures.popitem(last=False)
        return await asyncio.shield(future)


class _Shards:
    """One snapshot's shard bodies: its addresses hashed once, each (shard, shards) rendered once.

    Everything here belongs to `snapshot`, so a rendering still running for an older snapshot
    can never hand its hashes to a newer one's shards.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._hashes: _Shared[None, Hashes] = _Shared(1)
        self._bodies: _Shared[tuple[int, int], Body] = _Shared(_CACHE)

    async def get(self, index: int, total: int) -> Body:
        return await self._bodies.get((index, total), lambda: self._render(index, total))

    async def _render(self, index: int, total: int) -> Body:
        snapshot = self.snapshot
        hashes = await self._hashes.get(None, lambda: asyncio.to_thread(address_hashes, snapshot.groups))
        data = await asyncio.to_thread(_render_shard, snapshot, hashes, index, total)
        return Body(data, f'{snapshot.etag[:-1]}-{index}-{total}"')


def _render_shard(snapshot: Snapshot, hashes: Hashes, index: int, total: int) -> bytes:
    return render(shard(snapshot.groups, index, total, hashes))


def _gzip_body(body: Body) -> Body:
    """A gzip copy, made once per body: Prometheus' Go HTTP client asks for gzip, and a 100k-target
    body shrinks from 2 MB to well under 200 KB, which is what bounds serving latency."""
    # mtime=0: identical bodies give identical bytes; level 6 is 10x smaller on target lists.
    return Body(gzip.compress(body.data, compresslevel=6, mtime=0), f'{body.etag[:-1]}-gzip"', gzip=True)
