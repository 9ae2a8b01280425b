"""Configuration: defaults, flags over environment, and one clear line for every bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensor_sd import config
from sensor_sd.config import ListenAddress
from sensor_sd.sources import Source, redact_url
from sensor_sd.errors import ConfigError


def load(env: dict[str, str] | None = None, **flags: str) -> config.Settings:
    return config.load(flags, env or {})


def test_defaults_match_the_contract() -> None:
    s = load()
    assert s.sources == (Source("inventory_server", "http://inventory_server:1337/inventory"),)
    assert s.update_interval == 30.0
    assert s.targets_file == Path("data/targets.json")
    assert (s.metrics_port, s.metrics_path, s.target_labels) == (9100, "/metrics", ())
    assert s.listen_address == ListenAddress("", 8080)
    assert (s.request_timeout, s.max_response_bytes) == (5.0, 67108864)
    assert (s.max_drop_ratio, s.drop_confirmations) == (0.5, 3)
    assert (s.log_format, s.log_level) == ("json", "info")
    assert config.Settings(sources=s.sources) == s  # the dataclass's defaults are the table's, parsed


def test_help_shows_each_default_from_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "sensor_sd", "check", "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    for opt in config.OPTIONS:
        assert f"(env {opt.env}, default {opt.default!r})" in text, opt.env


def test_flags_win_over_environment() -> None:
    s = load({"UPDATE_INTERVAL": "10", "METRICS_PORT": "9200"}, update_interval="2.5")
    assert s.update_interval == 2.5
    assert s.metrics_port == 9200


def test_named_sources_and_labels() -> None:
    s = load({"INVENTORY_URL": "eu=http://a:1/inv,us=https://b/inv?x=1", "TARGET_LABELS": "env=prod, team=store"})
    assert [src.name for src in s.sources] == ["eu", "us"]
    assert s.sources[1].url == "https://b/inv?x=1"
    assert s.target_labels == (("env", "prod"), ("team", "store"))


def test_empty_targets_file_disables_it() -> None:
    assert load({"TARGETS_FILE": ""}).targets_file is None


def test_listen_address_forms() -> None:
    assert load({"LISTEN_ADDRESS": "127.0.0.1:9"}).listen_address == ListenAddress("127.0.0.1", 9)
    assert load({"LISTEN_ADDRESS": "[::1]:80"}).listen_address == ListenAddress("::1", 80)


def test_credentials_are_redacted_for_display() -> None:
    src = load({"INVENTORY_URL": "inv=http://user:s3cret@h:1/x"}).sources[0]
    assert "s3cret" not in src.display_url and "user" not in src.display_url
    assert src.display_url == "http://h:1/x"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("UPDATE_INTERVAL", "abc"), ("UPDATE_INTERVAL", "0"), ("UPDATE_INTERVAL", "-1"), ("UPDATE_INTERVAL", "nan"),
        ("UPDATE_INTERVAL", "inf"), ("UPDATE_INTERVAL", ""),
        ("METRICS_PORT", "0"), ("METRICS_PORT", "70000"), ("METRICS_PORT", "9100.5"), ("METRICS_PORT", "-1"),
        ("METRICS_PORT", "٩١٠٠"),
        ("TARGET_LABELS", "1x=y"), ("TARGET_LABELS", "a"), ("TARGET_LABELS", "__x=y"), ("TARGET_LABELS", "a=1,a=2"),
        ("TARGET_LABELS", "source=x"), ("TARGET_LABELS", "a=\x00"),
        ("LOG_FORMAT", "xml"), ("LOG_LEVEL", "loud"),
        ("INVENTORY_URL", "a=b=c"), ("INVENTORY_URL", "ftp://x/inv"), ("INVENTORY_URL", "x=http://a,x=http://b"),
        ("INVENTORY_URL", "http://"), ("INVENTORY_URL", ""), ("INVENTORY_URL", "http://a:99999/"),
        ("INVENTORY_URL", "http://a b/"), ("INVENTORY_URL", "a=http://x,,b=http://y"), ("INVENTORY_URL", "bad name=http://x"),
        ("LISTEN_ADDRESS", "8080"), ("LISTEN_ADDRESS", ":0"), ("LISTEN_ADDRESS", "::1:80"), ("LISTEN_ADDRESS", "a:b"),
        ("REQUEST_TIMEOUT", "0"), ("MAX_RESPONSE_BYTES", "0"), ("MAX_RESPONSE_BYTES", "1e6"),
        ("MAX_DROP_RATIO", "1.5"), ("MAX_DROP_RATIO", "-0.1"), ("DROP_CONFIRMATIONS", "0"),
        ("METRICS_PATH", "metrics"), ("METRICS_PATH", "/a b"), ("TARGETS_FILE", "a\x00b"),
        ("INVENTORY_TOKEN_FILE", "/nonexistent/token"), ("INVENTORY_CA_FILE", "/nonexistent/ca.pem"),
    ],
)
def test_bad_values_name_variable_value_and_allowed(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({variable: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid {variable}=")
    assert info.value.allowed and info.value.allowed in message


def test_bad_flag_names_flag() -> None:
    with pytest.raises(ConfigError, match=r"UPDATE_INTERVAL \(--update-interval\)"):
        load(update_interval="x")


def test_empty_and_unreadable_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="INVENTORY_TOKEN_FILE"):
        load({"INVENTORY_TOKEN_FILE": str(empty)})
    with pytest.raises(ConfigError, match="a readable regular file"):
        load({"INVENTORY_TOKEN_FILE": str(tmp_path)})  # a directory


def test_ca_file_must_be_pem(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="INVENTORY_CA_FILE"):
        load({"INVENTORY_CA_FILE": str(bad)})


def test_control_characters_stay_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load({"UPDATE_INTERVAL": "1\n2\x1b[31m"})
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


@pytest.mark.parametrize("command", ["run", "once", "check"])
def test_cli_exits_2_before_doing_anything(command: str, tmp_path: Path) -> None:
    env = {"UPDATE_INTERVAL": "abc", "TARGETS_FILE": str(tmp_path / "t.json"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "sensor_sd", command], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ['sensor-sd: invalid UPDATE_INTERVAL="abc": a decimal number from 0.001 to 86400']
    assert not (tmp_path / "t.json").exists()


def test_cli_unknown_flag_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "sensor_sd", "run", "--no-such-flag"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "--no-such-flag" in proc.stderr


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:p@h:1/x?token=abc&y=2#frag", "http://h:1/x?token=***&y=***"),
    ("https://[::1]:8443/inv", "https://[::1]:8443/inv"),
    ("http://h/inv", "http://h/inv"),
])
def test_redact_url_hides_credentials_and_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_drop_window_and_hold() -> None:
    s = load()
    assert (s.drop_window, s.drop_hold) == (3600.0, 300.0)
    s = load({"DROP_WINDOW": "0", "DROP_HOLD": "0"})
    assert (s.drop_window, s.drop_hold) == (0.0, 0.0)
    assert load({"DROP_HOLD": "10"}, drop_hold="60.5", drop_window="7200").drop_hold == 60.5
    assert load(drop_window="7200").drop_window == 7200.0


@pytest.mark.parametrize(("variable", "value"), [
    ("DROP_WINDOW", "-1"), ("DROP_WINDOW", "nan"), ("DROP_WINDOW", "inf"), ("DROP_WINDOW", "x"),
    ("DROP_HOLD", "-0.5"), ("DROP_HOLD", ""), ("DROP_HOLD", "1e9"),
])
def test_bad_drop_window_and_hold(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({variable: value})
    assert str(info.value).startswith(f"invalid {variable}=") and "from 0 to 604800" in str(info.value)


def test_drop_flags_exist() -> None:
    out = subprocess.run([sys.executable, "-m", "sensor_sd", "once", "--help"], capture_output=True, text=True)
    assert "--drop-window" in out.stdout and "--drop-hold" in out.stdout


def test_readme_configuration_table_lists_every_variable_with_its_default() -> None:
    """The README's table is what users read: every variable, with its default as the code has it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line.split("|")[1:3] for line in readme.splitlines() if line.startswith("| `") and line.count("|") >= 4]
    for opt in config.OPTIONS:
        found = [(names.strip(), default.strip()) for names, default in rows if f"`{opt.env}`" in names]
        assert found, f"README configuration table lacks {opt.env}"
        names, shown = found[0]
        default = config.DEFAULTS[opt.env]
        if " / " not in names:  # rows of two variables (LOG_FORMAT / LOG_LEVEL) show both defaults
            assert f"`{default}`" in shown or (not default and shown == "empty"), (opt.env, shown)


