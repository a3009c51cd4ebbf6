"""Backups, restore and PITR of the loopback cluster, through the very units and agent the
nodes run (``pgha-backup-<type>.service``, ``pgha-node restore-bootstrap``).

* :func:`run_backup` starts the backup service on every member, as the timers do on EC2: each
  member's agent asks Patroni and only the chosen one (the sync standby) backs up, then expires.
* :func:`status` reads ``pgbackrest info`` and the primary's ``pg_stat_archiver`` - the facts
  the 9854 exporter serves.
* :func:`restore` checks the repository first (a backup that reaches the target, ``verify``);
  only then stops the cluster, clears its DCS keys, and bootstraps the first member with
  Patroni's custom bootstrap (``pgbackrest restore`` to the target, promote: a new timeline),
  takes a full backup on the new timeline and rebuilds the replicas from the repository.
"""


import datetime
import json
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..render import USERS
from ..spec import PORTS, RestoreSpec
from ..spec.validate import parse_target_time
from .cluster import LocalCluster, LocalClusterError, Node

BACKUP_TYPES = ("full", "diff", "incr")


class BackupError(LocalClusterError):
    """A backup, restore or branch operation refused or failed; the message says why."""


# -- running pgBackRest as a node does ---------------------------------------------------------

def _as_postgres() -> Callable[[], None]:
    pg = pwd.getpwnam("postgres")

    def switch() -> None:
        os.setgid(pg.pw_gid)
        os.initgroups("postgres", pg.pw_gid)
        os.setuid(pg.pw_uid)
    return switch


def pgbackrest(cluster: LocalCluster, node: Node, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``pgbackrest`` with the node's config, as postgres (what the node's units run)."""
    etc = node.layout.etc
    argv = ["/usr/bin/pgbackrest", f"--config={etc}/pgbackrest/pgbackrest.conf",
            f"--config-include-path={node.layout.secrets}/pgbackrest", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=_as_postgres(),
                          cwd="/tmp", stdin=subprocess.DEVNULL)


def info(cluster: LocalCluster, node: Node | None = None) -> dict[str, Any]:
    """``pgbackrest info`` of the cluster's stanza (JSON, the first stanza)."""
    node = node or cluster.nodes[0]
    proc = pgbackrest(cluster, node, f"--stanza={cluster.spec.cluster_name}", "--output=json", "info")
    if proc.returncode != 0:
        raise BackupError(f"pgbackrest info failed: {(proc.stderr or proc.stdout).strip()}")
    data = json.loads(proc.stdout)
    return data[0] if data else {}


def leader(cluster: LocalCluster) -> Node:
    view = cluster.cluster_view() or {}
    name = next((m["name"] for m in view.get("members", []) if m.get("role") == "leader"), None)
    if name is None:
        raise BackupError("the cluster has no leader (is it up?)")
    return next(n for n in cluster.nodes if n.member.name == name)


def superuser_dsn(cluster: LocalCluster, node: Node) -> str:
    return cluster.dsn(node.ip, PORTS["postgres"], user=USERS["superuser"], dbname="postgres")


