"""The local stack's console page: escapes what the APIs return, and says so when an API does not answer.

With real Prometheus and Alertmanager it is exercised by
tests/integration/test_stack_pages_browser.py; here it is served for real on
loopback with nothing behind it, and its renderer is fed hostile label text.
"""

from __future__ import annotations

from localstack.console import HEADERS, Answer, Console, Link, render
from localstack.net import LOOPBACK, free_port, http_get

HOSTILE = '<script>alert("x")</script>'


def test_every_value_is_escaped() -> None:
    targets = Answer({"data": {"activeTargets": [
        {"labels": {"job": HOSTILE, "instance": HOSTILE}, "health": "down", "lastError": HOSTILE},
        {"labels": {"job": "sensors", "instance": "sensor_1"}, "health": "up", "lastError": ""}]}})
    alert = {"labels": {"alertname": HOSTILE, "source": HOSTILE}, "annotations": {"summary": HOSTILE}}
    prom = Answer({"data": {"alerts": [{**alert, "state": "pending", "activeAt": "2026-01-01T00:00:00Z"}]}})
    am = Answer([{**alert, "startsAt": "2026-01-01T00:00:00Z", "status": {"state": "suppressed",
                                                                         "inhibitedBy": [HOSTILE]}}])
    page = render(0.0, targets, prom, am, [Link(HOSTILE, f'http://{LOOPBACK}:1/"{HOSTILE}')]).decode()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert f'href="http://{LOOPBACK}:1/&quot;&lt;script&gt;' in page  # the quote cannot end the attribute
    assert "1 of 2 targets up" in page


def test_served_page_reports_unanswering_apis() -> None:
    dead = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    port = free_port()
    console = Console(LOOPBACK, port, dead, dead, [Link("Prometheus targets", f"{dead}/classic/targets")]).start()
    try:
        status, body = http_get(f"http://{LOOPBACK}:{port}/", timeout=10)
        assert status == 200
        text = body.decode()
        for api in ("Prometheus /api/v1/targets", "Prometheus /api/v1/alerts", "Alertmanager /api/v2/alerts"):
            assert f"{api} did not answer" in text
        assert http_get(f"http://{LOOPBACK}:{port}/-/healthy")[0] == 200
        assert http_get(f"http://{LOOPBACK}:{port}/nothing")[0] == 404
        assert "script-src" not in HEADERS["Content-Security-Policy"]  # default-src 'none': no script at all
    finally:
        console.stop()