# --- one number grammar (ASCII decimal) and hostile INVENTORY_URL values --------------------

NUMERIC = ["UPDATE_INTERVAL", "REQUEST_TIMEOUT", "METRICS_PORT", "MAX_RESPONSE_BYTES", "MAX_DROP_RATIO",
           "DROP_CONFIRMATIONS", "DROP_WINDOW", "DROP_HOLD"]
NOT_ASCII_DECIMAL = ["1_0", "١٢", "１２", "²", "1e-300", "1e400", "1e3", "inf", "nan", "Infinity", "0x10", "+1",
                     "-0", " 1", "1 ", "\t1", "1\n", "\u00a01", "1\u200b", "\u20071", "1.0.0", ".", "", "9" * 5000]


@pytest.mark.parametrize("variable", NUMERIC)
@pytest.mark.parametrize("value", NOT_ASCII_DECIMAL)
def test_every_number_is_plain_ascii_decimal(variable: str, value: str) -> None:
    """Python's float()/int() take `1_0`, other scripts' digits and spaces; no variable does."""
    with pytest.raises(ConfigError) as info:
        load({variable: value})
    assert str(info.value).startswith(f"invalid {variable}=") and "\n" not in str(info.value)


@pytest.mark.parametrize("variable", NUMERIC)
def test_the_same_forms_are_accepted_everywhere(variable: str) -> None:
    assert getattr(load({variable: "1"}), config.OPTIONS[[o.env for o in config.OPTIONS].index(variable)].field) == 1


