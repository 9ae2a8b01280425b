"""Harness for the simulator tests: real HTTP on 127.0.0.1, ephemeral ports, no readiness sleeps."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

SRC = Path(__file__).resolve().parents[2] / "src"
try:  # the package is normally installed editable; fall back to the source tree
    import sensor_sd.sim  # noqa: F401
except ImportError:
    sys.path.insert(0, str(SRC))

from sensor_sd.sim._common import start_app  # noqa: E402

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


def _wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy, failing at the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Proc:
    """A simulator started through its module entry point, as the CLI would run it."""

    popen: subprocess.Popen[bytes]
    port: int
    banner: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def terminate(self, timeout: float = 5.0) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)


def _spawn(module: str, *args: str, timeout: float = 20.0) -> Proc:
    """Start `python -m module --port 0 ...` and read the bound port from its banner line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    errlog = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child can never block on stderr
    popen = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=errlog,
        env=env,
    )
    assert popen.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or popen.poll() is not None:
            popen.kill()
            popen.wait(timeout=5)
            errlog.seek(0)
            err = errlog.read().decode(errors="replace")
            raise AssertionError(f"{module} did not print its banner: {line!r} {err}")
        if sel.select(timeout=remaining):
            chunk = os.read(popen.stdout.fileno(), 1)
            line += chunk
    sel.close()
    banner = line.decode().strip()
    port = int(banner.split("http://127.0.0.1:")[1].split("/")[0].split(" ")[0])
    errlog.close()
    return Proc(popen=popen, port=port, banner=banner)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return _wait_for


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """Start a simulator subprocess; any left running are killed at teardown."""
    started: list[Proc] = []

    def start(module: str, *args: str) -> Proc:
        proc = _spawn(module, *args)
        started.append(proc)
        return proc

    yield start
    for p in started:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait(timeout=5)
        if p.popen.stdout is not None:
            p.popen.stdout.close()
