"""`timeline-guard`: stop a replica stuck on an old timeline, so that Patroni rewinds it."""

import argparse
import os
import subprocess
import time

from ..contract import NodeFacts
from .cli_types import Subparsers
from .errors import LOG, AgentError
from .patroni_api import LEADER_ROLES, patroni_get

TIMELINE_GUARD_INTERVAL = 5.0
# How long a replica may stay behind the leader's timeline, not streaming, before the guard acts:
# past a failover's own catch-up (a replica restores the new timeline's history within seconds).
TIMELINE_GUARD_GRACE = 30.0


def stuck_on_old_timeline(local: dict, cluster: dict) -> str | None:
    """Pure: why this replica cannot follow the leader (None: it can, or it is not a replica).

    A replica that follows the new leader but replays an older timeline and does not stream has
    diverged from the new timeline without Patroni noticing: Patroni checks a running replica's
    timeline once, when it starts following, and a replica still replaying archived WAL can then
    apply a record of the old timeline past the fork point (the 2026-12-01 primary-hang drill: a
    thawed ex-primary's archive_timeout switch record, archived before the new timeline's history
    was). PostgreSQL then waits for WAL forever ("record with incorrect prev-link")."""
    if local.get("role") != "replica" or local.get("state") != "running":
        return None
    leader = next((m for m in cluster.get("members") or [] if m.get("role") in LEADER_ROLES
                   and m.get("state") == "running"), None)
    mine, theirs = local.get("timeline"), leader.get("timeline") if leader else None
    if leader is None or not isinstance(mine, int) or not isinstance(theirs, int) or mine >= theirs:
        return None
    if local.get("replication_state") == "streaming":
        return None
    return (f"replaying timeline {mine} while the leader {leader.get('name')} is on {theirs}, "
            f"not streaming ({local.get('replication_state') or 'no WAL receiver'})")


def cmd_timeline_guard(node: NodeFacts, args: argparse.Namespace) -> int:
    """Stop PostgreSQL on a replica stuck on an old timeline: Patroni then recovers it, and its
    recovery checks the timelines from pg_control (the replayed end of the old timeline) and
    rewinds (pg_rewind) or re-clones it. Nothing happens while the replica streams or catches up."""
    since: float | None = None
    while True:
        try:
            why = stuck_on_old_timeline(patroni_get(node, "/patroni"), patroni_get(node, "/cluster"))
        except AgentError:
            why = None  # Patroni restarting: nothing to judge
        now = time.monotonic()
        if why is None:
            since = None
        elif since is None:
            since = now
            LOG.info("%s: watching it for %.0f s", why, args.grace)
        elif now - since >= args.grace:
            LOG.warning("%s for %.0f s: stopping PostgreSQL so that Patroni rewinds it onto the leader's "
                        "timeline", why, now - since)
            pg_ctl = os.path.join(node["paths"]["pg_bin"], "pg_ctl")
            done = subprocess.run([pg_ctl, "stop", "-D", node["paths"]["pgdata"], "-m", "fast", "-w"],
                                  capture_output=True, text=True, timeout=120)
            LOG.info("pg_ctl stop: exit %d %s", done.returncode, (done.stderr or done.stdout).strip())
            since = None
            time.sleep(args.grace)  # Patroni's turn: its recovery, the rewind, the catch-up
        time.sleep(args.interval)



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("timeline-guard", parents=[common],
                       help="stop a replica stuck on an old timeline so that Patroni rewinds it",
                       description="Every --interval seconds: if this member is a running replica on an older "
                                   "timeline than the leader's and not streaming for --grace seconds, stop its "
                                   "PostgreSQL; Patroni's recovery then checks the timelines again and rewinds it.")
    p.add_argument("--interval", type=float, default=TIMELINE_GUARD_INTERVAL, metavar="SECONDS",
                   help=f"default {TIMELINE_GUARD_INTERVAL:g}")
    p.add_argument("--grace", type=float, default=TIMELINE_GUARD_GRACE, metavar="SECONDS",
                   help=f"default {TIMELINE_GUARD_GRACE:g}")
    p.set_defaults(func=cmd_timeline_guard)
