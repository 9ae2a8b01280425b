"""sensor_sd.web.auth: basic auth against bcrypt hashes, on a live loopback server."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import requests
from aiohttp import web

from sensor_sd.sim._common import start_app
from sensor_sd.sim.stack import wait_until
from sensor_sd.web.auth import BASIC_AUTH, BasicAuth, install
from sensor_sd.web.config import load as load_web_config

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
SLOW_HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()  # ~60 ms a check, as in production


def write(dir_: Path, text: str) -> Path:
    path = dir_ / "web.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("header", [None, "", "Bearer abc", "Basic", "Basic !!!notbase64",
                                    "Basic " + base64.b64encode(b"no-colon").decode(),
                                    "Basic " + base64.b64encode(b"\xff\xfe:x").decode()])
def test_malformed_authorization_headers_are_no_credentials(header: str | None) -> None:
    assert BasicAuth.credentials(header) is None


def _basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


def test_basic_auth_checks() -> None:
    async def main() -> list[bool]:
        auth = BasicAuth((("alice", HASH),))
        return [await auth.check(_basic("alice", "s3cret")), await auth.check(_basic("alice", "s3cret")),
                await auth.check(_basic("alice", "wrong")), await auth.check(_basic("bob", "s3cret")),
                await auth.check(_basic("alice", "x" * 100)), await auth.check(_basic("alice", "s3cret\x00")),
                await auth.check("basic " + base64.b64encode(b"alice:s3cret").decode())]

    assert asyncio.run(main()) == [True, True, False, False, False, False, True]


@dataclass(frozen=True)
class AuthServer:
    url: str
    auth: BasicAuth  # the app's own checker: how many checks are in flight


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    """A tiny app behind install(): basic auth, /-/healthy opened for probes, one extra header."""
    path = write(tmp_path, f"basic_auth_users:\n  alice: {SLOW_HASH}\nsensor_sd:\n  unauthenticated_paths: [/-/healthy]\n"
                           "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/-/healthy", ok)
    app.router.add_get("/-/ready", ok)
    app.router.add_get("/targets", ok)
    app.router.add_post("/-/refresh", ok)
    install(app, load_web_config(path))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(start_app(app, "127.0.0.1", 0), loop).result(10)
    try:
        yield AuthServer(f"http://127.0.0.1:{port}", app[BASIC_AUTH])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_auth_middleware_on_a_live_server(auth_server: AuthServer) -> None:
    url = auth_server.url
    good = {"Authorization": _basic("alice", "s3cret")}
    bad = {"Authorization": _basic("alice", "nope")}
    assert requests.get(f"{url}/-/healthy", timeout=5).status_code == 200  # opened for probes
    assert requests.post(f"{url}/-/healthy", timeout=5).status_code in (401, 405)
    for path in ("/targets", "/-/ready", "/nope"):
        r = requests.get(f"{url}{path}", timeout=5)
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.get(f"{url}{path}", headers=bad, timeout=5).status_code == 401
    r = requests.get(f"{url}/targets", headers=good, timeout=5)
    assert r.status_code == 200 and r.headers["X-Frame-Options"] == "deny"
    assert requests.post(f"{url}/-/refresh", timeout=5).status_code == 401
    assert requests.post(f"{url}/-/refresh", headers=good, timeout=5).status_code == 200
    assert requests.get(f"{url}/nope", headers=good, timeout=5).status_code == 404


def test_wrong_passwords_do_not_block_the_loop(auth_server: AuthServer) -> None:
    """bcrypt runs in threads: /-/healthy answers quickly during a burst of bad passwords."""
    from concurrent.futures import ThreadPoolExecutor

    bad = {"Authorization": _basic("alice", "nope")}
    clients = 16
    with ThreadPoolExecutor(clients) as pool:
        burst = [pool.submit(requests.get, f"{auth_server.url}/targets", headers=bad, timeout=10) for _ in range(32)]
        # The probe is only meaningful while every client's check queues for or runs bcrypt.
        wait_until(lambda: auth_server.auth.in_flight >= clients, 10, f"{clients} checks in flight", 0.001)
        started = time.monotonic()
        assert requests.get(f"{auth_server.url}/-/healthy", timeout=5).status_code == 200
        assert time.monotonic() - started < 0.3
        assert all(f.result().status_code == 401 for f in burst)
