"""`etcd` (start, bootstrap or join) and `dcs-ready`."""

import argparse
import os
import sys
import time
from typing import Any

from ...contract import NodeFacts
from ..cli_types import Subparsers
from ..errors import LOG, AgentError
from .client import (
    etcd_call,
    etcd_client_url,
    etcd_cluster_version,
    etcd_member_status,
    etcd_peer_members,
    etcd_peer_url,
    etcd_tls_context,
    other_etcd_members,
)

ETCD_BINARY = "/usr/bin/etcd"
ETCD_WAIT_LOG_EVERY = 30.0

def cmd_dcs_ready(node: NodeFacts, args: argparse.Namespace) -> int:
    # Patroni reads etcd's cluster version once, at start. A cluster formed a moment ago says
    # 3.0.0 until its leader decides the version, and Patroni then turns etcd watches off for
    # the life of the process ("watches are not supported"): every reaction waits for loop_wait.
    context = etcd_tls_context(node, key="node.key")
    endpoints = [etcd_client_url(node, name) for name, p in node["peers"].items() if p.get("etcd")]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for endpoint in endpoints:
            version = etcd_cluster_version(endpoint, context)
            if version is not None and version >= (3, 1):
                LOG.info("etcd cluster version %s at %s", ".".join(map(str, version)), endpoint)
                return 0
        time.sleep(0.5)
    LOG.warning("no etcd member reported a cluster version within %.0fs; starting Patroni anyway", args.timeout)
    return 0



def survey_etcd(node: NodeFacts, context: Any) -> list[dict]:
    """What every other etcd member that answers says: its name, its member list, and
    whether it serves clients with a raft leader (a running cluster with quorum)."""
    answers = []
    for name in other_etcd_members(node):
        try:
            members = etcd_peer_members(etcd_peer_url(node, name), context)
        except AgentError as exc:
            LOG.debug("%s", exc)
            continue
        client = etcd_client_url(node, name)
        try:
            leader = etcd_member_status(client, context)["leader"] != ""
        except AgentError as exc:
            LOG.debug("%s", exc)
            leader = False
        answers.append({"name": name, "endpoint": client, "leader": leader, "members": members})
    return answers


def plan_etcd_start(me: str, my_peer_url: str, first: str, has_data: bool, answers: list[dict]) -> dict:
    """Pure: how this member's etcd starts.

    ``start``: it has data (a restart; etcd ignores the initial cluster). ``new``: bootstrap
    the rendered initial cluster, which is right only while no cluster has formed without
    this member. ``existing``: join the running cluster as the member it lists but which
    never started. ``join``: remove this member's stale entry (a replaced node whose volume
    is gone), add it anew, then join. ``wait``: ask again later. Only the first member may
    bootstrap when no one lists it: a new member that hears no one could otherwise form a
    second, empty DCS while the first member is down (a branch being promoted, a node
    being replaced).
    """
    if has_data:
        return {"action": "start", "why": "this member has etcd data"}

    def listed(answer: dict) -> dict | None:
        return next((m for m in answer["members"] if my_peer_url in m["peerURLs"]), None)

    def started(entry: dict | None) -> bool:
        return bool(entry and entry["clientURLs"])

    led = [a for a in answers if a["leader"]]
    if led:
        entry = listed(led[0])
        if entry is None:
            return {"action": "join", "via": led[0]["endpoint"], "remove": None,
                    "why": f"{led[0]['name']}'s running cluster does not list this member yet"}
        if not started(entry):
            return {"action": "existing", "via": led[0]["endpoint"], "members": led[0]["members"],
                    "why": f"{led[0]['name']}'s running cluster lists this member, which never started"}
        return {"action": "join", "via": led[0]["endpoint"], "remove": entry["ID"],
                "why": f"{led[0]['name']}'s running cluster knows this member, whose data is gone"}
    if any(started(listed(a)) for a in answers):
        return {"action": "wait", "why": "etcd has no leader, and this member, which ran before, lost its data: "
                                         "bring the other members back to quorum first"}
    if me == first:
        return {"action": "new", "why": "first member, no running cluster heard"}
    head = next((a for a in answers if a["name"] == first), None)
    if head is not None and listed(head) is not None:
        return {"action": "new", "why": f"{first} is bootstrapping the same initial cluster"}
    return {"action": "wait", "why": f"no etcd leader heard, and {first} does not list this member"}