def archiver(cluster: LocalCluster) -> dict[str, Any]:
    """The primary's pg_stat_archiver row and its current WAL file."""
    import psycopg

    with psycopg.connect(superuser_dsn(cluster, leader(cluster)), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute("SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                           "last_failed_wal, last_failed_time, pg_walfile_name(pg_current_wal_lsn()) "
                           "FROM pg_stat_archiver")
        names = [d.name for d in cur.description]
        row = dict(zip(names, cur.fetchone()))
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
            node.supervisor.start(unit)
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


def _size(n: int | None) -> str:
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
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


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
    node = next(n for n in cluster.nodes if "pgha-etcd.service" in n.units)
    tls = node.layout.tls
    proc = subprocess.run(
        ["etcdctl", f"--endpoints=https://{node.ip}:{PORTS['etcd_client']}", f"--cacert={tls}/ca.crt",
         f"--cert={tls}/node.crt", f"--key={tls}/etcd.key", "del", "--prefix", f"/pgha/{cluster.spec.cluster_name}/"],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
    if proc.returncode != 0:
        raise BackupError(f"cannot clear the DCS keys: {proc.stderr.strip()}")


def _switch_and_wait_archived(cluster: LocalCluster, timeout: float = 60) -> None:
    """Close the current WAL segment and wait until the archive has it (so latest is now)."""
    import psycopg

    with psycopg.connect(superuser_dsn(cluster, leader(cluster)), autocommit=True, connect_timeout=5) as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last[8:] >= segment[8:]:
                return
            time.sleep(0.5)


def _wait_bootstrapped(cluster: LocalCluster, head: Node, timeout: float) -> None:
    """Wait for the restored leader; fail fast (with Patroni's words) if its bootstrap failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = cluster.cluster_view() or {}
        if any(m.get("role") == "leader" and m.get("state") == "running" for m in view.get("members", [])):
            return
        if head.supervisor.pid("pgha-patroni.service") is None:
            log = Path(head.layout.log) / "patroni" / "patroni.stdout.log"
            tail = [l for l in log.read_text().splitlines() if "ERROR" in l or "Fatal" in l][-4:]
            raise BackupError(f"{head.member.name}: the restore bootstrap failed; the previous data is in "
                              f"{head.layout.pgdata}.pre-restore:\n  " + "\n  ".join(tail))
        time.sleep(1)
    raise BackupError(f"no restored leader after {timeout:.0f}s; see {head.layout.log}/patroni")


def restore(cluster: LocalCluster, target: str, *, log: Callable[[str], None] = print,
            timeout: float = 600) -> dict[str, Any]:
    """Restore the whole loopback cluster to ``target``; return the restored cluster's facts.

    Nothing is touched until the repository has a verified backup that reaches the target.
    """
    target = check_target(target)
    first = cluster.nodes[0]
    stanza = info(cluster, first)
    chosen = backup_for(stanza, target)
    log(f"restoring {cluster.spec.cluster_name} to {target} from backup {chosen['label']}")
    verify(cluster, first, chosen["label"])
    running = cluster.cluster_view() is not None
    if running and target == "latest":
        _switch_and_wait_archived(cluster)
    cluster.stop_database(log=log)
    clear_dcs(cluster)
    for node in cluster.nodes:
        data = Path(node.layout.pgdata)
        aside = data.with_name(data.name + ".pre-restore")
        if data.exists():  # a re-run after a failed attempt keeps the first copy set aside
            shutil.rmtree(aside, ignore_errors=True)
            data.rename(aside)
    spec = replace(cluster.spec, restore=RestoreSpec(source_stanza=cluster.spec.cluster_name,
                                                     source_bucket=cluster.bucket, target=target))
    restored = LocalCluster(project_dir=cluster.project_dir, stack=cluster.stack, root=cluster.root,
                            address_prefix=cluster.address_prefix, spec=spec, s3=cluster.s3, venv=cluster.venv)
    for node in restored.nodes:
        restored._install_files(node)
    head, *others = restored.nodes
    restored._start(head, log=log)
    _wait_bootstrapped(restored, head, timeout)
    # The old backups are another history: the replicas restore from a backup on the new timeline.
    log(f"{head.member.name}: full backup on the new timeline")
    run_backup(restored, "full", log=log, nodes=[head])
    for node in others:
        restored._start(node, log=log)
    restored.wait_healthy(timeout=timeout)
    for node in restored.nodes:
        shutil.rmtree(Path(node.layout.pgdata).with_name("data.pre-restore"), ignore_errors=True)
    return {"backup": chosen["label"], "target": target,
            "timeline": next(m["timeline"] for m in restored.cluster_view()["members"] if m["role"] == "leader")}
