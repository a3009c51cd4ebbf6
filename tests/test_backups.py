"""Backups that restore, for real: pgBackRest from the loopback cluster to moto S3 over TLS
(CA file, hostname localhost), taken from the sync standby through the primary's TLS server;
restore and PITR with Patroni's custom bootstrap; a replica rebuilt from the repository;
branches; a restore failing after its checks rolled back; clear errors that touch nothing.
Tests run in file order and share the cluster."""

import datetime
import json
import re
import time
from pathlib import Path

import psycopg
import pytest

from conftest import wait_for_archived
from pgha.local import backups
from pgha.local import branch as branches
from pgha.spec import PORTS
from pgha.spec.schedule import runs_at

pytestmark = pytest.mark.cluster


def su(cluster):
    return psycopg.connect(backups.superuser_dsn(cluster, backups.leader(cluster, running=False)), autocommit=True,
                           connect_timeout=5)


def leader_of(cluster):
    return next(m for m in cluster.cluster_view()["members"] if m["role"] == "leader")


def keys(cluster, bucket, prefix=""):
    s3 = cluster.s3.client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def backup_log(node):
    path = f"{node.layout.log}/pgbackrest/backup.log"
    with open(path) as fh:
        return fh.read()


def patroni_post(cluster, node, path, body):
    secret = json.loads(cluster.secrets_file.read_text())["patroni_rest_password"]
    status, _ = cluster.patroni_client(node, auth=("patroni", secret)).request("POST", path, body, timeout=30)
    assert status < 400, (path, status)
    return status


def test_stanza_is_created_and_wal_reaches_s3(local_cluster):
    stanza = backups.info(local_cluster)
    assert stanza["status"]["code"] in (0, 2), stanza["status"]  # ok, or no backup yet
    with su(local_cluster) as conn:
        segment = backups.switch_wal(conn)
    prefix = f"{local_cluster.spec.cluster_name}/pgbackrest/archive/{local_cluster.spec.cluster_name}/"
    wait_for_archived(local_cluster, segment, local_cluster.bucket, prefix)


def test_full_diff_and_incr_backups_are_taken_from_the_sync_standby(local_cluster):
    made = [backups.run_backup(local_cluster, kind, log=lambda _: None) for kind in ("full", "diff", "incr")]
    assert [b["type"] for b in made] == ["full", "diff", "incr"]
    assert made[1]["reference"] and made[0]["label"] in made[1]["reference"]
    sync = next(m["name"] for m in local_cluster.cluster_view()["members"] if m["role"] == "sync_standby")
    for node in local_cluster.nodes:
        text = backup_log(node)
        if node.member.name == sync:
            assert "incr backup from standby" in text and "backup command end: completed successfully" in text
        else:
            assert f"incr backup: {sync} takes it" in text
    view = backups.status(local_cluster)
    assert [b["label"] for b in view["stanza"]["backup"]][-3:] == [b["label"] for b in made]
    # Attempts before the stanza existed (right after bootstrap) fail and are retried; what
    # matters is that the newest WAL archived after the newest failure.
    archiver = view["archiver"]
    assert archiver["last_archived_time"] is not None
    assert archiver["last_failed_time"] is None or archiver["last_archived_time"] > archiver["last_failed_time"]
    assert "primary archiver" in backups.format_status(view)


def test_retention_expires_old_backups_and_their_wal(local_cluster):
    backups.run_backup(local_cluster, "full", log=lambda _: None)
    before = backups.info(local_cluster)
    fulls = [b for b in before["backup"] if b["type"] == "full"]
    assert len(fulls) >= 2
    node = local_cluster.nodes[0]
    # Same repository and config the nodes use; count retention stands in for days gone by.
    proc = backups.pgbackrest(local_cluster, node, f"--stanza={local_cluster.spec.cluster_name}",
                              "--repo1-retention-full-type=count", "--repo1-retention-full=1", "expire")
    assert proc.returncode == 0, proc.stderr
    after = backups.info(local_cluster)
    assert [b["label"] for b in after["backup"]] == [fulls[-1]["label"]]
    assert after["archive"][0]["min"] >= fulls[-1]["archive"]["start"]


def test_pitr_restores_exactly_the_rows_before_the_target(local_cluster):
    with su(local_cluster) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pitr_marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO pitr_marks (id) VALUES (1)")
        time.sleep(1.2)
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1.2)
        conn.execute("INSERT INTO pitr_marks (id) VALUES (2)")
        timeline_before = leader_of(local_cluster)["timeline"]
        backups.switch_wal(conn)
    when = target.astimezone(datetime.timezone.utc).isoformat()
    done = backups.restore(local_cluster, when, log=lambda _: None)
    assert done["timeline"] > timeline_before
    with su(local_cluster) as conn:
        assert conn.execute("SELECT id FROM pitr_marks ORDER BY id").fetchall() == [(1,)]
        # The source's restore_command and target are gone: a clone must not follow them.
        assert conn.execute("SHOW restore_command").fetchone()[0] == ""
    assert local_cluster.health_problems() == []
    # The replicas were rebuilt from the repository (a backup on the new timeline), not streamed.
    for node in local_cluster.nodes[1:]:
        log = open(f"{node.layout.log}/patroni/patroni.log").read()
        assert "replica has been created using pgbackrest" in log.split("trying to bootstrap")[-1] or \
               log.rstrip().count("created using pgbackrest") >= 1


