"""The status page escapes everything it shows and never shows credentials."""

from __future__ import annotations

import html.parser
from collections.abc import Callable
from typing import Any

import pytest
import requests

from sensor_sd import status
from sensor_sd.config import ListenAddress, Settings
from sensor_sd.sources import Source, redact_url
from sensor_sd.sim import inventory as inventory_sim
from sensor_sd.poller import SourceStatus
from sensor_sd.store import Change
from sensor_sd.targets import Snapshot, TargetGroup

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script>'
EVIL_ATTR = '" onmouseover="alert(1)" x="'


class _Collect(html.parser.HTMLParser):
    """Every start tag and attribute of a page, to prove no markup came from the data."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(name for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: bytes) -> _Collect:
    p = _Collect()
    p.feed(page.decode("utf-8"))
    return p


def _source(name: str, url: str, **kw: object) -> SourceStatus:
    base: dict[str, object] = dict(targets=3, last_poll=NOW - 5, last_result="success", last_success=NOW - 5,
                                   last_error=None, guard_held=None, guard_seen=0)
    base.update(kw)
    return SourceStatus(name, url, **base)  # type: ignore[arg-type]


def view(sources: tuple[SourceStatus, ...], changes: tuple[Change, ...] = (),
         snapshot: Snapshot | None = None) -> status.View:
    return status.View(now=NOW, version="0.1.0", sources=sources, changes=changes, snapshot=snapshot,
                       update_interval=30, confirmations=3)


def test_hostile_values_are_escaped() -> None:
    groups = (TargetGroup(EVIL, (f"{EVIL}:9100", "ok:9100"), (("source", EVIL),)),)
    page = status.render(view(
        (_source(EVIL, f"http://inv/x?{EVIL}", last_error=f"decode: {EVIL}{EVIL_ATTR}", last_result=EVIL_ATTR,
                 guard_held=7, guard_seen=2),),
        changes=(Change(NOW - 1, EVIL, 1, 0, (f"{EVIL}:9100",)), Change(NOW - 2, EVIL_ATTR, 0, 1, (), (EVIL_ATTR,))),
        snapshot=Snapshot.build(groups)))
    text = page.decode()
    assert "<script" not in text and "onmouseover=" not in text.replace("&quot; onmouseover=&quot;", "")
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert not [a for a in parsed.attrs if a.startswith("on")]
    shown = "".join(parsed.text)
    assert EVIL in shown  # shown as text, intact, for the human to read
    assert "holding back a list of 7 targets" in shown and "seen 2 of 3 polls" in shown


def test_long_errors_are_cut() -> None:
    page = status.render(view((_source("inv", "http://inv/", last_error="x" * 10_000, last_result="error"),)))
    assert b"x" * status.MAX_TEXT in page and b"x" * (status.MAX_TEXT + 1) not in page


@pytest.mark.parametrize(("url", "secrets"), [
    ("http://admin:hunter2@inv:1337/inventory", ["admin", "hunter2"]),
    ("https://user%40corp:p%3Ass@inv/inventory", ["user", "p%3Ass", "p:ss"]),
    ("https://inv/inventory?token=hunter2&x=1", ["hunter2"]),
    ("https://a:b@[::1]:8443/inventory?api_key=hunter2#frag-secret", ["hunter2", "frag-secret", "a:b"]),
])
def test_credentials_never_shown(url: str, secrets: list[str]) -> None:
    page = status.render(view((_source("inv", url),))).decode()
    for secret in secrets:
        assert secret not in page
    assert "inv" in redact_url(url)


def test_not_ready_and_empty_states() -> None:
    page = status.render(view((_source("inv", "http://inv/", targets=None, last_poll=None, last_result=None,
                                       last_success=None),)))
    text = "".join(parse(page).text)
    assert "not ready" in text and "never" in text and "not polled yet" in text
    assert "No targets added or removed" in text


def test_page_basics_for_a_browser_and_a_phone() -> None:
    page = status.render(view((_source("inv", "http://inv/"),), snapshot=Snapshot.build(
        (TargetGroup("inv", ("a:1", "b:1", "c:1"), (("source", "inv"),)),)))).decode()
    assert page.startswith("<!doctype html>")
    assert 'name="viewport"' in page and 'rel="icon" href="data:,"' in page
    assert '<span class="big" id="target-count">3</span>' in page
    assert 'href="./targets"' in page and 'href="./metrics"' in page
    assert "2027-01-15 07:59:55 UTC</time> <span class=\"mute\">(5 s ago)</span>" in page


# --- end to end: a real server with a credentialed, hostile INVENTORY_URL ---------


@pytest.fixture
def live(serve_sd: Callable[..., Any]) -> tuple[str, str]:
    def settings_for(inv_url: str) -> Settings:
        url = inv_url.replace("http://", "http://scott:tiger@") + "/inventory?token=s3cr3t&n=<b>bold</b>"
        return Settings(sources=(Source("inv", url),), targets_file=None, listen_address=ListenAddress("127.0.0.1", 0))

    sd = serve_sd(inventory_sim.make_app(5), settings_for)
    return f"http://127.0.0.1:{sd.port}", "tiger"


def test_live_page_hides_credentials_and_escapes_url(live: tuple[str, str]) -> None:
    base, password = live
    r = requests.get(f"{base}/", timeout=5)
    assert r.status_code == 200
    assert password not in r.text and "scott" not in r.text and "s3cr3t" not in r.text
    assert "<b>" not in r.text
    assert '<span class="big" id="target-count">5</span>' in r.text
    assert "+5 targets (first sync)" in r.text  # one line, not five
    assert "sensor_4:9100" not in r.text


# --- issue 13 #11: degraded state, time order, one line per sync, the guard's hold -----------------


def text_of(page: bytes) -> str:
    """The visible text of the body, whitespace collapsed (the <head> holds the style sheet)."""
    return " ".join("".join(parse(page.split(b"</head>", 1)[1]).text).split())


SNAP = Snapshot.build((TargetGroup("inv", ("a:1", "b:1", "c:1"), (("source", "inv"),)),))


def test_header_shows_degraded_while_the_last_poll_failed() -> None:
    page = text_of(status.render(view((_source("inv", "http://inv/", last_result="error", last_success=NOW - 600,
                                                last_error="unreachable: connection refused: inv:1337"),),
                                      snapshot=SNAP)))
    assert "degraded" in page and "· ready" not in page
    assert "serving last known good since 2027-01-15 07:50:00 UTC (10 min ago)" in page
    assert "1 of 1 source failing" in page


def test_degraded_names_each_failing_source() -> None:
    page = text_of(status.render(view((_source("north", "http://n/"),
                                       _source("south", "http://s/", last_result="error", last_success=None)),
                                      snapshot=SNAP)))
    assert "1 of 2 sources failing" in page
    assert "south: serving the targets file loaded at start (no successful poll yet)" in page


def test_ready_when_every_source_is_fine() -> None:
    page = text_of(status.render(view((_source("inv", "http://inv/"),), snapshot=SNAP)))
    assert "· ready" in page and "degraded" not in page


def test_recent_changes_newest_first_by_time() -> None:
    changes = (Change(NOW - 300, "inv", 1, 0, ("sensor_99:9100",)),
               Change(NOW - 10, "inv", 1, 0, ("sensor_9:9100",)),
               Change(NOW - 120, "inv", 0, 1, (), ("sensor_100:9100",)))
    page = text_of(status.render(view((_source("inv", "http://inv/"),), changes=changes, snapshot=SNAP)))
    order = [page.index(name) for name in ("sensor_9:9100", "sensor_100:9100", "sensor_99:9100")]
    assert order == sorted(order), page


def test_a_first_sync_is_one_line() -> None:
    first = Change(NOW - 5, "inv", 100, 0, tuple(f"sensor_{i}:9100" for i in range(status.CHANGE_NAMES)), (),
                   first=True)
    page = status.render(view((_source("inv", "http://inv/"),), changes=(first,), snapshot=SNAP))
    text = text_of(page)
    assert "+100 targets (first sync)" in text
    assert "sensor_0:9100" not in text
    assert page.count(b"<li>") == 1


def test_a_large_sync_is_one_line_with_examples() -> None:
    big = Change(NOW - 5, "inv", 250, 3, ("n_0:9100", "n_1:9100", "n_2:9100"), ("o_0:9100",))
    page = status.render(view((_source("inv", "http://inv/"),), changes=(big,), snapshot=SNAP))
    text = text_of(page)
    assert "+250 −3 targets" in text and "n_0:9100" in text and "…" in text
    assert page.count(b"<li>") == 1


def test_guard_hold_shows_polls_since_and_release() -> None:
    held = _source("inv", "http://inv/", guard_held=0, guard_seen=1, guard_since=NOW - 60, guard_release=NOW + 240)
    text = text_of(status.render(view((held,), snapshot=SNAP)))
    assert "holding back a list of 0 targets" in text
    assert "seen 1 of 3 polls" in text
    assert "held since 2027-01-15 07:59:00 UTC (1 min ago)" in text
    assert "releases no earlier than 2027-01-15 08:04:00 UTC (in 4 min)" in text
    assert "drop guard holding back a change" in text  # the header says so too
