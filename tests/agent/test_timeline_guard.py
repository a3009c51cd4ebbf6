"""The timeline guard's judgement."""

from __future__ import annotations

from pgha.agent import timeline_guard


def test_timeline_guard_acts_only_on_a_replica_stuck_behind_the_leader_s_timeline():
    cluster = {"members": [{"name": "pg-x-3", "role": "leader", "state": "running", "timeline": 3},
                           {"name": "pg-x-2", "role": "replica", "state": "in archive recovery", "timeline": 2}]}
    stuck = {"role": "replica", "state": "running", "timeline": 2, "replication_state": "in archive recovery"}
    why = timeline_guard.stuck_on_old_timeline(stuck, cluster)
    assert why is not None and "timeline 2" in why and "pg-x-3 is on 3" in why
    # Streaming (it is catching up), on the leader's timeline, not a replica, or no running leader: nothing.
    assert timeline_guard.stuck_on_old_timeline({**stuck, "replication_state": "streaming"}, cluster) is None
    assert timeline_guard.stuck_on_old_timeline({**stuck, "timeline": 3}, cluster) is None
    assert timeline_guard.stuck_on_old_timeline({**stuck, "role": "primary"}, cluster) is None
    assert timeline_guard.stuck_on_old_timeline({**stuck, "state": "starting"}, cluster) is None
    leaderless = {"members": [{**cluster["members"][0], "state": "stopped"}, cluster["members"][1]]}
    assert timeline_guard.stuck_on_old_timeline(stuck, leaderless) is None


