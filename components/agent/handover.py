"""`handover`: a primary being stopped first hands leadership to a healthy standby.

pgha-handover.service runs it as its ExecStop: the unit starts after Patroni, PgBouncer, HAProxy,
etcd, the system bus and the network, so at shutdown (EC2's stop or terminate, the rehearsal's
poweroff) systemd stops it before them, while the cluster can still hand over. Without it the
units just stop in order: HAProxy and PgBouncer cut their clients, in the middle of a
transaction or not, then Patroni stops PostgreSQL and releases the leader key.

PgBouncer is paused first, so no transaction is cut in half: running ones finish, new ones wait
and, once the new primary takes writes, are let go (SHUTDOWN when the machine is going down:
their clients reconnect through HAProxy to the new primary and retry; nothing they sent ran
here, so a retry is safe).

A CHECKPOINT runs first, while clients still write: what the stop's own checkpoint has left
to write is part of the pause.

How leadership moves:
- the machine is going down: PostgreSQL is fast-stopped under a frozen Patroni, then Patroni is
  sent SIGTERM (stop_patroni: its own stop would spend 2 s polling and sleeping before it lets
  the key go). Its shutdown releases the leader key with the shutdown checkpoint's location,
  and the synchronous standby (in synchronous mode only it may) wins the race. No failover key is set, so the other replicas follow the new leader at once;
  after a switchover, a replica whose loop sees the leaderless moment sleeps 2 s first
  (Patroni's process_unhealthy_cluster), and the new primary's commits wait for it;
- only this unit is stopped: a switchover to the synchronous standby (the node stays up).
Either way the pooler lets clients go only once the new primary's PostgreSQL is out of recovery
(its /primary body's role), not when it holds the key (1.0-1.2 s earlier).

What it costs (bench/replace.py, README "What a change does to a running stack"): replacing the
primary paused a writer through 5433 3.4-3.8 s with one error per pooled session (2026-12-01);
4.1-5.2 s when Patroni stopped PostgreSQL itself, 5.7-6.0 s with a switchover instead.

A stop must never hang or fail because of this: when this member is not the leader, or no
member can take over, it says why and exits 0 at once, and the whole handover is bounded by
``--timeout`` (below the unit's TimeoutStopSec)."""

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Mapping

from ..contract import NodeFacts
from .cli_types import Subparsers
from .errors import LOG, AgentError
from .hooks import admin_query, local_postgres_dsn, pause_pgbouncer, pgbouncer_admin_conninfo, resume_pgbouncer
from .patroni_api import PRIMARY_ROLES, PatroniClient, local_client, member_client, patroni_get, rest_credentials

# The whole handover, PAUSE to RESUME; pgha-handover.service's TimeoutStopSec (45 s) is above it.
# A switchover takes ~3 s; when every member stops at once (pgha local down) no candidate ever
# takes over, and the whole stop waits this long (CI, 2026-12-01: down took 36 s with 30).
HANDOVER_TIMEOUT = 15.0
# In <paths.run>: every member is being stopped at once (no one could take over): skip it.
NO_HANDOVER_FLAG = "no-handover"
# In <paths.run>: hand over without pausing PgBouncer (what the pause saves a client is measured
# against this: bench/replace.py --no-pooler-pause).
NO_POOLER_PAUSE_FLAG = "no-pooler-pause"
# How long the CHECKPOINT before PAUSE may run (clients still write meanwhile).
CHECKPOINT_TIMEOUT = 5.0
# How much of it PAUSE may take to drain running transactions. A transaction still running then
# is cut by the demotion, as a plain stop would cut it: a long one must not cost the handover.
PAUSE_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
# Patroni's default when the DCS has no maximum_lag_on_failover.
DEFAULT_MAXIMUM_LAG = 1048576
SYNC_ROLES = ("sync_standby", "quorum_standby")
PATRONI_UNIT = "pgha-patroni.service"
# How long Patroni stays frozen while PostgreSQL stops (stop_patroni): far below any ttl, and a
# shutdown checkpoint longer than this is finished under Patroni's own stop.
POSTGRES_STOP_BOUND = 5.0
STOP_POLL = 0.02


def _synchronous_mode(config: Mapping[str, Any]) -> str:
    """'off', 'on' or 'quorum', from the DCS's synchronous_mode (a bool or a string)."""
    value = config.get("synchronous_mode", False)
    text = str(value).strip().lower()
    if text == "quorum":
        return "quorum"
    return "on" if value is True or text in ("on", "true", "yes", "1") else "off"


