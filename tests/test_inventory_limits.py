"""MAX_RESPONSE_BYTES against a raw HTTP inventory that counts what the client took.

A declared oversized body must be refused on its headers, before reading: the
streaming cap alone reports the same reason, so these tests measure bytes. The
server is plain asyncio on 127.0.0.1 with a small send buffer and no user-space
write buffer, so `sent` is what the kernel accepted towards the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from sensor_sd import config
from sensor_sd.inventory import Client, OneShotClient
from sensor_sd.metrics import Metrics
from sensor_sd.poller import PollResult
from sensor_sd.scheduler import Discoverer

LOG = logging.getLogger("sensor_sd.test")
GOOD = b'["sensor_1","sensor_2"]'
KEPT = ["sensor_1:9100", "sensor_2:9100"]
BLOCK = (b'"sensor_0:9100",' * 1024)[:16 * 1024]
SNDBUF = 16 * 1024  # the kernel doubles it
SERVER_DEADLINE = 30.0  # a handler never outlives a broken test


@dataclass
class Inventory:
    """What the next answer does, and how many body bytes the last one got into the kernel."""

    mode: str = "good"
    declared: int = 0  # the Content-Length of the answer
    stop_after: int = 0  # a flood ends here even if the client keeps reading
    body_prefix: bytes = b""  # the declared body of the "lying" mode
    sent: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by_client: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        writer.transport.set_write_buffer_limits(high=0)  # drain() returns once the kernel holds every byte
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if self.mode == "good":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD))
                    await writer.drain()
                    continue
                self.sent, self.closed_by_client = 0, False
                self.finished.clear()
                try:
                    await asyncio.wait_for(self._bad_answer(reader, writer), SERVER_DEADLINE)
                except (ConnectionError, asyncio.IncompleteReadError):
                    self.closed_by_client = True
                finally:
                    self.finished.set()
                return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _bad_answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if self.mode == "chunked":
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
            block = b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK)
        else:
            head += b"Content-Length: %d\r\n\r\n" % self.declared
            if self.mode == "lying":  # one segment: the head, the declared body and the first undeclared bytes
                head += self.body_prefix + BLOCK
                self.sent = len(self.body_prefix) + len(BLOCK)
            writer.write(head)
            block = BLOCK
        await writer.drain()
        if self.mode == "stall":  # 1 KiB of the body, then silence
            writer.write(BLOCK[:1024])
            self.sent = 1024
            await writer.drain()
        while self.sent < self.stop_after:  # as fast as the client takes it
            writer.write(block)
            await writer.drain()
            self.sent += len(BLOCK)
        if await reader.read(1) == b"":  # hold the connection until the client drops it
            self.closed_by_client = True


@pytest.fixture(autouse=True, params=[Client, OneShotClient], ids=["aiohttp", "one-shot"])
def client_class(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[Client]:
    """Every test here runs against both clients: the daemon's (aiohttp) and `once`/`check`'s (http.client)."""
    monkeypatch.setattr(sys.modules[__name__], "Client", request.param)
    return request.param  # type: ignore[no-any-return]


def settings(port: int, tmp: Path, **env: str) -> config.Settings:
    base = {"INVENTORY_URL": f"inv=http://127.0.0.1:{port}/inventory", "TARGETS_FILE": str(tmp / "targets.json"),
            "REQUEST_TIMEOUT": "10", "LOG_FORMAT": "text"}
    return config.load({}, {**base, **env})


def file_targets(tmp: Path) -> list[str]:
    return [t for g in orjson.loads((tmp / "targets.json").read_bytes()) for t in g["targets"]]


async def wait_for(event: asyncio.Event, what: str, deadline: float = 15.0) -> None:
    try:
        await asyncio.wait_for(event.wait(), deadline)
    except TimeoutError:
        raise AssertionError(f"{what} within {deadline} s") from None


def run(test: Callable[[Inventory, Discoverer, Path], Awaitable[None]], tmp: Path, **env: str) -> None:
    """A good first poll (the targets to keep), then `test` with the same client and discoverer."""

    async def main() -> None:
        inv = Inventory()
        server = await asyncio.start_server(inv.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            s = settings(port, tmp, **env)
            async with Client(s) as client:
                d = Discoverer(s, client, Metrics(CollectorRegistry()), LOG)
                [first] = await d.poll_all()
                assert first.result == "success" and file_targets(tmp) == KEPT
                await test(inv, d, tmp)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def assert_kept(r: PollResult, d: Discoverer, tmp: Path, before: bytes) -> None:
    assert (r.result, r.reason, r.targets) == ("error", "too_large", 2), r
    assert (tmp / "targets.json").read_bytes() == before
    assert d.snapshot is not None and d.snapshot.count == 2


def test_declared_oversized_body_is_refused_on_its_headers(tmp_path: Path) -> None:
    """1 GB declared, 1 KiB sent, then silence: only the headers can fail the poll in time.

    Reading the body instead would wait for bytes that never come and end in `timeout`.
    """

    async def t(inv: Inventory, d: Discoverer, tmp: Path) -> None:
        before = (tmp / "targets.json").read_bytes()
        inv.mode, inv.declared = "stall", 1 << 30
        started = time.monotonic()
        [r] = await d.poll_all()
        assert_kept(r, d, tmp, before)
        assert "Content-Length" in (r.error or ""), r.error
        await wait_for(inv.finished, "the client hung up")
        assert inv.closed_by_client and inv.sent == 1024
        assert time.monotonic() - started < 10  # well inside REQUEST_TIMEOUT

    run(t, tmp_path)


def test_declared_oversized_flood_costs_almost_nothing(tmp_path: Path) -> None:
    """1 GB declared and streamed as fast as the client takes it; the client stops at the headers.

    Allowed: one 64 KiB read plus the socket buffers of both ends, far below the 16 MiB cap
    that the streaming check alone would read first.
    """
    cap = 16 * 1024 * 1024

    async def t(inv: Inventory, d: Discoverer, tmp: Path) -> None:
        before = (tmp / "targets.json").read_bytes()
        inv.mode, inv.declared, inv.stop_after = "flood", 1 << 30, 4 * cap
        [r] = await d.poll_all()
        assert_kept(r, d, tmp, before)
        await wait_for(inv.finished, "the client hung up")
        assert inv.closed_by_client
        assert inv.sent < 1024 * 1024, f"{inv.sent} body bytes went out before the client hung up"

    run(t, tmp_path, MAX_RESPONSE_BYTES=str(cap))


def test_chunked_body_is_cut_at_the_cap(tmp_path: Path) -> None:
    """No length declared: the streaming cap stops the read near MAX_RESPONSE_BYTES, not at the end."""
    cap = 1024 * 1024

    async def t(inv: Inventory, d: Discoverer, tmp: Path) -> None:
        before = (tmp / "targets.json").read_bytes()
        inv.mode, inv.stop_after = "chunked", 64 * cap
        [r] = await d.poll_all()
        assert_kept(r, d, tmp, before)
        assert "Content-Length" not in (r.error or ""), r.error
        await wait_for(inv.finished, "the client hung up")
        assert inv.closed_by_client
        assert cap < inv.sent < 2 * cap, f"{inv.sent} body bytes went out for a {cap} byte cap"

    run(t, tmp_path, MAX_RESPONSE_BYTES=str(cap))


def test_lying_content_length_fails_the_poll_and_reads_little(tmp_path: Path) -> None:
    """Declares a small new list, then floods past the cap: refused as malformed, not applied, not read on.

    The next poll must get a clean answer: the undeclared bytes never leak into a pooled connection.
    """
    cap = 1024 * 1024
    new = b'["sensor_3","sensor_4"]'

    async def t(inv: Inventory, d: Discoverer, tmp: Path) -> None:
        before = (tmp / "targets.json").read_bytes()
        inv.mode, inv.declared, inv.body_prefix, inv.stop_after = "lying", len(new), new, 16 * cap
        [r] = await d.poll_all()
        assert (r.result, r.reason, r.targets) == ("error", "unreachable", 2), r
        assert "malformed HTTP answer" in (r.error or ""), r.error
        assert "\n" not in (r.error or "") and "sensor_3" not in (r.error or ""), r.error  # one line, no echoed body
        assert (tmp / "targets.json").read_bytes() == before
        assert d.snapshot is not None and d.snapshot.count == 2
        await wait_for(inv.finished, "the client hung up")
        assert inv.closed_by_client
        assert inv.sent < cap, f"{inv.sent} body bytes went out before the client hung up"
        inv.mode = "good"
        [r] = await d.poll_all()
        assert r.result == "unchanged" and file_targets(tmp) == KEPT, r

    run(t, tmp_path, MAX_RESPONSE_BYTES=str(cap))