def etcd_initial_cluster(node: NodeFacts, members: list[dict]) -> str:
    """``name=peer-url,...`` for ``members`` (etcd's list); a member not started yet has no
    name in it, so names come from the node facts by peer URL."""
    by_url = {etcd_peer_url(node, name): name for name, peer in node["peers"].items() if peer.get("etcd")}
    pairs = []
    for m in members:
        for url in m.get("peerURLs") or []:
            name = m.get("name") or by_url.get(url)
            if not name:
                raise AgentError(f"etcd member {m.get('ID')} ({url}) is not a member of this cluster's spec")
            pairs.append(f"{name}={url}")
    return ",".join(sorted(pairs))


def etcd_join(node: NodeFacts, context: Any, plan: dict, timeout: float) -> str:
    """Remove the stale entry, add this member; the initial cluster to start with."""
    my_url = etcd_peer_url(node, node["member"])
    if plan.get("remove"):
        etcd_call(plan["via"], "/v3/cluster/member/remove", {"ID": plan["remove"]}, context)
        LOG.info("removed this member's stale etcd entry %s", plan["remove"])
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = etcd_call(plan["via"], "/v3/cluster/member/add", {"peerURLs": [my_url]}, context)
            LOG.info("added to the etcd cluster as %s", reply.get("member", {}).get("ID"))
            return etcd_initial_cluster(node, reply.get("members") or [])
        except AgentError as exc:
            # strict-reconfig-check refuses while an added member has not started yet.
            if time.monotonic() > deadline:
                raise
            LOG.info("member add not accepted yet (%s); retrying", exc)
            time.sleep(2)


def effective_etcd_config(rendered: str, initial_cluster: str, state: str) -> str:
    """The rendered etcd config with the initial cluster and its state replaced."""
    lines = []
    for line in rendered.splitlines():
        if line.startswith("initial-cluster:"):
            line = f"initial-cluster: {initial_cluster}"
        elif line.startswith("initial-cluster-state:"):
            line = f"initial-cluster-state: {state}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def cmd_etcd(node: NodeFacts, args: argparse.Namespace) -> int:
    data_dir = node["paths"]["etcd_data"]
    has_data = os.path.isdir(os.path.join(data_dir, "member"))
    first = min((n for n, p in node["peers"].items() if p.get("etcd")),
                key=lambda n: int(n.rsplit("-", 1)[1]))
    context = None if has_data else etcd_tls_context(node)
    last_log = 0.0
    while True:
        answers = [] if has_data else survey_etcd(node, context)
        plan = plan_etcd_start(node["member"], etcd_peer_url(node, node["member"]), first, has_data, answers)
        if plan["action"] != "wait":
            break
        if time.monotonic() - last_log > ETCD_WAIT_LOG_EVERY:
            LOG.info("etcd not started: %s", plan["why"])
            last_log = time.monotonic()
        time.sleep(2)
    LOG.info("etcd %s: %s", plan["action"], plan["why"])
    config = args.config
    if plan["action"] in ("join", "existing"):
        if plan["action"] == "join":
            initial = etcd_join(node, context, plan, args.join_timeout)
        else:
            initial = etcd_initial_cluster(node, plan["members"])
        with open(args.config, encoding="utf-8") as fh:
            text = effective_etcd_config(fh.read(), initial, "existing")
        config = os.path.join(node["paths"]["run"], "etcd", "etcd.conf.yml")
        os.makedirs(os.path.dirname(config), mode=0o700, exist_ok=True)
        with open(config + ".tmp", "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(config + ".tmp", config)
        LOG.info("joining as existing member; initial cluster %s", initial)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(args.etcd, [args.etcd, "--config-file", config])
    return 1  # not reached



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("etcd", parents=[common], help="start this member's etcd: restart, bootstrap or join",
                       description="With etcd data: exec etcd on the rendered config. Without: ask the other "
                                   "members; join a running cluster (member add, removing a stale entry of "
                                   "this member first), bootstrap the rendered initial cluster when none runs, "
                                   "or wait. Then exec etcd.")
    p.add_argument("--config", required=True, metavar="PATH", help="the rendered etcd.conf.yml")
    p.add_argument("--etcd", default=ETCD_BINARY, metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--join-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="how long to retry `member add` (default 600)")
    p.set_defaults(func=cmd_etcd)
    p = sub.add_parser("dcs-ready", parents=[common], help="wait until etcd reports its cluster version",
                       description="Patroni's ExecStartPre: wait (up to --timeout) until an etcd member reports "
                                   "a decided cluster version >= 3.1, so Patroni starts with etcd watches. "
                                   "Always exits 0.")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="default 60")
    p.set_defaults(func=cmd_dcs_ready)
