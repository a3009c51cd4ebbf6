"""Patroni's hooks: post-bootstrap and the on_start/on_restart/on_role_change callback."""

import argparse
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ..contract import APP_DATABASE, NodeFacts, NodeUsers
from .cli_types import Subparsers
from .dcs_sync import start_dcs_sync
from .envfile import conninfo
from .errors import LOG
from .facts import pgbackrest_argv
from .fsutil import open_log
from .patroni_api import PRIMARY_ROLES
from .restore import RESTORE_SETTINGS
from .secrets import check_value, fetch_secret, scram_sha256_verifier

# Post-bootstrap waits this long for the cluster secret (Secrets Manager on EC2).
SECRET_TIMEOUT = 60.0

# PgBouncer's auth_query looks a login up here: application roles only. Superusers, replication
# roles and pgha's service roles (the replication user, the monitor, pgbouncer_auth itself) are
# never served, so PgBouncer's auth user cannot read their verifiers. The monitor and
# pgbouncer_auth still log in through PgBouncer: its auth_file lists them, and auth_query is
# asked only for users that file does not name.
AUTH_FUNCTION_TEMPLATE = """
CREATE SCHEMA IF NOT EXISTS pgbouncer;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
RETURNS TABLE(usename name, passwd text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT s.usename, s.passwd
      FROM pg_catalog.pg_shadow s
     WHERE s.usename = p_usename
       AND NOT s.usesuper
       AND NOT s.userepl
       AND s.usename <> ALL (ARRAY[{service_roles}]::name[])
$fn$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
"""


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def auth_function_sql(users: NodeUsers) -> str:
    """The SQL that (re)creates pgbouncer.get_auth, excluding this node's service roles by name."""
    names = sorted({users["superuser"], users["replication"], users["monitor"], users["pgbouncer_auth"]})
    return AUTH_FUNCTION_TEMPLATE.format(service_roles=", ".join(_sql_literal(n) for n in names))


