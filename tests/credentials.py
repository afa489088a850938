"""Credentials made by the tests: a private CA with a server certificate, and htpasswd files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# bcrypt's cheapest cost keeps the suite quick; the server accepts any cost.
TEST_BCRYPT_ROUNDS = 4


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    cert: Path  # the server's chain
    key: Path
    cert_dir: Path  # for skopeo --cert-dir and dockerd's certs.d: ca.crt only


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(directory: Path, hosts: list[str]) -> Pki:
    """A CA and a certificate for `hosts` (IP addresses or DNS names), valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("cache-action test CA"))
        .issuer_name(_name("cache-action test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    pki = Pki(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "ca"
    )
    pki.ca_cert.write_bytes(ca_pem)
    pki.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(server_key))
    pki.key.chmod(0o600)
    pki.cert_dir.mkdir(exist_ok=True)
    (pki.cert_dir / "ca.crt").write_bytes(ca_pem)
    return pki


def write_htpasswd(path: Path, users: dict[str, str], rounds: int = TEST_BCRYPT_ROUNDS) -> Path:
    """`htpasswd -nB` lines for each user."""
    lines = [
        f"{name}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()}"
        for name, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
