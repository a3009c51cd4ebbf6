"""Never an empty database, for real on the dev stack's cluster: a member whose data volume is
lost rebuilds from the repository while the DCS has a leader, and a cluster that lost its DCS
and every member's data restores its own repository's newest backup to the end of the archive
instead of running initdb (the agent's `bootstrap`). The data volumes are lost the way EC2
loses them: each member powered off, its volume replaced by a blank one, booted again. Last, a
metal cluster of its own (PGHA_TEST_METAL_ADDRESSES, default 10.217.0.; moto on
PGHA_TEST_S3_PORT + 40) stopped and started whole: etcd keeps its data on the root volume, the
instance stores come back blank, and every member rebuilds from the repository."""

import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import yaml

from conftest import REPO, cluster_args, log_to_stderr, wait_for_archived, wipe_test_root
from pgha.local import backups
from pgha.local.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def su(cluster, node=None):
    node = node or backups.leader(cluster, running=False)
    return psycopg.connect(backups.superuser_dsn(cluster, node), autocommit=True, connect_timeout=5)


def facts(cluster):
    """(system identifier, the leader's timeline) from the running primary."""
    with su(cluster) as conn:
        sysid = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
        timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
    view_timeline = next(m["timeline"] for m in cluster.cluster_view()["members"] if m["role"] == "leader")
    return sysid, max(timeline, view_timeline)


def patroni_log(node) -> Path:
    """Patroni's stdout, where the bootstrap command's (the agent's) log goes."""
    return Path(node.layout.log) / "patroni" / "patroni.stdout.log"


def log_marks(cluster) -> dict[str, int]:
    """Where each member's Patroni logs end now (they are on the root volume, which stays)."""
    return {f"{n.member.name}/{name}": (Path(n.layout.log) / "patroni" / name).stat().st_size
            for n in cluster.nodes for name in ("patroni.log", "patroni.stdout.log")}


def new_log(node, name: str, marks: dict[str, int]) -> str:
    with open(Path(node.layout.log) / "patroni" / name, "rb") as fh:
        fh.seek(marks[f"{node.member.name}/{name}"])
        return fh.read().decode(errors="replace")


def lose_data_volumes(cluster, nodes) -> None:
    """Power ``nodes`` off together (an orderly shutdown: every Patroni stops its PostgreSQL) and
    replace each one's EBS data volume by a blank one; etcd's data is on it too."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        list(pool.map(lambda n: n.machine.poweroff(), nodes))
    for node in nodes:
        for volume in node.machine.volumes:
            node.machine._detach(volume)
            volume.file.unlink()


def write_atomically(path: Path, text: str) -> None:
    """A bootstrap attempt may read the file at any moment: a truncated pgbackrest.conf means
    pgBackRest's defaults (a local repository without the stanza), read as a new cluster."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    shutil.copystat(path, tmp)
    os.chown(tmp, path.stat().st_uid, path.stat().st_gid)
    os.replace(tmp, path)


