"""bootstrap: restore from the repository when it holds a backup, initdb only for a new cluster,
fail on anything else. The `pgbackrest info --output=json` answers below are pgBackRest 2.55.1's
own (the node image's), taken on the local cluster on 2026-12-01 and trimmed of nothing but
whitespace; the last part runs real initdb and pgBackRest 2.45 of this machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pgha.agent import bootstrap, cli
from pgha.agent.errors import AgentError

from .agent_helpers import PG_BIN, make_node, run_as, run_cli, write_json

# Two backups (a full and an incremental on it), archive on timeline 1.
WITH_BACKUPS = """[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1","max":"00000001000000000000000D",
"min":"000000010000000000000001"}],"backup":[{"archive":{"start":"00000001000000000000000B",
"stop":"00000001000000000000000B"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":1,"repo-key":1},
"error":false,"info":{"delta":31272150,"repository":{"delta":6060360,"size":6060360},"size":31272150},
"label":"20261201-155910F","lsn":{"start":"0/B000028","stop":"0/B000120"},"prior":null,"reference":null,
"timestamp":{"start":1796140750,"stop":1796140753},"type":"full"},{"archive":{"start":"00000001000000000000000C",
"stop":"00000001000000000000000D"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":1,"repo-key":1},
"error":false,"info":{"delta":8449,"repository":{"delta":459,"size":6060359},"size":31272149},
"label":"20261201-155910F_20261201-155919I","lsn":{"start":"0/C000028","stop":"0/D000050"},
"prior":"20261201-155910F","reference":["20261201-155910F"],"timestamp":{"start":1796140759,"stop":1796140761},
"type":"incr"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7714362338585228324,"version":"17"}],
"name":"pg-x","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],
"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"""
# A stanza created by the first primary, WAL archived, no backup taken yet.
NO_BACKUP = """[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1","max":"000000010000000000000004",
"min":"000000010000000000000001"}],"backup":[],"cipher":"none","db":[{"id":1,"repo-key":1,
"system-id":7714362338585228324,"version":"17"}],"name":"pg-x","repo":[{"cipher":"none","key":1,
"status":{"code":2,"message":"no valid backups"}}],"status":{"code":2,"lock":{"backup":{"held":false}},
"message":"no valid backups"}}]"""
# A new cluster: nothing under its repository path.
MISSING = """[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"pg-x","repo":[{"cipher":"none","key":1,
"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":1,"lock":{"backup":{"held":false}},
"message":"missing stanza path"}}]"""
# S3 unreachable (nothing listening on the endpoint's port): pgBackRest still exits 0.
UNREACHABLE = """[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"pg-x","repo":[{"cipher":"none","key":1,
"status":{"code":99,"message":"[HostConnectError] unable to connect to 'localhost:1 (::1)': [111] Connection refused\\n
    [HostConnectError] on 13 retries from 1-60001ms: unable to connect to 'localhost:1 (127.0.0.1)': [111] Connection
 refused"}}],"status":{"code":99,"lock":{"backup":{"held":false}},"message":"other"}}]""".replace("\n", "")
# The bucket gone (moto's 404), pgBackRest exits 0 here too.
NO_BUCKET = """[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"pg-x","repo":[{"cipher":"none","key":1,
"status":{"code":99,"message":"[ProtocolError] HTTP request failed with 404 (NOT FOUND):\\n*** Path/Query ***:\\nGET
 /nobucket/?delimiter=%2F&list-type=2&prefix=pg-x%2Fpgbackrest%2Fbackup%2F"}}],"status":{"code":99,
"lock":{"backup":{"held":false}},"message":"other"}}]""".replace("\n", "")
# The stanza directory is there but its info files are not (pgBackRest's code 3).
MISSING_DATA = """[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"pg-x","repo":[{"cipher":"none","key":1,
"status":{"code":3,"message":"missing stanza data"}}],"status":{"code":3,"lock":{"backup":{"held":false}},
"message":"missing stanza data"}}]"""


def plan(text: str, **node):
    return bootstrap.choose_plan(make_node(Path("/nonexistent"), **node), json.loads(text.replace("\n", "")))


def test_a_repository_with_backups_is_restored_from_its_newest():
    p = plan(WITH_BACKUPS)
    assert p.path == bootstrap.REPOSITORY and p.backup == "20261201-155910F_20261201-155919I"
    assert "2 backup(s)" in p.reason and "00000001000000000000000D" in p.reason


@pytest.mark.parametrize("text, why", [(MISSING, "missing stanza path"), (NO_BACKUP, "no valid backups")])
def test_a_new_cluster_runs_initdb(text, why):
    p = plan(text)
    assert p.path == bootstrap.INITDB and why in p.reason and p.backup == ""


def test_wal_without_a_backup_is_named_when_initdb_goes_ahead():
    assert "000000010000000000000001..000000010000000000000004 of system 7714362338585228324" in plan(NO_BACKUP).reason
    assert "archive holds" not in plan(MISSING).reason


@pytest.mark.parametrize("text, words", [
    (UNREACHABLE, "other (code 99), repo1: [HostConnectError] unable to connect to 'localhost:1"),
    (NO_BUCKET, "other (code 99), repo1: [ProtocolError] HTTP request failed with 404"),
    (MISSING_DATA, "missing stanza data (code 3)"),
])
def test_any_other_answer_fails_the_bootstrap_instead_of_an_initdb(text, words):
    with pytest.raises(AgentError) as failed:
        plan(text)
    assert words in str(failed.value) and "not bootstrapping" in str(failed.value)


@pytest.mark.parametrize("info", [[], [{"name": "pg-other", "status": {"code": 1}}], {"name": "pg-x"}, None])
def test_an_answer_without_this_stanza_fails(info):
    with pytest.raises(AgentError, match="no entry for stanza pg-x"):
        bootstrap.choose_plan(make_node(Path("/nonexistent")), info)


SOURCE = {"stanza": "pg-src", "bucket": "src", "path": "/pg-src/pgbackrest", "target": "latest", "type": "default"}


def test_a_new_branch_restores_its_source():
    node = make_node(Path("/nonexistent"), restore=SOURCE)
    assert bootstrap.asks_own_repository(node)  # a branch (another stanza): its own is asked too
    for own in (MISSING, NO_BACKUP):
        p = plan(own, restore=SOURCE)
        assert p.path == bootstrap.SOURCE and "pg-src" in p.reason and "has no backup yet" in p.reason
    assert bootstrap.choose_plan(node, None).path == bootstrap.SOURCE


def test_a_branch_that_lost_its_dcs_and_data_restores_its_own_history_not_its_source():
    # Restoring the source again would drop every write made on the branch since it was made.
    p = plan(WITH_BACKUPS, restore=SOURCE)
    assert p.path == bootstrap.REPOSITORY and p.backup == "20261201-155910F_20261201-155919I"
    assert "a branch with a history of its own" in p.reason and "not its source (stanza pg-src)" in p.reason
    with pytest.raises(AgentError, match="not bootstrapping"):  # its own unreadable: no guess
        plan(UNREACHABLE, restore=SOURCE)


def test_a_cluster_restored_from_its_own_repository_restores_to_the_target():
    own = {**SOURCE, "stanza": "pg-x", "path": "/pg-x/pgbackrest", "target": "2026-12-01T12:00:00Z", "type": "time"}
    node = make_node(Path("/nonexistent"), restore=own)
    assert not bootstrap.asks_own_repository(node)
    p = bootstrap.choose_plan(node, None)
    assert p.path == bootstrap.SOURCE and "2026-12-01T12:00:00Z" in p.reason


def test_restore_recovers_the_chosen_backup_to_the_end_of_the_archive():
    node = make_node(Path("/b"))
    argv = bootstrap.restore_own_argv(node, "20261201-155910F", binary="/usr/bin/pgbackrest")
    assert argv[-1] == "restore" and "--stanza=pg-x" in argv and "--set=20261201-155910F" in argv
    assert "--type=default" in argv and not any(a.startswith(("--target", "--repo1-path", "--repo1-s3")) for a in argv)


def test_initdb_gets_patroni_s_options_and_refuses_ones_the_bootstrap_sets():
    node = make_node(Path("/b"))
    argv = bootstrap.initdb_argv(node, ["--encoding=UTF8", "--locale=C.UTF-8", "--data-checksums"], "/tmp/pw")
    assert argv == [f"{PG_BIN}/initdb", "--encoding=UTF8", "--locale=C.UTF-8", "--data-checksums",
                    "--username=postgres", "--pwfile=/tmp/pw", "/b/data/pg/data"]
    with pytest.raises(AgentError, match="--pgdata"):
        bootstrap.initdb_argv(node, ["--pgdata=/elsewhere"], None)


# -- the command, with stand-ins for pgBackRest and initdb ------------------------------------

FAKE = """#!/bin/sh
# Records its command line (and, for initdb, the password file's content while it runs).
printf '%s\\n' "$@" > "$FAKE_OUT.$(basename "$0").argv"
for a in "$@"; do case "$a" in --pwfile=*) cat "${a#--pwfile=}" > "$FAKE_OUT.pw";; esac; done
if [ "$(basename "$0")" = pgbackrest ] && [ -n "$FAKE_INFO" ]; then cat "$FAKE_INFO"; fi
exit "${FAKE_RC:-0}"
"""


@pytest.fixture
def world(base: Path):
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name in ("pgbackrest", "initdb"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    node = make_node(base, paths={"pg_bin": str(bin_dir)})
    nj = write_json(base / "etc" / "node.json", node)

    def run(info: str, *extra: str, rc: int = 0, env: dict | None = None):
        (base / "info.json").write_text(info.replace("\n", ""))
        return run_cli("--node-json", str(nj), "bootstrap", "--pgbackrest", str(bin_dir / "pgbackrest"),
                       "--initdb=--encoding=UTF8 --locale=C.UTF-8 --data-checksums", *extra,
                       env={"FAKE_OUT": str(base / "call"), "FAKE_INFO": str(base / "info.json"), "FAKE_RC": str(rc),
                            **(env or {})})

    def called(name: str) -> list[str] | None:
        path = base / f"call.{name}.argv"
        return path.read_text().splitlines() if path.exists() else None
    return run, called, base, node


def test_a_new_cluster_runs_initdb_with_the_superuser_s_password_in_a_file_that_is_gone_after(world):
    run, called, base, node = world
    res = run(MISSING, env={"PATRONI_SUPERUSER_PASSWORD": "Su-pw-x"})
    assert res.returncode == 0, res.stderr
    assert "bootstrap path initdb: the repository has no stanza pg-x (missing stanza path)" in res.stderr
    argv = called("initdb")
    assert argv[:3] == ["--encoding=UTF8", "--locale=C.UTF-8", "--data-checksums"]
    assert argv[3] == "--username=postgres" and argv[-1] == node["paths"]["pgdata"]
    assert (base / "call.pw").read_text() == "Su-pw-x" and not Path(argv[4].split("=", 1)[1]).exists()
    assert "Su-pw-x" not in res.stderr
    assert called("pgbackrest")[-1] == "info"  # asked once, restored nothing


def test_a_cluster_with_backups_is_restored_and_never_initdb_d(world):
    run, called, base, node = world
    res = run(WITH_BACKUPS)
    assert res.returncode == 0, res.stderr
    assert "bootstrap path repository: this cluster's repository (stanza pg-x) holds 2 backup(s)" in res.stderr
    assert called("initdb") is None
    argv = called("pgbackrest")
    assert argv[-1] == "restore" and "--set=20261201-155910F_20261201-155919I" in argv


@pytest.mark.parametrize("info, rc, words", [(UNREACHABLE, 0, "HostConnectError"),
                                             ("not json", 0, "printed no JSON"),
                                             (MISSING, 28, "pgbackrest info exited 28")])
def test_a_repository_that_does_not_answer_fails_and_nothing_is_initialised(world, info, rc, words):
    run, called, base, node = world
    res = run(info, rc=rc)
    assert res.returncode == 1 and words in res.stderr
    assert called("initdb") is None and called("pgbackrest")[-1] == "info"


def test_a_data_directory_with_files_is_never_bootstrapped_over(world):
    run, called, base, node = world
    pgdata = Path(node["paths"]["pgdata"])
    pgdata.mkdir(parents=True)
    (pgdata / ".hidden").write_text("")  # Patroni counts a directory of dot files as empty
    assert run(MISSING).returncode == 0
    os.unlink(base / "call.initdb.argv")
    (pgdata / "PG_VERSION").write_text("17\n")
    res = run(MISSING)
    assert res.returncode == 1 and "is not empty" in res.stderr and called("initdb") is None


# -- real initdb (PostgreSQL 15) and pgBackRest (2.45) on an empty posix repository -----------

@pytest.mark.usefixtures("_root")
def test_real_initdb_after_real_pgbackrest_finds_no_stanza(base: Path):
    node = make_node(base)
    p = node["paths"]
    Path(p["pgbackrest_config"]).parent.mkdir(parents=True)
    Path(p["pgbackrest_config"]).write_text(f"[global]\nrepo1-type=posix\nrepo1-path={base}/repo\n"
                                            f"lock-path={base}/run\nlog-path={base}/log\n\n"
                                            f"[pg-x]\npg1-path={p['pgdata']}\n")
    for d in ("repo", "run", "log", "data/pg", "etc/secrets/pgbackrest"):
        (base / d).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "postgres:postgres", str(base)], check=True)
    nj = write_json(base / "etc" / "node.json", node)
    code, out = run_as("postgres", lambda: cli.main(["--node-json", str(nj), "bootstrap",
                                                     "--initdb=--encoding=UTF8 --locale=C.UTF-8 --data-checksums"]))
    assert code == 0, out
    assert "bootstrap path initdb: the repository has no stanza pg-x (missing stanza path)" in out
    control = subprocess.run([str(PG_BIN / "pg_controldata"), p["pgdata"]], capture_output=True, text=True).stdout
    assert "Data page checksum version:           1" in control
    with open(Path(p["pgdata"]) / "postgresql.conf") as fh:
        conf = fh.read()
    assert "lc_messages = 'C.UTF-8'" in conf
