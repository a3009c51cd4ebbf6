"""`backup`: the member that should takes the pgBackRest backup (timers fire on every member)."""

import argparse
import os
import shlex
import subprocess
import time

from ..contract import BACKUP_TYPES, NodeFacts
from .cli_types import Subparsers
from .errors import LOG, AgentError
from .etcd.claim import Claim, ClaimHeld
from .etcd.client import etcd_client_url, etcd_tls_context
from .facts import pgbackrest_argv
from .patroni_api import LEADER_ROLES, patroni_get
from .relay import TcpRelay

# Replicas further behind than this do not take backups (the primary or another one does).
BACKUP_LAG_LIMIT = 16 * 1024 * 1024

def choose_backup_member(cluster: dict, lag_limit: int = BACKUP_LAG_LIMIT) -> tuple[str | None, str | None]:
    """Pure: (member that takes the backup, leader) from Patroni's /cluster.

    Every member decides from the same view, so the choice is deterministic: the synchronous
    standby (first by name), else the first streaming replica by name within ``lag_limit``,
    else the running leader. (None, None) when there is no running leader.
    """
    members = cluster.get("members") or []
    leaders = [m for m in members if m.get("role") in LEADER_ROLES
               and m.get("state") == "running"]
    if not leaders:
        return None, None
    leader = leaders[0]["name"]

    def healthy(m: dict) -> bool:
        lag = m.get("lag")
        return (m.get("role") in ("sync_standby", "replica") and m.get("state") == "streaming"
                and isinstance(lag, int) and lag <= lag_limit and not (m.get("tags") or {}).get("nobackup"))

    replicas = sorted((m for m in members if healthy(m)), key=lambda m: (m["role"] != "sync_standby", m["name"]))
    return (replicas[0]["name"] if replicas else leader), leader

def standby_backup_options(node: NodeFacts, leader: str, relay_port: int) -> list[str]:
    """pg1 = the primary through its TLS server (via the relay), pg2 = this standby."""
    p, ports, users = node["paths"], node["ports"], node["users"]
    peer = node["peers"][leader]
    me = node["peers"][node["member"]]
    tls = p["tls"]
    return [
        "--backup-standby",
        "--pg1-host=localhost", f"--pg1-host-port={relay_port}", "--pg1-host-type=tls",
        f"--pg1-host-cert-file={tls}/node.crt", f"--pg1-host-key-file={tls}/node.key",
        f"--pg1-host-ca-file={tls}/ca.crt",
        f"--pg1-path={peer['pgdata']}", f"--pg1-socket-path={peer['socket']}",
        f"--pg1-port={ports['postgres']}", f"--pg1-user={users['superuser']}",
        f"--pg2-path={me['pgdata']}", f"--pg2-socket-path={me['socket']}",
        f"--pg2-port={ports['postgres']}", f"--pg2-user={users['superuser']}",
    ]


PGBACKREST_LOCK_ERROR = 50


def run_pgbackrest(argv: list[str], what: str, lock_wait: float = 120.0, env: dict[str, str] | None = None) -> None:
    """Run pgBackRest, logging its output; wait out a lock another pgBackRest command holds
    (a new primary's stanza-create + check runs right after a promotion). ``env`` adds to the
    environment (secure options such as a cipher pass: never on the logged command line)."""
    LOG.info("running %s", shlex.join(argv))
    deadline = time.monotonic() + lock_wait
    while True:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, **env} if env else None)
        if proc.returncode != PGBACKREST_LOCK_ERROR or time.monotonic() > deadline:
            break
        LOG.info("%s: another pgBackRest command holds the lock; retrying in 3s", what)
        time.sleep(3)
    for line in proc.stdout.splitlines():
        LOG.info("pgbackrest: %s", line)
    if proc.returncode != 0:
        last = [line for line in proc.stdout.splitlines() if "ERROR" in line] or proc.stdout.splitlines()[-1:]
        raise AgentError(f"{what} failed (pgbackrest exit {proc.returncode}): {' | '.join(last).strip()}")


def cmd_backup(node: NodeFacts, args: argparse.Namespace) -> int:
    me = node["member"]
    chosen, leader = choose_backup_member(patroni_get(node, "/cluster"))
    if chosen is None or leader is None:
        raise AgentError("no running leader: no backup now")
    if chosen != me and not args.here:
        LOG.info("%s backup: %s takes it (leader %s); nothing to do here", args.type, chosen, leader)
        return 0
    try:
        with backup_claim(node, args.type):
            take_backup(node, args, leader)
    except ClaimHeld as held:
        LOG.info("%s backup: %s is taking it; nothing to do here", args.type, held.holder)
    return 0


def claim_key(node: NodeFacts, backup_type: str) -> str:
    """One key per type: a full and an incremental timer firing together must both run (on one
    member, pgBackRest's own lock then runs them in turn: run_pgbackrest waits for it)."""
    return f"/pgha/{node['cluster']}/claims/backup-{backup_type}"


def backup_claim(node: NodeFacts, backup_type: str) -> Claim:
    """The cluster-wide claim on taking a backup of this type, asked of this member's etcd first."""
    with_etcd = sorted((n for n, p in node["peers"].items() if p.get("etcd")), key=lambda n: n != node["member"])
    return Claim([etcd_client_url(node, n) for n in with_etcd], etcd_tls_context(node, "node.key"),
                 claim_key(node, backup_type), node["member"])


def take_backup(node: NodeFacts, args: argparse.Namespace, leader: str) -> None:
    me, stanza = node["member"], node["stanza"]
    base = [f"--stanza={stanza}", f"--type={args.type}", "--log-level-console=info"]
    relay = None
    try:
        if me != leader:
            relay = TcpRelay(node["peers"][leader]["ip"], int(node["ports"]["pgbackrest_server"]))
            base += standby_backup_options(node, leader, relay.port)
            LOG.info("%s backup from standby %s (primary %s through its TLS server)", args.type, me, leader)
        else:
            LOG.info("%s backup from the primary %s (no healthy replica)", args.type, me)
        started = time.monotonic()
        run_pgbackrest(pgbackrest_argv(node, *base, "backup", binary=args.pgbackrest), f"{args.type} backup")
        LOG.info("%s backup done in %.1fs", args.type, time.monotonic() - started)
    finally:
        if relay:
            relay.close()
    run_pgbackrest(pgbackrest_argv(node, f"--stanza={stanza}", "--log-level-console=info", "expire",
                                   binary=args.pgbackrest), "expire")


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common], help="take a backup if this member should (timers)",
                       description="Ask the local Patroni who takes backups (the sync standby, else a streaming "
                                   "replica, else the primary); on that member run pgbackrest backup (from the "
                                   "standby through the primary's TLS server) and expire. Elsewhere exit 0.")
    p.add_argument("--type", choices=BACKUP_TYPES, default="full")
    p.add_argument("--here", action="store_true", help="back up from this member whatever the choice")
    p.add_argument("--pgbackrest", default="pgbackrest", metavar="PATH", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_backup)
