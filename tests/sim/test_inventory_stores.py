"""Many stores in one inventory simulator: each store's list, validators and faults are its own."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import requests

from sensor_sd.sim import fleet
from sensor_sd.sim.inventory import make_app


@pytest.fixture
def chain(loop_thread: Any) -> Any:
    return loop_thread.serve(make_app(5, stores=12, sensors_per_store=4, seed=3))


def get(chain: Any, path: str, **kw: Any) -> requests.Response:
    return requests.get(f"{chain.url}{path}", timeout=kw.pop("timeout", 5), **kw)


def admin(chain: Any, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    r = requests.request(method, f"{chain.url}{path}", json=body, timeout=5)
    assert r.status_code == status, r.text
    return r.json()


def test_each_store_has_its_own_list_and_etag(chain: Any) -> None:
    assert get(chain, "/stores").json() == [f"store{i}" for i in range(12)]
    etags = set()
    for i in range(12):
        r = get(chain, f"/stores/store{i}/inventory")
        assert r.status_code == 200
        assert r.json() == [f"store{i}_sensor_{j}" for j in range(4)]
        etags.add(r.headers["ETag"])
    assert len(etags) == 12
    # The single-store /inventory is unchanged by the stores next to it.
    assert get(chain, "/inventory").json() == [f"sensor_{i}" for i in range(5)]
    assert admin(chain, "GET", "/admin/state")["stores"] == 12


def test_a_change_in_one_store_changes_only_its_validators(chain: Any) -> None:
    before = {i: get(chain, f"/stores/store{i}/inventory").headers["ETag"] for i in (2, 3)}
    main_etag = get(chain, "/inventory").headers["ETag"]
    added = admin(chain, "POST", "/admin/stores/store2/sensors/add", {"count": 2})
    assert added["added"] == 2 and added["count"] == 6 and added["store"] == "store2"
    r = get(chain, "/stores/store2/inventory", headers={"If-None-Match": before[2]})
    assert r.status_code == 200 and r.json()[-2:] == ["store2_sensor_4", "store2_sensor_5"]
    assert r.headers["ETag"] != before[2]
    assert get(chain, "/stores/store3/inventory", headers={"If-None-Match": before[3]}).status_code == 304
    assert get(chain, "/inventory", headers={"If-None-Match": main_etag}).status_code == 304
    removed = admin(chain, "POST", "/admin/stores/store3/sensors/remove", {"names": ["store3_sensor_1"]})
    assert removed["removed"] == 1
    assert get(chain, "/stores/store3/inventory").json() == ["store3_sensor_0", "store3_sensor_2", "store3_sensor_3"]
    admin(chain, "PUT", "/admin/stores/store3/sensors", ["x", 1])
    assert get(chain, "/stores/store3/inventory").json() == ["x", 1]


def test_faults_are_per_store(chain: Any) -> None:
    admin(chain, "PUT", "/admin/stores/store1/fault", {"mode": "status", "code": 503})
    admin(chain, "PUT", "/admin/stores/store2/fault", {"mode": "garbage", "count": 1})
    assert get(chain, "/stores/store1/inventory").status_code == 503
    assert get(chain, "/stores/store1/inventory").status_code == 503  # until cleared
    assert get(chain, "/stores/store2/inventory").content[:1] == b"\xff"
    assert get(chain, "/stores/store2/inventory").status_code == 200  # count=1 used up
    assert get(chain, "/stores/store0/inventory").status_code == 200
    assert get(chain, "/inventory").status_code == 200
    state = admin(chain, "GET", "/admin/stores")
    assert state["store1"]["fault"]["mode"] == "status" and state["store2"]["fault"] is None
    assert admin(chain, "GET", "/admin/state")["fault"] is None
    admin(chain, "DELETE", "/admin/stores/store1/fault")
    assert get(chain, "/stores/store1/inventory").status_code == 200


def test_a_hanging_store_does_not_hold_up_another(chain: Any) -> None:
    """While one store's request hangs, another store of the same process answers at once."""
    admin(chain, "PUT", "/admin/stores/store4/fault", {"mode": "hang"})
    admin(chain, "PUT", "/admin/stores/store5/fault", {"mode": "slow", "seconds": 3, "chunks": 3})

    async def scenario() -> tuple[list[str], float]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async def fetch(store: str, timeout: float) -> str:
                try:
                    async with session.get(f"{chain.url}/stores/{store}/inventory",
                                           timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                        await r.read()
                        return str(r.status)
                except asyncio.TimeoutError:
                    return "timeout"

            hung = asyncio.ensure_future(fetch("store4", 1.5))
            slow = asyncio.ensure_future(fetch("store5", 10))
            await asyncio.sleep(0)  # both requests are on their way before the healthy one
            started = time.monotonic()
            healthy = await fetch("store6", 5)
            elapsed = time.monotonic() - started
            return [healthy, await hung, await slow], elapsed

    statuses, elapsed = asyncio.run(scenario())
    assert statuses == ["200", "timeout", "200"]
    assert elapsed < 1.0, f"store6 waited {elapsed:.2f}s behind store4/store5"


def test_create_replace_and_delete_stores(chain: Any) -> None:
    made = admin(chain, "PUT", "/admin/stores/new-store.7", {"sensors": 3})
    assert made["store"] == "new-store.7" and made["count"] == 3
    assert get(chain, "/stores/new-store.7/inventory").json() == [f"new-store.7_sensor_{i}" for i in range(3)]
    assert get(chain, "/stores").json()[-1] == "new-store.7"
    admin(chain, "PUT", "/admin/stores/store0", {"names": ["a", "b"]})
    assert get(chain, "/stores/store0/inventory").json() == ["a", "b"]
    assert admin(chain, "DELETE", "/admin/stores/store0") == {"deleted": "store0", "stores": 12}
    r = get(chain, "/stores/store0/inventory")
    assert r.status_code == 404 and r.json() == {"error": "no store 'store0'"}
    admin(chain, "GET", "/admin/stores/store0/state", status=404)
    admin(chain, "PUT", "/admin/stores/store0/fault", {"mode": "hang"}, status=404)


@pytest.mark.parametrize(("path", "body", "error"), [
    ("/admin/stores/-bad", {"sensors": 1}, "store name '-bad'"),
    ("/admin/stores/ok", {"sensors": -1}, "'sensors' must be between"),
    ("/admin/stores/ok", {"sensors": 1, "names": []}, "exactly one of 'sensors'"),
    ("/admin/stores/ok", {"count": 1}, "unknown key(s): count"),
])
def test_bad_store_input_is_a_clear_400(chain: Any, path: str, body: Any, error: str) -> None:
    assert error in admin(chain, "PUT", path, body, status=400)["error"]
    assert len(get(chain, "/stores").json()) == 12


def test_new_sensors_of_a_store_carry_its_name(chain: Any) -> None:
    admin(chain, "PUT", "/admin/stores/store9/sensors", ["store9_sensor_41"])
    admin(chain, "POST", "/admin/stores/store9/sensors/add", {"count": 2})
    assert get(chain, "/stores/store9/inventory").json() == ["store9_sensor_41", "store9_sensor_42", "store9_sensor_43"]


def test_metrics_count_stores_and_keep_route_labels_bounded(chain: Any) -> None:
    for i in range(12):
        get(chain, f"/stores/store{i}/inventory")
    text = get(chain, "/metrics").text
    assert "inventory_sim_stores 12.0" in text
    assert "inventory_sim_sensors 53.0" in text  # 5 + 12 x 4
    assert 'inventory_sim_http_requests_total{code="200",path="/stores/{store}/inventory"} 12.0' in text
    assert "store7" not in text


def test_cli_serves_stores(spawn: Any) -> None:
    proc = spawn("sensor_sd.sim.inventory", "--sensors", "0", "--stores", "3", "--sensors-per-store", "2")
    assert "3 stores x 2 at /stores/<name>/inventory" in proc.banner
    assert requests.get(f"{proc.url}/stores/store2/inventory", timeout=5).json() == ["store2_sensor_0", "store2_sensor_1"]
    assert proc.terminate() == 0


def test_fleet_answers_for_store_sensors_and_can_follow_one_store(loop_thread: Any, wait_for: Any) -> None:
    """The fleet's naming rule is the hostname: `store7_sensor_3` answers like `sensor_3` does."""
    chain = loop_thread.serve(make_app(0, stores=8, sensors_per_store=4))
    every = loop_thread.serve(fleet.make_app())
    one = loop_thread.serve(fleet.make_app(inventory_url=f"{chain.url}/stores/store7/inventory", inventory_refresh=0.1))
    proxies = {name: {"http": f.url} for name, f in (("every", every), ("one", one))}
    r = requests.get("http://store7_sensor_3:9100/metrics", proxies=proxies["every"], timeout=5)
    assert r.status_code == 200 and "sensor_temperature_celsius" in r.text
    wait_for(lambda: requests.get(f"{one.url}/admin/state", timeout=5).json()["inventory"]["known"] == 4)
    assert requests.get("http://store7_sensor_3:9100/metrics", proxies=proxies["one"], timeout=5).status_code == 200
    assert requests.get("http://store6_sensor_3:9100/metrics", proxies=proxies["one"], timeout=5).status_code == 502
