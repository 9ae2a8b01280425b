"""Plumbing shared by the simulators: serving until a signal, JSON admin helpers, metrics.

Kept private so `inventory` and `fleet` expose only the fixed interface
(`add_arguments`, `run`, `make_app`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sensor_sd import checks
from sensor_sd.checks import type_name  # the one type-name helper, shared with the settings and the web config

_N = TypeVar("_N", int, float)

# Client bodies up to this size are accepted by the admin APIs: a PUT of a
# million-name inventory is ~15 MB, far above aiohttp's 1 MiB default.
CLIENT_MAX_SIZE = 256 * 1024 * 1024

# Hung/slow handlers must not hold a shutdown for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT = 0.5


class AdminError(Exception):
    """Bad admin input: becomes a 400 with a JSON error body, never a 500."""


def json_response(data: Any, status: int = 200) -> web.Response:
    """Render with orjson (aiohttp's json_response uses the slower stdlib)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def json_error(message: str, status: int = 400) -> web.Response:
    """The single error shape of the admin APIs: {"error": "..."}."""
    return json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """Parse the body as JSON or raise AdminError naming what is wrong."""
    raw = await request.read()
    if not raw:
        raise AdminError("request body must be JSON, got an empty body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AdminError(f"request body is not valid JSON: {exc}") from None


def require_object(body: Any) -> dict[str, Any]:
    """Admin bodies other than the raw sensor list are JSON objects."""
    if not isinstance(body, dict):
        raise AdminError(f"request body must be a JSON object, got {type_name(body)}")
    return body


def get_int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer field in [lo, hi]; booleans and floats are rejected, not coerced."""
    try:
        value = checks.integer(body.get(key), repr(key), lo, hi)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    return default if value is None else value


def get_number(body: dict[str, Any], key: str, default: float | None, lo: float, hi: float) -> float | None:
    """A number field in [lo, hi] (ints accepted, booleans, NaN and infinities rejected)."""
    try:
        value = checks.number(body.get(key), repr(key), lo, hi)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    return default if value is None else value


def get_str_list(body: dict[str, Any], key: str, max_len: int = 10_000_000) -> list[str] | None:
    """A list of non-empty strings, or None when the key is absent."""
    if key not in body:
        return None
    value = body[key]
    if not isinstance(value, list):
        raise AdminError(f"{key!r} must be an array of strings, got {type_name(value)}")
    if len(value) > max_len:
        raise AdminError(f"{key!r} has {len(value)} entries, at most {max_len} allowed")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise AdminError(f"{key!r}[{i}] must be a non-empty string, got {type_name(item)}")
    return value


@web.middleware
async def admin_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn AdminError into 400 JSON so hostile admin input can never crash a handler."""
    try:
        return await handler(request)
    except AdminError as exc:
        return json_error(str(exc))


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """Expose a simulator's own registry (never the process-global one)."""
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def abort_with_rst(request: web.Request) -> None:
    """Close the TCP connection with RST (SO_LINGER 0) so the client sees a reset, not a clean FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind ourselves so port 0 works and the real port is known without private aiohttp API."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start an app on host:port (0 = ephemeral); return the runner and the bound port.

    handler_cancellation=True: a client that gives up on a hung or dripping
    response frees its handler instead of leaving it parked until shutdown.
    """
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    sock = bind_socket(host, port)
    site = web.SockSite(runner, sock)
    await site.start()
    return runner, sock.getsockname()[1]


def serve_forever(app: web.Application, host: str, port: int, banner: Callable[[int], str]) -> int:
    """Serve until SIGTERM/SIGINT, then shut down within ~1 s; the CLI's `run` returns this code."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner, bound = await start_app(app, host, port)
        # One line on stdout with the real port: wrappers started with --port 0 parse it.
        print(banner(bound), flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        return 0

    try:
        return asyncio.run(main())
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1


def url_host(host: str, port: int) -> str:
    """host:port for URLs, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- argparse value types shared by the simulators' flags -------------------


def _flag(parse: Callable[[str], _N]) -> Callable[[str], _N]:
    """An argparse type from a parser of sensor_sd.checks: the same number grammar as every variable of the SD."""
    def flag(text: str) -> _N:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {exc}, got {text!r}") from None

    return flag


count_arg = _flag(checks.whole(0, 10**12))  # a non-negative integer flag value
port_arg = _flag(checks.whole(0, 65535))  # a port flag value; 0 asks the kernel for an ephemeral port
_SECONDS_MAX = 10.0**9


def seconds_arg(*, allow_zero: bool) -> Callable[[str], float]:
    """A number of seconds, > 0 (or >= 0 with allow_zero)."""
    return _flag(checks.decimal(0, _SECONDS_MAX, open_min=not allow_zero))


def module_main(prog: str, doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """`python -m sensor_sd.sim.X`: the same as `sensor-sd X`."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_common_routes(app: web.Application, key: web.AppKey[Any]) -> None:
    """`/metrics`, `/-/healthy` and the stop flag on shutdown, shared by both simulators.

    The state at `app[key]` has a `registry` (its own metrics) and a `stopping` event
    that hung or slow handlers watch so a shutdown never waits for them.
    """

    async def metrics(request: web.Request) -> web.Response:
        return metrics_response(request.app[key].registry)

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def stopping(app: web.Application) -> None:
        app[key].stopping.set()

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.on_shutdown.append(stopping)