def stamp(line: str) -> float:
    """The time a Patroni or agent log line starts with ("2026-12-01 16:02:03,456 ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_member_whose_data_volume_is_lost_rebuilds_from_the_repository_not_initdb(local_cluster):
    cluster = local_cluster
    if not backups.info(cluster).get("backup"):
        backups.run_backup(cluster, "full", log=lambda _: None)
    sysid, timeline = facts(cluster)
    replica = next(m["name"] for m in cluster.cluster_view()["members"] if m["role"] == "replica")
    node = next(n for n in cluster.nodes if n.member.name == replica)
    marks = log_marks(cluster)
    lose_data_volumes(cluster, [node])
    cluster.up(timeout=300, log=lambda _: None)
    log = new_log(node, "patroni.log", marks)
    assert "replica has been created using pgbackrest" in log
    assert "bootstrap path" not in new_log(node, "patroni.stdout.log", marks)
    with su(cluster, node) as conn:
        assert conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0] == sysid
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    assert facts(cluster) == (sysid, timeline)
    assert cluster.health_problems() == []


def test_a_cluster_that_lost_its_dcs_and_all_data_restores_its_repository_instead_of_initdb(local_cluster):
    cluster = local_cluster
    backups.run_backup(cluster, "full", log=lambda _: None)
    with su(cluster) as conn:
        conn.execute("CREATE TABLE never_empty (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO never_empty VALUES (1, 'committed after the backup')")
        segment = backups.switch_wal(conn)
    wait_for_archived(cluster, segment, cluster.bucket)
    sysid, timeline = facts(cluster)
    marks = log_marks(cluster)

    lose_data_volumes(cluster, cluster.nodes)
    began = time.monotonic()
    cluster.up(timeout=600, log=lambda _: None)
    took = time.monotonic() - began

    with su(cluster) as conn:
        assert conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0] == sysid
        assert conn.execute("SELECT note FROM never_empty").fetchall() == [("committed after the backup",)]
    new_sysid, new_timeline = facts(cluster)
    assert new_sysid == sysid and new_timeline > timeline
    # One member bootstrapped, from the repository, and said why; no member ran initdb.
    said = {n.member.name: new_log(n, "patroni.stdout.log", marks) for n in cluster.nodes}
    paths = {name: re.findall(r"bootstrap path (\w+)", text) for name, text in said.items()}
    assert sorted(p for found in paths.values() for p in found) == ["repository"], paths
    head = next(n for n in cluster.nodes if paths[n.member.name])
    lines = said[head.member.name].splitlines()
    chose = next(line for line in lines if "bootstrap path repository" in line)
    assert "this cluster's repository (stanza pg-dev) holds" in chose
    # The others rebuilt from the restored leader (the repository first).
    for node in cluster.nodes:
        if node is not head:
            assert "replica has been created using pgbackrest" in new_log(node, "patroni.log", marks)
    assert cluster.health_problems() == []
    # Every member has the row; the archive carries on, on the new timeline.
    for node in cluster.nodes:
        with su(cluster, node) as conn:
            deadline = time.monotonic() + 30
            while conn.execute("SELECT count(*) FROM never_empty").fetchone()[0] != 1:
                assert time.monotonic() < deadline, f"{node.member.name} lacks the row"
                time.sleep(0.5)
    with su(cluster) as conn:
        segment = backups.switch_wal(conn)
    assert int(segment[:8], 16) == new_timeline
    wait_for_archived(cluster, segment, cluster.bucket)
    asked = stamp(next(line for line in lines if "asking the repository" in line))
    restored = stamp(next(line for line in lines if "PostgreSQL replays the archive" in line))
    promoted = next(stamp(line) for line in new_log(head, "patroni.log", marks).splitlines()
                    if "initialized a new cluster" in line)
    print(f"\nrestore instead of initdb: up {took:.1f}s (boot on blank volumes to healthy); bootstrap: "
          f"pgbackrest info + restore {restored - asked:.1f}s, to the promoted leader {promoted - asked:.1f}s",
          file=sys.stderr)


def test_a_repository_out_of_reach_fails_the_bootstrap_until_it_answers_and_nothing_is_initialised(local_cluster):
    """The same loss while pgBackRest cannot reach S3 (its port closed, Secrets Manager still
    answering): every attempt fails and Patroni tries again; none runs initdb. Once S3 answers,
    the next attempt restores. (io-timeout 1 s: pgBackRest's default 60 s retries make one
    attempt against a closed port last about 9 minutes.)"""
    cluster = local_cluster
    with su(cluster) as conn:
        conn.execute("INSERT INTO never_empty VALUES (2, 'committed before S3 went out of reach')")
        segment = backups.switch_wal(conn)
    wait_for_archived(cluster, segment, cluster.bucket)
    sysid, timeline = facts(cluster)
    marks = log_marks(cluster)
    lose_data_volumes(cluster, cluster.nodes)
    # The nodes' pgbackrest.conf, on their root volumes (kept across the power cycle).
    confs = {n.member.name: n.machine.root / "etc/pgha/pgbackrest/pgbackrest.conf" for n in cluster.nodes}
    saved = {name: path.read_text() for name, path in confs.items()}
    for name, path in confs.items():
        write_atomically(path, re.sub(r"^repo1-storage-port=.*$", "repo1-storage-port=1\nio-timeout=1", saved[name],
                                      flags=re.M))

    def said() -> dict[str, str]:
        out = {}
        for node in cluster.nodes:
            try:
                out[node.member.name] = new_log(node, "patroni.stdout.log", marks)
            except OSError:  # not booted yet
                out[node.member.name] = ""
        return out

    with ThreadPoolExecutor(max_workers=1) as pool:
        coming = pool.submit(cluster.up, timeout=900, log=lambda _: None)
        deadline = time.monotonic() + 600
        while not any("not bootstrapping" in text for text in said().values()):
            assert not coming.done(), coming.exception()
            assert time.monotonic() < deadline, "no failed bootstrap attempt within 600 s"
            time.sleep(2)
        failed = [line for text in said().values() for line in text.splitlines() if "not bootstrapping" in line]
        assert "[HostConnectError]" in failed[0] and "(code 99)" in failed[0]
        assert not any("bootstrap path" in text for text in said().values())
        assert not any((Path(n.layout.pgdata) / "PG_VERSION").exists() for n in cluster.nodes)
        for name, path in confs.items():
            write_atomically(path, saved[name])
        coming.result()
    with su(cluster) as conn:
        assert conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0] == sysid
        assert conn.execute("SELECT id FROM never_empty ORDER BY id").fetchall() == [(1,), (2,)]
    assert facts(cluster)[1] > timeline
    paths = [p for text in said().values() for p in re.findall(r"bootstrap path (\w+)", text)]
    assert paths == ["repository"], paths
    patroni = "".join(new_log(n, "patroni.log", marks) for n in cluster.nodes)
    assert "removing initialize key after failed attempt to bootstrap the cluster" in patroni
    assert cluster.health_problems() == []


@pytest.fixture(scope="module")
def metal_cluster(tmp_path_factory):
    """The dev stack on metal: c7gd.large members (4 GiB like the dev stack's, one instance-store NVMe)."""
    project = tmp_path_factory.mktemp("metal-project")
    shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
    stack = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    stack["config"]["pgha:instanceType"] = "c7gd.large"
    stack["config"]["pgha:storage"] = {"kind": "metal"}
    (project / "Pulumi.metal.yaml").write_text(yaml.safe_dump(stack))
    args = cluster_args("metal", "10.217.0.", port_offset=40)
    wipe_test_root(args["root"], stack="dev", address_prefix=args["address_prefix"], s3_http_port=args["s3_http_port"])
    cluster = LocalCluster(project_dir=project, stack="metal", log=log_to_stderr, **args)
    cluster.up(timeout=300, log=log_to_stderr)
    yield cluster
    if not os.environ.get("PGHA_TEST_KEEP"):
        cluster.destroy(log=log_to_stderr)


def etcd_ids(cluster) -> dict[str, str]:
    proc = cluster.etcdctl("member", "list", "-w", "json")
    assert proc.returncode == 0, proc.stderr
    return {m["name"]: m["ID"] for m in yaml.safe_load(proc.stdout)["members"]}


def test_a_metal_cluster_stopped_and_started_whole_keeps_its_dcs_and_rebuilds_from_the_repository(metal_cluster):
    cluster = metal_cluster
    assert cluster.spec.storage.kind == "metal"
    assert cluster.nodes[0].layout.etcd_data("metal") == str(cluster.nodes[0].machine.fs) + "/var/lib/pgha-etcd"
    backups.run_backup(cluster, "full", log=lambda _: None)
    with su(cluster) as conn:
        conn.execute("CREATE TABLE metal_marks (id int PRIMARY KEY)")
        conn.execute("INSERT INTO metal_marks VALUES (1)")
        segment = backups.switch_wal(conn)
    wait_for_archived(cluster, segment, cluster.bucket)
    sysid, timeline = facts(cluster)
    members = etcd_ids(cluster)
    marks = log_marks(cluster)
    etcd_marks = {n.member.name: (Path(n.layout.log) / "etcd.log").stat().st_size for n in cluster.nodes}
    # `aws ec2 stop-instances` of every member, then start: the instance stores come back blank.
    with ThreadPoolExecutor(max_workers=len(cluster.nodes)) as pool:
        list(pool.map(lambda n: n.machine.poweroff(), cluster.nodes))
    cluster.up(timeout=600, log=lambda _: None)

    # etcd kept its data: the same members, none re-added; so the DCS kept the cluster.
    assert etcd_ids(cluster) == members
    for node in cluster.nodes:
        with open(Path(node.layout.log) / "etcd.log", "rb") as fh:
            fh.seek(etcd_marks[node.member.name])
            assert "etcd start: this member has etcd data" in fh.read().decode(errors="replace")
    # Every member's data was gone and came from the repository, with no leader to clone from
    # (no bootstrap: the DCS knows the cluster).
    for node in cluster.nodes:
        log = new_log(node, "patroni.log", marks)
        assert "(without leader)" in log and "replica has been created using pgbackrest" in log
        host = node.machine.run(["journalctl", "-b", "-u", "pgha-host.service", "-o", "cat"]).stdout
        assert "formatting blank device" in host
        assert "bootstrap path" not in new_log(node, "patroni.stdout.log", marks)
    with su(cluster) as conn:
        assert conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0] == sysid
        assert conn.execute("SELECT id FROM metal_marks").fetchall() == [(1,)]
    assert facts(cluster)[1] > timeline
    assert cluster.health_problems() == []
