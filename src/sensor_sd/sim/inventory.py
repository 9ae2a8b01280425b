"""Inventory service simulator (`sensor-sd inventory-server`).

Serves `GET /inventory` like the real inventory service (a JSON array of
hostnames) and lets tests and benchmarks change the list, churn it, and inject
every fault sensor-sd must survive, each produced for real at the HTTP/TCP
level. Connection refused cannot be produced by a listening server: tests stop
the server (or use a closed port) for that case.

Many stores in one process (`--stores N --sensors-per-store M`): store
`store7` is served at `GET /stores/store7/inventory` with its own list
(`store7_sensor_0`, ...), its own ETag/304 and its own fault, so one process
plays a whole retail chain. `GET /stores` lists the store names.

Admin API (JSON in, JSON out; bad input -> 400 {"error": "..."}):

* `GET /admin/state` -> count, etag, last_modified, version, fault, churn, stores
* `PUT /admin/sensors` body = JSON array, served exactly as given (any JSON values)
* `POST /admin/sensors/add` `{"count": k}` (new sensor numbers) or `{"names": [...]}`
* `POST /admin/sensors/remove` `{"count": k}` (random) or `{"names": [...]}`
* `PUT /admin/fault` `{"mode": M, "count": n?, ...params}`, `DELETE /admin/fault`
* `PUT /admin/churn` `{"add": k, "remove": k, "every": s}`, `DELETE /admin/churn`,
  `POST /admin/churn/step` (one churn step now, for deterministic tests)
* per store, the same verbs under `/admin/stores/<name>/`: `state`, `sensors`,
  `sensors/add`, `sensors/remove`, `fault` (churn is for `/inventory` only);
  `GET /admin/stores` (every store's state), `PUT /admin/stores/<name>`
  `{"sensors": k}` or `{"names": [...]}` (create or replace a store),
  `DELETE /admin/stores/<name>` (its inventory answers 404 from then on)

Fault modes (all take `count`: only the next n requests, then the fault clears):
`status` {code: 400..599, default 500}; `hang` {seconds: default forever, then
RST}; `slow` {seconds: total drip time, default 10; chunks: default 20};
`truncated` (complete HTTP, JSON cut in half); `garbage` {bytes: default 1024};
`html` (200 text/html page); `object` (JSON object); `nonutf8` (array with
invalid UTF-8 bytes); `oversized` {bytes: default 600 MiB, chunked: false =
Content-Length sent}; `empty` (`[]`); `reset` (headers + half the body, then
RST); `redirect_loop` (302 to itself). Fault responses carry no validators and
ignore conditional headers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.helpers import ETAG_ANY
from prometheus_client import CollectorRegistry, Counter, Gauge

from sensor_sd.checks import type_name
from sensor_sd.sim._common import (
    add_common_routes,
    count_arg,
    module_main,
    port_arg,
    seconds_arg,
    CLIENT_MAX_SIZE,
    AdminError,
    abort_with_rst,
    admin_errors,
    get_int,
    get_number,
    get_str_list,
    json_response,
    read_json,
    require_object,
    serve_forever,
    url_host,
)

MAX_COUNT = 10_000_000
DEFAULT_OVERSIZED_BYTES = 600 * 1024 * 1024
_SENSOR_NUMBER = re.compile(r"sensor_(\d+)\Z")
# Store names are sensor-sd source names: they become the `source` label.
_STORE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
_OVERSIZED_BLOCK_BYTES = 256 * 1024


@dataclass
class Fault:
    """An active fault: what to do to /inventory and for how many more requests (None = until cleared)."""

    mode: str
    params: dict[str, Any]
    remaining: int | None

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "params": self.params, "remaining": self.remaining}


@dataclass
class Churn:
    """Periodic membership change, as in a real store where sensors come and go."""

    add: int = 0
    remove: int = 0
    every: float = 0.0

    @property
    def active(self) -> bool:
        return self.every > 0 and (self.add > 0 or self.remove > 0)

    def describe(self) -> dict[str, Any]:
        return {"add": self.add, "remove": self.remove, "every": self.every, "active": self.active}


@dataclass
class Store:
    """One inventory: its list, pre-rendered body, validators and fault.

    The single `/inventory` is one Store, and so is every `/stores/<name>/inventory`:
    each answers, changes and fails on its own, as separate real services would.
    """

    name: str  # "" for the single /inventory
    items: list[Any]
    rng: random.Random
    # The app's shutdown flag: `hang` and `slow` handlers watch it so a stop never waits for them.
    stopping: asyncio.Event
    prefix: str = "sensor_"  # new sensors are <prefix><number>
    next_number: int = 0
    body: bytes = b"[]"
    etag: str = ""
    last_modified: int = 0
    version: int = 0
    fault: Fault | None = None
    _number: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._number = _SENSOR_NUMBER if self.prefix == "sensor_" else re.compile(re.escape(self.prefix) + r"(\d+)\Z")
        self.set_items(self.items, force=True)

    # -- membership ---------------------------------------------------------

    def set_items(self, items: list[Any], force: bool = False) -> bool:
        """Replace the list and pre-render the body once, so GET /inventory does no per-request work.

        Validators change only when the bytes change. Last-Modified has one
        second resolution, so it is bumped past the previous value to keep
        If-Modified-Since correct when the list changes twice in a second.
        """
        body = orjson.dumps(items)
        if not force and body == self.body:
            self.items = items
            return False
        self.items = items
        self.body = body
        self.etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
        self.last_modified = max(int(time.time()), self.last_modified + 1) if self.version else int(time.time())
        self.version += 1
        for item in items:
            if isinstance(item, str):
                m = self._number.match(item)
                if m and int(m.group(1)) >= self.next_number:
                    self.next_number = int(m.group(1)) + 1
        return True

    def new_names(self, count: int) -> list[str]:
        """Fresh sensor numbers never used before, like newly installed hardware."""
        start = self.next_number
        self.next_number += count
        return [f"{self.prefix}{i}" for i in range(start, start + count)]

    def add_count(self, count: int) -> int:
        if count:
            self.set_items(self.items + self.new_names(count))
        return count

    def add_names(self, names: list[str]) -> int:
        if names:
            self.set_items(self.items + names)
        return len(names)

    def remove_count(self, count: int) -> int:
        """Remove `count` random entries (all of them when count >= size)."""
        n = len(self.items)
        count = min(count, n)
        if count == 0:
            return 0
        drop = set(self.rng.sample(range(n), count))
        self.set_items([x for i, x in enumerate(self.items) if i not in drop])
        return count

    def remove_names(self, names: list[str]) -> int:
        """Remove every occurrence of the given names; unknown names are ignored."""
        wanted = set(names)
        kept = [x for x in self.items if not (isinstance(x, str) and x in wanted)]
        removed = len(self.items) - len(kept)
        if removed:
            self.set_items(kept)
        return removed

    # -- faults -------------------------------------------------------------

    def take_fault(self) -> Fault | None:
        """The fault for this request, consuming one use of a counted fault."""
        fault = self.fault
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.fault = None
        return fault

    def describe(self) -> dict[str, Any]:
        return {
            "count": len(self.items),
            "etag": self.etag,
            "last_modified": formatdate(self.last_modified, usegmt=True),
            "version": self.version,
            "fault": self.fault.describe() if self.fault else None,
        }


@dataclass
class InventoryState:
    """Everything the simulator knows; one instance per app, no module-level state."""

    main: Store  # GET /inventory
    churn: Churn
    stores: dict[str, Store] = field(default_factory=dict)  # GET /stores/<name>/inventory
    churn_changed: asyncio.Event = field(default_factory=asyncio.Event)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    requests: Counter = field(init=False)
    faults_served: Counter = field(init=False)
    sensors_gauge: Gauge = field(init=False)
    stores_gauge: Gauge = field(init=False)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "inventory_sim_http_requests",
            "HTTP requests answered by the inventory simulator, by route and status code.",
            ["path", "code"],
            registry=self.registry,
        )
        self.faults_served = Counter(
            "inventory_sim_faults_served",
            "Inventory requests answered with an injected fault, by mode.",
            ["mode"],
            registry=self.registry,
        )
        self.sensors_gauge = Gauge(
            "inventory_sim_sensors", "Entries currently in the simulated inventories (/inventory and every store).",
            registry=self.registry,
        )
        self.sensors_gauge.set_function(lambda: len(self.main.items) + sum(len(s.items) for s in self.stores.values()))
        self.stores_gauge = Gauge("inventory_sim_stores", "Stores served under /stores/<name>/inventory.",
                                  registry=self.registry)
        self.stores_gauge.set_function(lambda: len(self.stores))

    @property
    def stopping(self) -> asyncio.Event:
        """Set on shutdown (by the common routes) so `hang` handlers return and never hold the server open."""
        return self.main.stopping

    def new_store(self, name: str, items: list[Any]) -> Store:
        """A store sharing the app's randomness and shutdown flag; sensors named <name>_sensor_<n>."""
        return Store(name=name, items=items, rng=self.main.rng, stopping=self.main.stopping,
                     prefix=store_sensor_prefix(name))

    def churn_step(self) -> dict[str, int]:
        """Remove first, then add, so new sensors are never removed in the same step."""
        removed = self.main.remove_count(self.churn.remove)
        added = self.main.add_count(self.churn.add)
        return {"added": added, "removed": removed}

    def describe(self) -> dict[str, Any]:
        return {**self.main.describe(), "churn": self.churn.describe(), "stores": len(self.stores)}