def _ensure_role(cur, name: str, password: str, extra: str = "") -> str:
    from psycopg import sql

    cur.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (name,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(sql.SQL("{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                        "INHERIT PASSWORD {}" + extra).format(
        sql.SQL(verb), sql.Identifier(name), sql.Literal(scram_sha256_verifier(password))))
    return "created" if verb == "CREATE" else "altered"


def _quiet_session(cur) -> None:
    # Even the verifier stays out of the server log.
    cur.execute("SET log_statement = 'none'")
    cur.execute("SET log_min_duration_statement = -1")


def cmd_post_bootstrap(node: NodeFacts, args: argparse.Namespace) -> int:
    import psycopg
    from psycopg import conninfo as ci
    from psycopg import sql

    # The roles' passwords from the cluster secret, fetched now rather than kept on every member
    # for the one moment a member initializes (or restores) the cluster.
    roles = fetch_secret(node["secret"], node["aws"], timeout=SECRET_TIMEOUT)
    u = node["users"]
    auth_user, monitor = u["pgbouncer_auth"], u["monitor"]
    app = u["app"]
    for key in ("pgbouncer_auth_password", "monitor_password", "app_password"):
        check_value(key, roles.get(key))

    with psycopg.connect(args.connstring, autocommit=True, prepare_threshold=None,
                         connect_timeout=10) as conn:
        dbname = conn.info.dbname
        with conn.cursor() as cur:
            _quiet_session(cur)
            LOG.info("role %s %s", auth_user, _ensure_role(cur, auth_user, roles["pgbouncer_auth_password"]))
            LOG.info("role %s %s", monitor, _ensure_role(cur, monitor, roles["monitor_password"]))
            cur.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(monitor)))
            cur.execute(sql.SQL("ALTER ROLE {} SET search_path = pg_catalog, public").format(sql.Identifier(monitor)))
            # The application's role and database: PgBouncer pools everyone but superusers.
            LOG.info("role %s %s", app, _ensure_role(cur, app, roles["app_password"]))
            cur.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (APP_DATABASE,))
            create_app_db = cur.fetchone() is None

    # PgBouncer 1.18 runs auth_query in the database the client asked for: put the function in
    # the bootstrap database and in template1, so databases created later (app too) inherit it.
    targets = [args.connstring]
    if dbname != "template1":
        targets.append(ci.make_conninfo(args.connstring, dbname="template1"))
    for target in targets:
        with psycopg.connect(target, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(auth_function_sql(u))
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA pgbouncer TO {}").format(sql.Identifier(auth_user)))
                cur.execute(sql.SQL("GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {}").format(
                    sql.Identifier(auth_user)))
                # Query insights: the view the exporter's stat_statements collector reads; template1's
                # copy is inherited by databases created later (app too).
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            LOG.info("function pgbouncer.get_auth and extension pg_stat_statements present in %s", conn.info.dbname)
    # A restored cluster (a source's or its own repository's backup): pgBackRest wrote its
    # restore_command and any recovery target into postgresql.auto.conf, which a member cloned from
    # this one must not follow. After an initdb there is nothing to reset.
    with psycopg.connect(args.connstring, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
        for name in RESTORE_SETTINGS:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
        conn.execute("SELECT pg_reload_conf()")
    LOG.info("restore settings absent from postgresql.auto.conf")
    if create_app_db:
        with psycopg.connect(args.connstring, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(APP_DATABASE),
                                                                       sql.Identifier(app)))
        LOG.info("database %s created, owned by %s", APP_DATABASE, app)
    else:
        # A database restored from a backup made before its template1 held the extension.
        with psycopg.connect(ci.make_conninfo(args.connstring, dbname=APP_DATABASE), autocommit=True,
                             prepare_threshold=None, connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        LOG.info("extension pg_stat_statements present in %s", APP_DATABASE)
    return 0


def pgbouncer_admin_conninfo(node: NodeFacts) -> str:
    return conninfo(host=f"{node['paths']['run']}/pgbouncer", port=node["ports"]["pgbouncer"],
                    dbname="pgbouncer", user=node["os_users"]["postgres"], connect_timeout=3)


def admin_query(dsn: str, query: str) -> tuple[list[str], list[tuple]]:
    """Run one command on PgBouncer's admin console (simple query protocol only)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None,
                         cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute(query)
        if cur.description is None:
            return [], []
        return [d.name for d in cur.description], cur.fetchall()


# pgBackRest's exit codes for "unable to acquire lock" (50) and "unable to find primary cluster" (56).
STANZA_TRANSIENT_ERRORS = (50, 56)
STANZA_ATTEMPTS = 20
STANZA_WAIT = 3.0


def start_stanza_create(node: NodeFacts, binary: str = "pgbackrest") -> subprocess.Popen:
    stanza = node["stanza"]
    create = shlex.join(pgbackrest_argv(node, f"--stanza={stanza}", "stanza-create", binary=binary))
    check = shlex.join(pgbackrest_argv(node, f"--stanza={stanza}", "check", binary=binary))
    # pgBackRest's own log directory: the callback runs as postgres, which owns it.
    log_dir = os.path.join(node["paths"]["log"], "pgbackrest")
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, "stanza-create.log")
    # Right after a promotion stanza-create can fail for a moment, and is retried then: Patroni
    # calls on_role_change once `pg_ctl promote` is issued, while PostgreSQL is still in recovery
    # ("unable to find primary cluster"), and pgBackRest 2.55's stanza-create takes the archive
    # lock, which the async archive-push of the promotion's first WAL may hold.
    transient = " ".join(str(code) for code in STANZA_TRANSIENT_ERRORS)
    script = (f'echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) stanza-create + check for {stanza}"; '
              f"for attempt in $(seq {STANZA_ATTEMPTS}); do {create}; rc=$?; "
              f'case " {transient} " in *" $rc "*) ;; *) break ;; esac; '
              f'echo "not yet (exit $rc, attempt $attempt): again in {STANZA_WAIT:g}s"; sleep {STANZA_WAIT:g}; done; '
              f"if [ $rc = 0 ]; then {check}; rc=$?; fi; "
              f'echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) finished rc=$rc"; exit $rc')
    with os.fdopen(open_log(log_path), "ab") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    LOG.info("started pgbackrest stanza-create + check for %s in the background (pid %d, log %s)",
             stanza, proc.pid, log_path)
    return proc


# A promotion can take minutes (a slow restore_command at its end: the 2026-12-01 switchover bench
# waited 60 s); giving up earlier left PgBouncer advertising the old role until server_lifetime.
SETTLE_TIMEOUT = 900.0


def pause_pgbouncer(dsn: str, timeout: float) -> tuple[bool, float]:
    """PAUSE this node's PgBouncer: new transactions wait, running ones finish and PgBouncer lets
    its server connections go. (paused, seconds the drain took); paused is also True when the
    drain is still going at ``timeout`` (PgBouncer is then pausing, and RESUME ends that too)."""
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            admin_query(dsn, "PAUSE")
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            outcome["error"] = exc

    began = time.monotonic()
    # PAUSE returns only once every server connection is released: a thread bounds the wait.
    worker = threading.Thread(target=run, name="pgbouncer-pause", daemon=True)
    worker.start()
    worker.join(timeout)
    took = time.monotonic() - began
    if "error" not in outcome:
        LOG.warning("PgBouncer still draining after %.1f s; going on (what still runs keeps running)", took)
        return True, took
    error = outcome["error"]
    if error is not None:
        LOG.warning("PgBouncer not paused: %s", str(error).strip())
        return False, took
    return True, took


def resume_pgbouncer(dsn: str) -> None:
    try:
        admin_query(dsn, "RESUME")
    except Exception as exc:  # noqa: BLE001 - the callers go on either way
        LOG.warning("PgBouncer RESUME failed: %s", str(exc).strip())


# How long a new primary's PgBouncer holds new transactions while PostgreSQL ends its recovery;
# past it they get the pool as it is (libpq's read-write check refuses it until the promotion
# ends) instead of waiting longer.
PROMOTION_HOLD_MAX = 10.0
SETTLE_POLL = 0.1


def local_postgres_dsn(node: NodeFacts, connect_timeout: int = 3) -> str:
    """The superuser over this node's socket (peer authentication as the postgres OS user)."""
    return conninfo(host=f"{node['paths']['run']}/postgres", port=node["ports"]["postgres"], dbname="postgres",
                    user=node["os_users"]["postgres"], connect_timeout=connect_timeout)


def settle_pgbouncer(node: NodeFacts, role: str, in_recovery: Callable[[], bool | None], *,
                     timeout: float = SETTLE_TIMEOUT, hold_max: float = PROMOTION_HOLD_MAX) -> bool:
    """Bring this node's PgBouncer to ``role`` once PostgreSQL's recovery state matches it:
    RECONNECT, so that the pool's cached in_hot_standby is the new role's. True when it did.

    Patroni calls on_role_change right after `pg_ctl promote` is issued, before recovery has
    ended, and HAProxy routes writes here as soon as Patroni holds the leader key: a pooled
    server connection PgBouncer opens in that window caches in_hot_standby=on for the pool, and
    libpq's target_session_attrs=read-write refuses the new primary (field note 10). For a new
    primary PgBouncer is PAUSEd meanwhile (at most ``hold_max``), so those clients wait and then
    get a primary's session instead of failing (the primary's replacement: 2-5 such errors per
    trial, 2026-12-01)."""
    admin = pgbouncer_admin_conninfo(node)
    want_recovery = role not in PRIMARY_ROLES
    began = time.monotonic()
    held = False
    if not want_recovery:
        held, _ = pause_pgbouncer(admin, min(hold_max, 5.0))
    try:
        while time.monotonic() - began < timeout:
            try:
                state = in_recovery()
            except Exception as exc:  # noqa: BLE001 - keep trying until the deadline
                LOG.debug("settle check: %s", str(exc).strip())
                state = None
            if state is not None and state == want_recovery:
                admin_query(admin, "RECONNECT")
                LOG.info("PostgreSQL is %s: PgBouncer RECONNECT sent again%s", role,
                         f" ({time.monotonic() - began:.2f} s held)" if held else "")
                return True
            if held and time.monotonic() - began >= hold_max:
                resume_pgbouncer(admin)
                held = False
                LOG.warning("PostgreSQL still in recovery after %.0f s: PgBouncer resumed, RECONNECT later", hold_max)
            time.sleep(SETTLE_POLL)
        LOG.warning("PostgreSQL did not become %s within %.0fs; no second RECONNECT", role, timeout)
        return False
    finally:
        if held:
            resume_pgbouncer(admin)


def settle_pgbouncer_in_background(node: NodeFacts, role: str, timeout: float = SETTLE_TIMEOUT) -> int:
    """:func:`settle_pgbouncer` in a detached child (Patroni waits for its callback to end).
    Returns the child's pid (0 in the child)."""
    pid = os.fork()
    if pid:
        LOG.info("waiting in the background (pid %d) for PostgreSQL to be %s, then RECONNECT again", pid, role)
        return pid
    code = 0
    try:
        os.setsid()
        log_path = os.path.join(node["paths"]["log"], "pgbouncer", "role-settle.log")
        try:
            fd = open_log(log_path)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for h in list(LOG.handlers) + list(logging.getLogger().handlers):
            if isinstance(h, logging.StreamHandler):
                h.setStream(sys.stderr)
        dsn = local_postgres_dsn(node)
        import psycopg

        def in_recovery() -> bool | None:
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                return None if row is None else bool(row[0])

        settle_pgbouncer(node, role, in_recovery, timeout=timeout)
    except BaseException:  # noqa: BLE001 - the child must never return into the caller
        code = 1
    finally:
        os._exit(code)


def cmd_on_role_change(node: NodeFacts, args: argparse.Namespace) -> int:
    LOG.info("callback %s: role %s, cluster %s", args.action, args.role, args.cluster)
    try:
        admin_query(pgbouncer_admin_conninfo(node), "RECONNECT")
        LOG.info("PgBouncer RECONNECT sent")
    except Exception as exc:  # a callback must never fail Patroni
        LOG.warning("PgBouncer RECONNECT not sent (PgBouncer down?): %s", str(exc).strip())
    try:
        settle_pgbouncer_in_background(node, args.role)
    except Exception as exc:
        LOG.warning("cannot start the PgBouncer settle check: %s", exc)
    if args.role in PRIMARY_ROLES:
        try:
            start_stanza_create(node, binary=args.pgbackrest)
        except Exception as exc:
            LOG.error("cannot start pgbackrest stanza-create: %s", exc)
    try:
        start_dcs_sync(node)
    except Exception as exc:
        LOG.warning("cannot start dcs-sync: %s", exc)
    return 0



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("post-bootstrap", parents=[common], help="Patroni bootstrap.post_bootstrap hook",
                       description="Create the pgbouncer_auth and monitor roles (SCRAM), pg_stat_statements "
                                   "and the PgBouncer auth_query function pgbouncer.get_auth. Idempotent.")
    p.add_argument("connstring", help="connection string Patroni passes to the hook")
    p.set_defaults(func=cmd_post_bootstrap)
    p = sub.add_parser("on-role-change", parents=[common], help="Patroni on_start/on_restart/on_role_change callback",
                       description="Send RECONNECT to the local PgBouncer admin console; when the role is "
                                   "primary, start pgbackrest stanza-create + check in the background. "
                                   "Always exits 0.")
    p.add_argument("action", help="callback name (on_start, on_restart, on_role_change)")
    p.add_argument("role", help="new role (primary, master, replica, standby_leader, ...)")
    p.add_argument("cluster", help="Patroni scope")
    p.add_argument("--pgbackrest", default="pgbackrest", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_on_role_change)
