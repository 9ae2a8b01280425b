"""What Alertmanager delivers: the shipped routing, grouping and inhibition, observed at a webhook.

The local stack strips the receivers (nothing to deliver to on a laptop), so
here a webhook receiver (aiohttp on 127.0.0.1) stands in for the paging system
and the chat bridge: every receiver of the shipped alertmanager.yml keeps its
settings (send_resolved, max_alerts) with only its URL pointed at the receiver,
one path per receiver. Routing, grouping, timings (group_wait 30s) and
inhibition are the shipped ones. Prometheus loads the shipped rules with a
short `for:` (as the other stack tests do) and scrapes the simulated fleet,
discovered by sensor-sd from two inventory sources, `north` and `south`.

One live scenario, started at once so the 30 s group_wait is paid once:

* north: 2 of 25 sensors down (8 %, below the fleet threshold): one
  SensorDown notification to the team webhook carrying both sensors;
* south: 5 of 25 down (20 %): one SensorFleetDegraded page, and its five
  SensorDown alerts held inhibited in Alertmanager, never delivered;
* sensor-sd killed (SIGKILL): one SensorSDDown page.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sensor_sd.sim._common import start_app
from sensor_sd.sim.inventory import sources_env, store_sensor_prefix
from localstack.config import DEPLOY, Ports, StackConfig, rules_with_for
from localstack.net import LOOPBACK, admin_call, wait_until
from localstack.stack import Stack

# Long enough that the ~5 s startup flash of absent(up{job="sensor-sd"}) (Prometheus' discovery throttle)
# never becomes a SensorSDDown notification, short enough for a test.
FOR = "10s"
INTERVAL = 1.0  # scrape, evaluation and sensor-sd polling
PER_SOURCE = 25
NORTH_DOWN = [f"north_sensor_{i}" for i in (3, 7)]
SOUTH_DOWN = [f"south_sensor_{i}" for i in (1, 2, 3, 4, 5)]
# After the last expected notification, how long nothing else may arrive: every group of the scenario was
# created within a few evaluations of the others, so its group_wait flush is due within this window too.
QUIET = 8.0


@dataclass(frozen=True)
class Notification:
    path: str  # /<receiver name>
    body: dict[str, Any]
    at: float  # time.monotonic() when it arrived


@dataclass
class Webhook:
    """Every POST received, in order (appended on the receiver's loop, read by the test)."""

    url: str = ""
    received: list[Notification] = field(default_factory=list)


def delivery_config(webhook: str) -> dict[str, Any]:
    """The shipped alertmanager.yml with each webhook URL pointed at `webhook`/<receiver name>; nothing else changes."""
    import yaml

    doc = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook}/{receiver['name']}"
    return dict(doc)


class _DeliveryStack(Stack):
    def __init__(self, cfg: StackConfig, webhook: str) -> None:
        super().__init__(cfg)
        self.webhook = webhook

    def write_alertmanager_config(self) -> Path:
        import yaml

        path = self.cfg.workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(delivery_config(self.webhook), sort_keys=False))
        return path


