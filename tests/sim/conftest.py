"""Harness for the simulator tests: real HTTP on 127.0.0.1, ephemeral ports, no readiness sleeps."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from localstack.net import wait_until
from localstack.procs import Listening, Proc, spawn_listening, stop_all
from sensor_sd.sim._common import start_app

T = TypeVar("T")


@dataclass
class Served:
    """An app running on its own event loop thread, reachable at `url`."""

    app: web.Application
    port: int
    runner: web.AppRunner
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the server's loop (state is not thread-safe) and return its result."""

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)


class SimLoop:
    """The shared LoopThread (tests/conftest.py) plus `serve(app)` for the simulator apps."""

    def __init__(self, lt: Any) -> None:
        self.lt = lt
        self.loop: asyncio.AbstractEventLoop = lt.loop

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return self.lt.run(coro, timeout)  # type: ignore[no-any-return]

    def serve(self, app: web.Application) -> Served:
        runner, port = self.run(start_app(app, "127.0.0.1", 0))
        self.lt.defer(runner.cleanup)  # a second cleanup after a test's own stop() is harmless
        return Served(app=app, port=port, runner=runner, loop=self.loop)


@pytest.fixture
def loop_thread(loop_thread: Any) -> SimLoop:
    return SimLoop(loop_thread)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """wait_for(predicate, timeout=10, interval=0.02): poll until truthy, failing at the deadline (never a fixed sleep)."""

    def wait(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
        return wait_until(predicate, timeout, "the condition", interval)

    return wait


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Listening]]:
    """spawn(module, *args): `python -m module --host 127.0.0.1 --port 0 ...` as the CLI runs it, with the port it
    announced; each is stopped by pid at teardown."""
    started: list[Proc] = []

    def start(module: str, *args: str) -> Listening:
        argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *args]
        listening = spawn_listening(f"{module}-{len(started)}", argv, tmp_path / "logs")
        started.append(listening.proc)
        return listening

    try:
        yield start
    finally:
        stop_all(started)
