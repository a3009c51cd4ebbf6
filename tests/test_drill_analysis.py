"""The drills' analysis on constructed samples (no root, no machines): every expected figure is
worked out by hand in the comments from the samples next to it."""

import json
from typing import Any

import pytest

from pgha.local.drills import analysis
from pgha.local.drills.analysis import Attempt, Trial

FAULT = 10.0


def ack(id: int, sent: float, acked: float, server: str = "10.0.0.1", late: bool = False) -> Attempt:
    return Attempt(id, sent, acked=acked, server=server, late=late)


def failed(id: int, sent: float, error: str = "connection refused") -> Attempt:
    return Attempt(id, sent, error=error, errored=sent + 0.1)


# The writer around a fault at 10.0: acknowledgements at 1.0, 9.0, 9.5, 10.2 (sent before the
# fault), a late answer (sent 10.1, acknowledged 13.0 after the client gave up on it), one error,
# then 14.0 (sent 13.9, the first write sent after the fault) and 14.5.
WRITES = [
    ack(1, 0.9, 1.0), ack(2, 8.9, 9.0), ack(3, 9.4, 9.5), ack(4, 9.9, 10.2),
    Attempt(5, 10.1, acked=13.0, error="client timeout", errored=15.1, server="10.0.0.1", late=True),
    failed(6, 11.0),
    ack(7, 13.9, 14.0, "10.0.0.2"), ack(8, 14.4, 14.5, "10.0.0.2"),
]
END = 15.0


def test_rto_is_the_first_acknowledgement_of_a_write_sent_after_the_fault() -> None:
    # Not 10.2 (sent 9.9, before the fault), not the late 13.0: id 7, acknowledged at 14.0.
    assert analysis.rto(WRITES, FAULT) == pytest.approx(4.0)
    assert analysis.rto(WRITES[:4], FAULT) is None  # nothing sent after the fault came through


def test_write_pause_is_the_longest_gap_ending_after_the_fault() -> None:
    # Acks 1.0, 9.0, 9.5, 10.2, 14.0, 14.5 and the end 15.0: the 8 s before 9.0 ends before the
    # fault; after it the gaps are 0.7, 3.8, 0.5, 0.5. The late 13.0 would split 3.8 into 2.8 + 1.0.
    assert analysis.max_write_gap(WRITES, FAULT, END) == pytest.approx(3.8)
    # No acknowledgement after the fault: the pause runs from 10.2 to the end.
    assert analysis.max_write_gap(WRITES[:4], FAULT, 20.0) == pytest.approx(9.8)


def test_acknowledged_rows_missing_on_the_new_primary_are_lost() -> None:
    # Acknowledged: 1, 2, 3, 4, 5 (late, but committed), 7, 8; 6 failed and may be missing.
    present = {1, 2, 4, 6, 8}
    assert analysis.lost_rows(WRITES, present) == [3, 5, 7]
    assert analysis.lost_rows(WRITES, {1, 2, 3, 4, 5, 7, 8}) == []


def test_acknowledgements_from_two_servers_interleaving_are_split_brain() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    handover = [ack(1, 0, 1, a), ack(2, 1, 2, a), ack(3, 2, 3, b), ack(4, 3, 4, b)]
    assert analysis.interleaved_servers(handover) is False
    # b, then a again: both acknowledged writes over overlapping time. Ordered by acknowledgement,
    # not by list order (id 5 was sent first but answered last).
    assert analysis.interleaved_servers([ack(5, 0, 3.5, a), *handover]) is True
    assert analysis.split_brain([ack(5, 0, 3.5, a), *handover], [], [])[0] is True


def test_a_frozen_primarys_late_answer_for_a_row_the_new_primary_holds_is_no_split_brain() -> None:
    # primary-hang: a commit the standby confirmed just before SIGSTOP is answered by a after the
    # thaw, 24.5 s later (the client gave up on it at 5 s), after b took over and acknowledged 3, 4.
    a, b = "10.0.0.1", "10.0.0.2"
    thawed = [ack(1, 0, 1, a), ack(3, 23, 24, b), ack(4, 24, 25, b), ack(2, 1, 25.5, a, late=True)]
    assert analysis.split_brain(thawed, [], [], present={1, 2, 3, 4})[0] is False
    # The same answer for a row b does not hold: a accepted it while b led. Split brain (and lost).
    assert analysis.split_brain(thawed, [], [], present={1, 3, 4})[0] is True
    assert analysis.lost_rows(thawed, {1, 3, 4}) == [2]
    # An answer in time from a after b's is split brain whatever b holds.
    assert analysis.split_brain([*thawed[:3], ack(2, 25.2, 25.5, a)], [], [], present={1, 2, 3, 4})[0] is True


