"""Backups without daemons: cron -> OnCalendar, rendered timers/units/Patroni methods, the
agent's choice of the member that backs up, and what a restored copy keeps of its source."""

import datetime
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pgha.agent import backup, errors, restore
from pgha.render import render_node, timer_names, unit_names
from pgha.spec import SpecError
from pgha.spec.schedule import CronError, cron_to_oncalendar, runs_at
from render_fixtures import ec2_context, local_context, make_spec


@pytest.mark.parametrize("cron, expected", [
    ("0 1 * * *", ["*-*-* 01:00:00 UTC"]),
    ("*/15 * * * *", ["*-*-* 00..23:00,15,30,45:00 UTC"]),
    ("30 2 * * 0", ["Sun *-*-* 02:30:00 UTC"]),
    ("0 3 * * 1-5", ["Mon..Fri *-*-* 03:00:00 UTC"]),
    ("0 0 * * 0,6", ["Sat..Sun *-*-* 00:00:00 UTC"]),
    ("5-50/15 0-23/6 * 1,2,3 *", ["*-01..03-* 00,06,12,18:05,20,35,50:00 UTC"]),
    # cron: day of month OR day of week; systemd: one line each.
    ("0 2 1,15 * 7", ["*-*-01,15 02:00:00 UTC", "Sun *-*-* 02:00:00 UTC"]),
])
def test_cron_becomes_oncalendar(cron, expected):
    assert cron_to_oncalendar(cron) == expected


# systemd-analyze (package systemd, installed by scripts/setup.sh; no running systemd needed).
@pytest.mark.parametrize("cron", ["0 1 * * *", "*/15 * * * *", "0 3 * * 1-5", "5-50/15 0-23/6 * 1,2,3 *",
                                  "0 2 1,15 * 7", "0 0 * * 0,6,1"])
