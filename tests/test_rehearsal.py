"""The rehearsal of EC2: every member a booted machine of the Debian 13 node image, from the
user-data EC2 gets (pgha.local.image, pgha.local.machine, pgha.local.cluster)."""

import gzip
import json
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from conftest import wait_for_archived
from pgha.local import backups
from pgha.local import image as image_mod
from pgha.local.machine import Machine, MachineError
from pgha.render import EC2_LAYOUT, render_node
from pgha.spec import image

pytestmark = pytest.mark.cluster


def machines(local_cluster):
    return [node.machine for node in local_cluster.nodes]


def test_every_member_runs_debian_13_with_systemd_as_pid_1(local_cluster):
    for machine in machines(local_cluster):
        leader = machine.leader()
        assert Path(f"/proc/{leader}/comm").read_text().strip() == "systemd"
        assert (machine.fs / "etc/debian_version").read_text().startswith(f"{image.DEBIAN_MAJOR}.")
        # A machine of its own: PID 1 in its own PID namespace, the member's address in its own network.
        assert os.readlink(f"/proc/{leader}/ns/pid") != os.readlink("/proc/self/ns/pid")
        addresses = machine.run(["ip", "-4", "-o", "addr", "show", "eth0"], check=True).stdout
        assert local_cluster.member_ip(local_cluster.nodes[machines(local_cluster).index(machine)].member) + "/" in addresses


def test_cloud_init_finished_the_user_data_without_errors(local_cluster):
    for machine in machines(local_cluster):
        status = json.loads(machine.run(["cloud-init", "status", "--format", "json"], check=True).stdout)
        assert status["status"] == "done" and status["datasource"] == "nocloud"
        assert status["errors"] == [] and status["recoverable_errors"] == {}
        log = (machine.fs / "var/log/pgha/bootstrap.log").read_text()
        assert "pgha-bootstrap: done" in log


def test_each_member_booted_exactly_the_user_data_render_gives_ec2(local_cluster):
    ctx = local_cluster.context()
    assert ctx.layout == EC2_LAYOUT
    for node, machine in zip(local_cluster.nodes, machines(local_cluster)):
        booted = (machine.fs / f"var/lib/cloud/instances/{machine.instance['instance_id']}/user-data.txt").read_bytes()
        assert booted == local_cluster.user_data(node.member)
        assert gzip.decompress(booted).startswith(b"#cloud-config\n")
        # The unit files systemd runs are the ones rendered for EC2, byte for byte.
        rendered = {f.path: f.content for f in render_node(local_cluster.spec, node.member, ctx)
                    if f.path.startswith("/etc/systemd/system/")}
        assert len(rendered) >= len(node.units)
        for path, content in rendered.items():
            assert (machine.fs / path.lstrip("/")).read_text() == content, path


def test_every_unit_ec2_runs_is_active_under_systemd(local_cluster):
    for node, machine in zip(local_cluster.nodes, machines(local_cluster)):
        assert "pgha-host.service" in node.units and "pgha-patroni.service" in node.units
        for unit in node.units:
            assert node.systemd.is_active(unit), f"{node.member.name}: {unit}"
        failed = machine.systemctl("list-units", "--failed", "--plain", "--no-legend").stdout
        assert "pgha-" not in failed, failed
        # The data directory is on the member's own volume, formatted by the boot storage script.
        mount = machine.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", EC2_LAYOUT.data], check=True).stdout.split()
        assert mount[1] == "xfs" and mount[0].startswith("/dev/loop")


def test_each_member_read_its_own_tls_key_secret_and_the_cluster_secret_has_none(local_cluster):
    """As on EC2: the cluster secret holds the passwords only; each member's TLS key is in a
    secret of its own, which its node.json names and from which its node.key was written."""
    sm = local_cluster.aws_client("secretsmanager")
    shared = json.loads(sm.get_secret_value(SecretId=local_cluster.secret_name)["SecretString"])
    assert "tls_keys" not in shared and "superuser_password" in shared
    for node in local_cluster.nodes:
        name = node.member.name
        facts = json.loads((node.machine.fs / EC2_LAYOUT.etc.lstrip("/") / "node.json").read_text())
        assert facts["tls_secret"] == {"source": "aws", "id": local_cluster.tls_secret_name(name),
                                       "region": local_cluster.s3.region}
        own = json.loads(sm.get_secret_value(SecretId=facts["tls_secret"]["id"])["SecretString"])
        assert list(own["tls_keys"]) == [name]
        written = (node.machine.fs / EC2_LAYOUT.tls.lstrip("/") / "node.key").read_text()
        assert written.strip() == own["tls_keys"][name].strip()


