"""Pigsty-style presets: RTO plans (failure detection timings) and sizing profiles."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RtoPlan:
    """Patroni DCS timings and the HAProxy health-check timings that go with them.

    Every plan satisfies current Patroni's rules: ttl >= 20, loop_wait >= 1,
    retry_timeout >= 3 and loop_wait + 2 * retry_timeout <= ttl.
    """

    ttl: int
    loop_wait: int
    retry_timeout: int
    primary_start_timeout: int
    safety_margin: int
    check_inter: str
    check_fastinter: str
    check_downinter: str
    check_rise: int
    check_fall: int
    # wal_sender_timeout / wal_receiver_timeout: how long a silent replication peer (a network
    # partition, not a crash: no RST) holds a walsender. A primary cut off from its replicas
    # cannot finish its demotion's shutdown before it (PostgreSQL's 60 s default); a primary
    # whose synchronous standby went silent keeps waiting on it as long.
    replication_timeout: str = "60s"


# Pigsty's pg_rto_plan presets (fast/norm/safe/wide), the HAProxy timings scaled with them.
# Tuned by the failover drills (docs/failover.md): loop_wait 2 in norm, because with
# synchronous_mode Patroni only moves synchronous_standby_names to the surviving replica on its
# next loop (commits wait meanwhile: replica loss paused writes 4-5 s with loop_wait 5) and only
# notices a crashed PostgreSQL on its next loop (postgres-crash RTO 10.2 s with loop_wait 5).
# fast has loop_wait 1: after a switchover the third member often re-points to the new leader
# only on its next loop, and until it streams on the new timeline the new primary's commits
# wait (the primary's replacement paused writes 6.0 s, 1.9 s of it that wait, 2026-12-01).
# fast also re-admits a new primary sooner in HAProxy (downinter 500ms, rise 1: one 200 from
# Patroni's /primary, which only the leader-lock holder answers, is enough; with rise 2 a
# replaced primary's switchover paused writes 5.8 s, 2026-12-01, tests/test_replace.py).
RTO_PLANS: dict[str, RtoPlan] = {
    "fast": RtoPlan(20, 1, 5, 15, 5, "1s", "500ms", "500ms", 1, 3, "10s"),
    "norm": RtoPlan(30, 2, 10, 25, 5, "2s", "1s", "2s", 3, 3, "15s"),
    "safe": RtoPlan(60, 10, 20, 45, 10, "3s", "1500ms", "3s", 3, 3, "30s"),
    "wide": RtoPlan(120, 20, 30, 95, 15, "4s", "2s", "4s", 3, 3, "60s"),
}

PROFILES: tuple[str, ...] = ("oltp", "olap", "crit", "tiny")
