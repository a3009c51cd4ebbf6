"""`bootstrap`: Patroni's custom bootstrap of every pgha cluster (bootstrap.method pgha_bootstrap).

Patroni runs it on the one member that won the race for an empty DCS, into an empty data
directory. It decides where the cluster's data comes from:

* source: node.json names a restore source (a branch, a whole-cluster restore): restore that
  source to its target (restore.py);
* repository: this cluster's own repository holds a backup (the DCS was lost while the data of
  every member was too, or only the DCS was lost and the members are blank): restore the newest
  one and recover to the end of the archive; PostgreSQL then promotes on a new timeline, with the
  same system identifier and every archived commit;
* initdb: the repository has no stanza, or a stanza without a backup (a new cluster): initdb
  with the options patroni.yml gives, as Patroni's own initdb method would run it.

Any other answer from pgBackRest (the repository unreachable or unreadable) fails the bootstrap,
which Patroni then tries again: an initdb there would fork a new, empty database over a
repository that holds the cluster's history.
"""

import argparse
import json
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from ..contract import NodeFacts
from .backup import run_pgbackrest
from .cli_types import Subparsers
from .errors import LOG, AgentError
from .facts import pgbackrest_argv
from .restore import restore_source, scrub_restored_config

# pgbackrest info's stanza status codes (command/info/info.c) that say what a bootstrap needs to
# know; every other code (99 "other": the repository could not be read) is an error here.
STANZA_OK = 0
STANZA_MISSING = 1  # "missing stanza path": nothing of this stanza in the repository
STANZA_NO_BACKUP = 2  # "no valid backups"
# pgBackRest retries an unreachable repository for about a minute per request before it answers.
INFO_TIMEOUT = 600.0
# What Patroni's initdb method refuses in bootstrap.initdb: the bootstrap sets these itself.
INITDB_RESERVED = ("--pgdata", "-D", "--pwfile", "--username", "-U", "--nosync", "-N", "--sync-only", "-S")

SOURCE, REPOSITORY, INITDB = "source", "repository", "initdb"


@dataclass(frozen=True)
class Plan:
    """Where the new cluster's data comes from, and why (what the log says)."""

    path: str
    reason: str
    # The backup a repository restore uses (pgBackRest's label).
    backup: str = ""


def _first_line(text: Any) -> str:
    return str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""


def choose_plan(node: NodeFacts, info: Any) -> Plan:
    """Pure: the plan for ``node`` from the parsed JSON of `pgbackrest --stanza=<own> --output=json
    info` (None when node.json names a restore source: the repository is not asked). Raises
    AgentError when the repository's answer is neither a usable backup nor a plain absence."""
    restore = node.get("restore")
    if restore:
        source = Plan(SOURCE, f"node.json names a restore source: stanza {restore['stanza']} in bucket "
                              f"{restore['bucket']}, target {restore['target']}")
        if info is None:
            return source
        # A branch whose own repository holds a backup restores its own history: the source
        # again would drop every write made since the branch was.
        own = _own_repository_plan(node, info)
        if own.path == REPOSITORY:
            return Plan(REPOSITORY, f"a branch with a history of its own: {own.reason}; not its source "
                                    f"(stanza {restore['stanza']}), restored when the branch was made",
                        backup=own.backup)
        return Plan(SOURCE, f"{source.reason}; this branch's own repository has no backup yet ({own.reason})")
    return _own_repository_plan(node, info)


def asks_own_repository(node: NodeFacts) -> bool:
    """Whether the bootstrap asks this cluster's own repository: always but for a cluster
    restored to a target from that very repository (its backups are what the target picks from)."""
    restore = node.get("restore")
    return not restore or restore["stanza"] != node["stanza"]


def _own_repository_plan(node: NodeFacts, info: Any) -> Plan:
    stanza = node["stanza"]
    entries = [s for s in info if isinstance(s, dict) and s.get("name") == stanza] if isinstance(info, list) else []
    if len(entries) != 1:
        raise AgentError(f"pgbackrest info gave no entry for stanza {stanza}: {json.dumps(info)[:300]}")
    entry = entries[0]
    status = entry.get("status") or {}
    code, message = status.get("code"), status.get("message", "")
    backups = entry.get("backup") or []
    if code == STANZA_OK and backups:
        newest = backups[-1]
        archive = (newest.get("archive") or {})
        last_wal = max((a.get("max") or "" for a in entry.get("archive") or []), default="")
        return Plan(REPOSITORY, f"this cluster's repository (stanza {stanza}) holds {len(backups)} backup(s): "
                                f"restoring the newest, {newest.get('label')} ({newest.get('type')}, WAL "
                                f"{archive.get('start', '?')}..{archive.get('stop', '?')}), and replaying the "
                                f"archive to its end ({last_wal or 'no later WAL'})", backup=str(newest.get("label")))
    if code == STANZA_MISSING:
        return Plan(INITDB, f"the repository has no stanza {stanza} ({message}): a new cluster")
    if code == STANZA_NO_BACKUP and not backups:
        reason = f"stanza {stanza} holds no backup ({message}): nothing to restore, a new cluster"
        wal = [a for a in entry.get("archive") or [] if a.get("max")]
        if wal:
            systems = sorted({str(d.get("system-id")) for d in entry.get("db") or []})
            # Without a backup that WAL cannot be replayed; the new cluster's stanza-create and
            # archive-push will refuse the stanza of another system until it is moved aside.
            reason += (f"; its archive holds WAL {wal[0].get('min')}..{wal[-1].get('max')} of system "
                       f"{', '.join(systems) or '?'}, which cannot be restored without a backup: move that stanza "
                       "aside in the bucket for this cluster to archive")
        return Plan(INITDB, reason)
    repos = "; ".join(f"repo{r.get('key')}: {_first_line((r.get('status') or {}).get('message'))}"
                      for r in entry.get("repo") or [] if (r.get("status") or {}).get("code") not in (None, 0))
    raise AgentError(f"pgbackrest info on stanza {stanza}: {message or 'no status'} (code {code})"
                     + (f", {repos}" if repos else "") + ": not bootstrapping, since an initdb could fork a new, "
                     "empty database over a repository with this cluster's history; Patroni tries again")


