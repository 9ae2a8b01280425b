"""`tls_server_config` as Python's `ssl` can honour it: the settings and the server SSLContext."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sensor_sd.files import CA_FILE_LIMIT, PEM_FILE_LIMIT, UnreadableFile, read_regular

VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Go's modes that accept unverified client certificates: Python's ssl cannot.
CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# Go crypto/tls names -> OpenSSL names (TLS 1.2; TLS 1.3 suites are not configurable in Go either).
CIPHERS: Mapping[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_CIPHERS = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """`tls_server_config`, paths already resolved against the config file's directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None  # inline PEM
    key: str | None = field(default=None, repr=False)  # inline private key: never in a repr of Settings
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


def tls_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """The server SSLContext; ValueError when the certificate, key or CA cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = VERSIONS[tls.min_version]
        ctx.maximum_version = VERSIONS[tls.max_version]
    except ValueError as exc:
        raise ValueError(f"tls_server_config: TLS versions {tls.min_version}..{tls.max_version} ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="sensor-sd-tls-") as tmp:
        try:
            cert = _private_copy(tmp, "cert.pem", "cert_file", tls.cert_file, tls.cert, PEM_FILE_LIMIT)
            key = _private_copy(tmp, "key.pem", "key_file", tls.key_file, tls.key, PEM_FILE_LIMIT)
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"tls_server_config: certificate and key cannot be loaded together ({_ssl_reason(exc)})"
                             ) from None
        ca = _private_copy(tmp, "ca.pem", "client_ca_file", tls.client_ca_file, None, CA_FILE_LIMIT) \
            if tls.client_ca_file else None
        if ca or tls.client_ca:
            try:
                ctx.load_verify_locations(cafile=ca, cadata=tls.client_ca)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"tls_server_config: client CA cannot be loaded ({_ssl_reason(exc)})") from None
    ctx.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    suites = [CIPHERS[s] for s in tls.cipher_suites if s in CIPHERS]
    if suites:
        try:
            ctx.set_ciphers(":".join(dict.fromkeys(suites)))
        except ssl.SSLError as exc:
            raise ValueError(f"tls_server_config.cipher_suites: not available here ({_ssl_reason(exc)})") from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _private_copy(tmp: str, name: str, key: str, path: Path | None, inline: str | None, limit: int) -> str:
    """A private copy of one PEM (from its file, or inline) for OpenSSL, which reads files only.

    The operator's file is read bounded and non-blocking (`files.read_regular`): OpenSSL would
    wait for ever on a FIFO and read /dev/zero until memory ran out. ValueError names the key.
    """
    if inline is not None:
        data = inline.encode()
    else:
        assert path is not None, f"{key}: the web config's checks require the file or its inline form"
        try:
            data = read_regular(path, limit)
        except UnreadableFile as exc:
            raise ValueError(f"tls_server_config.{key}: {exc}") from None
    copy = os.path.join(tmp, name)
    _write_private(copy, data)
    return copy


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ssl_reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
