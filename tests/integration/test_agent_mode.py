"""Scale-out with the shipped agent-mode configs: a Prometheus agent discovers the sensors through
sensor-sd's http_sd and remote-writes them to a central Prometheus, which holds every sensor's series."""

from __future__ import annotations

from collections.abc import Callable

from localstack.net import LOOPBACK, free_port, http_get, wait_until
from localstack.stack import Stack


def test_agent_remote_writes_every_discovered_sensor(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(scrape_interval="1s", evaluation_interval="1s", update_interval=0.5)
    stack.start(("inventory", "fleet", "sd"))
    central_port = free_port()
    stack.start_agent_mode(central_port)
    central = f"http://{LOOPBACK}:{central_port}"

    def sensors_up() -> int:
        result = stack.prometheus_query('count(up{job="sensors-http", agent="store-agent-1"} == 1)', central)
        return int(float(result[0]["value"][1])) if result else 0

    wait_until(lambda: sensors_up() == 100, 60, "100 sensors up in the central Prometheus, via remote_write")
    # The central one scrapes no sensor itself: every sensor series arrived through the agent.
    status, body = http_get(f"{central}/api/v1/targets")
    assert status == 200 and b"sensor_" not in body
    instances = stack.prometheus_query('group by (instance, source) (sensor_temperature_celsius{job="sensors-http"})',
                                       central)
    assert {r["metric"]["instance"] for r in instances} == {f"sensor_{i}" for i in range(100)}
    assert {r["metric"]["source"] for r in instances} == {"inventory"}
