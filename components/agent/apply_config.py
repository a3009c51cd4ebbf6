"""`apply-config` and `start-node`: the member's configuration, started at boot and kept current.

``pulumi up`` rewrites each member's manifest in the bucket (``contract.config_key``); the
``pgha-config.timer`` runs apply-config, which installs the files that changed and runs the
actions they name (render.files decides them: reload PgBouncer, HAProxy and Patroni, restart
an exporter, load a sysctl file, bring Patroni's dynamic configuration to patroni.yml), starts
units the configuration gained and stops those it lost. A run whose actions do not all succeed
is not recorded as applied, so the next run does them again.

A PostgreSQL parameter that needs a restart leaves Patroni's ``pending_restart`` on the
members; the leader's apply-config then restarts them one at a time, replicas first, and
itself last after a switchover to a restarted standby (``rolling_restart``).
"""

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .. import contract
from ..contract import NodeFacts
from . import fetch, handover
from .cli_types import Subparsers
from .dcs_sync import start_dcs_sync
from .errors import LOG, AgentError
from .facts import load_node
from .patroni_api import LEADER_ROLES, PatroniClient, PatroniError, local_client, member_client, rest_credentials

Runner = Callable[[list[str]], subprocess.CompletedProcess]
# A restarted member must stream again within this, or the roll stops (and says so).
RESTART_WAIT = 600.0
POLL = 2.0


def plan_actions(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Pure: the actions of the changed entries, each once, in contract.ACTION_ORDER (first-seen
    order within a kind, which is render's unit order)."""
    seen: dict[str, None] = {}
    for entry in entries:
        for action in entry.get("on_change") or ():
            contract.action_rank(action)  # an unknown action fails here, before anything runs
            seen.setdefault(action, None)
    return sorted(seen, key=contract.action_rank)


def _node_lists(manifest: Mapping[str, Any] | None, node_json: str) -> tuple[list[str], list[str]]:
    """(units, timers) of the node.json a manifest carries; empty for no manifest."""
    for entry in (manifest or {}).get("files", []):
        if entry["path"] == node_json and "content" in entry:
            facts = json.loads(entry["content"])
            return list(facts.get("units", [])), list(facts.get("timers", []))
    return [], []


def unit_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], node_json: str) -> tuple[list[str], list[str]]:
    """Pure: (units and timers to start, units and timers to stop) going from manifest ``old``
    to ``new``. Without an old record nothing is stopped (the first run after boot)."""
    old_units, old_timers = _node_lists(old, node_json)
    new_units, new_timers = _node_lists(new, node_json)
    if old is None:
        return [], []
    start = [u for u in new_units if u not in old_units] + [t for t in new_timers if t not in old_timers]
    stop = [u for u in reversed(old_units) if u not in new_units] + [t for t in old_timers if t not in new_timers]
    return start, stop


def _systemctl(run: Runner, *args: str) -> str | None:
    """None on success, else systemctl's own words."""
    res = run(["systemctl", *args])
    if res.returncode == 0:
        return None
    return f"systemctl {' '.join(args)}: {(res.stderr or res.stdout or '').strip() or f'exit {res.returncode}'}"


