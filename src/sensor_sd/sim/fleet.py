"""Sensor fleet simulator (`sensor-sd fleet`): one process answering `/metrics` for every `sensor_N:9100`.

It is an HTTP forward proxy as far as Prometheus is concerned: with
`proxy_url: http://127.0.0.1:P`, a scrape of `sensor_17:9100` arrives as
`GET http://sensor_17:9100/metrics` (absolute-form target, `Host:
sensor_17:9100`) and is answered here, so no DNS or real hardware is needed.
Unreachable sensors get 502, as a real proxy would report a dead upstream.

A normal (origin-form) request whose Host is loopback, the listen address, or
carries the simulator's own port is for the simulator itself: `/metrics` (its
own), `/-/healthy` and the admin API:

* `PUT /admin/down` `{"sensors": [...], "mode": "502"|"abort"}` (abort = TCP reset)
* `PUT /admin/slow` `{"sensors": [...], "seconds": s}` (delay before answering)
* `PUT /admin/garbage` `{"sensors": [...]}` (unparsable exposition)
* `DELETE /admin/faults` (all healthy, `--down` included), `GET /admin/state`

Each PUT replaces that fault's set; an empty list clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from sensor_sd.checks import type_name
from sensor_sd.sim._common import (
    add_common_routes,
    module_main,
    port_arg,
    seconds_arg,
    CLIENT_MAX_SIZE,
    AdminError,
    abort_with_rst,
    admin_errors,
    get_number,
    get_str_list,
    json_response,
    read_json,
    require_object,
    serve_forever,
    url_host,
)

log = logging.getLogger(__name__)

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FIRMWARE = "1.4.2"
MODELS = ("TH-100", "TH-200", "THB-300", "ENV-410")
_DOWN_MODES = ("502", "abort")
_SELF_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})
_DAY = 86400.0

# Garbage that no Prometheus text parser accepts (broken label set, NUL, stray bytes).
GARBAGE_EXPOSITION = (
    b"# TYPE sensor_temperature_celsius gauge\n"
    b'sensor_temperature_celsius{unit="c 21.5\n'
    b"\x00\xff\xfe sensor_humidity_ratio {{{ nan nan\n"
    b"<html>not metrics</html>\n"
)


def normalize_host(entry: str, default_port: int) -> tuple[str, int]:
    """`sensor_1`, `sensor_1:9100` or `SENSOR_1:9100` -> ("sensor_1", 9100); hostnames are case-insensitive."""
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return host.lower().strip("[]"), int(port)
    return entry.lower().strip("[]"), default_port


def exposition(name: str, now: float, started: float) -> bytes:
    """Deterministic per-name metrics in the Prometheus text format.

    Built as plain text (no client library) because 10k sensors every 15 s
    must cost next to nothing. Stable values come from a hash of the name;
    uptime and the event counter grow with wall time since the fleet started.
    """
    h = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=16).digest()
    u = [int.from_bytes(h[i : i + 2], "big") / 65535.0 for i in range(0, 16, 2)]
    uptime = (now - started) + u[3] * 30 * _DAY
    temperature = 17.0 + 8.0 * u[0] + 1.5 * math.sin(2 * math.pi * (now / 3600.0 + u[1]))
    humidity = 0.30 + 0.35 * u[2] + 0.05 * math.sin(2 * math.pi * (now / 5400.0 + u[1]))
    battery = max(0.02, 0.40 + 0.59 * u[4] - uptime / (400 * _DAY))
    events = int(uptime * (0.05 + 2.0 * u[5]))
    model = MODELS[h[15] % len(MODELS)]
    return (
        "# HELP sensor_temperature_celsius Ambient temperature measured by the sensor.\n"
        "# TYPE sensor_temperature_celsius gauge\n"
        f"sensor_temperature_celsius {temperature:.2f}\n"
        "# HELP sensor_humidity_ratio Relative humidity, 0 to 1.\n"
        "# TYPE sensor_humidity_ratio gauge\n"
        f"sensor_humidity_ratio {humidity:.4f}\n"
        "# HELP sensor_battery_ratio Remaining battery charge, 0 to 1.\n"
        "# TYPE sensor_battery_ratio gauge\n"
        f"sensor_battery_ratio {battery:.4f}\n"
        "# HELP sensor_uptime_seconds Seconds since the sensor booted.\n"
        "# TYPE sensor_uptime_seconds gauge\n"
        f"sensor_uptime_seconds {uptime:.3f}\n"
        "# HELP sensor_events_total Measurement events recorded since boot.\n"
        "# TYPE sensor_events_total counter\n"
        f"sensor_events_total {events}\n"
        "# HELP sensor_info Firmware and hardware model of the sensor.\n"
        "# TYPE sensor_info gauge\n"
        f'sensor_info{{firmware="{FIRMWARE}",model="{model}"}} 1\n'
    ).encode()


@dataclass
class FleetState:
    """Faults and the inventory view; one instance per app, no module-level state."""

    sensor_port: int = 9100
    inventory_url: str | None = None
    inventory_refresh: float = 5.0
    self_hosts: frozenset[str] = _SELF_HOSTS
    down: dict[str, str] = field(default_factory=dict)  # hostname -> "502" | "abort"
    slow: dict[str, float] = field(default_factory=dict)  # hostname -> seconds
    garbage: set[str] = field(default_factory=set)
    # None = no inventory configured: every host answers. Otherwise (host, port) pairs.
    known: frozenset[tuple[str, int]] | None = None
    inventory_etag: str | None = None
    inventory_last_success: float | None = None
    inventory_last_error: str | None = None
    started: float = field(default_factory=time.time)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    scrapes: Counter = field(init=False)
    refreshes: Counter = field(init=False)
    known_gauge: Gauge = field(init=False)

    def __post_init__(self) -> None:
        self.scrapes = Counter(
            "fleet_sim_scrapes", "Sensor requests answered by the fleet simulator, by result.", ["result"], registry=self.registry
        )
        self.refreshes = Counter(
            "fleet_sim_inventory_refreshes", "Inventory refreshes by result.", ["result"], registry=self.registry
        )
        self.known_gauge = Gauge(
            "fleet_sim_inventory_sensors", "Sensors currently known from the inventory (-1: no inventory).", registry=self.registry
        )
        self.known_gauge.set(-1)

    def reachable(self, host: str, port: int) -> bool:
        if self.known is None:
            return port == self.sensor_port
        return (host, port) in self.known

    def describe(self) -> dict[str, Any]:
        return {
            "sensor_port": self.sensor_port,
            "down": dict(sorted(self.down.items())),
            "slow": dict(sorted(self.slow.items())),
            "garbage": sorted(self.garbage),
            "inventory": {
                "url": self.inventory_url,
                "known": None if self.known is None else len(self.known),
                "last_success": self.inventory_last_success,
                "last_error": self.inventory_last_error,
            },
            "uptime_seconds": round(time.time() - self.started, 3),
        }


STATE = web.AppKey("fleet_state", FleetState)


def _target(request: web.Request, state: FleetState) -> tuple[str, int] | None:
    """(host, port) of the sensor a request is for, or None when it is addressed to the simulator itself.

    Absolute-form targets are proxy requests: the host comes from the target
    (RFC 9112 3.2.2). An origin-form request is for the simulator when its Host
    is loopback/the listen address or carries the simulator's own port (so
    `http://fleet:9101/admin/state` works from another container); otherwise
    it is a sensor addressed by Host header (handy with curl -H).
    """
    url = request.url
    host = (url.host or "").lower()
    port = url.port or 80
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    own_port = sockname[1] if isinstance(sockname, tuple) else None
    is_self = host in state.self_hosts or host == ""
    # raw_path is the request target as sent: absolute-form is the only one not starting with "/" or "*".
    if "://" in request.raw_path[:16] and not request.raw_path.startswith("/"):
        return None if is_self and port == own_port else (host, port)
    if is_self or port == own_port or "host" not in request.headers:
        return None
    return host, port


async def _sensor(request: web.Request, state: FleetState, host: str, port: int) -> web.StreamResponse:
    """Answer as the sensor would, or as a proxy whose upstream is unreachable."""
    if not state.reachable(host, port):
        state.scrapes.labels("unreachable").inc()
        return web.Response(status=502, text=f"proxy: upstream {host}:{port} unreachable\n")
    down = state.down.get(host)
    if down == "abort":
        state.scrapes.labels("down").inc()
        abort_with_rst(request)
        return web.Response(status=502)  # never sent: the connection is gone
    if down is not None:
        state.scrapes.labels("down").inc()
        return web.Response(status=502, text=f"proxy: upstream {host}:{port} connection refused\n")
    delay = state.slow.get(host)
    if delay:
        # The delay is the fault itself; shutdown cuts it short so a stop never waits on it.
        try:
            await asyncio.wait_for(state.stopping.wait(), timeout=delay)
            abort_with_rst(request)
            return web.Response(status=502)
        except TimeoutError:
            pass
    if request.method not in ("GET", "HEAD"):
        state.scrapes.labels("bad_method").inc()
        return web.Response(status=405, text="method not allowed\n", headers={"Allow": "GET, HEAD"})
    if request.path != "/metrics":
        state.scrapes.labels("not_found").inc()
        return web.Response(status=404, text="404 page not found\n")
    if host in state.garbage:
        state.scrapes.labels("garbage").inc()
        return web.Response(body=GARBAGE_EXPOSITION, headers={"Content-Type": EXPOSITION_CONTENT_TYPE})
    state.scrapes.labels("slow" if delay else "ok").inc()
    body = exposition(host, time.time(), state.started)
    return web.Response(body=body, headers={"Content-Type": EXPOSITION_CONTENT_TYPE})


@web.middleware
async def _dispatch(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Proxy requests go to the sensor handler before routing, so `/admin` on a sensor is just a 404."""
    state = request.app[STATE]
    target = _target(request, state)
    if target is not None:
        return await _sensor(request, state, *target)
    return await handler(request)