@pytest.mark.parametrize("variable", ["UPDATE_INTERVAL", "REQUEST_TIMEOUT"])
def test_seconds_range_from_a_millisecond_to_a_day(variable: str) -> None:
    field = variable.lower()
    assert getattr(load({variable: "0.001"}), field) == 0.001
    assert getattr(load({variable: "86400"}), field) == 86400
    assert getattr(load({variable: ".5"}), field) == 0.5
    for bad in ("0.0009", "0.000", "86400.001", "1000000"):
        with pytest.raises(ConfigError, match="from 0.001 to 86400"):
            load({variable: bad})


@pytest.mark.parametrize("value", ["=http://h/inv", " =http://h/inv", "a=http://x/,=http://h/inv"])
def test_a_source_name_is_never_empty(value: str) -> None:
    with pytest.raises(ConfigError, match="never empty"):
        load({"INVENTORY_URL": value})


@pytest.mark.parametrize("value", [
    "http://user:pa,ss@host/inv", "http://user:pa#ss@host/inv", "http://user:pa?ss@host/inv",
    "http://user:pa/ss@host/inv", "http://user:12/pass@host/inv", "http://user:12#pass@host/inv",
    "http://user:12?pass@host/inv", "inv=http://user:pa,ss@host/inv", "a=http://h/x,b=http://user:p,a,ss@host/inv",
    "a=http://user:pa,ss@h/x,b=http://v:pa/ss@h2/y", "user:pa,ss@host", "http://user:pa,ss@ho st/inv",
    "http://user:pa,ss@host:99999/inv", "ftp://user:pa,ss@host/inv", "http://user:pa@ss@host/inv,x",
])
def test_config_error_never_shows_the_password(value: str) -> None:
    """Unencoded `,` `#` `?` `/` in a password cut the URL where urllib looks; the line still hides it."""
    with pytest.raises(ConfigError) as info:
        load({"INVENTORY_URL": value})
    message = str(info.value)
    assert message.startswith("invalid INVENTORY_URL=") and "***" in message
    for secret in ("pa,ss", "pa", "ss", "pass"):
        assert secret not in message.replace("percent-encode", "").replace("password", ""), message


def test_an_at_sign_after_the_host_is_refused() -> None:
    """`http://u:12/x@h/` parses (host u, port 12): the password's tail would land in the path and in logs."""
    with pytest.raises(ConfigError, match="an @ after the host"):
        load({"INVENTORY_URL": "http://user:12/secret@host/inv"})
    assert load({"INVENTORY_URL": "http://user:s%2Fcret@host/inv"}).sources[0].display_url == "http://host/inv"


@pytest.mark.parametrize("variable", ["INVENTORY_TOKEN_FILE", "INVENTORY_CA_FILE", "WEB_CONFIG_FILE"])
def test_file_variables_refuse_fifos_and_devices_without_opening_them(variable: str, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device"), (tmp_path, "a directory")):
        with pytest.raises(ConfigError) as info:
            load({variable: str(path)})
        assert f"{kind}, not a regular file" in str(info.value)


def test_token_file_must_be_utf8(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load({"INVENTORY_TOKEN_FILE": str(token)})
