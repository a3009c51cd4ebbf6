"""Membership follows the spec, for real: a member whose etcd data is gone rejoins etcd on its
own (the agent's `member add`), and a single-node branch grows to three members the way
`pulumi up` grows it: the new members join etcd, the DCS takes the spec's synchronous mode
once a replica streams (the agent's dcs-sync), and member 1 restarts last on files that name
every member."""

import json
import shutil
import time

import psycopg
import pytest
from cryptography import x509

from pgha.local import backups
from pgha.local import branch as branches
from pgha.spec import PORTS

pytestmark = pytest.mark.cluster


def etcd_members(cluster, node):
    """`etcdctl member list` through ``node``'s etcd, with a member's client certificate."""
    proc = cluster.etcdctl("member", "list", "-w", "json", endpoints=[node])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["members"]


def started(members):
    """Names of the members that run (an added member that never started has no client URL)."""
    return sorted(m["name"] for m in members if m.get("clientURLs"))


def test_a_member_whose_etcd_data_is_gone_rejoins_by_itself(local_cluster):
    lost = local_cluster.nodes[2]
    before = {m["name"]: m["ID"] for m in etcd_members(local_cluster, local_cluster.nodes[0])}
    lost.machine.systemctl("stop", *reversed(lost.units), check=True)
    shutil.rmtree(lost.layout.etcd_data(local_cluster.spec.storage.kind))  # a replaced node whose volume is new
    local_cluster.up(timeout=240, log=lambda _: None)
    after = {m["name"]: m["ID"] for m in etcd_members(local_cluster, local_cluster.nodes[0])}
    assert started(etcd_members(local_cluster, local_cluster.nodes[0])) == sorted(before)
    assert after[lost.member.name] != before[lost.member.name]  # its stale entry went, a new one came
    assert {k: v for k, v in after.items() if k != lost.member.name} == \
        {k: v for k, v in before.items() if k != lost.member.name}
    log = open(f"{lost.layout.log}/etcd.log").read()
    assert "removed this member's stale etcd entry" in log and "joining as existing member" in log
    assert local_cluster.health_problems() == []


def test_a_branch_grows_to_three_members_with_synchronous_commits(local_cluster):
    if not backups.info(local_cluster).get("backup"):
        backups.run_backup(local_cluster, "full", log=lambda _: None)
    entry = branches.create(local_cluster, "br-grow", "latest", log=lambda _: None)
    try:
        single = branches.open_branch(local_cluster, "br-grow", entry)
        with psycopg.connect(backups.superuser_dsn(single, single.nodes[0]), autocommit=True) as conn:
            conn.execute("CREATE TABLE grown (id int PRIMARY KEY)")
            conn.execute("INSERT INTO grown SELECT generate_series(1, 50)")
        assert len(etcd_members(single, single.nodes[0])) == 1

        grown_entry = branches.promote(local_cluster, "br-grow", 2, log=lambda _: None, timeout=300)
        branch = branches.open_branch(local_cluster, "br-grow", grown_entry)
        assert [n.ip for n in branch.nodes] == [f"{local_cluster.address_prefix}{entry['slot'] * 10 + i}"
                                                for i in (1, 2, 3)]
        assert started(etcd_members(branch, branch.nodes[2])) == [n.member.name for n in branch.nodes]
        config = branch.patroni(branch.nodes[0], "/config")
        assert config["synchronous_mode"] is True and config["synchronous_mode_strict"] is True
        roles = sorted(m["role"] for m in branch.cluster_view()["members"])
        assert roles == ["leader", "replica", "sync_standby"]
        # Member 1 restarted on a certificate naming every member.
        assert {n.ip for n in branch.nodes} <= cert_ips(f"{branch.nodes[0].layout.tls}/node.crt")
        # Every member has the branch's rows; a commit through any member's HAProxy is synchronous.
        for node in branch.nodes:
            with psycopg.connect(backups.superuser_dsn(branch, node), autocommit=True) as conn:
                deadline = time.monotonic() + 30
                while conn.execute("SELECT count(*) FROM grown").fetchone()[0] != 50:
                    assert time.monotonic() < deadline, f"{node.member.name} lacks the branch's rows"
                    time.sleep(0.5)
        primary = backups.leader(branch, running=False)
        with psycopg.connect(backups.superuser_dsn(branch, primary), autocommit=True) as conn:
            assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] != ""
        for node in branch.nodes:  # verify-full against whichever member answers behind HAProxy
            with psycopg.connect(branch.dsn(node.ip, PORTS["primary"]), autocommit=True,
                                 prepare_threshold=None, connect_timeout=5) as conn:
                assert conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
        assert local_cluster.health_problems() == []  # the source was not touched
    finally:
        branches.delete(local_cluster, "br-grow", log=lambda _: None)
    assert branches.list_branches(local_cluster) == []


def cert_ips(path: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(open(path, "rb").read())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
