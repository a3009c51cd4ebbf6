"""Backups, restore and PITR of the local cluster, through the very units and agent the
nodes run (``pgha-backup-<type>.service``, ``pgha-node bootstrap``).

* :func:`run_backup` starts the backup service on every member, as the timers do on EC2: each
  member's agent asks Patroni and only the chosen one (the sync standby) backs up, then expires.
* :func:`status` reads ``pgbackrest info`` and the primary's ``pg_stat_archiver`` - the facts
  the 9854 exporter serves.
* :func:`restore` checks the repository first (a backup that reaches the target, ``verify``);
  only then stops the cluster, clears its DCS keys, and bootstraps the first member with
  Patroni's custom bootstrap (``pgbackrest restore`` to the target, promote: a new timeline),
  takes a full backup on the new timeline and rebuilds the replicas from the repository. If
  that fails before the restored leader has its backup, the cluster is rolled back to its
  previous data and started again.
"""


import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .. import contract
from ..spec import RestoreSpec
from ..spec.validate import parse_lsn, parse_target_time
from .cluster import LocalCluster, LocalClusterError, Node
from .health import leader

BACKUP_TYPES = contract.BACKUP_TYPES


class BackupError(LocalClusterError):
    """A backup, restore or branch operation refused or failed; the message says why."""


# -- running pgBackRest as a node does ---------------------------------------------------------

def pgbackrest(cluster: LocalCluster, node: Node, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``pgbackrest`` with the node's config, as postgres (what the node's units run)."""
    argv = contract.pgbackrest_argv(cluster.node_paths(node), *args, binary="/usr/bin/pgbackrest")
    return cluster.run_on(node, argv, user="postgres", timeout=timeout)


def info(cluster: LocalCluster, node: Node | None = None) -> dict[str, Any]:
    """``pgbackrest info`` of the cluster's stanza (JSON, the first stanza)."""
    node = node or cluster.nodes[0]
    proc = pgbackrest(cluster, node, f"--stanza={cluster.spec.cluster_name}", "--output=json", "info")
    if proc.returncode != 0:
        raise BackupError(f"pgbackrest info failed: {(proc.stderr or proc.stdout).strip()}")
    data = json.loads(proc.stdout)
    return data[0] if data else {}


# pgbackrest info's stanza status codes meaning the stanza exists: ok, no valid backup yet, a
# backup or expire running.
STANZA_READY = (0, 2, 6)


def wait_for_stanza(cluster: LocalCluster, timeout: float = 120.0) -> dict[str, Any]:
    """The stanza's info once it exists. The primary creates it in the background after its
    promotion (on_role_change), so a cluster that just became healthy may not have it yet, and
    a backup or a restore then fails on "missing stanza path"."""
    deadline = time.monotonic() + timeout
    while True:
        stanza = {"status": {"code": None, "message": "no member answered"}}
        for node in cluster.nodes:  # any member that runs: one may be down (held, drilled)
            try:
                stanza = info(cluster, node)
                break
            except Exception as error:  # that member, or the repository, not answering yet
                stanza = {"status": {"code": None, "message": str(error)}}
        if stanza.get("status", {}).get("code") in STANZA_READY:
            return stanza
        if time.monotonic() > deadline:
            raise BackupError(f"no pgBackRest stanza {cluster.spec.cluster_name} after {timeout:.0f} s: "
                              f"{stanza.get('status', {}).get('message')} (see pgbackrest/stanza-create.log "
                              "on the primary)")
        time.sleep(1)


def superuser_dsn(cluster: LocalCluster, node: Node) -> str:
    return cluster.superuser_dsn(node)


