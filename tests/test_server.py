"""The SD's HTTP server in-process, over the inventory simulator, on real loopback sockets.

Each test drives it with blocking clients from the test thread while the
server runs on its own event loop thread, the way Prometheus and a browser
would talk to it; hostile requests go through raw sockets.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
import requests
from aiohttp import web

from sensor_sd import server
from sensor_sd.config import ListenAddress, Settings
from sensor_sd.sources import Source
from sensor_sd.sim import inventory as inventory_sim
from sensor_sd.scheduler import Discoverer
from sensor_sd.web import connections
from sensor_sd.targets import hashmod

T = TypeVar("T")
HOST = "127.0.0.1"


@dataclass
class Served:
    """sensor-sd's app and the inventory simulator, both served on one loop thread."""

    sd: Any  # conftest.ServedSD

    @property
    def discoverer(self) -> Discoverer:
        return self.sd.discoverer  # type: ignore[no-any-return]

    @property
    def inventory(self) -> web.Application:
        return self.sd.inventory  # type: ignore[no-any-return]

    @property
    def inventory_url(self) -> str:
        return self.sd.inventory_url  # type: ignore[no-any-return]

    @property
    def port(self) -> int:
        return self.sd.port  # type: ignore[no-any-return]

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return self.sd.lt.run(coro, timeout)  # type: ignore[no-any-return]

    def set_inventory(self, names: list[str]) -> None:
        assert requests.put(f"{self.inventory_url}/admin/sensors", json=names, timeout=5).status_code == 200

    def inventory_requests(self) -> float:
        text = requests.get(f"{self.inventory_url}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('inventory_sim_http_requests_total{') and 'path="/inventory"' in line)


def _serve(serve_sd: Callable[..., Any], poll: bool, sensors: int = 300, **settings: Any) -> Served:
    def settings_for(inv_url: str) -> Settings:
        return Settings(sources=(Source("inv", f"{inv_url}/inventory"),), targets_file=None, update_interval=300,
                        listen_address=ListenAddress(HOST, 0), max_drop_ratio=1.0, **settings)

    return Served(serve_sd(inventory_sim.make_app(sensors, seed=1), settings_for, poll))


@pytest.fixture
def sd(serve_sd: Callable[..., Any]) -> Served:
    return _serve(serve_sd, poll=True)


@pytest.fixture
def sd_empty(serve_sd: Callable[..., Any]) -> Served:
    """Never polled: no snapshot yet."""
    return _serve(serve_sd, poll=False)


def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return the status line of the answer (b'' when the server just closed)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def targets_of(body: bytes) -> set[str]:
    return {t for group in orjson.loads(body) for t in group["targets"]}


# --- /targets ---------------------------------------------------------------


def test_targets_shape_etag_and_304(sd: Served) -> None:
    r = requests.get(sd.url("/targets"), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    groups = r.json()
    assert groups == [{"targets": sorted(f"sensor_{i}:9100" for i in range(300)),
                       "labels": {"__metrics_path__": "/metrics", "source": "inv"}}]
    etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = requests.get(sd.url("/targets"), headers={"If-None-Match": header}, timeout=5)
        assert again.status_code == 304, header
        assert again.content == b"" and again.headers["ETag"] == etag
    assert requests.get(sd.url("/targets"), headers={"If-None-Match": '"stale"'}, timeout=5).status_code == 200


def test_head_targets_has_headers_and_no_body(sd: Served) -> None:
    identity = {"Accept-Encoding": "identity"}
    get = requests.get(sd.url("/targets"), headers=identity, timeout=5)
    head = requests.head(sd.url("/targets"), headers=identity, timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == get.headers["ETag"]
    assert int(head.headers["Content-Length"]) == len(get.content)


def test_gzip_when_asked_same_json_own_etag(sd: Served) -> None:
    plain = requests.get(sd.url("/targets"), headers={"Accept-Encoding": "identity"}, timeout=5)
    raw_gzip = requests.get(sd.url("/targets"), headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
    compressed = raw_gzip.raw.read(decode_content=False)
    assert "Content-Encoding" not in plain.headers
    assert raw_gzip.headers["Content-Encoding"] == "gzip"
    assert raw_gzip.headers["Vary"] == "Accept-Encoding"
    assert len(compressed) < len(plain.content) / 3
    assert gzip.decompress(compressed) == plain.content
    assert raw_gzip.headers["ETag"] != plain.headers["ETag"]
    again = requests.get(sd.url("/targets"), timeout=5,
                         headers={"Accept-Encoding": "gzip", "If-None-Match": raw_gzip.headers["ETag"]})
    assert again.status_code == 304
    refused = requests.get(sd.url("/targets"), headers={"Accept-Encoding": "gzip;q=0"}, timeout=5)
    assert "Content-Encoding" not in refused.headers


def test_before_first_snapshot_503_never_empty_list(sd_empty: Served) -> None:
    r = requests.get(sd_empty.url("/targets"), timeout=5)
    assert r.status_code == 503
    assert r.json()["status"] == "error" and "snapshot" in r.json()["error"]
    assert requests.get(sd_empty.url("/targets?shard=0&shards=2"), timeout=5).status_code == 503
    assert requests.get(sd_empty.url("/-/ready"), timeout=5).status_code == 503
    assert requests.get(sd_empty.url("/-/healthy"), timeout=5).status_code == 200
    page = requests.get(sd_empty.url("/"), timeout=5)
    assert page.status_code == 200 and "not ready" in page.text


@pytest.mark.parametrize("query", [
    "shard=3&shards=3", "shard=0&shards=0", "shard=a&shards=2", "shard=-1&shards=2", "shard=0",
    "shards=2", "shard=0&shards=1001", "shard=1.5&shards=3", "shard=%C2%B2&shards=3", "shard=&shards=",
    "shard=0&shards=99999999999999999999999999",
    # Past Python's 4300-digit int() limit, which once made these a 500:
    "shard=0&shards=" + "9" * 5000, "shard=" + "0" * 5000 + "&shards=2", "shard=0&shards=" + "0" * 4999 + "2",
    "shard=0000001&shards=2",  # 7 digits, value 1: still too long
    "shard=%EF%BC%91&shards=2",  # a fullwidth digit one
    "shard=0&shard=1&shards=2", "shard=0&shards=2&shards=3",  # repeated: which one was meant?
    "shard=+1&shards=2", "shard=%201&shards=2", "shard=1%00&shards=2", "shard=0x1&shards=2",
])
def test_bad_shard_params_are_400_with_a_reason(sd: Served, query: str) -> None:
    r = requests.get(sd.url(f"/targets?{query}"), timeout=5)
    assert r.status_code == 400, query
    assert "shard" in r.text and "\n" not in r.text.rstrip("\n")  # one line
    assert requests.get(sd.url("/-/healthy"), timeout=5).status_code == 200


def test_leading_zeros_within_the_digit_limit_are_fine(sd: Served) -> None:
    plain = requests.get(sd.url("/targets?shard=1&shards=2"), timeout=5)
    padded = requests.get(sd.url("/targets?shard=000001&shards=000002"), timeout=5)
    assert padded.status_code == 200 and padded.content == plain.content


def test_a_failing_handler_is_a_counted_500_logged_once(sd: Served, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(sd.discoverer, "status", broken)  # the status page calls it
    with caplog.at_level("ERROR"):
        answers = [requests.get(sd.url("/"), timeout=5) for _ in range(2)]
    assert [a.status_code for a in answers] == [500, 500]
    assert all(a.text == "internal error\n" for a in answers)  # no traceback to the client
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in errors)
    metrics = requests.get(sd.url("/metrics"), timeout=5).text
    assert 'sensor_sd_http_internal_errors_total{handler="/"} 2.0' in metrics
    # The server lives on and the other handlers are untouched.
    assert requests.get(sd.url("/targets"), timeout=5).status_code == 200


@pytest.mark.parametrize("total", [1, 2, 3, 7])
def test_shards_partition_the_targets_by_hashmod(sd: Served, total: int) -> None:
    full = targets_of(requests.get(sd.url("/targets"), timeout=5).content)
    seen: set[str] = set()
    for index in range(total):
        r = requests.get(sd.url(f"/targets?shard={index}&shards={total}"), timeout=5)
        assert r.status_code == 200
        part = targets_of(r.content)
        assert part == {t for t in full if hashmod(t, total) == index}
        assert not part & seen
        seen |= part
        etag = r.headers["ETag"]
        assert requests.get(sd.url(f"/targets?shard={index}&shards={total}"), headers={"If-None-Match": etag},
                            timeout=5).status_code == 304
    assert seen == full


def test_shard_cache_follows_a_new_snapshot(sd: Served) -> None:
    before = requests.get(sd.url("/targets?shard=0&shards=2"), timeout=5)
    sd.set_inventory([f"sensor_{i}" for i in range(250)] + ["new-host.example:9200"])
    assert requests.post(sd.url("/-/refresh"), timeout=10).status_code == 200
    after = requests.get(sd.url("/targets?shard=0&shards=2"), timeout=5)
    assert after.headers["ETag"] != before.headers["ETag"]
    expected = {t for t in [f"sensor_{i}:9100" for i in range(250)] + ["new-host.example:9200"]
                if hashmod(t, 2) == 0}
    assert targets_of(after.content) == expected


# --- methods, paths, refresh --------------------------------------------------


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/targets", "GET"), ("DELETE", "/targets", "GET"), ("POST", "/targets", "GET"),
    ("GET", "/-/refresh", "POST"), ("DELETE", "/-/refresh", "POST"), ("POST", "/", "GET"),
])
def test_wrong_method_is_405_with_allow(sd: Served, method: str, path: str, allow: str) -> None:
    r = requests.request(method, sd.url(path), timeout=5)
    assert r.status_code == 405
    assert allow in r.headers["Allow"]


@pytest.mark.parametrize("path", ["/nope", "/targets/", "/TARGETS", "/-/", "/..%2f..%2fetc/passwd", "/favicon.png"])
def test_unknown_path_is_404(sd: Served, path: str) -> None:
    assert requests.get(sd.url(path), timeout=5).status_code == 404


def test_favicon_is_an_empty_success(sd: Served) -> None:
    r = requests.get(sd.url("/favicon.ico"), timeout=5)
    assert r.status_code == 204 and r.content == b""


def test_refresh_publishes_before_answering_and_coalesces(sd: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight concurrent POSTs share one poll: the poll is held open until all eight are waiting on it.

    Without the gate a loaded machine could start the threads so far apart that one poll had
    finished before the last POST arrived, and the count of polls depended on the scheduler.
    """
    sd.set_inventory([f"sensor_{i}" for i in range(10)])
    before = sd.inventory_requests()
    d = sd.discoverer
    gate = sd.run(_make_event())
    waiting = 0
    poll_all, refresh = d.poll_all, d.refresh

    async def gated_poll_all(**kwargs: Any) -> Any:
        await gate.wait()
        return await poll_all(**kwargs)

    async def counted_refresh() -> Any:
        nonlocal waiting
        waiting += 1
        return await refresh()

    monkeypatch.setattr(d, "poll_all", gated_poll_all)
    monkeypatch.setattr(d, "refresh", counted_refresh)
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(requests.post, sd.url("/-/refresh"), timeout=30) for _ in range(8)]
        deadline = time.monotonic() + 20
        while waiting < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiting == 8, f"only {waiting} of 8 refreshes arrived"
        sd.sd.lt.loop.call_soon_threadsafe(gate.set)
        answers = [p.result() for p in pending]
    assert all(a.status_code == 200 for a in answers)
    assert all(a.json()["status"] == "success" and a.json()["targets"] == 10 for a in answers)
    assert sd.inventory_requests() - before == 1  # all eight shared one poll
    assert targets_of(requests.get(sd.url("/targets"), timeout=5).content) == {f"sensor_{i}:9100" for i in range(10)}


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


def test_refresh_failure_is_502_and_keeps_targets(sd: Served) -> None:
    etag = requests.get(sd.url("/targets"), timeout=5).headers["ETag"]
    assert requests.put(f"{sd.inventory_url}/admin/fault", json={"mode": "status", "code": 503}, timeout=5).ok
    r = requests.post(sd.url("/-/refresh"), timeout=10)
    assert r.status_code == 502
    body = r.json()
    assert body["status"] == "error" and body["targets"] == 300 and "503" in body["sources"][0]["error"]
    assert requests.get(sd.url("/targets"), timeout=5).headers["ETag"] == etag


# --- hostile clients --------------------------------------------------------


def test_oversized_headers_are_rejected_and_the_server_lives_on(sd: Served) -> None:
    one_big = b"GET /targets HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    many_big = b"GET /targets HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"a" * 8000) for i in range(8)) + b"\r\n"  # 64 KB, each line under the cap
    many = b"GET /targets HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: a\r\n" % i for i in range(200)) + b"\r\n"
    long_url = b"GET /targets?" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw(sd.port, one_big).split(b" ")[1] == b"400"  # one line over 8 KiB: the parser's own limit
    assert raw(sd.port, many_big).split(b" ")[1] == b"431"
    assert raw(sd.port, many).split(b" ")[1] == b"400"  # over 64 header lines: the parser's own limit
    assert raw(sd.port, long_url).split(b" ")[1] == b"400"
    assert raw(sd.port, b"\x16\x03\x01garbage\r\n\r\n").split(b" ")[1] == b"400"
    assert requests.get(sd.url("/targets"), timeout=5).status_code == 200


@pytest.mark.parametrize(("size", "status"), [(0, 200), (1024, 200), (1025, 413), (100_000, 413)])
def test_request_body_is_capped_at_1_kib(sd: Served, size: int, status: int) -> None:
    before = sd.inventory_requests()
    r = requests.post(sd.url("/-/refresh"), data=b"x" * size, timeout=10)
    assert r.status_code == status
    assert sd.inventory_requests() - before == (1 if status == 200 else 0)  # a refused request polls nothing
    if status == 413:
        assert r.text == "request body over 1024 bytes\n" and r.headers["Connection"] == "close"


@pytest.mark.parametrize(("chunks", "status"), [([b"x" * 100] * 3, 200), ([b"x" * 600] * 2, 413),
                                                ([b"x" * 512] * 1000, 413)])
def test_a_chunked_body_is_capped_too(sd: Served, chunks: list[bytes], status: int) -> None:
    before = sd.inventory_requests()
    r = requests.post(sd.url("/-/refresh"), data=iter(chunks), timeout=10)  # an iterator: chunked encoding
    assert r.status_code == status
    assert sd.inventory_requests() - before == (1 if status == 200 else 0)


def test_a_declared_oversized_body_is_refused_before_it_is_sent(sd: Served) -> None:
    """Content-Length: 10 MB and only 10 bytes sent: 413 at once, no refresh, and the rest is never read.

    If the server waited for the body there would be no answer; if it drained the body
    (as a server does after answering to keep the connection) the 10 MB would be accepted.
    """
    before = sd.inventory_requests()
    with socket.create_connection((HOST, sd.port), timeout=5) as s:
        s.sendall(b"POST /-/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)  # within the 5 s socket timeout, while 9,999,990 bytes are still owed
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 ")
        sent = 0
        with pytest.raises(OSError):  # BrokenPipe or ConnectionReset: nobody reads the rest
            while sent < 10_000_000:
                sent += s.send(b"x" * 65536)
        # Far less than the body: what fits in the socket buffers before the reset arrives.
        assert sent < 5_000_000, sent
    assert sd.inventory_requests() == before


def test_expect_continue_with_an_oversized_body_gets_413_not_100(sd: Served) -> None:
    request = (b"POST /-/refresh HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: 100000000\r\n\r\n")
    assert raw(sd.port, request) == b"HTTP/1.1 413 Request Entity Too Large"
    small = b"POST /-/refresh HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    assert raw(sd.port, small) == b"HTTP/1.1 100 Continue"


def test_slow_clients_do_not_stall_others(sd: Served) -> None:
    sd.set_inventory([f"sensor_{i}" for i in range(20_000)])
    assert requests.post(sd.url("/-/refresh"), timeout=10).status_code == 200
    slow: list[socket.socket] = []
    try:
        for _ in range(20):  # slowloris: half a request line, then nothing
            s = socket.create_connection((HOST, sd.port))
            s.sendall(b"GET /targets HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(s)
        for _ in range(5):  # asks for ~300 KB of targets and never reads the answer
            s = socket.create_connection((HOST, sd.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /targets HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
            slow.append(s)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda p: requests.get(sd.url(p), timeout=5).status_code,
                                  ["/-/healthy", "/targets", "/targets?shard=1&shards=2", "/"] * 10))
        assert codes == [200] * 40
        assert time.monotonic() - started < 5
    finally:
        for s in slow:
            s.close()


def test_many_idle_connections_do_not_block_healthy(sd: Served) -> None:
    conns: list[socket.socket] = []
    try:
        for i in range(800):
            s = socket.create_connection((HOST, sd.port))
            if i % 2:
                s.sendall(b"GET /-/healthy HTTP/1.1\r\n")  # unfinished request
            conns.append(s)
        started = time.monotonic()
        r = requests.get(sd.url("/-/healthy"), timeout=5)
        assert r.status_code == 200 and "healthy" in r.text
        # 800 > WEB_MAX_CONNECTIONS (512): the probe waits until a connection that never sent a byte
        # may be displaced (SLOW_REQUEST_SECONDS after it was served), never until they time out.
        assert time.monotonic() - started < connections.SLOW_REQUEST_SECONDS + 1.0
    finally:
        for s in conns:
            s.close()
    assert requests.get(sd.url("/-/ready"), timeout=5).status_code == 200


def test_status_page_headers_forbid_scripts(sd: Served) -> None:
    r = requests.get(sd.url("/"), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert '<span class="big" id="target-count">300</span>' in r.text


def test_unfinished_request_headers_are_closed_after_the_idle_timeout(
        monkeypatch: pytest.MonkeyPatch, serve_sd: Callable[..., Any]) -> None:
    monkeypatch.setattr(server, "IDLE_TIMEOUT_SECONDS", 1.0)
    sd = _serve(serve_sd, poll=False)
    with socket.create_connection((HOST, sd.port), timeout=10) as s:
        s.sendall(b"GET /targets HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        started = time.monotonic()
        for _ in range(4):  # a slowloris keeps dripping header lines
            time.sleep(0.3)
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:
                break
        assert s.recv(1) == b""  # closed by the server, not by our 10 s socket timeout
        assert time.monotonic() - started < 5


# --- connection bounds: WEB_MAX_CONNECTIONS, bounded write buffers, write timeout ---------------------


def sample(sd: Served, name: str, **labels: str) -> float:
    """A metric of the SD read from its registry (an HTTP scrape would itself take a connection slot)."""
    value = sd.sd.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else float(value)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def closed_by_server(s: socket.socket, timeout: float = 5.0) -> bool:
    """True when the server closed (EOF or reset) within `timeout`; whatever it sent before is skipped."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.fixture
def capped(serve_sd: Callable[..., Any]) -> Served:
    return _serve(serve_sd, poll=True, web_max_connections=4)


def test_at_the_cap_a_newcomer_displaces_the_longest_idle_connection(capped: Served) -> None:
    idle = [socket.create_connection((HOST, capped.port)) for _ in range(4)]  # they never send a byte
    try:
        wait_for(lambda: sample(capped, "sensor_sd_http_connections") == 4, "4 open connections")
        assert sample(capped, "sensor_sd_http_max_connections") == 4
        r = requests.get(capped.url("/-/healthy"), timeout=5, headers={"Connection": "close"})
        assert r.status_code == 200
        assert closed_by_server(idle[0])  # the oldest idle one made room
        assert sample(capped, "sensor_sd_http_connections_closed_total", reason="evicted") == 1
        assert sample(capped, "sensor_sd_http_connections_closed_total", reason="over_limit") == 0
        assert not closed_by_server(idle[3], timeout=0.2)  # the newer ones stay
    finally:
        for s in idle:
            s.close()


def test_at_the_cap_with_every_connection_busy_newcomers_wait_and_the_longest_waiting_gets_503(capped: Served,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """4 slots busy: 4 more connections wait their turn (as Prometheus queues them); a 5th pushes out
    the one waiting the longest (a fresh one, such as a health check, has the better chance)."""
    d = capped.discoverer
    gate = capped.run(_make_event())
    poll_all, refresh = d.poll_all, d.refresh
    inside = 0

    async def counted_refresh() -> Any:  # runs inside the handler: its connection is busy by then
        nonlocal inside
        inside += 1
        return await refresh()

    monkeypatch.setattr(d, "poll_all", lambda **kw: _after(gate, poll_all(**kw)))
    monkeypatch.setattr(d, "refresh", counted_refresh)
    waiting: list[socket.socket] = []
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(requests.post, capped.url("/-/refresh"), timeout=30) for _ in range(4)]
        try:
            wait_for(lambda: inside == 4, "4 refreshes inside their handlers")
            assert sample(capped, "sensor_sd_http_connections") == 4
            for _ in range(5):  # 4 wait; the 5th pushes the longest waiting out
                s = socket.create_connection((HOST, capped.port), timeout=10)
                s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                waiting.append(s)
            first = waiting.pop(0)
            with first:
                assert first.recv(65536).startswith(b"HTTP/1.1 503 Service Unavailable")
            assert sample(capped, "sensor_sd_http_connections_closed_total", reason="over_limit") == 1
            waiting[0].settimeout(0.3)
            with pytest.raises(TimeoutError):  # still waiting: busy connections are never displaced
                waiting[0].recv(1)
            assert sample(capped, "sensor_sd_http_connections_closed_total", reason="evicted") == 0
        finally:
            capped.sd.lt.loop.call_soon_threadsafe(gate.set)
        assert [f.result().status_code for f in busy] == [200] * 4  # the busy ones were not touched
    for s in waiting:  # served in turn once the slots freed
        with s:
            s.settimeout(10)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")


async def _after(gate: asyncio.Event, work: Awaitable[T]) -> T:
    await gate.wait()
    return await work


def non_reader(port: int, requests_: int = 1) -> socket.socket:
    """A client that asks for /targets and never reads, with a small receive buffer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, port))
    s.sendall(b"GET /targets HTTP/1.1\r\nHost: x\r\n\r\n" * requests_)
    return s


def test_clients_that_never_read_hold_at_most_one_slice_each(serve_sd: Callable[..., Any]) -> None:
    """Five clients ask for 5 x 20 copies of a 380 KB body and read nothing: the server holds at
    most one 32 KiB slice per connection (what the kernel did not take of its last write), not the bodies."""
    sd = _serve(serve_sd, poll=False)
    sd.set_inventory([f"sensor_{i}" for i in range(20_000)])
    assert requests.post(sd.url("/-/refresh"), timeout=30).status_code == 200
    body = len(requests.get(sd.url("/targets"), headers={"Accept-Encoding": "identity"}, timeout=5).content)
    assert body > 300_000
    clients = [non_reader(sd.port, requests_=20) for _ in range(5)]
    try:
        wait_for(lambda: sample(sd, "sensor_sd_http_write_buffer_bytes") > 0, "answers waiting for their clients")
        peak = 0.0
        for _ in range(25):  # sampled while the writes are stuck
            peak = max(peak, sample(sd, "sensor_sd_http_write_buffer_bytes"))
            time.sleep(0.02)
        assert peak <= 5 * (32 * 1024 + 1024), peak  # the whole bodies would be 5 x 380 KB or more
        assert requests.get(sd.url("/-/healthy"), timeout=5).status_code == 200
    finally:
        for s in clients:
            s.close()


def test_a_client_that_never_reads_is_closed_after_the_write_timeout(
        monkeypatch: pytest.MonkeyPatch, serve_sd: Callable[..., Any]) -> None:
    monkeypatch.setattr(connections, "WRITE_TIMEOUT_SECONDS", 1.0)
    sd = _serve(serve_sd, poll=False)
    sd.set_inventory([f"sensor_{i}" for i in range(20_000)])
    assert requests.post(sd.url("/-/refresh"), timeout=30).status_code == 200
    with non_reader(sd.port, requests_=20) as s:  # 7.6 MB asked for: more than the socket buffers hold
        wait_for(lambda: sample(sd, "sensor_sd_http_connections_closed_total", reason="write_timeout") == 1,
                 "the write timeout to close the non-reader")
        assert closed_by_server(s)
    wait_for(lambda: sample(sd, "sensor_sd_http_write_buffer_bytes") == 0, "its buffer released")
    assert requests.get(sd.url("/-/healthy"), timeout=5).status_code == 200
