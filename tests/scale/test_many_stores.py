"""One slow, hanging or failing store never delays another: 300 stores through a real `sensor-sd run`.

A fifth of the stores hang past REQUEST_TIMEOUT (their requests are accepted
and never answered), a fifth answer 503, a few drip their answer slower than
REQUEST_TIMEOUT; more stores than requests may be in flight at once
(`MAX_IN_FLIGHT`), all from one SOURCES_FILE over one connection pool. A change in any healthy store must still reach /targets within
one UPDATE_INTERVAL of that store, no healthy store may see a single error, and
the failing stores keep their last known good targets.
"""

from __future__ import annotations

import time

from sensor_sd.inventory import MAX_IN_FLIGHT
from localstack.engines import all_targets, metric_samples, scrape_metrics, start_inventory, start_sd, url
from localstack.procs import Procs
from sensor_sd.sim.inventory import store_names
from localstack.net import admin_call, wait_until

STORES = 300
PER_STORE = 5
HANGING = range(0, 60)
FAILING = range(60, 120)
SLOW = range(120, 130)
HEALTHY = range(130, STORES)
INTERVAL = 2.0
REQUEST_TIMEOUT = 1.5
# A poll that has seen the change still has to validate, build the snapshot and write the file.
PROCESSING_SLACK = 1.0


def errors_by_store(sd_port: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for labels, value in metric_samples(scrape_metrics(sd_port), "sensor_sd_inventory_errors_total"):
        counts[labels["source"]] = counts.get(labels["source"], 0.0) + value
    return counts


def test_hanging_and_failing_stores_never_delay_a_healthy_one(procs: Procs) -> None:
    assert STORES > MAX_IN_FLIGHT > len(HANGING) + len(SLOW)
    inv = start_inventory(procs, STORES, PER_STORE)
    sd = start_sd(procs, inv, store_names(STORES), interval=INTERVAL, extra={"REQUEST_TIMEOUT": str(REQUEST_TIMEOUT)})
    wait_until(lambda: len(all_targets(sd)) == STORES * PER_STORE, 60, "every store's targets on /targets", 0.2)

    before = errors_by_store(sd)
    base = url(inv)
    for i in HANGING:
        admin_call(base + f"/admin/stores/store{i}/fault", "PUT", {"mode": "hang"})
    for i in FAILING:
        admin_call(base + f"/admin/stores/store{i}/fault", "PUT", {"mode": "status", "code": 503})
    for i in SLOW:
        admin_call(base + f"/admin/stores/store{i}/fault", "PUT", {"mode": "slow", "seconds": 2 * REQUEST_TIMEOUT})
    faulty = {f"store{i}" for r in (HANGING, FAILING, SLOW) for i in r}
    # Every faulty store has failed at least twice: the hung requests pile up as they would in production.
    wait_until(lambda: all(errors_by_store(sd).get(s, 0) >= 2 for s in faulty), 60,
               "two failed polls of every faulty store", 0.2)

    changed = [f"store{i}" for i in HEALTHY[::12]]
    new = {f"{s}_sensor_{PER_STORE}:9100": s for s in changed}
    started = time.monotonic()
    for store in changed:
        admin_call(base + f"/admin/stores/{store}/sensors/add", "POST", {"count": 1})
    seen: dict[str, float] = {}

    def all_seen() -> bool:
        now = time.monotonic() - started
        for target in new.keys() & all_targets(sd):
            seen.setdefault(target, now)
        return len(seen) == len(new)

    wait_until(all_seen, 30, "the changed stores' new sensors on /targets", 0.05)
    slowest = max(seen.values())
    assert slowest <= INTERVAL + PROCESSING_SLACK, (
        f"a healthy store's change took {slowest:.2f}s to reach /targets (UPDATE_INTERVAL {INTERVAL}s): {seen}")

    errors = errors_by_store(sd)
    healthy_errors = {s: n - before.get(s, 0) for s, n in errors.items() if s not in faulty and n > before.get(s, 0)}
    assert not healthy_errors, f"healthy stores failed polls behind the faulty ones: {healthy_errors}"
    # The faulty stores keep their last known good targets.
    assert len(all_targets(sd)) == STORES * PER_STORE + len(changed)