# -- inventory view --------------------------------------------------------

def _parse_inventory(body: bytes, default_port: int) -> frozenset[tuple[str, int]]:
    data = orjson.loads(body)
    if not isinstance(data, list):
        raise ValueError(f"inventory is {type_name(data)}, not a list")
    return frozenset(normalize_host(x, default_port) for x in data if isinstance(x, str) and x)


async def refresh_inventory(state: FleetState, session: aiohttp.ClientSession) -> None:
    """One conditional GET of the inventory; on any failure the previous view is kept."""
    assert state.inventory_url is not None
    headers = {"If-None-Match": state.inventory_etag} if state.inventory_etag else {}
    try:
        async with session.get(state.inventory_url, headers=headers) as resp:
            if resp.status == 304:
                state.refreshes.labels("not_modified").inc()
            elif resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            else:
                # Off the event loop: a million-entry inventory must not stall scrapes while parsed.
                known = await asyncio.to_thread(_parse_inventory, await resp.read(), state.sensor_port)
                state.known = known
                state.inventory_etag = resp.headers.get("ETag")
                state.known_gauge.set(len(known))
                state.refreshes.labels("ok").inc()
        state.inventory_last_success = time.time()
        state.inventory_last_error = None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        state.inventory_last_error = f"{type(exc).__name__}: {exc}"
        state.refreshes.labels("error").inc()
        log.warning("fleet: inventory refresh failed, keeping previous view: %s", state.inventory_last_error)


