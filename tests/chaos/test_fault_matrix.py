"""Fault matrix: every inventory fault x both outputs, checked in one real Prometheus.

One stack for the module (inventory simulator, `sensor-sd run`, Prometheus
with a file_sd job `sensors` and an http_sd job `sensors-http`), short
intervals. For each fault:

* during the fault window the targets file and `/targets` hold exactly the
  good set, the file is not rewritten, `/-/healthy` answers 200 within 1 s;
* the fault is counted in the SD's metrics with the right reason and logged;
* at the end of the window Prometheus' active targets of both jobs are a good
  set (Prometheus applies discovery changes at most every 5 s, so the direct
  checks of the file and `/targets` are the strict ones);
* recovery: the inventory changes while the fault is on; after the fault is
  cleared the first poll that is not an error applies that change.

The good set is always sensor_0..sensor_{N-1}; each recovery adds sensor_N,
so every good set ever published is known and Prometheus must only ever show
one of them. The last test checks that Prometheus converged to the final set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localstack.config import Ports, StackConfig
from localstack.net import http_get, http_request, wait_until
from localstack.stack import Stack

pytestmark = pytest.mark.integration

SOURCE = "inventory"
JOBS = ("sensors", "sensors-http")
WINDOW_TIMEOUT = 30.0  # generous: the machine is shared


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = http_get(url, timeout=5)
    assert status == 200, body[:200]
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def targets_of(body: bytes) -> set[str]:
    """Targets in a file_sd/http_sd body; raises on anything that is not a list of groups."""
    data = json.loads(body)
    assert isinstance(data, list)
    return {t for group in data for t in group["targets"]}


def good(n: int) -> set[str]:
    return {f"sensor_{i}:9100" for i in range(n)}


@dataclass
class Matrix:
    stack: Stack
    n: int = 100  # the inventory is sensor_0..sensor_{n-1}
    history: list[set[str]] = field(default_factory=list)  # every good set published so far
    faults_tried: list[str] = field(default_factory=list)

    # --- reading the SD
    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return scrape(self.stack.url("sd", "/metrics"))

    def value(self, m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
        return m.get((name, frozenset({"source": SOURCE, **labels}.items())), m.get((name, frozenset(labels.items())), 0.0))

    def log_lines(self, offset: int) -> list[dict[str, Any]]:
        path = self.stack.logdir / "sensor-sd.log"
        out = []
        with open(path, "rb") as fh:
            fh.seek(offset)
            for line in fh.read().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def log_offset(self) -> int:
        return (self.stack.logdir / "sensor-sd.log").stat().st_size

    def prometheus_sets(self) -> dict[str, set[str]]:
        sets: dict[str, set[str]] = {job: set() for job in JOBS}
        for t in self.stack.active_targets():
            job = t["labels"].get("job")
            if job in sets:
                sets[job].add(t["discoveredLabels"]["__address__"])
        return sets

    # --- driving the inventory
    def inv(self, method: str, path: str, body: Any = None) -> Any:
        status, data = http_request(self.stack.url("inventory", path), method, body)
        assert status == 200, f"{method} {path} -> {status} {data[:200]!r}"
        return json.loads(data)

    def check_outputs(self, expected: set[str]) -> None:
        """The file and /targets hold exactly `expected`; /-/healthy answers 200 within 1 s."""
        file_targets = targets_of(self.stack.cfg.targets_file.read_bytes())
        assert file_targets == expected, f"file changed: -{sorted(expected - file_targets)[:5]} +{sorted(file_targets - expected)[:5]}"
        status, body = http_get(self.stack.url("sd", "/targets"), timeout=2)
        assert status == 200
        http_targets = targets_of(body)
        assert http_targets == expected, f"/targets changed: -{sorted(expected - http_targets)[:5]}"
        started = time.monotonic()
        status, _ = http_get(self.stack.url("sd", "/-/healthy"), timeout=1.0)
        assert status == 200 and time.monotonic() - started < 1.0

    def hold(self, done: Callable[[], bool], what: str) -> int:
        """Check the outputs continuously until `done()`; returns the number of checks."""
        expected = good(self.n)
        checks = 0
        deadline = time.monotonic() + WINDOW_TIMEOUT
        while True:
            self.check_outputs(expected)
            checks += 1
            if done():
                return checks
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)  # pacing of the checker, not a readiness wait

    def check_prometheus(self) -> None:
        sets = self.prometheus_sets()
        for job, seen in sets.items():
            assert seen in self.history, f"Prometheus job {job} shows a set that was never good: {len(seen)} targets"

    def recover(self, change: Callable[[], None] | None = None) -> None:
        """Change the inventory (add sensor_N), clear the fault; the first good poll applies the change."""
        offset = self.log_offset()
        if change is None:
            self.inv("POST", "/admin/sensors/add", {"count": 1})
        else:
            change()
        self.inv("DELETE", "/admin/fault")
        self.n += 1
        expected = good(self.n)

        def applied() -> bool:
            try:
                return (targets_of(self.stack.cfg.targets_file.read_bytes()) == expected
                        and targets_of(http_get(self.stack.url("sd", "/targets"))[1]) == expected)
            except ValueError:
                return False

        wait_until(applied, WINDOW_TIMEOUT, f"recovery to {self.n} sensors")
        self.history.append(expected)
        polls = [e for e in self.log_lines(offset) if e.get("source") == SOURCE and e.get("result")]
        first = next((e for e in polls if e["result"] != "error"), None)
        assert first is not None, polls
        assert first["result"] == "success" and first.get("added") == 1, f"first good poll did not apply: {first}"
        m = self.metrics()
        assert self.value(m, "sensor_sd_inventory_up") == 1
        assert self.value(m, "sensor_sd_drop_guard_active") == 0
        assert self.value(m, "sensor_sd_targets") == self.n


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    cfg = StackConfig(
        workdir=tmp_path_factory.mktemp("matrix"), ports=Ports.ephemeral(), sensors=100, update_interval=0.5,
        scrape_interval="1s", http_sd=True,
        sd_env={"REQUEST_TIMEOUT": "1", "LOG_LEVEL": "debug", "MAX_RESPONSE_BYTES": str(4 * 1024 * 1024),
                # a held drop must stay held for the whole window; confirmation is tested in the core tests
                "DROP_CONFIRMATIONS": "1000"},
    )
    stack = Stack(cfg)
    with stack:
        stack.start(("inventory", "sd", "prometheus"))
        m = Matrix(stack, history=[good(100)])
        wait_until(lambda: m.prometheus_sets() == {job: good(100) for job in JOBS}, 60,
                   "both jobs discover the 100 sensors in Prometheus", 0.25)
        yield m


# fault name -> (PUT /admin/fault body, expected inventory error reason)
HTTP_FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "reset_mid_body": ({"mode": "reset"}, "unreachable"),
    "http_500": ({"mode": "status", "code": 500}, "http_status"),
    "http_503": ({"mode": "status", "code": 503}, "http_status"),
    "http_404": ({"mode": "status", "code": 404}, "http_status"),
    "http_401": ({"mode": "status", "code": 401}, "http_status"),
    "redirect_loop": ({"mode": "redirect_loop"}, "unreachable"),
    "hang_past_timeout": ({"mode": "hang", "seconds": 30}, "timeout"),
    "truncated_json": ({"mode": "truncated"}, "decode"),
    "garbage": ({"mode": "garbage", "bytes": 4096}, "decode"),
    "json_object": ({"mode": "object"}, "decode"),
    "html_error_page": ({"mode": "html"}, "decode"),
    "non_utf8": ({"mode": "nonutf8"}, "decode"),
    "600MB_body": ({"mode": "oversized", "bytes": 600 * 1024 * 1024}, "too_large"),
    "600MB_body_chunked": ({"mode": "oversized", "bytes": 600 * 1024 * 1024, "chunked": True}, "too_large"),
}


def _error_window(matrix: Matrix, reason: str, offset: int, start_fault: Callable[[], None], polls: int = 2) -> None:
    m0 = matrix.metrics()
    errors0 = matrix.value(m0, "sensor_sd_inventory_errors_total", reason=reason)
    syncs0 = matrix.value(m0, "sensor_sd_syncs_total", result="error")
    writes0 = matrix.value(m0, "sensor_sd_file_writes_total")
    start_fault()

    def counted() -> bool:
        m = matrix.metrics()
        return matrix.value(m, "sensor_sd_inventory_errors_total", reason=reason) >= errors0 + polls

    matrix.hold(counted, f"{polls} polls failing with reason {reason}")
    m1 = matrix.metrics()
    assert matrix.value(m1, "sensor_sd_syncs_total", result="error") >= syncs0 + polls
    assert matrix.value(m1, "sensor_sd_inventory_up") == 0
    assert matrix.value(m1, "sensor_sd_file_writes_total") == writes0, "the file was rewritten during the fault"
    failed = [e for e in matrix.log_lines(offset) if e.get("result") == "error"]
    assert failed and all(e["reason"] == reason for e in failed), failed[:3]
    assert all("\n" not in e["error"] and e["msg"].startswith("inventory poll failed") for e in failed)
    matrix.check_prometheus()


@pytest.mark.parametrize("name", list(HTTP_FAULTS))
def test_http_fault(matrix: Matrix, name: str) -> None:
    body, reason = HTTP_FAULTS[name]
    offset = matrix.log_offset()
    try:
        _error_window(matrix, reason, offset, lambda: matrix.inv("PUT", "/admin/fault", body))
        matrix.recover()
    finally:
        http_request(matrix.stack.url("inventory", "/admin/fault"), "DELETE")
    matrix.faults_tried.append(name)


def test_refused(matrix: Matrix) -> None:
    """Connection refused: the inventory process is stopped, then restarted with one more sensor."""
    offset = matrix.log_offset()

    def restart() -> None:
        matrix.stack.cfg.sensors = matrix.n + 1  # the simulator serves sensor_0..sensor_{N-1}
        matrix.stack.start_inventory()

    try:
        _error_window(matrix, "unreachable", offset, lambda: matrix.stack.stop("inventory"))
        matrix.recover(restart)
    finally:
        if "inventory" not in matrix.stack.procs:
            restart()
    matrix.faults_tried.append("refused")


def test_slow_drip_below_timeout(matrix: Matrix) -> None:
    """A body dripped over 0.4 s (REQUEST_TIMEOUT 1 s) is a good answer, not an error."""
    m0 = matrix.metrics()
    unchanged0 = matrix.value(m0, "sensor_sd_syncs_total", result="unchanged")
    errors0 = matrix.value(m0, "sensor_sd_syncs_total", result="error")
    count0 = matrix.value(m0, "sensor_sd_inventory_request_duration_seconds_count")
    sum0 = matrix.value(m0, "sensor_sd_inventory_request_duration_seconds_sum")
    try:
        matrix.inv("PUT", "/admin/fault", {"mode": "slow", "seconds": 0.4, "chunks": 4})
        matrix.hold(lambda: matrix.value(matrix.metrics(), "sensor_sd_syncs_total", result="unchanged") >= unchanged0 + 2,
                    "two slow polls")
        m1 = matrix.metrics()
        assert matrix.value(m1, "sensor_sd_syncs_total", result="error") == errors0
        polls = matrix.value(m1, "sensor_sd_inventory_request_duration_seconds_count") - count0
        seconds = matrix.value(m1, "sensor_sd_inventory_request_duration_seconds_sum") - sum0
        assert polls >= 2 and seconds >= 0.3 * polls, (polls, seconds)  # the drip was really waited for
        matrix.check_prometheus()
        matrix.recover()
    finally:
        http_request(matrix.stack.url("inventory", "/admin/fault"), "DELETE")
    matrix.faults_tried.append("slow_drip")


def _held_window(matrix: Matrix, start: Callable[[], None], restore: Callable[[], None] | None) -> None:
    held0 = matrix.value(matrix.metrics(), "sensor_sd_syncs_total", result="held")
    writes0 = matrix.value(matrix.metrics(), "sensor_sd_file_writes_total")
    offset = matrix.log_offset()
    start()

    def held_twice() -> bool:
        m = matrix.metrics()
        if matrix.value(m, "sensor_sd_syncs_total", result="held") < held0 + 1:
            return False
        assert matrix.value(m, "sensor_sd_drop_guard_active") == 1, "guard released while the drop is still served"
        return matrix.value(m, "sensor_sd_syncs_total", result="held") >= held0 + 3

    matrix.hold(held_twice, "the drop guard to hold three polls")
    assert matrix.value(matrix.metrics(), "sensor_sd_file_writes_total") == writes0
    held = [e for e in matrix.log_lines(offset) if e.get("result") == "held"]
    assert held and held[0]["msg"].startswith("large drop held back"), held[:1]
    matrix.check_prometheus()
    matrix.recover(restore)


def test_empty_list(matrix: Matrix) -> None:
    try:
        _held_window(matrix, lambda: matrix.inv("PUT", "/admin/fault", {"mode": "empty"}), None)
    finally:
        http_request(matrix.stack.url("inventory", "/admin/fault"), "DELETE")
    matrix.faults_tried.append("empty_list")


def test_mass_drop(matrix: Matrix) -> None:
    """90 % of the sensors vanish from the inventory: held, then the full list (plus one) comes back."""
    full = [f"sensor_{i}" for i in range(matrix.n)]
    try:
        _held_window(matrix, lambda: matrix.inv("PUT", "/admin/sensors", full[: matrix.n // 10]),
                     lambda: matrix.inv("PUT", "/admin/sensors", [*full, f"sensor_{matrix.n}"]))
    finally:
        state = matrix.inv("GET", "/admin/state")
        if state["count"] < matrix.n:
            matrix.inv("PUT", "/admin/sensors", full)
    matrix.faults_tried.append("mass_drop")


def test_duplicates(matrix: Matrix) -> None:
    """Every sensor listed three times, shuffled: same targets, nothing rewritten."""
    full = [f"sensor_{i}" for i in range(matrix.n)]
    m0 = matrix.metrics()
    unchanged0 = matrix.value(m0, "sensor_sd_syncs_total", result="unchanged")
    writes0 = matrix.value(m0, "sensor_sd_file_writes_total")
    matrix.inv("PUT", "/admin/sensors", list(reversed(full)) + full + full[::2] + full[1::2])
    matrix.hold(lambda: matrix.value(matrix.metrics(), "sensor_sd_syncs_total", result="unchanged") >= unchanged0 + 2,
                "two polls of the duplicated list")
    m1 = matrix.metrics()
    assert matrix.value(m1, "sensor_sd_file_writes_total") == writes0
    assert sum(v for (name, _), v in m1.items() if name == "sensor_sd_invalid_entries_total") == \
        sum(v for (name, _), v in m0.items() if name == "sensor_sd_invalid_entries_total")
    matrix.check_prometheus()
    matrix.recover(lambda: matrix.inv("PUT", "/admin/sensors", [*full, f"sensor_{matrix.n}"] * 2))
    matrix.faults_tried.append("duplicates")


INVALID = {
    "not_string": [42, None, {"host": "sensor_1"}, ["sensor_1"], True],
    "empty": [""],
    "too_long": ["a" * 254, ".".join(["b" * 63] * 4)],
    "whitespace": ["sensor 1", "sensor_1\n", "\tsensor_1"],
    "scheme": ["http://sensor_1:9100", "https://sensor_1"],
    "userinfo": ["admin@sensor_1", "u:p@sensor_1:9100"],
    "path": ["sensor_1/metrics", "sensor_1:9100/x", "sensor_1?x=1"],
    "bad_port": ["sensor_1:99999", "sensor_1:0", "sensor_1:"],
    "bad_host": ["-sensor", "sensor-", "a..b", "sensor_1:9100:9100"],
}


def test_invalid_entries_mixed_with_valid(matrix: Matrix) -> None:
    full = [f"sensor_{i}" for i in range(matrix.n)]
    bad = [e for entries in INVALID.values() for e in entries]
    m0 = matrix.metrics()
    before = {r: matrix.value(m0, "sensor_sd_invalid_entries_total", reason=r) for r in INVALID}
    writes0 = matrix.value(m0, "sensor_sd_file_writes_total")
    offset = matrix.log_offset()
    matrix.inv("PUT", "/admin/sensors", full[:50] + bad + full[50:])

    def counted() -> bool:
        m = matrix.metrics()
        return all(matrix.value(m, "sensor_sd_invalid_entries_total", reason=r) >= before[r] + len(e)
                   for r, e in INVALID.items())

    matrix.hold(counted, "every invalid entry counted by reason")
    m1 = matrix.metrics()
    got = {r: matrix.value(m1, "sensor_sd_invalid_entries_total", reason=r) - before[r] for r in INVALID}
    assert got == {r: len(e) for r, e in INVALID.items()}, got  # counted once: later polls are 304
    assert matrix.value(m1, "sensor_sd_file_writes_total") == writes0
    warned = [e for e in matrix.log_lines(offset) if e.get("msg", "").startswith("invalid inventory entries dropped")]
    assert warned and warned[0]["invalid"] == {r: len(e) for r, e in INVALID.items()}
    matrix.check_prometheus()
    matrix.recover(lambda: matrix.inv("PUT", "/admin/sensors", full + bad + [f"sensor_{matrix.n}"]))
    matrix.faults_tried.append("invalid_mixed")


def test_prometheus_converged_and_sd_survived(matrix: Matrix) -> None:
    """After the whole matrix both jobs show exactly the final good set; the SD never restarted."""
    final = good(matrix.n)
    wait_until(lambda: matrix.prometheus_sets() == {job: final for job in JOBS}, 60,
               "Prometheus to converge to the final inventory", 0.25)
    assert matrix.stack.procs["sensor-sd"].alive()
    results = [t for t in matrix.stack.active_targets() if t["labels"].get("job") in JOBS]
    assert all(t["labels"]["source"] == SOURCE for t in results)
    summary = Path(matrix.stack.cfg.workdir) / "faults-tried.txt"
    summary.write_text("\n".join(matrix.faults_tried) + "\n")