# Two members' samples every 0.25 s: a writable at 0, 0.25, 0.5 and no longer at 0.75; b writable
# from 0.5. Spans: a [0, 0.25) [0.25, 0.5) [0.5, 0.75); b [0.5, 0.75) [0.75, 1.0), the last one a
# sampling period long. They overlap on [0.5, 0.75): 0.25 s both writable.
WRITABLE = [(0.0, "a", True), (0.25, "a", True), (0.5, "a", True), (0.75, "a", False),
            (0.5, "b", True), (0.75, "b", True)]


def test_two_writable_members_both_passing_the_primary_check_are_split_brain() -> None:
    checks = [(0.0, "a", True), (0.25, "a", True), (0.5, "a", True), (0.75, "a", False),
              (0.5, "b", True), (0.75, "b", True)]
    split, dual = analysis.split_brain([], WRITABLE, checks)
    assert split is True and dual == pytest.approx(0.25)


def test_two_writable_members_only_one_routable_are_not_split_brain() -> None:
    # A thawing ex-primary: not in recovery for a moment, but Patroni's /primary check fails on it.
    checks = [(0.0, "a", True), (0.25, "a", True), (0.5, "a", False), (0.5, "b", True), (0.75, "b", True)]
    split, dual = analysis.split_brain([], WRITABLE, checks)
    assert split is False and dual == pytest.approx(0.25)


def test_a_stalled_sampler_does_not_stretch_a_member_s_writable_span() -> None:
    # a's next sample comes 5 s later (its sampler hung with the node): its span is capped at
    # 2 * 0.25 + 0.5 = 1.0 s, [0, 1.0). b: [0.5, 1.5) (next sample at 3.0, capped too), [3.0, 3.25).
    # Overlap [0.5, 1.0) = 0.5 s; uncapped it would be [0.5, 1.5) + [3.0, 3.25) = 1.25 s.
    samples = [(0.0, "a", True), (5.0, "a", False), (0.5, "b", True), (3.0, "b", True), (3.25, "b", False)]
    assert analysis.true_spans(samples)["a"] == [(0.0, 1.0)]
    assert analysis.split_brain([], samples, [])[1] == pytest.approx(0.5)


def trial(**changes: Any) -> Trial:
    base = Trial(
        scenario="primary-node", description="kill the primary", config={"ttl": 20, "loop_wait": 2, "other": 1},
        fault=FAULT, end=END, writes=WRITES, reads=[ack(0, 1, 1.1), failed(0, 11), ack(0, 12, 12.2)],
        old_primary="pg-1", new_primary="pg-2", present={1, 2, 3, 4, 5, 7, 8},
        write_connect_errors=2, read_connect_errors=1,
        checks=[(9.0, "pg-1", True), (11.0, "pg-2", False), (12.5, "pg-1", True), (13.5, "pg-2", True)],
        views=[(9.0, {"pg-1": ("leader", "running")}), (12.0, {"pg-2": ("leader", "starting")}),
               (13.0, {"pg-1": ("replica", "stopped"), "pg-2": ("leader", "running")})],
        failed=["pg-1"], rejoined_at=40.0, revived_at=31.0, etcd_raft_leader="pg-1", etcd_fault=True,
        pgbouncer={"pg-1": {"stale": False}, "pg-2": {"stale": True}}, pgbouncer_settle_s=20.01,
        notes=["a note"], extra={"revived_units": ["pg-1/boot"], "fault_at": FAULT})
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_analyse_reports_what_the_client_and_the_monitor_saw() -> None:
    r = analysis.analyse(trial())
    assert r["config"] == {"ttl": 20, "loop_wait": 2, "retry_timeout": None, "synchronous_mode": None,
                           "synchronous_mode_strict": None}
    assert (r["rto_s"], r["max_write_gap_s"]) == (4.0, 3.8)
    # 7 acknowledged (one late); errors: id 6, plus 2 connection errors.
    assert (r["writes_acked"], r["writes_acked_late"], r["write_errors"]) == (7, 1, 3)
    assert (r["rpo_rows"], r["lost_ids"]) == (0, [])
    assert (r["reads_ok"], r["read_errors"]) == (2, 2)
    # pg-2 first seen leader *and running* at 13.0; first passing /primary (not pg-1) at 13.5.
    assert (r["new_leader_seen_s"], r["new_primary_check_ok_s"]) == (3.0, 3.5)
    # Rejoin counts from the revival (31.0), not from the fault.
    assert (r["rejoined"], r["rejoin_s"]) == (True, 9.0)
    assert r["raft_leader_failed"] is True
    # A write sent after the rejoin (40.0)? The last was sent at 14.4: no.
    assert r["same_dsn_after"] is False
    assert r["stale_pgbouncer"] == ["pg-2"] and r["pgbouncer_settle_s"] == 20.01
    # Servers that acknowledged at or after the fault: the late 13.0 and 10.2 on .1, 14.0 on .2.
    assert r["servers_after_fault"] == ["10.0.0.1", "10.0.0.2"]
    assert r["split_brain"] is False and r["dual_writable_s"] == 0
    assert r["error_samples"] == ["client timeout", "connection refused"]
    assert r["revived_units"] == ["pg-1/boot"] and "fault_at" not in r and "isolated_read_only_s" not in r
    line = analysis.summary_line(r)
    assert "RTO 4.00s" in line and "RPO 0 rows of 7 acknowledged" in line and "rejoin 9.00s" in line
    assert "STALE PgBouncer ['pg-2']" in line


