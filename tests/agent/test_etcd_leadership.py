"""Where etcd's raft leadership goes."""

from __future__ import annotations

from pgha.agent.etcd import leadership


def _status(member_id: str, leader: str, raft_index: int = 100) -> dict:
    return {"id": member_id, "leader": leader, "raft_index": raft_index}


def _cluster(**roles: str) -> dict:
    """Patroni's /cluster: name=role, a replica streaming unless its role ends in '-stopped'."""
    members = []
    for name, role in roles.items():
        role, _, stopped = role.partition("-")
        state = "running" if role == "leader" else ("stopped" if stopped else "streaming")
        members.append({"name": name.replace("_", "-"), "role": role, "state": state})
    return {"members": members}


def test_leadership_leaves_the_primarys_node_for_the_asynchronous_replicas():
    pick = leadership.leadership_transferee
    cluster = _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica")
    others = {"pg-x-2": _status("22", "11", 100), "pg-x-3": _status("33", "11", 100)}
    assert pick(_status("11", "11"), "pg-x-1", cluster, others) == ("pg-x-3", "33")
    # Patroni 3.x says master
    assert pick(_status("11", "11"), "pg-x-1", _cluster(pg_x_1="master", pg_x_2="sync_standby", pg_x_3="replica"),
                others) == ("pg-x-3", "33")
    assert pick(_status("11", "22"), "pg-x-1", cluster, others) is None  # not the raft leader: nothing to do
    assert pick(_status("", ""), "pg-x-1", cluster, others) is None


def test_leadership_leaves_the_synchronous_standby_only_for_a_streaming_asynchronous_replica():
    pick = leadership.leadership_transferee
    me = _status("22", "22")
    others = {"pg-x-1": _status("11", "22"), "pg-x-3": _status("33", "22")}
    assert pick(me, "pg-x-2", _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica"), others) == ("pg-x-3", "33")
    # the asynchronous replica is not streaming: staying on the sync standby beats the primary
    assert pick(me, "pg-x-2", _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica-stopped"), others) is None
    # already on the asynchronous replica: stay
    assert pick(_status("33", "33"), "pg-x-3", _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica"),
                {"pg-x-1": _status("11", "33"), "pg-x-2": _status("22", "33")}) is None


def test_leadership_goes_only_to_a_follower_in_contact_the_most_caught_up_first():
    pick = leadership.leadership_transferee
    me = _status("11", "11")
    two_async = _cluster(pg_x_1="leader", pg_x_2="replica", pg_x_3="replica")
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": _status("22", "11", 90), "pg-x-3": _status("33", "11", 120)}) == ("pg-x-3", "33")
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": _status("22", "11", 120), "pg-x-3": _status("33", "11", 120)}) == ("pg-x-2", "22")
    # down, following no one (electing), or following another leader: no target
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": None, "pg-x-3": _status("33", "", 500)}) is None
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": _status("22", "44"), "pg-x-3": _status("33", "11")}) == ("pg-x-3", "33")
    assert pick(me, "pg-x-1", _cluster(pg_x_1="leader"), {}) is None  # a one-member branch
    # Patroni's view unavailable (empty): every node ranks the same, nothing moves
    assert pick(me, "pg-x-1", {}, {"pg-x-2": _status("22", "11")}) is None


