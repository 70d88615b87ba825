"""HTTPS for ``sonalyze serve --https``: a self-signed certificate for this machine, and the LAN banner.

Browsers give a page the microphone only in a secure context (HTTPS, or localhost), so phones on the
Wi-Fi need the gateway over TLS. Without ``--tls-cert/--tls-key`` a certificate is made once into
``<data-dir>/tls/`` (ECDSA P-256, SHA-256, RFC 5280) for the host name, ``localhost``, ``127.0.0.1`` and
every LAN IPv4 address, and reused until the addresses change or it is within 30 days of expiring.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil
import segno
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY_DAYS = 365
RENEW_BEFORE_DAYS = 30
CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key, as uvicorn's ``ssl_certfile``/``ssl_keyfile``."""

    cert: Path
    key: Path


def lan_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback and link-local (169.254/16), sorted."""
    found: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET:
                ip = ipaddress.IPv4Address(address.address)
                if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                    found.add(str(ip))
    return sorted(found, key=ipaddress.IPv4Address)


def wanted_names(hostname: str, addresses: list[str]) -> tuple[set[str], set[str]]:
    """The subject alternative names a certificate for this machine needs: (DNS names, IP addresses)."""
    return {hostname.lower(), "localhost"}, {"127.0.0.1", *addresses}


def certificate_names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """The DNS names and IP addresses of ``cert``'s subjectAltName extension."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {name.lower() for name in san.get_values_for_type(x509.DNSName)}, {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def ensure_self_signed(folder: Path, hostname: str, addresses: list[str], now: dt.datetime | None = None) -> TlsFiles:
    """The certificate in ``folder`` when it still fits (same names, ≥ 30 days left), else a new one."""
    now = now or dt.datetime.now(dt.timezone.utc)
    files = TlsFiles(folder / CERT_NAME, folder / KEY_NAME)
    dns_names, ip_addresses = wanted_names(hostname, addresses)
    if files.cert.exists() and files.key.exists():
        try:
            cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
            fits = certificate_names(cert) == (dns_names, ip_addresses)
            if fits and cert.not_valid_after_utc - now > dt.timedelta(days=RENEW_BEFORE_DAYS):
                return files
        except (ValueError, x509.ExtensionNotFound):
            pass  # unreadable: make a new one
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Sonalyze on {hostname}"[:64])])
    san = [x509.DNSName(dns) for dns in sorted(dns_names)] + [
        x509.IPAddress(ipaddress.IPv4Address(ip)) for ip in sorted(ip_addresses, key=ipaddress.IPv4Address)
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(files.key, key_pem)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by this user only (0600), replacing ``path`` at once."""
    partial = path.with_suffix(".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(partial, path)


def lan_urls(public_host: str, port: int, addresses: list[str]) -> list[str]:
    """The ``https://`` URLs phones can open: each LAN address when listening on every interface."""
    if public_host in ("0.0.0.0", "::", ""):
        hosts = addresses or [socket.gethostname()]
    else:
        hosts = [public_host]
    return [f"https://{host}:{port}/" for host in hosts]


def qr_text(url: str) -> str:
    """``url`` as a QR code (ISO/IEC 18004) drawn with half blocks, light on a dark terminal, 4-module border."""
    out = io.StringIO()
    segno.make(url, error="m", micro=False).terminal(out=out, compact=True)
    return out.getvalue()


def https_banner(urls: list[str]) -> str:
    """What ``sonalyze serve --https`` prints: the URLs to open and a QR code of the first."""
    lines = ["Open the app on phones on this network (accept the self-signed certificate once):"]
    lines += [f"  {url}" for url in urls]
    return "\n".join(lines) + "\n" + qr_text(urls[0])
