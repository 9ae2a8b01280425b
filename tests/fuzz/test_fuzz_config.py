"""Fuzz the configuration parser with hostile environment values and file contents.

For any value of any variable, `config.load` returns Settings or raises
`ConfigError`, nothing else, and the error is one line that names the
variable (and the flag when the value came from one). File variables are
fuzzed through their contents, in temporary files, never through arbitrary
paths (a generated path could name a device that blocks).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from sensor_sd import config
from sensor_sd.errors import ConfigError

FILE_VARS = {"INVENTORY_TOKEN_FILE", "INVENTORY_CA_FILE", "WEB_CONFIG_FILE"}
TEXT_VARS = sorted(o.env for o in config.OPTIONS if o.env not in FILE_VARS)
NUMERIC_VARS = {"UPDATE_INTERVAL", "REQUEST_TIMEOUT", "METRICS_PORT", "MAX_RESPONSE_BYTES", "MAX_DROP_RATIO",
                "DROP_CONFIRMATIONS", "DROP_WINDOW", "DROP_HOLD"}
FIELDS = {o.env: o.field for o in config.OPTIONS}
FLAGS = {o.env: o.flag for o in config.OPTIONS}

# Any code point, lone surrogates included: os.environ decodes undecodable bytes to them.
any_text = st.text(st.characters(blacklist_categories=()), max_size=80)
tricky = st.sampled_from([
    "", " ", "\n", "\x00", "nan", "NaN", "inf", "-inf", "1e309", "-0", "0", "0.0", "1e-320", "0x10", "1_000",
    "١٢", "１２", "²", "9" * 400, "-1", "+5", " 5 ", "5\n", "5\x00", "http://", "http://:80", "http://[::1",
    "http://a:99999/x", "a=http://x,a=http://y", "=http://x", "x=", ",", "http://u:p@h/i", "ftp://h/i",
    "k=v,k=w", "__k=v", "source=x", "k=v\x01", ":", "[::1]:80", "[x]:80", "host:0", ":65536", "DEBUG", "Warn",
    "\udcff", "json\udcff", "/", "./x\x00y", "1e-300", "0.0001", "86400.5", "\u00a05", "5\u200b", "=http://h/",
    "http://u:pa,ss@h/i", "http://u:12/pa@h/i",
])
values = st.one_of(any_text, tricky, st.builds(lambda a, b: a + b, tricky, any_text))


def check(var: str, value: str, *, as_flag: bool = False) -> None:
    flags = {FIELDS[var]: value} if as_flag else {}
    environ = {} if as_flag else {var: value}
    try:
        settings = config.load(flags, environ)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        name = f"{var} ({FLAGS[var]})" if as_flag else var
        assert message.startswith(f"invalid {name}="), message
        assert exc.variable == name and exc.allowed and len(message) < 1200
        return
    if var in NUMERIC_VARS:  # one grammar: plain ASCII decimal, nothing Python's float()/int() also take
        assert re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", value), value
    assert 0.001 <= settings.update_interval <= 86400
    assert 0.001 <= settings.request_timeout <= 86400
    assert 0 <= settings.max_drop_ratio <= 1
    assert settings.sources and all(s.url.startswith(("http://", "https://")) for s in settings.sources)


def prop_env(var: str, value: str) -> None:
    check(var, value)


def prop_flag(var: str, value: str) -> None:
    check(var, value, as_flag=True)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sensor-sd-fuzz-") as d:
        yield Path(d)


yaml_keys = st.sampled_from(["tls_server_config", "http_server_config", "basic_auth_users", "sensor_sd", "cert_file",
                             "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version",
                             "cipher_suites", "headers", "unauthenticated_paths", "rate_limit", "prometheus",
                             "curve_preferences", "http2", "X-Frame-Options"]) | st.text(max_size=10)
yaml_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.sampled_from(
    ["TLS12", "TLS13", "TLS99", "RequireAndVerifyClientCert", "RequestClientCert", "/-/healthy", "/metrics",
     "$2y$10$" + "a" * 53, "$2b$04$abc", "deny", "server.crt", "/nonexistent/x.pem"])
yaml_docs = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4) |
                         st.dictionaries(yaml_keys, inner, max_size=5), max_leaves=25)


@st.composite
def web_configs(draw: Callable[..., Any]) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    text = yaml.safe_dump(draw(yaml_docs), allow_unicode=draw(st.booleans()))
    if kind == 2:  # damage: cut, or insert YAML syntax
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.sampled_from(["\t", ":", "- ", "{", "&a", "*a", "!!python/object:os.system", "\x00",
                                                   "\n  x: 1", "? ", "%YAML 1.1\n---\n"])) + text[pos:]
    elif kind == 3:
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode("utf-8", "surrogatepass")


def prop_file(scratch: Path, var: str, content: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=scratch, delete=False) as fh:
        fh.write(content)
    try:
        check(var, fh.name)
    finally:
        Path(fh.name).unlink()


_env = given(st.sampled_from(TEXT_VARS), values)
_files = given(st.sampled_from(sorted(FILE_VARS)), st.one_of(web_configs(), st.binary(max_size=300)))


@_env
@example("UPDATE_INTERVAL", "1e309")
@example("INVENTORY_URL", "http://[::1")
@example("LOG_LEVEL", "\udcff")
@example("TARGET_LABELS", "k=v,k=w")
@example("LISTEN_ADDRESS", "[x]:80")
def test_env_values_only_config_errors(var: str, value: str) -> None:
    prop_env(var, value)


@_env
def test_flag_values_only_config_errors(var: str, value: str) -> None:
    prop_flag(var, value)


@_files
@example("WEB_CONFIG_FILE", b"basic_auth_users: {a: b}\nbasic_auth_users: {}\n")
@example("WEB_CONFIG_FILE", b"tls_server_config: {cert_file: /nonexistent}\n")
@example("WEB_CONFIG_FILE", b"!!python/object/apply:os.system ['true']\n")
@example("WEB_CONFIG_FILE", b"a: [\n")
@example("INVENTORY_CA_FILE", b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
def test_file_contents_only_config_errors(scratch: Path, var: str, content: bytes) -> None:
    prop_file(scratch, var, content)


def test_file_variables_name_unreadable_paths(scratch: Path) -> None:
    for var in sorted(FILE_VARS):
        for path in (str(scratch), str(scratch / "missing"), "x\x00y", str(scratch / "missing" / "deeper")):
            check(var, path)


@pytest.mark.slow
@_env
def test_env_values_only_config_errors_long(var: str, value: str) -> None:
    prop_env(var, value)


@pytest.mark.slow
@_env
def test_flag_values_only_config_errors_long(var: str, value: str) -> None:
    prop_flag(var, value)


@pytest.mark.slow
@_files
def test_file_contents_only_config_errors_long(scratch: Path, var: str, content: bytes) -> None:
    prop_file(scratch, var, content)
