"""A throw-away PKI for tests: a CA and server certificates made with ``cryptography``.

EC P-256 keys, so a test can make a fresh CA in milliseconds. Nothing here touches the
system's CA store: clients trust a test CA only through ``--ca FILE`` (``ca_file``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@attrs.frozen
class CA:
    """A certificate authority that can issue server certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "nbbridge test CA") -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        names: Sequence[str],
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A server certificate for ``names`` (IP addresses become IP SANs, the rest DNS)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 30 * _DAY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


@attrs.frozen
class ServerFiles:
    """PEM files for a TLS server, and the CA file a client must trust to reach it."""

    cert: str
    key: str
    ca: str

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, as PEM bytes."""
        with open(self.ca, "rb") as f:
            return f.read()

    def ssl_endpoint(self, port: int = 0, interface: str = "127.0.0.1") -> str:
        """A ``serverFromString`` description serving this certificate."""
        return f"ssl:{port}:interface={interface}:privateKey={self.key}:certKey={self.cert}"


def write_server_files(
    directory: str,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    ca: CA | None = None,
    expired: bool = False,
    prefix: str = "server",
) -> ServerFiles:
    """Make a CA (unless given) and a server certificate for ``names``; write them as PEM."""
    ca = ca or CA.create()
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        cert, key = ca.issue(names, not_before=now - 10 * _DAY, not_after=now - 2 * _DAY)
    else:
        cert, key = ca.issue(names)
    os.makedirs(directory, exist_ok=True)
    files = ServerFiles(
        cert=os.path.join(directory, f"{prefix}.crt"),
        key=os.path.join(directory, f"{prefix}.key"),
        ca=os.path.join(directory, f"{prefix}-ca.crt"),
    )
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    write_ca(ca, files.ca)
    return files


def write_ca(ca: CA, path: str) -> str:
    """Write the CA certificate (what a client passes as ``--ca``)."""
    _write(path, ca.cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
