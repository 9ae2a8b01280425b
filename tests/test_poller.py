"""One poll of one source, with the inventory answers scripted (the real HTTP path is tests/test_scheduler.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sensor_sd.sources import Source
from sensor_sd.errors import StatusError
from sensor_sd.guard import DropGuard
from sensor_sd.inventory import Client, Response, Validators
from sensor_sd.poller import Poller, PollResult, Result

SOURCE = Source("inv", "http://127.0.0.1:1/inventory")
LIST = tuple(f"sensor_{i}:9100" for i in range(10))


class Scripted:
    """A stand-in for `inventory.Client`: each fetch returns (or raises) the next scripted answer."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[Validators] = []

    async def fetch(self, source: Source, validators: Validators) -> Response:
        self.sent.append(validators)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return cast(Response, answer)


def poller(client: Scripted, confirmations: int = 2) -> Poller:
    return Poller(SOURCE, cast(Client, client), DropGuard(0.5, confirmations), 9100, clock=lambda: 1000.0)


def body(names: list[str], etag: str) -> Response:
    return Response(("[" + ",".join(f'"{n}"' for n in names) + "]").encode(), Validators(etag=etag))


def poll(p: Poller, current: tuple[str, ...] | None, **kw: bool) -> PollResult:
    return asyncio.run(p.poll(current, **kw))


def test_a_new_list_a_304_and_a_failure_as_typed_results() -> None:
    client = Scripted(body([f"sensor_{i}" for i in range(10)], '"1"'), Response(None, Validators(etag='"1"')),
                      StatusError("HTTP 503"))
    p = poller(client)
    first = poll(p, None)
    assert (first.result, first.targets, first.added, first.new, first.previous) == (Result.SUCCESS, 10, LIST, LIST,
                                                                                     None)
    second = poll(p, LIST)
    assert (second.result, second.targets, second.new) == (Result.UNCHANGED, 10, None)
    assert client.sent[1].etag == '"1"'  # the validators of the good answer went back
    third = poll(p, LIST)
    assert (third.result, third.reason, third.targets, third.previous, third.failures) == (
        Result.ERROR, "http_status", 10, 10, 1)
    assert p.status(10).last_result == Result.ERROR and p.failures == 1


def test_a_bug_of_ours_is_an_internal_error_result_and_the_validators_are_forgotten() -> None:
    client = Scripted(body(["a"], '"1"'), ZeroDivisionError("a bug"), body(["a"], '"1"'))
    p = poller(client)
    poll(p, None)
    r = poll(p, ("a:9100",))
    assert (r.result, r.reason, r.request) == (Result.ERROR, "internal", None)  # the request never ended
    assert isinstance(r.fault, ZeroDivisionError) and r.error == "internal: ZeroDivisionError: a bug"
    poll(p, ("a:9100",))
    assert client.sent[2] == Validators()  # the whole body asked for again


def test_a_dry_run_asks_the_guard_without_changing_it_and_a_held_drop_says_what_it_holds() -> None:
    p = poller(Scripted(body([], '"2"'), body([], '"2"')))
    verdict = poll(p, LIST, dry_run=True)
    assert (verdict.result, verdict.targets, len(verdict.removed), verdict.dry_run) == (Result.HELD, 0, 10, True)
    assert p.guard.pending is None and p.last_result is None
    held = poll(p, LIST)
    assert (held.result, held.targets, len(held.removed), held.new) == (Result.HELD, 10, 10, None)
    assert held.summary()["removed"] == 0  # /-/refresh reports what was applied: nothing
    assert p.guard.pending == ()