def run_actions(node: NodeFacts, actions: list[str], run: Runner,
                dcs_sync: Callable[[NodeFacts], Any] = start_dcs_sync) -> list[str]:
    """Run each action; return the failures (each one line). One failing does not stop the rest."""
    failures = []
    for action in actions:
        if action == contract.ACTION_DAEMON_RELOAD:
            problem = _systemctl(run, "daemon-reload")
        elif action.startswith(contract.ACTION_SYSCTL):
            res = run(["sysctl", "-q", "-p", action.removeprefix(contract.ACTION_SYSCTL)])
            problem = None if res.returncode == 0 else f"{action}: {(res.stderr or '').strip()}"
        elif action.startswith(contract.ACTION_RELOAD):
            # Only if running: a member whose database is stopped (a restore) stays stopped.
            problem = _systemctl(run, "try-reload-or-restart", action.removeprefix(contract.ACTION_RELOAD))
        elif action.startswith(contract.ACTION_RESTART):
            problem = _systemctl(run, "try-restart", action.removeprefix(contract.ACTION_RESTART))
        elif action == contract.ACTION_DCS_SYNC:
            try:
                dcs_sync(node)  # detached: it waits for a leader and, for synchronous mode, a replica
                problem = None
            except OSError as exc:
                problem = f"cannot start dcs-sync: {exc}"
        else:  # plan_actions refused it already
            raise AssertionError(action)
        if problem:
            LOG.warning("%s", problem)
            failures.append(problem)
        else:
            LOG.info("done: %s", action)
    return failures


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def apply(node: NodeFacts, *, get: fetch.Getter, run: Runner = _run, force: bool = False,
          dcs_sync: Callable[[NodeFacts], Any] = start_dcs_sync) -> bool:
    """Bring this member to its manifest in the bucket; True when something changed."""
    etc = node["paths"]["etc"]
    node_json = os.path.join(etc, "node.json")
    boot = fetch.read_boot(os.path.join(etc, contract.BOOT_FILE))
    # The timer comes back in seconds: two quick tries, not the boot's patient five.
    manifest = fetch.load_manifest(boot, get, attempts=2, backoff=2.0)
    applied = fetch.read_applied(etc)
    if applied is not None and applied.get("version") == manifest["version"] and not force:
        LOG.debug("configuration %s is current", str(manifest["version"])[:16])
        return False
    start, stop = unit_changes(applied, manifest, node_json)
    failures = []
    for unit in stop:  # before their files go: systemd stops what it still knows
        problem = _systemctl(run, "disable", "--now", unit)
        if problem:
            failures.append(problem)
    sync = fetch.sync_files(manifest, applied, get)
    stopped = set(stop)
    actions = [a for a in plan_actions(sync.changed) if a.removeprefix(contract.ACTION_RESTART) not in stopped]
    if sync.removed and contract.ACTION_DAEMON_RELOAD not in actions:
        actions.insert(0, contract.ACTION_DAEMON_RELOAD)
    fresh = load_node(node_json)  # the facts the new files carry
    failures += run_actions(fresh, actions, run, dcs_sync)
    for unit in start:
        problem = _systemctl(run, "enable", "--now", unit)
        if problem:
            failures.append(problem)
    changed = ", ".join(e["path"] for e in sync.changed + sync.removed) or "none"
    if failures:
        raise AgentError(f"configuration {str(manifest['version'])[:16]} installed but not applied "
                         f"(retried on the next run): " + "; ".join(failures))
    fetch.record_applied(etc, manifest)
    LOG.info("configuration %s applied; files changed: %s; actions: %s", str(manifest["version"])[:16], changed,
             ", ".join(actions + [f"start {u}" for u in start] + [f"stop {u}" for u in stop]) or "none")
    return True


# -- a parameter that needs a restart: one member at a time -----------------------------------

def _healthy(member: Mapping[str, Any]) -> bool:
    return member.get("state") in ("running", "streaming")


# A standby runs with at least the primary's value of these (PostgreSQL refuses hot standby
# otherwise, and Patroni starts a replica with the larger): a lower value takes effect only
# once the primary has restarted with it. Seen 2026-12-01: 107 -> 100 left the replicas
# pending after their restart, and the roll waited forever.
PRIMARY_BOUNDED = frozenset({"max_connections", "max_worker_processes", "max_wal_senders",
                             "max_prepared_transactions", "max_locks_per_transaction"})


def _lowers_a_bound(member: Mapping[str, Any]) -> bool:
    reasons = member.get("pending_restart_reason") or {}
    for name in PRIMARY_BOUNDED & set(reasons):
        try:
            if int(reasons[name]["new_value"]) < int(reasons[name]["old_value"]):
                return True
        except (KeyError, TypeError, ValueError):
            continue
    return False


