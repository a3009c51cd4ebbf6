"""The loopback orchestrator's own logic, without starting daemons."""

import json
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from pgha.local import cluster as local
from pgha.local.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(tmp_path):
    return LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "root", address_prefix="127.0.8.")


def test_missing_prerequisites_name_the_package_to_install(monkeypatch):
    monkeypatch.setattr(local, "REQUIRED_COMMANDS", {"/nonexistent/bin/etcd": "etcd-server"})
    monkeypatch.setattr(local, "OS_ACCOUNTS", ("postgres", "no-such-account-pgha"))
    missing = local.missing_prerequisites()
    assert "/nonexistent/bin/etcd (apt-get install etcd-server)" in missing
    assert any("no-such-account-pgha" in m for m in missing)


def test_members_get_the_address_prefix_and_the_dev_stack_spec(offline):
    assert [n.ip for n in offline.nodes] == ["127.0.8.1", "127.0.8.2", "127.0.8.3"]
    assert offline.spec.cluster_name == "pg-dev" and offline.spec.instance_type == "t4g.medium"
    files = {f.path: f for f in offline.rendered(offline.nodes[1])}
    root = str(offline.root / "pg-dev-2")
    patroni = yaml.safe_load(files[root + "/etc/pgha/patroni.yml"].content)
    assert patroni["postgresql"]["listen"] == "127.0.8.2:5432"
    assert patroni["postgresql"]["data_dir"] == root + "/var/lib/pgha/pg/data"
    node = json.loads(files[root + "/etc/pgha/node.json"].content)
    assert node["secret"] == {"source": "file", "id": "", "region": "us-east-1", "file": str(offline.secrets_file)}


def test_secrets_are_private_and_random(offline, tmp_path):
    first = offline._ensure_secrets()
    assert stat.S_IMODE(offline.secrets_file.stat().st_mode) == 0o600
    assert offline._ensure_secrets() == first  # made once, kept
    other = LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "other", address_prefix="127.0.8.")
    assert other._ensure_secrets()["superuser_password"] != first["superuser_password"]
    assert set(first["tls_keys"]) == {"pg-dev-1", "pg-dev-2", "pg-dev-3"}


def test_member_certificates_cover_every_member_address_and_service_name(offline):
    _, members = offline._pki()
    for name, cert_key in members.items():
        cert = x509.load_pem_x509_certificate(cert_key.cert_pem.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        assert ips == {"127.0.8.1", "127.0.8.2", "127.0.8.3", "127.0.0.1"}
        assert {"pg-dev-primary", "pg-dev-replica", name} <= set(san.get_values_for_type(x509.DNSName))


def test_status_dsns_carry_no_password(offline):
    values = offline._ensure_secrets()
    offline._write_passfile(values)
    dsn = offline.multi_host_dsn(5433)
    assert dsn.startswith("postgresql://dbuser_app@127.0.8.1:5433,127.0.8.2:5433,127.0.8.3:5433/app?")
    assert all(v not in dsn for v in values.values() if isinstance(v, str))
    assert values["app_password"] in offline.passfile.read_text()
    assert stat.S_IMODE(offline.passfile.stat().st_mode) == 0o600
