"""The local stack's console: Prometheus' target health and the alerts on one page.

Debian's Prometheus ships only its classic UI and Debian's Alertmanager none
at all, so `make run` serves this page itself (from the runner process, on
loopback) instead of printing URLs that answer 404 or "no web application".
It belongs to the local stack's tooling, not to sensor-sd, which depends on
neither Prometheus nor Alertmanager.

Rendered on the server from the two APIs at each request; no script, no
external asset (the Content-Security-Policy forbids both), every value
HTML-escaped, and it reloads itself every few seconds.
"""

from __future__ import annotations

import html
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sensor_sd.status import page_headers

RELOAD_SECONDS = 5
MAX_DOWN = 50  # down targets listed by name; the counts cover the rest
MAX_TEXT = 300

_STYLE = """
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--mute:#6e7781}
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:60rem;padding:1rem}
h1{font-size:1.4rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:0 0 .5rem}
nav{margin:.5rem 0;line-height:1.9}nav a{margin-right:1rem;white-space:nowrap}.mute{color:var(--mute)}
section{border:1px solid #8884;border-radius:.5rem;padding:.75rem 1rem;margin:1rem 0;overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.2rem .6rem .2rem 0;vertical-align:top;
overflow-wrap:anywhere}th{color:var(--mute);font-weight:400}tr{border-bottom:1px solid #8882}
code{font-size:.85em;overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:1rem;padding:0 .6rem;font-size:.85rem;color:#fff;white-space:nowrap}
.up,.inactive{background:var(--ok)}.down,.firing,.active{background:var(--bad)}
.pending,.suppressed,.unknown,.unprocessed{background:var(--warn)}.error{color:var(--bad)}
"""
HEADERS = page_headers(_STYLE)


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class Answer:
    """One API's answer: its data, or why there is none (the page says so instead of failing)."""

    data: Any = None
    error: str | None = None


