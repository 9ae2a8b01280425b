"""Secrets never leak: inventory token, INVENTORY_URL credentials and basic-auth passwords.

A real `sensor-sd run` (debug logging) polls the inventory simulator with a
bearer token and user:password in INVENTORY_URL, serves with basic auth, and
goes through every inventory failure mode plus wrong-password clients. Then
every place a secret could surface is collected (the process' log, /metrics,
the status page, /targets, /-/refresh answers, `check`/`once` output,
configuration errors) and grepped for each secret, its base64 Basic form and
its bcrypt hash.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import requests

from sensor_sd.config import load
from sensor_sd.sources import Source, redact_url
from sensor_sd.errors import ConfigError
from localstack.net import http_get, wait_until
from localstack.procs import sensor_sd_argv
from localstack.stack import Stack

TOKEN = "tok-3f9a-SECRET-BEARER"
URL_USER, URL_PASSWORD = "invuser", "url-pa55-SECRET"
WEB_USER, WEB_PASSWORD = "prometheus", "basic-pa55-SECRET"
WRONG_PASSWORD = "wrong-pa55-SECRET"
PLAIN_IN_CONFIG = "plaintext-in-config-SECRET"
WEB_HASH = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
SECRETS = [TOKEN, URL_PASSWORD, WEB_PASSWORD, WRONG_PASSWORD, PLAIN_IN_CONFIG,
           base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode(),
           base64.b64encode(f"{WEB_USER}:{WEB_PASSWORD}".encode()).decode(), WEB_HASH]
FAULTS = [{"mode": "status", "code": 401, "count": 2}, {"mode": "status", "code": 500, "count": 1},
          {"mode": "reset", "count": 1}, {"mode": "garbage", "count": 1}, {"mode": "hang", "seconds": 5, "count": 1},
          {"mode": "redirect_loop", "count": 12}, {"mode": "html", "count": 1}, {"mode": "empty", "count": 1},
          {"mode": "oversized", "bytes": 2 * 1024 * 1024, "count": 1}, {"mode": "nonutf8", "count": 1}]


def assert_clean(where: str, text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} shows secrets {leaked}"


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:p@inv:1337/inventory", "http://inv:1337/inventory"),
    ("https://user@inv/x?y=1#z", "https://inv/x?y=***"),  # query values may be tokens
    ("http://u:p%40ss@[::1]:8080/i", "http://[::1]:8080/i"),
    ("http://inv:1337/inventory", "http://inv:1337/inventory"),
    ("http://:only-password@inv/i", "http://inv/i"),
])
def test_display_url_redacts_credentials(url: str, shown: str) -> None:
    assert Source("s", url).display_url == shown == redact_url(url)


def test_startup_settings_never_hold_credentials_in_labels() -> None:
    settings = load({}, {"INVENTORY_URL": f"http://{URL_USER}:{URL_PASSWORD}@inv:1337/inventory"})
    assert settings.sources[0].name == "inv"  # the `source` label: the host, never the userinfo
    assert_clean("display_url", settings.sources[0].display_url)


@pytest.mark.parametrize("value", [
    f"http://{URL_USER}:{URL_PASSWORD}@inv:99999/inventory",
    f"inv=http://{URL_USER}:{URL_PASSWORD}@inv/i,inv=http://{URL_USER}:{URL_PASSWORD}@inv2/i",
    f"ftp://{URL_USER}:{URL_PASSWORD}@inv/i",
    f"http://{URL_USER}:{URL_PASSWORD}@inv/ i",
])
def test_config_errors_redact_url_credentials(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({}, {"INVENTORY_URL": value})
    assert "INVENTORY_URL" in str(err.value)
    assert_clean("the INVENTORY_URL error", str(err.value))
    done = subprocess.run([*sensor_sd_argv("once")], env={"INVENTORY_URL": value, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert_clean("sensor-sd once stderr", done.stdout + done.stderr)


def test_web_config_errors_do_not_show_passwords(tmp_path: Path) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  {WEB_USER}: {PLAIN_IN_CONFIG}\n")
    with pytest.raises(ConfigError) as err:
        load({}, {"WEB_CONFIG_FILE": str(cfg)})
    assert_clean("the WEB_CONFIG_FILE error", str(err.value))


def _get(url: str, password: str | None) -> requests.Response:
    auth = (WEB_USER, password) if password else None
    return requests.get(url, auth=auth, timeout=10)


def test_token_and_url_credentials_together_are_a_config_error(tmp_path: Path) -> None:
    """Both would be sent as Authorization: aiohttp refuses every request, so it must fail at start."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with pytest.raises(ConfigError) as err:
        load({}, {"INVENTORY_URL": f"http://{URL_USER}:{URL_PASSWORD}@inv/i", "INVENTORY_TOKEN_FILE": str(token_file)})
    assert str(err.value).startswith("invalid INVENTORY_TOKEN_FILE=")
    assert_clean("the conflict error", str(err.value))