@pytest.fixture
def webhook(loop_thread: Any) -> Webhook:
    hook = Webhook()

    async def receive(request: web.Request) -> web.Response:
        hook.received.append(Notification(request.path, await request.json(), time.monotonic()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{receiver}", receive)
    runner, port = loop_thread.run(start_app(app, "127.0.0.1", 0))
    loop_thread.defer(runner.cleanup)
    hook.url = f"http://127.0.0.1:{port}"
    return hook


@pytest.fixture
def stack(tmp_path: Path, webhook: Webhook) -> Iterator[_DeliveryStack]:
    ports = Ports.ephemeral()
    sources = sources_env(f"http://{LOOPBACK}:{ports.inventory}", ["north", "south"], tmp_path / "sources.json")
    cfg = StackConfig(tmp_path, ports, sensors=1, update_interval=INTERVAL,
                      scrape_interval=f"{INTERVAL:g}s", evaluation_interval=f"{INTERVAL:g}s",
                      extra_rule_files=(rules_with_for(tmp_path / "fast.rules.yml", FOR),), shipped_rules=False,
                      sd_env={"REQUEST_TIMEOUT": "0.5", **sources})
    s = _DeliveryStack(cfg, webhook.url)
    try:
        s.start(("inventory",))
        names = []
        for store in ("north", "south"):
            admin_call(s.url("inventory", f"/admin/stores/{store}"), "PUT", {"sensors": PER_SOURCE})
            names += [f"{store_sensor_prefix(store)}{i}" for i in range(PER_SOURCE)]
        admin_call(s.url("inventory", "/admin/sensors"), "PUT", names)  # the fleet answers what /inventory lists
        s.start(("fleet", "sd", "alertmanager", "prometheus"))
        wait_until(lambda: s.all_sensors_up(2 * PER_SOURCE), 60, f"{2 * PER_SOURCE} sensors up", 0.2)
        yield s
    finally:
        s.stop()


def test_delivery_config_changes_only_the_urls() -> None:
    import yaml

    shipped = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    ours = delivery_config("http://127.0.0.1:1")
    urls = [h.pop("url") for r in ours["receivers"] for h in r.get("webhook_configs", [])]
    assert urls == ["http://127.0.0.1:1/oncall-webhook", "http://127.0.0.1:1/team-webhook"]
    for r in shipped["receivers"]:
        for h in r.get("webhook_configs", []):
            h.pop("url")
    assert ours == shipped


def groups(received: list[Notification]) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[Notification]]:
    """Notifications by (receiver path, group labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], list[Notification]] = {}
    for n in received:
        out.setdefault((n.path, tuple(sorted(n.body["groupLabels"].items()))), []).append(n)
    return out


def test_one_notification_per_group_inhibition_and_sensor_sd_down(stack: _DeliveryStack, webhook: Webhook) -> None:
    assert webhook.received == [], "a healthy stack pages nobody"
    began = time.monotonic()
    admin_call(stack.url("fleet", "/admin/down"), "PUT", {"sensors": NORTH_DOWN + SOUTH_DOWN})
    stack.procs["sensor-sd"].popen.send_signal(signal.SIGKILL)

    team = ("/team-webhook", (("alertname", "SensorDown"), ("source", "north")))
    degraded = ("/oncall-webhook", (("alertname", "SensorFleetDegraded"), ("source", "south")))
    sd_down = ("/oncall-webhook", (("alertname", "SensorSDDown"),))
    expected = {team, degraded, sd_down}
    wanted = {(path, dict(labels)["alertname"]) for path, labels in expected}
    wait_until(lambda: wanted <= {(n.path, a["labels"]["alertname"]) for n in webhook.received for a in n.body["alerts"]},
               120, "SensorDown, SensorFleetDegraded and SensorSDDown at the webhook", 0.2)
    last = max(n.at for n in webhook.received)
    arrivals = ", ".join(f"{n.path} {n.body['groupLabels']} {n.at - began:.1f}s" for n in webhook.received)
    print(f"\nnotifications after the faults (for: {FOR}, shipped group_wait): {arrivals}")

    # The south SensorDown alerts did reach Alertmanager: held there, inhibited by the degraded fleet.
    south = [a for a in stack.alertmanager_alerts("SensorDown") if a["labels"]["source"] == "south"]
    assert sorted(a["labels"]["instance"] for a in south) == sorted(SOUTH_DOWN)
    assert all(a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in south), south

    wait_until(lambda: time.monotonic() >= last + QUIET, QUIET + 5, "the quiet window", 0.2)
    by_group = groups(webhook.received)
    assert set(by_group) == expected, sorted(by_group)  # nothing for south's SensorDown, nothing else
    assert all(len(ns) == 1 for ns in by_group.values()), {k: len(v) for k, v in by_group.items()}

    [north] = by_group[team]
    assert north.body["receiver"] == "team-webhook" and north.body["status"] == "firing"
    assert sorted(a["labels"]["instance"] for a in north.body["alerts"]) == sorted(NORTH_DOWN)
    assert all(a["labels"]["severity"] == "warning" and a["status"] == "firing" for a in north.body["alerts"])
    [page] = by_group[degraded]
    assert page.body["receiver"] == "oncall-webhook"
    assert [a["labels"]["alertname"] for a in page.body["alerts"]] == ["SensorFleetDegraded"]
    assert "20%" in page.body["alerts"][0]["annotations"]["summary"]
    [down] = by_group[sd_down]
    assert down.body["receiver"] == "oncall-webhook"
    assert [(a["labels"]["job"], a["labels"]["severity"]) for a in down.body["alerts"]] == [("sensor-sd", "critical")]