def test_oncalendar_is_accepted_by_systemd(cron):
    for line in cron_to_oncalendar(cron):
        proc = subprocess.run(["systemd-analyze", "calendar", line], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("cron", ["0 1 * * *", "*/15 * * * *", "0 3 * * 1-5", "0 2 1,15 * 7", "0 0 * * 0,6,1"])
def test_runs_at_agrees_with_the_timer_systemd_computes(cron):
    elapses = []
    for line in cron_to_oncalendar(cron):
        out = subprocess.run(["systemd-analyze", "calendar", "--iterations=6", line], capture_output=True,
                             text=True, check=True).stdout
        elapses += [datetime.datetime.strptime(m, "%Y-%m-%d %H:%M:%S")
                    for m in re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", out)]
    assert len(elapses) >= 6
    for when in elapses:
        assert runs_at(cron, when) and runs_at(cron, when + datetime.timedelta(seconds=59))
        before = when - datetime.timedelta(minutes=1)
        assert runs_at(cron, before) == (before in elapses)


@pytest.mark.parametrize("cron, fragment", [
    ("61 * * * *", "minute"), ("0 24 * * *", "hour"), ("0 0 0 * *", "day of month"), ("0 0 * 13 *", "month"),
    ("0 0 * * 8", "day of week"), ("0 0 * *", "five"), ("5-1 * * * *", "low before high"), ("*/0 * * * *", "step"),
])
def test_bad_cron_is_refused_with_the_field_named(cron, fragment):
    with pytest.raises(CronError, match=fragment):
        cron_to_oncalendar(cron)


def test_out_of_range_schedules_fail_validation():
    with pytest.raises(SpecError) as caught:
        make_spec({"backup": {"fullSchedule": "0 25 * * *", "incrSchedule": "99 * * * *"}})
    keys = {p.key for p in caught.value.problems}
    assert keys == {"pgha:backup.fullSchedule", "pgha:backup.incrSchedule"}


def files_of(spec, ctx, index=0):
    return {f.path: f.content for f in render_node(spec, spec.members[index], ctx)}


def test_every_node_gets_a_timer_per_schedule_and_a_service_per_type():
    spec = make_spec({"backup": {"fullSchedule": "0 1 * * 0", "incrSchedule": "0 * * * *"}})
    ctx = ec2_context(spec)
    for index in range(len(spec.members)):
        files = files_of(spec, ctx, index)
        units = {Path(p).name for p in files if p.startswith("/etc/systemd/system/")}
        assert {"pgha-backup-full.service", "pgha-backup-diff.service", "pgha-backup-incr.service",
                "pgha-backup-full.timer", "pgha-backup-incr.timer", "pgha-pgbackrest-server.service"} <= units
        assert "pgha-backup-diff.timer" not in units
    files = files_of(spec, ctx)
    assert "OnCalendar=Sun *-*-* 01:00:00 UTC" in files["/etc/systemd/system/pgha-backup-full.timer"]
    assert "backup --type incr" in files["/etc/systemd/system/pgha-backup-incr.service"]
    assert timer_names(spec) == ["pgha-config.timer", "pgha-backup-full.timer", "pgha-backup-incr.timer"]
    # start-node enables node.json's timers at boot.
    assert json.loads(files["/etc/pgha/node.json"])["timers"] == timer_names(spec)
    # Backups are not daemons: not started with the node, only by their timers.
    assert not [u for u in unit_names(spec, spec.members[0], ctx) if u.startswith("pgha-backup")]


def test_tls_server_admits_only_members_for_the_stanza():
    spec = make_spec({})
    files = files_of(spec, ec2_context(spec))
    unit = files["/etc/systemd/system/pgha-pgbackrest-server.service"]
    auth = sorted(part for part in unit.split() if part.startswith("--tls-server-auth="))
    assert auth == [f"--tls-server-auth={m.name}={spec.cluster_name}" for m in spec.members]
    assert "--tls-server-ca-file=/etc/pgha/tls/ca.crt" in unit and " server" in unit


def test_replicas_are_created_from_the_repository_first():
    spec = make_spec({})
    patroni = yaml.safe_load(files_of(spec, ec2_context(spec))["/etc/pgha/patroni.yml"])
    pg = patroni["postgresql"]
    assert pg["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert pg["pgbackrest"]["keep_data"] is True and pg["pgbackrest"]["no_params"] is True
    assert pg["pgbackrest"]["no_leader"] is True  # a DCS that outlived every member's data
    assert "--delta --type=standby" in pg["pgbackrest"]["command"]
    assert "archive-get" in pg["recovery_conf"]["restore_command"]
    # Even a cluster without a restore source bootstraps through the agent, never Patroni's initdb.
    boot = patroni["bootstrap"]
    assert boot["method"] == "pgha_bootstrap" and "initdb" not in boot
    assert boot["pgha_bootstrap"]["command"].endswith("pgha-node.pyz --node-json /etc/pgha/node.json bootstrap")
    assert boot["pgha_bootstrap"]["initdb"] == "--encoding=UTF8 --locale=C.UTF-8 --data-checksums"


def test_peers_carry_each_members_address_and_paths():
    spec = make_spec({})
    facts = json.loads(files_of(spec, local_context(spec))["/etc/pgha/node.json"])
    second = spec.members[1].name
    assert facts["peers"][second]["pgdata"] == "/var/lib/pgha/pg/data"
    assert facts["peers"][second]["ip"] == "10.219.9.2" and facts["restore"] is None


CLUSTER = {"members": [
    {"name": "pg-1", "role": "leader", "state": "running", "timeline": 3},
    {"name": "pg-3", "role": "replica", "state": "streaming", "lag": 0},
    {"name": "pg-2", "role": "sync_standby", "state": "streaming", "lag": 0},
]}


def test_the_sync_standby_takes_the_backup():
    assert backup.choose_backup_member(CLUSTER) == ("pg-2", "pg-1")


def test_a_lagging_or_stopped_replica_never_takes_it():
    view = {"members": [CLUSTER["members"][0],
                        {"name": "pg-2", "role": "sync_standby", "state": "stopped", "lag": 0},
                        {"name": "pg-3", "role": "replica", "state": "streaming", "lag": 64 << 20},
                        {"name": "pg-4", "role": "replica", "state": "streaming", "lag": "unknown"}]}
    assert backup.choose_backup_member(view) == ("pg-1", "pg-1")
    view["members"].append({"name": "pg-5", "role": "replica", "state": "streaming", "lag": 1024})
    assert backup.choose_backup_member(view) == ("pg-5", "pg-1")
    assert backup.choose_backup_member({"members": [{"name": "pg-1", "role": "leader", "state": "stopped"}]}) == (
        None, None)


def node_facts(tmp_path, restore=None, secrets="/etc/pgha/secrets"):
    return {"cluster": "pg-x", "member": "pg-x-2", "stanza": "pg-x", "ip": "10.0.0.2",
            "paths": {"pgbackrest_config": "/etc/pgha/pgbackrest/pgbackrest.conf", "secrets": secrets,
                      "tls": "/etc/pgha/tls", "pgdata": str(tmp_path), "etc": "/etc/pgha", "bin": "/opt/pgha/bin",
                      "python": "/usr/bin/python3"},
            "ports": {"postgres": 5432, "pgbackrest_server": 8432}, "users": {"superuser": "postgres"},
            "peers": {"pg-x-1": {"ip": "10.0.0.1", "pgdata": "/d1", "socket": "/s1"},
                      "pg-x-2": {"ip": "10.0.0.2", "pgdata": "/d2", "socket": "/s2"}},
            "restore": restore}


def test_a_standby_backup_names_the_primary_as_pg1_through_the_relay(tmp_path):
    opts = backup.standby_backup_options(node_facts(tmp_path), "pg-x-1", 40001)
    assert "--backup-standby" in opts and "--pg1-host=localhost" in opts and "--pg1-host-port=40001" in opts
    assert "--pg1-path=/d1" in opts and "--pg1-socket-path=/s1" in opts and "--pg2-path=/d2" in opts
    assert "--pg1-host-type=tls" in opts


def test_restore_reads_the_source_repository_only_in_its_own_command(tmp_path):
    facts = node_facts(tmp_path, {"stanza": "pg-src", "bucket": "src-bucket", "path": "/pg-src/pgbackrest",
                                  "target": "2025-01-31T12:00:00.5+01:00", "type": "time"})
    argv = restore.restore_argv(facts)
    assert "--stanza=pg-src" in argv and "--repo1-s3-bucket=src-bucket" in argv
    assert "--target=2025-01-31 11:00:00.500000+00" in argv and "--target-action=promote" in argv
    assert argv[-1] == "restore"
    # A restore of the cluster's own repository: its own cipher (pgbackrest.conf) and restore_command.
    assert not [a for a in argv if a.startswith(("--repo1-cipher", "--recovery-option"))]
    assert restore.source_cipher_env(facts) == {}


SOURCE = {"stanza": "pg-src", "bucket": "src-bucket", "path": "/pg-src/pgbackrest", "target": "latest",
          "type": "default"}
SOURCE_PASS = "Source-cipher-pw-5e6f7a"


def test_an_encrypted_source_is_restored_with_its_pass_in_the_environment_only(tmp_path):
    (tmp_path / "source-cipher-pass").write_text(SOURCE_PASS + "\n")
    facts = node_facts(tmp_path, {**SOURCE, "cipher": "aes-256-cbc",
                                  "cipher_secret": {"source": "aws", "id": "arn:x", "region": "us-east-1"}},
                       secrets=str(tmp_path))
    facts["backup_encryption"] = True  # the branch's own pass (config include) must not apply
    argv = restore.restore_argv(facts)
    assert "--repo1-cipher-type=aes-256-cbc" in argv and "--stanza=pg-src" in argv
    assert not any(SOURCE_PASS in a for a in argv)
    assert restore.source_cipher_env(facts) == {"PGBACKREST_REPO1_CIPHER_PASS": SOURCE_PASS}
    # Recovery reads the source's WAL through the agent, which puts the pass in the environment too.
    (command,) = [a.split("=", 2)[2] for a in argv if a.startswith("--recovery-option=restore_command=")]
    assert command == ("/usr/bin/python3 /opt/pgha/bin/pgha-node.pyz --node-json /etc/pgha/node.json "
                       'archive-get-source --pgbackrest pgbackrest %f "%p"')
    get = restore.source_archive_get_argv(facts, "000000010000000000000002", "pg_wal/RECOVERYXLOG")
    assert get[-3:] == ["archive-get", "000000010000000000000002", "pg_wal/RECOVERYXLOG"]
    assert {"--stanza=pg-src", "--repo1-s3-bucket=src-bucket", "--repo1-path=/pg-src/pgbackrest",
            "--repo1-cipher-type=aes-256-cbc", f"--pg1-path={tmp_path}"} <= set(get)


def test_an_unencrypted_source_is_restored_without_the_branchs_own_cipher(tmp_path):
    facts = node_facts(tmp_path, {**SOURCE, "cipher": "none"})
    facts["backup_encryption"] = True
    argv = restore.restore_argv(facts)
    # Command line > environment > pgbackrest.conf (whose repo1-cipher-type is the branch's own).
    assert "--repo1-cipher-type=none" in argv and restore.source_cipher_env(facts) == {}
    (command,) = [a.split("=", 2)[2] for a in argv if a.startswith("--recovery-option=restore_command=")]
    assert command == ("pgbackrest --config=/etc/pgha/pgbackrest/pgbackrest.conf "
                       "--config-include-path=/etc/pgha/secrets/pgbackrest --stanza=pg-src "
                       "--repo1-s3-bucket=src-bucket --repo1-path=/pg-src/pgbackrest --repo1-cipher-type=none "
                       f'--pg1-path={tmp_path} archive-get %f "%p"')


def test_an_encrypted_source_without_its_pass_file_is_a_clear_error(tmp_path):
    facts = node_facts(tmp_path, {**SOURCE, "cipher": "aes-256-cbc"}, secrets=str(tmp_path))
    with pytest.raises(errors.AgentError, match=f"{tmp_path}/source-cipher-pass cannot be read .*'pgha-node secrets'"):
        restore.source_cipher_env(facts)


def test_a_restore_command_that_would_need_quoting_is_refused(tmp_path):
    facts = node_facts(tmp_path / "data dir", {**SOURCE, "cipher": "none"})
    with pytest.raises(errors.AgentError, match="restore_command"):
        restore.restore_argv(facts)


def test_a_restored_copy_keeps_nothing_that_writes_to_the_source(tmp_path):
    (tmp_path / "postgresql.conf").write_text("archive_command = 'pgbackrest --stanza=pg-src archive-push %p'\n")
    (tmp_path / "postgresql.auto.conf").write_text(
        "# Do not edit\nsynchronous_standby_names = '\"pg-src-2\"'\nwork_mem = '64MB'\n"
        "archive_command = 'x'\nrestore_command = 'pgbackrest --stanza=pg-src archive-get %f \"%p\"'\n")
    removed = restore.scrub_restored_config(str(tmp_path))
    auto = (tmp_path / "postgresql.auto.conf").read_text()
    assert "synchronous_standby_names" not in auto and "archive_command" not in auto
    assert "work_mem" in auto and "restore_command" in auto  # needed to recover; reset after promotion
    assert not (tmp_path / "postgresql.conf").exists() and len(removed) == 3