def repository_info(node: NodeFacts, binary: str = "pgbackrest") -> Any:
    """The parsed `pgbackrest info` of this cluster's own stanza. Exit 0 is no proof of an answer
    (an unreachable repository is status 99 in the JSON): choose_plan reads the status."""
    argv = pgbackrest_argv(node, f"--stanza={node['stanza']}", "--output=json", "--log-level-console=off",
                           "--log-level-stderr=warn", "info", binary=binary)
    LOG.info("asking the repository: %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=INFO_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AgentError(f"pgbackrest info did not answer within {INFO_TIMEOUT:.0f}s: not bootstrapping")
    except OSError as exc:
        raise AgentError(f"cannot run {argv[0]}: {exc.strerror}")
    if proc.returncode != 0:
        raise AgentError(f"pgbackrest info exited {proc.returncode}: {_first_line(proc.stderr or proc.stdout)}: "
                         "not bootstrapping")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AgentError(f"pgbackrest info printed no JSON: {_first_line(proc.stdout)!r}")


def restore_own_argv(node: NodeFacts, backup: str, binary: str = "pgbackrest") -> list[str]:
    """pgbackrest restore of ``backup`` from this cluster's own repository, recovering to the end of
    the archive on the newest timeline (no target: PostgreSQL promotes when the archive ends)."""
    return pgbackrest_argv(node, f"--stanza={node['stanza']}", f"--pg1-path={node['paths']['pgdata']}",
                           f"--set={backup}", "--type=default", "--log-level-console=info", "restore", binary=binary)


def initdb_argv(node: NodeFacts, options: list[str], pwfile: str | None) -> list[str]:
    """initdb as Patroni's initdb method runs it: the options, the superuser, its password file."""
    reserved = [o for o in options if o.split("=", 1)[0] in INITDB_RESERVED]
    if reserved:
        raise AgentError(f"initdb option {reserved[0]} is the bootstrap's own to set")
    argv = [f"{node['paths']['pg_bin']}/initdb", *options, f"--username={node['users']['superuser']}"]
    if pwfile:
        argv.append(f"--pwfile={pwfile}")
    return [*argv, node["paths"]["pgdata"]]


def run_initdb(node: NodeFacts, options: list[str]) -> None:
    # Patroni's env carries the superuser's password (patroni.env); as Patroni does, initdb gets it
    # in a private file, and post_bootstrap sets it again either way.
    password = os.environ.get("PATRONI_SUPERUSER_PASSWORD", "")
    pwfile = None
    try:
        if password:
            fd, pwfile = tempfile.mkstemp(prefix="pgha-initdb-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(password)
        argv = initdb_argv(node, options, pwfile)
        LOG.info("running %s", shlex.join(argv))
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    finally:
        if pwfile:
            os.unlink(pwfile)
    for line in proc.stdout.splitlines():
        LOG.info("initdb: %s", line)
    if proc.returncode != 0:
        raise AgentError(f"initdb failed (exit {proc.returncode}): {_first_line(proc.stdout.splitlines()[-1:] or '')}")


def cmd_bootstrap(node: NodeFacts, args: argparse.Namespace) -> int:
    pgdata = node["paths"]["pgdata"]
    # Patroni's own test of emptiness; pgbackrest.conf's delta=y would restore over anything else.
    if os.path.isdir(pgdata) and any(not n.startswith(".") and n != "lost+found" for n in os.listdir(pgdata)):
        raise AgentError(f"{pgdata} is not empty: a bootstrap only fills an empty data directory")
    plan = choose_plan(node, repository_info(node, args.pgbackrest) if asks_own_repository(node) else None)
    LOG.info("bootstrap path %s: %s", plan.path, plan.reason)
    if plan.path == SOURCE:
        restore_source(node, args.pgbackrest)
    elif plan.path == REPOSITORY:
        run_pgbackrest(restore_own_argv(node, plan.backup, args.pgbackrest), f"restore of {plan.backup}")
        for what in scrub_restored_config(pgdata):
            LOG.info("removed from the restored copy: %s", what)
        LOG.info("restored %s: PostgreSQL replays the archive to its end and promotes on a new timeline",
                 plan.backup)
    else:
        run_initdb(node, shlex.split(args.initdb))
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bootstrap", parents=[common], help="Patroni custom bootstrap: restore, or initdb",
                       description="Fill the empty data directory of a cluster's first member: node.json's "
                                   "restore source to its target if it names one; else the newest backup of the "
                                   "cluster's own repository, recovered to the end of the archive; else (no "
                                   "stanza, or no backup in it) initdb. Any other pgBackRest error fails.")
    p.add_argument("--initdb", default="", metavar="OPTIONS",
                   help="initdb's options for a new cluster, one string (patroni.yml passes them)")
    p.add_argument("--pgbackrest", default="pgbackrest", metavar="PATH", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bootstrap)
