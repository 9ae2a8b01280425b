"""The inventory client: body checks, size cap, conditional GET, bearer token, CA bundle."""

from __future__ import annotations

import asyncio
import base64
import gzip
import ssl
import sys
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from sensor_sd import config
from sensor_sd.sources import Source
from sensor_sd.errors import BodyTooLarge, DecodeError, FetchError, StatusError
from sensor_sd.decode import parse_body
from sensor_sd.inventory import Client, OneShotClient, Validators


@pytest.mark.parametrize("body", [b"", b"[", b'{"a": 1}', b'"x"', b"1", b"null", b"\xff\xfe[]", b'["\xff"]',
                                  b"<html>oops</html>", b'["a",]', b"[1] [2]"])
def test_parse_body_rejects_non_arrays_whole(body: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_body(body)


def test_parse_body_accepts_any_array() -> None:
    assert parse_body(b'["a", 1, null]') == ["a", 1, None]


@pytest.fixture(autouse=True, params=[Client, OneShotClient], ids=["aiohttp", "one-shot"])
def client_class(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[Client]:
    """Every test here runs against both clients: the daemon's (aiohttp) and `once`/`check`'s (http.client)."""
    monkeypatch.setattr(sys.modules[__name__], "Client", request.param)
    return request.param  # type: ignore[no-any-return]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve(handler: Handler, test: Callable[[str, TestServer], Awaitable[None]],
          ssl_context: ssl.SSLContext | None = None) -> None:
    async def main() -> None:
        app = web.Application()
        app.router.add_get("/inventory", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=ssl_context)
        try:
            scheme = "https" if ssl_context else "http"
            await test(f"{scheme}://localhost:{server.port}/inventory", server)
        finally:
            await server.close()

    asyncio.run(main())


def settings(url: str, **env: str) -> config.Settings:
    return config.load({}, {"INVENTORY_URL": f"inv={url}", "TARGETS_FILE": "", **env})


def test_conditional_get_and_304(tmp_path: Path) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")))
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(body=b'["a"]', headers={"ETag": '"v1"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"})

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url)) as client:
            first = await client.fetch(Source("inv", url), Validators())
            assert first.body == b'["a"]'
            second = await client.fetch(Source("inv", url), first.validators)
            assert second.body is None and second.validators == first.validators

    serve(handler, test)
    assert seen == [(None, None), ('"v1"', "Wed, 01 Jan 2025 00:00:00 GMT")]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_cut_at_the_cap(chunked: bool) -> None:
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        if not chunked:
            resp.content_length = 50 * 1024 * 1024
        await resp.prepare(request)
        block = b"[" + b'"sensor_0",' * 10000
        try:
            for _ in range(5000):
                await resp.write(block)
                sent += len(block)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url, MAX_RESPONSE_BYTES="1000000")) as client:
            with pytest.raises(BodyTooLarge):
                await client.fetch(Source("inv", url), Validators())

    serve(handler, test)
    assert sent < 20 * 1024 * 1024  # the read stopped long before the 50 MB body ended


def test_status_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance")

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url)) as client:
            with pytest.raises(StatusError, match="503"):
                await client.fetch(Source("inv", url), Validators())

    serve(handler, test)


def test_bearer_token_is_sent_and_reread(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"[]")

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url, INVENTORY_TOKEN_FILE=str(token))) as client:
            await client.fetch(Source("inv", url), Validators())
            token.write_text("second-token")
            await client.fetch(Source("inv", url), Validators())
            token.unlink()
            with pytest.raises(FetchError, match="INVENTORY_TOKEN_FILE") as info:
                await client.fetch(Source("inv", url), Validators())
            assert "token" not in str(info.value).replace("INVENTORY_TOKEN_FILE", "")

    serve(handler, test)
    assert seen == ["Bearer first-token", "Bearer second-token"]


def test_user_and_password_in_the_url_are_sent_as_basic_auth() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"[]")

    async def test(url: str, server: TestServer) -> None:
        with_user = url.replace("://", "://inv%20user:pa%40ss@")
        async with Client(settings(with_user)) as client:
            await client.fetch(Source("inv", with_user), Validators())

    serve(handler, test)
    assert seen == ["Basic " + base64.b64encode(b"inv user:pa@ss").decode()]


def test_a_token_with_a_line_break_fails_the_poll_without_echoing_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\nsecret-token-value\n")

    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("no request may be sent")

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url, INVENTORY_TOKEN_FILE=str(token))) as client:
            with pytest.raises(FetchError) as info:
                await client.fetch(Source("inv", url), Validators())
        assert str(info.value) == "cannot send INVENTORY_TOKEN_FILE: the token holds a line break or another control " \
            "character", info.value

    serve(handler, test)


