"""Patroni's hooks against real daemons: post-bootstrap, on-role-change (and the PgBouncer exporter on the same stack)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pgha.agent import cli, envfile, facts, hooks
from pgha.agent.exporters import pgbackrest as pgbackrest_exporter

from .agent_helpers import (
    PASSWORDS,
    PG_BIN,
    PYTHON,
    ZIPAPP,
    _assert_nothing_secret,
    _start,
    _stop,
    free_port,
    make_node,
    make_secret,
    mkbase,
    run_as,
    run_cli,
    sample,
    scrape,
    wait_for,
    wait_for_scrape,
    write_json,
)


class Stack:
    pass



@pytest.fixture(scope="module")
def stack():
    assert os.geteuid() == 0, "needs root"
    assert PG_BIN.joinpath("initdb").exists() and shutil.which("pgbouncer") and shutil.which("pgbackrest"), \
        "needs postgresql-15, pgbouncer and pgbackrest (scripts/setup.sh installs them)"
    pwd.getpwnam("postgres")  # the OS user the daemons run as must exist
    base = mkbase("pgha-agent-stack-")
    s = Stack()
    s.base, s.procs = base, []
    s.pg = s.pgb = None
    try:
        pgport, pgbport = free_port(), free_port()
        node = make_node(base, ports={"postgres": pgport, "pgbouncer": pgbport})
        p = node["paths"]
        s.node, s.pgport, s.pgbport = node, pgport, pgbport
        secret = make_secret()
        del secret["s3_key"], secret["s3_key_secret"]  # posix repository here
        s.secret = secret
        write_json(base / "secret.json", secret)
        s.node_json = write_json(base / "etc" / "node.json", node)
        for d in ("run/postgres", "run/pgbouncer", "run/pgbackrest", "log", "data/pg", "repo"):
            (base / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "postgres:postgres", str(base)], check=True)
        # the secrets command writes the files the daemons below use
        assert cli.main(["--node-json", str(s.node_json), "secrets"]) == 0

        Path(p["pgbackrest_config"]).write_text(f"""[global]
repo1-type=posix
repo1-path={base}/repo
repo1-retention-full=1
lock-path={p['run']}/pgbackrest
log-path={p['log']}
log-level-console=warn
start-fast=y

[pg-x]
pg1-path={p['pgdata']}
pg1-port={pgport}
pg1-socket-path={p['run']}/postgres
pg1-user=postgres
""")
        os.chmod(p["pgbackrest_config"], 0o644)
        s.pgbackrest_cmd = " ".join(facts.pgbackrest_argv(node))

        subprocess.run([str(PG_BIN / "initdb"), "-D", p["pgdata"], "-U", "postgres", "-A", "peer",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, user="postgres", group="postgres", cwd="/")
        with open(Path(p["pgdata"]) / "postgresql.conf", "a") as fh:
            fh.write(f"""
listen_addresses = '127.0.0.1'
port = {pgport}
unix_socket_directories = '{p['run']}/postgres'
archive_mode = on
archive_command = '{s.pgbackrest_cmd} --stanza=pg-x archive-push %p'
log_statement = 'all'
logging_collector = off
""")
        (Path(p["pgdata"]) / "pg_hba.conf").write_text(
            "local all postgres peer\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
        s.pg = _start([str(PG_BIN / "postgres"), "-D", p["pgdata"]], base / "log" / "postgres.log")
        s.procs.append(s.pg)
        wait_for(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", f"{p['run']}/postgres",
                                         "-p", str(pgport)]).returncode == 0, what="PostgreSQL")

        (base / "etc" / "pgb_hba.conf").write_text(
            "local pgbouncer postgres peer\n"
            "local all dbuser_monitor scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        s.pgb_ini = base / "etc" / "pgbouncer.ini"
        s.pgb_ini.write_text(f"""[databases]
