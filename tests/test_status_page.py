"""The status page escapes everything it shows and never shows credentials."""

from __future__ import annotations

import html.parser
from collections.abc import Callable
from typing import Any

import pytest
import requests

from sensor_sd import status
from sensor_sd.config import ListenAddress, Settings, Source, redact_url
from sensor_sd.sim import inventory as inventory_sim
from sensor_sd.sync import Change, SourceStatus
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
        changes=(Change(NOW - 1, EVIL, "add", f"{EVIL}:9100"), Change(NOW - 2, EVIL_ATTR, "remove", EVIL_ATTR)),
        snapshot=Snapshot.build(groups)))
    text = page.decode()
    assert "<script" not in text and "onmouseover=" not in text.replace("&quot; onmouseover=&quot;", "")
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert not [a for a in parsed.attrs if a.startswith("on")]
    shown = "".join(parsed.text)
    assert EVIL in shown  # shown as text, intact, for the human to read
    assert "holding back a list of 7 targets" in shown and "seen 2" in shown


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
    assert "sensor_4:9100" in r.text  # recent adds are listed
