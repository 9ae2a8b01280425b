"""Every URL `make run` prints, and every local-stack URL the docs name, opens a useful page in Chromium.

The URLs are not listed here: they are read from the banner a real
`python -m localstack` prints (every URL in it except the `curl -X`
command, which is an action, not a page), from the links of the console page
that banner leads to, and from README.md and docs/local-stack.md (every
`http://127.0.0.1:PORT...` there, with `$VAR` references expanded; `curl -X`
lines are actions and `VAR=URL` lines are bases for them). A docs URL's
default port is mapped to the part that owns it in this run.

"Useful" means: the final answer is below 400, the page has text, none of the
known error texts (a Go 404, Debian's "no web application" page) and no
script error or failed sub-request. One exception, for Prometheus' own pages
only: Debian packages the classic UI's popper.js as an ES module, which
Chromium reports as a script error on every classic page although the pages
work; so those two messages are tolerated there, and a query URL must show
its result table instead. Screenshots go to a temporary directory;
`make screenshot` puts the console's in docs/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.config import Ports, StackConfig
from localstack.net import admin_call, wait_until
from localstack.stack import Stack

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "docs" / "local-stack.md"]
SCREENSHOT_DIR = os.environ.get("SENSOR_SD_SCREENSHOT_DIR")
URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/[^\s'\"`<>)]*)?")
ASSIGNMENT = re.compile(r"^\s*([A-Z_]+)=(http://\S+)\s*$")
ERROR_TEXTS = ("404 page not found", "does not include a web application", "Not Found", "Internal Server Error",
               "Method Not Allowed")
SENSORS = 10
FOR = "5s"  # every alert's `for:`, so the console shows alerts within seconds
DOWN = ["sensor_1", "sensor_2", "sensor_3"]
# Debian's prometheus packages popper.js as an ES module: every classic page logs these, and works.
DEBIAN_CLASSIC_UI_ERRORS = ("Unexpected token 'export'", "Bootstrap's tooltips require Popper")


def banner_urls(banner: str) -> list[str]:
    return [m.group(0) for line in banner.splitlines() if "curl -X" not in line for m in URL.finditer(line)]


def doc_urls(text: str) -> list[tuple[int, str]]:
    """(default port, path) of every local-stack page a doc names."""
    bases: dict[str, str] = {}
    found = []
    for line in text.splitlines():
        assignment = ASSIGNMENT.match(line)
        if assignment:
            bases[assignment.group(1)] = assignment.group(2)
            continue
        if "curl -X" in line:
            continue
        for name, base in bases.items():
            line = line.replace(f"${name}", base)
        found += [(int(m.group(1)), m.group(2) or "/") for m in URL.finditer(line)]
    return found


def _browser_args() -> list[str]:
    return ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses its sandbox as root


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """A real `make run` runner on ephemeral ports: (its stack's URLs, the banner it printed)."""
    data, ports = tmp_path_factory.mktemp("run") / "data", Ports.ephemeral()
    argv = [sys.executable, "-m", "localstack", "--sensors", str(SENSORS), "--data-dir", str(data),
            "--alert-for", FOR]
    argv += [arg for part, port in ports.items() for arg in (f"--{part}-port", str(port))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:  # until the banner's last line, or the runner's exit
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert proc.poll() is None, "".join(lines)
        yield Stack(StackConfig(data, ports)), "".join(lines)
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_printed_and_documented_url_opens_a_page(running: tuple[Stack, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    stack, banner = running
    by_default_port = {port: part for part, port in Ports().items()}
    printed = banner_urls(banner)
    assert len(printed) >= 5, banner
    documented: dict[str, str] = {}
    for doc in DOCS:
        for port, path in doc_urls(doc.read_text()):
            assert port in by_default_port, f"{doc.name} names port {port}, which no part of the local stack uses"
            documented[stack.url(by_default_port[port], path)] = f"{doc.name}: http://127.0.0.1:{port}{path}"
    assert documented, "the docs name no local-stack URL at all?"
    console = stack.url("console", "/")
    assert console in printed, banner

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by `make test` (apt-get install chromium)"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=_browser_args())
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            current: list[str] = [""]
            prometheus = stack.url("prometheus", "/")

            def script_error(exc: Exception) -> None:
                if not (current[0].startswith(prometheus) and any(t in str(exc) for t in DEBIAN_CLASSIC_UI_ERRORS)):
                    problems.append(f"{current[0]}: script error {exc}")

            page.on("pageerror", script_error)
            page.on("requestfailed", lambda req: problems.append(f"{current[0]}: request failed {req.url}")
                    if not req.url.endswith("/favicon.ico") else None)
            page.on("response", lambda resp: problems.append(f"{current[0]}: HTTP {resp.status} {resp.url}")
                    if resp.status >= 400 and not resp.url.endswith("/favicon.ico") else None)

            def check(url: str, why: str) -> None:
                current[0] = f"{url} ({why})"
                response = page.goto(url, wait_until="load")
                text = (page.text_content("body") or "").strip()
                if response is None or response.status >= 400:
                    problems.append(f"{current[0]}: answered {response.status if response else 'nothing'}")
                if not text:
                    problems.append(f"{current[0]}: empty page")
                problems.extend(f"{current[0]}: shows {err!r}" for err in ERROR_TEXTS if err in text)
                if url.startswith(prometheus) and "expr=" in url:  # the query ran in the page's script
                    try:
                        page.wait_for_selector("text=Total time series", timeout=15_000)
                    except Exception:  # noqa: BLE001 - reported with the other problems
                        problems.append(f"{current[0]}: the query shows no result")
                name = re.sub(r"[^A-Za-z0-9]+", "-", url.split("://", 1)[1]).strip("-")
                page.screenshot(path=str(tmp_path / f"{name}.png"))

            check(console, "banner")
            assert page.text_content("#targets-summary") == f"{SENSORS + 3} of {SENSORS + 3} targets up"
            linked = [str(a.get_attribute("href")) for a in page.locator("nav a").all()]
            assert linked and all(url in printed for url in linked), (linked, printed)
            urls = {url: "banner" for url in printed} | {url: why for url, why in documented.items() if url not in printed}
            for url, why in urls.items():
                if url != console:
                    check(url, why)

            # Three sensors down: the console shows them, then their alerts in Prometheus and Alertmanager.
            admin_call(stack.url("fleet", "/admin/down"), "PUT", {"sensors": DOWN})

            def console_shows_alerts() -> bool:
                page.goto(console, wait_until="load")
                held = page.text_content("#alertmanager-alerts") or ""
                return all(f"instance={name}" in held for name in DOWN)

            wait_until(console_shows_alerts, 90, "SensorDown for 3 sensors on the console", 1.0)
            assert page.text_content("#targets-summary") == f"{SENSORS} of {SENSORS + 3} targets up"
            not_up = page.text_content("#targets table:nth-of-type(2)") or ""
            assert all(name in not_up for name in DOWN), not_up
            assert "SensorDown" in (page.text_content("#prometheus-alerts") or "")
            if SCREENSHOT_DIR:
                page.screenshot(path=str(Path(SCREENSHOT_DIR) / "local-stack-console.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [], "\n".join(problems)
