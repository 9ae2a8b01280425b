"""The status page `/`: one server-rendered HTML page for a human on call.

No JavaScript at all (the Content-Security-Policy forbids it), so nothing on
the page can run code even if an inventory serves hostile text: every value is
HTML-escaped, URLs are shown without credentials and with query values
masked (tokens often live there). Built for a phone: one column, no wide
tables, and it reloads itself every 30 s.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sensor_sd.sources import redact_url
from sensor_sd.poller import Result, SourceStatus
from sensor_sd.store import CHANGE_NAMES, Change
from sensor_sd.targets import Snapshot

MAX_TEXT = 300  # longer error messages are cut on the page (the log has them whole)
RELOAD_SECONDS = 30

_STYLE = """
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--mute:#6e7781}
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:56rem;padding:1rem}
h1{font-size:1.4rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:0 0 .5rem;overflow-wrap:anywhere}
header p,nav{margin:.25rem 0}nav a{margin-right:1rem}
.big{font-size:2rem;font-weight:700}.mute{color:var(--mute)}
section{border:1px solid #8884;border-radius:.5rem;padding:.75rem 1rem;margin:1rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}dt{color:var(--mute)}
dd{margin:0;overflow-wrap:anywhere;min-width:0}code{font-size:.9em;overflow-wrap:anywhere}
.badge{display:inline-block;border-radius:1rem;padding:0 .6rem;font-size:.85rem;color:#fff;vertical-align:middle}
.success,.unchanged{background:var(--ok)}.error{background:var(--bad)}.held,.none{background:var(--warn)}
ol{list-style:none;padding:0;margin:0}li{padding:.2rem 0;border-bottom:1px solid #8882;overflow-wrap:anywhere}
.add{color:var(--ok)}.remove{color:var(--bad)}.degraded{color:var(--bad)}.holding{color:var(--warn)}
@media (max-width:30rem){dl{grid-template-columns:1fr}dt{margin-top:.4rem}}
"""


def page_headers(style: str) -> Mapping[str, str]:
    """Headers of a server-rendered page with one inline style and no script: the policy admits
    exactly that style (by its hash) and nothing else, so an injected tag could do nothing."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; "
                                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    }


HEADERS = page_headers(_STYLE)


@dataclass(frozen=True, slots=True)
class View:
    """Everything the page shows, taken at one instant from the store and the pollers."""

    now: float
    version: str
    sources: tuple[SourceStatus, ...]
    changes: tuple[Change, ...]
    snapshot: Snapshot | None
    update_interval: float
    confirmations: int


def e(value: object) -> str:
    """HTML-escape anything for text and quoted attributes."""
    return html.escape(str(value), quote=True)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _ago(seconds: float) -> str:
    return "in the future (clock skew?)" if seconds < 0 else f"{_span(seconds)} ago"


def _time(ts: float | None, now: float, *, future: bool = False) -> str:
    """A UTC time and how long ago it was (or, for a `future` deadline, how long until it)."""
    if ts is None:
        return '<span class="mute">never</span>'
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    rel = (f"in {_span(ts - now)}" if ts > now else "reached") if future else _ago(now - ts)
    return f'<time datetime="{e(iso)}">{e(shown)}</time> <span class="mute">({e(rel)})</span>'


def _guard(s: SourceStatus, confirmations: int, now: float) -> str:
    if s.guard_held is None:
        return "idle"
    return (f'<span class="holding">holding back a list of {e(s.guard_held)} targets</span> · '
            f"seen {e(s.guard_seen)} of {e(confirmations)} polls · held since {_time(s.guard_since, now)} · "
            f"releases no earlier than {_time(s.guard_release, now, future=True)}, "
            "if the same list keeps coming")


def _serving(s: SourceStatus, now: float) -> str:
    """What a failing source still serves, and since when it has not been refreshed."""
    if s.targets is None:
        return f"{e(s.name)}: no targets known yet"
    if s.last_success is None:
        return f"{e(s.name)}: serving the targets file loaded at start (no successful poll yet)"
    return f"{e(s.name)}: serving last known good since {_time(s.last_success, now)}"


def _source(s: SourceStatus, view: View) -> str:
    result = s.last_result or "none"
    label = s.last_result or "not polled yet"
    error = f"<code>{e(_cut(s.last_error))}</code>" if s.last_error else '<span class="mute">none</span>'
    targets = "—" if s.targets is None else f"{s.targets}"
    return (
        f'<section class="source"><h2>{e(s.name)} <span class="badge {e(result)}">{e(label)}</span></h2><dl>'
        f"<dt>Inventory</dt><dd><code>{e(redact_url(s.url))}</code></dd>"
        f'<dt>Targets</dt><dd class="targets">{e(targets)}</dd>'
        f'<dt>Last poll</dt><dd class="last-poll">{_time(s.last_poll, view.now)}</dd>'
        f"<dt>Last success</dt><dd>{_time(s.last_success, view.now)}</dd>"
        f"<dt>Last error</dt><dd>{error}</dd>"
        f'<dt>Drop guard</dt><dd class="guard">{_guard(s, view.confirmations, view.now)}</dd>'
        "</dl></section>"
    )


def _change(c: Change) -> str:
    """One line per applied list: the counts, then the names when few (a first sync: the count only)."""
    if c.first:
        return f'<span class="add">+{e(c.added)} target{"s" if c.added != 1 else ""} (first sync)</span>'
    counts = " ".join(([f"+{c.added}"] if c.added else []) + ([f"−{c.removed}"] if c.removed else []))
    line = f'<strong>{e(counts)} target{"s" if c.added + c.removed != 1 else ""}</strong>'
    names = [f'<span class="add">+ {e(t)}</span>' for t in c.added_names]
    names += [f'<span class="remove">− {e(t)}</span>' for t in c.removed_names]
    more = c.added + c.removed > CHANGE_NAMES or len(names) < c.added + c.removed
    return line + (": " + ", ".join(names) + (" …" if more else "") if names else "")


def _changes(changes: Iterable[Change], now: float) -> str:
    # Newest first by time; among equal times the later recorded first (sorted() is stable).
    ordered = sorted(reversed(tuple(changes)), key=lambda c: c.time, reverse=True)
    items = [f'<li>{_change(c)} <span class="mute">{e(c.source)} · {_time(c.time, now)}</span></li>'
             for c in ordered]
    if not items:
        return '<p class="mute">No targets added or removed since sensor-sd started.</p>'
    return "<ol>" + "".join(items) + "</ol>"


def render(view: View) -> bytes:
    snap = view.snapshot
    count = snap.count if snap is not None else 0
    failing = [s for s in view.sources if s.last_result == Result.ERROR]
    n = len(view.sources)
    if snap is None:
        ready = "<strong>not ready</strong>: no good inventory snapshot yet, /targets answers 503"
    elif failing:
        ready = (f'<strong class="degraded">degraded</strong>: {len(failing)} of {n} source{"s" if n != 1 else ""} '
                 "failing, serving last known good")
    else:
        ready = "ready"
    if any(s.guard_held is not None for s in view.sources):
        ready += ' · <span class="holding">drop guard holding back a change</span>'
    serving = "".join(f'<p class="degraded">{_serving(s, view.now)}</p>' for s in failing) if snap else ""
    polls = [s.last_poll for s in view.sources if s.last_poll is not None]
    last_poll = max(polls) if polls else None
    body = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{RELOAD_SECONDS}">'
        f"<title>sensor-sd · {count} targets</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style></head><body>"
        f'<header><h1>sensor-sd <span class="mute">{e(view.version)}</span></h1>'
        f'<p><span class="big" id="target-count">{count}</span> targets from {len(view.sources)} '
        f'source{"s" if len(view.sources) != 1 else ""} · {ready}</p>{serving}'
        f'<p>Last poll: <span id="last-poll">{_time(last_poll, view.now)}</span> · '
        f"every {e(f'{view.update_interval:g}')} s</p></header>"
        '<nav><a href="./targets">/targets</a><a href="./metrics">/metrics</a>'
        '<a href="./-/ready">/-/ready</a></nav>'
        + "".join(_source(s, view) for s in view.sources)
        + f"<section><h2>Recent changes</h2>{_changes(view.changes, view.now)}</section>"
        + "</body></html>\n"
    )
    return body.encode("utf-8")
