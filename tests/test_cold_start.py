"""`once` and `check` import only what they use: no aiohttp, server, web config, metrics exposition or simulator.

At 100 hosts a one-shot run is mostly interpreter start and imports, so an
import that creeps back in is the regression; this test names it. (The time
itself is measured by bench/cold_start.py, not here.)
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# Modules a one-shot command has no use for; a prefix stands for the package and its submodules.
# aiohttp's client alone cost more than a 100-host sync (it reads the system CA bundle twice on import):
# the one-shot commands fetch with http.client.
NOT_FOR_ONE_SHOT = ("aiohttp", "bcrypt", "yaml", "prometheus_client.exposition", "sensor_sd.server",
                    "sensor_sd.web", "sensor_sd.status", "sensor_sd.sim", "sensor_sd.publish.http", "http.server")

# Runs the CLI as `sensor-sd` does, then reports its exit code and every module it imported.
WRAPPER = ("import json, sys\nfrom sensor_sd.cli import main\nrc = main(sys.argv[1:])\n"
           "print(json.dumps({'rc': rc, 'modules': sorted(sys.modules)}))")


@pytest.fixture
def inventory_url() -> Iterator[str]:
    """A real HTTP inventory on loopback answering a fixed list of three sensors."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(["sensor_1", "sensor_2", "sensor_3"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/inventory"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _modules_of(args: list[str], env: dict[str, str]) -> tuple[int, list[str], str]:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *args], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.splitlines()[-1])
    return report["rc"], report["modules"], out.stdout


def _unneeded(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(f"{p}.") for p in NOT_FOR_ONE_SHOT)]


@pytest.mark.parametrize("command", ["once", "check"])
def test_one_shot_commands_import_only_what_they_use(command: str, inventory_url: str, tmp_path: Path) -> None:
    target = tmp_path / "targets.json"
    env = {"INVENTORY_URL": inventory_url, "TARGETS_FILE": str(target), "LOG_LEVEL": "warning"}
    rc, modules, stdout = _modules_of([command], env)
    assert rc == 0
    # The run did its work (so the module list is not that of an early exit) ...
    assert {"http.client", "sensor_sd.scheduler", "sensor_sd.publish.file"} <= set(modules)
    if command == "once":
        assert [t for g in json.loads(target.read_bytes()) for t in g["targets"]] == [
            "sensor_1:9100", "sensor_2:9100", "sensor_3:9100"]
    else:
        assert "3 targets, +3 -0 against the current file" in stdout
        assert not target.exists()
    # ... without aiohttp, the server, the web config, the exposition or the simulators.
    assert _unneeded(modules) == []


@pytest.mark.parametrize("command", ["once", "check"])
def test_a_web_config_costs_one_shot_commands_only_its_parser(command: str, inventory_url: str,
                                                              tmp_path: Path) -> None:
    """With WEB_CONFIG_FILE set the file is parsed (a bad one exits 2), but no server, auth or bcrypt is imported."""
    web_config = tmp_path / "web.yml"
    web_config.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    env = {"INVENTORY_URL": inventory_url, "TARGETS_FILE": str(tmp_path / "targets.json"), "LOG_LEVEL": "warning",
           "WEB_CONFIG_FILE": str(web_config)}
    rc, modules, _ = _modules_of([command], env)
    assert rc == 0
    assert "sensor_sd.web.config" in modules and "yaml" in modules  # the file was parsed ...
    unneeded = [m for m in _unneeded(modules) if m not in ("yaml", "sensor_sd.web", "sensor_sd.web.config",
                                                           "sensor_sd.web.tls") and not m.startswith("yaml.")]
    assert unneeded == []  # ... and nothing that only serves it


def test_the_simulators_keep_their_flags() -> None:
    """The simulators' flags are added only for their own command, and still are."""
    for command, flag in (("inventory-server", "--sensors"), ("fleet", "--down")):
        out = subprocess.run([sys.executable, "-m", "sensor_sd", command, "--help"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert flag in out.stdout
