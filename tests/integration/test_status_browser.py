"""The status page in a real headless Chromium (Debian's, driven by Playwright): renders, no console errors."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import requests

from localstack.net import admin_call, http_get, wait_until
from localstack.stack import Stack

# `make screenshot` sets this to docs/ to refresh the README's picture; tests alone leave docs/ untouched.
SCREENSHOT_DIR = os.environ.get("SENSOR_SD_SCREENSHOT_DIR")


def _browser_args() -> list[str]:
    # Chromium refuses to run its sandbox as root (containers, CI); the page runs no script anyway.
    return ["--no-sandbox"] if os.geteuid() == 0 else []


def test_status_page_in_chromium(http_sd_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by `make test` (apt-get install chromium)"
    env = http_sd_env
    env.refresh()
    count = len(env.sd_targets())
    assert count > 0  # the shared stack serves the simulator's sensors
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=_browser_args())
        try:
            # A phone-sized viewport: the page must read without sideways scrolling.
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            page.on("requestfailed", lambda req: problems.append(f"requestfailed: {req.url}"))
            page.on("response", lambda resp: problems.append(f"HTTP {resp.status}: {resp.url}")
                    if resp.status >= 400 else None)
            response = page.goto(env.sd("/"), wait_until="load")
            assert response is not None and response.status == 200
            assert page.title().startswith("sensor-sd")
            assert page.text_content("#target-count") == str(count)
            last_poll = page.text_content("#last-poll") or ""
            assert "UTC" in last_poll and "ago" in last_poll
            assert page.locator("section.source h2").first.text_content().startswith("inventory")  # type: ignore[union-attr]
            assert page.locator("section.source .badge").first.text_content() in ("success", "unchanged")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"page is {width}px wide on a 390px phone"
            shot = Path(SCREENSHOT_DIR or tmp_path) / "status-page.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000  # a rendered page, not a blank image
            # Following the links works and a JSON page in the browser gets no favicon 404 either.
            page.click('a[href="./targets"]')
            page.wait_for_url("**/targets")
            # The JSON the browser got holds the very targets sensor-sd serves (fetched apart, over plain HTTP).
            shown = json.loads(page.locator("pre").first.text_content() or "null")
            assert sorted(t for g in shown for t in g["targets"]) == sorted(env.sd_targets())
        finally:
            browser.close()
    assert problems == []
    assert requests.get(env.sd("/favicon.ico"), timeout=5).status_code == 204


def test_degraded_and_held_states_in_chromium(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """An emptied inventory held by the guard, then an outage: the page says so, on a phone, without scripts."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium
    stack = make_stack(sensors=100, update_interval=0.5, sd_env={"DROP_HOLD": "600", "REQUEST_TIMEOUT": "1"})
    stack.start(("inventory", "sd"))
    page_text = lambda: http_get(stack.url("sd", "/"))[1].decode()  # noqa: E731
    wait_until(lambda: "first sync" in page_text(), 30, "the first sync on the status page", 0.2)
    admin_call(stack.url("inventory", "/admin/sensors"), "PUT", [])
    wait_until(lambda: "holding back a list of 0 targets" in page_text(), 30, "the guard holding the empty list", 0.2)
    admin_call(stack.url("inventory", "/admin/fault"), "PUT", {"mode": "status", "code": 503})
    wait_until(lambda: "degraded" in page_text(), 30, "the degraded header", 0.2)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=_browser_args())
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            response = page.goto(stack.url("sd", "/"), wait_until="load")
            assert response is not None and response.status == 200
            header = " ".join((page.text_content("header") or "").split())
            assert "degraded: 1 of 1 source failing, serving last known good" in header, header
            assert "drop guard holding back a change" in header
            assert "inventory: serving last known good since" in header and "UTC" in header
            assert "ready" not in header.replace("not ready", "")
            guard = " ".join((page.text_content("section.source dd.guard") or "").split())
            assert "holding back a list of 0 targets" in guard and "of 3 polls" in guard, guard
            assert "held since" in guard and "releases no earlier than" in guard and "(in 1" in guard, guard
            assert page.text_content("#target-count") == "100"  # the hold and the outage lose nothing
            changes = page.locator("ol li")
            assert changes.count() == 1
            assert "+100 targets (first sync)" in (changes.first.text_content() or "")
            assert page.locator("section.source .badge").first.text_content() == "error"
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"page is {width}px wide on a 390px phone"
            shot = Path(SCREENSHOT_DIR or tmp_path) / "status-page-degraded.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert problems == []