def _lag(member: Mapping[str, Any]) -> int | None:
    lag = member.get("lag")
    return lag if isinstance(lag, int) and not isinstance(lag, bool) else None


def handover_candidate(me: str, cluster: Mapping[str, Any], config: Mapping[str, Any], *,
                       restarted_only: bool = False) -> tuple[str | None, str]:
    """Pure: (the member to hand leadership to, why) from Patroni's /cluster and /config; the
    member is None when there is no handover to do, and the reason says why not.

    Only the running leader hands over, and not in maintenance mode or with a switchover already
    scheduled. With synchronous mode on, the candidate is a synchronous standby (Patroni refuses
    any other); off, a streaming replica within maximum_lag_on_failover. Either way it streams
    on the leader's timeline and may be promoted (no nofailover tag, failover_priority not 0);
    among several, the least lag wins, then the name. ``restarted_only`` (the leader about to
    restart for its parameters) refuses a member that still needs a restart itself."""
    members = cluster.get("members") or []
    leader = next((m for m in members if m.get("role") == "leader"), None)
    if leader is None:
        return None, "the cluster has no leader"
    if leader.get("name") != me:
        return None, f"this member is not the leader ({leader.get('name')} is)"
    if leader.get("state") != "running":
        return None, f"this member leads but its PostgreSQL is {leader.get('state') or 'in an unknown state'}"
    if cluster.get("pause"):
        return None, "the cluster is in maintenance mode (paused)"
    if cluster.get("scheduled_switchover"):
        return None, "a switchover is already scheduled"
    mode = _synchronous_mode(config)
    bound = config.get("maximum_lag_on_failover", DEFAULT_MAXIMUM_LAG)
    bound = bound if isinstance(bound, int) and not isinstance(bound, bool) else DEFAULT_MAXIMUM_LAG
    eligible: list[tuple[int, str]] = []
    refused: list[str] = []
    for m in members:
        name = m.get("name")
        if name == me:
            continue
        role, state, tags, lag = m.get("role"), m.get("state"), m.get("tags") or {}, _lag(m)
        if mode != "off" and role not in SYNC_ROLES:
            why = f"not a synchronous standby ({role})"
        elif state != "streaming":
            why = f"{state or 'in an unknown state'}, not streaming"
        elif tags.get("nofailover") is True or tags.get("failover_priority") == 0:
            why = "may not be promoted (tags)"
        elif restarted_only and m.get("pending_restart"):
            why = "needs a restart itself"
        elif leader.get("timeline") is not None and m.get("timeline") != leader.get("timeline"):
            why = f"on timeline {m.get('timeline')}, the leader on {leader.get('timeline')}"
        elif lag is None:
            why = "lag unknown"
        elif lag > bound:
            why = f"lag {lag} B above maximum_lag_on_failover {bound} B"
        else:
            eligible.append((lag, str(name)))
            continue
        refused.append(f"{name}: {why}")
    if not eligible:
        return None, "no member can take over: " + ("; ".join(refused) or "no other member")
    lag, name = min(eligible)
    kind = "synchronous standby" if mode != "off" else "streaming replica with the least lag"
    return name, f"{kind}, lag {lag} B"


def checkpoint(dsn: str, timeout: float = CHECKPOINT_TIMEOUT) -> float | None:
    """CHECKPOINT while clients still run: the stop's own checkpoint (a switchover's, or the
    shutdown checkpoint) then has little left to write, and it is part of the write pause. The
    seconds it took, or None when it failed or ran past ``timeout`` (the stop goes on)."""
    import psycopg

    began = time.monotonic()
    try:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            conn.execute("CHECKPOINT")
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        LOG.warning("CHECKPOINT before the handover failed: %s", str(exc).strip())
        return None
    return time.monotonic() - began


def shutdown_pgbouncer(dsn: str) -> None:
    """SHUTDOWN: PgBouncer closes every client and exits (its unit stops with the node)."""
    try:
        admin_query(dsn, "SHUTDOWN")
    except Exception as exc:  # noqa: BLE001 - the connection ends with PgBouncer: expected
        LOG.debug("PgBouncer SHUTDOWN: %s", str(exc).strip())


