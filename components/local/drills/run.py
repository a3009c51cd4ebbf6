"""One drill from start to end: a healthy cluster, load, the fault, recovery, what is left on
the new primary, then the analysis of what the client and the monitor saw."""

import os
import subprocess
import time
from typing import Any, Callable

import psycopg

from ...spec import PORTS
from ..cluster import LocalCluster
from ..health import leader
from .analysis import Trial, analyse
from .faults import ETCD_FAULTS, SCENARIOS, Context, start_missing
from .load import READ_INTERVAL, WRITE_INTERVAL, Client, Monitor
from .probes import DrillError, dynamic_config, etcd_leader_node, members, pgbouncer_roles, quiet, quiet_value, wait

TABLE = "pgha_drill"


def ensure_table(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.multi_host_dsn(PORTS["primary"]), autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (run text NOT NULL, id bigint NOT NULL, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (run, id))")


def writer_dsn(cluster: LocalCluster) -> str:
    # The recommended application DSN: every node's HAProxy, read-write session, short connect timeout.
    return cluster.multi_host_dsn(PORTS["primary"]).replace("connect_timeout=3", "connect_timeout=2") + \
        "&target_session_attrs=read-write"


def reader_dsn(cluster: LocalCluster) -> str:
    return cluster.multi_host_dsn(PORTS["replica"]).replace("connect_timeout=3", "connect_timeout=2")


def run_drill(cluster: LocalCluster, scenario: str, *, log: Callable[[str], None] = print,
              settle: float = 3.0, recover_timeout: float = 180.0, keep_timeline: bool = False) -> dict[str, Any]:
    if scenario not in SCENARIOS:
        raise DrillError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    inject, description = SCENARIOS[scenario]
    start_missing(cluster, log=log)
    cluster.wait_healthy(timeout=recover_timeout)
    wait(lambda: not any(e["stale"] for e in pgbouncer_roles(cluster).values()), 15)
    ensure_table(cluster)
    config = dynamic_config(cluster)
    run = f"{scenario}-{int(time.time() * 1000)}"
    epoch = time.monotonic()
    writer = Client("writer", writer_dsn(cluster), f"INSERT INTO {TABLE} (run, id) VALUES ('{run}', %s) "
                    "RETURNING host(inet_server_addr())", WRITE_INTERVAL, True, epoch)
    reader = Client("reader", reader_dsn(cluster), "SELECT host(inet_server_addr())", READ_INTERVAL, False, epoch)
    monitor = Monitor(cluster, epoch)
    ctx = Context(cluster, epoch, log, primary=leader(cluster, running=True, error=DrillError), writer=writer)
    for part in (monitor, writer, reader):
        part.start()
    if not wait(lambda: sum(1 for a in writer.attempts if a.acked) >= 10, 30):
        raise DrillError("the writer got no acknowledgement before the fault")
    time.sleep(settle)
    ctx.extra["writer_host"] = _writer_haproxy(writer)
    # Losing etcd's raft leader with the primary restarts the leader key's ttl after the election.
    ctx.extra["etcd_raft_leader"] = quiet_value(lambda: etcd_leader_node(cluster).member.name)
    log(f"{scenario}: {description} (primary {ctx.primary.member.name})")
    try:
        inject(ctx)
    except Exception:
        for part in (writer, reader, monitor):
            part.finish()
        raise
    fault = ctx.extra["fault_at"]
    # Recovery: a write acknowledged after the fault, the failed members streaming again, all healthy.
    wait(lambda: any(a.acked and a.sent >= fault and not a.late for a in writer.attempts), recover_timeout)
    rejoined_at = None
    deadline = time.monotonic() + recover_timeout
    while time.monotonic() < deadline:
        check = ctx.extra.get("rejoin_check")
        view = members(cluster)
        if check is not None:
            ok = quiet(check)
        else:
            lead_tl = next((m.get("timeline") for m in view.values() if m.get("role") == "leader"), None)
            ok = bool(ctx.failed) and all(_rejoined(view.get(n.member.name, {}), lead_tl) for n in ctx.failed)
        if ok:
            rejoined_at = ctx.now()
            break
        time.sleep(0.25)
    healthy = wait(lambda: not cluster.health_problems(), recover_timeout)
    recovered = ctx.now()
    # The same DSN must carry writes once the cluster is healthy again (HAProxy may lag a check).
    wait(lambda: any(a.acked and a.sent > recovered for a in writer.attempts), 30)
    time.sleep(1)
    for part in (writer, reader, monitor):
        part.finish()
    end = ctx.now()
    result = analyse(_trial(cluster, scenario, description, run, ctx, writer, reader, monitor, config, fault,
                            rejoined_at, healthy, end))
    if result["rpo_rows"] or result["split_brain"]:
        result["evidence"] = evidence(cluster, writer, set(result["lost_ids"]), ctx.now() - fault)
    if keep_timeline:
        result["timeline"] = {
            "fault_at": fault,
            "writes": [(a.sent, a.acked, a.error) for a in writer.attempts],
            "connect_errors": writer.connect_errors,
            "reads": [(a.sent, a.acked, a.error) for a in reader.attempts],
        }
    return result


def evidence(cluster: LocalCluster, writer: Client, lost: set[int], window_s: float) -> str:
    """What a lost row or a split brain needs to be understood after the cluster is gone (CI):
    the lost rows' attempts and every member's Patroni and PostgreSQL log over the trial."""
    acked = sorted((a for a in writer.attempts if a.acked), key=lambda a: a.acked or 0.0)
    # The lost attempts, the late answers, and each point where the acknowledging server changed.
    shown = [a for i, a in enumerate(acked) if a.id in lost or a.late or i == 0 or a.server != acked[i - 1].server]
    shown += [a for a in writer.attempts if a.id in lost and not a.acked]
    lines = [f"attempt {a.id}: sent {a.sent:.3f} acked {a.acked} late {a.late} server {a.server} error {a.error}"
             f"{' LOST' if a.id in lost else ''}" for a in shown]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - window_s - 5))
    for node in cluster.nodes:
        if not node.machine.running():
            lines.append(f"== {node.member.name}: not running")
            continue
        journal = cluster.run_on(node, ["journalctl", "-q", "--no-pager", "-o", "short-precise", "--since", since,
                                      "-u", "pgha-patroni.service", "-u", "pgha-handover.service"], timeout=60)
        pg = cluster.run_on(node, ["sh", "-c", "tail -n 400 /var/log/pgha/postgresql/*.log 2>/dev/null | "
                                   "grep -v -e 'connection received' -e 'connection authorized' "
                                   "-e 'connection authenticated' -e 'disconnection:'"], timeout=60)
        # Timestamped lines only, without the tracebacks of health checks that hung up early.
        patroni = cluster.run_on(node, ["sh", "-c", "grep -h '^20' /var/log/pgha/patroni/patroni.log 2>/dev/null | "
                                        "grep -v -e Traceback -e 'Exception happened' -e 'no action' | tail -n 300"], timeout=60)
        lines += [f"== {node.member.name}: journal", journal.stdout[-20000:], f"== {node.member.name}: patroni.log",
                  patroni.stdout[-20000:], f"== {node.member.name}: postgresql", pg.stdout[-20000:]]
    return "\n".join(lines)


