"""The faults a drill injects (``s_<scenario>``, listed in ``SCENARIOS``), each under load on a
healthy cluster, and the recovery EC2 and systemd provide: a killed machine boots again, a unit
that died restarts after its RestartSec."""

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import netns, procfs
from ..cluster import LocalCluster, Node
from .load import Client
from .probes import (
    DrillError,
    dynamic_config,
    etcd_leader_node,
    etcdctl,
    members,
    node_pids,
    patroni_request,
    sync_standby,
    wait,
)


@dataclass
class Context:
    """What a scenario is handed (the cluster, the primary, the writer) and what it leaves for
    the analysis: ``extra["fault_at"]`` (always), the failed members, when they were revived."""

    cluster: LocalCluster
    epoch: float
    log: Callable[[str], None]
    primary: Node
    writer: Client | None = None
    failed: list[Node] = field(default_factory=list)
    revived_at: float | None = None  # when the failed member's processes were started again
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.epoch

    @property
    def ttl(self) -> int:
        return int(dynamic_config(self.cluster).get("ttl", 30))

    def revive(self, node: Node | None = None) -> None:
        self.revived_at = self.now()
        started = start_missing(self.cluster, node, self.log)
        self.extra["revived_units"] = started


def signal_node(node: Node, sig: int, ctx: Context | None = None) -> list[int]:
    """Signal every process of the node's machine; the fault time is taken just before. SIGKILL
    is the instance lost at once (every process in one pass, then the machine is gone)."""
    pids = node_pids(node)
    if ctx is not None:
        ctx.extra["fault_at"] = ctx.now()
    if sig == signal.SIGKILL:
        node.machine.kill()
        return pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def start_missing(cluster: LocalCluster, node: Node | None = None, log: Callable[[str], None] = print) -> list[str]:
    """What EC2 and systemd do: a machine that is down boots again (the same instance, its
    volume), and in a running one every unit that is not running starts, in order."""
    started = []
    for n in [node] if node else cluster.nodes:
        if not n.machine.running():
            log(f"{n.member.name}: booting again")
            cluster.boot(n, n.machine.instance["instance_id"])
            n.machine.wait_booted()
            started.append(f"{n.member.name}/boot")
        for name in n.units:
            if not n.systemd.is_active(name):
                log(f"{n.member.name}: starting {name}")
                n.systemd.start(name)
                started.append(f"{n.member.name}/{name}")
    return started


def _new_leader_elected(ctx: Context, timeout: float) -> bool:
    def other_leader() -> bool:
        return any(m.get("role") == "leader" and m.get("state") == "running" and m["name"] != ctx.primary.member.name
                   for m in members(ctx.cluster).values())
    return wait(other_leader, timeout)


def _wait_past_ttl(ctx: Context, fault_at: float) -> None:
    """Field note 12: a killed leader revived within ttl takes its lock back; wait past it."""
    ttl = ctx.ttl
    _new_leader_elected(ctx, ttl * 3)
    remaining = fault_at + ttl + 2 - ctx.now()
    if remaining > 0:
        time.sleep(remaining)


def _await_recovery(ctx: Context, fault: float) -> None:
    """Hold a fault the failed primary cannot end itself (frozen, cut off) until the cluster
    has recovered around it: past ttl, a new leader, then a write acknowledged that was sent
    after the fault, and 3 s more of writes on the new primary."""
    _wait_past_ttl(ctx, fault)
    wait(lambda: ctx.writer is not None and any(a.acked and a.sent > fault for a in ctx.writer.attempts), 30)
    time.sleep(3)


def s_primary_node(ctx: Context) -> None:
    signal_node(ctx.primary, signal.SIGKILL, ctx)
    ctx.failed = [ctx.primary]
    _wait_past_ttl(ctx, ctx.extra["fault_at"])
    ctx.revive()


def s_postgres_crash(ctx: Context) -> None:
    postmaster = ctx.cluster.postmaster_pid(ctx.primary)
    if postmaster is None:
        raise DrillError("PostgreSQL is not running on the primary")
    targets = [postmaster, *procfs.children(postmaster)]
    ctx.extra["fault_at"] = ctx.now()
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ctx.failed = [ctx.primary]


