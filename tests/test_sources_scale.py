"""Scale fixes for many sources: no publish after a 304, the open-files limit raised at start."""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from sensor_sd import config
from sensor_sd.inventory import Client
from sensor_sd.metrics import Metrics
from localstack.engines import start_inventory, url
from localstack.procs import Procs
from localstack.net import LOOPBACK, free_port, wait_until
from localstack.procs import sensor_sd_argv
from sensor_sd.scheduler import Discoverer

SOURCES = 20


def test_unchanged_polls_do_not_publish_each_time(tmp_path: Path) -> None:
    """After 304s the snapshot is not rebuilt nor the file checked per poll: about once per interval."""
    not_modified = [0]

    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            not_modified[0] += 1
            return web.Response(status=304)
        return web.Response(body=b'["a", "b"]', headers={"ETag": '"v1"'})

    async def main() -> tuple[int, int]:
        app = web.Application()
        app.router.add_get("/{name}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            urls = ",".join(f"s{i}=http://127.0.0.1:{server.port}/s{i}" for i in range(SOURCES))
            settings = config.load({}, {"INVENTORY_URL": urls, "UPDATE_INTERVAL": "0.05",
                                        "TARGETS_FILE": str(tmp_path / "targets.json")})
            async with Client(settings) as client:
                d = Discoverer(settings, client, Metrics(CollectorRegistry()), logging.getLogger("test"))
                publishes = [0]
                publish = d.publish

                async def counted() -> object:
                    publishes[0] += 1
                    return await publish()

                d.publish = counted  # type: ignore[method-assign]
                stop = asyncio.Event()
                running = asyncio.ensure_future(d.run(stop))
                deadline = asyncio.get_running_loop().time() + 30
                while not_modified[0] < 20 * SOURCES and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.05)
                before = (publishes[0], not_modified[0])
                while not_modified[0] < before[1] + 20 * SOURCES and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.05)
                stop.set()
                await running
                return publishes[0] - before[0], not_modified[0] - before[1]
        finally:
            await server.close()

    publishes, polls = asyncio.run(main())
    assert polls >= 20 * SOURCES
    # One publish per interval (each source polls once per interval), not one per poll.
    assert publishes <= polls / 5, f"{publishes} publishes for {polls} unchanged polls"
    assert (tmp_path / "targets.json").exists()


def test_the_open_files_soft_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    if low == hard:
        import pytest

        pytest.skip("hard limit too low to tell")
    procs = Procs(tmp_path)
    try:
        inv = start_inventory(procs, 1, 1)
        # The daemon starts from a low soft limit, as under a default systemd unit or shell.
        wrapper = [sys.executable, "-c",
                   "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, "
                   f"({low}, {hard})); os.execvp(sys.argv[1], sys.argv[1:])"]
        port = free_port()
        procs.start("sensor-sd", wrapper + sensor_sd_argv("run"), url(port, "/-/healthy"), env={
            "INVENTORY_URL": url(inv, "/stores/store0/inventory"), "LISTEN_ADDRESS": f"{LOOPBACK}:{port}",
            "TARGETS_FILE": ""})
        pid = procs.started[-1].popen.pid

        def limits() -> tuple[str, str] | None:
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    fields = line.split()
                    return fields[3], fields[4]
            return None

        limit = wait_until(limits, 10, "the limits")
        assert limit == (str(hard) if hard != resource.RLIM_INFINITY else "unlimited",) * 2
    finally:
        procs.stop_all()


def test_a_crashed_source_loop_is_restarted_and_the_others_go_on(tmp_path: Path) -> None:
    """Each source polls in a task of its own: an exception escaping one poll must not silence that source."""
    async def main() -> tuple[int, int, bool]:
        settings = config.load({}, {"INVENTORY_URL": "a=http://127.0.0.1:1/a,b=http://127.0.0.1:1/b",
                                    "UPDATE_INTERVAL": "0.1", "TARGETS_FILE": ""})
        async with Client(settings) as client:
            d = Discoverer(settings, client, Metrics(CollectorRegistry()), logging.getLogger("test"))
            calls = {"a": 0, "b": 0}
            real = d.poll

            async def poll(name: str, **kw: bool) -> object:
                calls[name] += 1
                if name == "a":
                    raise RuntimeError("a bug in a poll")
                return await real(name, **kw)

            d.poll = poll  # type: ignore[method-assign,assignment]
            stop = asyncio.Event()
            running = asyncio.ensure_future(d.run(stop))
            deadline = asyncio.get_running_loop().time() + 20
            while min(calls.values()) < 4 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            alive = not running.done()
            stop.set()
            await running
            return calls["a"], calls["b"], alive

    a, b, alive = asyncio.run(main())
    assert alive and a >= 4 and b >= 4, (a, b, alive)


def test_a_reload_refuses_url_credentials_where_the_global_token_applies(tmp_path: Path) -> None:
    """Checked at start by the configuration; a reload must refuse it too, not fail every poll of that source."""
    import json

    token = tmp_path / "token"
    token.write_text("t\n")
    path = tmp_path / "sources.json"
    path.write_text(json.dumps([{"name": "a", "url": "http://127.0.0.1:1/a"}]))

    async def main() -> tuple[bool, bool, tuple[str, ...]]:
        settings = config.load({}, {"SOURCES_FILE": str(path), "INVENTORY_TOKEN_FILE": str(token),
                                    "TARGETS_FILE": ""})
        async with Client(settings) as client:
            metrics = Metrics(CollectorRegistry())
            d = Discoverer(settings, client, metrics, logging.getLogger("test"))
            path.write_text(json.dumps([{"name": "b", "url": "http://u:p@127.0.0.1:1/b"}]))
            refused = not await d.reload("test")
            path.write_text(json.dumps([{"name": "b", "url": "http://u:p@127.0.0.1:1/b", "token_file": str(token)}]))
            also_refused = not await d.reload("test")  # per source: token_file and user:password exclude each other
            return refused, also_refused, tuple(s.name for s in d.settings.sources)

    refused, also_refused, names = asyncio.run(main())
    assert refused and also_refused and names == ("a",)