def test_redirects_are_followed_and_the_token_stays_with_its_origin(tmp_path: Path) -> None:
    """Four redirects are followed, a fifth fails the poll; the bearer token goes to the inventory's
    origin only, not to another host."""
    token = tmp_path / "token"
    token.write_text("secret-token")
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        async def record(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Authorization", "")))
            return web.Response(body=b'["moved_sensor"]')

        other_app = web.Application()
        other_app.router.add_get("/inventory", record)
        other = TestServer(other_app, host="127.0.0.1")
        await other.start_server()

        async def hop(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Authorization", "")))
            n = int(request.match_info["n"])
            if n == 0:
                raise web.HTTPFound(f"http://127.0.0.1:{other.port}/inventory")
            raise web.HTTPTemporaryRedirect(f"/hop/{n - 1}")

        app = web.Application()
        app.router.add_get("/hop/{n}", hop)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            base = f"http://127.0.0.1:{server.port}"
            async with Client(settings(f"{base}/hop/3", INVENTORY_TOKEN_FILE=str(token))) as client:
                got = await client.fetch(Source("inv", f"{base}/hop/3"), Validators())
                assert got.body == b'["moved_sensor"]'
                seen_then = list(seen)
                with pytest.raises(FetchError, match="^too many redirects$"):
                    await client.fetch(Source("inv", f"{base}/hop/4"), Validators())
        finally:
            await server.close()
            await other.close()
        assert seen_then == [(f"/hop/{n}", "Bearer secret-token") for n in (3, 2, 1, 0)] + [("/inventory", "")]

    asyncio.run(main())


def test_https_with_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b'["tls_sensor"]')

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url, INVENTORY_CA_FILE=str(ca_file))) as client:
            assert (await client.fetch(Source("inv", url), Validators())).body == b'["tls_sensor"]'
        async with Client(settings(url)) as client:  # system CAs do not trust it
            with pytest.raises(FetchError) as info:
                await client.fetch(Source("inv", url), Validators())
        assert str(info.value).startswith(f"TLS certificate not accepted: localhost:{server.port} ("), info.value
        assert "ssl:" not in str(info.value) and "Error" not in str(info.value)

    serve(handler, test, server_ctx)


def _fetch_error(url: str) -> str:
    async def main() -> str:
        s = settings(url, REQUEST_TIMEOUT="5")
        async with Client(s) as client:
            with pytest.raises(FetchError) as info:
                await client.fetch(s.sources[0], Validators())
        return str(info.value)

    return asyncio.run(main())


def test_connection_errors_in_plain_words() -> None:
    """No library jargon (`ssl:default`, exception class names) in what the user reads."""
    assert _fetch_error("http://127.0.0.1:1/inventory") == "connection refused: 127.0.0.1:1"
    assert _fetch_error("https://[::1]:1/inventory") in ("connection refused: [::1]:1",
                                                         "network unreachable: [::1]:1",
                                                         "cannot connect: [::1]:1 (Cannot assign requested address)")
    dns = _fetch_error("http://no-such-host.invalid:1337/inventory")
    assert dns.startswith("cannot resolve host name: no-such-host.invalid"), dns


def test_a_closed_connection_in_plain_words() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # no answer at all
        return web.Response()

    async def test(url: str, server: TestServer) -> None:
        s = settings(url)
        async with Client(s) as client:
            with pytest.raises(FetchError) as info:
                await client.fetch(s.sources[0], Validators())
        assert str(info.value) == "the inventory closed the connection without answering", str(info.value)

    serve(handler, test)


# --- Content-Encoding: decoded by sensor-sd, a lie is a decode error ---------------------------------

_BODY = b'["sensor_1", "sensor_2"]'


def _fetch_encoded(body: bytes, encoding: str, **env: str) -> bytes:
    """GET a body sent with the given Content-Encoding header; the decoded body (or the error raised)."""
    got: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        assert "gzip" in request.headers.get("Accept-Encoding", "")
        return web.Response(body=body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"})

    async def test(url: str, server: TestServer) -> None:
        async with Client(settings(url.replace("localhost", "127.0.0.1"), **env)) as client:
            response = await client.fetch(Source("inv", url.replace("localhost", "127.0.0.1")), Validators())
            assert response.body is not None
            got.append(response.body)

    serve(handler, test)
    return got[0]


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("body", "encoding"), [
    (gzip.compress(_BODY), "gzip"), (gzip.compress(_BODY), "x-gzip"), (gzip.compress(_BODY), " GZIP "),
    (zlib.compress(_BODY), "deflate"), (_raw_deflate(_BODY), "deflate"), (_BODY, "identity"), (_BODY, ""),
], ids=["gzip", "x-gzip", "GZIP-spaced", "deflate-zlib", "deflate-raw", "identity", "none"])
def test_compressed_bodies_are_decoded(body: bytes, encoding: str) -> None:
    assert _fetch_encoded(body, encoding) == _BODY


@pytest.mark.parametrize(("body", "encoding"), [
    (_BODY, "gzip"),  # plain JSON labelled gzip
    (_BODY, "deflate"),
    (gzip.compress(_BODY * 50)[:40], "gzip"),  # the stream ends early
    (gzip.compress(_BODY) + b"trailing", "gzip"),  # bytes after the end of the stream
    (gzip.compress(_BODY), "deflate, gzip"),
    (_BODY, "br"),
    (_BODY, "x-unknown"),
    (b"", "gzip"),
], ids=["plain-as-gzip", "plain-as-deflate", "gzip-cut", "gzip-trailing-bytes", "two-encodings", "br", "unknown",
        "empty-gzip"])
def test_a_body_that_does_not_decode_as_labelled_is_a_decode_error(body: bytes, encoding: str) -> None:
    with pytest.raises(DecodeError) as caught:
        _fetch_encoded(body, encoding)
    assert caught.value.reason == "decode" and "\n" not in str(caught.value)


def test_a_gzip_bomb_stops_at_the_decoded_cap() -> None:
    bomb = gzip.compress(b"[" + b"0," * 25_000_000 + b"0]", compresslevel=9)  # 50 MB decoded, ~50 KB sent
    assert len(bomb) < 200_000
    with pytest.raises(BodyTooLarge):
        _fetch_encoded(bomb, "gzip", MAX_RESPONSE_BYTES="1000000")
