"""Failover drills on the local cluster: inject a fault under load, measure what a client saw.

A drill runs a writer and a reader the way an application would (one multi-host DSN over every
node's HAProxy, retrying on errors; psycopg with ``prepare_threshold=None``, the workload every
figure in docs/failover.md was measured with), plus a monitor that samples every member
directly. It injects one fault, waits for the cluster to recover (booting a killed machine again
as EC2 restarts an instance; systemd restarts what dies inside), and reports:

* ``rto_s``: fault -> first acknowledged write *sent after* the fault (a reply already in
  flight when the fault hit does not count, field note 15);
* ``max_write_gap_s``: the longest stretch without an acknowledged write around the fault
  (the "write pause" of a switchover or a replica loss);
* ``rpo_rows``: acknowledged rows missing afterwards, read back on the (new) primary;
* ``read_errors``/``write_errors``;
* ``split_brain``: two members acknowledged writes over overlapping time, or two members
  were writable (not in recovery) at the same sampled moment while both answered Patroni's
  ``/primary`` check (i.e. both could be routed writes); ``dual_writable_s`` reports how long
  two members were merely "not in recovery" at once (e.g. a frozen ex-primary thawing, which
  cannot acknowledge anything in strict synchronous mode and is demoted by Patroni);
* ``rejoin_s``: revival (or the fault, when nothing had to be revived) -> the failed member
  streaming from the primary again on its own;
* ``stale_pgbouncer``: a PgBouncer that still advertises a role its PostgreSQL no longer has.
"""


import contextlib
import json
import os
import signal
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import psycopg

from ..render import USERS
from ..spec import PORTS
from . import netns
from .cluster import LocalCluster, Node, _children

WRITE_INTERVAL = 0.02  # seconds between a writer's commits: ~40-50/s, 20-25 ms RTO resolution
READ_INTERVAL = 0.05
CLIENT_TIMEOUT = 5.0  # an application gives up on a statement that has not answered in this time
SAMPLE_INTERVAL = 0.25
TABLE = "pgha_drill"


class DrillError(RuntimeError):
    """The drill could not run or the cluster did not recover."""


# ---------------------------------------------------------------------------- the client side


@dataclass
class Attempt:
    id: int
    sent: float
    acked: float | None = None
    error: str | None = None
    errored: float | None = None
    server: str | None = None
    late: bool = False  # answered after the client had given up on it