def store_sensor_prefix(store: str) -> str:
    """Sensors of store `store7` are `store7_sensor_0`, `store7_sensor_1`, ... (unique across the chain)."""
    return f"{store}_sensor_"


def store_names(count: int) -> list[str]:
    """The stores `--stores N` serves: store0 .. store{N-1}."""
    return [f"store{i}" for i in range(count)]


def sources_doc(base_url: str, stores: Iterable[str], labels: Mapping[str, Mapping[str, str]] | None = None
                ) -> dict[str, Any]:
    """A SOURCES_FILE document: one source per store, each with its label `store=<name>` (plus `labels[name]`)."""
    labels = labels or {}
    return {"sources": [{"name": name, "url": f"{base_url}/stores/{name}/inventory",
                         "labels": {"store": name, **labels.get(name, {})}} for name in stores]}


def sources_env(base_url: str, stores: Iterable[str], path: Path) -> dict[str, str]:
    """The sensor-sd environment that polls these stores of a simulator at `base_url`: one source per store.

    Writes the sources file at `path` (JSON) and names it in `SOURCES_FILE`; the one place tests and
    benchmarks build their sources configuration.
    """
    path.write_bytes(orjson.dumps(sources_doc(base_url, stores), option=orjson.OPT_INDENT_2))
    return {"SOURCES_FILE": str(path), "INVENTORY_URL": ""}  # empty: gives way to the file over any default