def fetch(url: str, timeout: float = 3.0) -> Answer:
    """GET a JSON API; any failure becomes an Answer with the error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs only
            return Answer(json.loads(resp.read()))
    except Exception as exc:  # noqa: BLE001 - shown on the page: refused, timeout, HTTP error, bad JSON
        return Answer(error=f"{type(exc).__name__}: {exc}")


def e(value: object) -> str:
    """HTML-escape anything for text and quoted attributes."""
    return html.escape(str(value), quote=True)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _badge(state: str) -> str:
    return f'<span class="badge {e(state)}">{e(state)}</span>'


def _labels(labels: Mapping[str, str], skip: Sequence[str] = ("alertname",)) -> str:
    return "<code>" + e(", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in skip)) + "</code>"


def _failed(what: str, answer: Answer) -> str:
    return f'<p class="error">{e(what)} did not answer: <code>{e(_cut(answer.error or ""))}</code></p>'


def _targets(answer: Answer) -> str:
    if answer.error is not None:
        return _failed("Prometheus /api/v1/targets", answer)
    targets = answer.data["data"]["activeTargets"]
    jobs: dict[str, dict[str, int]] = {}
    down = []
    for t in targets:
        job = t["labels"].get("job", "")
        counts = jobs.setdefault(job, {"up": 0, "down": 0, "unknown": 0})
        counts[t["health"] if t["health"] in counts else "unknown"] += 1
        if t["health"] != "up":
            down.append(t)
    rows = "".join(f"<tr><td>{e(job)}</td><td>{c['up']}</td><td>{c['down']}</td><td>{c['unknown']}</td>"
                   f"<td>{sum(c.values())}</td></tr>" for job, c in sorted(jobs.items()))
    out = (f'<p id="targets-summary">{sum(c["up"] for c in jobs.values())} of {len(targets)} targets up</p>'
           "<table><tr><th>job</th><th>up</th><th>down</th><th>not scraped yet</th><th>total</th></tr>"
           f"{rows}</table>")
    if down:
        items = "".join(f"<tr><td>{_badge(t['health'])}</td><td>{e(t['labels'].get('instance', ''))}</td>"
                        f"<td>{e(t['labels'].get('job', ''))}</td><td><code>{e(_cut(t.get('lastError', '')))}</code>"
                        "</td></tr>" for t in down[:MAX_DOWN])
        more = f'<p class="mute">and {len(down) - MAX_DOWN} more</p>' if len(down) > MAX_DOWN else ""
        out += ("<h3>Not up</h3><table><tr><th>health</th><th>instance</th><th>job</th><th>last error</th></tr>"
                f"{items}</table>{more}")
    return out


def _prometheus_alerts(answer: Answer) -> str:
    if answer.error is not None:
        return _failed("Prometheus /api/v1/alerts", answer)
    alerts = sorted(answer.data["data"]["alerts"], key=lambda a: (a["labels"].get("alertname", ""), a["activeAt"]))
    if not alerts:
        return '<p id="prometheus-alerts-none">None pending or firing.</p>'
    rows = "".join(f"<tr><td>{_badge(a['state'])}</td><td>{e(a['labels'].get('alertname', ''))}</td>"
                   f"<td>{_labels(a['labels'])}</td><td>{e(a['activeAt'][:19].replace('T', ' '))} UTC</td>"
                   f"<td>{e(_cut(a.get('annotations', {}).get('summary', '')))}</td></tr>" for a in alerts)
    return ("<table><tr><th>state</th><th>alert</th><th>labels</th><th>active since</th><th>summary</th></tr>"
            f"{rows}</table>")


def _alertmanager_alerts(answer: Answer) -> str:
    if answer.error is not None:
        return _failed("Alertmanager /api/v2/alerts", answer)
    alerts = sorted(answer.data, key=lambda a: (a["labels"].get("alertname", ""), a["startsAt"]))
    if not alerts:
        return '<p id="alertmanager-alerts-none">None received (an alert arrives once it fires, after its for:).</p>'

    names = {a.get("fingerprint"): a["labels"].get("alertname", "") for a in alerts}

    def why(a: dict[str, Any]) -> str:
        """Which alert inhibits it (Alertmanager gives a fingerprint; the alert is in the same list), or silenced."""
        status = a.get("status", {})
        by = [f"inhibited by {names.get(fp) or fp}" for fp in status.get("inhibitedBy", [])]
        by += [f"silenced ({sid})" for sid in status.get("silencedBy", [])]
        return f'<span class="mute">{e(", ".join(by))}</span>' if by else ""

    rows = "".join(f"<tr><td>{_badge(a.get('status', {}).get('state', 'unknown'))} {why(a)}</td>"
                   f"<td>{e(a['labels'].get('alertname', ''))}</td><td>{_labels(a['labels'])}</td>"
                   f"<td>{e(a['startsAt'][:19].replace('T', ' '))} UTC</td>"
                   f"<td>{e(_cut(a.get('annotations', {}).get('summary', '')))}</td></tr>" for a in alerts)
    return ("<table><tr><th>state</th><th>alert</th><th>labels</th><th>since</th><th>summary</th></tr>"
            f"{rows}</table>")


def render(now: float, targets: Answer, prometheus_alerts: Answer, alertmanager_alerts: Answer,
           links: Sequence[Link]) -> bytes:
    nav = "\n".join(f'<a href="{e(link.url)}">{e(link.label)}</a>' for link in links)
    shown = time.strftime("%H:%M:%S UTC", time.gmtime(now))
    body = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{RELOAD_SECONDS}">'
        "<title>local stack console</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style></head><body>"
        "<header><h1>Local stack console</h1>"
        f'<p class="mute">Prometheus\' targets and alerts and Alertmanager\'s alerts, read from their APIs at '
        f"{e(shown)}; reloads every {RELOAD_SECONDS} s. Served by <code>make run</code> because Debian's "
        "Prometheus has only its classic UI and Debian's Alertmanager none; not part of sensor-sd.</p>"
        f"<nav>{nav}</nav></header>"
        f'<section id="targets"><h2>Targets in Prometheus</h2>{_targets(targets)}</section>'
        f'<section id="prometheus-alerts"><h2>Alerts in Prometheus (pending and firing)</h2>'
        f"{_prometheus_alerts(prometheus_alerts)}</section>"
        f'<section id="alertmanager-alerts"><h2>Alerts in Alertmanager</h2>'
        f"{_alertmanager_alerts(alertmanager_alerts)}</section>"
        "</body></html>\n"
    )
    return body.encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], page: Callable[[], bytes]) -> None:
        super().__init__(address, _Handler)
        self.page = page


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, self.server.page(), HEADERS)
        elif path == "/-/healthy":
            self._send(200, b"OK\n", {"Content-Type": "text/plain; charset=utf-8"})
        else:
            self._send(404, b"not found: the console is at /\n", {"Content-Type": "text/plain; charset=utf-8"})

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """Quiet: the runner's terminal shows the banner, not an access log."""


class Console:
    """The page on `host:port`, served from a thread of the calling process until `stop()`."""

    def __init__(self, host: str, port: int, prometheus: str, alertmanager: str, links: Sequence[Link]) -> None:
        self.prometheus = prometheus.rstrip("/")
        self.alertmanager = alertmanager.rstrip("/")
        self.links = tuple(links)
        self._server = _Server((host, port), self.page)
        self._thread = threading.Thread(target=self._server.serve_forever, name="console", daemon=True)

    def page(self) -> bytes:
        return render(time.time(), fetch(f"{self.prometheus}/api/v1/targets?state=active"),
                      fetch(f"{self.prometheus}/api/v1/alerts"), fetch(f"{self.alertmanager}/api/v2/alerts"),
                      self.links)

    def start(self) -> Console:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