@pytest.mark.parametrize("auth", ["token", "url"])
def test_secrets_never_surface(make_stack: Callable[..., Stack], tmp_path: Path, auth: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {WEB_USER}: {WEB_HASH}\n"
                   "sensor_sd:\n  unauthenticated_paths: [/-/healthy, /-/ready]\n")
    stack = make_stack(update_interval=0.2)
    inv = stack.url("inventory", "/inventory")
    sd_env = {"WEB_CONFIG_FILE": str(web), "LOG_LEVEL": "debug", "REQUEST_TIMEOUT": "1",
              "MAX_RESPONSE_BYTES": str(1024 * 1024)}
    if auth == "token":
        sd_env.update(INVENTORY_URL=f"inventory={inv}", INVENTORY_TOKEN_FILE=str(token_file))
    else:
        sd_env.update(INVENTORY_URL="inventory=" + inv.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@"))
    stack.cfg.sd_env = sd_env
    stack.start(("inventory", "sd"))
    sd = stack.url("sd")
    wait_until(lambda: http_get(sd + "/-/ready")[0] == 200, 30, "sensor-sd ready")
    seen: list[tuple[str, str]] = []

    def collect(where: str, resp: requests.Response) -> None:
        seen.append((where, f"{resp.status_code} {dict(resp.headers)} {resp.text}"))

    for path in ("/metrics", "/targets", "/"):
        resp = _get(sd + path, WEB_PASSWORD)
        assert resp.status_code == 200, (path, resp.status_code)
        collect(path, resp)
        for wrong in (WRONG_PASSWORD, TOKEN):
            resp = _get(sd + path, wrong)
            assert resp.status_code == 401
            collect(f"{path} with a wrong password", resp)
        collect(f"{path} without a password", _get(sd + path, None))
    for fault in FAULTS:
        requests.put(stack.url("inventory", "/admin/fault"), json=fault, timeout=5).raise_for_status()
        wait_until(lambda: requests.get(stack.url("inventory", "/admin/state"), timeout=5).json()["fault"] is None, 30,
                   f"fault {fault['mode']} served")
    resp = requests.post(sd + "/-/refresh", auth=(WEB_USER, WEB_PASSWORD), timeout=30)
    collect("/-/refresh", resp)
    stack.stop("inventory")  # refused: the error names the host, never the userinfo
    resp = requests.post(sd + "/-/refresh", auth=(WEB_USER, WEB_PASSWORD), timeout=30)
    assert resp.status_code == 502
    collect("/-/refresh while refused", resp)
    for path in ("/metrics", "/"):
        collect(f"{path} after failures", _get(sd + path, WEB_PASSWORD))
    stack.stop("sensor-sd")  # first: `once` is a second writer of the daemon's file, refused while it runs
    env = {**stack.sd_env(), "TARGETS_FILE": str(stack.cfg.targets_file)}
    for command in ("check", "once"):
        done = subprocess.run(sensor_sd_argv(command), env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        seen.append((f"sensor-sd {command}", done.stdout + done.stderr))
    log = (stack.logdir / "sensor-sd.log").read_text()
    seen.append(("the sensor-sd log", log))
    # The log did record the failures, with the redacted URL: the check is not vacuous.
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    reasons = {e.get("reason") for e in events if e.get("result") == "error"}
    assert {"http_status", "unreachable", "decode", "timeout", "too_large"} <= reasons, reasons
    assert any(e.get("url", "").startswith("http://127.0.0.1:") for e in events)
    assert any("401" in e.get("error", "") for e in events)
    for where, text in seen:
        assert_clean(where, text)
    assert_clean("the targets file", stack.cfg.targets_file.read_text())


def test_token_with_a_line_break_is_not_echoed(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """A token file with an embedded newline cannot be sent; the error must not quote the token."""
    token_file = tmp_path / "token"
    token_file.write_text(f"abc\n{TOKEN}\n")
    stack = make_stack()
    stack.start(("inventory",))
    env = {**stack.sd_env(), "INVENTORY_TOKEN_FILE": str(token_file), "LOG_LEVEL": "debug"}
    done = subprocess.run(sensor_sd_argv("once"), env=env, capture_output=True, text=True, timeout=60)
    # The request cannot be built: the one poll fails (exit 1) with one logged error, and nothing else.
    assert done.returncode == 1, done.stdout + done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(e["source"], e["result"]) for e in events if "result" in e] == [("inventory", "error")], done.stderr
    assert_clean("sensor-sd once with a broken token", done.stdout + done.stderr)