STATE = web.AppKey("inventory_state", InventoryState)


# -- fault validation ------------------------------------------------------

def _no_params(body: dict[str, Any]) -> dict[str, Any]:
    return {}


def _status_params(body: dict[str, Any]) -> dict[str, Any]:
    return {"code": get_int(body, "code", 500, 400, 599)}


def _hang_params(body: dict[str, Any]) -> dict[str, Any]:
    # seconds=None: hang until the client gives up or the server stops.
    return {"seconds": get_number(body, "seconds", None, 0.0, 86400.0)}


def _slow_params(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "seconds": get_number(body, "seconds", 10.0, 0.0, 3600.0),
        "chunks": get_int(body, "chunks", 20, 1, 100_000),
    }


def _garbage_params(body: dict[str, Any]) -> dict[str, Any]:
    return {"bytes": get_int(body, "bytes", 1024, 1, 64 * 1024 * 1024)}


def _oversized_params(body: dict[str, Any]) -> dict[str, Any]:
    chunked = body.get("chunked", False)
    if not isinstance(chunked, bool):
        raise AdminError(f"'chunked' must be a boolean, got {type_name(chunked)}")
    return {"bytes": get_int(body, "bytes", DEFAULT_OVERSIZED_BYTES, 16, 1 << 40), "chunked": chunked}


_FAULT_PARAMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "status": _status_params,
    "hang": _hang_params,
    "slow": _slow_params,
    "truncated": _no_params,
    "garbage": _garbage_params,
    "html": _no_params,
    "object": _no_params,
    "nonutf8": _no_params,
    "oversized": _oversized_params,
    "empty": _no_params,
    "reset": _no_params,
    "redirect_loop": _no_params,
}
_FAULT_KEYS: dict[str, set[str]] = {
    "status": {"code"},
    "hang": {"seconds"},
    "slow": {"seconds", "chunks"},
    "garbage": {"bytes"},
    "oversized": {"bytes", "chunked"},
}
FAULT_MODES = tuple(_FAULT_PARAMS)


