"""The discoverer against the inventory simulator over real loopback HTTP.

Each test runs one event loop with the simulator (aiohttp TestServer on
127.0.0.1) and a Discoverer writing a real file.
"""

from __future__ import annotations

import asyncio
import os
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from sensor_sd import config
from sensor_sd.inventory import Client, OneShotClient
from sensor_sd.metrics import Metrics
from sensor_sd.sim.inventory import make_app
from sensor_sd.scheduler import Discoverer
from tests.conftest import Records

LOG = logging.getLogger("sensor_sd.test")


class Env:
    """One simulator, one admin session, and a way to build discoverers against it."""

    def __init__(self, server: TestServer, admin: aiohttp.ClientSession, tmp: Path) -> None:
        self.server, self.admin, self.tmp = server, admin, tmp
        self.url = str(server.make_url("/inventory"))

    async def put(self, path: str, body: Any) -> None:
        async with self.admin.put(self.server.make_url(path), data=orjson.dumps(body)) as r:
            assert r.status == 200, await r.text()

    async def fault(self, mode: str, **params: Any) -> None:
        await self.put("/admin/fault", {"mode": mode, **params})

    async def clear(self) -> None:
        async with self.admin.delete(self.server.make_url("/admin/fault")) as r:
            assert r.status == 200

    def settings(self, **env: str) -> config.Settings:
        base = {"INVENTORY_URL": f"inv={self.url}", "TARGETS_FILE": str(self.tmp / "targets.json"),
                "UPDATE_INTERVAL": "0.05", "REQUEST_TIMEOUT": "1", "LOG_FORMAT": "text"}
        return config.load({}, {**base, **env})

    def file_targets(self) -> list[str]:
        return [t for g in orjson.loads((self.tmp / "targets.json").read_bytes()) for t in g["targets"]]