* = host={p['run']}/postgres port={pgport}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {pgbport}
unix_socket_dir = {p['run']}/pgbouncer
pidfile = {p['run']}/pgbouncer/pgbouncer.pid
logfile = {p['log']}/pgbouncer.log
auth_type = hba
auth_hba_file = {base}/etc/pgb_hba.conf
auth_file = {p['secrets']}/pgbouncer-userlist.txt
auth_user = pgbouncer_auth
auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)
admin_users = postgres
stats_users = dbuser_monitor
pool_mode = transaction
ignore_startup_parameters = extra_float_digits,options
server_idle_timeout = 600
""")
        for f in ("pgb_hba.conf", "pgbouncer.ini"):
            os.chmod(base / "etc" / f, 0o644)
        s.start_pgbouncer = lambda: _start_pgbouncer(s)
        s.stop_pgbouncer = lambda: _stop(s.pgb)
        s.start_pgbouncer()
        env = envfile.env_unquote((Path(p["secrets"]) / "exporter.env").read_text())
        s.pgb_admin_dsn = env["PGHA_PGBOUNCER_DSN"].replace("port=6432", f"port={pgbport}")
        s.pg_dsn_postgres = f"host={p['run']}/postgres port={pgport} dbname=postgres user=postgres"
        s.bootstrapped = False
        yield s
    finally:
        for proc in reversed(s.procs):
            _stop(proc)
        if not os.environ.get("PGHA_TEST_KEEP"):  # keep logs for debugging when set
            shutil.rmtree(base, ignore_errors=True)


def _start_pgbouncer(s):
    p = s.node["paths"]
    s.pgb = _start(["pgbouncer", str(s.pgb_ini)], s.base / "log" / "pgbouncer.stdout")
    s.procs.append(s.pgb)
    wait_for(lambda: os.path.exists(f"{p['run']}/pgbouncer/.s.PGSQL.{s.pgbport}"), what="PgBouncer socket")


def post_bootstrap(s) -> tuple[int, str]:
    return run_as("postgres", lambda: cli.main(
        ["--node-json", str(s.node_json), "post-bootstrap", s.pg_dsn_postgres]))


@pytest.fixture(scope="module")
def bootstrapped(stack):
    rc, out = post_bootstrap(stack)
    assert rc == 0, out
    stack.first_bootstrap_output = out
    return stack


def tcp_dsn(s, port, user, password, dbname="postgres"):
    return psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, dbname=dbname, user=user,
                                          password=password, sslmode="disable", connect_timeout=5)


def test_post_bootstrap_roles_and_auth_function(bootstrapped):
    s = bootstrapped
    log_text = s.first_bootstrap_output
    assert "role pgbouncer_auth created" in log_text and "role dbuser_monitor created" in log_text
    assert "database app created, owned by dbuser_app" in log_text
    # idempotent: a second run alters instead of failing
    rc, out = post_bootstrap(s)
    assert rc == 0, out
    assert "role dbuser_monitor altered" in out
    assert "pgbouncer.get_auth and extension pg_stat_statements present in template1" in out
    assert "extension pg_stat_statements present in app" in out
    _assert_nothing_secret(log_text + out)

    # the monitor logs in over TCP with SCRAM and is a pg_monitor member; a wrong password fails
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", PASSWORDS["monitor_password"])) as conn:
        row = conn.execute("SELECT pg_has_role('pg_monitor', 'MEMBER'), "
                           "current_setting('password_encryption')").fetchone()
        assert row == (True, "scram-sha-256")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", "wrong"))

    with psycopg.connect(tcp_dsn(s, s.pgport, "pgbouncer_auth", PASSWORDS["pgbouncer_auth_password"])) as conn:
        rows = conn.execute("SELECT usename, passwd FROM pgbouncer.get_auth('dbuser_app')").fetchall()
        assert len(rows) == 1 and rows[0][0] == "dbuser_app" and rows[0][1].startswith("SCRAM-SHA-256$4096:")
        # Application roles only: no superuser's, replication role's or service role's verifier.
        for role in ("postgres", "replicator", "dbuser_monitor", "pgbouncer_auth"):
            assert conn.execute("SELECT count(*) FROM pgbouncer.get_auth(%s)", (role,)).fetchone()[0] == 0, role
    # the application role owns its database and is no superuser (PgBouncer pools it)
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_app", PASSWORDS["app_password"], dbname="app")) as conn:
        assert conn.execute("SELECT current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == ("app", False)
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", PASSWORDS["monitor_password"])) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgbouncer.get_auth('pgbouncer_auth')")

    # as a superuser over the socket (peer needs uid postgres: check in a forked child)
    def check_catalog():
        with psycopg.connect(s.pg_dsn_postgres) as conn:
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
                                ).fetchone()[0] == 1
            assert conn.execute("SELECT prosecdef FROM pg_proc WHERE oid = 'pgbouncer.get_auth(text)'::regprocedure"
                                ).fetchone()[0] is True
        for db in ("template1", "app"):
            with psycopg.connect(s.pg_dsn_postgres.replace("dbname=postgres", f"dbname={db}")) as conn:
                assert conn.execute("SELECT 'pgbouncer.get_auth(text)'::regprocedure IS NOT NULL").fetchone()[0]
                # Query insights: template1's extension, inherited by app.
                assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
                                    ).fetchone()[0] == 1, db
        return 0
    rc, out = run_as("postgres", check_catalog)
    assert rc == 0, out
    # log_statement=all on this server: the clear passwords never reached its log
    _assert_nothing_secret((s.base / "log" / "postgres.log").read_text())


def test_pgbouncer_auth_query_login(bootstrapped):
    s = bootstrapped
    with psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"]),
                         prepare_threshold=None) as conn:
        for _ in range(7):  # beyond psycopg's default prepare threshold (field note 11)
            assert conn.execute("SELECT current_user, %s::int", (1,)).fetchone() == ("dbuser_monitor", 1)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", "wrong"))


def _server_pids(s) -> set[int]:
    cols, rows = hooks.admin_query(s.pgb_admin_dsn, "SHOW SERVERS")
    return {dict(zip(cols, r))["remote_pid"] for r in rows}


def _backend_alive(s, pid) -> bool:
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", PASSWORDS["monitor_password"])) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 1


def test_on_role_change_reconnects_pgbouncer(bootstrapped):
    s = bootstrapped
    with psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"]),
                         prepare_threshold=None, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    # the server connection stays pooled after the client left
    assert backend in _server_pids(s)
    time.sleep(0.5)
    assert backend in _server_pids(s) and _backend_alive(s, backend)

    rc, out = run_as("postgres", lambda: cli.main(
        ["--node-json", str(s.node_json), "on-role-change", "on_role_change", "replica", "pg-x"]))
    assert rc == 0, out
    assert "PgBouncer RECONNECT sent" in out and "stanza-create" not in out
    wait_for(lambda: backend not in _server_pids(s) and not _backend_alive(s, backend), timeout=10,
             what="the pooled server connection to be closed by RECONNECT")


@pytest.mark.usefixtures("_root")
def waiting(admin: str) -> int:
    """Clients waiting for a server in PgBouncer (SHOW POOLS' cl_waiting), its console aside."""
    cols, rows = hooks.admin_query(admin, "SHOW POOLS")
    return sum(p["cl_waiting"] for p in (dict(zip(cols, r)) for r in rows) if p["database"] != "pgbouncer")


def test_handover_pause_lets_a_running_transaction_finish_and_holds_new_ones(bootstrapped):
    """PgBouncer's PAUSE/RESUME as the handover uses them (pgha.agent.handover)."""
    s = bootstrapped
    dsn = tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"])
    admin = hooks.pgbouncer_admin_conninfo(s.node)

    def scenario() -> int:
        import threading

        with psycopg.connect(dsn, prepare_threshold=None) as running:
            running.execute("SELECT 1")  # a transaction open on a server connection
            paused, took = hooks.pause_pgbouncer(admin, timeout=1.0)
            # Still draining: PAUSE waits for the transaction instead of cutting it.
            assert paused and took >= 1.0, (paused, took)
            answer: dict = {}

            def new_transaction() -> None:
                with psycopg.connect(dsn, prepare_threshold=None, autocommit=True) as conn:
                    answer["row"] = conn.execute("SELECT 2").fetchone()

            waiter = threading.Thread(target=new_transaction, daemon=True)
            waiter.start()
            wait_for(lambda: waiting(admin) == 1, timeout=10, what="a client waiting in the pause")
            assert running.execute("SELECT 3").fetchone() == (3,)
            running.commit()  # the running transaction finishes normally
        # The new one waits on: no server for it until RESUME.
        time.sleep(1.0)
        assert waiting(admin) == 1 and "row" not in answer
        hooks.resume_pgbouncer(admin)
        waiter.join(10)
        assert answer.get("row") == (2,) and waiting(admin) == 0
        return 0

    rc, out = run_as("postgres", scenario)
    assert rc == 0, out


def test_on_role_change_exits_0_when_pgbouncer_down(base):
    (base / "run" / "pgbouncer").mkdir(parents=True)
    nj = write_json(base / "etc" / "node.json", make_node(base, ports={"pgbouncer": free_port()}))
    res = run_cli("--node-json", str(nj), "on-role-change", "on_start", "replica", "pg-x", timeout=30)
    assert res.returncode == 0
    assert "PgBouncer RECONNECT not sent" in res.stderr and "No such file or directory" in res.stderr
    # even a broken node file never fails Patroni
    res = run_cli("--node-json", str(base / "nope.json"), "on-role-change", "on_start", "replica", "pg-x")
    assert res.returncode == 0 and "does not exist" in res.stderr


def test_on_role_change_primary_creates_stanza_and_exporter_sees_it(bootstrapped):
    s = bootstrapped
    log = Path(s.node["paths"]["log"]) / "pgbackrest" / "stanza-create.log"
    rc, out = run_as("postgres", lambda: cli.main(
        ["--node-json", str(s.node_json), "on-role-change", "on_role_change", "primary", "pg-x"]))
    assert rc == 0, out
    assert "PgBouncer RECONNECT sent" in out and "started pgbackrest stanza-create + check" in out
    wait_for(lambda: log.exists() and "finished rc=" in log.read_text(), timeout=120, interval=0.5,
             what="stanza-create + check")
    assert "finished rc=0" in log.read_text(), log.read_text()

    # the exporter's command line, run for real (as postgres, like the service)
    argv = facts.pgbackrest_argv(s.node, "--stanza=pg-x", "--output=json", "info")
    res = subprocess.run(argv, capture_output=True, text=True, user="postgres", group="postgres", cwd="/")
    assert res.returncode == 0, res.stderr
    fams = {f.name: f for f in pgbackrest_exporter.pgbackrest_families(json.loads(res.stdout), True)}
    status = {tuple(x.labels.values()): x.value for x in fams["pgbackrest_stanza_status"].samples}
    # stanza exists and WAL is archived (check passed), but no backup yet: code 2 "no valid backups"
    assert status == {("pg-x",): 2.0}
    assert [x.value for x in fams["pgbackrest_repo_status"].samples] == [2.0]
    assert {x.labels["type"]: x.value for x in fams["pgbackrest_backup_count"].samples} == \
        {"full": 0.0, "diff": 0.0, "incr": 0.0}
    assert "pgbackrest_archive_max_wal_segment" in fams


@pytest.fixture
def exporter_proc(bootstrapped):
    s = bootstrapped
    port = free_port()
    env_file = Path(s.node["paths"]["secrets"]) / "exporter.env"
    tmp_env = s.base / "etc" / "exporter-test.env"
    tmp_env.write_text(env_file.read_text().replace("port=6432", f"port={s.pgbport}"))
    tmp_env.chmod(0o600)
    proc = subprocess.Popen([PYTHON, str(ZIPAPP), "--node-json", str(s.node_json), "pgbouncer-exporter",
                             "--listen", f"127.0.0.1:{port}", "--env-file", str(tmp_env)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_scrape(proc, port, "pgbouncer exporter", timeout=20)
        yield port, proc
    finally:
        _stop(proc, signal.SIGTERM)
        assert proc.returncode == 0  # clean exit on SIGTERM
        logs = proc.stdout.read()
        _assert_nothing_secret(logs)


def test_pgbouncer_exporter_then_pgbouncer_down(bootstrapped, exporter_proc):
    """Last test using the stack: it stops PgBouncer."""
    s = bootstrapped
    port, proc = exporter_proc
    with psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"]),
                         prepare_threshold=None, autocommit=True) as client:
        for _ in range(3):
            client.execute("SELECT 1").fetchone()
        status, m = scrape(port)
        assert status == 200
        assert sample(m, "pgbouncer_up") == 1.0
        assert sample(m, "pgbouncer_pools_client_active_connections", database="postgres", user="dbuser_monitor") >= 1
        assert sample(m, "pgbouncer_pools_client_waiting_connections", database="postgres", user="dbuser_monitor") == 0
        assert sample(m, "pgbouncer_pools_server_idle_connections", database="postgres", user="dbuser_monitor") is not None
        assert sample(m, "pgbouncer_databases_current_connections", name="postgres", host=f"{s.node['paths']['run']}/postgres",
                      port=str(s.pgport), database="postgres", force_user="", pool_mode="") is not None
        assert sample(m, "pgbouncer_used_clients") >= 1
        assert sample(m, "pgbouncer_pools") >= 1

    # SHOW STATS totals are refreshed every stats_period (60 s by default): poll for them
    def stats():
        _, mm = scrape(port)
        q = sample(mm, "pgbouncer_stats_queries_pooled_total", database="postgres")
        return mm if q and q >= 3 else None
    m = wait_for(stats, timeout=75, interval=2, what="SHOW STATS totals")
    assert sample(m, "pgbouncer_stats_sql_transactions_pooled_total", database="postgres") >= 3
    assert sample(m, "pgbouncer_stats_received_bytes_total", database="postgres") > 0
    assert sample(m, "pgbouncer_stats_sent_bytes_total", database="postgres") > 0
    assert sample(m, "pgbouncer_stats_queries_duration_seconds_total", database="postgres") > 0

    s.stop_pgbouncer()
    status, m = scrape(port)
    assert status == 200 and sample(m, "pgbouncer_up") == 0.0
    assert sample(m, "pgbouncer_pools_client_active_connections", database="postgres", user="dbuser_monitor") is None
    assert proc.poll() is None

    # and the callback copes with the stopped PgBouncer
    rc, out = run_as("postgres", lambda: cli.main(
        ["--node-json", str(s.node_json), "on-role-change", "on_restart", "replica", "pg-x"]))
    assert rc == 0 and "PgBouncer RECONNECT not sent" in out


# --------------------------------------------------------------------------------------
# pure parsing: PgBouncer column sets of other versions, pgBackRest info sample
# --------------------------------------------------------------------------------------

def test_stanza_create_waits_while_an_archive_push_holds_the_lock(base, monkeypatch):
    """Right after a promotion: the archive lock held by the async archive-push of its first WAL
    (exit 50), PostgreSQL still in recovery (exit 56). The agent retries on those, then checks."""
    monkeypatch.setattr(hooks, "STANZA_WAIT", 0.1)
    calls = base / "calls"
    fake = base / "pgbackrest"
    fake.write_text("#!/bin/sh\n"
                    f'for a in "$@"; do case "$a" in stanza-create|check) echo "$a" >> {calls};; esac; done\n'
                    f'case "$*" in *stanza-create*) n=$(grep -c stanza-create {calls}); '
                    '[ "$n" -ge 3 ] || exit $((44 + 6 * n));; esac\n'
                    "exit 0\n")
    fake.chmod(0o755)
    node = make_node(base)
    Path(node["paths"]["log"]).mkdir(parents=True, exist_ok=True)
    assert hooks.start_stanza_create(node, binary=str(fake)).wait(timeout=30) == 0
    assert calls.read_text().split() == ["stanza-create"] * 3 + ["check"]
    log = (Path(node["paths"]["log"]) / "pgbackrest" / "stanza-create.log").read_text()
    assert "not yet (exit 50" in log and "not yet (exit 56" in log and "finished rc=0" in log
    # Any other failure is final: no retry, no check.
    calls.unlink()
    fake.write_text(f"#!/bin/sh\necho stanza-create >> {calls}\nexit 47\n")
    assert hooks.start_stanza_create(node, binary=str(fake)).wait(timeout=30) == 47
    assert calls.read_text().split() == ["stanza-create"]