class Client:
    """An application session loop: connect through a multi-host DSN, run one statement over
    and over, reconnect on any error. Each connection runs in its own thread, so a statement
    stuck on a frozen node can be abandoned after CLIENT_TIMEOUT like an application would."""

    def __init__(self, name: str, dsn: str, statement: str, interval: float, numbered: bool, epoch: float):
        self.name, self.dsn, self.statement, self.interval = name, dsn, statement, interval
        self.numbered = numbered
        self.epoch = epoch
        self.attempts: list[Attempt] = []
        self.connect_errors: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._next_id = 0
        self._session: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name=f"drill-{name}", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(CLIENT_TIMEOUT + 5)

    def _new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def _run(self) -> None:
        while not self.stop.is_set():
            state: dict[str, Any] = {"busy_since": None, "dead": False, "abandoned": False}
            worker = threading.Thread(target=self._session_loop, args=(state,), daemon=True)
            worker.start()
            while worker.is_alive() and not self.stop.is_set():
                busy = state["busy_since"]
                if busy is not None and self.now() - busy > CLIENT_TIMEOUT:
                    state["abandoned"] = True  # give up on this connection; its thread may linger
                    attempt = state.get("attempt")
                    if attempt is not None and attempt.acked is None and attempt.error is None:
                        attempt.error, attempt.errored = "client timeout", self.now()
                    break
                time.sleep(0.05)
            if self.stop.is_set():
                state["abandoned"] = True
                break

    def _session_loop(self, state: dict[str, Any]) -> None:
        conn = None
        try:
            # Connecting is bounded by libpq's connect_timeout per host (the multi-host DSN).
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)
            except Exception as exc:  # noqa: BLE001 - every failure is a client-visible error
                if not state["abandoned"]:
                    self.connect_errors.append((self.now(), _short(exc)))
                state["busy_since"] = None
                time.sleep(0.2)
                return
            state["busy_since"] = None
            while not state["abandoned"] and not self.stop.is_set():
                attempt = Attempt(self._new_id() if self.numbered else 0, self.now())
                with self.lock:
                    self.attempts.append(attempt)
                state["attempt"] = attempt
                state["busy_since"] = attempt.sent
                try:
                    params = (attempt.id,) if self.numbered else None
                    row = conn.execute(self.statement, params).fetchone()
                    if attempt.error is None:
                        attempt.acked = self.now()
                    else:  # the client had already given up: a late answer
                        attempt.acked, attempt.late = self.now(), True
                    attempt.server = str(row[0]) if row else None
                except Exception as exc:  # noqa: BLE001
                    if attempt.error is None:
                        attempt.error, attempt.errored = _short(exc), self.now()
                    state["busy_since"] = None
                    time.sleep(0.1)
                    return
                state["busy_since"] = None
                time.sleep(self.interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


class Monitor:
    """Samples every member's PostgreSQL (pg_is_in_recovery() on its own 5432), its Patroni
    /primary check, and Patroni's /cluster, each in its own thread so a frozen member stalls
    only its own sampler."""

    def __init__(self, cluster: LocalCluster, epoch: float):
        self.cluster = cluster
        self.epoch = epoch
        self.stop = threading.Event()
        # (time, member, writable) / (time, member, primary_check_ok) / (time, {member: (role, state)})
        self.pg: list[tuple[float, str, bool]] = []
        self.checks: list[tuple[float, str, bool]] = []
        self.views: list[tuple[float, dict[str, tuple[str, str]]]] = []
        self.threads = [threading.Thread(target=self._pg, args=(n,), daemon=True) for n in cluster.nodes]
        self.threads += [threading.Thread(target=self._check, args=(n,), daemon=True) for n in cluster.nodes]
        self.threads.append(threading.Thread(target=self._views, daemon=True))

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()

    def _pg(self, node: Node) -> None:
        dsn = self.cluster.dsn(node.ip, PORTS["postgres"]) + " connect_timeout=1"
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
                recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                self.pg.append((self.now(), node.member.name, not recovery))
            except Exception:  # noqa: BLE001 - down is a sample too (not writable)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self.stop.wait(SAMPLE_INTERVAL)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _check(self, node: Node) -> None:
        url = f"http://{node.ip}:{PORTS['patroni']}/primary"
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    ok = reply.status == 200
            except urllib.error.HTTPError:
                ok = False
            except OSError:
                ok = False
            self.checks.append((self.now(), node.member.name, ok))
            self.stop.wait(SAMPLE_INTERVAL)

    def _views(self) -> None:
        order = list(self.cluster.nodes)
        while not self.stop.is_set():
            for node in order:
                try:
                    view = self.cluster.patroni(node, timeout=1)
                except (OSError, ValueError):
                    continue
                self.views.append((self.now(), {m["name"]: (m.get("role", ""), m.get("state", ""))
                                                for m in view.get("members", [])}))
                order.remove(node)
                order.insert(0, node)
                break
            self.stop.wait(0.5)


# ---------------------------------------------------------------------------- cluster helpers


def leader(cluster: LocalCluster) -> Node:
    view = cluster.cluster_view() or {}
    for m in view.get("members", []):
        if m.get("role") == "leader" and m.get("state") == "running":
            return node_named(cluster, m["name"])
    raise DrillError("no running leader")


def node_named(cluster: LocalCluster, name: str) -> Node:
    return next(n for n in cluster.nodes if n.member.name == name)


def members(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in (cluster.cluster_view() or {}).get("members", [])}


def sync_standby(cluster: LocalCluster) -> Node | None:
    for name, m in members(cluster).items():
        if m.get("role") in ("sync_standby", "quorum_standby"):
            return node_named(cluster, name)
    return None


def node_pids(node: Node) -> list[int]:
    """Every process of the node's machine (its PID 1 and all below it), as the host knows them."""
    return node.machine.pids()


def signal_node(node: Node, sig: int, ctx: "Context | None" = None) -> list[int]:
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


def patroni_request(cluster: LocalCluster, node: Node, method: str, path: str, body: Any = None,
                    timeout: float = 30) -> tuple[int, str]:
    """An authenticated call to Patroni's REST API (unsafe endpoints need the REST user)."""
    password = json.loads(cluster.secrets_file.read_text())["patroni_rest_password"]
    from ..agent.patroni_api import PatroniClient  # the agent's one REST client

    client = PatroniClient(node.ip, PORTS["patroni"], auth=(USERS["patroni_rest"], password))
    status, raw = client.request(method, path, body, timeout=timeout)
    return status, raw.decode()


def dynamic_config(cluster: LocalCluster) -> dict[str, Any]:
    for node in cluster.nodes:
        with contextlib.suppress(OSError, ValueError):
            return cluster.patroni(node, "/config")
    raise DrillError("no Patroni answers /config")


def patch_config(cluster: LocalCluster, changes: dict[str, Any]) -> dict[str, Any]:
    """PATCH Patroni's dynamic configuration (DCS) through the leader's REST API."""
    status, text = patroni_request(cluster, leader(cluster), "PATCH", "/config", changes)
    if status != 200:
        raise DrillError(f"PATCH /config failed: {status} {text}")
    return json.loads(text)


def etcdctl(cluster: LocalCluster, *args: str, endpoints: list[Node] | None = None) -> subprocess.CompletedProcess:
    return cluster.etcdctl(*args, endpoints=endpoints)


def etcd_member_ids(cluster: LocalCluster) -> tuple[dict[str, int], int | None]:
    """Every answering etcd member's ID by member name, and the raft leader's ID (None: no leader)."""
    out = etcdctl(cluster, "endpoint", "status", "-w", "json")
    ids, leader = {}, None
    for s in json.loads(out.stdout or "[]"):
        ip = s["Endpoint"].split("//", 1)[1].rsplit(":", 1)[0]
        ids[next(n.member.name for n in cluster.nodes if n.ip == ip)] = s["Status"]["header"]["member_id"]
        if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
            leader = s["Status"]["leader"]
    return ids, leader


def etcd_leader_node(cluster: LocalCluster) -> Node:
    """Ask etcd which member is the raft leader."""
    ids, leader = etcd_member_ids(cluster)
    name = next((name for name, member_id in ids.items() if member_id == leader), None)
    if name is None:
        raise DrillError(f"etcd has no leader (members answering: {sorted(ids)})")
    return next(n for n in cluster.nodes if n.member.name == name)


def pgbouncer_roles(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    """What each PgBouncer advertises (in_hot_standby) against what its PostgreSQL is."""
    found = {}
    for node in cluster.nodes:
        entry: dict[str, Any] = {}
        try:
            with psycopg.connect(cluster.dsn(node.ip, PORTS["pgbouncer"]) + " connect_timeout=3",
                                 autocommit=True, prepare_threshold=None) as conn:
                entry["advertised_standby"] = conn.info.parameter_status("in_hot_standby") == "on"
                entry["in_recovery"] = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except Exception as exc:  # noqa: BLE001
            entry["error"] = _short(exc)
        entry["stale"] = "error" not in entry and entry["advertised_standby"] != entry["in_recovery"]
        found[node.member.name] = entry
    return found


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Context:
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


def _wait(pred: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(step)
    return False


def _new_leader_elected(ctx: Context, timeout: float) -> bool:
    def other_leader() -> bool:
        return any(m.get("role") == "leader" and m.get("state") == "running" and m["name"] != ctx.primary.member.name
                   for m in members(ctx.cluster).values())
    return _wait(other_leader, timeout)


def _wait_past_ttl(ctx: Context, fault_at: float) -> None:
    """Field note 12: a killed leader revived within ttl takes its lock back; wait past it."""
    ttl = ctx.ttl
    _new_leader_elected(ctx, ttl * 3)
    remaining = fault_at + ttl + 2 - ctx.now()
    if remaining > 0:
        time.sleep(remaining)


def s_primary_node(ctx: Context) -> None:
    signal_node(ctx.primary, signal.SIGKILL, ctx)
    ctx.failed = [ctx.primary]
    _wait_past_ttl(ctx, ctx.extra["fault_at"])
    ctx.revive()


def s_postgres_crash(ctx: Context) -> None:
    postmaster = ctx.cluster.postmaster_pid(ctx.primary)
    if postmaster is None:
        raise DrillError("PostgreSQL is not running on the primary")
    targets = [postmaster, *_children(postmaster)]
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
        _wait_past_ttl(ctx, fault)
        _wait(lambda: ctx.writer is not None and any(a.acked and a.sent > fault for a in ctx.writer.attempts), 30)
        time.sleep(3)
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
        _wait_past_ttl(ctx, fault)
        _wait(lambda: ctx.writer is not None and any(a.acked and a.sent > fault for a in ctx.writer.attempts), 30)
        time.sleep(3)
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


# Scenarios whose fault reaches the failed node's etcd member (killed, frozen or cut off).
ETCD_FAULTS = frozenset({"primary-node", "primary-hang", "replica-node", "etcd-member", "partition"})

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
    "replicas": (s_replicas, "both replica databases die and stay down 15 s; writes stop (rpo 0, strict) or "
                 "continue (rpo > 0)"),
}


# ---------------------------------------------------------------------------- the drill


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
    _wait(lambda: not any(e["stale"] for e in pgbouncer_roles(cluster).values()), 15)
    ensure_table(cluster)
    config = dynamic_config(cluster)
    run = f"{scenario}-{int(time.time() * 1000)}"
    epoch = time.monotonic()
    writer = Client("writer", writer_dsn(cluster), f"INSERT INTO {TABLE} (run, id) VALUES ('{run}', %s) "
                    "RETURNING host(inet_server_addr())", WRITE_INTERVAL, True, epoch)
    reader = Client("reader", reader_dsn(cluster), "SELECT host(inet_server_addr())", READ_INTERVAL, False, epoch)
    monitor = Monitor(cluster, epoch)
    ctx = Context(cluster, epoch, log, primary=leader(cluster), writer=writer)
    for part in (monitor, writer, reader):
        part.start()
    if not _wait(lambda: sum(1 for a in writer.attempts if a.acked) >= 10, 30):
        raise DrillError("the writer got no acknowledgement before the fault")
    time.sleep(settle)
    ctx.extra["writer_host"] = _writer_haproxy(writer)
    # Losing etcd's raft leader with the primary restarts the leader key's ttl after the election.
    ctx.extra["etcd_raft_leader"] = _quiet_value(lambda: etcd_leader_node(cluster).member.name)
    log(f"{scenario}: {description} (primary {ctx.primary.member.name})")
    try:
        inject(ctx)
    except Exception:
        for part in (writer, reader, monitor):
            part.finish()
        raise
    fault = ctx.extra["fault_at"]
    # Recovery: a write acknowledged after the fault, the failed members streaming again, all healthy.
    _wait(lambda: any(a.acked and a.sent >= fault and not a.late for a in writer.attempts), recover_timeout)
    rejoined_at = None
    deadline = time.monotonic() + recover_timeout
    while time.monotonic() < deadline:
        check = ctx.extra.get("rejoin_check")
        view = members(cluster)
        if check is not None:
            ok = _quiet(check)
        else:
            lead_tl = next((m.get("timeline") for m in view.values() if m.get("role") == "leader"), None)
            ok = bool(ctx.failed) and all(_rejoined(view.get(n.member.name, {}), lead_tl) for n in ctx.failed)
        if ok:
            rejoined_at = ctx.now()
            break
        time.sleep(0.25)
    healthy = _wait(lambda: not cluster.health_problems(), recover_timeout)
    recovered = ctx.now()
    # The same DSN must carry writes once the cluster is healthy again (HAProxy may lag a check).
    _wait(lambda: any(a.acked and a.sent > recovered for a in writer.attempts), 30)
    time.sleep(1)
    for part in (writer, reader, monitor):
        part.finish()
    end = ctx.now()
    result = _analyse(cluster, scenario, description, run, ctx, writer, reader, monitor, config, fault,
                      rejoined_at, healthy, end)
    if keep_timeline:
        result["timeline"] = {
            "fault_at": fault,
            "writes": [(a.sent, a.acked, a.error) for a in writer.attempts],
            "connect_errors": writer.connect_errors,
            "reads": [(a.sent, a.acked, a.error) for a in reader.attempts],
        }
    return result


def _writer_haproxy(client: Client) -> str | None:
    """The HAProxy address the writer's live connection uses (its TCP peer)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"dport = :{PORTS['primary']}"],
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if f"pid={os.getpid()}," in line:
            return line.split()[3].rsplit(":", 1)[0]
    return None


def _quiet_value(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:  # noqa: BLE001
        return None


def _quiet(check: Callable[[], bool]) -> bool:
    return bool(_quiet_value(check))


def _rejoined(m: dict[str, Any], leader_timeline: int | None) -> bool:
    if m.get("role") == "leader":
        return m.get("state") == "running"
    return m.get("state") == "streaming" and m.get("timeline") == leader_timeline


def _analyse(cluster: LocalCluster, scenario: str, description: str, run: str, ctx: Context, writer: Client,
             reader: Client, monitor: Monitor, config: dict[str, Any], fault: float, rejoined_at: float | None,
             healthy: bool, end: float) -> dict[str, Any]:
    attempts = list(writer.attempts)
    acked = [a for a in attempts if a.acked is not None]
    after = [a for a in acked if a.sent >= fault and not a.late]
    first_after = min((a.acked for a in after), default=None)
    rto = None if first_after is None else first_after - fault
    # The longest stretch without an acknowledgement that ends after the fault.
    points = sorted(a.acked for a in acked if not a.late) + [end]
    max_gap = max((b - a for a, b in zip(points, points[1:]) if b >= fault), default=None)
    # RPO: every acknowledged id must be on the primary now.
    new_primary = leader(cluster)
    with psycopg.connect(cluster.dsn(new_primary.ip, PORTS["postgres"]), autocommit=True,
                         prepare_threshold=None) as conn:
        present = {r[0] for r in conn.execute(f"SELECT id FROM {TABLE} WHERE run = %s", (run,))}
    lost = sorted(a.id for a in acked if a.id not in present)
    servers_after = {a.server for a in acked if a.acked and a.acked >= fault}
    split, dual = _split_brain(monitor, attempts)
    old_name = ctx.primary.member.name
    elected = next((t for t, view in sorted(monitor.views) if t >= fault and any(
        role == "leader" and state == "running" and name != old_name for name, (role, state) in view.items())), None)
    routable = next((t for t, name, ok in sorted(monitor.checks) if t >= fault and ok and name != old_name), None)
    # A role change leaves PgBouncer's cached role stale until the node agent's RECONNECT (sent
    # once PostgreSQL's recovery state matches the new role): allow it that long, no longer.
    settle_began = time.monotonic()
    pgb = pgbouncer_roles(cluster)
    while any(e["stale"] for e in pgb.values()) and time.monotonic() - settle_began < 20:
        time.sleep(0.5)
        pgb = pgbouncer_roles(cluster)
    failed_ref = ctx.revived_at if ctx.revived_at is not None else fault
    result = {
        "scenario": scenario,
        "description": description,
        "config": {k: config.get(k) for k in ("ttl", "loop_wait", "retry_timeout", "synchronous_mode",
                                              "synchronous_mode_strict")},
        "old_primary": ctx.primary.member.name,
        "new_primary": new_primary.member.name,
        "failed": [n.member.name for n in ctx.failed],
        "etcd_raft_leader": ctx.extra.get("etcd_raft_leader"),
        "raft_leader_failed": scenario in ETCD_FAULTS and ctx.extra.get("etcd_raft_leader") in {
            n.member.name for n in ctx.failed},
        "rto_s": None if rto is None else round(rto, 2),
        "max_write_gap_s": None if max_gap is None else round(max_gap, 2),
        "new_leader_seen_s": None if elected is None else round(elected - fault, 2),
        "new_primary_check_ok_s": None if routable is None else round(routable - fault, 2),
        "writes_acked": len(acked),
        "writes_acked_late": sum(1 for a in acked if a.late),
        "write_errors": sum(1 for a in attempts if a.error and not a.acked) + len(writer.connect_errors),
        "rpo_rows": len(lost),
        "lost_ids": lost[:20],
        "reads_ok": sum(1 for a in reader.attempts if a.acked),
        "read_errors": sum(1 for a in reader.attempts if a.error and not a.acked) + len(reader.connect_errors),
        "split_brain": split,
        "dual_writable_s": round(dual, 2),
        "rejoin_s": None if rejoined_at is None else round(max(0.0, rejoined_at - failed_ref), 2),
        "rejoined": rejoined_at is not None,
        "healthy_after": healthy,
        "same_dsn_after": any(a.acked and a.sent > max(rejoined_at or fault, fault) for a in attempts),
        "stale_pgbouncer": sorted(n for n, e in pgb.items() if e["stale"]),
        "pgbouncer_settle_s": round(time.monotonic() - settle_began, 2),
        "servers_after_fault": sorted(s for s in servers_after if s),
        "notes": ctx.notes,
        "error_samples": sorted({a.error for a in attempts if a.error})[:5],
    }
    if scenario == "partition":
        # When the cut-off primary stopped being writable (down counts), from the monitor's samples.
        result["isolated_read_only_s"] = next((round(t - fault, 2) for t, name, writable in sorted(monitor.pg)
                                               if name == old_name and t >= fault and not writable), None)
    for key in ("writes_during_outage", "acks_during_outage", "synchronous_mode_strict", "revived_units"):
        if key in ctx.extra:
            result[key] = ctx.extra[key]
    return result


def _split_brain(monitor: Monitor, attempts: list[Attempt]) -> tuple[bool, float]:
    """(split brain, seconds two members were not in recovery at once).

    Split brain: acknowledged writes from two servers interleave in time, or at some sampled
    moment two members were writable and both passed Patroni's /primary check (so HAProxy
    could route writes to both)."""
    # 1. Interleaved acknowledgements: once server B acknowledged, A must never again.
    seq = [a.server for a in sorted((a for a in attempts if a.acked and a.server), key=lambda a: a.acked)]
    changes = [s for i, s in enumerate(seq) if i == 0 or s != seq[i - 1]]
    interleaved = len(changes) != len(set(changes))
    # 2. Sampled: per member, writable-from-samples as intervals [t, next sample).
    def intervals(samples: list[tuple[float, str, bool]]) -> dict[str, list[tuple[float, float]]]:
        by: dict[str, list[tuple[float, bool]]] = {}
        for t, name, ok in sorted(samples):
            by.setdefault(name, []).append((t, ok))
        spans: dict[str, list[tuple[float, float]]] = {}
        for name, pts in by.items():
            for (t, ok), (t2, _) in zip(pts, pts[1:] + [(pts[-1][0] + SAMPLE_INTERVAL, False)]):
                if ok:
                    spans.setdefault(name, []).append((t, min(t2, t + 2 * SAMPLE_INTERVAL + 0.5)))
        return spans

    def overlap(a: dict[str, list[tuple[float, float]]]) -> list[tuple[float, float]]:
        names = sorted(a)
        out = []
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                for s1, e1 in a[x]:
                    for s2, e2 in a[y]:
                        lo, hi = max(s1, s2), min(e1, e2)
                        if hi > lo:
                            out.append((lo, hi))
        return out

    writable = intervals(monitor.pg)
    dual_spans = overlap(writable)
    dual = sum(e - s for s, e in dual_spans)
    routable = intervals(monitor.checks)
    both = {}
    for name in writable:
        spans = []
        for s1, e1 in writable[name]:
            for s2, e2 in routable.get(name, []):
                lo, hi = max(s1, s2), min(e1, e2)
                if hi > lo:
                    spans.append((lo, hi))
        if spans:
            both[name] = spans
    sampled = any(e - s > 0 for s, e in overlap(both))
    return interleaved or sampled, dual


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


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
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


def as_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))


__all__ = ["SCENARIOS", "DrillError", "run_drill", "summary_line", "aggregate", "patch_config", "dynamic_config",
           "start_missing", "leader", "_children"]
