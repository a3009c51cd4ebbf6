"""The local cluster's own logic (contexts, keys, secrets, DSNs), without booting a machine."""

import json
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from pgha.local import cluster as local
from pgha.local.cluster import LocalCluster
from pgha.local.machine import Machine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(tmp_path):
    return LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "root", address_prefix="10.219.0.")


def test_missing_prerequisites_name_the_package_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    missing = local.missing_prerequisites()
    assert "systemd-nspawn (apt-get install systemd-container)" in missing
    assert "debootstrap (apt-get install debootstrap)" in missing


def test_members_get_the_address_prefix_and_the_dev_stack_spec_with_ec2_s_layout(offline):
    assert [n.ip for n in offline.nodes] == ["10.219.0.1", "10.219.0.2", "10.219.0.3"]
    assert offline.spec.cluster_name == "pg-dev" and offline.spec.instance_type == "t4g.medium"
    files = {f.path: f for f in offline.rendered(offline.nodes[1])}
    patroni = yaml.safe_load(files["/etc/pgha/patroni.yml"].content)
    assert patroni["postgresql"]["listen"] == "10.219.0.2:5432"
    assert patroni["postgresql"]["data_dir"] == "/var/lib/pgha/pg/data"
    node = json.loads(files["/etc/pgha/node.json"].content)
    # Secrets Manager through the AWS stand-in, trusted by the cluster CA that user-data carries.
    assert node["secret"] == {"source": "aws", "id": "pg-dev-secret", "region": "us-east-1"}
    assert node["aws"] == {"region": "us-east-1", "endpoint_url": offline.s3.url, "s3_addressing": "path"}
    # Each member's data volume under the name EC2's NVMe driver gives an EBS volume.
    volume = offline.nodes[1].machine.volumes[0]
    assert volume.persistent and volume.by_id == "nvme-Amazon_Elastic_Block_Store_" + local.volume_id(
        "pg-dev", "pg-dev-2").replace("-", "")
    assert local.volume_id("pg-dev", "pg-dev-2") in files["/opt/pgha/bin/pgha-host"].content


def test_secrets_are_private_and_random(offline, tmp_path):
    first = offline._ensure_secrets()
    assert stat.S_IMODE(offline.secrets_file.stat().st_mode) == 0o600
    assert offline._ensure_secrets() == first  # made once, kept
    other = LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "other", address_prefix="10.219.0.")
    assert other._ensure_secrets()["superuser_password"] != first["superuser_password"]
    assert set(first["tls_keys"]) == {"pg-dev-1", "pg-dev-2", "pg-dev-3"}


