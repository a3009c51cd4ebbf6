"""`dcs-sync`: bring Patroni's dynamic configuration to the spec this node was rendered with."""

import argparse
import hashlib
import json
import os
import subprocess
import time
from typing import Any

from ..contract import NodeFacts, agent_argv
from .cli_types import Subparsers
from .errors import LOG, AgentError
from .fsutil import open_log
from .patroni_api import patroni_get, patroni_patch_config

DCS_SYNC_POLL = 2.0
LOCK_POLL = 0.2


def _same(a: Any, b: Any) -> bool:
    # Patroni keeps values as given: 100 and "100", true and "on" mean the same to it.
    def norm(v: Any) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        text = str(v).strip().lower()
        return {"true": "on", "false": "off"}.get(text, text)

    return norm(a) == norm(b)


def dcs_changes(current: dict, desired: dict) -> dict:
    """Pure: the PATCH /config body that brings ``current`` to ``desired``: the keys of
    ``desired`` whose values differ, nested dictionaries compared key by key. Keys only in
    ``current`` are left as they are (an operator's `patronictl edit-config` additions)."""
    patch: dict = {}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict):
            sub = dcs_changes(have if isinstance(have, dict) else {}, want)
            if sub:
                patch[key] = sub
        elif have is None or not _same(have, want):
            patch[key] = want
    return patch


def desired_dcs(node: NodeFacts) -> dict:
    """bootstrap.dcs of this node's patroni.yml: the cluster-wide settings of its spec."""
    import yaml

    with open(os.path.join(node["paths"]["etc"], "patroni.yml"), encoding="utf-8") as fh:
        return (yaml.safe_load(fh).get("bootstrap") or {}).get("dcs") or {}


def _stamp_path(node: NodeFacts) -> str:
    # On the data volume: a reboot with the same spec does not apply it again, so a member
    # not yet replaced in a rolling change cannot undo what a newer member applied.
    return os.path.join(node["paths"]["data"], "pg", "dcs-applied.sha256")


def dcs_digest(desired: dict) -> str:
    return hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()


def sync_candidate_ready(cluster: dict) -> bool:
    """Pure: a replica is streaming and may be synchronous, so strict synchronous mode will
    not stop writes while it waits for one."""
    return any(m.get("role") in ("replica", "sync_standby") and m.get("state") == "streaming"
               and not (m.get("tags") or {}).get("nosync") for m in cluster.get("members") or [])


def _read_stamp(stamp: str) -> str | None:
    try:
        with open(stamp, encoding="utf-8") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None


def cmd_dcs_sync(node: NodeFacts, args: argparse.Namespace) -> int:
    import fcntl

    desired = desired_dcs(node)
    digest = dcs_digest(desired)
    stamp = _stamp_path(node)
    if _read_stamp(stamp) == digest and not args.force:
        LOG.info("this node's DCS settings were applied before; nothing to do")
        return 0
    # Every Patroni callback and configuration change starts one; one at a time does the work.
    # A later one waits its turn instead of leaving it to the running one: that one may hold an
    # older patroni.yml's settings (it read them before the change), and would stamp them.
    deadline = time.monotonic() + args.timeout
    lock = open(stamp + ".lock", "a")
    waited = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not waited:
                LOG.info("another dcs-sync is running; this one checks again after it")
                waited = True
            if time.monotonic() > deadline:
                raise AgentError(f"gave up after {args.timeout:.0f}s waiting for the other dcs-sync")
            time.sleep(LOCK_POLL)
    if waited:
        desired = desired_dcs(node)
        digest = dcs_digest(desired)
        if _read_stamp(stamp) == digest and not args.force:
            LOG.info("the other dcs-sync applied this node's DCS settings; nothing to do")
            return 0
    last_log = 0.0
    while True:
        # patroni.yml as it is now: apply-config may have changed it while this one waited.
        desired = desired_dcs(node)
        digest = dcs_digest(desired)
        try:
            cluster = patroni_get(node, "/cluster")
            has_leader = any(m.get("role") in ("leader", "master") and m.get("state") == "running"
                             for m in cluster.get("members") or [])
            patch = dcs_changes(patroni_get(node, "/config"), desired) if has_leader else None
        except AgentError as exc:
            cluster, patch, has_leader = {}, None, False
            LOG.debug("%s", exc)
        if patch is not None:
            enabling_sync = bool(patch.get("synchronous_mode")) and _same(patch["synchronous_mode"], True)
            if not enabling_sync or sync_candidate_ready(cluster):
                break
            why = "waiting for a streaming replica before turning synchronous mode on"
        else:
            why = "waiting for the local Patroni and a running leader"
        if time.monotonic() > deadline:
            raise AgentError(f"gave up after {args.timeout:.0f}s: {why}")
        if time.monotonic() - last_log > 60:
            LOG.info("%s", why)
            last_log = time.monotonic()
        time.sleep(DCS_SYNC_POLL)
    if patch:
        patroni_patch_config(node, patch)
        LOG.info("DCS settings changed to this node's spec: %s", json.dumps(patch, sort_keys=True))
    else:
        LOG.info("DCS settings already match this node's spec")
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp + ".tmp", "w", encoding="utf-8") as out:
        out.write(digest + "\n")
    os.replace(stamp + ".tmp", stamp)
    return 0


def start_dcs_sync(node: NodeFacts) -> subprocess.Popen:
    """Run dcs-sync detached (it may wait for a replica to stream); Patroni's callback returns."""
    log_path = os.path.join(node["paths"]["log"], "patroni", "dcs-sync.log")
    # The same command line the units use (pgha.contract), so the zipapp runs it, whichever file this is.
    argv = agent_argv(node["paths"], "dcs-sync", node_json=node.get("node_json"))
    with os.fdopen(open_log(log_path), "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    LOG.info("started dcs-sync in the background (pid %d, log %s)", proc.pid, log_path)
    return proc



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dcs-sync", parents=[common], help="bring Patroni's DCS settings to this node's spec",
                       description="PATCH Patroni's /config with the keys of patroni.yml's bootstrap.dcs that "
                                   "differ, once per rendered spec (a digest on the data volume). Turning "
                                   "synchronous mode on waits for a streaming replica. Patroni's callbacks "
                                   "start it; the REST API credentials come from patroni.env.")
    p.add_argument("--timeout", type=float, default=21600.0, metavar="SECONDS",
                   help="give up after this long (default 6 h: a new replica may restore a large backup)")
    p.add_argument("--force", action="store_true", help="apply even if this spec was applied before")
    p.set_defaults(func=cmd_dcs_sync)
