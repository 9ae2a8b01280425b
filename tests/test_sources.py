"""SOURCES_FILE: the file's format and its strict validation (one clear line per mistake)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensor_sd import config, sources
from sensor_sd.errors import ConfigError
from sensor_sd.sources import Source


def write(tmp_path: Path, doc: object, name: str = "sources.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def load(path: Path, **env: str) -> config.Settings:
    return config.load({}, {"SOURCES_FILE": str(path), **env})


def refused(path: Path, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, **env)
    message = str(info.value)
    assert "\n" not in message and message.startswith("invalid SOURCES_FILE=")
    return message


def test_json_sources_with_every_field(tmp_path: Path) -> None:
    token = tmp_path / "t.token"
    token.write_text("secret\n")
    path = write(tmp_path, {"sources": [
        {"name": "store7", "url": "https://inv.example/7", "labels": {"store": "7", "region": "eu-west"},
         "token_file": "t.token", "interval": 60},
        {"name": "store8", "url": "http://inv.example/8"},
    ]})
    settings = load(path)
    first, second = settings.sources
    assert first == Source("store7", "https://inv.example/7", labels=(("region", "eu-west"), ("store", "7")),
                                  token_file=token, interval=60.0)
    assert second == Source("store8", "http://inv.example/8")
    assert settings.sources_file == path


def test_yaml_and_a_bare_list(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: a\n  url: http://127.0.0.1:1/inv\n  labels:\n    store: '1'\n", "s.yaml")
    assert load(path).sources == (Source("a", "http://127.0.0.1:1/inv", labels=(("store", "1"),)),)


def test_json_works_without_pyyaml(tmp_path: Path) -> None:
    """PyYAML is an optional extra: a JSON file must load where it is absent (a fresh interpreter that blocks it)."""
    path = write(tmp_path, [{"name": "a", "url": "http://127.0.0.1:1/inv"}])
    code = ("import sys; sys.modules['yaml'] = None\n"
            "from sensor_sd import config\n"
            f"print(config.load({{}}, {{'SOURCES_FILE': {str(path)!r}}}).sources[0].name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "a"
    yaml_path = write(tmp_path, "- name: a\n  url: http://127.0.0.1:1/inv\n", "s.yaml")
    code = code.replace(repr(str(path)), repr(str(yaml_path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "YAML needs PyYAML" in out.stderr


def test_setting_both_is_a_configuration_error(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "a", "url": "http://127.0.0.1:1/inv"}])
    assert "not together with INVENTORY_URL" in refused(path, INVENTORY_URL="a=http://x/1,b=http://x/2")
    assert "not together with INVENTORY_URL" in refused(path, INVENTORY_URL="http://x/1")
    with pytest.raises(ConfigError, match="INVENTORY_URL"):
        config.load({"sources": "http://x/1"}, {"SOURCES_FILE": str(path)})


def test_an_empty_inventory_url_gives_way_to_the_sources_file(tmp_path: Path) -> None:
    """A compose override or a ConfigMap can only empty a variable, not remove it: empty means unset here."""
    path = write(tmp_path, [{"name": "a", "url": "http://127.0.0.1:1/inv"}])
    assert [s.name for s in config.load({}, {"SOURCES_FILE": str(path), "INVENTORY_URL": ""}).sources] == ["a"]
    with pytest.raises(ConfigError, match="INVENTORY_URL"):  # without a sources file, empty stays an error
        config.load({}, {"INVENTORY_URL": ""})


def test_sources_file_decides_whether_inventory_url_is_read(tmp_path: Path) -> None:
    """SOURCES_FILE is settled first (flag over environment); only then is INVENTORY_URL read or required empty."""
    path = write(tmp_path, [{"name": "a", "url": "http://127.0.0.1:1/inv"}])
    # An emptied --sources-file wins over the environment's: INVENTORY_URL is the sources, and empty is an error
    # (never a run with no source at all).
    with pytest.raises(ConfigError) as info:
        config.load({"sources_file": ""}, {"SOURCES_FILE": str(path), "INVENTORY_URL": ""})
    assert str(info.value).startswith("invalid INVENTORY_URL=") and "\n" not in str(info.value)
    # An emptied --inventory-url gives way to the sources file like an emptied variable does.
    assert [s.name for s in config.load({"sources": ""}, {"SOURCES_FILE": str(path)}).sources] == ["a"]
    # With a sources file, INVENTORY_URL is never parsed: a conflicting value is named as such, whatever it holds.
    assert "not together with INVENTORY_URL" in refused(path, INVENTORY_URL="not a url \x1b[31m")


GOOD = {"name": "s", "url": "http://127.0.0.1:1/inv"}


@pytest.mark.parametrize(("doc", "words"), [
    ({"sources": [GOOD], "extra": 1}, "top level: unknown key 'extra'"),
    ({"sources": []}, "at least one source"),
    ({"sources": "x"}, "a list of sources"),
    (42, "a list of sources"),
    ([GOOD, GOOD], "source #2 (s): duplicate name (also source #1)"),
    ([{**GOOD, "lables": {}}], "source #1 (s): unknown key 'lables'"),
    ([{"url": GOOD["url"]}], "source #1: name: None"),
    ([{**GOOD, "name": ""}], "name: ''"),
    ([{**GOOD, "name": 7}], "name: 7"),
    ([{**GOOD, "name": "-x"}], "name: '-x'"),
    ([{**GOOD, "name": "a" * 64}], "is not 1-63"),
    ([{**GOOD, "name": "a b"}], "name: 'a b'"),
    ([{**GOOD, "url": "ftp://h/x"}], "url: 'ftp://h/x' is not an http(s) URL"),
    ([{**GOOD, "url": "http://h:99999/"}], "url:"),
    ([{**GOOD, "url": "http://h/\n"}], "url:"),
    ([{**GOOD, "url": "http:///nohost"}], "url:"),
    ([{**GOOD, "url": ["http://h/"]}], "url: ['http://h/']"),
    ([{**GOOD, "labels": {"__address__": "x"}}], "'__address__' is reserved"),
    ([{**GOOD, "labels": {"__meta_x": "x"}}], "reserved"),
    ([{**GOOD, "labels": {"source": "x"}}], "'source' is set from the name"),
    ([{**GOOD, "labels": {"1store": "x"}}], "'1store' is not a Prometheus label name"),
    ([{**GOOD, "labels": {"st-ore": "x"}}], "not a Prometheus label name"),
    ([{**GOOD, "labels": {"störe": "x"}}], "not a Prometheus label name"),
    ([{**GOOD, "labels": {"store": 7}}], "store=7 is not a string"),
    ([{**GOOD, "labels": {"store": "a\nb"}}], "is not a string without control characters"),
    ([{**GOOD, "labels": ["store"]}], "labels: a mapping"),
    ([{**GOOD, "interval": 0}], "interval: 0 is not a number of seconds"),
    ([{**GOOD, "interval": -1}], "interval: -1"),
    ([{**GOOD, "interval": "30"}], "interval: '30'"),
    ([{**GOOD, "interval": True}], "interval: True"),
    ([{**GOOD, "interval": 1e300}], "interval:"),
    ([{**GOOD, "token_file": "/nonexistent/token"}], "token_file: '/nonexistent/token' is not readable"),
    ([{**GOOD, "ca_file": ""}], "ca_file: '' is not a file path"),
    (["http://h/"], "source #1: a mapping"),
])
def test_invalid_files_are_refused_naming_entry_and_field(tmp_path: Path, doc: object, words: str) -> None:
    assert words in refused(write(tmp_path, doc))


def test_credentials_never_shown_in_errors(tmp_path: Path) -> None:
    message = refused(write(tmp_path, [{**GOOD, "url": "ftp://user:hunter2@h/x?token=abc"}]))
    assert "hunter2" not in message and "abc" not in message


def test_duplicate_keys_and_malformed_text_are_refused(tmp_path: Path) -> None:
    assert "duplicate key 'url'" in refused(write(tmp_path, '[{"name": "a", "url": "http://h/", "url": "http://g/"}]'))
    assert "duplicate key 'url'" in refused(write(tmp_path, "- name: a\n  url: http://h/\n  url: http://g/\n", "s.yml"))
    assert "valid JSON" in refused(write(tmp_path, '[{"name": "a",'))
    assert "valid YAML" in refused(write(tmp_path, "- name: [a\n", "s.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"name": "\xff"}]')
    assert "UTF-8" in refused(bad)
    assert "a readable file" in refused(tmp_path / "missing.json")


def test_a_bad_ca_file_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    assert "ca_file: " in refused(write(tmp_path, [{**GOOD, "ca_file": str(ca)}]))


def test_read_gives_a_digest_of_the_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, [GOOD])
    first = sources.read(path)
    assert sources.read(path).digest == first.digest
    write(tmp_path, [{**GOOD, "interval": 3}])
    assert sources.read(path).digest != first.digest


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, [GOOD, GOOD])
    out = subprocess.run([sys.executable, "-m", "sensor_sd", "once"], capture_output=True, text=True,
                         env={"SOURCES_FILE": str(path), "PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f'sensor-sd: invalid SOURCES_FILE="{path}": source #2 (s): duplicate name (also source #1)']


def test_each_source_uses_its_own_token_and_ca(tmp_path: Path) -> None:
    """One client, one pool: source a sends its token over TLS trusted by its CA; source b sends none."""
    import asyncio
    import ssl

    import trustme
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from sensor_sd.inventory import Client, Validators

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "a.token").write_text("token-of-a\n")
    seen: dict[str, str | None] = {}

    async def handler(request: web.Request) -> web.Response:
        seen[request.match_info["name"]] = request.headers.get("Authorization")
        return web.Response(body=b'["s"]')

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{name}", handler)
        tls, plain = TestServer(app, host="127.0.0.1"), TestServer(app, host="127.0.0.1")
        await tls.start_server(ssl=server_ctx)
        await plain.start_server()
        try:
            path = write(tmp_path, [
                {"name": "a", "url": f"https://localhost:{tls.port}/a", "token_file": "a.token", "ca_file": "ca.pem"},
                {"name": "b", "url": f"http://127.0.0.1:{plain.port}/b"}])
            settings = load(path, TARGETS_FILE="")
            async with Client(settings) as client:
                for source in settings.sources:
                    assert (await client.fetch(source, Validators())).body == b'["s"]'
        finally:
            await tls.close()
            await plain.close()

    asyncio.run(main())
    assert seen == {"a": "Bearer token-of-a", "b": None}


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "sources.fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(fifo)
    assert "not a regular file" in refused(Path("/dev/zero"))
    token = tmp_path / "token.fifo"
    os.mkfifo(token)
    assert "token_file: " in refused(write(tmp_path, [{**GOOD, "token_file": str(token)}]))
