"""Fuzz the whole poll path: inventory body over real HTTP -> poll -> snapshot -> file -> /targets.

For any body (arbitrary bytes, JSON lists of mixed entries, nesting up to
and past the parser's depth limit, huge and non-finite numbers, text of
every Unicode category, duplicate keys; sent plain, gzip-encoded, or with a
gzip label that lies), properties:

* no exception escapes a poll, and none is caught by the poll's fence either
  (a result with reason "internal" is a bug of ours, so it fails the test);
* a body that parses to a JSON list publishes exactly the targets the
  independent oracle (tests/fuzz/test_fuzz_parser.py) accepts, in canonical
  form; any other body fails the poll as a decode error and the previous
  targets stay;
* the file on disk, the snapshot and `GET /targets` are the same bytes.

The drop guard is off (`MAX_DROP_RATIO=1`) so every good body is published.
`make test` runs the default profile (200 examples, a few seconds);
`make fuzz` the `long` one (10,000).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sensor_sd import config, server
from sensor_sd.inventory import Client
from sensor_sd.metrics import Metrics
from sensor_sd.sim._common import start_app
from localstack.net import free_port
from sensor_sd.scheduler import Discoverer
from tests.conftest import LoopThread
from tests.fuzz.test_fuzz_parser import bodies, entries, oracle

# --- bodies --------------------------------------------------------------------


@st.composite
def nested(draw: Callable[..., Any]) -> bytes:
    """A list nested `depth` levels around an innermost value; past ~1,024 levels the parser refuses it."""
    depth = draw(st.one_of(st.integers(1, 1_100), st.integers(1_000, 1_100)))  # often near the parser's limit
    inner = draw(st.sampled_from([b"", b'"sensor_1"', b"1e400", b'{"a":1,"a":2}', b"[]"]))
    return b"[" * depth + inner + b"]" * depth


numbers = st.sampled_from([b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"-0", b"1e-400", b"0.1e999999999",
                           b"123456789012345678901234567890", b"18446744073709551616", b"-9223372036854775809",
                           b"1" * 5_000])
duplicate_keys = st.sampled_from([b'{"a":1,"a":2}', b'{"targets":["x"],"targets":"y"}', b'{"":null,"":[]}'])
# Every Unicode category (surrogates too: json.dumps escapes them, the parser must refuse lone ones whole).
any_text = st.text(st.characters(codec=None), max_size=20).map(lambda t: json.dumps(t).encode())
element = st.one_of(entries().map(orjson.dumps), nested(), numbers, duplicate_keys, any_text)


@st.composite
def inventory_bodies(draw: Callable[..., Any]) -> bytes:
    if draw(st.booleans()):
        return draw(bodies())  # the parser fuzz's bodies: lists of entries, other JSON, byte-level damage
    elements = draw(st.lists(element, max_size=25))
    return b"[" + b",".join(elements) + b"]"


@dataclass(frozen=True)
class Sent:
    """One answer of the inventory: the bytes on the wire and the Content-Encoding label."""

    wire: bytes
    encoding: str | None  # None: no header
    decoded: bytes | None  # what the label promises the body decodes to; None when the label lies


@st.composite
def answers(draw: Callable[..., Any]) -> Sent:
    body = draw(inventory_bodies())
    how = draw(st.sampled_from(["plain", "plain", "gzip", "lying-gzip"]))
    if how == "gzip":
        return Sent(gzip.compress(body, mtime=0), "gzip", body)
    if how == "lying-gzip":
        return Sent(body, "gzip", None)
    return Sent(body, None, body)


def expected_targets(sent: Sent) -> list[str] | None:
    """The published targets the contract demands for this answer; None when the poll must fail."""
    if sent.decoded is None:
        return None
    try:
        data = orjson.loads(sent.decoded)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, list):
        return None
    return sorted({t for t in map(oracle, data) if t is not None})


# --- the path under test ---------------------------------------------------------


@dataclass
class PollPath:
    """The running path; `answer[-1]` is what the inventory serves next."""

    lt: LoopThread = field(repr=False)
    discoverer: Discoverer = field(repr=False)
    file: Path
    targets_url: str
    answer: list[Sent] = field(default_factory=list, repr=False)
    http: aiohttp.ClientSession | None = field(default=None, repr=False)


@pytest.fixture
def poll_path(loop_thread: LoopThread, tmp_path: Path) -> Iterator[PollPath]:
    """A raw inventory, a Discoverer writing a real file, and sensor-sd's server, all on 127.0.0.1."""
    answer: list[Sent] = [Sent(b'["seed"]', None, b'["seed"]')]

    async def inventory(request: web.Request) -> web.Response:
        sent = answer[-1]
        headers = {"Content-Type": "application/json"}
        if sent.encoding is not None:
            headers["Content-Encoding"] = sent.encoding
        return web.Response(body=sent.wire, headers=headers)

    async def setup() -> PollPath:
        app = web.Application()
        app.router.add_get("/inventory", inventory)
        runner, port = await start_app(app, "127.0.0.1", 0)
        loop_thread.defer(runner.cleanup)
        s = config.load({}, {"INVENTORY_URL": f"inv=http://127.0.0.1:{port}/inventory",
                             "TARGETS_FILE": str(tmp_path / "targets.json"), "MAX_DROP_RATIO": "1",
                             "LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", "LOG_LEVEL": "error"})
        client = Client(s)
        await client.__aenter__()
        loop_thread.defer(lambda: client.__aexit__(None, None, None))
        metrics = Metrics(CollectorRegistry())
        logger = logging.getLogger("sensor_sd.test.fuzz")
        logger.setLevel(logging.CRITICAL)  # thousands of invalid-entry lines are not what this test reads
        d = Discoverer(s, client, metrics, logger)
        [first] = await d.poll_all()
        assert first.result == "success"
        sd = await server.start(server.make_app(d.store, s, d, metrics), s)
        loop_thread.defer(sd.cleanup)
        http = aiohttp.ClientSession(auto_decompress=False)
        loop_thread.defer(http.close)
        return PollPath(loop_thread, d, tmp_path / "targets.json",
                     f"http://127.0.0.1:{s.listen_address.port}/targets", answer, http)

    yield loop_thread.run(setup())