def _trial(cluster: LocalCluster, scenario: str, description: str, run: str, ctx: Context, writer: Client,
           reader: Client, monitor: Monitor, config: dict[str, Any], fault: float, rejoined_at: float | None,
           healthy: bool, end: float) -> Trial:
    """The drill's records plus what only the cluster can say afterwards: which acknowledged
    rows the new primary has, and whether every PgBouncer advertises its role."""
    new_primary = leader(cluster, running=True, error=DrillError)
    # RPO: every acknowledged id must be on the primary now.
    with psycopg.connect(cluster.dsn(new_primary.ip, PORTS["postgres"]), autocommit=True,
                         prepare_threshold=None) as conn:
        present = {r[0] for r in conn.execute(f"SELECT id FROM {TABLE} WHERE run = %s", (run,))}
    # A role change leaves PgBouncer's cached role stale until the node agent's RECONNECT (sent
    # once PostgreSQL's recovery state matches the new role): allow it that long, no longer.
    settle_began = time.monotonic()
    pgb = pgbouncer_roles(cluster)
    while any(e["stale"] for e in pgb.values()) and time.monotonic() - settle_began < 20:
        time.sleep(0.5)
        pgb = pgbouncer_roles(cluster)
    return Trial(
        scenario=scenario, description=description, config=config, fault=fault, end=end,
        writes=list(writer.attempts), reads=list(reader.attempts),
        write_connect_errors=len(writer.connect_errors), read_connect_errors=len(reader.connect_errors),
        pg=list(monitor.pg), checks=list(monitor.checks), views=list(monitor.views),
        old_primary=ctx.primary.member.name, new_primary=new_primary.member.name, present=present,
        failed=[n.member.name for n in ctx.failed], rejoined_at=rejoined_at, revived_at=ctx.revived_at,
        healthy=healthy, etcd_raft_leader=ctx.extra.get("etcd_raft_leader"), etcd_fault=scenario in ETCD_FAULTS,
        pgbouncer=pgb, pgbouncer_settle_s=round(time.monotonic() - settle_began, 2), notes=ctx.notes,
        extra=ctx.extra)


def _writer_haproxy(client: Client) -> str | None:
    """The HAProxy address the writer's live connection uses (its TCP peer)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"dport = :{PORTS['primary']}"],
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if f"pid={os.getpid()}," in line:
            return line.split()[3].rsplit(":", 1)[0]
    return None


def _rejoined(m: dict[str, Any], leader_timeline: int | None) -> bool:
    if m.get("role") == "leader":
        return m.get("state") == "running"
    return m.get("state") == "streaming" and m.get("timeline") == leader_timeline