@dataclass(frozen=True)
class RestartPlan:
    """Who restarts, in order: ``replicas`` one at a time; the leader ``first`` (in place, a
    brief write pause: a lowered primary-bounded parameter) or ``last`` (after a switchover)."""

    replicas: list[str]
    leader: str = ""  # "", "first" or "last"


def restart_order(cluster: Mapping[str, Any], me: str) -> RestartPlan:
    """Pure: the rolling restart ``me`` should run, or an empty plan unless ``me`` leads a
    cluster whose every member is healthy (a roll never starts, or goes on, while a member
    is down or rebuilding)."""
    members = list(cluster.get("members") or [])
    leader = next((m for m in members if m.get("role") in LEADER_ROLES), None)
    if leader is None or leader.get("name") != me or not all(_healthy(m) for m in members):
        return RestartPlan([])
    replicas = sorted(m["name"] for m in members if m is not leader and m.get("pending_restart"))
    if not leader.get("pending_restart"):
        # The leader runs its configured values (rolling_restart lets every member notice a
        # change first): its replicas may restart to them, whichever way they go.
        return RestartPlan(replicas)
    return RestartPlan(replicas, "first" if any(_lowers_a_bound(m) for m in members) else "last")


def _wait(client: PatroniClient, done: Callable[[Mapping[str, Any]], bool], what: str, timeout: float,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = clock() + timeout
    last = "no answer"
    while clock() < deadline:
        try:
            cluster = client.get("/cluster")
            if done(cluster):
                return
            last = json.dumps([{k: m.get(k) for k in ("name", "role", "state", "pending_restart")}
                               for m in cluster.get("members") or []])
        except (OSError, ValueError, PatroniError) as exc:
            last = str(exc)
        sleep(POLL)
    raise AgentError(f"gave up after {timeout:.0f}s waiting for {what}; last seen: {last}")


def _member(cluster: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return next((m for m in cluster.get("members") or [] if m.get("name") == name), {})


def rolling_restart(node: NodeFacts, *, timeout: float = RESTART_WAIT) -> list[str]:
    """On the leader: restart every member with a pending restart, one at a time, replicas
    first, each back to streaming before the next; the leader last, after a switchover.
    Returns the members restarted (nothing on a replica or with nothing pending)."""
    me = node["member"]
    client = local_client(node)
    try:
        cluster = client.get("/cluster")
    except (OSError, ValueError, PatroniError) as exc:
        LOG.debug("no rolling restart: cannot read /cluster: %s", exc)
        return []
    first_look = restart_order(cluster, me)
    if not first_look.replicas and not first_look.leader:
        return []
    # Members notice a DCS change a loop apart: let every one flag its pending restart before
    # the order is chosen (seen 2026-12-01: a replica flagged before the leader was restarted
    # first, stayed at the primary's higher max_connections and held the roll).
    try:
        time.sleep(float(client.get("/config").get("loop_wait", 10)) + 2)
        cluster = client.get("/cluster")
    except (OSError, ValueError, PatroniError) as exc:
        LOG.debug("no rolling restart: cannot read the cluster again: %s", exc)
        return []
    plan = restart_order(cluster, me)
    if not plan.replicas and not plan.leader:
        return []
    auth = rest_credentials(node)
    done = []

    def restarted(name: str) -> Callable[[Mapping[str, Any]], bool]:
        def check(c: Mapping[str, Any]) -> bool:
            m = _member(c, name)
            return m.get("state") in ("streaming", "running") and not m.get("pending_restart")
        return check

    def restart(name: str, client_of_member: PatroniClient) -> None:
        status, raw = client_of_member.request("POST", "/restart", {"restart_pending": True}, timeout=timeout)
        if status >= 400:
            raise AgentError(f"POST /restart on {name}: HTTP {status} {raw[:200]!r}")
        _wait(client, restarted(name), f"{name} to run again with its parameters", timeout)
        done.append(name)

    if plan.leader == "first":
        LOG.info("restarting the leader %s first: it lowers a parameter no standby may run below", me)
        restart(me, local_client(node, auth))
    # Members notice a DCS change a loop apart: a replica flagged after the first look is
    # restarted in a later round, before the leader hands over.
    for _ in range(len(cluster.get("members") or []) + 1):
        cluster = client.get("/cluster")
        pending = [n for n in restart_order(cluster, me).replicas if n not in done]
        if not pending:
            break
        for name in pending:
            LOG.info("restarting %s for its pending parameters", name)
            client_of_member = member_client(_member(cluster, name), auth, node=node)
            if client_of_member is None:
                raise AgentError(f"{name}: no REST API this agent can ask for its restart")
            restart(name, client_of_member)
    cluster = client.get("/cluster")
    if _member(cluster, me).get("pending_restart") and me not in done:
        # The same handover as a stop's: PgBouncer paused around the switchover, clients let go
        # once the candidate takes writes.
        candidate = handover.handover_as(node, node["os_users"]["postgres"], handover.HANDOVER_TIMEOUT,
                                         for_restart=True)
        if candidate is None:
            LOG.warning("the leader's pending restart waits: no handover to a restarted, streaming standby")
            return done
        _wait(client, lambda c: _member(c, candidate).get("role") in LEADER_ROLES
              and _member(c, me).get("state") == "streaming", f"{candidate} to lead and {me} to stream", timeout)
        # Demoting restarts PostgreSQL with the new parameters already, most of the time.
        if _member(client.get("/cluster"), me).get("pending_restart"):
            restart(me, local_client(node, auth))
        else:
            done.append(me)
    LOG.info("rolling restart done: %s", ", ".join(done))
    return done


def cmd_apply_config(node: NodeFacts, args: argparse.Namespace) -> int:
    etc = node["paths"]["etc"]
    boot = fetch.read_boot(os.path.join(etc, contract.BOOT_FILE))
    apply(node, get=fetch.bucket_getter(boot["aws"]), force=args.force)
    if not args.no_restart:
        rolling_restart(load_node(os.path.join(etc, "node.json")))
    return 0


def cmd_start_node(node: NodeFacts, args: argparse.Namespace) -> int:
    """The bootstrap's last step: enable node.json's units, start them in order, then its timers."""
    problem = _systemctl(_run, "enable", *node["units"])
    if problem:
        raise AgentError(problem)
    for unit in node["units"]:
        # The readiness unit waits for the cluster to take this member in: not the boot's job.
        problem = _systemctl(_run, "start", *(["--no-block"] if unit == contract.READY_UNIT else []), unit)
        if problem:
            # The unit's own last words: what `pulumi up` shows when this member cannot boot.
            journal = _run(["journalctl", "-u", unit, "-n", "8", "-o", "cat", "--no-pager"]).stdout.strip()
            raise AgentError(f"{problem}\n{journal}" if journal else problem)
        LOG.info("started %s", unit)
    problem = _systemctl(_run, "enable", "--now", *node["timers"])
    if problem:
        raise AgentError(problem)
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("apply-config", parents=[common], help="apply this member's configuration from the bucket",
                       description="Fetch this member's manifest (boot.json names it), install the files that "
                                   "changed, run the actions they name, start and stop the units the "
                                   "configuration gained and lost; on the leader, restart members with a "
                                   "pending restart one at a time. pgha-config.timer runs it.")
    p.add_argument("--force", action="store_true", help="apply even if this version was applied before")
    p.add_argument("--no-restart", action="store_true", help="leave pending restarts alone")
    p.set_defaults(func=cmd_apply_config)
    p = sub.add_parser("start-node", parents=[common], help="start node.json's units in order, then its timers",
                       description="The bootstrap's last step, after pgha-fetch installed the configuration.")
    p.set_defaults(func=cmd_start_node)
