"""What a drill's records say: pure functions of the samples, no cluster, no clock.

The load generators (``load``) and the orchestration (``run``) collect a :class:`Trial`;
:func:`analyse` turns it into the result every figure in docs/failover.md comes from, and
:func:`aggregate` sums trials. Times are seconds since the drill's epoch.
"""

import json
import statistics
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLE_INTERVAL = 0.25  # the monitor's sampling period: how long one sample stands for

# (time, member, flag): a member writable (not in recovery) or passing Patroni's /primary check.
Sample = tuple[float, str, bool]
# (time, {member: (role, state)}): Patroni's /cluster as one member answered it.
View = tuple[float, dict[str, tuple[str, str]]]
Spans = dict[str, list[tuple[float, float]]]


@dataclass
class Attempt:
    """One statement a client sent, and what came of it."""

    id: int
    sent: float
    acked: float | None = None
    error: str | None = None
    errored: float | None = None
    server: str | None = None
    late: bool = False  # answered after the client had given up on it


@dataclass
class Trial:
    """Everything one drill recorded, as the analysis needs it."""

    scenario: str
    description: str
    config: dict[str, Any]  # Patroni's dynamic configuration before the fault
    fault: float
    end: float
    writes: list[Attempt]
    reads: list[Attempt]
    old_primary: str
    new_primary: str
    present: set[int]  # the writer's ids found on the new primary afterwards
    write_connect_errors: int = 0
    read_connect_errors: int = 0
    pg: list[Sample] = field(default_factory=list)  # writable samples
    checks: list[Sample] = field(default_factory=list)  # /primary check samples
    views: list[View] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejoined_at: float | None = None
    revived_at: float | None = None
    healthy: bool = True
    etcd_raft_leader: str | None = None
    etcd_fault: bool = False  # the fault reaches the failed members' etcd
    pgbouncer: dict[str, dict[str, Any]] = field(default_factory=dict)  # probes.pgbouncer_roles
    pgbouncer_settle_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what a scenario adds to the result


def rto(writes: list[Attempt], fault: float) -> float | None:
    """Fault -> first acknowledged write *sent after* the fault (a reply already in flight when
    the fault hit does not count, field note 15); None: no write came through."""
    first_after = min((a.acked for a in writes if a.acked is not None and a.sent >= fault and not a.late),
                      default=None)
    return None if first_after is None else first_after - fault


def max_write_gap(writes: list[Attempt], fault: float, end: float) -> float | None:
    """The longest stretch without an acknowledgement that ends after the fault (the end of the
    drill closes the last one)."""
    points = sorted(a.acked for a in writes if a.acked is not None and not a.late) + [end]
    return max((b - a for a, b in zip(points, points[1:]) if b >= fault), default=None)


def lost_rows(writes: list[Attempt], present: set[int]) -> list[int]:
    """Acknowledged ids missing from the (new) primary: the RPO in rows."""
    return sorted(a.id for a in writes if a.acked is not None and a.id not in present)


def interleaved_servers(writes: list[Attempt], present: AbstractSet[int] = frozenset()) -> bool:
    """Acknowledgements from two servers interleave: once server B acknowledged, A did again.

    A late answer (the client had given up on it) for a row the new primary holds is left out:
    that commit reached the new primary before it was promoted, and a frozen old primary merely
    delivered its answer after the thaw (CI, 2026-12-01: primary-hang, a commit confirmed by the
    standby just before SIGSTOP, answered 24 s later, RPO 0). A write the old primary accepted
    after the new one took over can never be on the new primary."""
    acked = (a for a in writes if a.acked and a.server and not (a.late and a.id in present))
    seq = [a.server for a in sorted(acked, key=lambda a: a.acked or 0.0)]
    changes = [s for i, s in enumerate(seq) if i == 0 or s != seq[i - 1]]
    return len(changes) != len(set(changes))


