"""A site's own certificate authority (`edvit site credentials --ca`): mutual TLS without
a public CA. Each client certificate's CN is its broker login, so mosquitto's
`use_identity_as_username` makes the certificate the identity (broker.auth: certificate).

    tls/ca.crt, tls/ca.key            the site CA (keep ca.key off the devices)
    tls/broker.crt, tls/broker.key    the broker's, for broker.host (name or IP)
    tls/clients/<login>.crt, .key     one per node, aggregator and reader

Existing files are kept, so adding a node signs only its certificate, with the same CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edvit.config.site import SiteConfig
from edvit.provision import ProvisionError, secret_file

CA_DAYS = 3650
CERT_DAYS = 825  # the longest validity clients such as Apple's still accept for a server
Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_bytes(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _have(folder: Path, name: str) -> bool:
    return (folder / f"{name}.crt").exists() and (folder / f"{name}.key").exists()


def _write_pair(folder: Path, name: str, cert: x509.Certificate, key: Key) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    secret_file(folder / f"{name}.key", _key_bytes(key))


def _load_or_make_ca(folder: Path, site: str) -> tuple[x509.Certificate, Key]:
    crt, key_path = folder / "ca.crt", folder / "ca.key"
    if crt.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisionError(f"{key_path}: not the EC key this command writes")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"edvit {site} CA"))
        .issuer_name(_name(f"edvit {site} CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(folder, "ca", cert, key)
    return cert, key


def _issue(
    ca: tuple[x509.Certificate, Key], cn: str, server_host: str | None = None
) -> tuple[x509.Certificate, Key]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_host else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_host is not None:
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(server_host))
        except ValueError:
            alt = x509.DNSName(server_host)
        builder = builder.add_extension(x509.SubjectAlternativeName([alt]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_site_ca(
    cfg: SiteConfig, folder: Path, logins: Sequence[str], say: Callable[[str], None] = print
) -> None:
    """The CA, the broker's certificate and one client certificate per login; what exists
    is kept (delete a pair to re-issue it)."""
    ca = _load_or_make_ca(folder, cfg.site)
    if not _have(folder, "broker"):
        _write_pair(folder, "broker", *_issue(ca, cfg.broker.host, server_host=cfg.broker.host))
    new = [login for login in logins if not _have(folder / "clients", login)]
    for login in new:
        _write_pair(folder / "clients", login, *_issue(ca, login))
    say(
        f"{folder}: site CA, broker certificate for {cfg.broker.host}, client certificates "
        f"(CN = login): {len(new)} new, {len(logins) - len(new)} kept"
    )
