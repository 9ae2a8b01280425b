"""Shared fixtures: real processes on loopback, ephemeral ports, temporary directories."""

from __future__ import annotations

import os
import asyncio
import logging
import threading
from dataclasses import dataclass
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from localstack.procs import Procs
from localstack.config import Ports, StackConfig
from localstack.stack import Stack

settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# Test tiers, one mechanism: markers. A directory's tests get its marker here; a test elsewhere that calls a
# Debian package's tool (promtool, amtool, vmagent, ...) carries @pytest.mark.system itself. `make test-quick`
# is `-m "not integration and not system and not slow"`: the venv alone runs it.
TESTS = Path(__file__).resolve().parent
DIRECTORY_MARKERS = {"integration": "integration", "chaos": "integration", "scale": "integration",
                     "deploy_live": "integration"}
DEFAULT_MARKEXPR = "not slow"


@pytest.fixture(scope="session", autouse=True)
def checkout_on_child_path() -> Iterator[None]:
    """Children import the checkout's tooling as the tests do (`python -m localstack`, bench scripts run from a copy)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")])))
        yield


def pytest_configure(config: pytest.Config) -> None:
    """Without -m the slow tests (10k-example fuzz, 1000-kill torture) are deselected: `-m slow` selects them."""
    if not config.option.markexpr:
        config.option.markexpr = DEFAULT_MARKEXPR


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
        marker = DIRECTORY_MARKERS.get(parts[0]) if len(parts) > 1 else None
        if marker is not None:
            item.add_marker(marker)


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a Stack with ephemeral ports in tmp_path; everything it started is stopped afterwards."""
    stacks: list[Stack] = []

    def factory(**kwargs: Any) -> Stack:
        kwargs.setdefault("ports", Ports.ephemeral())
        workdir = tmp_path / f"stack{len(stacks)}"
        stack = Stack(StackConfig(workdir=workdir, **kwargs))
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


T = TypeVar("T")


class Records(logging.Handler):
    """Log records of one test, kept for assertions."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, *needles: str) -> list[logging.LogRecord]:
        return [r for r in self.records if any(n in r.getMessage() for n in needles)]


class LoopThread:
    """An event loop on its own thread, so blocking clients in the test can talk to servers on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._cleanups: list[Callable[[], Awaitable[Any]]] = []

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def defer(self, cleanup: Callable[[], Awaitable[Any]]) -> None:
        """Run `cleanup` on the loop at teardown, last deferred first."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            self.run(cleanup(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Processes started through `localstack.procs.Procs` (the engines use it), each stopped by pid at teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@dataclass(frozen=True)
class ServedSD:
    """sensor-sd's app served in-process over an inventory simulator app, on a LoopThread."""

    lt: LoopThread
    discoverer: Any  # sensor_sd.scheduler.Discoverer
    inventory: Any  # the simulator's aiohttp Application
    inventory_url: str  # http://127.0.0.1:PORT, without a path
    port: int
    metrics: Any  # sensor_sd.metrics.Metrics: its registry, read without a connection slot


@pytest.fixture
def serve_sd(loop_thread: LoopThread) -> Callable[..., ServedSD]:
    """serve_sd(inventory_app, settings_for(inventory_url) -> Settings, poll=True) -> ServedSD; torn down after the test."""
    import logging

    from sensor_sd import server
    from sensor_sd.inventory import Client
    from sensor_sd.metrics import Metrics
    from sensor_sd.sim._common import start_app
    from sensor_sd.scheduler import Discoverer

    def factory(inventory_app: Any, settings_for: Callable[[str], Any], poll: bool = True) -> ServedSD:
        async def setup() -> ServedSD:
            inv_runner, inv_port = await start_app(inventory_app, "127.0.0.1", 0)
            loop_thread.defer(inv_runner.cleanup)
            inv_url = f"http://127.0.0.1:{inv_port}"
            settings = settings_for(inv_url)
            client = Client(settings)
            await client.__aenter__()
            loop_thread.defer(lambda: client.__aexit__(None, None, None))
            metrics = Metrics()
            discoverer = Discoverer(settings, client, metrics, logging.getLogger("sensor_sd.test"))
            if poll:
                await discoverer.poll_all()
            runner = await server.start(server.make_app(discoverer.store, settings, discoverer, metrics), settings)
            loop_thread.defer(runner.cleanup)
            return ServedSD(loop_thread, discoverer, inventory_app, inv_url, runner.addresses[0][1], metrics)

        return loop_thread.run(setup())

    return factory