def true_spans(samples: list[Sample]) -> Spans:
    """Per member, where its samples were true, as intervals [t, next sample). A span is capped
    at two sampling periods and a half, so a member whose sampler stalled (a frozen node) does
    not stay "true" over the stall."""
    by: dict[str, list[tuple[float, bool]]] = {}
    for t, name, ok in sorted(samples):
        by.setdefault(name, []).append((t, ok))
    spans: Spans = {}
    for name, pts in by.items():
        for (t, ok), (t2, _) in zip(pts, pts[1:] + [(pts[-1][0] + SAMPLE_INTERVAL, False)]):
            if ok:
                spans.setdefault(name, []).append((t, min(t2, t + 2 * SAMPLE_INTERVAL + 0.5)))
    return spans


def _intersect(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for s1, e1 in a:
        for s2, e2 in b:
            lo, hi = max(s1, s2), min(e1, e2)
            if hi > lo:
                out.append((lo, hi))
    return out


def pairwise_overlaps(spans: Spans) -> list[tuple[float, float]]:
    """Every interval where two members' spans overlap."""
    names = sorted(spans)
    return [o for i, x in enumerate(names) for y in names[i + 1:] for o in _intersect(spans[x], spans[y])]


def split_brain(writes: list[Attempt], pg: list[Sample], checks: list[Sample],
                present: AbstractSet[int] = frozenset()) -> tuple[bool, float]:
    """(split brain, seconds two members were not in recovery at once).

    Split brain: acknowledged writes from two servers interleave in time, or at some sampled
    moment two members were writable and both passed Patroni's /primary check (so HAProxy
    could route writes to both)."""
    writable = true_spans(pg)
    dual = sum(e - s for s, e in pairwise_overlaps(writable))
    routable = true_spans(checks)
    both = {name: spans for name in writable if (spans := _intersect(writable[name], routable.get(name, [])))}
    sampled = any(e - s > 0 for s, e in pairwise_overlaps(both))
    return interleaved_servers(writes, present) or sampled, dual


def new_leader_seen(views: list[View], fault: float, old_primary: str) -> float | None:
    """When a member other than the old primary was first seen running as leader (None: never)."""
    return next((t for t, view in sorted(views) if t >= fault and any(
        role == "leader" and state == "running" and name != old_primary
        for name, (role, state) in view.items())), None)


def new_primary_routable(checks: list[Sample], fault: float, old_primary: str) -> float | None:
    """When another member first passed Patroni's /primary check (HAProxy routes writes to it)."""
    return next((t for t, name, ok in sorted(checks) if t >= fault and ok and name != old_primary), None)


def old_primary_saw_new_leader(samples: list[tuple[float, str | None, str | None]], fault: float,
                               old_primary: str) -> tuple[float | None, float | None]:
    """From the stopping primary's own Patroni (its /cluster, sampled until it went): (when it
    first named another member the running leader, when it last answered); None: never."""
    saw = next((t for t, lead, state in sorted(samples, key=lambda s: s[0])
                if t >= fault and lead and lead != old_primary and state == "running"), None)
    last = max((t for t, lead, _ in samples if lead is not None), default=None)
    return saw, last


def isolated_read_only(pg: list[Sample], fault: float, old_primary: str) -> float | None:
    """When the cut-off old primary stopped being writable (down counts), after the fault."""
    return next((t for t, name, writable in sorted(pg) if name == old_primary and t >= fault and not writable),
                None)


def _since(t: float | None, fault: float) -> float | None:
    return None if t is None else round(t - fault, 2)


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def analyse(trial: Trial) -> dict[str, Any]:
    """The drill's result (see the drills package's docstring for what each figure means)."""
    fault, writes = trial.fault, trial.writes
    acked = [a for a in writes if a.acked is not None]
    lost = lost_rows(writes, trial.present)
    split, dual = split_brain(writes, trial.pg, trial.checks, trial.present)
    failed_ref = trial.revived_at if trial.revived_at is not None else fault
    rejoined_at = trial.rejoined_at
    result: dict[str, Any] = {
        "scenario": trial.scenario,
        "description": trial.description,
        "config": {k: trial.config.get(k) for k in ("ttl", "loop_wait", "retry_timeout", "synchronous_mode",
                                                    "synchronous_mode_strict")},
        "old_primary": trial.old_primary,
        "new_primary": trial.new_primary,
        "failed": list(trial.failed),
        "etcd_raft_leader": trial.etcd_raft_leader,
        "raft_leader_failed": trial.etcd_fault and trial.etcd_raft_leader in set(trial.failed),
        "rto_s": _rounded(rto(writes, fault)),
        "max_write_gap_s": _rounded(max_write_gap(writes, fault, trial.end)),
        "new_leader_seen_s": _since(new_leader_seen(trial.views, fault, trial.old_primary), fault),
        "new_primary_check_ok_s": _since(new_primary_routable(trial.checks, fault, trial.old_primary), fault),
        "writes_acked": len(acked),
        "writes_acked_late": sum(1 for a in acked if a.late),
        "write_errors": sum(1 for a in writes if a.error and not a.acked) + trial.write_connect_errors,
        "rpo_rows": len(lost),
        "lost_ids": lost[:20],
        "reads_ok": sum(1 for a in trial.reads if a.acked),
        "read_errors": sum(1 for a in trial.reads if a.error and not a.acked) + trial.read_connect_errors,
        "split_brain": split,
        "dual_writable_s": round(dual, 2),
        "rejoin_s": None if rejoined_at is None else round(max(0.0, rejoined_at - failed_ref), 2),
        "rejoined": rejoined_at is not None,
        "healthy_after": trial.healthy,
        "same_dsn_after": any(a.acked and a.sent > max(rejoined_at or fault, fault) for a in writes),
        "stale_pgbouncer": sorted(n for n, e in trial.pgbouncer.items() if e["stale"]),
        "pgbouncer_settle_s": trial.pgbouncer_settle_s,
        "servers_after_fault": sorted({a.server for a in acked if a.acked and a.acked >= fault and a.server}),
        "notes": trial.notes,
        "error_samples": sorted({a.error for a in writes if a.error})[:5],
    }
    if trial.scenario == "partition":
        result["isolated_read_only_s"] = _since(isolated_read_only(trial.pg, fault, trial.old_primary), fault)
    if "old_patroni" in trial.extra:
        saw, last = old_primary_saw_new_leader(trial.extra["old_patroni"], fault, trial.old_primary)
        result["old_patroni_saw_new_leader_s"], result["old_patroni_last_answer_s"] = _since(saw, fault), \
            _since(last, fault)
    for key in ("writes_during_outage", "acks_during_outage", "synchronous_mode_strict", "revived_units",
                "handover_s", "poweroff_s", "handover_log"):
        if key in trial.extra:
            result[key] = trial.extra[key]
    return result


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several trials of one scenario: medians and worst cases, losses summed."""
    rtos = [r["rto_s"] for r in results if r["rto_s"] is not None]
    gaps = [r["max_write_gap_s"] for r in results if r["max_write_gap_s"] is not None]
    return {
        "trials": len(results),
        "rto_median_s": round(statistics.median(rtos), 2) if rtos else None,
        "rto_max_s": round(max(rtos), 2) if rtos else None,
        "gap_median_s": round(statistics.median(gaps), 2) if gaps else None,
        "gap_max_s": round(max(gaps), 2) if gaps else None,
        "rpo_rows": sum(r["rpo_rows"] for r in results),
        "acked": sum(r["writes_acked"] for r in results),
        "split_brain": any(r["split_brain"] for r in results),
        "all_rejoined": all(r["rejoined"] for r in results),
    }


def summary_line(r: dict[str, Any]) -> str:
    parts = [f"{r['scenario']}: RTO {_fmt(r['rto_s'])}", f"max write gap {_fmt(r['max_write_gap_s'])}",
             f"RPO {r['rpo_rows']} rows of {r['writes_acked']} acknowledged",
             f"write errors {r['write_errors']}", f"read errors {r['read_errors']}",
             f"split brain {'YES' if r['split_brain'] else 'no'}",
             f"rejoin {_fmt(r['rejoin_s'])}" if r["rejoined"] else "NOT rejoined",
             f"primary {r['old_primary']} -> {r['new_primary']}"]
    if "writes_during_outage" in r:
        parts.append(f"writes {r['writes_during_outage']} while both replicas were down")
    if r["stale_pgbouncer"]:
        parts.append(f"STALE PgBouncer {r['stale_pgbouncer']}")
    return ", ".join(parts)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def as_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
