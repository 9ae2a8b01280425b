"""Loopback basics of the local stack: free ports, a tiny HTTP client and polling with a deadline.

Only the standard library: tests, benchmarks and the `make run` runner use
these against children on 127.0.0.1, where a dependency would buy nothing.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


def free_port() -> int:
    """An ephemeral loopback port that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when a listener holds `port`; SO_REUSEADDR so TIME_WAIT left by a previous run does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; StackError after `timeout` seconds.

    A StackError raised by the predicate (e.g. "the process exited") ends the
    wait at once: nothing will become ready any more.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StackError:
            raise
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways until ready
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:g}s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def http_request(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a request with an optional JSON body; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback URLs only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    return http_request(url, timeout=timeout)


def admin_call(url: str, method: str, body: Any = None) -> Any:
    """A simulator admin API call that must succeed; its JSON answer (StackError otherwise)."""
    status, data = http_request(url, method, body)
    if not 200 <= status < 300:
        raise StackError(f"{method} {url} answered {status}: {data[:200]!r}")
    return json.loads(data or b"null")


def http_ok(url: str) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == 200
    except OSError:
        return False

