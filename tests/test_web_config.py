"""sensor_sd.web.config and web.tls: the exporter-toolkit format, hostile files, the TLS context, and the parsed
file carried by Settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import trustme
from aiohttp import web

from sensor_sd import config
from sensor_sd.web.auth import BASIC_AUTH, BasicAuth, install
from sensor_sd.web.config import load as load_web_config
from sensor_sd.web.tls import tls_context

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: trustme.CA) -> Path:
    """cert.pem/key.pem/ca.pem next to where the web config is written."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    return tmp_path


def write(dir_: Path, text: str) -> Path:
    path = dir_ / "web.yml"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_file(tls_dir: Path) -> None:
    path = write(tls_dir, f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
                          f"basic_auth_users:\n  prometheus: {HASH}\n")
    cfg = load_web_config(path)
    assert cfg.tls is not None and cfg.tls.cert_file == tls_dir / "cert.pem"
    assert cfg.users == (("prometheus", HASH),)
    assert cfg.unauthenticated_paths == frozenset()  # like exporter-toolkit: every path needs auth


def test_full_config_is_accepted(tls_dir: Path) -> None:
    path = write(tls_dir, f"""
tls_server_config:
  cert_file: {tls_dir / 'cert.pem'}
  key_file: key.pem
  client_ca_file: ca.pem
  client_auth_type: VerifyClientCertIfGiven
  client_allowed_sans: [client.example]
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  alice: {HASH}
  "123": {HASH}
sensor_sd:
  unauthenticated_paths: ["/-/healthy", "/-/ready"]
""")
    cfg = load_web_config(path)
    assert cfg.tls is not None and cfg.tls.client_auth_type == "VerifyClientCertIfGiven"
    assert cfg.unauthenticated_paths == {"/-/healthy", "/-/ready"}
    assert dict(cfg.headers) == {"X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=31536000"}


def test_inline_cert_and_key(tls_dir: Path) -> None:
    cert = (tls_dir / "cert.pem").read_text()
    key = (tls_dir / "key.pem").read_text()
    indent = lambda text: "\n".join("    " + line for line in text.splitlines())  # noqa: E731
    path = write(tls_dir, f"tls_server_config:\n  cert: |\n{indent(cert)}\n  key: |\n{indent(key)}\n")
    cfg = load_web_config(path)
    assert cfg.tls is not None and tls_context(cfg.tls) is not None and cfg.ssl_context is not None


def test_settings_carry_the_web_config_parsed_once_with_its_tls_context(tls_dir: Path) -> None:
    """config.load parses the file and builds the TLS context; the server side reads no file again."""
    path = write(tls_dir, f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
                          f"basic_auth_users:\n  prometheus: {HASH}\n")
    settings = config.load({}, {"WEB_CONFIG_FILE": str(path)})
    web_config = settings.web_config
    assert web_config is not None and web_config.path == path and settings.web_config_file == path
    assert web_config.users == (("prometheus", HASH),) and web_config.ssl_context is not None
    for name in ("web.yml", "cert.pem", "key.pem"):  # what a second load or a second TLS context would read
        (tls_dir / name).unlink()
    app = web.Application()
    install(app, web_config)
    assert isinstance(app[BASIC_AUTH], BasicAuth)


def test_settings_repr_shows_no_hash_or_private_key(tls_dir: Path) -> None:
    """Settings now carry the parsed file: a repr of them (a debugger, a log line) must not carry its secrets."""
    key = (tls_dir / "key.pem").read_text()
    indent = "\n".join("    " + line for line in key.splitlines())
    path = write(tls_dir, f"tls_server_config:\n  cert_file: cert.pem\n  key: |\n{indent}\n"
                          f"basic_auth_users:\n  prometheus: {HASH}\n")
    shown = repr(config.load({}, {"WEB_CONFIG_FILE": str(path)}))
    assert "web.yml" in shown and HASH not in shown and "PRIVATE KEY" not in shown


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "tls_server_config:\nbasic_auth_users:\n"])
def test_empty_config_means_plain_http_without_auth(tmp_path: Path, text: str) -> None:
    cfg = load_web_config(write(tmp_path, text))
    assert cfg.tls is None and cfg.users == () and cfg.ssl_context is None
    app = web.Application()
    install(app, cfg)
    assert not app.middlewares and BASIC_AUTH not in app


