"""`etcd-leadership`: keep etcd's raft leader on the node whose loss costs least."""

import argparse
import ssl
import time

from ...contract import NodeFacts
from ..cli_types import Subparsers
from ..errors import LOG, AgentError
from ..patroni_api import LEADER_ROLES, patroni_get
from .client import etcd_call, etcd_client_url, etcd_member_status, etcd_tls_context, other_etcd_members

ETCD_LEADERSHIP_INTERVAL = 5.0


def leadership_rank(member: dict | None) -> int:
    """Pure: what losing this node would cost if it were also etcd's raft leader (lower is
    cheaper), from its entry in Patroni's /cluster.

    A raft election blocks DCS writes for a second or two and, for the leader key, restarts
    its ttl (a new raft leader's lessor restarts every lease at its full TTL). Losing a
    streaming asynchronous replica needs no DCS write at all; losing the synchronous standby
    needs one (Patroni moves synchronous_standby_names, and commits wait meanwhile); losing
    the primary needs its leader key to expire.
    """
    role = (member or {}).get("role")
    if role in LEADER_ROLES:
        return 2
    if role == "replica" and (member or {}).get("state") == "streaming":
        return 0
    return 1


def leadership_transferee(me: dict, my_name: str, cluster: dict,
                          others: dict[str, dict | None]) -> tuple[str, str] | None:
    """Pure: (name, member ID) to hand etcd's raft leadership to, or None to leave it here.

    Only the raft leader hands over, and only to an etcd member that follows it (in contact)
    on a node whose loss costs less (:func:`leadership_rank`): off the primary's node first,
    and off the synchronous standby's when an asynchronous replica streams. Among equals: the
    most caught-up, then by name.
    """
    if not me.get("id") or me.get("leader") != me["id"]:
        return None
    by_name = {m.get("name"): m for m in cluster.get("members") or []}
    mine = leadership_rank(by_name.get(my_name))
    followers = [(leadership_rank(by_name.get(name)), -st.get("raft_index", 0), name, st["id"])
                 for name, st in others.items() if st and st.get("id") and st.get("leader") == me["id"]]
    cheaper = sorted(f for f in followers if f[0] < mine)
    if not cheaper:
        return None
    return cheaper[0][2], cheaper[0][3]


def move_etcd_leadership(node: NodeFacts, context: ssl.SSLContext) -> str | None:
    """One check; the name of the member leadership went to, if it moved."""
    local = etcd_client_url(node, node["member"])
    me = etcd_member_status(local, context)
    if me["leader"] != me["id"]:
        return None  # the common case: no need to ask Patroni
    cluster = patroni_get(node, "/cluster", timeout=3.0)
    others: dict[str, dict | None] = {}
    for name in other_etcd_members(node):
        try:
            others[name] = etcd_member_status(etcd_client_url(node, name), context)
        except AgentError as exc:
            LOG.debug("%s", exc)
            others[name] = None
    target = leadership_transferee(me, node["member"], cluster, others)
    if target is None:
        return None
    etcd_call(local, "/v3/maintenance/transfer-leadership", {"targetID": target[1]}, context, timeout=10.0)
    roles = {m.get("name"): m.get("role") for m in cluster.get("members") or []}
    LOG.info("moved etcd's raft leadership from %s (%s) to %s (%s): losing a node that is also the raft "
             "leader costs a raft election on top", node["member"], roles.get(node["member"], "no Patroni member"),
             target[0], roles.get(target[0], "no Patroni member"))
    return target[0]


def cmd_etcd_leadership(node: NodeFacts, args: argparse.Namespace) -> int:
    context = etcd_tls_context(node, key="node.key")
    last_error = ""
    while True:
        try:
            move_etcd_leadership(node, context)
            last_error = ""
        except AgentError as exc:
            # etcd or Patroni restarting: say so once, not every few seconds.
            if str(exc) != last_error:
                LOG.info("check skipped: %s", exc)
            last_error = str(exc)
        time.sleep(args.interval)



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("etcd-leadership", parents=[common],
                       help="keep etcd's raft leader on the node whose loss costs least",
                       description="Every --interval seconds, on the raft leader: hand raft leadership (etcd's "
                                   "move-leader) to a member that follows it on a node whose loss costs less: "
                                   "an asynchronous replica's, else the synchronous standby's, never the "
                                   "primary's. Losing the raft leader's node adds a raft election, and a new "
                                   "raft leader restarts every lease (Patroni's leader key) at its full TTL.")
    p.add_argument("--interval", type=float, default=ETCD_LEADERSHIP_INTERVAL, metavar="SECONDS",
                   help=f"default {ETCD_LEADERSHIP_INTERVAL:g}")
    p.set_defaults(func=cmd_etcd_leadership)