def parse_fault(body: Any) -> Fault:
    """Validate a PUT /admin/fault body strictly: unknown modes or keys are errors, not ignored."""
    body = require_object(body)
    mode = body.get("mode")
    if not isinstance(mode, str) or mode not in _FAULT_PARAMS:
        hint = " ('refuse' cannot be simulated by a listening server: stop it instead)" if mode == "refuse" else ""
        raise AdminError(f"'mode' must be one of {', '.join(FAULT_MODES)}; got {mode!r}{hint}")
    allowed = {"mode", "count"} | _FAULT_KEYS.get(mode, set())
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise AdminError(f"unknown parameter(s) for mode {mode!r}: {', '.join(unknown)}; allowed: {sorted(allowed)}")
    count = get_int(body, "count", None, 1, MAX_COUNT)
    return Fault(mode=mode, params=_FAULT_PARAMS[mode](body), remaining=count)


# -- /inventory ------------------------------------------------------------

def _not_modified(request: web.Request, state: Store) -> bool:
    """RFC 9110 evaluation: If-None-Match wins; If-Modified-Since only when it is absent."""
    if "If-None-Match" in request.headers:  # aiohttp's parser; weak comparison
        return any(t.value == ETAG_ANY or f'"{t.value}"' == state.etag for t in request.if_none_match or ())
    ims = request.if_modified_since
    return ims is not None and ims.timestamp() >= state.last_modified


def _validators(state: Store) -> dict[str, str]:
    return {
        "ETag": state.etag,
        "Last-Modified": formatdate(state.last_modified, usegmt=True),
        "Cache-Control": "no-cache",
    }


async def _stream(request: web.Request, chunks: Iterator[bytes], length: int | None, **kw: Any) -> web.StreamResponse:
    resp = web.StreamResponse(**kw)
    resp.content_type = "application/json"
    if length is not None:
        resp.content_length = length
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def _oversized_chunks(total: int) -> Iterator[bytes]:
    """Exactly `total` bytes of a well-formed JSON array, built from one reused block (O(1) memory)."""
    entries = []
    size = 0
    i = 0
    while size < _OVERSIZED_BLOCK_BYTES:
        entry = f'"sensor_{i}",'.encode()
        entries.append(entry)
        size += len(entry)
        i += 1
    block = b"".join(entries)
    yield b"["
    remaining = total - 1
    while remaining - len(block) >= 3:
        yield block
        remaining -= len(block)
    # Last element absorbs the remainder: '"xxx"]' is at least 3 bytes.
    yield b'"' + b"x" * (remaining - 3) + b'"]'


