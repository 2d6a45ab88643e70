"""DICOM TLS (PS3.15 B.9, the BCP 195 profile): TLS 1.2 or 1.3 only (RFC 8996 retired 1.0 and 1.1), the
BCP 195 cipher suites, certificates checked against the configured certificate authorities, and mutual
authentication when the node requires client certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from db.errors import ConfigurationError

# RFC 9325 (BCP 195) 4.2: ECDHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3 suites are OpenSSL's defaults.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: this side's certificate and private key (optional for a client without mutual TLS), and
    the certificate authorities the other side's certificate must chain to."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_peer_certificate: bool = True  # a server: clients must present one; a client: always checks the server


def _context(purpose: ssl.Purpose, files: TLSFiles, what: str) -> ssl.SSLContext:
    side = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(side)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        if files.certificate is not None:
            context.load_cert_chain(str(files.certificate), str(files.private_key) if files.private_key else None)
        if files.ca_certificates is not None:
            context.load_verify_locations(cafile=str(files.ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{what}: cannot load the TLS certificates or key: {exc}") from exc
    return context


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The receiver's context: its certificate; client certificates required (or merely checked when
    sent) against the configured authorities."""
    if files.certificate is None or files.private_key is None:
        raise ConfigurationError("node.tls: a TLS port needs certificate and private_key")
    if files.require_peer_certificate and files.ca_certificates is None:
        raise ConfigurationError("node.tls: require_client_certificate needs ca_certificates to check them against")
    context = _context(ssl.Purpose.CLIENT_AUTH, files, "node.tls")
    context.verify_mode = ssl.CERT_REQUIRED if files.require_peer_certificate else \
        (ssl.CERT_OPTIONAL if files.ca_certificates else ssl.CERT_NONE)
    return context


def client_context(files: TLSFiles, what: str) -> ssl.SSLContext:
    """A sender's context: the destination's certificate always verified (against ``ca_certificates`` or
    the system's), and this node's certificate presented when one is configured (mutual TLS)."""
    context = _context(ssl.Purpose.SERVER_AUTH, files, what)
    if files.ca_certificates is None:
        context.load_default_certs()
    context.check_hostname = False  # DICOM peers are named by AE title and address, not DNS name
    context.verify_mode = ssl.CERT_REQUIRED
    return context