def run(test: Callable[[Env], Awaitable[None]], tmp_path: Path, **app_kwargs: Any) -> None:
    async def main() -> None:
        server = TestServer(make_app(**app_kwargs), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as admin:
                await test(Env(server, admin, tmp_path))
        finally:
            await server.close()

    asyncio.run(main())


async def sync_once(env: Env, metrics: Metrics | None = None, client_class: type[Client] = Client,
                    **settings: str) -> tuple[Discoverer, list[Any]]:
    s = env.settings(**settings)
    async with client_class(s) as client:
        d = Discoverer(s, client, metrics or Metrics(CollectorRegistry()), LOG)
        d.load_file()
        results = await d.poll_all()
    return d, results


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_first_poll_publishes_sorted_targets(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        d, [r] = await sync_once(env)
        assert r.result == "success" and r.targets == 100
        targets = env.file_targets()
        assert targets == sorted(f"sensor_{i}:9100" for i in range(100))
        assert d.snapshot is not None and d.snapshot.body == (env.tmp / "targets.json").read_bytes()

    run(t, tmp_path)


@pytest.mark.parametrize(
    ("mode", "params", "reason"),
    [
        ("status", {"code": 500}, "http_status"), ("status", {"code": 404}, "http_status"),
        ("hang", {}, "timeout"), ("truncated", {}, "decode"), ("garbage", {}, "decode"), ("html", {}, "decode"),
        ("object", {}, "decode"), ("nonutf8", {}, "decode"), ("reset", {}, "unreachable"),
        ("redirect_loop", {}, "unreachable"), ("oversized", {"bytes": 5_000_000}, "too_large"),
    ],
)
@pytest.mark.parametrize("client_class", [Client, OneShotClient], ids=["aiohttp", "one-shot"])
def test_faults_keep_last_known_good(tmp_path: Path, mode: str, params: dict[str, Any], reason: str,
                                     client_class: type[Client]) -> None:
    """Both clients: the daemon's and that of `once`/`check`."""

    async def t(env: Env) -> None:
        await sync_once(env)
        before = (env.tmp / "targets.json").read_bytes()
        await env.fault(mode, **params)
        metrics = Metrics(CollectorRegistry())
        d, [r] = await sync_once(env, metrics, client_class, MAX_RESPONSE_BYTES="1000000")
        assert (r.result, r.reason) == ("error", reason)
        assert (env.tmp / "targets.json").read_bytes() == before
        assert d.snapshot is not None and d.snapshot.count == 100  # still ready, from the file
        assert sample(metrics, "sensor_sd_inventory_errors_total", source="inv", reason=reason) == 1
        assert sample(metrics, "sensor_sd_inventory_up", source="inv") == 0
        await env.clear()
        _, [r] = await sync_once(env)
        assert r.result in ("success", "unchanged")

    run(t, tmp_path)


def test_refused_keeps_file(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        await sync_once(env)
        before = (env.tmp / "targets.json").read_bytes()
        _, [r] = await sync_once(env, INVENTORY_URL="inv=http://127.0.0.1:1/inventory")
        assert r.reason == "unreachable"
        assert (env.tmp / "targets.json").read_bytes() == before

    run(t, tmp_path)


def test_invalid_entries_dropped_and_counted(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        await env.put("/admin/sensors", ["sensor_1", "bad host", 7, "http://x", "sensor_2:9200", "sensor_1"])
        metrics = Metrics(CollectorRegistry())
        _, [r] = await sync_once(env, metrics)
        assert env.file_targets() == ["sensor_1:9100", "sensor_2:9200"]
        for reason in ("whitespace", "not_string", "scheme"):
            assert sample(metrics, "sensor_sd_invalid_entries_total", source="inv", reason=reason) == 1

    run(t, tmp_path)


def test_empty_list_is_held_then_applied_after_confirmations(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        s = env.settings(DROP_CONFIRMATIONS="3", DROP_HOLD="0")
        metrics = Metrics(CollectorRegistry())
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, LOG)
            await d.poll_all()
            await env.put("/admin/sensors", [])
            results = [(await d.poll_all())[0].result for _ in range(3)]
            assert results[:2] == ["held", "held"]
            assert sample(metrics, "sensor_sd_drop_guard_active", source="inv") == 0
            assert results[2] == "success"
        assert env.file_targets() == []

    run(t, tmp_path)


def test_held_drop_counts_not_modified_as_a_sighting(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        s = env.settings(DROP_CONFIRMATIONS="2", DROP_HOLD="0")
        metrics = Metrics(CollectorRegistry())
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, LOG)
            await d.poll_all()
            await env.put("/admin/sensors", ["sensor_1"])
            assert (await d.poll_all())[0].result == "held"
            assert sample(metrics, "sensor_sd_drop_guard_active", source="inv") == 1
            assert len(env.file_targets()) == 100
            # Same ETag now: the simulator answers 304, which confirms the held list.
            assert (await d.poll_all())[0].result == "success"
        assert env.file_targets() == ["sensor_1:9100"]

    run(t, tmp_path)


def test_slow_shrink_is_held_against_the_largest_list_in_the_window(tmp_path: Path) -> None:
    """100 -> 60 -> 36 -> 22 -> 13: each step removes < MAX_DROP_RATIO of the list before it (issue 10 #11)."""
    async def t(env: Env) -> None:
        s = env.settings(DROP_HOLD="0")  # DROP_WINDOW and MAX_DROP_RATIO at their defaults (1 h, 0.5)
        metrics = Metrics(CollectorRegistry())
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, LOG)
            await d.poll_all()
            results = []
            for n in (60, 36, 22, 13):
                await env.put("/admin/sensors", [f"sensor_{i}" for i in range(n)])
                results.append((await d.poll_all())[0].result)
            assert results == ["success", "held", "held", "held"]
            assert sample(metrics, "sensor_sd_drop_guard_active", source="inv") == 1
        assert len(env.file_targets()) == 60

    run(t, tmp_path)


def test_a_held_drop_waits_for_drop_hold_as_well_as_the_polls(tmp_path: Path) -> None:
    """Polls every second would confirm in 2 s; DROP_HOLD keeps the list for 300 s of the Discoverer's clock."""
    async def t(env: Env) -> None:
        now = [1000.0]
        s = env.settings(DROP_CONFIRMATIONS="2", DROP_HOLD="300")
        async with Client(s) as client:
            d = Discoverer(s, client, Metrics(CollectorRegistry()), LOG, clock=lambda: now[0])
            await d.poll_all()
            await env.put("/admin/sensors", [])
            results = []
            for at in (1000.0, 1001.0, 1299.0):
                now[0] = at
                results.append((await d.poll_all())[0].result)
            assert results == ["held", "held", "held"]
            [st] = d.status()
            assert (st.guard_held, st.guard_seen, st.guard_since, st.guard_release) == (0, 3, 1000.0, 1300.0)
            assert len(env.file_targets()) == 100
            now[0] = 1300.0
            assert (await d.poll_all())[0].result == "success"
        assert env.file_targets() == []

    run(t, tmp_path)


def test_restart_while_inventory_down_keeps_targets(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        await sync_once(env)
        d, [r] = await sync_once(env, INVENTORY_URL="inv=http://127.0.0.1:1/inventory")
        assert r.result == "error"
        assert d.snapshot is not None and d.snapshot.count == 100

    run(t, tmp_path)


def test_a_loaded_file_unlike_its_snapshot_is_rewritten_at_the_first_good_poll(tmp_path: Path) -> None:
    """The file read at start may hold what is no longer served: an entry today's rules drop, labels changed
    since (TARGET_LABELS), a source no longer configured. The snapshot was right at once, but with the inventory
    unchanged nothing was published: file_sd kept the old file while http_sd served the new snapshot."""
    async def t(env: Env) -> None:
        await sync_once(env)  # the file: the inventory's 100 targets
        path = env.tmp / "targets.json"
        groups = orjson.loads(path.read_bytes())
        groups[0]["targets"].append("bad host:9100")
        groups.append({"targets": ["elsewhere:9100"], "labels": {"source": "gone"}})
        path.write_bytes(orjson.dumps(groups))
        s = env.settings(TARGET_LABELS="team=ops", UPDATE_INTERVAL="0.05")
        metrics = Metrics(CollectorRegistry())
        stop = asyncio.Event()
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, LOG)
            assert d.load_file()
            task = asyncio.create_task(d.run(stop))
            deadline = asyncio.get_running_loop().time() + 10
            await while_running(task, deadline, "a poll", lambda: sample(
                metrics, "sensor_sd_syncs_total", source="inv", result="unchanged") >= 1)
            await while_running(task, deadline, "the file rewritten from the snapshot",
                                lambda: path.read_bytes() == d.snapshot.body)
            stop.set()
            await asyncio.wait_for(task, 5)
        assert sample(metrics, "sensor_sd_syncs_total", source="inv", result="success") == 0  # nothing new came
        [group] = orjson.loads(path.read_bytes())
        assert group["labels"] == {"__metrics_path__": "/metrics", "source": "inv", "team": "ops"}
        assert len(group["targets"]) == 100 and "bad host:9100" not in group["targets"]

    run(t, tmp_path)


def test_a_loaded_file_like_its_snapshot_is_not_rewritten(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        await sync_once(env)
        path = env.tmp / "targets.json"
        before = os.stat(path)
        d, [r] = await sync_once(env)
        assert r.result == "unchanged"
        after = os.stat(path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    run(t, tmp_path)


def test_corrupt_file_is_left_in_place_and_not_ready(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        (env.tmp / "targets.json").write_bytes(b'[{"targets": ["half')
        s = env.settings(INVENTORY_URL="inv=http://127.0.0.1:1/inventory")
        async with Client(s) as client:
            d = Discoverer(s, client, Metrics(CollectorRegistry()), LOG)
            assert not d.load_file()
            await d.poll_all()
        assert d.snapshot is None
        assert (env.tmp / "targets.json").read_bytes() == b'[{"targets": ["half'

    run(t, tmp_path)


def test_sources_fail_independently(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        dead = "http://127.0.0.1:1/inventory"
        _, results = await sync_once(env, INVENTORY_URL=f"a={env.url},b={env.url}")
        assert [r.result for r in results] == ["success", "success"]
        _, results = await sync_once(env, INVENTORY_URL=f"a={env.url},b={dead}")
        assert [r.result for r in results] == ["unchanged", "error"]
        groups = orjson.loads((env.tmp / "targets.json").read_bytes())
        assert [(g["labels"]["source"], len(g["targets"])) for g in groups] == [("a", 100), ("b", 100)]

    run(t, tmp_path)


def test_conditional_get_sends_validators(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        s = env.settings()
        async with Client(s) as client:
            d = Discoverer(s, client, Metrics(CollectorRegistry()), LOG)
            assert [r.result for r in await d.poll_all()] == ["success"]
            assert [r.result for r in await d.poll_all()] == ["unchanged"]
        async with env.admin.get(env.server.make_url("/metrics")) as r:
            text = await r.text()
        assert 'code="304"' in text

    run(t, tmp_path)


def test_refresh_shares_one_poll(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        s = env.settings()
        async with Client(s) as client:
            metrics = Metrics(CollectorRegistry())
            d = Discoverer(s, client, metrics, LOG)
            a, b = await asyncio.gather(d.refresh(), d.refresh())
            assert a is b  # the very same poll's result, not an equal one from a second poll
            assert sample(metrics, "sensor_sd_syncs_total", source="inv", result="success") == 1

    run(t, tmp_path)


def test_run_loop_polls_and_stops(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        s = env.settings(UPDATE_INTERVAL="0.05")
        stop = asyncio.Event()
        async with Client(s) as client:
            d = Discoverer(s, client, Metrics(CollectorRegistry()), LOG)
            task = asyncio.create_task(d.run(stop))
            await env.put("/admin/sensors", [f"sensor_{i}" for i in range(101)])
            for _ in range(200):
                if d.snapshot is not None and d.snapshot.count == 101:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 2)
        assert len(env.file_targets()) == 101

    run(t, tmp_path)


# --- nothing ends the loop: bounded backoff, the fence, outage logs --------------------------------


def recording_logger(name: str) -> tuple[logging.Logger, Records]:
    logger = logging.getLogger(f"sensor_sd.test.{name}")
    handler = Records()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, handler


@pytest.mark.parametrize("failures", [1, 1_024, 1_025, 1_100, 10**6, 10**12])
@pytest.mark.parametrize("interval", [0.001, 30.0, 86_400.0])
def test_backoff_stays_finite_and_capped_by_the_interval(interval: float, failures: int) -> None:
    from sensor_sd.scheduler import backoff_delay

    delays = [backoff_delay(interval, failures) for _ in range(50)]
    assert all(0 < d <= interval for d in delays)


async def while_running(task: asyncio.Task[Any], deadline: float, what: str, done: Callable[[], bool]) -> None:
    """Poll `done` until it holds, by the loop-time `deadline`; the discoverer's task ending first fails with its error."""
    while not done():
        assert not task.done(), task.exception()
        assert asyncio.get_running_loop().time() < deadline, f"not within the deadline: {what}"
        await asyncio.sleep(0.02)


def test_a_long_outage_at_a_tiny_interval_does_not_end_the_loop(tmp_path: Path) -> None:
    """More than 1,025 failed polls in a row: the backoff arithmetic must not overflow."""
    from localstack.net import free_port

    async def t(env: Env) -> None:
        s = env.settings(INVENTORY_URL=f"inv=http://127.0.0.1:{free_port()}/inventory", UPDATE_INTERVAL="0.001")
        metrics = Metrics(CollectorRegistry())
        logger, records = recording_logger("outage")
        stop = asyncio.Event()
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, logger)
            task = asyncio.create_task(d.run(stop))
            deadline = asyncio.get_running_loop().time() + 60
            await while_running(task, deadline, "1,100 polls in 60 s", lambda: sample(
                metrics, "sensor_sd_inventory_errors_total", source="inv", reason="unreachable") >= 1_100)
            stop.set()
            await asyncio.wait_for(task, 5)
        assert len(records.messages("inventory poll failed")) == 1  # not one line per failed poll

    run(t, tmp_path)


def test_an_internal_fault_fails_the_poll_not_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug of ours in a poll: counted as reason="internal", traceback logged once, last good kept, loop goes on."""
    import sensor_sd.poller

    async def t(env: Env) -> None:
        await sync_once(env)
        before = (env.tmp / "targets.json").read_bytes()
        await env.put("/admin/sensors", [f"sensor_{i}" for i in range(100)] + ["sensor_new"])

        def broken(box: list[bytes], port: int) -> None:
            raise ZeroDivisionError("a bug of ours\nover two lines")

        monkeypatch.setattr(sensor_sd.poller, "decode", broken)
        s = env.settings(UPDATE_INTERVAL="0.01")
        metrics = Metrics(CollectorRegistry())
        logger, records = recording_logger("fence")
        stop = asyncio.Event()
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, logger)
            d.load_file()
            task = asyncio.create_task(d.run(stop))
            deadline = asyncio.get_running_loop().time() + 20
            await while_running(task, deadline, "5 internal faults counted", lambda: sample(
                metrics, "sensor_sd_inventory_errors_total", source="inv", reason="internal") >= 5)
            assert (env.tmp / "targets.json").read_bytes() == before
            assert d.snapshot is not None and d.snapshot.count == 100
            [status] = d.status()
            assert status.last_error == "internal: ZeroDivisionError: a bug of ours over two lines"
            [r] = await d.refresh()  # POST /-/refresh takes the same fenced path: an error result, not a 500
            assert (r.result, r.reason) == ("error", "internal")
            with_traceback = [rec for rec in records.records if rec.exc_info]
            assert len(with_traceback) == 1 and with_traceback[0].levelno == logging.ERROR
            monkeypatch.undo()  # the bug is fixed: the next poll applies the new list
            await while_running(task, deadline, "the new list applied", lambda: d.snapshot.count == 101)
            stop.set()
            await asyncio.wait_for(task, 5)
        assert "sensor_new:9100" in env.file_targets()
        assert len(records.messages("inventory recovered")) == 1

    run(t, tmp_path)


def test_an_outage_logs_its_start_reminders_and_recovery_not_every_poll(tmp_path: Path) -> None:
    """100 failed polls 10 s apart: one line at the start, one every 5 minutes, one on recovery."""
    async def t(env: Env) -> None:
        now = [1_000_000.0]
        s = env.settings()
        logger, records = recording_logger("reminders")
        async with Client(s) as client:
            d = Discoverer(s, client, Metrics(CollectorRegistry()), logger, clock=lambda: now[0])
            await d.poll_all()
            await env.fault("status", code=503)
            for _ in range(100):
                now[0] += 10
                [r] = await d.poll_all()
                assert r.result == "error"
            await env.clear()
            now[0] += 10
            [r] = await d.poll_all()
            assert r.result in ("success", "unchanged")
        failing = records.messages("inventory poll failed", "inventory still failing")
        # the first failure at t=10 s, then reminders at 310, 610 and 910 s
        assert [rec.__dict__.get("failures") for rec in failing] == [1, 31, 61, 91]
        assert all(rec.levelno == logging.WARNING for rec in failing)
        assert [rec.__dict__.get("failing_for") for rec in failing[1:]] == [300.0, 600.0, 900.0]
        [recovered] = records.messages("inventory recovered")
        assert recovered.__dict__["failures"] == 100 and recovered.__dict__["failed_for"] == 1_000.0

    run(t, tmp_path)


def test_a_new_reason_within_an_outage_is_logged_once(tmp_path: Path) -> None:
    """503s turning into bad bodies is news for the operator; the same reason again is not."""
    async def t(env: Env) -> None:
        s = env.settings()
        logger, records = recording_logger("reasons")
        async with Client(s) as client:
            d = Discoverer(s, client, Metrics(CollectorRegistry()), logger)
            await d.poll_all()
            for mode, params in (("status", {"code": 503}), ("garbage", {}), ("status", {"code": 503})):
                await env.fault(mode, **params)
                for _ in range(3):
                    [r] = await d.poll_all()
                    assert r.result == "error"
        failing = records.messages("inventory poll failed", "inventory still failing")
        assert [rec.__dict__.get("reason") for rec in failing] == ["http_status", "decode"]
        assert [rec.__dict__.get("failures") for rec in failing] == [1, 4]

    run(t, tmp_path)


def test_an_internal_fault_while_publishing_is_fenced_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug of ours in building the snapshot: the loop and refresh go on, the previous file and snapshot stay."""
    import sensor_sd.store

    async def t(env: Env) -> None:
        await sync_once(env)
        before = (env.tmp / "targets.json").read_bytes()
        await env.put("/admin/sensors", [f"sensor_{i}" for i in range(101)])

        class Broken:
            @staticmethod
            def build(groups: object) -> None:
                raise KeyError("a bug of ours")

        s = env.settings(UPDATE_INTERVAL="0.01")
        metrics = Metrics(CollectorRegistry())
        logger, records = recording_logger("publish_fence")
        stop = asyncio.Event()
        async with Client(s) as client:
            d = Discoverer(s, client, metrics, logger)
            d.load_file()
            monkeypatch.setattr(sensor_sd.store, "Snapshot", Broken)
            [r] = await d.refresh()  # POST /-/refresh and `once` take this path
            assert r.result == "success"
            task = asyncio.create_task(d.run(stop))
            deadline = asyncio.get_running_loop().time() + 20
            await while_running(task, deadline, "5 internal faults counted", lambda: sample(
                metrics, "sensor_sd_inventory_errors_total", source="inv", reason="internal") >= 5)
            assert d.snapshot is not None and d.snapshot.count == 100
            assert (env.tmp / "targets.json").read_bytes() == before
            assert len([rec for rec in records.records if rec.exc_info]) == 1
            monkeypatch.undo()
            await while_running(task, deadline, "the new list applied", lambda: d.snapshot.count == 101)
            stop.set()
            await asyncio.wait_for(task, 5)
        assert len(env.file_targets()) == 101

    run(t, tmp_path)