def s_patroni_crash(ctx: Context) -> None:
    restart = ctx.primary.systemd.restart_sec("pgha-patroni.service")
    ctx.extra["fault_at"] = ctx.now()
    ctx.primary.systemd.kill("pgha-patroni.service", signal.SIGKILL, group=False)
    ctx.failed = [ctx.primary]
    time.sleep(restart)  # Restart=on-failure, RestartSec=: systemd restarts it
    ctx.revive(ctx.primary)


def s_primary_hang(ctx: Context) -> None:
    pids = signal_node(ctx.primary, signal.SIGSTOP, ctx)
    fault = ctx.extra["fault_at"]
    ctx.failed = [ctx.primary]
    try:
        _await_recovery(ctx, fault)
    finally:
        for pid in set(pids) | set(node_pids(ctx.primary)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    ctx.revived_at = ctx.now()


def _restart_after(ctx: Context, node: Node, unit: str) -> None:
    restart = node.systemd.restart_sec(unit)
    ctx.extra["fault_at"] = ctx.now()
    node.systemd.kill(unit, signal.SIGKILL)
    ctx.failed = [node]
    time.sleep(restart)  # Restart=always, RestartSec=
    ctx.revive(node)


def s_pgbouncer_crash(ctx: Context) -> None:
    _restart_after(ctx, ctx.primary, "pgha-pgbouncer.service")


def s_haproxy_crash(ctx: Context) -> None:
    host = None
    for _ in range(40):
        host = ctx.extra.get("writer_host")
        if host:
            break
        time.sleep(0.05)
    node = next((n for n in ctx.cluster.nodes if n.ip == host), ctx.cluster.nodes[0])
    ctx.notes.append(f"killed the HAProxy the writer was connected through ({node.member.name})")
    _restart_after(ctx, node, "pgha-haproxy.service")


def s_replica_node(ctx: Context) -> None:
    victim = sync_standby(ctx.cluster) or next(n for n in ctx.cluster.nodes if n is not ctx.primary)
    ctx.notes.append(f"killed the synchronous standby's node {victim.member.name}")
    signal_node(victim, signal.SIGKILL, ctx)
    ctx.failed = [victim]
    time.sleep(10)  # a reboot's worth of absence
    ctx.revive()


def s_etcd_member(ctx: Context) -> None:
    etcd_leader = etcd_leader_node(ctx.cluster)
    victim = next(n for n in ctx.cluster.nodes if n.member.runs_etcd and n is not etcd_leader)
    ctx.notes.append(f"etcd raft leader {etcd_leader.member.name}; killed etcd on {victim.member.name}")
    ctx.extra["rejoin_check"] = lambda: etcdctl(ctx.cluster, "endpoint", "health", endpoints=[victim]).returncode == 0
    _restart_after(ctx, victim, "pgha-etcd.service")


def s_partition(ctx: Context) -> None:
    """Blackhole routes between the primary's namespace and both replicas', both ways. Clients
    (the root namespace) still reach every node, so the isolated primary stays reachable: it
    must demote itself (it loses etcd's quorum; failsafe mode cannot reach the other members)
    before the majority side's leader key expires and a replica promotes."""
    cluster = ctx.cluster
    isolated = cluster.host_number(ctx.primary.member)
    others = [cluster.host_number(n.member) for n in cluster.nodes if n is not ctx.primary]
    fault = ctx.now()
    ctx.extra["fault_at"] = fault
    netns.partition(cluster.address_prefix, isolated, others)
    ctx.failed = [ctx.primary]
    ctx.notes.append(f"{ctx.primary.member.name} cut off from "
                     + ", ".join(n.member.name for n in cluster.nodes if n is not ctx.primary))
    try:
        _await_recovery(ctx, fault)
    finally:
        netns.heal(cluster.address_prefix, [cluster.host_number(n.member) for n in cluster.nodes])
    ctx.revived_at = ctx.now()


def s_switchover(ctx: Context) -> None:
    ctx.extra["fault_at"] = ctx.now()
    status, text = patroni_request(ctx.cluster, ctx.primary, "POST", "/switchover",
                                   {"leader": ctx.primary.member.name})
    ctx.notes.append(f"POST /switchover: {status} {text.strip()[:120]}")
    if status != 200:
        raise DrillError(f"switchover refused: {status} {text}")
    ctx.failed = [ctx.primary]


HANDOVER_UNIT = "pgha-handover.service"
HANDOVER_LOG = "var/log/pgha/handover.log"


def s_handover(ctx: Context) -> None:
    """What a stopping primary does first, alone: stop its handover unit (whose ExecStop is the
    agent's handover: PgBouncer PAUSE, switchover, RESUME), then start the unit again."""
    node = ctx.primary
    log_path = node.machine.fs / HANDOVER_LOG
    offset = log_path.stat().st_size if log_path.exists() else 0
    ctx.extra["fault_at"] = ctx.now()
    node.machine.systemctl("stop", HANDOVER_UNIT, check=True)
    ctx.extra["handover_s"] = round(ctx.now() - ctx.extra["fault_at"], 2)
    ctx.failed = [node]
    node.machine.systemctl("start", HANDOVER_UNIT, check=True)
    ctx.extra["handover_log"] = _handover_lines(log_path, offset)


def _handover_lines(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _sample_old_primary(ctx: Context, node: Node, stop: threading.Event) -> None:
    """Until ``stop``: what the stopping primary's own Patroni says, every 0.1 s: (time, the
    leader its /cluster names, that leader's state), or (time, None, None) when it does not answer."""
    samples: list[tuple[float, str | None, str | None]] = ctx.extra.setdefault("old_patroni", [])
    client = ctx.cluster.patroni_client(node)
    while not stop.is_set():
        leader_name = state = None
        with contextlib.suppress(OSError, ValueError):
            status, raw = client.request("GET", "/cluster", timeout=0.5)
            if status == 200:
                lead: dict[str, Any] = next((m for m in json.loads(raw).get("members", [])
                                             if m.get("role") == "leader"), {})
                leader_name, state = lead.get("name", ""), lead.get("state", "")
        samples.append((ctx.now(), leader_name, state))
        stop.wait(0.1)


def s_primary_poweroff(ctx: Context) -> None:
    """The primary's machine shut down in order (EC2's stop or terminate: SIGTERM to nspawn,
    systemd stops every unit, pgha-handover first), then booted again on its volume. Records
    what the old primary's own Patroni said until it went (``old_patroni``) and its handover log."""
    node = ctx.primary
    log_path = node.machine.fs / HANDOVER_LOG
    offset = log_path.stat().st_size if log_path.exists() else 0
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_old_primary, args=(ctx, node, stop), daemon=True)
    sampler.start()
    ctx.extra["fault_at"] = ctx.now()
    ctx.failed = [node]
    try:
        node.machine.poweroff()
    finally:
        stop.set()
        sampler.join(5)
    ctx.extra["poweroff_s"] = round(ctx.now() - ctx.extra["fault_at"], 2)
    # The overlay stays mounted after the machine stopped: its log is there to read.
    ctx.extra["handover_log"] = _handover_lines(node.machine.root / HANDOVER_LOG, offset)
    ctx.revive(node)


REPLICA_UNITS = ("pgha-patroni.service", "pgha-pgbouncer.service")


def s_replicas(ctx: Context) -> None:
    """Both replica databases die (Patroni, PostgreSQL, PgBouncer); their etcd members stay, since
    losing two of three etcd members is a DCS quorum loss that demotes any primary by design."""
    victims = [n for n in ctx.cluster.nodes if n is not ctx.primary]
    config = dynamic_config(ctx.cluster)
    strict = bool(config.get("synchronous_mode")) and bool(config.get("synchronous_mode_strict"))
    ctx.extra["synchronous_mode_strict"] = strict
    fault = ctx.now()
    ctx.extra["fault_at"] = fault
    for node in victims:
        with contextlib.suppress(Exception):
            ctx.cluster.signal_postgres(node, signal.SIGKILL)
        for unit in REPLICA_UNITS:
            with contextlib.suppress(Exception):
                node.systemd.kill(unit, signal.SIGKILL)
    for node in victims:  # and they stay down: systemd would restart them after RestartSec
        node.machine.systemctl("stop", *REPLICA_UNITS)
    ctx.failed = victims
    outage = 15.0
    time.sleep(outage)
    w = ctx.writer
    acked = [a for a in (w.attempts if w else []) if a.acked and fault + 3 < a.acked <= fault + outage]
    ctx.extra["acks_during_outage"] = len(acked)
    ctx.extra["writes_during_outage"] = "continued" if acked else "stopped"
    ctx.notes.append(f"both replicas down {outage:.0f}s: writes {ctx.extra['writes_during_outage']} "
                     f"({len(acked)} acknowledged; " + ("strict synchronous mode, rpo 0)" if strict else
                                                         "asynchronous, rpo > 0)"))
    ctx.revive()


def _replace(ctx: Context, node: Node, *, wipe_data: bool = False) -> None:
    """``pulumi up``'s replacement of one member's instance, as ``pgha local replace`` does it."""
    began = ctx.now()
    instance_id = ctx.cluster.replace(node, wipe_data=wipe_data, log=ctx.log)
    ctx.notes.append(f"{node.member.name} replaced by {instance_id}{' (blank volume)' if wipe_data else ''}: "
                     f"ready after {ctx.now() - began:.1f}s")
    if node not in ctx.failed:
        ctx.failed.append(node)


def s_replace_primary(ctx: Context) -> None:
    ctx.extra["fault_at"] = ctx.now()
    _replace(ctx, ctx.primary)


def _a_replica(ctx: Context) -> Node:
    # The synchronous standby: the member whose loss a synchronous commit feels.
    return sync_standby(ctx.cluster) or next(n for n in ctx.cluster.nodes if n is not ctx.primary)


def s_replace_replica(ctx: Context) -> None:
    ctx.extra["fault_at"] = ctx.now()
    _replace(ctx, _a_replica(ctx))


def s_replace_replica_wiped(ctx: Context) -> None:
    ctx.extra["fault_at"] = ctx.now()
    _replace(ctx, _a_replica(ctx), wipe_data=True)


def s_roll(ctx: Context) -> None:
    """Every member replaced in turn, as a change of instance type or AMI rolls: replicas first
    (highest member first), the member that leads when its turn comes last."""
    ctx.extra["fault_at"] = ctx.now()
    began = ctx.now()
    order = sorted((n for n in ctx.cluster.nodes if n is not ctx.primary), key=lambda n: -n.member.index)
    for node in [*order, ctx.primary]:
        _replace(ctx, node)
    ctx.extra["roll_s"] = round(ctx.now() - began, 1)


# Scenarios whose fault reaches the failed node's etcd member (killed, frozen or cut off).
ETCD_FAULTS = frozenset({"primary-node", "primary-hang", "replica-node", "etcd-member", "partition", "replace-primary",
                         "replace-replica", "replace-replica-wiped", "roll"})

SCENARIOS: dict[str, tuple[Callable[[Context], None], str]] = {
    "primary-node": (s_primary_node, "kill the primary's machine (every process at once, etcd member included); "
                     "boot it again past ttl"),
    "postgres-crash": (s_postgres_crash, "kill -9 the primary's postmaster and its children"),
    "patroni-crash": (s_patroni_crash, "kill -9 Patroni on the primary; restart it after RestartSec"),
    "primary-hang": (s_primary_hang, "SIGSTOP every process of the primary's machine past ttl, then SIGCONT"),
    "pgbouncer-crash": (s_pgbouncer_crash, "kill -9 the primary's PgBouncer; restart after RestartSec"),
    "haproxy-crash": (s_haproxy_crash, "kill -9 the HAProxy the writer is connected through"),
    "replica-node": (s_replica_node, "kill the synchronous standby's machine; boot it again after 10s"),
    "etcd-member": (s_etcd_member, "kill -9 a non-leader etcd member; restart after RestartSec"),
    "partition": (s_partition, "cut the primary off from both replicas, both ways (network namespaces); "
                  "clients still reach every node; heal past ttl"),
    "switchover": (s_switchover, "planned switchover through Patroni's REST API"),
    "handover": (s_handover, "the primary's handover alone (pgha-handover's stop: PgBouncer PAUSE, switchover, "
                 "RESUME)"),
    "primary-poweroff": (s_primary_poweroff, "shut the primary's machine down in order (its handover first); "
                         "boot it again"),
    "replicas": (s_replicas, "both replica databases die and stay down 15 s; writes stop (rpo 0, strict) or "
                 "continue (rpo > 0)"),
    "replace-primary": (s_replace_primary, "pulumi up replaces the primary's instance: graceful stop, a new "
                        "instance on its volume, wait for its readiness signal"),
    "replace-replica": (s_replace_replica, "pulumi up replaces the synchronous standby's instance"),
    "replace-replica-wiped": (s_replace_replica_wiped, "the synchronous standby's instance replaced on a blank "
                              "volume (metal): it rebuilds from the repository or a peer"),
    "roll": (s_roll, "every member replaced in turn, replicas first, the leader last, each after the previous "
             "one's readiness signal"),
}