async def _fault_status(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    return web.Response(status=p["code"], text=f"simulated inventory failure: HTTP {p['code']}\n")


async def _stopped_within(state: Store, seconds: float | None) -> bool:
    """Wait up to `seconds` (None = forever); True if the server began shutting down meanwhile."""
    try:
        await asyncio.wait_for(state.stopping.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def _fault_hang(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    # The connection is accepted and the request read, but no byte is ever answered.
    await _stopped_within(state, p["seconds"])
    abort_with_rst(request)
    return web.Response(status=503)  # never reaches the client: the socket is gone, counted as "aborted"


async def _fault_slow(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    body = state.body
    n = p["chunks"]
    step = max(1, -(-len(body) // n))
    delay = p["seconds"] / n

    resp = web.StreamResponse(headers=_validators(state))
    resp.content_type = "application/json"
    resp.content_length = len(body)
    await resp.prepare(request)
    for off in range(0, len(body), step):
        if await _stopped_within(state, delay):  # the drip is the fault itself; shutdown cuts it
            abort_with_rst(request)
            return resp
        await resp.write(body[off : off + step])
    await resp.write_eof()
    return resp


async def _fault_truncated(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    # A complete HTTP response whose JSON stops halfway (the closing ']' is always missing).
    body = state.body[: max(1, len(state.body) // 2)]
    return web.Response(body=body, content_type="application/json")


async def _fault_garbage(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    # 0xff can never start JSON (nor UTF-8), so the body is guaranteed unparsable.
    body = b"\xff" + state.rng.randbytes(p["bytes"] - 1)
    return web.Response(body=body, content_type="application/json")


async def _fault_html(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    html = (
        "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
        "<body><h1>Service Unavailable</h1><p>The inventory backend is under maintenance.</p></body></html>\n"
    )
    return web.Response(text=html, content_type="text/html")


async def _fault_object(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    return json_response({"sensors": state.items, "count": len(state.items)})


async def _fault_nonutf8(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    # Valid JSON structure, but one string holds bytes that are not UTF-8 (lone 0xc3, 0xff).
    bad = b'"sensor_\xc3\x28\xff"'
    body = state.body
    body = body[:-1] + b"," + bad + b"]" if len(body) > 2 else b"[" + bad + b"]"
    return web.Response(body=body, content_type="application/json")


async def _fault_oversized(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    total = p["bytes"]
    return await _stream(request, _oversized_chunks(total), None if p["chunked"] else total)


async def _fault_empty(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    return web.Response(body=b"[]", content_type="application/json")


async def _fault_reset(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    # Promise the whole body, send half, then RST: the client sees a connection error mid-body.
    body = state.body
    resp = web.StreamResponse()
    resp.content_type = "application/json"
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: max(1, len(body) // 2)])
    abort_with_rst(request)
    return resp


async def _fault_redirect_loop(request: web.Request, state: Store, p: dict[str, Any]) -> web.StreamResponse:
    raise web.HTTPFound(location=request.path_qs)


_FAULT_HANDLERS: dict[str, Callable[[web.Request, Store, dict[str, Any]], Awaitable[web.StreamResponse]]] = {
    "status": _fault_status,
    "hang": _fault_hang,
    "slow": _fault_slow,
    "truncated": _fault_truncated,
    "garbage": _fault_garbage,
    "html": _fault_html,
    "object": _fault_object,
    "nonutf8": _fault_nonutf8,
    "oversized": _fault_oversized,
    "empty": _fault_empty,
    "reset": _fault_reset,
    "redirect_loop": _fault_redirect_loop,
}


def _store(request: web.Request) -> Store:
    """The store a request is for: `/stores/<name>/...` or the single `/inventory` (404 for an unknown store)."""
    state = request.app[STATE]
    name = request.match_info.get("store")
    if name is None:
        return state.main
    store = state.stores.get(name)
    if store is None:
        raise web.HTTPNotFound(text=orjson.dumps({"error": f"no store {name!r}"}).decode(), content_type="application/json")
    return store


def _describe(request: web.Request, store: Store) -> dict[str, Any]:
    state = request.app[STATE]
    return state.describe() if store is state.main else {"store": store.name, **store.describe()}


async def handle_inventory(request: web.Request) -> web.StreamResponse:
    """The endpoint sensor-sd polls. Faults bypass validators: they always answer fresh."""
    state = _store(request)
    fault = state.take_fault()
    if fault is not None:
        request.app[STATE].faults_served.labels(fault.mode).inc()
        return await _FAULT_HANDLERS[fault.mode](request, state, fault.params)
    headers = _validators(state)
    if _not_modified(request, state):
        return web.Response(status=304, headers=headers)
    return web.Response(body=state.body, content_type="application/json", headers=headers)


async def list_stores(request: web.Request) -> web.Response:
    """The store names, in the order they were created (a sources list is built from them)."""
    return json_response(list(request.app[STATE].stores))


# -- admin -----------------------------------------------------------------

async def admin_state(request: web.Request) -> web.Response:
    return json_response(_describe(request, _store(request)))


async def admin_put_sensors(request: web.Request) -> web.Response:
    """Set the list exactly as given: hostile entries (numbers, null, objects) are the point."""
    body = await read_json(request)
    if not isinstance(body, list):
        raise AdminError(f"request body must be a JSON array, got {type_name(body)}")
    state = _store(request)
    state.set_items(body)
    return json_response(_describe(request, state))


def _count_or_names(body: Any, count_key: str = "count") -> tuple[int | None, list[str] | None]:
    body = require_object(body)
    unknown = sorted(set(body) - {count_key, "names"})
    if unknown:
        raise AdminError(f"unknown key(s): {', '.join(unknown)}; expected {count_key!r} or 'names'")
    count = get_int(body, count_key, None, 0, MAX_COUNT)
    names = get_str_list(body, "names")
    if (count is None) == (names is None):
        raise AdminError(f"give exactly one of {count_key!r} (integer) or 'names' (array of strings)")
    return count, names


async def admin_add(request: web.Request) -> web.Response:
    count, names = _count_or_names(await read_json(request))
    state = _store(request)
    added = state.add_count(count) if count is not None else state.add_names(names or [])
    return json_response({"added": added, **_describe(request, state)})


async def admin_remove(request: web.Request) -> web.Response:
    count, names = _count_or_names(await read_json(request))
    state = _store(request)
    removed = state.remove_count(count) if count is not None else state.remove_names(names or [])
    return json_response({"removed": removed, **_describe(request, state)})


async def admin_put_fault(request: web.Request) -> web.Response:
    state = _store(request)
    state.fault = parse_fault(await read_json(request))
    return json_response(_describe(request, state))


async def admin_delete_fault(request: web.Request) -> web.Response:
    state = _store(request)
    state.fault = None
    return json_response(_describe(request, state))


async def admin_stores(request: web.Request) -> web.Response:
    return json_response({name: store.describe() for name, store in request.app[STATE].stores.items()})


async def admin_put_store(request: web.Request) -> web.Response:
    """Create or replace a store: `{"sensors": k}` (<name>_sensor_0..k-1) or `{"names": [...]}`."""
    name = request.match_info["store"]
    if not _STORE_NAME.fullmatch(name):
        raise AdminError(f"store name {name!r} must be 1-63 letters, digits, _ . - (not starting with . or -)")
    count, names = _count_or_names(await read_json(request), "sensors")
    state = request.app[STATE]
    prefix = store_sensor_prefix(name)
    items: list[Any] = list(names) if names is not None else [f"{prefix}{i}" for i in range(count or 0)]
    state.stores[name] = state.new_store(name, items)
    return json_response(_describe(request, state.stores[name]))


async def admin_delete_store(request: web.Request) -> web.Response:
    store = _store(request)
    del request.app[STATE].stores[store.name]
    return json_response({"deleted": store.name, "stores": len(request.app[STATE].stores)})


async def admin_put_churn(request: web.Request) -> web.Response:
    body = require_object(await read_json(request))
    unknown = sorted(set(body) - {"add", "remove", "every"})
    if unknown:
        raise AdminError(f"unknown key(s): {', '.join(unknown)}; expected add, remove, every")
    state = request.app[STATE]
    churn = Churn(
        add=get_int(body, "add", state.churn.add, 0, MAX_COUNT) or 0,
        remove=get_int(body, "remove", state.churn.remove, 0, MAX_COUNT) or 0,
        every=get_number(body, "every", state.churn.every, 0.0, 86400.0) or 0.0,
    )
    if 0 < churn.every < 0.01:
        raise AdminError("'every' must be 0 (off) or at least 0.01 seconds")
    state.churn = churn
    state.churn_changed.set()
    return json_response(state.describe())


async def admin_delete_churn(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.churn = Churn()
    state.churn_changed.set()
    return json_response(state.describe())


async def admin_churn_step(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({**state.churn_step(), **state.describe()})


# -- app -------------------------------------------------------------------

@web.middleware
async def _count_requests(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Requests by route and code; the route template (not the raw path) keeps label cardinality bounded."""
    route = request.match_info.route.resource
    path = route.canonical if route is not None else "other"
    counter = request.app[STATE].requests
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        counter.labels(path, str(exc.status)).inc()
        raise
    code = "aborted" if request.transport is None or request.transport.is_closing() else str(resp.status)
    counter.labels(path, code).inc()
    return resp


async def _churn_loop(app: web.Application) -> AsyncIterator[None]:
    """Background churn; reconfiguring via the admin API wakes it so a new period applies at once."""
    state = app[STATE]

    async def loop() -> None:
        while True:
            state.churn_changed.clear()
            timeout = state.churn.every if state.churn.active else None
            try:
                await asyncio.wait_for(state.churn_changed.wait(), timeout=timeout)
                continue  # reconfigured: restart the period
            except TimeoutError:
                state.churn_step()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def make_app(
    sensors: int = 100,
    *,
    names: list[Any] | None = None,
    seed: int | None = None,
    churn_add: int = 0,
    churn_remove: int = 0,
    churn_every: float = 0.0,
    stores: int = 0,
    sensors_per_store: int = 100,
) -> web.Application:
    """Build the simulator; `names` overrides `sensors` (sensor_0..sensor_{N-1}). State is at app[STATE].

    `stores` > 0 also serves store0..store{stores-1}, each with `sensors_per_store`
    sensors named <store>_sensor_<n>, at /stores/<store>/inventory.
    """
    if sensors < 0 or stores < 0 or sensors_per_store < 0:
        raise ValueError("sensors, stores and sensors_per_store must be >= 0")
    items: list[Any] = list(names) if names is not None else [f"sensor_{i}" for i in range(sensors)]
    main = Store(name="", items=items, rng=random.Random(seed), stopping=asyncio.Event(),
                 next_number=sensors if names is None else 0)
    state = InventoryState(main=main, churn=Churn(add=churn_add, remove=churn_remove, every=churn_every))
    for name in store_names(stores):
        prefix = store_sensor_prefix(name)
        state.stores[name] = state.new_store(name, [f"{prefix}{i}" for i in range(sensors_per_store)])
    app = web.Application(middlewares=[_count_requests, admin_errors], client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = state
    r = app.router
    r.add_get("/inventory", handle_inventory)
    r.add_get("/stores", list_stores)
    r.add_get("/stores/{store}/inventory", handle_inventory)
    r.add_get("/admin/state", admin_state)
    r.add_put("/admin/sensors", admin_put_sensors)
    r.add_post("/admin/sensors/add", admin_add)
    r.add_post("/admin/sensors/remove", admin_remove)
    r.add_put("/admin/fault", admin_put_fault)
    r.add_delete("/admin/fault", admin_delete_fault)
    r.add_put("/admin/churn", admin_put_churn)
    r.add_delete("/admin/churn", admin_delete_churn)
    r.add_post("/admin/churn/step", admin_churn_step)
    r.add_get("/admin/stores", admin_stores)
    r.add_put("/admin/stores/{store}", admin_put_store)
    r.add_delete("/admin/stores/{store}", admin_delete_store)
    r.add_get("/admin/stores/{store}/state", admin_state)
    r.add_put("/admin/stores/{store}/sensors", admin_put_sensors)
    r.add_post("/admin/stores/{store}/sensors/add", admin_add)
    r.add_post("/admin/stores/{store}/sensors/remove", admin_remove)
    r.add_put("/admin/stores/{store}/fault", admin_put_fault)
    r.add_delete("/admin/stores/{store}/fault", admin_delete_fault)
    app.cleanup_ctx.append(_churn_loop)
    add_common_routes(app, STATE)
    return app


# -- CLI -------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `sensor-sd inventory-server`."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=port_arg, default=1337, help="listen port, 0 = ephemeral (default 1337)")
    parser.add_argument("--sensors", type=count_arg, default=100, help="serve sensor_0..sensor_{N-1} (default 100)")
    parser.add_argument("--churn-add", type=count_arg, default=0, help="sensors added per churn step")
    parser.add_argument("--churn-remove", type=count_arg, default=0, help="random sensors removed per churn step")
    parser.add_argument("--churn-every", type=seconds_arg(allow_zero=True), default=0.0, help="seconds between churn steps (0 = off)")
    parser.add_argument("--seed", type=int, default=None, help="seed for churn/removal randomness (reproducible runs)")
    parser.add_argument("--stores", type=count_arg, default=0,
                        help="also serve store0..store{N-1} at /stores/<name>/inventory (default 0)")
    parser.add_argument("--sensors-per-store", type=count_arg, default=100,
                        help="sensors of each store, <store>_sensor_0.. (default 100)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 (1 if the port cannot be bound)."""
    app = make_app(
        args.sensors,
        seed=args.seed,
        churn_add=args.churn_add,
        churn_remove=args.churn_remove,
        churn_every=args.churn_every,
        stores=args.stores,
        sensors_per_store=args.sensors_per_store,
    )
    stores = f" and {args.stores} stores x {args.sensors_per_store} at /stores/<name>/inventory" if args.stores else ""
    return serve_forever(
        app,
        args.host,
        args.port,
        lambda port: f"inventory-server listening on http://{url_host(args.host, port)}/inventory ({args.sensors} sensors){stores}",
    )


def main(argv: list[str] | None = None) -> int:
    return module_main("sensor-sd inventory-server", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
