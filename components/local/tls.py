"""A minimal certificate authority for the local cluster.

The loopback cluster runs etcd peers, PostgreSQL and a TLS-fronted S3 on 127.0.0.1;
all of them need certificates that chain to one CA the clients are told to trust.
Keys are EC P-256: fast to generate and accepted by etcd, PostgreSQL, HAProxy and
pgBackRest (OpenSSL underneath all of them).
"""

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertKey", "make_ca", "issue"]

CA_VALIDITY = datetime.timedelta(days=3652)
LEAF_VALIDITY = datetime.timedelta(days=730)
# Backdate notBefore so a certificate is valid at once even with slight clock skew.
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its unencrypted PEM (PKCS#8) private key."""

    cert_pem: str
    key_pem: str

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem.encode())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> CertKey:
    """Create a self-signed CA (EC P-256, 10 years) that may sign leaf certificates only."""
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # path_length=0: this CA signs leaves, never intermediate CAs.
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def issue(
    ca: CertKey,
    *,
    common_name: str,
    ips: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
) -> CertKey:
    """Issue a leaf certificate (EC P-256, 2 years) signed by ``ca``.

    ``ips`` and ``dns_names`` become subjectAltName entries; clients match hostnames
    against SANs only (the CN is ignored), so every name a client dials must be listed.
    ``server``/``client`` select the extended key usages: etcd peers act as both, so
    both default to on.
    """
    if not (server or client):
        raise ValueError("a certificate needs at least one of server or client usage")
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("CA key must be an EC private key made by make_ca()")
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)

    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)

    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                # ECDH key exchange with static keys is not used by TLS 1.2+ ECDHE; off.
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertKey(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))