def test_member_certificates_cover_every_member_address_and_service_name(offline):
    _, members = offline._pki()
    for name, cert_key in members.items():
        cert = x509.load_pem_x509_certificate(cert_key.cert_pem.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        assert ips == {"10.219.0.1", "10.219.0.2", "10.219.0.3", "127.0.0.1"}
        assert {"pg-dev-primary", "pg-dev-replica", name} <= set(san.get_values_for_type(x509.DNSName))


def test_status_dsns_carry_no_password(offline):
    values = offline._ensure_secrets()
    offline._write_passfile(values)
    dsn = offline.multi_host_dsn(5433)
    assert dsn.startswith("postgresql://dbuser_app@10.219.0.1:5433,10.219.0.2:5433,10.219.0.3:5433/app?")
    assert all(v not in dsn for v in values.values() if isinstance(v, str))
    assert values["app_password"] in offline.passfile.read_text()
    assert stat.S_IMODE(offline.passfile.stat().st_mode) == 0o600


def encrypted(cluster: LocalCluster, root: Path) -> LocalCluster:
    """The same stack with backup.encryption on, under ``root``."""
    from dataclasses import replace

    spec = replace(cluster.spec, backup=replace(cluster.spec.backup, encryption=True))
    return LocalCluster(project_dir=REPO, stack="dev", root=root, address_prefix="10.219.0.", spec=spec)


def test_backup_encryption_adds_a_cipher_pass_to_the_local_secret(offline, tmp_path):
    assert "pgbackrest_cipher_pass" not in offline._ensure_secrets()
    source = encrypted(offline, tmp_path / "enc")
    made = source._ensure_secrets()["pgbackrest_cipher_pass"]
    assert len(made) >= 32 and source._ensure_secrets()["pgbackrest_cipher_pass"] == made
    # A secret file from before encryption was turned on gets the pass added, the rest kept.
    older = encrypted(offline, offline.root)
    assert older._ensure_secrets()["superuser_password"] == offline._ensure_secrets()["superuser_password"]
    assert "pgbackrest_cipher_pass" in json.loads(offline.secrets_file.read_text())


def test_a_branch_of_an_encrypted_source_reads_the_pass_from_the_source_cipher_secret(offline, tmp_path):
    from pgha.local import branch as branches

    def branch_of(source: LocalCluster) -> LocalCluster:
        entry = {"slot": 1, "root": str(source.root / "branches" / "br-x"),
                 "values": branches.branch_values(source, "br-x", "latest")}
        return branches.open_branch(source, "br-x", entry)

    def restore_facts(source: LocalCluster) -> dict:
        branch = branch_of(source)
        node = next(f for f in branch.rendered(branch.nodes[0]) if f.path.endswith("/etc/pgha/node.json"))
        return json.loads(node.content)["restore"]

    source = encrypted(offline, tmp_path / "enc")
    facts = restore_facts(source)
    assert facts["cipher"] == "aes-256-cbc" and facts["stanza"] == "pg-dev"
    # A reference to the source's cipher secret (its own, as on EC2), never the pass itself.
    assert facts["cipher_secret"] == {"source": "aws", "id": "pg-dev-backup-cipher", "region": "us-east-1"}
    # The branch's member shares the source's network: its own address and namespace on the same /24.
    assert branch_of(source).nodes[0].ip == "10.219.0.11" and branch_of(source).nodes[0].machine.netns == "pgha-219-0-11"
    assert restore_facts(offline) == {"stanza": "pg-dev", "bucket": "pgha-pg-dev", "path": "/pg-dev/pgbackrest",
                                      "target": "latest", "type": "default", "cipher": "none"}


def test_a_grown_cluster_gets_new_certificates_under_the_same_ca(offline, tmp_path):
    from dataclasses import replace

    single = LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "grow", address_prefix="10.219.0.",
                          spec=replace(offline.spec, replicas=0))
    ca, before = single._pki()
    keys = single._ensure_secrets()["tls_keys"]
    assert set(before) == {"pg-dev-1"} and local._cert_ips(before["pg-dev-1"]) == {"10.219.0.1", "127.0.0.1"}
    grown = LocalCluster(project_dir=REPO, stack="dev", root=single.root, address_prefix="10.219.0.",
                         spec=offline.spec)
    ca_after, after = grown._pki()
    assert ca_after == ca  # clients keep trusting the same CA file
    assert set(after) == {"pg-dev-1", "pg-dev-2", "pg-dev-3"}
    for cert in after.values():
        assert local._cert_ips(cert) == {"10.219.0.1", "10.219.0.2", "10.219.0.3", "127.0.0.1"}
    assert after["pg-dev-1"] != before["pg-dev-1"]
    # The secret the nodes read their keys from follows, so no member pairs a new certificate with an old key.
    assert grown._ensure_secrets()["tls_keys"] == {name: ck.key_pem for name, ck in after.items()}
    assert grown._ensure_secrets()["tls_keys"]["pg-dev-1"] != keys["pg-dev-1"]
    assert grown._pki()[1] == after  # stable once it covers every member