def test_postgresql_17_runs_inside_the_member_under_patroni(local_cluster):
    for node, machine in zip(local_cluster.nodes, machines(local_cluster)):
        with psycopg.connect(local_cluster.superuser_dsn(node),
                             connect_timeout=5) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("17")
        inside = int((machine.fs / EC2_LAYOUT.pgdata.lstrip("/") / "postmaster.pid").read_text().split()[0])
        host_pid = machine.host_pid(inside)
        assert host_pid in machine.pids()
        assert Path(f"/proc/{host_pid}/exe").resolve().name == "postgres"
        assert "/usr/lib/postgresql/17/bin" in Path(f"/proc/{host_pid}/cmdline").read_text()


def test_the_image_holds_the_pinned_versions_ec2_installs(local_cluster):
    versions = local_cluster.image.versions
    for package, pin in image.DAEMON_PACKAGES.items():
        assert versions[package].startswith(pin), package
    machine = machines(local_cluster)[0]
    assert machine.run(["pgbackrest", "version"], check=True).stdout.strip().startswith("pgBackRest 2.55")
    assert (machine.fs / "etc/apt/preferences.d/pgha").read_text() == (local_cluster.image.root
                                                                       / "etc/apt/preferences.d/pgha").read_text()


def test_wal_reaches_s3_and_a_full_backup_succeeds_on_17(local_cluster):
    primary = backups.leader(local_cluster, running=False)
    with psycopg.connect(backups.superuser_dsn(local_cluster, primary), autocommit=True,
                         connect_timeout=5) as conn:
        segment = backups.switch_wal(conn)
    wait_for_archived(local_cluster, segment, local_cluster.bucket, f"{local_cluster.spec.cluster_name}/pgbackrest/archive/")
    deadline = time.monotonic() + 10  # the archiver counts a push once archive_command has returned
    while (backups.archiver(local_cluster)["last_archived_wal"] or "") < segment and time.monotonic() < deadline:
        time.sleep(0.2)
    archiver = backups.archiver(local_cluster)
    # Archiving works now (a failover or a restart of the AWS stand-in may have failed a push before).
    assert archiver["last_failed_time"] is None or archiver["last_archived_time"] > archiver["last_failed_time"]
    backup = backups.run_backup(local_cluster, "full", log=lambda _: None)
    assert backup["type"] == "full"
    keys = [o["Key"] for o in local_cluster.s3.client().list_objects_v2(
        Bucket=local_cluster.bucket, Prefix=f"{local_cluster.spec.cluster_name}/pgbackrest/archive/")["Contents"]]
    assert any("/17-1/" in key for key in keys)
    # The credentials came from the member's IMDS (instance role), not from a key in any file.
    assert "s3-key=" not in (machines(local_cluster)[0].fs / "etc/pgha/pgbackrest/pgbackrest.conf").read_text()


def test_a_member_that_does_not_boot_names_itself_and_cloud_init_s_error(local_cluster, tmp_path):
    from pgha.local import netns

    ns = netns.namespace(local_cluster.address_prefix, 99)
    subprocess.run(["ip", "netns", "add", ns], check=False)
    machine = Machine("pg-broken-9", tmp_path / "m", image_root=local_cluster.image.root, netns=ns,
                      log=lambda _: None)
    broken = gzip.compress(b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo no such thing >&2; exit 7']\n")
    try:
        machine.boot(user_data=broken, instance_id="i-0broken", hostname="pg-broken-9",
                     imds_facts=local_cluster.imds_facts(local_cluster.spec.members[0]))
        with pytest.raises(MachineError) as info:
            machine.wait_booted(timeout=120)
        assert "pg-broken-9" in str(info.value) and "runcmd" in str(info.value)
    finally:
        machine.destroy()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_missing_host_tools_are_named_with_their_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    missing = image_mod.missing_host_tools()
    assert "debootstrap (apt-get install debootstrap)" in missing
    assert "systemd-nspawn (apt-get install systemd-container)" in missing


def test_an_image_build_that_fails_names_the_package_and_apt_s_words(local_cluster, tmp_path):
    # apt inside a throwaway overlay of the image: the cached image itself stays untouched.
    for part in ("upper", "work", "root"):
        (tmp_path / part).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={local_cluster.image.root},"
                    f"upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}", str(tmp_path / "root")], check=True)
    try:
        with pytest.raises(image_mod.ImageError) as info:
            image_mod.install(tmp_path / "root", ["pgha-no-such-package"], log=lambda _: None)
    finally:
        subprocess.run(["umount", str(tmp_path / "root")], check=True)
    assert "apt-get install in the image failed" in str(info.value)
    assert "E: Unable to locate package pgha-no-such-package" in str(info.value)