async def _inventory_loop(app: web.Application) -> AsyncIterator[None]:
    """Refresh in the background so a scrape never waits for the inventory."""
    state = app[STATE]
    if state.inventory_url is None:
        yield
        return
    timeout = aiohttp.ClientTimeout(total=max(1.0, min(10.0, state.inventory_refresh * 2)))

    async def loop(session: aiohttp.ClientSession) -> None:
        while True:
            await refresh_inventory(state, session)
            await asyncio.sleep(state.inventory_refresh)  # the refresh period, not a readiness wait

    async with aiohttp.ClientSession(timeout=timeout) as session:
        task = asyncio.create_task(loop(session))
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


# -- admin -----------------------------------------------------------------

def _sensor_names(body: dict[str, Any], state: FleetState) -> list[str]:
    names = get_str_list(body, "sensors", max_len=1_000_000)
    if names is None:
        raise AdminError("'sensors' (array of hostnames) is required")
    return sorted({normalize_host(n, state.sensor_port)[0] for n in names})


def _check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise AdminError(f"unknown key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


async def admin_down(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = require_object(await read_json(request))
    _check_keys(body, {"sensors", "mode"})
    mode = body.get("mode", "502")
    if mode not in _DOWN_MODES:
        raise AdminError(f"'mode' must be one of {', '.join(_DOWN_MODES)}, got {mode!r}")
    state.down = {name: mode for name in _sensor_names(body, state)}
    return json_response(state.describe())


async def admin_slow(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = require_object(await read_json(request))
    _check_keys(body, {"sensors", "seconds"})
    seconds = get_number(body, "seconds", None, 0.0, 3600.0)
    if seconds is None:
        raise AdminError("'seconds' (number) is required")
    state.slow = {name: seconds for name in _sensor_names(body, state)}
    return json_response(state.describe())


async def admin_garbage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = require_object(await read_json(request))
    _check_keys(body, {"sensors"})
    state.garbage = set(_sensor_names(body, state))
    return json_response(state.describe())


async def admin_clear(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.down, state.slow, state.garbage = {}, {}, set()
    return json_response(state.describe())


async def admin_state(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].describe())


def make_app(
    *,
    down: list[str] | None = None,
    inventory_url: str | None = None,
    inventory_refresh: float = 5.0,
    sensor_port: int = 9100,
    listen_host: str = "127.0.0.1",
) -> web.Application:
    """Build the simulator. State is at app[STATE]; `listen_host` also counts as "the simulator itself"."""
    if inventory_refresh <= 0:
        raise ValueError("inventory_refresh must be > 0")
    state = FleetState(
        sensor_port=sensor_port,
        inventory_url=inventory_url,
        inventory_refresh=inventory_refresh,
        self_hosts=_SELF_HOSTS | {listen_host.lower().strip("[]")},
    )
    if inventory_url is not None:
        state.known = frozenset()  # until the first successful fetch, no sensor is known to exist
    for name in down or []:
        state.down[normalize_host(name, sensor_port)[0]] = "502"
    app = web.Application(middlewares=[_dispatch, admin_errors], client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = state
    r = app.router
    r.add_get("/admin/state", admin_state)
    r.add_put("/admin/down", admin_down)
    r.add_put("/admin/slow", admin_slow)
    r.add_put("/admin/garbage", admin_garbage)
    r.add_delete("/admin/faults", admin_clear)
    app.cleanup_ctx.append(_inventory_loop)
    add_common_routes(app, STATE)
    return app


# -- CLI -------------------------------------------------------------------

def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http(s) URL, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `sensor-sd fleet`."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=port_arg, default=9101, help="listen port = Prometheus proxy_url port, 0 = ephemeral (default 9101)")
    parser.add_argument(
        "--inventory-url",
        type=_http_url,
        default=None,
        help="if set, only hosts currently in this inventory answer; others get 502",
    )
    parser.add_argument("--inventory-refresh", type=seconds_arg(allow_zero=False), default=5.0, help="seconds between inventory refreshes (default 5)")
    parser.add_argument("--sensor-port", type=port_arg, default=9100, help="port the sensors listen on (default 9100)")
    parser.add_argument("--down", default="", help="comma-separated sensors that start down, e.g. sensor_1,sensor_2")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 (1 if the port cannot be bound)."""
    down = [name.strip() for name in args.down.split(",") if name.strip()]
    app = make_app(
        down=down,
        inventory_url=args.inventory_url,
        inventory_refresh=args.inventory_refresh,
        sensor_port=args.sensor_port,
        listen_host=args.host,
    )
    return serve_forever(
        app,
        args.host,
        args.port,
        lambda port: f"fleet listening on http://{url_host(args.host, port)} (use as Prometheus proxy_url)",
    )


def main(argv: list[str] | None = None) -> int:
    return module_main("sensor-sd fleet", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
