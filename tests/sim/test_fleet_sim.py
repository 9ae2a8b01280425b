"""Fleet simulator: reached as an HTTP forward proxy, exactly as Prometheus with `proxy_url` reaches it."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sensor_sd.sim import fleet
from sensor_sd.sim import inventory as inventory_sim
from sensor_sd.sim.fleet import GARBAGE_EXPOSITION, STATE, exposition, make_app

METRIC_NAMES = (
    "sensor_temperature_celsius",
    "sensor_humidity_ratio",
    "sensor_battery_ratio",
    "sensor_uptime_seconds",
    "sensor_events_total",
    "sensor_info",
)


@pytest.fixture
def fl(loop_thread: Any) -> Any:
    return loop_thread.serve(make_app())


@pytest.fixture
def proxied(fl: Any) -> Iterator[requests.Session]:
    """A client that goes through the fleet as its HTTP proxy (like Prometheus' proxy_url)."""
    s = requests.Session()
    s.trust_env = False  # ignore any *_PROXY / NO_PROXY of the machine running the tests
    s.proxies = {"http": fl.url}
    yield s
    s.close()


def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def promtool_check(text: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed: Debian's prometheus package (make test installs it)")
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)


def put(fl: Any, path: str, body: Any) -> dict[str, Any]:
    r = requests.put(f"{fl.url}{path}", json=body, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


# -- proxy mechanics -------------------------------------------------------


def test_absolute_form_request_with_raw_socket(fl: Any) -> None:
    data = raw(
        fl.port,
        b"GET http://sensor_17:9100/metrics HTTP/1.1\r\nHost: sensor_17:9100\r\n"
        b"Accept: text/plain\r\nConnection: close\r\n\r\n",
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/plain; version=0.0.4" in head
    assert b"sensor_temperature_celsius " in body
    assert body.count(b"# TYPE ") == len(METRIC_NAMES)


def test_absolute_form_host_comes_from_the_target(fl: Any) -> None:
    # RFC 9112 3.2.2: with an absolute-form target the Host header is ignored.
    a = raw(fl.port, b"GET http://sensor_3:9100/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert a.startswith(b"HTTP/1.1 200") and b"sensor_info{" in a


def test_requests_through_proxy(proxied: requests.Session) -> None:
    r = proxied.get("http://sensor_17:9100/metrics", timeout=5)
    assert r.status_code == 200
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in r.text
    assert 'sensor_info{firmware="1.4.2",model="' in r.text


def test_origin_form_with_sensor_host_header(fl: Any) -> None:
    r = requests.get(f"{fl.url}/metrics", headers={"Host": "sensor_5:9100"}, timeout=5)
    assert r.status_code == 200 and "sensor_battery_ratio" in r.text


def test_unknown_path_on_sensor_is_404_not_admin(proxied: requests.Session) -> None:
    assert proxied.get("http://sensor_1:9100/nope", timeout=5).status_code == 404
    assert proxied.get("http://sensor_1:9100/admin/state", timeout=5).status_code == 404
    assert proxied.put("http://sensor_1:9100/admin/down", json={"sensors": ["sensor_2"]}, timeout=5).status_code == 405
    assert proxied.get("http://sensor_2:9100/metrics", timeout=5).status_code == 200


def test_wrong_port_is_an_unreachable_upstream(proxied: requests.Session) -> None:
    r = proxied.get("http://sensor_1:9200/metrics", timeout=5)
    assert r.status_code == 502


def test_own_endpoints_answer_on_loopback(fl: Any) -> None:
    assert requests.get(f"{fl.url}/-/healthy", timeout=5).status_code == 200
    assert requests.get(f"http://localhost:{fl.port}/admin/state", timeout=5).json()["down"] == {}
    assert requests.get(f"{fl.url}/nope", timeout=5).status_code == 404
    # From another container the Host is a service name, with the simulator's own port.
    r = requests.get(f"{fl.url}/admin/state", headers={"Host": f"fleet:{fl.port}"}, timeout=5)
    assert r.status_code == 200 and "down" in r.json()


# -- exposition ------------------------------------------------------------


def test_exposition_is_deterministic_per_name_and_grows_with_time() -> None:
    def values(text: bytes) -> dict[str, str]:
        lines = [ln for ln in text.decode().splitlines() if ln and not ln.startswith("#")]
        return dict(ln.rsplit(" ", 1) for ln in lines)

    t = 1_800_000_000.0
    a1, a2 = values(exposition("sensor_1", t, t - 10)), values(exposition("sensor_1", t + 60, t - 10))
    b = values(exposition("sensor_2", t, t - 10))
    assert values(exposition("sensor_1", t, t - 10)) == a1
    assert a1 != b
    assert float(a2["sensor_uptime_seconds"]) == pytest.approx(float(a1["sensor_uptime_seconds"]) + 60)
    assert int(a2["sensor_events_total"]) > int(a1["sensor_events_total"])
    for v in (a1, b):
        assert -20 < float(v["sensor_temperature_celsius"]) < 50
        assert 0 <= float(v["sensor_humidity_ratio"]) <= 1
        assert 0 <= float(v["sensor_battery_ratio"]) <= 1
        assert [k for k in v if k.startswith("sensor_info")][0].startswith('sensor_info{firmware="1.4.2",model="')


@pytest.mark.system
def test_exposition_passes_promtool(proxied: requests.Session) -> None:
    for name in ("sensor_0", "sensor_17", "sensor_99999"):
        body = proxied.get(f"http://{name}:9100/metrics", timeout=5).content
        res = promtool_check(body)
        assert res.returncode == 0, res.stdout + res.stderr


def test_many_models_across_the_fleet() -> None:
    models = {exposition(f"sensor_{i}", 0, 0).split(b'model="')[1].split(b'"')[0] for i in range(200)}
    assert len(models) > 1


def test_exposition_is_cheap() -> None:
    t0 = time.perf_counter()
    for i in range(10_000):
        exposition(f"sensor_{i}", 1e9, 1e9)
    assert time.perf_counter() - t0 < 1.0  # 10k sensors; measured ~50 ms


# -- faults ----------------------------------------------------------------


def test_down_gives_502_then_recovers(fl: Any, proxied: requests.Session) -> None:
    put(fl, "/admin/down", {"sensors": ["sensor_1", "SENSOR_2:9100"]})
    assert proxied.get("http://sensor_1:9100/metrics", timeout=5).status_code == 502
    assert proxied.get("http://sensor_2:9100/metrics", timeout=5).status_code == 502
    assert proxied.get("http://sensor_3:9100/metrics", timeout=5).status_code == 200
    state = requests.delete(f"{fl.url}/admin/faults", timeout=5).json()
    assert state["down"] == {}
    assert proxied.get("http://sensor_1:9100/metrics", timeout=5).status_code == 200


def test_down_abort_resets_the_connection(fl: Any, proxied: requests.Session) -> None:
    put(fl, "/admin/down", {"sensors": ["sensor_1"], "mode": "abort"})
    with pytest.raises(requests.exceptions.ConnectionError):
        proxied.get("http://sensor_1:9100/metrics", timeout=5)
    assert proxied.get("http://sensor_4:9100/metrics", timeout=5).status_code == 200


def test_down_flag_at_start(loop_thread: Any) -> None:
    served = loop_thread.serve(make_app(down=["sensor_1", "sensor_2"]))
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": served.url}
    assert s.get("http://sensor_2:9100/metrics", timeout=5).status_code == 502
    assert s.get("http://sensor_20:9100/metrics", timeout=5).status_code == 200
    requests.delete(f"{served.url}/admin/faults", timeout=5).raise_for_status()
    assert s.get("http://sensor_2:9100/metrics", timeout=5).status_code == 200


def test_slow_sensor(fl: Any, proxied: requests.Session) -> None:
    put(fl, "/admin/slow", {"sensors": ["sensor_5"], "seconds": 0.6})
    t0 = time.monotonic()
    assert proxied.get("http://sensor_5:9100/metrics", timeout=5).status_code == 200
    assert time.monotonic() - t0 >= 0.55
    with pytest.raises(requests.exceptions.ReadTimeout):
        proxied.get("http://sensor_5:9100/metrics", timeout=(2, 0.2))  # a scrape_timeout shorter than the delay
    t0 = time.monotonic()
    proxied.get("http://sensor_6:9100/metrics", timeout=5).raise_for_status()
    assert time.monotonic() - t0 < 0.5


@pytest.mark.system
def test_garbage_sensor_is_unparsable(fl: Any, proxied: requests.Session) -> None:
    put(fl, "/admin/garbage", {"sensors": ["sensor_7"]})
    r = proxied.get("http://sensor_7:9100/metrics", timeout=5)
    assert r.status_code == 200 and r.content == GARBAGE_EXPOSITION
    assert promtool_check(r.content).returncode != 0
    assert promtool_check(proxied.get("http://sensor_8:9100/metrics", timeout=5).content).returncode == 0


def test_put_replaces_and_empty_list_clears(fl: Any) -> None:
    put(fl, "/admin/garbage", {"sensors": ["sensor_1", "sensor_2"]})
    assert put(fl, "/admin/garbage", {"sensors": ["sensor_3"]})["garbage"] == ["sensor_3"]
    assert put(fl, "/admin/garbage", {"sensors": []})["garbage"] == []
    state = put(fl, "/admin/slow", {"sensors": ["sensor_1"], "seconds": 2})
    assert state["slow"] == {"sensor_1": 2.0}


HOSTILE_ADMIN = [
    ("PUT", "/admin/down", b"nope"),
    ("PUT", "/admin/down", b""),
    ("PUT", "/admin/down", b"[]"),
    ("PUT", "/admin/down", b"{}"),
    ("PUT", "/admin/down", b'{"sensors": "sensor_1"}'),
    ("PUT", "/admin/down", b'{"sensors": [1]}'),
    ("PUT", "/admin/down", b'{"sensors": [""]}'),
    ("PUT", "/admin/down", b'{"sensors": ["a"], "mode": "explode"}'),
    ("PUT", "/admin/down", b'{"sensors": ["a"], "extra": 1}'),
    ("PUT", "/admin/slow", b'{"sensors": ["a"]}'),
    ("PUT", "/admin/slow", b'{"sensors": ["a"], "seconds": -1}'),
    ("PUT", "/admin/slow", b'{"sensors": ["a"], "seconds": "1"}'),
    ("PUT", "/admin/slow", b'{"sensors": ["a"], "seconds": true}'),
    ("PUT", "/admin/slow", b'{"sensors": ["a"], "seconds": 1e9}'),
    ("PUT", "/admin/garbage", b'{"sensors": null}'),
    ("PUT", "/admin/garbage", b"\xff\xfe\x00"),
]


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE_ADMIN)
def test_hostile_admin_input_is_a_clear_400(fl: Any, method: str, path: str, body: bytes) -> None:
    before = requests.get(f"{fl.url}/admin/state", timeout=5).json()
    r = requests.request(method, f"{fl.url}{path}", data=body, timeout=5)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert len(r.json()["error"]) > 10
    after = requests.get(f"{fl.url}/admin/state", timeout=5).json()
    assert {k: v for k, v in after.items() if k != "uptime_seconds"} == {
        k: v for k, v in before.items() if k != "uptime_seconds"
    }


@pytest.mark.system
def test_own_metrics_count_scrapes_by_result(fl: Any, proxied: requests.Session) -> None:
    put(fl, "/admin/down", {"sensors": ["sensor_1"]})
    proxied.get("http://sensor_1:9100/metrics", timeout=5)
    proxied.get("http://sensor_2:9100/metrics", timeout=5)
    proxied.get("http://sensor_2:9100/x", timeout=5)
    text = requests.get(f"{fl.url}/metrics", timeout=5).text
    assert 'fleet_sim_scrapes_total{result="down"} 1.0' in text
    assert 'fleet_sim_scrapes_total{result="ok"} 1.0' in text
    assert 'fleet_sim_scrapes_total{result="not_found"} 1.0' in text
    assert "python_gc" not in text
    res = promtool_check(text.encode())
    assert res.returncode == 0, res.stdout + res.stderr


# -- inventory-aware mode ----------------------------------------------------


def test_only_inventory_hosts_answer(loop_thread: Any, wait_for: Any) -> None:
    inv = loop_thread.serve(inventory_sim.make_app(10))
    served = loop_thread.serve(make_app(inventory_url=f"{inv.url}/inventory", inventory_refresh=0.05))
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": served.url}
    wait_for(lambda: requests.get(f"{served.url}/admin/state", timeout=5).json()["inventory"]["known"] == 10)
    assert s.get("http://sensor_9:9100/metrics", timeout=5).status_code == 200
    assert s.get("http://sensor_10:9100/metrics", timeout=5).status_code == 502

    requests.post(f"{inv.url}/admin/sensors/add", json={"names": ["sensor_10", "edge_1:9200"]}, timeout=5)
    wait_for(lambda: s.get("http://sensor_10:9100/metrics", timeout=5).status_code == 200)
    assert s.get("http://edge_1:9200/metrics", timeout=5).status_code == 200  # explicit port honoured
    assert s.get("http://edge_1:9100/metrics", timeout=5).status_code == 502

    # A broken inventory keeps the previous view instead of taking the fleet down.
    requests.put(f"{inv.url}/admin/fault", json={"mode": "garbage"}, timeout=5).raise_for_status()
    wait_for(lambda: requests.get(f"{served.url}/admin/state", timeout=5).json()["inventory"]["last_error"])
    assert s.get("http://sensor_10:9100/metrics", timeout=5).status_code == 200
    text = requests.get(f"{served.url}/metrics", timeout=5).text
    assert 'fleet_sim_inventory_refreshes_total{result="error"}' in text
    assert 'fleet_sim_scrapes_total{result="unreachable"}' in text


def test_inventory_down_at_start_means_nothing_answers_yet(loop_thread: Any, wait_for: Any) -> None:
    inv = loop_thread.serve(inventory_sim.make_app(3))
    port = inv.port
    inv.stop()
    served = loop_thread.serve(make_app(inventory_url=f"http://127.0.0.1:{port}/inventory", inventory_refresh=0.05))
    wait_for(lambda: requests.get(f"{served.url}/admin/state", timeout=5).json()["inventory"]["last_error"])
    r = requests.get(f"{served.url}/metrics", headers={"Host": "sensor_0:9100"}, timeout=5)
    assert r.status_code == 502
    # Scrapes never wait on the inventory: the refresh is a background task.
    assert served.call(lambda: served.app[STATE].known) == frozenset()


# -- process ---------------------------------------------------------------


def test_arguments_defaults_and_validation() -> None:
    parser = argparse.ArgumentParser()
    fleet.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.inventory_url, args.down, args.sensor_port) == (
        "127.0.0.1",
        9101,
        None,
        "",
        9100,
    )
    for bad in (["--port", "-1"], ["--inventory-url", "ftp://x"], ["--inventory-refresh", "0"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(bad)
        assert exc.value.code == 2


def test_run_as_process_with_down_flag_and_sigterm(spawn: Any) -> None:
    proc = spawn("sensor_sd.sim.fleet", "--down", "sensor_1, sensor_2")
    assert "fleet listening on http://127.0.0.1:" in proc.banner
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": proc.url}
    assert s.get("http://sensor_1:9100/metrics", timeout=5).status_code == 502
    assert s.get("http://sensor_3:9100/metrics", timeout=5).status_code == 200
    requests.put(f"{proc.url}/admin/slow", json={"sensors": ["sensor_4"], "seconds": 60}, timeout=5)
    slow = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    slow.sendall(b"GET http://sensor_4:9100/metrics HTTP/1.1\r\nHost: sensor_4:9100\r\n\r\n")
    requests.get(f"{proc.url}/-/healthy", timeout=5).raise_for_status()
    t0 = time.monotonic()
    assert proc.terminate(timeout=5) == 0
    assert time.monotonic() - t0 < 2.0
    slow.close()


# -- the real consumer -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_real_prometheus_scrapes_through_the_proxy(fl: Any, tmp_path: Any, wait_for: Any) -> None:
    """Prometheus with proxy_url: healthy sensors are up==1, each fault mode makes up==0."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus not installed: Debian's prometheus package (make test installs it)")
    put(fl, "/admin/down", {"sensors": ["sensor_1"]})
    put(fl, "/admin/garbage", {"sensors": ["sensor_2"]})
    put(fl, "/admin/slow", {"sensors": ["sensor_3"], "seconds": 5})
    targets = ", ".join(f'"sensor_{i}:9100"' for i in range(5))
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 800ms}\n"
        "scrape_configs:\n"
        "  - job_name: sensors\n"
        f"    proxy_url: {fl.url}\n"
        f"    static_configs: [{{targets: [{targets}]}}]\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"

        def up() -> dict[str, str] | None:
            try:
                result = requests.get(api, params={"query": "up"}, timeout=2).json()["data"]["result"]
            except (requests.RequestException, ValueError, KeyError):
                return None
            values = {r["metric"]["instance"]: r["value"][1] for r in result}
            return values if len(values) == 5 else None

        values = wait_for(up, timeout=30, interval=0.2)
        assert values == {
            "sensor_0:9100": "1",
            "sensor_1:9100": "0",
            "sensor_2:9100": "0",
            "sensor_3:9100": "0",
            "sensor_4:9100": "1",
        }
        r = requests.get(api, params={"query": 'sensor_info{instance="sensor_0:9100"}'}, timeout=5).json()
        assert r["data"]["result"][0]["metric"]["firmware"] == "1.4.2"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