HOSTILE = [
    ("tls_server_config: [\n", "valid YAML at line"),
    ("basic_auth_users:\n  a: 'x\n", "valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("just a string\n", "top level must be a mapping"),
    ("tls_server_confg:\n  cert_file: cert.pem\n", "unknown key 'tls_server_confg'"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  certfile: x\n", "unknown key 'certfile'"),
    ("http_server_config:\n  http3: true\n", "unknown key 'http3'"),
    ("tls_server_config:\n  cert_file: cert.pem\n  cert_file: key.pem\n", "duplicate key 'cert_file'"),
    ("tls_server_config:\n  cert_file: missing.pem\n  key_file: key.pem\n", "cert_file: cannot read"),
    ("tls_server_config:\n  cert_file: cert.pem\n", "key_file is missing"),
    ("tls_server_config:\n  key_file: key.pem\n", "cert_file is missing"),
    ("tls_server_config:\n  cert_file: key.pem\n  key_file: key.pem\n", "cannot be loaded together"),
    ("tls_server_config:\n  cert_file: web.yml\n  key_file: key.pem\n", "cannot be loaded together"),
    ("tls_server_config:\n  cert_file: [cert.pem]\n  key_file: key.pem\n", "cert_file must be a string, got a list"),
    ("tls_server_config: cert.pem\n", "tls_server_config must be a mapping, got a string"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  min_version: 12\n",
     "min_version must be a string, got an integer"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  min_version: TLS99\n", "'TLS99' is not one of"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  min_version: TLS13\n  max_version: TLS12\n",
     "min_version is above max_version"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  cipher_suites: TLS_AES_128_GCM_SHA256\n",
     "cipher_suites must be a list of strings"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  cipher_suites: [TLS_FAKE]\n",
     "unknown cipher suite 'TLS_FAKE'"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  prefer_server_cipher_suites: 'yes'\n",
     "must be a boolean"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  curve_preferences: [X25519]\n",
     "'curve_preferences' is not supported"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: RequireAnyClientCert\n",
     "RequireAnyClientCert is not supported"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: Sometimes\n",
     "'Sometimes' is not one of"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_ca_file: ca.pem\n",
     "client CAs are configured without a client_auth_type"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
     "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: VerifyClientCertIfGiven\n"
     "  client_ca_file: key.pem\n", "client CA cannot be loaded"),
    ("basic_auth_users:\n  alice: s3cret\n", "basic_auth_users.alice is not a bcrypt hash"),
    ("basic_auth_users:\n  alice: $2y$99$" + "a" * 53 + "\n", "is not a bcrypt hash"),
    ("basic_auth_users:\n  alice: " + HASH[:-1] + "\n", "is not a bcrypt hash"),
    ("basic_auth_users:\n  alice: 12345\n", "must be a bcrypt hash string, got an integer"),
    ("basic_auth_users:\n  alice:\n", "must be a bcrypt hash string, got empty"),
    ("basic_auth_users:\n  123: " + HASH + "\n", "(quote it)"),
    ("basic_auth_users:\n  'a:b': " + HASH + "\n", "cannot contain ':'"),
    ("basic_auth_users: [alice]\n", "basic_auth_users must be a mapping, got a list"),
    ("http_server_config:\n  headers:\n    Server: evil\n", "header 'Server' can not be configured"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "'allow' is not one of deny, sameorigin"),
    ("http_server_config:\n  http2: 1\n", "http2 must be a boolean"),
    ("rate_limit:\n  interval: 1s\n", "'rate_limit' is not supported"),
    ("sensor_sd:\n  unauthenticated_paths: [/targets]\n", "'/targets' cannot be opened"),
    ("sensor_sd:\n  unauthenticated_paths: /-/healthy\n", "must be a list of strings"),
    ("sensor_sd:\n  open_paths: []\n", "unknown key 'open_paths'"),
]


@pytest.mark.parametrize(("text", "reason"), HOSTILE, ids=[r for _, r in HOSTILE])
def test_hostile_config_is_rejected_with_a_clear_reason(tls_dir: Path, text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        load_web_config(write(tls_dir, text))
    assert reason in str(info.value)
    assert "\n" not in str(info.value)  # one line: it ends up in the exit-2 message


def test_unreadable_and_huge_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="readable"):
        load_web_config(tmp_path / "absent.yml")
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * (2 * 1024 * 1024))
    with pytest.raises(ValueError, match="at most"):
        load_web_config(big)


# Builds the TLS context in a child (a blocked open() would hang the test's own process) and prints the error.
# It calls tls_context directly: the web config's key check refuses a FIFO by its path already, but the
# path can be swapped for one between that check and the read (a Kubernetes secret volume swaps links).
_BUILD = ("import sys\nfrom pathlib import Path\nfrom sensor_sd.web.tls import TLSServerConfig, tls_context\n"
          "cert, key, ca = (Path(a) for a in sys.argv[1:4])\ntry:\n"
          "    tls_context(TLSServerConfig(cert_file=cert, key_file=key, client_ca_file=ca,"
          " client_auth_type='RequireAndVerifyClientCert'))\n"
          "except ValueError as exc:\n    print(exc)\n    raise SystemExit(3)\nprint('built')\n")


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))  # an unbounded read fails fast


