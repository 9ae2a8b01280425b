"""sensor-sd behind an exporter-toolkit web config: TLS with a generated CA, basic auth, real Prometheus."""

from __future__ import annotations

import base64
import socket
import ssl
import warnings

import pytest
import requests

# Credentials of the shared stack (tests/integration/conftest.py writes them into the web config).
SD_USER, SD_PASSWORD = "prometheus", "correct horse battery staple"
GOOD = (SD_USER, SD_PASSWORD)


def test_https_with_the_ca_and_password(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    assert (env.user, env.password) == GOOD
    r = requests.get(env.tls("/targets"), verify=str(env.ca_file), auth=GOOD, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    env.wait(lambda: {t for g in requests.get(env.tls("/targets"), verify=str(env.ca_file), auth=GOOD,
                                               timeout=10).json() for t in g["targets"]} == env.sd_targets(),
             "the TLS instance to serve the same targets", timeout=10)
    page = requests.get(env.tls("/"), verify=str(env.ca_file), auth=GOOD, timeout=10)
    assert page.status_code == 200 and 'id="target-count"' in page.text


@pytest.mark.parametrize("auth", [None, (SD_USER, "wrong"), ("nobody", SD_PASSWORD), (SD_USER, ""),
                                  (SD_USER, SD_PASSWORD + "x"), (SD_USER.upper(), SD_PASSWORD)])
@pytest.mark.parametrize("path", ["/targets", "/targets?shard=0&shards=2", "/metrics", "/", "/-/ready", "/nope"])
def test_wrong_or_missing_password_is_401(http_sd_env, auth, path: str) -> None:  # type: ignore[no-untyped-def]
    r = requests.get(http_sd_env.tls(path), verify=str(http_sd_env.ca_file), auth=auth, timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert "sensor_" not in r.text


def test_refresh_needs_the_password_too(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    assert requests.post(env.tls("/-/refresh"), verify=str(env.ca_file), timeout=10).status_code == 401
    assert requests.post(env.tls("/-/refresh"), verify=str(env.ca_file), auth=GOOD, timeout=10).status_code == 200


def test_healthy_is_open_for_probes_only_because_the_file_says_so(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    assert "unauthenticated_paths: [/-/healthy]" in env.web_config.read_text()
    assert requests.get(env.tls("/-/healthy"), verify=str(env.ca_file), timeout=10).status_code == 200
    assert requests.get(env.tls("/-/ready"), verify=str(env.ca_file), timeout=10).status_code == 401


def test_plain_http_to_the_tls_port_fails(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    """Plain HTTP gets no answer at all: the connection is closed without a byte, promptly."""
    env = http_sd_env
    # The port does serve (over TLS), so a closed connection below is the refusal, not a dead port.
    assert requests.get(env.tls("/-/healthy"), verify=str(env.ca_file), timeout=10).status_code == 200
    auth = base64.b64encode(f"{SD_USER}:{SD_PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", env.tls_port), timeout=10) as raw:
        raw.sendall(f"GET /targets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
        received = b""
        while chunk := raw.recv(65536):  # a hanging connection ends in socket.timeout: a failure
            received += chunk
    assert received == b"", received[:200]


def test_untrusted_certificate_is_refused_by_a_verifying_client(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(http_sd_env.tls("/-/healthy"), timeout=10)  # system CAs do not know the generated one


def test_old_tls_versions_are_refused(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    """exporter-toolkit's default min_version is TLS12; so is ours."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(http_sd_env.ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the refusal can only come from the server
    with socket.create_connection(("127.0.0.1", http_sd_env.tls_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="(?i)protocol.version|EOF"):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass


def test_prometheus_discovers_through_tls_and_basic_auth(http_sd_env) -> None:  # type: ignore[no-untyped-def]
    env = http_sd_env
    env.wait(lambda: env.prometheus_targets("sensors-tls") == env.sd_targets(),
             "Prometheus (tls_config.ca_file + basic_auth) to discover the targets")
    assert env.prometheus_targets("sensors-tls-badpass") == set()  # same TLS, wrong password: nothing