def archiver(cluster: LocalCluster) -> dict[str, Any]:
    """The primary's pg_stat_archiver row and its current WAL file."""
    import psycopg

    primary = leader(cluster, running=False, error=BackupError)
    with psycopg.connect(superuser_dsn(cluster, primary), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute("SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                           "last_failed_wal, last_failed_time, pg_walfile_name(pg_current_wal_lsn()) "
                           "FROM pg_stat_archiver")
        names = [d.name for d in cur.description or []]
        row = dict(zip(names, cur.fetchone() or ()))
    row["current_wal"] = row.pop("pg_walfile_name")
    return row


# -- backups -----------------------------------------------------------------------------------

def run_backup(cluster: LocalCluster, kind: str = "full", *, log: Callable[[str], None] = print,
               nodes: list[Node] | None = None) -> dict[str, Any]:
    """Fire ``pgha-backup-<kind>.service`` on every member (as the timers do); return the new
    backup from ``pgbackrest info``. Raises BackupError with the unit's log when it fails."""
    if kind not in BACKUP_TYPES:
        raise BackupError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
    before = {b["label"] for b in info(cluster).get("backup", [])}
    unit = f"pgha-backup-{kind}.service"
    for node in nodes or cluster.nodes:
        log(f"{node.member.name}: starting {unit}")
        try:
            node.systemd.start(unit)
        except Exception as error:  # UnitStartError carries the log tail
            raise BackupError(f"{node.member.name}: {unit} failed: {error}") from None
    new = [b for b in info(cluster).get("backup", []) if b["label"] not in before]
    if not new:
        raise BackupError(f"no new {kind} backup in the repository after {unit} ran on every member")
    return new[-1]


def _when(epoch: int | None) -> str:
    if not epoch:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def status(cluster: LocalCluster) -> dict[str, Any]:
    """What `pgha backup status` shows: stanza, backups, archive (repository and primary)."""
    stanza = info(cluster)
    try:
        arch = archiver(cluster)
    except Exception as error:  # the repository view stands on its own
        arch = {"error": str(error).strip()}
    return {"stanza": stanza, "archiver": arch}


def format_status(view: dict[str, Any]) -> str:
    st, arch = view["stanza"], view["archiver"]
    lines = [f"stanza {st.get('name')}: {st.get('status', {}).get('message', '?')} "
             f"(cipher {st.get('cipher', '?')})"]
    backups = st.get("backup", [])
    lines.append(f"  {'label':<34} {'type':<5} {'stopped (UTC)':<21} {'took':>6} {'db size':>10} "
                 f"{'repo size':>10} {'WAL start':<25}")
    for b in backups:
        ts, inf = b.get("timestamp", {}), b.get("info", {})
        took = f"{ts['stop'] - ts['start']}s" if ts.get("start") and ts.get("stop") else "-"
        lines.append(f"  {b['label']:<34} {b['type']:<5} {_when(ts.get('stop')):<21} {took:>6} "
                     f"{_size(inf.get('size')):>10} {_size((inf.get('repository') or {}).get('delta')):>10} "
                     f"{(b.get('archive') or {}).get('start', '-'):<25}")
    if not backups:
        lines.append("  (no backups)")
    for a in st.get("archive", []):
        lines.append(f"  archive {a.get('id')}: WAL {a.get('min', '-')} .. {a.get('max', '-')}")
    if "error" in arch:
        lines.append(f"  primary archiver: unavailable ({arch['error']})")
    else:
        last = arch["last_archived_time"].strftime("%Y-%m-%d %H:%M:%SZ") if arch["last_archived_time"] else "-"
        lines.append(f"  primary archiver: {arch['archived_count']} archived, last {arch['last_archived_wal'] or '-'}"
                     f" at {last}; {arch['failed_count']} failed"
                     + (f" (last {arch['last_failed_wal']})" if arch["failed_count"] else "")
                     + f"; writing {arch['current_wal']}")
    return "\n".join(lines)


# -- restore -------------------------------------------------------------------------------------

def _lsn(text: str) -> int:
    """The LSN as a number, by the one strict parser validation uses (``parse_lsn``)."""
    value = parse_lsn(text)
    if value is None:
        raise ValueError(f"{text!r} is not an LSN such as 0/3000060")
    return value


def check_target(target: str) -> str:
    """latest, an ISO-8601 time with a zone, or an LSN; anything else raises BackupError."""
    if target == "latest":
        return target
    if "/" in target and ":" not in target:
        try:
            _lsn(target)
            return target
        except ValueError:
            pass
    elif parse_target_time(target) is not None:
        return target
    raise BackupError(f"--to {target!r}: give latest, an ISO-8601 time with a zone (2025-01-31T12:00:00Z) "
                      "or an LSN (0/3000060)")


def backup_for(stanza: dict[str, Any], target: str) -> dict[str, Any]:
    """The backup pgBackRest restores for ``target`` (newest one ending before it), or BackupError."""
    backups = stanza.get("backup", [])
    if not backups:
        raise BackupError(f"stanza {stanza.get('name')} has no backup in the repository: nothing to restore")
    if target == "latest":
        return backups[-1]
    if "/" in target and ":" not in target:
        fits = [b for b in backups if _lsn(b["lsn"]["stop"]) <= _lsn(target)]
    else:
        when = parse_target_time(target).timestamp()
        fits = [b for b in backups if b["timestamp"]["stop"] <= when]
    if not fits:
        first = backups[0]
        raise BackupError(f"no backup of stanza {stanza.get('name')} ends before {target}: the oldest "
                          f"({first['label']}) ended at {_when(first['timestamp']['stop'])} "
                          f"(LSN {first['lsn']['stop']})")
    return fits[-1]


def verify(cluster: LocalCluster, node: Node, label: str) -> None:
    """``pgbackrest verify``: raise BackupError if the backup ``label`` (or the repository) is damaged."""
    proc = pgbackrest(cluster, node, f"--stanza={cluster.spec.cluster_name}", "--output=text",
                      "--log-level-console=warn", "verify", timeout=1800)
    text = (proc.stdout + proc.stderr).strip()
    bad = [line.strip() for line in text.splitlines() if label in line or "ERROR" in line]
    if proc.returncode != 0 or any("invalid" in line or "ERROR" in line for line in bad):
        raise BackupError(f"backup {label} failed verification, nothing was changed:\n  "
                          + "\n  ".join(bad or text.splitlines()[-5:]))


def clear_dcs(cluster: LocalCluster) -> None:
    """Delete the cluster's keys (/pgha/<scope>/) in etcd, with a member's client certificate."""
    proc = cluster.etcdctl("del", "--prefix", f"/pgha/{cluster.spec.cluster_name}/")
    if proc.returncode != 0:
        raise BackupError(f"cannot clear the DCS keys: {proc.stderr.strip()}")


# PostgreSQL's archiver retries a push that failed three times in a row only after 60 s
# (PGARCH_AUTOWAKE_INTERVAL), so a moment's repository error can hold the archive that long.
ARCHIVE_WAIT = 150.0


def switch_wal(conn: Any) -> str:
    """Close the current WAL segment; its name. pg_switch_wal() right after another switch (a
    `pgbackrest check` after a promotion, say) is a no-op that names the open segment, which
    only archive_timeout (60 s) then closes: the 59 s waits seen after every switchover on
    2026-12-01. A commit record first makes the switch real."""
    conn.execute("SELECT txid_current()")  # autocommit: a transaction with an xid logs its commit
    return str(_one(conn, "SELECT pg_walfile_name(pg_switch_wal())"))


def _switch_and_wait_archived(cluster: LocalCluster, timeout: float = ARCHIVE_WAIT) -> None:
    """Close the current WAL segment and wait until the archive has it (so latest is now); a
    restore to "latest" without it would silently miss the last commits, so that is an error."""
    import psycopg

    primary = leader(cluster, running=False, error=BackupError)
    with psycopg.connect(superuser_dsn(cluster, primary), autocommit=True, connect_timeout=5) as conn:
        segment = switch_wal(conn)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = _one(conn, "SELECT last_archived_wal FROM pg_stat_archiver")
            if last and last[8:] >= segment[8:]:
                return
            time.sleep(0.5)
        failed = _one(conn, "SELECT last_failed_wal FROM pg_stat_archiver")
    raise BackupError(f"the archive does not have {segment} after {timeout:.0f} s (last failed push: "
                      f"{failed or 'none'}; see pgBackRest's archive-push-async log on {primary.member.name})")


def _one(conn: Any, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


# What a failed bootstrap leaves in the logs: the bootstrap command's (pgBackRest's) stderr in
# patroni.stdout.log, Patroni's own log, PostgreSQL's FATAL (e.g. "recovery ended before
# configured recovery target was reached"); not the connections refused while it starts.
FAILURE_WORDS = ("ERROR", "FATAL", "PANIC", "CRITICAL", "failed attempt to bootstrap")
NOISE = ("the database system is starting up", "the database system is not yet accepting connections",
         "the database system is shutting down")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _bootstrap_logs(node: Node) -> list[Path]:
    log = Path(node.layout.log)
    return [log / "patroni" / "patroni.stdout.log", log / "patroni" / "patroni.log",
            *sorted((log / "postgresql").glob("*.log"))]


def _log_marks(node: Node) -> dict[Path, int]:
    """Where each of the member's logs ends now, so a failure quotes only what came after."""
    return {path: path.stat().st_size for path in _bootstrap_logs(node) if path.exists()}


def _failure_lines(node: Node, marks: dict[Path, int], per_file: int = 3) -> list[str]:
    """The error lines each log gained since ``marks`` (the last few of each), oldest first."""
    found: list[str] = []
    for path in _bootstrap_logs(node):
        try:
            with path.open("rb") as fh:
                start = marks.get(path, 0)
                if start > path.stat().st_size:  # rotated or truncated (PostgreSQL's weekday files)
                    start = 0
                fh.seek(start)
                text = fh.read().decode(errors="replace")
        except OSError:
            continue
        found += [line.strip() for line in text.splitlines()
                  if any(w in line for w in FAILURE_WORDS) and not any(n in line for n in NOISE)][-per_file:]
    # Every log line starts with its time (Patroni's, PostgreSQL's, the agent's around pgBackRest's).
    return sorted(found, key=lambda line: line[:19] if TIMESTAMP.match(line) else "")


def _wait_bootstrapped(cluster: LocalCluster, head: Node, timeout: float, marks: dict[Path, int]) -> None:
    """Wait for the restored leader; fail fast (with Patroni's, pgBackRest's and PostgreSQL's
    words since ``marks``) if its bootstrap failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = cluster.cluster_view() or {}
        if any(m.get("role") == "leader" and m.get("state") == "running" for m in view.get("members", [])):
            return
        if head.systemd.pid("pgha-patroni.service") is None:
            raise BackupError(f"{head.member.name} did not bootstrap from the backup:\n  "
                              + "\n  ".join(_failure_lines(head, marks) or [f"see {head.layout.log}/patroni"]))
        time.sleep(1)
    lines = _failure_lines(head, marks)
    raise BackupError(f"{head.member.name}: no restored leader after {timeout:.0f}s; see {head.layout.log}/patroni"
                      + "".join(f"\n  {line}" for line in lines))


def _set_aside(node: Node) -> Path:
    data = Path(node.layout.pgdata)
    return data.with_name(data.name + ".pre-restore")


def _failed_copy(node: Node) -> Path:
    """Where Patroni moves a data directory whose bootstrap failed (``<data_dir>.failed``)."""
    data = Path(node.layout.pgdata)
    return data.with_name(data.name + ".failed")


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _end_postgres(cluster: LocalCluster, node: Node, timeout: float = 30) -> None:
    """Immediate shutdown of a PostgreSQL still running on the member's data directory (its
    Patroni was stopped, e.g. killed after its stop timeout): the directory is about to go."""
    pid = cluster.postmaster_pid(node)
    if pid is None:
        return
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + timeout
    while cluster.postmaster_pid(node) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    with contextlib.suppress(LocalClusterError):  # it may have gone just now
        cluster.signal_postgres(node, signal.SIGKILL)


def _roll_back(cluster: LocalCluster, restored: LocalCluster, set_aside: list[Node],
               failed_before: dict[str, int | None], *, log: Callable[[str], None], timeout: float) -> str:
    """Undo a restore that did not succeed: stop the restored member(s), clear the DCS keys the
    failed bootstrap may have written, put every set-aside data directory back (the restored
    one goes), re-install the original cluster's files and start it. Returns its leader."""
    log(f"the restore failed: rolling {cluster.spec.cluster_name} back to its previous state")
    restored.stop_database(log=log)
    for node in set_aside:  # only there is the data directory a restored one
        _end_postgres(restored, node)
    clear_dcs(cluster)
    for node in set_aside:
        data, aside, failed = Path(node.layout.pgdata), _set_aside(node), _failed_copy(node)
        if aside.exists():
            shutil.rmtree(data, ignore_errors=True)
            if data.exists():
                raise BackupError(f"cannot remove the restored {data}")
            aside.rename(data)
        if _inode(failed) not in (None, failed_before[node.member.name]):  # this attempt's, moved by Patroni
            shutil.rmtree(failed, ignore_errors=True)
    # The restored spec rendered patroni.yml and node.json with the restore bootstrap; the
    # original files go back before anything starts. up() starts every member on its old data.
    for node in cluster.nodes:
        cluster.apply_config(node)
    cluster.up(timeout=timeout, log=log)
    return leader(cluster, running=False, error=BackupError).member.name


def _why(error: Exception) -> str:
    """An error for the message: our own say what failed; anything else also says what it is."""
    text = str(error).strip()
    return text if isinstance(error, LocalClusterError) and text else f"{type(error).__name__}: {text}"


def _where_the_data_is(cluster: LocalCluster) -> str:
    """Each member's previous data directory, wherever a failed rollback left it."""
    return "; ".join(f"{node.member.name}: {_set_aside(node) if _set_aside(node).exists() else node.layout.pgdata}"
                     for node in cluster.nodes)


def restore(cluster: LocalCluster, target: str, *, log: Callable[[str], None] = print,
            timeout: float = 600) -> dict[str, Any]:
    """Restore the whole local cluster to ``target``; return the restored cluster's facts.

    Nothing is touched until the repository has a verified backup that reaches the target.
    Until the restored leader is up with a full backup on its new timeline, any failure rolls
    the cluster back to its previous data and starts it again; the BackupError then says the
    restore failed (with the logs' words) and whether the rollback brought the cluster back.
    """
    target = check_target(target)
    first = cluster.nodes[0]
    stanza = info(cluster, first)
    chosen = backup_for(stanza, target)
    log(f"restoring {cluster.spec.cluster_name} to {target} from backup {chosen['label']}")
    # A copy set aside by an attempt that could not roll back may be the only previous data:
    # never overwrite it, never guess which of it and the data directory is the one to keep.
    left = [str(_set_aside(node)) for node in cluster.nodes if _set_aside(node).exists()]
    if left:
        raise BackupError("an earlier restore left data set aside, nothing was changed: "
                          + ", ".join(left) + "\nput each back in place of its data directory (or remove it), "
                          "then run again")
    verify(cluster, first, chosen["label"])
    running = cluster.cluster_view() is not None
    if running and target == "latest":
        _switch_and_wait_archived(cluster)
    spec = replace(cluster.spec, restore=RestoreSpec(source_stanza=cluster.spec.cluster_name,
                                                     source_bucket=cluster.bucket, target=target))
    restored = cluster.with_spec(spec)
    head, *others = restored.nodes
    set_aside: list[Node] = []  # members whose previous data is in data.pre-restore now
    failed_before = {node.member.name: _inode(_failed_copy(node)) for node in cluster.nodes}
    try:
        cluster.stop_database(log=log)
        clear_dcs(cluster)
        for node in cluster.nodes:
            data, aside = Path(node.layout.pgdata), _set_aside(node)
            if data.exists():
                data.rename(aside)
                set_aside.append(node)
        for node in restored.nodes:
            restored.apply_config(node)
        marks = _log_marks(head)
        # PgBouncer and HAProxy wait until the restore has succeeded: no client writes to a
        # leader that a rollback would discard.
        restored._start(head, until="pgha-pgbouncer.service", log=log)
        _wait_bootstrapped(restored, head, timeout, marks)
        # The old backups are another history: the replicas restore from a backup on the new timeline.
        log(f"{head.member.name}: full backup on the new timeline")
        run_backup(restored, "full", log=log, nodes=[head])
    except Exception as error:
        detail = _why(error)
        try:
            name = _roll_back(cluster, restored, set_aside, failed_before, log=log, timeout=timeout)
        except Exception as undo:
            raise BackupError(f"the restore to {target} failed: {detail}\nthe rollback to the previous state "
                              f"failed too: {_why(undo)}\nthe previous data is in "
                              f"{_where_the_data_is(cluster)}; put any data.pre-restore back in place of "
                              "data, then `pgha local up`") from error
        raise BackupError(f"the restore to {target} failed: {detail}\nthe cluster was rolled back to its previous "
                          f"state and is running (leader {name})") from error
    # From here the restore has succeeded: the restored leader runs with a backup on its new
    # timeline, so the previous data goes. A member that does not come up is reported, not
    # rolled back: the replicas are rebuilt from that backup whenever they start.
    view = restored.cluster_view() or {}
    timeline = next((m.get("timeline") for m in view.get("members", []) if m.get("role") == "leader"), None)
    for node in cluster.nodes:
        shutil.rmtree(_set_aside(node), ignore_errors=True)
    try:
        restored._start(head, log=log)
        for node in others:
            restored._start(node, log=log)
        restored.wait_healthy(timeout=timeout)
    except Exception as error:
        raise BackupError(f"the restore to {target} succeeded ({head.member.name} is the primary on timeline "
                          f"{timeline}, with a full backup on it), but the cluster is not whole yet: "
                          f"{_why(error)}\nstart what is missing with `pgha local up` (the replicas are "
                          "rebuilt from that backup)") from error
    return {"backup": chosen["label"], "target": target, "timeline": timeline}