def test_restore_latest_after_a_failover_follows_the_new_timeline(local_cluster):
    old = leader_of(local_cluster)
    candidate = next(m["name"] for m in local_cluster.cluster_view()["members"] if m["role"] == "sync_standby")
    node = next(n for n in local_cluster.nodes if n.member.name == old["name"])
    assert patroni_post(local_cluster, node, "/switchover", {"leader": old["name"], "candidate": candidate}) == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = local_cluster.cluster_view() or {}
        lead = next((m for m in view.get("members", []) if m["role"] == "leader" and m["state"] == "running"), None)
        if lead and lead["name"] == candidate:
            break
        time.sleep(1)
    local_cluster.wait_healthy(timeout=90)
    new = leader_of(local_cluster)
    assert new["name"] == candidate and new["timeline"] > old["timeline"]
    with su(local_cluster) as conn:
        conn.execute("INSERT INTO pitr_marks (id) VALUES (3)")
    done = backups.restore(local_cluster, "latest", log=lambda _: None)
    assert done["timeline"] > new["timeline"]
    with su(local_cluster) as conn:
        assert conn.execute("SELECT id FROM pitr_marks ORDER BY id").fetchall() == [(1,), (3,)]
    # The archive continues on the restored timeline.
    with su(local_cluster) as conn:
        conn.execute("INSERT INTO pitr_marks (id) VALUES (4)")
        segment = backups.switch_wal(conn)
    assert int(segment[:8], 16) == done["timeline"]
    wait_for_archived(local_cluster, segment, local_cluster.bucket)


def test_a_replica_is_rebuilt_from_the_repository(local_cluster):
    replica = next(m["name"] for m in local_cluster.cluster_view()["members"] if m["role"] == "replica")
    node = next(n for n in local_cluster.nodes if n.member.name == replica)
    log_path = f"{node.layout.log}/patroni/patroni.log"
    seen = open(log_path).read().count("replica has been created using pgbackrest")
    assert patroni_post(local_cluster, node, "/reinitialize", {"force": True}) == 200
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and open(log_path).read().count("replica has been created using pgbackrest") == seen:
        time.sleep(1)
    assert open(log_path).read().count("replica has been created using pgbackrest") == seen + 1
    local_cluster.wait_healthy(timeout=120)
    # A quick rebuild can end before Patroni's next loop updates the member's state, so the
    # health check may still see the old "streaming": wait for the rebuilt PostgreSQL itself.
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = psycopg.connect(local_cluster.superuser_dsn(node),
                                   connect_timeout=5)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    with conn:
        assert conn.execute("SELECT count(*) FROM pitr_marks").fetchone()[0] >= 3


def test_a_branch_holds_the_source_data_and_writes_only_its_own_repository(local_cluster):
    source_prefix = f"{local_cluster.spec.cluster_name}/"
    before = set(keys(local_cluster, local_cluster.bucket))
    source_tl = leader_of(local_cluster)["timeline"]
    entry = branches.create(local_cluster, "br-test", "latest", log=lambda _: None)
    try:
        branch = branches.open_branch(local_cluster, "br-test", entry)
        assert branch.nodes[0].ip == local_cluster.address_prefix + "11"
        with psycopg.connect(backups.superuser_dsn(branch, branch.nodes[0]), autocommit=True) as conn:
            assert conn.execute("SELECT id FROM pitr_marks ORDER BY id").fetchall() == [(1,), (3,), (4,)]
            conn.execute("INSERT INTO pitr_marks (id) VALUES (100)")
            segment = backups.switch_wal(conn)
            assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] == ""
        branch_tl = int(segment[:8], 16)
        assert branch_tl > source_tl
        own = wait_for_archived(branch, segment, branch.bucket)
        assert all(k.startswith("br-test/") for k in own)
        assert any(k.endswith(f"{branch_tl:08X}.history") for k in own)
        # Nothing of the branch in the source's bucket: no branch prefix, no timeline of its own.
        added = set(keys(local_cluster, local_cluster.bucket)) - before
        assert all(k.startswith(source_prefix) for k in added)
        assert not [k for k in added if f"/{branch_tl:08X}" in k or "br-test" in k]
        assert [b["name"] for b in branches.list_branches(local_cluster)] == ["br-test"]
        with su(local_cluster) as conn:
            assert conn.execute("SELECT count(*) FROM pitr_marks WHERE id = 100").fetchone()[0] == 0
    finally:
        branches.delete(local_cluster, "br-test", log=lambda _: None)
    assert branches.list_branches(local_cluster) == []
    assert "pgha-br-test" not in [b["Name"] for b in local_cluster.s3.client().list_buckets()["Buckets"]]