def test_analyse_of_a_loss_a_split_and_no_rejoin() -> None:
    r = analysis.analyse(trial(present={1, 2}, rejoined_at=None, revived_at=None, etcd_raft_leader="pg-3",
                               pg=WRITABLE, checks=WRITABLE))
    assert (r["rpo_rows"], r["lost_ids"]) == (5, [3, 4, 5, 7, 8])
    assert r["split_brain"] is True and r["dual_writable_s"] == 0.25
    assert (r["rejoined"], r["rejoin_s"]) == (False, None)
    assert r["raft_leader_failed"] is False  # etcd's leader was not the failed member
    assert "NOT rejoined" in analysis.summary_line(r) and "split brain YES" in analysis.summary_line(r)


def test_a_partition_reports_when_the_isolated_primary_went_read_only() -> None:
    pg = [(9.75, "pg-1", True), (10.25, "pg-1", True), (12.5, "pg-1", False), (12.75, "pg-2", True)]
    r = analysis.analyse(trial(scenario="partition", pg=pg))
    assert r["isolated_read_only_s"] == 2.5
    # Rejoin with nothing revived counts from the fault: 40.0 - 10.0.
    assert analysis.analyse(trial(revived_at=None))["rejoin_s"] == 30.0


def result(rto: float | None, gap: float | None, rpo: int = 0, acked: int = 100, split: bool = False,
           rejoined: bool = True) -> dict[str, Any]:
    return {"rto_s": rto, "max_write_gap_s": gap, "rpo_rows": rpo, "writes_acked": acked, "split_brain": split,
            "rejoined": rejoined}


def test_aggregate_over_trials() -> None:
    trials = [result(2.0, 3.0), result(None, 1.0, rpo=2, acked=50), result(4.0, 5.0), result(3.0, 4.0)]
    # RTOs 2, 4, 3 (one trial had none): median 3, max 4. Gaps 3, 1, 5, 4: median (3 + 4) / 2.
    assert analysis.aggregate(trials) == {
        "trials": 4, "rto_median_s": 3.0, "rto_max_s": 4.0, "gap_median_s": 3.5, "gap_max_s": 5.0,
        "rpo_rows": 2, "acked": 350, "split_brain": False, "all_rejoined": True}
    worse = analysis.aggregate([*trials, result(None, None, split=True, rejoined=False)])
    assert worse["trials"] == 5 and worse["split_brain"] is True and worse["all_rejoined"] is False
    assert worse["rto_median_s"] == 3.0 and worse["gap_max_s"] == 5.0
    assert analysis.aggregate([result(None, None)])["rto_median_s"] is None


def test_as_json_writes_attempts_as_objects() -> None:
    assert json.loads(analysis.as_json({"a": Attempt(1, 0.5)}))["a"] == {
        "id": 1, "sent": 0.5, "acked": None, "error": None, "errored": None, "server": None, "late": False}


def test_the_stopping_primary_s_own_patroni_saw_the_new_leader_before_it_went() -> None:
    # pg-1's Patroni, sampled as it stops: itself leader (9.9, 10.5), pg-2 leader but still
    # starting (11.0), pg-2 running (12.0, 13.0), then no answer (14.0, 15.0).
    samples = [(9.9, "pg-1", "running"), (10.5, "pg-1", "running"), (11.0, "pg-2", "starting"),
               (12.0, "pg-2", "running"), (13.0, "pg-2", "running"), (14.0, None, None), (15.0, None, None)]
    assert analysis.old_primary_saw_new_leader(samples, FAULT, "pg-1") == (12.0, 13.0)
    # Gone before any other member led: never saw it (a failover after the stop, not a handover).
    gone = [(9.9, "pg-1", "running"), (10.5, "pg-1", "running"), (11.0, None, None), (12.0, None, None)]
    assert analysis.old_primary_saw_new_leader(gone, FAULT, "pg-1") == (None, 10.5)
    assert analysis.old_primary_saw_new_leader([], FAULT, "pg-1") == (None, None)
    r = analysis.analyse(trial(scenario="primary-poweroff", extra={"fault_at": FAULT, "old_patroni": samples,
                                                                    "poweroff_s": 9.5, "handover_log": ["x"]}))
    assert (r["old_patroni_saw_new_leader_s"], r["old_patroni_last_answer_s"]) == (2.0, 3.0)
    assert r["poweroff_s"] == 9.5 and r["handover_log"] == ["x"] and "old_patroni" not in r
