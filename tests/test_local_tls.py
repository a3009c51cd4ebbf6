"""Tests for pgha.local.tls: chain verification, SANs and a real TLS handshake."""

import ipaddress
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pgha.local.tls import CertKey, issue, make_ca


@pytest.fixture(scope="module")
def ca() -> CertKey:
    return make_ca("pgha test CA")


@pytest.fixture(scope="module")
def leaf(ca: CertKey) -> CertKey:
    return issue(ca, common_name="node1", ips=["127.0.0.1", "127.0.1.1"], dns_names=["localhost"])


def test_ca_is_a_ca_valid_ten_years(ca: CertKey) -> None:
    cert = ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 3650 <= days <= 3653


def test_leaf_has_sans_usages_and_two_years(leaf: CertKey) -> None:
    cert = leaf.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("127.0.1.1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert 729 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 731


def test_server_only_usage(ca: CertKey) -> None:
    cert = issue(ca, common_name="s3", dns_names=["localhost"], client=False).certificate
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ValueError):
        issue(ca, common_name="nothing", server=False, client=False)


def test_leaf_verifies_against_ca_with_cryptography(ca: CertKey, leaf: CertKey) -> None:
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(
        x509.DNSName("localhost")
    )
    chain = verifier.verify(leaf.certificate, [])
    assert chain[-1] == ca.certificate

    other = make_ca("someone else")
    other_verifier = PolicyBuilder().store(Store([other.certificate])).build_server_verifier(
        x509.DNSName("localhost")
    )
    with pytest.raises(VerificationError):
        other_verifier.verify(leaf.certificate, [])


def test_leaf_verifies_with_openssl(tmp_path: Path, ca: CertKey, leaf: CertKey) -> None:
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    (tmp_path / "leaf.pem").write_text(leaf.cert_pem)
    (tmp_path / "other.pem").write_text(make_ca("other").cert_pem)
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.pem", "-verify_hostname", "localhost",
         tmp_path / "leaf.pem"],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "other.pem", tmp_path / "leaf.pem"],
        capture_output=True, text=True,
    )
    assert bad.returncode != 0


@pytest.fixture
def tls_server(tmp_path: Path, leaf: CertKey) -> Iterator[int]:
    """A one-shot TLS echo server on 127.0.0.1 presenting ``leaf``; yields its port."""
    (tmp_path / "srv.crt").write_text(leaf.cert_pem)
    (tmp_path / "srv.key").write_text(leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    listener = socket.create_server(("127.0.0.1", 0))
    # A short accept timeout lets the thread notice ``done``; close() does not wake accept().
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(64))
            except (ssl.SSLError, OSError):
                pass  # the rejected-client tests make the handshake fail here

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    done.set()
    thread.join(5)
    listener.close()


def _client_context(ca_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and hostname by default
    ctx.load_verify_locations(cadata=ca_pem)
    return ctx


def test_tls_handshake_with_hostname_check(tls_server: int, ca: CertKey) -> None:
    ctx = _client_context(ca.cert_pem)
    with socket.create_connection(("127.0.0.1", tls_server), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            assert tls.recv(64) == b"ping"
            assert tls.getpeercert()["subject"] == ((("commonName", "node1"),),)


def test_tls_handshake_rejects_other_ca(tls_server: int) -> None:
    ctx = _client_context(make_ca("impostor").cert_pem)
    with socket.create_connection(("127.0.0.1", tls_server), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            ctx.wrap_socket(raw, server_hostname="localhost")


def test_tls_handshake_rejects_wrong_hostname(tls_server: int, ca: CertKey) -> None:
    ctx = _client_context(ca.cert_pem)
    with socket.create_connection(("127.0.0.1", tls_server), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            ctx.wrap_socket(raw, server_hostname="example.com")
