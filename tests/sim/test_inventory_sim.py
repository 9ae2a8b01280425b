"""Inventory simulator: every fault is observed from a real client over loopback HTTP."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
import requests

from sensor_sd.sim import inventory
from sensor_sd.sim.inventory import STATE, make_app


@pytest.fixture
def inv(loop_thread: Any) -> Any:
    return loop_thread.serve(make_app(100, seed=7))


def put_fault(inv: Any, **body: Any) -> dict[str, Any]:
    r = requests.put(f"{inv.url}/admin/fault", json=body, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def raw_get(port: int, path: str = "/inventory", timeout: float = 5.0) -> tuple[bytes, bytes]:
    """GET with a bare socket; returns (head, body-so-far) and lets socket errors propagate."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


# -- normal service --------------------------------------------------------


def test_serves_default_list_with_validators(inv: Any) -> None:
    r = requests.get(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == [f"sensor_{i}" for i in range(100)]
    etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert r.headers["Last-Modified"].endswith("GMT")


def test_if_none_match_gives_304(inv: Any) -> None:
    etag = requests.get(f"{inv.url}/inventory", timeout=5).headers["ETag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        r = requests.get(f"{inv.url}/inventory", headers={"If-None-Match": header}, timeout=5)
        assert r.status_code == 304, header
        assert r.content == b""
        assert r.headers["ETag"] == etag
    r = requests.get(f"{inv.url}/inventory", headers={"If-None-Match": '"other"'}, timeout=5)
    assert r.status_code == 200


def test_if_modified_since_gives_304(inv: Any) -> None:
    lm = requests.get(f"{inv.url}/inventory", timeout=5).headers["Last-Modified"]
    assert requests.get(f"{inv.url}/inventory", headers={"If-Modified-Since": lm}, timeout=5).status_code == 304
    earlier = formatdate(time.time() - 3600, usegmt=True)
    assert requests.get(f"{inv.url}/inventory", headers={"If-Modified-Since": earlier}, timeout=5).status_code == 200
    # If-None-Match takes precedence over If-Modified-Since (RFC 9110 13.2.2).
    both = {"If-Modified-Since": lm, "If-None-Match": '"stale"'}
    assert requests.get(f"{inv.url}/inventory", headers=both, timeout=5).status_code == 200
    garbage_date = {"If-Modified-Since": "not a date"}
    assert requests.get(f"{inv.url}/inventory", headers=garbage_date, timeout=5).status_code == 200


def test_change_updates_validators_even_within_one_second(inv: Any) -> None:
    first = requests.get(f"{inv.url}/inventory", timeout=5)
    requests.post(f"{inv.url}/admin/sensors/add", json={"count": 1}, timeout=5).raise_for_status()
    second = requests.get(f"{inv.url}/inventory", timeout=5)
    requests.post(f"{inv.url}/admin/sensors/add", json={"count": 1}, timeout=5).raise_for_status()
    third = requests.get(f"{inv.url}/inventory", timeout=5)
    assert len({first.headers["ETag"], second.headers["ETag"], third.headers["ETag"]}) == 3
    for old, _new in ((first, second), (second, third)):
        r = requests.get(
            f"{inv.url}/inventory",
            headers={"If-None-Match": old.headers["ETag"]},
            timeout=5,
        )
        assert r.status_code == 200
        r = requests.get(
            f"{inv.url}/inventory",
            headers={"If-Modified-Since": old.headers["Last-Modified"]},
            timeout=5,
        )
        assert r.status_code == 200, "Last-Modified must move forward on every change"
    assert third.json()[-2:] == ["sensor_100", "sensor_101"]


def test_unchanged_list_keeps_validators(inv: Any) -> None:
    before = requests.get(f"{inv.url}/admin/state", timeout=5).json()
    same = [f"sensor_{i}" for i in range(100)]
    after = requests.put(f"{inv.url}/admin/sensors", json=same, timeout=5).json()
    assert after["etag"] == before["etag"] and after["version"] == before["version"]


def test_million_names_served_quickly(loop_thread: Any) -> None:
    served = loop_thread.serve(make_app(1_000_000))
    with requests.Session() as s:
        s.get(f"{served.url}/inventory", timeout=30).raise_for_status()  # warm up the connection
        t0 = time.perf_counter()
        for _ in range(3):
            r = s.get(f"{served.url}/inventory", timeout=30)
        elapsed = (time.perf_counter() - t0) / 3
    names = r.json()
    assert len(names) == 1_000_000 and names[0] == "sensor_0" and names[-1] == "sensor_999999"
    # The body is pre-rendered once; serving is a memcpy, not a 1M-element encode.
    assert elapsed < 1.0, f"{elapsed:.3f}s per request"


def test_head_has_no_body(inv: Any) -> None:
    r = requests.head(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == 200 and r.content == b"" and "ETag" in r.headers


# -- admin API -------------------------------------------------------------


def test_put_sensors_serves_hostile_entries_verbatim(inv: Any) -> None:
    hostile = ["sensor_1", 42, None, "a b", {"x": 1}, ["nested"], "http://x@y/z", "", "sensor_1", True, 1.5]
    r = requests.put(f"{inv.url}/admin/sensors", json=hostile, timeout=5)
    assert r.status_code == 200 and r.json()["count"] == len(hostile)
    assert requests.get(f"{inv.url}/inventory", timeout=5).json() == hostile


def test_add_and_remove(inv: Any) -> None:
    url = inv.url
    r = requests.post(f"{url}/admin/sensors/add", json={"count": 3}, timeout=5).json()
    assert r["added"] == 3 and r["count"] == 103
    r = requests.post(f"{url}/admin/sensors/add", json={"names": ["store7_a", "store7_b"]}, timeout=5).json()
    assert r["count"] == 105
    names = requests.get(f"{url}/inventory", timeout=5).json()
    assert names[100:] == ["sensor_100", "sensor_101", "sensor_102", "store7_a", "store7_b"]

    r = requests.post(f"{url}/admin/sensors/remove", json={"names": ["sensor_0", "store7_a", "nope"]}, timeout=5).json()
    assert r["removed"] == 2 and r["count"] == 103
    r = requests.post(f"{url}/admin/sensors/remove", json={"count": 10}, timeout=5).json()
    assert r["removed"] == 10 and r["count"] == 93
    left = requests.get(f"{url}/inventory", timeout=5).json()
    assert len(set(left)) == 93 and "sensor_0" not in left
    # Removing more than exist empties the list rather than failing.
    r = requests.post(f"{url}/admin/sensors/remove", json={"count": 1000}, timeout=5).json()
    assert r["removed"] == 93 and r["count"] == 0
    assert requests.get(f"{url}/inventory", timeout=5).json() == []
    # New numbers are never reused, like newly installed hardware.
    requests.post(f"{url}/admin/sensors/add", json={"count": 1}, timeout=5).raise_for_status()
    assert requests.get(f"{url}/inventory", timeout=5).json() == ["sensor_103"]


HOSTILE_ADMIN = [
    ("PUT", "/admin/sensors", b"not json"),
    ("PUT", "/admin/sensors", b""),
    ("PUT", "/admin/sensors", b'{"sensors": []}'),
    ("PUT", "/admin/sensors", b"[1e400]"),
    ("PUT", "/admin/sensors", b"\xff\xfe"),
    ("POST", "/admin/sensors/add", b'{"count": -1}'),
    ("POST", "/admin/sensors/add", b'{"count": "5"}'),
    ("POST", "/admin/sensors/add", b'{"count": true}'),
    ("POST", "/admin/sensors/add", b'{"count": 1.5}'),
    ("POST", "/admin/sensors/add", b'{"count": 99999999999}'),
    ("POST", "/admin/sensors/add", b'{"count": 1, "names": ["a"]}'),
    ("POST", "/admin/sensors/add", b"{}"),
    ("POST", "/admin/sensors/add", b'{"names": "sensor_1"}'),
    ("POST", "/admin/sensors/add", b'{"names": [1, 2]}'),
    ("POST", "/admin/sensors/add", b'{"names": [""]}'),
    ("POST", "/admin/sensors/add", b'{"cnt": 1}'),
    ("POST", "/admin/sensors/add", b"[1]"),
    ("POST", "/admin/sensors/remove", b'{"count": -5}'),
    ("POST", "/admin/sensors/remove", b'{"names": [null]}'),
    ("POST", "/admin/sensors/remove", b"null"),
    ("PUT", "/admin/fault", b'{"mode": "explode"}'),
    ("PUT", "/admin/fault", b'{"mode": "refuse"}'),
    ("PUT", "/admin/fault", b'{"mode": 5}'),
    ("PUT", "/admin/fault", b"{}"),
    ("PUT", "/admin/fault", b'"status"'),
    ("PUT", "/admin/fault", b'{"mode": "status", "code": "500"}'),
    ("PUT", "/admin/fault", b'{"mode": "status", "code": 200}'),
    ("PUT", "/admin/fault", b'{"mode": "status", "code": 700}'),
    ("PUT", "/admin/fault", b'{"mode": "status", "count": 0}'),
    ("PUT", "/admin/fault", b'{"mode": "status", "count": -1}'),
    ("PUT", "/admin/fault", b'{"mode": "status", "seconds": 1}'),
    ("PUT", "/admin/fault", b'{"mode": "slow", "seconds": -1}'),
    ("PUT", "/admin/fault", b'{"mode": "slow", "chunks": 0}'),
    ("PUT", "/admin/fault", b'{"mode": "hang", "seconds": "forever"}'),
    ("PUT", "/admin/fault", b'{"mode": "oversized", "bytes": 1}'),
    ("PUT", "/admin/fault", b'{"mode": "oversized", "chunked": "yes"}'),
    ("PUT", "/admin/fault", b'{"mode": "garbage", "bytes": 0}'),
    ("PUT", "/admin/churn", b'{"every": -1}'),
    ("PUT", "/admin/churn", b'{"every": 0.001, "add": 1}'),
    ("PUT", "/admin/churn", b'{"add": "3"}'),
    ("PUT", "/admin/churn", b'{"often": 1}'),
]


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE_ADMIN)
def test_hostile_admin_input_is_a_clear_400(inv: Any, method: str, path: str, body: bytes) -> None:
    before = requests.get(f"{inv.url}/admin/state", timeout=5).json()
    r = requests.request(method, f"{inv.url}{path}", data=body, timeout=5)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"] == "application/json"
    error = r.json()["error"]
    assert isinstance(error, str) and len(error) > 10
    # Nothing changed and the server is still serving.
    assert requests.get(f"{inv.url}/admin/state", timeout=5).json() == before
    assert requests.get(f"{inv.url}/inventory", timeout=5).status_code == 200


def test_refuse_mode_explains_how(inv: Any) -> None:
    r = requests.put(f"{inv.url}/admin/fault", json={"mode": "refuse"}, timeout=5)
    assert r.status_code == 400 and "stop" in r.json()["error"]


def test_wrong_method_and_unknown_path(inv: Any) -> None:
    assert requests.post(f"{inv.url}/inventory", timeout=5).status_code == 405
    assert requests.get(f"{inv.url}/nope", timeout=5).status_code == 404


# -- churn -----------------------------------------------------------------


def test_churn_changes_the_list(loop_thread: Any, wait_for: Any) -> None:
    served = loop_thread.serve(make_app(50, seed=3, churn_add=3, churn_remove=2, churn_every=0.05))
    first = requests.get(f"{served.url}/inventory", timeout=5)
    state = wait_for(lambda: (s := requests.get(f"{served.url}/admin/state", timeout=5).json())["version"] >= 3 and s)
    assert state["churn"] == {"add": 3, "remove": 2, "every": 0.05, "active": True}
    r = requests.get(f"{served.url}/inventory", headers={"If-None-Match": first.headers["ETag"]}, timeout=5)
    assert r.status_code == 200
    names = r.json()
    assert names != first.json()
    assert len(names) == len(set(names))
    assert any(n not in first.json() for n in names), "churn must add new sensor numbers"
    # Turning churn off stops the changes.
    requests.delete(f"{served.url}/admin/churn", timeout=5).raise_for_status()
    v = requests.get(f"{served.url}/admin/state", timeout=5).json()["version"]
    requests.post(f"{served.url}/admin/churn/step", timeout=5).raise_for_status()  # a no-op step
    assert requests.get(f"{served.url}/admin/state", timeout=5).json()["version"] == v


def test_churn_is_reproducible_with_a_seed(loop_thread: Any) -> None:
    lists = []
    for _ in range(2):
        served = loop_thread.serve(make_app(100, seed=42, churn_add=5, churn_remove=7))
        for _ in range(3):
            step = requests.post(f"{served.url}/admin/churn/step", timeout=5).json()
            assert step["added"] == 5 and step["removed"] == 7
        lists.append(requests.get(f"{served.url}/inventory", timeout=5).json())
    assert lists[0] == lists[1] and len(lists[0]) == 100 - 6
    other = loop_thread.serve(make_app(100, seed=43, churn_add=5, churn_remove=7))
    for _ in range(3):
        requests.post(f"{other.url}/admin/churn/step", timeout=5).raise_for_status()
    assert requests.get(f"{other.url}/inventory", timeout=5).json() != lists[0]


def test_churn_can_be_enabled_at_runtime(inv: Any, wait_for: Any) -> None:
    r = requests.put(f"{inv.url}/admin/churn", json={"add": 1, "remove": 0, "every": 0.05}, timeout=5)
    assert r.json()["churn"]["active"] is True
    wait_for(lambda: requests.get(f"{inv.url}/admin/state", timeout=5).json()["count"] >= 102)


# -- faults, observed by real clients -------------------------------------


@pytest.mark.parametrize("code", [500, 503, 404, 401])
def test_fault_status(inv: Any, code: int) -> None:
    put_fault(inv, mode="status", code=code)
    r = requests.get(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == code


def test_fault_hang_times_out_the_client(inv: Any) -> None:
    put_fault(inv, mode="hang")
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{inv.url}/inventory", timeout=(2, 0.5))
    assert 0.4 < time.monotonic() - t0 < 3
    # Other endpoints are unaffected while requests hang.
    assert requests.get(f"{inv.url}/-/healthy", timeout=5).status_code == 200


def test_fault_hang_with_limit_then_closes(inv: Any) -> None:
    put_fault(inv, mode="hang", seconds=0.3)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{inv.url}/inventory", timeout=5)


def test_fault_slow_drips_the_body(inv: Any, loop_thread: Any) -> None:
    put_fault(inv, mode="slow", seconds=1.0, chunks=10)
    t0 = time.monotonic()
    r = requests.get(f"{inv.url}/inventory", timeout=(2, 0.5))  # each chunk arrives within the read timeout
    assert 0.9 < time.monotonic() - t0 < 3
    assert r.json() == [f"sensor_{i}" for i in range(100)]

    async def total_timeout() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.4)) as s:
            async with s.get(f"{inv.url}/inventory") as resp:
                await resp.read()

    with pytest.raises(TimeoutError):
        loop_thread.run(total_timeout())


def test_fault_truncated(inv: Any) -> None:
    put_fault(inv, mode="truncated")
    r = requests.get(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == 200 and r.content.startswith(b'["sensor_0"')
    assert int(r.headers["Content-Length"]) == len(r.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)


def test_fault_truncated_on_empty_list(inv: Any) -> None:
    requests.put(f"{inv.url}/admin/sensors", json=[], timeout=5).raise_for_status()
    put_fault(inv, mode="truncated")
    body = requests.get(f"{inv.url}/inventory", timeout=5).content
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def test_fault_garbage(inv: Any) -> None:
    put_fault(inv, mode="garbage", bytes=2048)
    r = requests.get(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == 200 and len(r.content) == 2048
    with pytest.raises(ValueError):
        json.loads(r.content)


def test_fault_html(inv: Any) -> None:
    put_fault(inv, mode="html")
    r = requests.get(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<html>" in r.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


def test_fault_object(inv: Any) -> None:
    put_fault(inv, mode="object")
    data = requests.get(f"{inv.url}/inventory", timeout=5).json()
    assert isinstance(data, dict) and len(data["sensors"]) == 100


def test_fault_nonutf8(inv: Any) -> None:
    put_fault(inv, mode="nonutf8")
    body = requests.get(f"{inv.url}/inventory", timeout=5).content
    assert body.startswith(b'["sensor_0"') and body.endswith(b'"]')
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    # Everything but the bad bytes is a well-formed array: only UTF-8 validation catches it.
    assert len(json.loads(body.decode("latin-1"))) == 101


def test_fault_empty(inv: Any) -> None:
    put_fault(inv, mode="empty")
    r = requests.get(f"{inv.url}/inventory", timeout=5)
    assert r.status_code == 200 and r.json() == [] and "ETag" not in r.headers


def test_fault_reset_is_a_connection_error(inv: Any) -> None:
    put_fault(inv, mode="reset")
    with pytest.raises(requests.exceptions.RequestException) as excinfo:
        requests.get(f"{inv.url}/inventory", timeout=5)
    assert isinstance(excinfo.value, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError))
    # At the socket level: headers promise the full body, part of it arrives, then RST.
    with socket.create_connection(("127.0.0.1", inv.port), timeout=5) as s:
        s.sendall(b"GET /inventory HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
    if received:  # the RST may discard data still queued; when it arrives it is a prefix
        assert received.startswith(b"HTTP/1.1 200")


def test_fault_redirect_loop(inv: Any) -> None:
    put_fault(inv, mode="redirect_loop")
    r = requests.get(f"{inv.url}/inventory?x=1", allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"] == "/inventory?x=1"
    with pytest.raises(requests.exceptions.TooManyRedirects):
        requests.get(f"{inv.url}/inventory", timeout=5)


def test_fault_oversized_small_is_exact_and_valid(inv: Any) -> None:
    put_fault(inv, mode="oversized", bytes=3_000_000, count=1)
    r = requests.get(f"{inv.url}/inventory", timeout=10)
    assert int(r.headers["Content-Length"]) == len(r.content) == 3_000_000
    data = json.loads(r.content)
    assert isinstance(data, list) and data[0] == "sensor_0"


def test_fault_oversized_chunked_has_no_length(inv: Any) -> None:
    put_fault(inv, mode="oversized", bytes=100_000, chunked=True)
    r = requests.get(f"{inv.url}/inventory", timeout=10)
    assert "Content-Length" not in r.headers and r.headers["Transfer-Encoding"] == "chunked"
    assert len(r.content) == 100_000 and isinstance(json.loads(r.content), list)


def test_fault_oversized_streams_without_growing_rss(spawn: Any) -> None:
    proc = spawn("sensor_sd.sim.inventory", "--sensors", "100")
    requests.put(f"{proc.url}/admin/fault", json={"mode": "oversized"}, timeout=5).raise_for_status()
    rss_before = proc.rss_bytes()
    rss_peak = rss_before
    target = 300 * 1024 * 1024
    received = 0
    samples = 0
    with requests.get(f"{proc.url}/inventory", stream=True, timeout=10) as r:
        assert int(r.headers["Content-Length"]) == 600 * 1024 * 1024  # the default size
        for chunk in r.iter_content(1024 * 1024):
            if received == 0:
                assert chunk.startswith(b'["sensor_0","sensor_1"')
            received += len(chunk)
            if received % (32 * 1024 * 1024) < len(chunk):
                rss_peak = max(rss_peak, proc.rss_bytes())
                samples += 1
            if received >= target:
                break
    assert received >= target and samples >= 8
    assert rss_peak - rss_before < 40 * 1024 * 1024, f"server RSS grew {(rss_peak - rss_before) >> 20} MiB"
    # The server survives the client hanging up mid-stream.
    requests.delete(f"{proc.url}/admin/fault", timeout=5).raise_for_status()
    assert requests.get(f"{proc.url}/inventory", timeout=5).status_code == 200


def test_fault_count_applies_to_next_n_requests(inv: Any) -> None:
    state = put_fault(inv, mode="status", code=500, count=2)
    assert state["fault"]["remaining"] == 2
    codes = [requests.get(f"{inv.url}/inventory", timeout=5).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    assert requests.get(f"{inv.url}/admin/state", timeout=5).json()["fault"] is None


def test_fault_cleared_by_delete(inv: Any) -> None:
    put_fault(inv, mode="garbage")
    assert requests.delete(f"{inv.url}/admin/fault", timeout=5).json()["fault"] is None
    assert requests.get(f"{inv.url}/inventory", timeout=5).json()[0] == "sensor_0"


def test_faults_do_not_hit_admin_endpoints(inv: Any) -> None:
    put_fault(inv, mode="hang")
    assert requests.get(f"{inv.url}/admin/state", timeout=5).json()["fault"]["mode"] == "hang"
    assert requests.get(f"{inv.url}/metrics", timeout=5).status_code == 200


def test_refused_means_stopping_the_server(inv: Any) -> None:
    port = inv.port
    inv.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/inventory", timeout=5)


# -- own endpoints and process behaviour ----------------------------------


@pytest.mark.system
def test_metrics_count_requests_and_pass_promtool(inv: Any) -> None:
    requests.get(f"{inv.url}/inventory", timeout=5)
    put_fault(inv, mode="status", code=503, count=1)
    requests.get(f"{inv.url}/inventory", timeout=5)
    text = requests.get(f"{inv.url}/metrics", timeout=5).text
    assert 'inventory_sim_http_requests_total{code="200",path="/inventory"} 1.0' in text
    assert 'inventory_sim_http_requests_total{code="503",path="/inventory"} 1.0' in text
    assert 'inventory_sim_faults_served_total{mode="status"} 1.0' in text
    assert "inventory_sim_sensors 100.0" in text
    assert "python_gc" not in text, "must use its own registry, not the global one"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed: Debian's prometheus package (make test installs it)")
    res = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


def test_two_apps_have_independent_state(loop_thread: Any) -> None:
    a, b = make_app(3), make_app(5)
    assert len(a[STATE].main.items) == 3 and len(b[STATE].main.items) == 5
    assert a[STATE].registry is not b[STATE].registry


def test_healthy(inv: Any) -> None:
    r = requests.get(f"{inv.url}/-/healthy", timeout=5)
    assert r.status_code == 200


def test_arguments_defaults_and_validation() -> None:
    parser = argparse.ArgumentParser()
    inventory.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.sensors) == ("127.0.0.1", 1337, 100)
    assert (args.churn_add, args.churn_remove, args.churn_every, args.seed) == (0, 0, 0.0, None)
    for bad in (["--sensors", "-1"], ["--port", "70000"], ["--churn-every", "x"], ["--churn-every", "nan"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(bad)
        assert exc.value.code == 2


def test_run_exits_0_on_sigterm_even_with_a_hung_request(spawn: Any) -> None:
    proc = spawn("sensor_sd.sim.inventory", "--sensors", "10", "--churn-add", "1", "--churn-every", "0.1", "--seed", "1")
    assert "listening on http://127.0.0.1:" in proc.banner
    assert len(requests.get(f"{proc.url}/inventory", timeout=5).json()) >= 10
    requests.put(f"{proc.url}/admin/fault", json={"mode": "hang"}, timeout=5).raise_for_status()
    hung = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    hung.sendall(b"GET /inventory HTTP/1.1\r\nHost: x\r\n\r\n")
    requests.get(f"{proc.url}/-/healthy", timeout=5).raise_for_status()  # the hung request is in flight
    t0 = time.monotonic()
    assert proc.terminate(timeout=5) == 0
    assert time.monotonic() - t0 < 2.0
    hung.close()


def test_run_reports_a_busy_port(spawn: Any) -> None:
    proc = spawn("sensor_sd.sim.inventory")
    args = argparse.Namespace(
        host="127.0.0.1", port=proc.port, sensors=1, churn_add=0, churn_remove=0, churn_every=0.0, seed=None,
        stores=0, sensors_per_store=0,
    )
    assert inventory.run(args) == 1