def depth(body: bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped (no parser: the body may be invalid)."""
    deepest = level = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif byte in b"]}":
            level -= 1
    return deepest


def _published(body: bytes) -> list[str]:
    return [t for g in orjson.loads(body) for t in g["targets"]]


def prop_poll_path(p: PollPath, sent: Sent) -> None:
    levels = depth(sent.decoded or sent.wire)
    event(f"nesting depth {'>= 1,000' if levels >= 1000 else '100-999' if levels >= 100 else '< 100'}")

    async def one() -> None:
        d = p.discoverer
        before = d.snapshot
        assert before is not None
        p.answer.append(sent)
        del p.answer[:-1]
        results = await d.poll_all()  # raises only if a bug escapes the fence itself
        [r] = results
        assert r.reason != "internal", r.error  # the fence caught a bug of ours
        want = expected_targets(sent)
        snapshot = d.snapshot
        assert snapshot is not None
        if want is None:
            assert (r.result, r.reason) == ("error", "decode"), (r, sent.wire[:200])
            assert snapshot is before  # the last known good stays
        else:
            assert r.result in ("success", "unchanged"), r
            assert _published(snapshot.body) == want
        published = _published(snapshot.body)
        assert all(oracle(t) == t for t in published)  # valid, and already in canonical form
        assert p.http is not None
        async with p.http.get(p.targets_url) as resp:
            assert resp.status == 200
            served = await resp.read()
        assert served == snapshot.body == p.file.read_bytes()

    p.lt.run(one())


_answers = given(answers())
_quiet = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])
_NESTED = b'["sensor_1", ' + b"[" * 1000 + b"]" * 1000 + b"]"


@_quiet
@_answers
@example(Sent(_NESTED, None, _NESTED))
@example(Sent(b"[" * 1100 + b"]" * 1100, None, b"[" * 1100 + b"]" * 1100))
@example(Sent(b'["Sensor_1", "sensor_1.", "[2001:DB8::A]", "[fe80::1%eth0]"]', "gzip", None))
@example(Sent(gzip.compress(b'["a", 1e400]', mtime=0), "gzip", b'["a", 1e400]'))
def test_poll_path_never_raises_and_publishes_only_valid_canonical_targets(poll_path: PollPath, sent: Sent) -> None:
    prop_poll_path(poll_path, sent)


@pytest.mark.slow
@_quiet
@_answers
def test_poll_path_long(poll_path: PollPath, sent: Sent) -> None:
    prop_poll_path(poll_path, sent)
