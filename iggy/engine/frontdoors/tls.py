"""Server certificates and TLS contexts for the TCP, WebSocket and QUIC listeners.

Certificate sources follow Apache Iggy's config (core/server/config.toml, bootstrap.rs):

- `[tcp.tls]` and `[websocket.tls]`: with `self_signed = true` the listener serves an
  existing `cert_file`/`key_file` pair when `cert_file` exists on disk, and otherwise a
  generated self-signed certificate. With `self_signed = false` both files must exist.
- `[quic.certificate]`: `self_signed = true` always uses the generated certificate (files
  that exist are ignored, with a warning); `false` loads both files.

Upstream keeps its generated certificate in memory. Here it is also written to
`<system.path>/certs/iggy_cert.pem` + `iggy_key.pem` (key mode 0600) so that a client can
trust exactly it (the SDK's `tls_ca_file`). One certificate is generated per server start and
shared by every listener that needs one. It is an ECDSA P-256 end-entity certificate, valid
for `localhost`, `127.0.0.1`, `::1` and the listeners' configured hosts.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iggy.config import Config

log = logging.getLogger(__name__)

CERT_NAME = "iggy_cert.pem"
KEY_NAME = "iggy_key.pem"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


class CertificateError(RuntimeError):
    """A listener's certificate can't be loaded or made; the message names the config section."""


def generate_self_signed(hosts: Iterable[str] = ("localhost",), days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 private key PEM) of a new self-signed certificate.

    `hosts` become subjectAltNames: IP addresses as iPAddress entries (rustls checks an IP
    server name only against those), everything else as dNSName. basicConstraints CA=false:
    the certificate is used directly as the end-entity, and webpki refuses a CA certificate
    there; a client trusts it by loading this same file as its CA file.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = str(host).strip("[]")
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "iggy self-signed certificate"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iggy"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate some clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def listener_hosts(config: Config) -> list[str]:
    """Hosts the generated certificate is valid for: loopback names + configured listener hosts."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    for section in ("tcp", "websocket", "quic"):
        address = getattr(getattr(config, section, None), "address", "") or ""
        host = address.rpartition(":")[0].strip("[]")
        if host in _WILDCARD_HOSTS:
            try:
                hosts.append(socket.gethostname())
            except OSError:
                pass
        else:
            hosts.append(host)
    return hosts


class Certificates:
    """Certificate files per listener, with the one generated certificate made on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.directory = os.path.join(config.system.path, "certs")
        self._generated: tuple[str, str] | None = None

    def generated(self) -> tuple[str, str]:
        """(cert path, key path) of this start's self-signed certificate, written on first call."""
        if self._generated is None:
            cert_pem, key_pem = generate_self_signed(listener_hosts(self.config))
            os.makedirs(self.directory, exist_ok=True)
            cert_path = os.path.join(self.directory, CERT_NAME)
            key_path = os.path.join(self.directory, KEY_NAME)
            _write_atomic(key_path, key_pem, 0o600)
            _write_atomic(cert_path, cert_pem, 0o644)
            log.info(
                "generated a self-signed certificate for development: %s (key %s)",
                os.path.abspath(cert_path),
                os.path.abspath(key_path),
            )
            self._generated = (cert_path, key_path)
        return self._generated

    def for_listener(
        self, section: str, self_signed: bool, cert_file: str, key_file: str, files_win: bool = True
    ) -> tuple[str, str]:
        """(cert path, key path) for the listener configured in `section` (e.g. "tcp.tls").

        `files_win`: with self_signed on, an existing cert_file is served instead of a generated
        certificate (tcp.tls, websocket.tls); QUIC passes False (self_signed always generates).
        """
        if self_signed:
            if files_win and cert_file and os.path.exists(cert_file):
                log.info(
                    "%s.self_signed = true but cert_file = %s exists; serving it (clear the path to use "
                    "a generated certificate)",
                    section,
                    cert_file,
                )
            else:
                if not files_win:
                    found = [
                        f"{n} = {p}"
                        for n, p in (("cert_file", cert_file), ("key_file", key_file))
                        if p and os.path.exists(p)
                    ]
                    if found:
                        log.warning(
                            "%s.self_signed = true, ignoring certificate files found on disk (%s); "
                            "set %s.self_signed = false to load them",
                            section,
                            ", ".join(found),
                            section,
                        )
                return self.generated()
        missing = [
            f"{n} = {p!r}"
            for n, p in (("cert_file", cert_file), ("key_file", key_file))
            if not p or not os.path.exists(p)
        ]
        if missing:
            raise CertificateError(
                f"{section}: certificate files not found ({', '.join(missing)}); set both "
                f"files, or {section}.self_signed = true for a generated certificate"
            )
        return cert_file, key_file


def server_context(cert_file: str, key_file: str, section: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving the PEM pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"{section}: can't load certificate {cert_file} / key {key_file}: {exc}") from None
    return ctx


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # also when the .tmp file was left over with other bits
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
