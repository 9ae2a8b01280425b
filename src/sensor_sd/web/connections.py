"""The connections of the SD's HTTP server: a cap on how many are served, bounded writes.

A client that never reads its answer must not hold memory or a connection slot for ever:
bodies go out in writes the kernel takes whole, so at most one slice waits in the process per
connection and UNSENT_LIMIT unsent bytes in the kernel; a connection whose writes stay paused
for WRITE_TIMEOUT_SECONDS is aborted; at most WEB_MAX_CONNECTIONS are served at once, and a
connection that waits may displace one that is stuck. `GatedSite` puts every connection of the
server behind `Connections`; `send` writes a large body within these bounds.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from sensor_sd import memory
from sensor_sd.metrics import HttpMetrics

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

    def __init__(self, metrics: HttpMetrics) -> None:
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
        memory.release()
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
        # Paused as soon as a byte waits in the process, resumed once none does: `send` then writes
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


class GatedSite(web.TCPSite):
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


async def send(request: web.Request, data: bytes, headers: dict[str, str], content_type: str
               ) -> web.StreamResponse:
    """A large body in writes the kernel takes whole, each once the previous has left the process.

    web.Response would hand the whole body to the transport at once, which keeps a
    copy of what the client has not read yet: 1.9 MB per client that never reads.
    Each write is the room the kernel has (UNSENT_LIMIT less what it holds unsent)
    plus one slice, so a reading client gets the body in a few writes and no copy,
    and one that does not read leaves at most a slice in the transport's buffer.
    Memoryview slices of the shared body: nothing is copied in the process.
    """
    response = web.StreamResponse(headers=headers)
    response.content_type = content_type
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