@pytest.mark.parametrize("bad", ["fifo", "/dev/zero", "directory", "one byte over the cap", None])
@pytest.mark.parametrize(("key", "cap"), [("cert_file", 1024**2), ("key_file", 1024**2), ("client_ca_file", 16 * 1024**2)])
def test_a_pem_file_that_is_not_a_bounded_regular_file_is_refused_at_once(tls_dir: Path, key: str, cap: int,
                                                                          bad: str | None) -> None:
    """OpenSSL opened the path itself: a FIFO hung the start for ever, /dev/zero was read until memory ran out,
    and a certificate or key file had no size cap."""
    files = {"cert_file": tls_dir / "cert.pem", "key_file": tls_dir / "key.pem", "client_ca_file": tls_dir / "ca.pem"}
    if bad == "fifo":
        files[key], reason = tls_dir / "pipe", "a FIFO, not a regular file"
        os.mkfifo(files[key])
    elif bad == "/dev/zero":
        files[key], reason = Path(bad), "a character device, not a regular file"
    elif bad == "directory":
        files[key], reason = tls_dir, "a directory, not a regular file"
    elif bad is not None:
        files[key], reason = tls_dir / "big.pem", f"{cap + 1} bytes, larger than the {cap} allowed"
        files[key].write_bytes(b"#" * (cap + 1))
    out = subprocess.run([sys.executable, "-c", _BUILD, *map(str, files.values())], capture_output=True, text=True,
                         timeout=30, preexec_fn=_limit_memory)
    if bad is None:  # the same files, all good: the child can succeed, so a refusal above is the file's doing
        assert (out.returncode, out.stdout) == (0, "built\n"), out.stderr[-800:]
    else:
        assert out.returncode == 3, out.stderr[-800:]
        assert out.stdout == f"tls_server_config.{key}: {reason}\n"


def test_an_oversized_certificate_is_refused_through_the_web_config(tls_dir: Path) -> None:
    big = tls_dir / "big.pem"
    big.write_bytes((tls_dir / "cert.pem").read_bytes() + b"#" * 1024**2)  # a regular file: the key check passes it
    with pytest.raises(ValueError, match=r"^tls_server_config\.cert_file: \d+ bytes, larger than the 1048576 allowed$"):
        load_web_config(write(tls_dir, "tls_server_config:\n  cert_file: big.pem\n  key_file: key.pem\n"))


def test_pem_files_are_copied_privately_and_the_copies_removed(tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    made: list[str] = []
    real = tempfile.TemporaryDirectory

    def recording(*args: object, **kwargs: object) -> tempfile.TemporaryDirectory[str]:
        tmp = real(*args, **kwargs)  # type: ignore[call-overload]
        made.append(tmp.name)
        return tmp  # type: ignore[no-any-return]

    monkeypatch.setattr(tempfile, "TemporaryDirectory", recording)
    config = load_web_config(write(tls_dir, "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
                                            "  client_ca_file: ca.pem\n  client_auth_type: VerifyClientCertIfGiven\n"))
    assert config.ssl_context is not None
    assert made and not any(Path(d).exists() for d in made)


@pytest.mark.parametrize("via_flag", [False, True])
def test_run_with_bad_web_config_exits_2_naming_it(tmp_path: Path, via_flag: bool) -> None:
    path = write(tmp_path, "basic_auth_users:\n  alice: not-a-hash\n")
    env = {"PATH": os.environ.get("PATH", ""), "LISTEN_ADDRESS": "127.0.0.1:1", "TARGETS_FILE": "",
           "INVENTORY_URL": "http://127.0.0.1:1/inventory"}
    args = ["--web-config-file", str(path)] if via_flag else []
    if not via_flag:
        env["WEB_CONFIG_FILE"] = str(path)
    proc = subprocess.run([sys.executable, "-m", "sensor_sd", "run", *args], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEB_CONFIG_FILE" in lines[0] and "not a bcrypt hash" in lines[0]
    assert proc.stdout == ""
