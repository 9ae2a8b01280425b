"""HA of sensor-sd itself: two replicas on the same sources serve the same bytes and ETag.

Scrapers behind a load balancer (or each pointed at a different replica) must
see one truth: identical /targets bodies (plain, gzip, every shard), identical
ETags (so a 304 from one replica is right for the other), identical files.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from localstack.engines import all_targets, start_inventory, start_sd, url
from localstack.procs import Procs
from sensor_sd.sim.inventory import store_names
from localstack.net import admin_call, wait_until

STORES, PER_STORE = 6, 20
# Addresses of every form, so the rendering of each is compared, not only bare names.
ODD = ["10.0.0.5", "host.example.com:9200", "[2001:db8::1]:9100", "[2001:db8::2]", "UPPER_case", "x:1"]


def get(port: int, path: str, gzip: bool = False) -> tuple[int, bytes, str]:
    """(status, raw body bytes as sent, ETag); gzip bodies are compared compressed."""
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    with urllib.request.urlopen(urllib.request.Request(url(port, path), headers=headers), timeout=5) as r:  # noqa: S310
        return r.status, r.read(), r.headers.get("ETag", "")


def views(port: int) -> dict[str, tuple[int, bytes, str]]:
    paths = ["/targets", "/targets?shard=0&shards=3", "/targets?shard=2&shards=3"]
    return {**{p: get(port, p) for p in paths}, **{f"{p} gzip": get(port, p, gzip=True) for p in paths}}


def start_pair(procs: Procs, order_b: list[str] | None = None) -> tuple[int, int, int]:
    inv = start_inventory(procs, STORES, PER_STORE)
    admin_call(url(inv, "/admin/stores/store3/sensors/add"), "POST", {"names": ODD})
    stores = store_names(STORES)
    a = start_sd(procs, inv, stores, name="sd-a")
    b = start_sd(procs, inv, order_b or stores, name="sd-b")
    total = STORES * PER_STORE + len(ODD)
    for port in (a, b):
        wait_until(lambda port=port: len(all_targets(port)) == total, 30, "every store on /targets", 0.1)
    return inv, a, b


def test_two_replicas_serve_identical_bytes_and_etags(procs: Procs) -> None:
    inv, a, b = start_pair(procs)
    first = views(a)
    assert first == views(b)
    assert all(status == 200 and etag for status, _, etag in first.values())
    assert Path(procs.workdir / "sd-a.targets.json").read_bytes() == Path(procs.workdir / "sd-b.targets.json").read_bytes()

    # A change reaches both, and they agree again, on new bytes.
    admin_call(url(inv, "/admin/stores/store1/sensors/remove"), "POST", {"names": ["store1_sensor_4"]})
    for port in (a, b):
        wait_until(lambda port=port: "store1_sensor_4:9100" not in all_targets(port), 30, "the removal", 0.1)
    second = views(a)
    assert second == views(b)
    assert second["/targets"][2] != first["/targets"][2]


def test_replicas_agree_whatever_the_order_of_their_sources(procs: Procs) -> None:
    """Two replicas given the same sources in another order (e.g. a sources file edited by hand)."""
    _, a, b = start_pair(procs, order_b=list(reversed(store_names(STORES))))
    assert views(a) == views(b)