def test_a_restore_that_fails_after_its_checks_is_rolled_back(local_cluster):
    def primary_service():
        # prepare_threshold=None: PgBouncer in transaction mode keeps no prepared statements.
        return psycopg.connect(local_cluster.dsn(local_cluster.nodes[-1].ip, PORTS["primary"]), connect_timeout=5,
                               prepare_threshold=None, autocommit=True)

    with primary_service() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rollback_marks (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO rollback_marks VALUES (1, 'archived'), (2, 'archived')")
    with su(local_cluster) as conn:
        backups.switch_wal(conn)
    with primary_service() as conn:
        # Committed after the last switched segment: the archive may not have it, the data directories do.
        conn.execute("INSERT INTO rollback_marks VALUES (3, 'not archived yet')")
        rows = conn.execute("SELECT id, note FROM rollback_marks ORDER BY id").fetchall()
    with su(local_cluster) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    assert len(rows) == 3
    backups_before = [b["label"] for b in backups.info(local_cluster)["backup"]]
    # 1 GiB past the current WAL position: a backup ends before it and it verifies, so the checks
    # pass; PostgreSQL then runs out of archived WAL before reaching it and refuses to promote.
    hi, lo = (int(part, 16) for part in lsn.split("/"))
    beyond = (hi << 32) + lo + (1 << 30)
    target = f"{beyond >> 32:X}/{beyond & 0xFFFFFFFF:X}"
    with pytest.raises(backups.BackupError) as failed:
        backups.restore(local_cluster, target, log=lambda _: None)
    message = str(failed.value)
    assert f"the restore to {target} failed" in message
    assert "recovery ended before configured recovery target was reached" in message
    assert "rolled back to its previous state and is running" in message
    assert local_cluster.health_problems() == []
    with primary_service() as conn:
        assert conn.execute("SELECT id, note FROM rollback_marks ORDER BY id").fetchall() == rows
        conn.execute("INSERT INTO rollback_marks VALUES (4, 'after the rollback')")
    # The original files are back, the restored data and the set-aside copies are gone, and the
    # failed attempt left no backup behind.
    for node in local_cluster.nodes:
        assert json.loads(open(f"{node.layout.etc}/node.json").read())["restore"] is None
        data = Path(node.layout.pgdata)
        assert (data / "PG_VERSION").exists()
        assert not data.with_name("data.pre-restore").exists() and not data.with_name("data.failed").exists()
    # A backup the schedule's timers took meanwhile (CI runs across the default 01:00 UTC) is not
    # the failed attempt's: it started in a minute the schedule of its type fires.
    def by_timer(backup: dict) -> bool:
        schedule = getattr(local_cluster.spec.backup, f"{backup['type']}_schedule")
        started = datetime.datetime.fromtimestamp(backup["timestamp"]["start"], datetime.timezone.utc)
        return bool(schedule) and runs_at(schedule, started)
    left = [b for b in backups.info(local_cluster)["backup"] if b["label"] not in backups_before]
    assert [b["label"] for b in left if not by_timer(b)] == []


def test_a_missing_or_corrupted_backup_is_a_clear_error_and_touches_nothing(local_cluster):
    lead = leader_of(local_cluster)
    with pytest.raises(backups.BackupError, match="no backup of stanza .* ends before"):
        backups.restore(local_cluster, "2001-01-01T00:00:00Z", log=lambda _: None)
    with pytest.raises(backups.BackupError, match="--to"):
        backups.restore(local_cluster, "yesterday", log=lambda _: None)
    # Damage the newest backup: remove its manifest's data files from the bucket.
    newest = backups.info(local_cluster)["backup"][-1]["label"]
    s3 = local_cluster.s3.client()
    prefix = f"{local_cluster.spec.cluster_name}/pgbackrest/backup/{local_cluster.spec.cluster_name}/{newest}/"
    victims = [k for k in keys(local_cluster, local_cluster.bucket, prefix) if "/pg_data/" in k or "/bundle/" in k]
    assert victims
    s3.delete_object(Bucket=local_cluster.bucket, Key=victims[0])
    with pytest.raises(backups.BackupError, match=f"backup {newest} failed verification, nothing was changed"):
        backups.restore(local_cluster, "latest", log=lambda _: None)
    after = leader_of(local_cluster)
    assert (after["name"], after["timeline"], after["state"]) == (lead["name"], lead["timeline"], "running")
    assert local_cluster.health_problems() == []
    # Clean up: expire the damaged set so the repository is whole again.
    proc = backups.pgbackrest(local_cluster, local_cluster.nodes[0], f"--stanza={local_cluster.spec.cluster_name}",
                              f"--set={newest}", "expire")
    assert proc.returncode == 0 or re.search("unable to expire|latest", proc.stderr + proc.stdout), proc.stderr