def test_a_new_instance_keeps_its_ebs_volume_and_loses_metal_s_instance_store(tmp_path):
    """What EC2 does on replacement: an EBS volume outlives the instance, an instance store not."""
    from pgha.local.machine import Machine, Volume

    ebs, store = tmp_path / "ebs.img", tmp_path / "nvme0.img"
    for path in (ebs, store):
        path.write_bytes(b"data written by the last instance")
    machine = Machine("pg-x-1", tmp_path / "m", image_root=tmp_path / "image", netns="unused", log=lambda _: None,
                      volumes=[Volume(ebs, 1, "nvme-Amazon_Elastic_Block_Store_vol0"),
                               Volume(store, 1, "nvme-Amazon_EC2_NVMe_Instance_Storage_0", persistent=False)])
    (tmp_path / "m" / "upper" / "etc").mkdir(parents=True)
    (tmp_path / "m" / "upper" / "etc" / "written-by-the-last-instance").write_text("x")
    machine._new_instance("i-0new")
    assert ebs.read_bytes() == b"data written by the last instance"
    assert not store.exists()
    assert not (tmp_path / "m" / "upper").exists()  # the next boot starts from the image alone


def test_a_stopped_instance_started_again_keeps_its_root_and_ebs_volumes_and_loses_its_instance_store(tmp_path):
    """EC2's stop/start: the root volume (metal's etcd data is there) and EBS stay, the instance
    store is blank again."""
    from pgha.local.machine import Machine, Volume

    ebs, store = tmp_path / "ebs.img", tmp_path / "nvme0.img"
    for path in (ebs, store):
        path.write_bytes(b"data written before the stop")
    machine = Machine("pg-x-1", tmp_path / "m", image_root=tmp_path / "image", netns="unused", log=lambda _: None,
                      volumes=[Volume(ebs, 1, "nvme-Amazon_Elastic_Block_Store_vol0"),
                               Volume(store, 1, "nvme-Amazon_EC2_NVMe_Instance_Storage_0", persistent=False)])
    root_file = tmp_path / "m" / "upper" / "var" / "lib" / "pgha-etcd" / "member"
    root_file.parent.mkdir(parents=True)
    root_file.write_text("etcd's data")
    (tmp_path / "m" / "instance.json").write_text('{"instance_id": "i-0same"}')
    machine._start_instance("i-0same")
    assert ebs.read_bytes() == b"data written before the stop"
    assert not store.exists()
    assert root_file.read_text() == "etcd's data"


def test_metal_members_get_instance_store_devices_under_ec2_s_names(tmp_path):
    from dataclasses import replace

    spec = LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "a", address_prefix="10.219.0.").spec
    metal = replace(spec, storage=replace(spec.storage, kind="metal"), instance_type="r7gd.large")
    cluster = LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "b", address_prefix="10.219.0.", spec=metal)
    volumes = cluster.nodes[0].machine.volumes
    assert len(volumes) == metal.instance.nvme_count >= 1
    assert all(not v.persistent and v.by_id.startswith("nvme-Amazon_EC2_NVMe_Instance_Storage_") for v in volumes)


def test_two_clusters_with_members_of_one_name_get_separate_cgroups(tmp_path):
    # A kill through one cluster's cgroup.kill must not reach the other cluster's member.
    def machine(home: str) -> Machine:
        return Machine("pg-dev-1", tmp_path / home / "pg-dev-1", image_root=tmp_path / "image", netns="unused",
                       log=lambda _: None)

    first, second = machine("a"), machine("b")
    assert first.cgroup != second.cgroup
    assert first.cgroup == machine("a").cgroup
    assert first.cgroup.parent == second.cgroup.parent and first.cgroup.name.startswith("pg-dev-1.")


def test_the_operator_certificate_made_by_many_threads_at_once_is_one_matching_pair(tmp_path):
    # The drills' monitor threads and the health checks ask for it together on a fresh root; a
    # key and a certificate written apart once ended up from two different issues (CI: "no
    # Patroni answers", ssl KEY_VALUES_MISMATCH).
    import threading

    clusters = [LocalCluster(project_dir=REPO, stack="dev", root=tmp_path / "root", address_prefix="10.219.0.")
                for _ in range(8)]
    clusters[0].ca  # the cluster CA first, as up() makes it
    errors: list[BaseException] = []

    def ask(c: LocalCluster) -> None:
        try:
            c.operator_tls()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clusters for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    bundle = tmp_path / "root" / "pki" / "operator.pem"
    cert = x509.load_pem_x509_certificate(bundle.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=pg-dev-operator"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert not list(bundle.parent.glob("*.tmp"))
