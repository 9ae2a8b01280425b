"""Scraping past one Prometheus on the real engines: a vmagent cluster, sharded and HA Prometheus
agents, all remote-writing to one victoria-metrics, and vmalert alerting from it.

One chain of 4 stores x 25 sensors (inventory simulator, fleet proxy, sensor-sd
polling every store) and one victoria-metrics serve every test; each test
starts its own scrapers and labels what they write (`topology`), so the tests
stay independent. Scrapes run every second; victoria-metrics deduplicates to
one sample per second per series (`-dedup.minScrapeInterval=1s`) and drops the
HA `replica` label on ingestion with the shipped relabel file.

A gap, as measured here: the longest stretch of the test window in which
victoria-metrics holds no `up` sample of a sensor (the edges of the window
count). Scraping every SCRAPE seconds, a covered sensor has gaps of about
SCRAPE; a gap longer than MAX_GAP = 2 scrape intervals means at least one
whole scrape is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localstack.config import load_yaml
from localstack.engines import (
    AGENT_HA, AGENT_SHARDED, VM_RELABEL, all_targets, cluster_flags, for_loopback, longest_gaps, metric_samples,
    scrape_metrics, scraper_targets, start_alertmanager, start_fleet, start_inventory, start_prometheus, start_sd,
    start_victoria_metrics, start_vmagent, start_vmalert, url, vm_export, vm_query, vmagent_config,
)
from localstack.procs import Procs
from sensor_sd.sim.inventory import store_names
from localstack.config import rules_with_for
from localstack.net import admin_call, http_get, wait_until

STORES, PER_STORE = 4, 25
SENSORS = STORES * PER_STORE
SCRAPE = 1.0
MAX_GAP = 2 * SCRAPE
JOB = 'job="sensors-http"'


@dataclass(frozen=True)
class Chain:
    """The shared parts: inventory, fleet, sensor-sd and victoria-metrics ports."""

    procs: Procs
    inventory: int
    fleet: int
    sd: int
    vm: int

    def ports(self) -> dict[str, Any]:
        return {"sd_port": self.sd, "inventory_port": self.inventory, "fleet_port": self.fleet,
                "interval": f"{SCRAPE:g}s", "vm_port": self.vm}

    def instances(self, selector: str) -> dict[str, int]:
        """instance -> number of `up` series matching `selector` that victoria-metrics holds now."""
        result = vm_query(self.vm, f"count by (instance) ({{__name__='up', {JOB}, {selector}}})")
        return {r["metric"]["instance"]: int(r["value"][1]) for r in result}

    def wait_all_written(self, selector: str, what: str) -> None:
        wait_until(lambda: len(self.instances(selector)) == SENSORS, 60, f"{SENSORS} sensors of {what} in "
                   "victoria-metrics", 0.25)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    procs = Procs(tmp_path_factory.mktemp("engines"))
    try:
        inventory = start_inventory(procs, STORES, PER_STORE)
        fleet = start_fleet(procs)
        sd = start_sd(procs, inventory, store_names(STORES), interval=1.0)
        vm = start_victoria_metrics(procs, f"-dedup.minScrapeInterval={SCRAPE:g}s", f"-relabelConfig={VM_RELABEL}")
        wait_until(lambda: len(all_targets(sd)) == SENSORS, 30, "sensor-sd publishing every store", 0.1)
        yield Chain(procs, inventory, fleet, sd, vm)
    finally:
        procs.stop_all()


def export_window(chain: Chain, selector: str, start: float, end: float) -> list[dict[str, Any]]:
    """Raw `up` samples of the sensors in [start, end], once victoria-metrics holds all of that window."""
    series: list[dict[str, Any]] = []

    def complete() -> bool:
        nonlocal series
        series = vm_export(chain.vm, f"{{__name__='up', {JOB}, {selector}}}", start, end + 5)
        return bool(series) and max(max(s["timestamps"]) for s in series) / 1000 >= end

    wait_until(complete, 30, "samples up to the end of the window", 0.25)
    return series


def gaps_around(chain: Chain, selector: str, start: float, end: float) -> dict[str, float]:
    """Longest gap per sensor in [start, end]."""
    return longest_gaps(export_window(chain, selector, start, end), start, end)


def test_vmagent_cluster_scrapes_every_sensor_exactly_once(chain: Chain, procs: Procs) -> None:
    members = [start_vmagent(procs, vmagent_config(**chain.ports()), chain.vm, name=f"vmagent-r1-{i}",
                             flags=[*cluster_flags(3, i, 1), "-remoteWrite.label=topology=vmagent-r1",
                                    f"-remoteWrite.label=member={i}"]) for i in range(3)]
    everything = all_targets(chain.sd)
    shares: list[set[str]] = []

    def split() -> bool:
        shares[:] = [scraper_targets(m) for m in members]
        return sum(map(len, shares)) == SENSORS
    wait_until(split, 30, "the three members' shares to add up", 0.2)
    assert set().union(*shares) == everything
    assert all(shares), "every member has a share"
    # ... and the series say the same: each sensor written by exactly one member.
    chain.wait_all_written('topology="vmagent-r1"', "the R=1 cluster")
    members_per_sensor = vm_query(chain.vm, f"count by (instance) (count by (instance, member) "
                                            f"(up{{{JOB}, topology='vmagent-r1'}}))")
    assert {int(r["value"][1]) for r in members_per_sensor} == {1}
    assert len(members_per_sensor) == SENSORS

    # With replicationFactor 1 a killed member takes its share with it: the gap measure sees exactly that.
    killed = procs.started[-3]
    killed_at = time.time()
    procs.kill(killed)
    window_end = killed_at + 6 * SCRAPE
    wait_until(lambda: time.time() > window_end + SCRAPE, 20, "the window to pass", 0.1)
    gaps = gaps_around(chain, 'topology="vmagent-r1"', killed_at - 3 * SCRAPE, window_end)
    lost = {a.rsplit(":", 1)[0] for a in shares[0]}
    assert {i for i, g in gaps.items() if g > MAX_GAP} == lost


def test_vmagent_cluster_replication_2_survives_a_killed_member(chain: Chain, procs: Procs) -> None:
    members = [start_vmagent(procs, vmagent_config(**chain.ports()), chain.vm, name=f"vmagent-r2-{i}",
                             flags=[*cluster_flags(3, i, 2), "-remoteWrite.label=topology=vmagent-r2"])
               for i in range(3)]
    everything = all_targets(chain.sd)
    shares: list[set[str]] = []

    def split() -> bool:
        shares[:] = [scraper_targets(m) for m in members]
        return sum(map(len, shares)) == 2 * SENSORS
    wait_until(split, 30, "the three members' shares to add up to 2 x the sensors", 0.2)
    assert {a: sum(a in s for s in shares) for a in everything} == dict.fromkeys(everything, 2)

    chain.wait_all_written('topology="vmagent-r2"', "the R=2 cluster")
    start = time.time()
    wait_until(lambda: time.time() > start + 3 * SCRAPE, 10, "samples before the kill", 0.1)
    procs.kill(procs.started[-3])  # member 0: a third of the pairs lose one of their two scrapers
    window_end = time.time() + 8 * SCRAPE
    wait_until(lambda: time.time() > window_end + SCRAPE, 20, "the window to pass", 0.1)
    gaps = gaps_around(chain, 'topology="vmagent-r2"', start, window_end)
    assert len(gaps) == SENSORS
    worst = max(gaps, key=lambda i: gaps[i])
    assert gaps[worst] <= MAX_GAP, f"{worst} went {gaps[worst]:.2f}s without a sample (scrape interval {SCRAPE}s)"
    # Two scrapers per sensor, one series per sensor: the replicas' samples are deduplicated.
    assert set(chain.instances('topology="vmagent-r2"').values()) == {1}


def agent_config(chain: Chain, path: Path, topology: str) -> dict[str, Any]:
    doc = for_loopback(load_yaml(path), **chain.ports())
    doc["global"]["external_labels"]["topology"] = topology
    return doc


def test_prometheus_agents_sharded_by_sensor_sd(chain: Chain, procs: Procs) -> None:
    configs = sorted(AGENT_SHARDED.glob("prometheus-agent-shard-*.yml"))
    assert len(configs) == 2
    agents = [start_prometheus(procs, agent_config(chain, c, "agent-sharded"), name=f"agent-shard-{i}",
                               agent=True)
              for i, c in enumerate(configs)]
    wanted = [all_targets(chain.sd, f"?shard={i}&shards=2") for i in range(2)]
    assert wanted[0] and wanted[1] and not wanted[0] & wanted[1]
    wait_until(lambda: [scraper_targets(a) for a in agents] == wanted, 60,
               "each agent scraping exactly its shard of /targets", 0.25)
    # In victoria-metrics: every sensor once, written by the agent of its shard.
    chain.wait_all_written('topology="agent-sharded"', "the sharded agents")
    result = vm_query(chain.vm, f"up{{{JOB}, topology='agent-sharded'}}")
    shard_of = {r["metric"]["instance"]: r["metric"]["shard"] for r in result}
    assert len(result) == len(shard_of) == SENSORS
    for i in range(2):
        assert {k for k, v in shard_of.items() if v == str(i)} == {a.rsplit(":", 1)[0] for a in wanted[i]}


def test_ha_pair_is_one_series_per_sensor_in_victoria_metrics(chain: Chain, procs: Procs) -> None:
    configs = sorted(AGENT_HA.glob("prometheus-agent-replica-*.yml"))
    assert [load_yaml(c)["global"]["external_labels"]["replica"] for c in configs] == ["a", "b"]
    agents = [start_prometheus(procs, agent_config(chain, c, "agent-ha"), name=f"agent-replica-{i}", agent=True)
              for i, c in enumerate(configs)]
    everything = all_targets(chain.sd)
    wait_until(lambda: all(scraper_targets(a) == everything for a in agents), 60, "both replicas scraping all", 0.25)

    def both_written() -> bool:
        # Each replica reports its own samples sent; both must have delivered before the check means anything.
        sent = [samples_sent(a) for a in agents]
        return all(n > SENSORS * 3 for n in sent)
    wait_until(both_written, 60, "both replicas remote-writing", 0.5)
    chain.wait_all_written('topology="agent-ha"', "the HA pair")
    series = chain.instances('topology="agent-ha"')
    assert len(series) == SENSORS and set(series.values()) == {1}, "one series per sensor, not one per replica"
    assert not vm_query(chain.vm, "count(up{replica!=''})")
    # Deduplicated samples too: about one per scrape interval, not two.
    end = time.time()
    start = end - 5 * SCRAPE
    samples = export_window(chain, "topology='agent-ha'", start, end)
    per_sensor = max(sum(start <= t / 1000 <= end for t in s["timestamps"]) for s in samples)
    assert per_sensor <= 5 + 1, f"{per_sensor} samples of one sensor in 5 scrape intervals: not deduplicated"


def samples_sent(port: int) -> float:
    """Samples a Prometheus agent has sent by remote_write so far."""
    return sum(v for _, v in metric_samples(scrape_metrics(port), "prometheus_remote_storage_samples_total"))


def test_vmalert_fires_sensor_down_with_the_store_label(chain: Chain, procs: Procs, tmp_path: Path) -> None:
    """The shipped rules, evaluated by vmalert on victoria-metrics, reach a real Alertmanager.

    `for:` is shortened to 2s in a copy of the rules (expressions, labels and
    annotations as shipped). The store arrives both as `source` (one source per
    store) and as the `store` label of the sources file.
    """
    start_vmagent(procs, vmagent_config(**chain.ports()), chain.vm, name="vmagent-central",
                  flags=["-remoteWrite.label=topology=central"])
    chain.wait_all_written('topology="central"', "the central vmagent")
    am = start_alertmanager(procs)
    rules = rules_with_for(tmp_path / "rules" / "for-2s.rules.yml", "2s")
    start_vmalert(procs, [rules], chain.vm, am)
    victim = "store2_sensor_7"
    admin_call(url(chain.fleet, "/admin/down"), "PUT", {"sensors": [victim]})
    try:
        def sensor_down() -> list[dict[str, Any]]:
            status, body = http_get(url(am, '/api/v2/alerts?filter=alertname%3D%22SensorDown%22'), timeout=5)
            return [a for a in json.loads(body) if a["status"]["state"] == "active"] if status == 200 else []
        # Wait for the victim's own alert: on a loaded machine another sensor's scrape may time out long
        # enough to fire too (seen once in CI), which says nothing about the victim's labels.
        alerts = wait_until(lambda: [a for a in sensor_down() if a["labels"]["instance"] == victim], 60,
                            f"SensorDown for {victim} in Alertmanager", 0.25)
        assert len(alerts) == 1
        assert {a["labels"]["source"] for a in alerts} == {"store2"}
        assert {a["labels"]["store"] for a in alerts} == {"store2"}
        assert {a["labels"]["severity"] for a in alerts} == {"warning"}
        assert all(a["annotations"]["summary"] == f"Sensor {victim} is down" for a in alerts)
    finally:
        admin_call(url(chain.fleet, "/admin/faults"), "DELETE")
