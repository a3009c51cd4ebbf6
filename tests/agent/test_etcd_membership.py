"""How a member's etcd starts: restart, bootstrap, join, wait."""

from __future__ import annotations

import pytest

from pgha.agent import errors
from pgha.agent.etcd import membership

URL = {i: f"https://10.0.0.{i}:2380" for i in (1, 2, 3)}


def _member(i: int, started: bool = True, name: str | None = None) -> dict:
    return {"ID": str(1000 + i), "name": f"pg-x-{i}" if name is None else name, "peerURLs": [URL[i]],
            "clientURLs": [f"https://10.0.0.{i}:2379"] if started else []}


def _answer(i: int, leader: bool, members: list[dict]) -> dict:
    return {"name": f"pg-x-{i}", "endpoint": f"https://10.0.0.{i}:2379", "leader": leader, "members": members}


def _plan(me: int, answers: list[dict], has_data: bool = False) -> dict:
    return membership.plan_etcd_start(f"pg-x-{me}", URL[me], "pg-x-1", has_data, answers)


def test_etcd_restart_with_data_starts_whatever_the_others_say():
    assert _plan(2, [], has_data=True)["action"] == "start"


def test_etcd_fresh_cluster_first_member_bootstraps_and_the_rest_follow_it():
    assert _plan(1, [])["action"] == "new"
    # member 1 is up without quorum: its peer port lists the whole initial cluster, nobody started
    bootstrapping = [_answer(1, False, [_member(i, started=False) for i in (1, 2, 3)])]
    assert _plan(2, bootstrapping)["action"] == "new"
    assert _plan(3, bootstrapping)["action"] == "new"


def test_etcd_new_member_never_bootstraps_alone():
    # member 1 down (being replaced) and nobody else answers: a new member 2 must not form a second DCS
    assert _plan(2, [])["action"] == "wait"
    # member 1 answers but with a cluster that does not include member 2 and has no leader
    assert _plan(2, [_answer(1, False, [_member(1)])])["action"] == "wait"


def test_etcd_growing_a_one_member_cluster_joins_it():
    plan = _plan(2, [_answer(1, True, [_member(1)])])
    assert plan == {"action": "join", "via": "https://10.0.0.1:2379", "remove": None, "why": plan["why"]}


def test_etcd_member_listed_but_never_started_joins_as_existing():
    # added by an earlier attempt (no name yet) or part of the initial cluster while the others run
    for entry in (_member(3, started=False, name=""), _member(3, started=False)):
        plan = _plan(3, [_answer(1, True, [_member(1), _member(2), entry])])
        assert plan["action"] == "existing" and plan["via"] == "https://10.0.0.1:2379"


def test_etcd_replaced_member_without_data_removes_its_stale_entry_and_rejoins():
    plan = _plan(3, [_answer(2, False, []), _answer(1, True, [_member(1), _member(2), _member(3)])])
    assert plan["action"] == "join" and plan["remove"] == "1003" and plan["via"] == "https://10.0.0.1:2379"
    # the first member too, when members 2 and 3 kept quorum without it
    plan = _plan(1, [_answer(2, True, [_member(1), _member(2), _member(3)])])
    assert plan["action"] == "join" and plan["remove"] == "1001"


def test_etcd_lost_quorum_and_lost_data_waits_for_an_operator():
    plan = _plan(1, [_answer(2, False, [_member(1), _member(2), _member(3)])])
    assert plan["action"] == "wait" and "quorum" in plan["why"]


def test_etcd_initial_cluster_names_members_that_never_started():
    node = {"ports": {"etcd_peer": 2380}, "peers": {f"pg-x-{i}": {"ip": f"10.0.0.{i}", "etcd": True} for i in (1, 2, 3)}}
    members = [_member(1), _member(3, started=False, name="")]
    assert membership.etcd_initial_cluster(node, members) == f"pg-x-1={URL[1]},pg-x-3={URL[3]}"
    with pytest.raises(errors.AgentError, match="not a member of this cluster's spec"):
        membership.etcd_initial_cluster(node, [{"ID": "9", "name": "", "peerURLs": ["https://10.9.9.9:2380"]}])


def test_effective_etcd_config_replaces_only_the_initial_cluster_lines():
    rendered = ("name: pg-x-2\ninitial-cluster: pg-x-1=a,pg-x-2=b,pg-x-3=c\ninitial-cluster-token: pg-x\n"
                "initial-cluster-state: new\nenable-v2: false\n")
    out = membership.effective_etcd_config(rendered, "pg-x-1=a,pg-x-2=b", "existing")
    assert out == ("name: pg-x-2\ninitial-cluster: pg-x-1=a,pg-x-2=b\ninitial-cluster-token: pg-x\n"
                   "initial-cluster-state: existing\nenable-v2: false\n")


# --- DCS settings ------------------------------------------------------------------------------------