def system_stopping(run: Any = subprocess.run) -> bool:
    """systemd is shutting the machine down (EC2's stop or terminate, a poweroff), as opposed to
    this unit alone being stopped."""
    try:
        state = run(["systemctl", "is-system-running"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return state == "stopping"


def takes_writes(client: PatroniClient, timeout: float = 1.0) -> bool:
    """The member behind ``client`` holds the leader key and its PostgreSQL is out of recovery.
    Patroni's /primary answers 200 as soon as the member holds the key, before its promotion
    ends (seen 2026-12-01: 1.0-1.2 s earlier); the body's role comes from pg_is_in_recovery()."""
    try:
        status, raw = client.request("GET", "/primary", timeout=timeout)
        return status == 200 and json.loads(raw or b"{}").get("role") in PRIMARY_ROLES
    except (OSError, ValueError):
        return False


def _dcs_names_leader(node: NodeFacts, candidate: str) -> bool:
    """This node's Patroni names ``candidate`` the running leader (the DCS's word, for a
    candidate whose own API this agent cannot ask)."""
    cluster = patroni_get(node, "/cluster", timeout=2.0)
    member = next((m for m in cluster.get("members") or [] if m.get("name") == candidate), None)
    return member is not None and member.get("role") == "leader" and member.get("state") == "running"


def switch_over(node: NodeFacts, candidate: str, deadline: float, candidate_api: PatroniClient | None) -> str | None:
    """POST /switchover to this (leading) member's Patroni and wait until ``candidate`` leads and
    takes writes, at most until ``deadline``. None when it does, else why not."""
    client = local_client(node, auth=rest_credentials(node))
    began = time.monotonic()
    answer: dict[str, tuple[int, str]] = {}

    def post() -> None:
        try:
            status, raw = client.request("POST", "/switchover", {"leader": node["member"], "candidate": candidate},
                                         timeout=max(1.0, deadline - time.monotonic()))
            answer["reply"] = (status, raw.decode(errors="replace").strip()[:200])
        except OSError as exc:
            answer["reply"] = (0, f"no answer: {exc}")

    # Patroni answers once it sees the new leader, polling in whole seconds: ask the candidate
    # itself meanwhile (not this demoting member's Patroni, slow to answer while it stops its
    # PostgreSQL), so that the pooler lets its clients go as soon as the candidate takes writes.
    poster = threading.Thread(target=post, name="switchover", daemon=True)
    poster.start()
    while time.monotonic() < deadline:
        status, reply = answer.get("reply", (200, ""))
        if status not in (0, 200):
            return f"Patroni refused: POST /switchover: {status} {reply} ({time.monotonic() - began:.1f} s)"
        try:
            done = takes_writes(candidate_api) if candidate_api is not None else _dcs_names_leader(node, candidate)
        except AgentError as exc:
            LOG.debug("waiting for %s: %s", candidate, exc)
            done = False
        if done:
            LOG.info("%s takes writes %.2f s after the switchover request (Patroni: %s)", candidate,
                     time.monotonic() - began, " ".join(map(str, answer["reply"])) if answer else "no answer yet")
            return None
        time.sleep(POLL_INTERVAL)
    return f"{candidate} did not take writes within the handover's bound"


def _postmaster_pid(pgdata: str) -> int | None:
    """The postmaster's pid from its postmaster.pid, None when there is none."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as f:
            pid = int(f.readline().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def process_running(pid: int) -> bool:
    """``pid`` runs (a zombie does not: the postmaster's parent, frozen Patroni, reaps it later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_patroni(pgdata: str, run: Any = subprocess.run, kill: Callable[[int, int], None] = os.kill,
                 running: Callable[[int], bool] = process_running, bound: float = POSTGRES_STOP_BOUND) -> str | None:
    """Stop PostgreSQL under a frozen Patroni, then SIGTERM Patroni; None when Patroni was told.

    Patroni's own shutdown of a leader polls pg_control once a second until it reads "shut
    down", then sleeps 1 s more before it releases the key (ha.py _on_shutdown): about 2 s of
    the write pause (2026-12-01 trace: PostgreSQL down 0.25 s after the signal, the key
    released 2.0 s later). Told to stop when PostgreSQL is already down, it releases the key at
    once, with the shutdown checkpoint's location. So Patroni is frozen (SIGSTOP: its loop must
    not start PostgreSQL again meanwhile), PostgreSQL is fast-stopped (its walsenders send the
    standbys everything up to the shutdown checkpoint before it exits), and Patroni gets SIGTERM
    and SIGCONT. A PostgreSQL still stopping after ``bound`` is left to Patroni's own stop. If
    this process dies while Patroni is frozen, systemd's stop of Patroni sends SIGCONT with its
    SIGTERM.

    Signals are sent directly, as the user both run as: `systemctl kill` needs privileges this
    unit does not have, and a `systemctl stop` would wait on this very shutdown, whose stop of
    Patroni is ordered after this unit's."""
    try:
        shown = run(["systemctl", "show", "--property=MainPID", "--value", PATRONI_UNIT],
                    capture_output=True, text=True, timeout=5)
        pid = int((shown.stdout or "0").strip() or 0)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return f"cannot find {PATRONI_UNIT}'s process: {exc}"
    if pid <= 0:
        return f"{PATRONI_UNIT} has no running process"
    postmaster = _postmaster_pid(pgdata)
    frozen = False
    if postmaster is not None:
        try:
            kill(pid, signal.SIGSTOP)
            frozen = True
        except OSError as exc:
            LOG.warning("cannot freeze Patroni (%s): it stops PostgreSQL itself", exc.strerror)
    try:
        if frozen and postmaster is not None:
            began = time.monotonic()
            try:
                kill(postmaster, signal.SIGINT)  # PostgreSQL's fast shutdown
            except OSError as exc:
                LOG.warning("cannot signal the postmaster %d (%s): Patroni stops it", postmaster, exc.strerror)
            else:
                while (still := running(postmaster)) and time.monotonic() - began < bound:
                    time.sleep(STOP_POLL)
                if still:
                    LOG.warning("PostgreSQL still stopping after %.0f s: Patroni finishes its stop", bound)
                else:
                    LOG.info("PostgreSQL stopped in %.2f s under a frozen Patroni", time.monotonic() - began)
        kill(pid, signal.SIGTERM)
    except OSError as exc:
        return f"cannot signal {PATRONI_UNIT}'s process {pid}: {exc.strerror}"
    finally:
        if frozen:
            try:
                kill(pid, signal.SIGCONT)
            except OSError as exc:
                LOG.warning("cannot resume Patroni %d: %s", pid, exc.strerror)
    return None


def release_leadership(others: dict[str, PatroniClient], deadline: float,
                       stop: Callable[[], str | None]) -> tuple[str | None, str | None]:
    """The machine is going down: let Patroni's own shutdown hand leadership over, and wait until
    another member takes writes. (its name, None), or (None, why not).

    Patroni's shutdown stops PostgreSQL and releases the leader key as a switchover does, the
    synchronous standby then wins the race (only it may, in synchronous mode) and the other
    replicas follow it at once. After a switchover instead, any replica whose loop sees the
    leaderless moment sleeps 2 s first (Patroni's process_unhealthy_cluster, while the failover
    key is set), and the new primary's commits wait for it: 3 of 4 replacements of the primary,
    2026-12-01, 5.9-6.0 s against 4.55 s."""
    began = time.monotonic()
    failed = stop()
    if failed is not None:
        return None, failed
    while time.monotonic() < deadline:
        for name, client in others.items():
            if takes_writes(client, timeout=0.5):
                LOG.info("%s takes writes %.2f s after Patroni was told to stop", name, time.monotonic() - began)
                return name, None
        time.sleep(POLL_INTERVAL)
    return None, "no member took writes within the handover's bound"


def handover(node: NodeFacts, timeout: float, *, for_restart: bool = False) -> str | None:
    """Hand leadership over if this member leads; the new leader's name, or None.
    ``for_restart``: the leader is about to restart for its parameters (apply-config's rolling
    restart), not stopping: a switchover, to a member that needs no restart itself."""
    began = time.monotonic()
    deadline = began + timeout
    if not for_restart and os.path.exists(os.path.join(node["paths"]["run"], NO_HANDOVER_FLAG)):
        LOG.info("no handover: the whole cluster is stopping (%s)", NO_HANDOVER_FLAG)
        return None
    try:
        cluster = patroni_get(node, "/cluster", timeout=3.0)
        config = patroni_get(node, "/config", timeout=3.0)
    except AgentError as exc:
        LOG.info("no handover: %s", exc)
        return None
    candidate, why = handover_candidate(node["member"], cluster, config, restarted_only=for_restart)
    if candidate is None:
        LOG.info("no handover: %s", why)
        return None
    LOG.info("this member leads and is %s: handing leadership to %s (%s)",
             "restarting" if for_restart else "stopping", candidate, why)
    apis = {str(m.get("name")): member_client(m, node=node) for m in cluster.get("members") or []
            if m.get("name") != node["member"]}
    others = {name: api for name, api in apis.items() if api is not None}
    stopping = not for_restart and system_stopping()
    flushed = checkpoint(local_postgres_dsn(node), min(CHECKPOINT_TIMEOUT, timeout / 3))
    if flushed is not None:
        LOG.info("CHECKPOINT done in %.2f s, before the pause", flushed)
    dsn = pgbouncer_admin_conninfo(node)
    paused_at = time.monotonic()
    paused = False
    if os.path.exists(os.path.join(node["paths"]["run"], NO_POOLER_PAUSE_FLAG)):
        LOG.info("PgBouncer not paused (%s): its clients meet the stop as it comes", NO_POOLER_PAUSE_FLAG)
    else:
        paused, drain = pause_pgbouncer(dsn, min(PAUSE_TIMEOUT, timeout / 3))
        if paused:
            LOG.info("PgBouncer paused (drained in %.2f s)", drain)
    failed: str | None = "not tried"
    try:
        if stopping and others:
            new_leader, failed = release_leadership(others, deadline,
                                                    lambda: stop_patroni(node["paths"]["pgdata"]))
            candidate = new_leader or candidate
        else:
            failed = switch_over(node, candidate, deadline, apis.get(candidate))
    finally:
        if paused and failed is None and stopping:
            # The node is going down: close this pooler now. Its clients reconnect at once and
            # HAProxy, finding the port closed, redispatches them to the new primary instead of
            # to this one until its check fails (RESUME cost ~3 s more, 2026-12-01 bench/replace.py).
            shutdown_pgbouncer(dsn)
            LOG.info("PgBouncer shut down after %.2f s paused (the node is stopping)", time.monotonic() - paused_at)
        elif paused:
            # After a switchover what still waits goes to this member, a replica now (or restarting
            # as one): a write fails there unexecuted, unless HAProxy has moved its client already.
            # Waiting longer gains nothing (seen 2026-12-01): HAProxy cuts those clients either
            # way, and a replica's pooler takes read-only clients (5434) again.
            resume_pgbouncer(dsn)
            LOG.info("PgBouncer resumed after %.2f s paused", time.monotonic() - paused_at)
    took = time.monotonic() - began
    if failed is None:
        LOG.info("handed leadership to %s in %.2f s", candidate, took)
        return candidate
    LOG.warning("no handover: %s (%.1f s of at most %.0f s spent); stopping anyway", failed, took, timeout)
    return None


def handover_as(node: NodeFacts, user: str, timeout: float, *, for_restart: bool = False) -> str | None:
    """:func:`handover` as ``user`` (postgres): PgBouncer's admin console admits that user only
    (peer), and apply-config, which restarts the leader, runs as root. Forks when it must drop
    privileges; the child hands its answer back through a pipe."""
    import pwd

    account = pwd.getpwnam(user)
    if os.geteuid() != 0 or account.pw_uid == 0:
        return handover(node, timeout, for_restart=for_restart)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            name = handover(node, timeout, for_restart=for_restart)
            os.write(write_end, (name or "").encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - say why, in the parent's log
            LOG.error("handover as %s failed: %s: %s", user, type(exc).__name__, str(exc).strip())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        name = answer.read().decode().strip()
    os.waitpid(pid, 0)
    return name or None


def cmd_handover(node: NodeFacts, args: argparse.Namespace) -> int:
    try:
        handover(node, args.timeout)
    except Exception as exc:  # noqa: BLE001 - the stop goes on whatever happened here
        LOG.error("handover failed: %s: %s", type(exc).__name__, str(exc).strip())
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("handover", parents=[common], help="before this member stops: hand leadership over",
                       description="If this member is the leader and a synchronous standby (synchronous mode "
                                   "off: the streaming replica with the least lag within maximum_lag_on_failover) "
                                   "is healthy: PAUSE the local PgBouncer, switch over to it, wait until it takes "
                                   "writes, RESUME. Otherwise say why and do nothing. Always exits 0; bounded by "
                                   "--timeout.")
    p.add_argument("--timeout", type=float, default=HANDOVER_TIMEOUT, metavar="SECONDS",
                   help=f"bound of the whole handover (default {HANDOVER_TIMEOUT:g})")
    p.set_defaults(func=cmd_handover)
