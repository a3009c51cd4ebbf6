"""`report-status` and `await-ready`: this member's readiness, published to its SSM parameter.

``pulumi up`` waits on ``/pgha/<cluster>/<member>/status`` (pgha.infra.readiness) before it
replaces the next member, so "ready" must mean the member can take a loss elsewhere: Patroni
runs it, a replica streams from the leader on the leader's timeline within a lag bound, and
its etcd member (where it runs one) is healthy. Each status names the EC2 instance (IMDSv2)
that wrote it: a replaced instance's predecessor cannot answer for it.
"""

import argparse
import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import contract
from ..contract import AwsFacts, NodeFacts
from .cli_types import Subparsers
from .errors import LOG, AgentError
from .etcd.client import etcd_client_url, etcd_health, etcd_tls_context
from .fetch import clean_message, imds_endpoint, imds_get
from .patroni_api import LEADER_ROLES, PRIMARY_ROLES, patroni_get

# The bound HAProxy's replica check uses (/replica?lag=16MB).
DEFAULT_LAG_BYTES = 16 << 20
# Longer than a replica's restore from the repository of a mid-sized database; the stack's
# wait (MemberReady's timeout_seconds) must be longer still, so that it sees the node's reason.
DEFAULT_TIMEOUT = 1800.0
DEFAULT_INTERVAL = 2.0
# Passes in a row before "ready": a replica that streams for one check and drops out is not.
CONFIRMATIONS = 2
# While waiting, publish "booting" with the reason when it changes, at most this often.
PROGRESS_EVERY = 30.0
# How long a final report (ready, failed) keeps retrying SSM.
REPORT_RETRY_FOR = 120.0
DEFAULT_TAIL = 30


# -- what "ready" means: pure ---------------------------------------------------------------------

@dataclass(frozen=True)
class Readiness:
    """One check's verdict: ``reason`` is None when ready; timeline and lag when known."""

    reason: str | None
    timeline: int | None = None
    lag_bytes: int | None = None


def member_readiness(me: str, local: dict, cluster: dict, max_lag: int) -> Readiness:
    """Pure: whether member ``me`` is ready, from its own Patroni's /patroni (``local``) and
    /cluster (Patroni 4.0's shapes: /patroni role primary|replica|standby_leader with
    replication_state; /cluster members with role leader|sync_standby|quorum_standby|replica,
    timeline, and lag in bytes or "unknown")."""
    state = local.get("state")
    if state != "running":
        return Readiness(f"PostgreSQL not running: state={state or 'unknown'}")
    members = [m for m in cluster.get("members") or [] if isinstance(m, dict)]
    mine = next((m for m in members if m.get("name") == me), None)
    if mine is None:
        return Readiness("not in Patroni's member list yet (no member key in the DCS)")
    leader = next((m for m in members if m.get("role") in LEADER_ROLES), None)
    if leader is None:
        return Readiness("the cluster has no leader")
    timeline = local.get("timeline") if isinstance(local.get("timeline"), int) else None
    role = local.get("role")
    if leader.get("name") == me:
        if role not in PRIMARY_ROLES | {"standby_leader"}:
            return Readiness(f"holds the leader key but PostgreSQL runs as {role}", timeline)
        return Readiness(None, timeline, 0)
    name = leader.get("name")
    if role in PRIMARY_ROLES:
        return Readiness(f"PostgreSQL runs as primary while {name} is the leader", timeline)
    if leader.get("state") != "running":
        return Readiness(f"leader {name} not running: state={leader.get('state') or 'unknown'}", timeline)
    replication = local.get("replication_state")
    if replication != "streaming":
        return Readiness(f"replica not streaming from {name}: replication_state={replication or 'none'}", timeline)
    theirs = leader.get("timeline")
    if timeline is None or not isinstance(theirs, int) or timeline != theirs:
        return Readiness(f"replica on timeline {timeline}, leader {name} on timeline {theirs}", timeline)
    lag = mine.get("lag")
    if not isinstance(lag, int) or isinstance(lag, bool):
        return Readiness(f"replica lag behind {name} unknown ({lag})", timeline)
    if lag > max_lag:
        return Readiness(f"replica {lag} bytes behind {name}, more than {max_lag}", timeline, lag)
    return Readiness(None, timeline, lag)


def etcd_health_reason(health: dict) -> str | None:
    """Pure: why etcd's /health reply says this member is unhealthy (None: it is healthy)."""
    if str(health.get("health")).lower() == "true":
        return None
    return f"etcd member unhealthy: {health.get('reason') or 'health=' + str(health.get('health'))}"


# -- IMDSv2 and SSM ----------------------------------------------------------------------------

def imds_instance_id(endpoint: str | None = None, *, attempts: int = 5, timeout: float = 2.0,
                     sleep: Callable[[float], None] = time.sleep) -> str:
    """This instance's id through IMDSv2, retried (IMDS may lag at boot)."""
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            instance_id = imds_get("meta-data/instance-id", endpoint, timeout)
            if instance_id:
                return instance_id
            last = "empty instance-id"
        except (OSError, ValueError) as exc:
            last = str(exc)
        if attempt < attempts:
            sleep(min(2.0 * attempt, 5.0))
    raise AgentError(f"cannot read this instance's id from IMDS at {endpoint or imds_endpoint()}: {last}")


def ssm_client(aws: AwsFacts) -> Any:
    import boto3  # lazily: the pure checks and --help need no boto3

    # AWS's own endpoint on EC2; the rehearsal's moto otherwise.
    return boto3.client("ssm", region_name=aws["region"], endpoint_url=aws["endpoint_url"] or None)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def put_status(client: Callable[[], Any], parameter: str, value: str, *, retry_for: float = REPORT_RETRY_FOR,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """PutParameter (String, overwrite), retried with backoff until ``retry_for`` has passed:
    at boot the instance profile may lag, and SSM throttles concurrent updates. ``client()``
    gives the SSM client for each attempt (see :class:`Reporter`)."""
    import botocore.exceptions

    deadline, delay, attempt = clock() + retry_for, 1.0, 0
    while True:
        attempt += 1
        try:
            client().put_parameter(Name=parameter, Value=value, Type="String", Overwrite=True)
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            left = deadline - clock()
            if left <= 0:
                raise AgentError(f"cannot write {parameter} after {attempt} attempts: {exc}")
            LOG.warning("writing %s failed (attempt %d), retrying: %s", parameter, attempt, exc)
            sleep(min(delay, max(left, 0.1)))
            delay = min(delay * 2, 15.0)


class Reporter:
    """Publishes this instance's status to this member's parameter."""

    def __init__(self, node: NodeFacts, instance_id: str, client: Any = None) -> None:
        self.parameter = contract.status_parameter(node["cluster"], node["member"])
        self.instance_id = instance_id
        self.aws = node["aws"]
        self.given = client
        self._client: Any = None

    def client(self) -> Any:
        """The SSM client, made again after a failure: a boto3 client resolves its credentials
        once, so one made before the instance role is served would never get any (the same
        as the fetcher's, pgha.agent.fetch.bucket_getter)."""
        if self.given is not None:
            return self.given
        if self._client is None:
            self._client = ssm_client(self.aws)
        return self._client

    def forget_client(self) -> None:
        self._client = None

    def report(self, state: str, message: str, *, timeline: int | None = None, lag_bytes: int | None = None,
               retry_for: float = REPORT_RETRY_FOR) -> str:
        value = contract.status_value(self.instance_id, state, message, utc_now(), timeline=timeline,
                                      lag_bytes=lag_bytes)
        def client() -> Any:
            if attempts:
                self.forget_client()  # the previous attempt failed
            attempts.append(1)
            return self.client()

        attempts: list[int] = []
        put_status(client, self.parameter, value, retry_for=retry_for)
        LOG.info("%s: %s (%s)", self.parameter, state, message.splitlines()[-1] if message else "")
        return value


def tail_of(path: str, lines: int) -> str:
    """The last ``lines`` lines of ``path`` (read from the end: a boot log may be long); a
    sentence instead when it cannot be read, so that a failure is still reported."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


# -- the commands ------------------------------------------------------------------------------

def cmd_report_status(node: NodeFacts, args: argparse.Namespace) -> int:
    if args.message_file:
        message = tail_of(args.message_file, args.tail)
    else:
        message = args.message or ""
    reporter = Reporter(node, imds_instance_id())
    reporter.report(args.state, clean_message(message), retry_for=args.retry_for)
    return 0


def check_once(node: NodeFacts, max_lag: int, etcd_context: Any) -> Readiness:
    """One look at this member: Patroni's view, then its etcd member's own health."""
    try:
        local, cluster = patroni_get(node, "/patroni"), patroni_get(node, "/cluster")
    except AgentError as exc:
        return Readiness(f"Patroni not answering: {exc}")
    verdict = member_readiness(node["member"], local, cluster, max_lag)
    if verdict.reason is None and etcd_context is not None:
        try:
            why = etcd_health_reason(etcd_health(etcd_client_url(node, node["member"]), etcd_context))
        except AgentError as exc:
            why = f"etcd member unhealthy: {exc}"
        if why is not None:
            return Readiness(why, verdict.timeline, verdict.lag_bytes)
    return verdict


def await_ready(check: Callable[[], Readiness], reporter: Reporter, *, timeout: float, interval: float,
                confirmations: int = CONFIRMATIONS, progress_every: float = PROGRESS_EVERY,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Check until ready (``confirmations`` passes in a row), then report ready; at ``timeout``
    report failed with the last reason. While waiting, report booting with the reason when it
    changes (at most every ``progress_every`` s): the stack's wait shows it if it gives up first."""
    start = clock()
    passes, last_logged, last_reason, last_progress = 0, "", "", float("-inf")
    while True:
        verdict = check()
        now = clock()
        if verdict.reason is None:
            passes += 1
            if passes >= confirmations:
                lag = "" if verdict.lag_bytes is None else f", {verdict.lag_bytes} bytes behind the leader"
                reporter.report(contract.STATUS_READY,
                                f"ready after {now - start:.0f} s: timeline {verdict.timeline}{lag}",
                                timeline=verdict.timeline, lag_bytes=verdict.lag_bytes)
                return True
        else:
            passes = 0
            if now - start >= timeout:
                reporter.report(contract.STATUS_FAILED, f"not ready after {timeout:.0f} s: {verdict.reason}",
                                timeline=verdict.timeline, lag_bytes=verdict.lag_bytes)
                return False
            if verdict.reason != last_logged:
                LOG.info("waiting: %s", verdict.reason)
                last_logged = verdict.reason
            if verdict.reason != last_reason and now - last_progress >= progress_every:
                try:
                    reporter.report(contract.STATUS_BOOTING, f"waiting: {verdict.reason}",
                                    timeline=verdict.timeline, lag_bytes=verdict.lag_bytes, retry_for=0)
                    last_reason, last_progress = verdict.reason, now
                except AgentError as exc:
                    LOG.warning("%s", exc)  # progress only: the final report retries
        sleep(interval)


def cmd_await_ready(node: NodeFacts, args: argparse.Namespace) -> int:
    reporter = Reporter(node, imds_instance_id())
    peer = node["peers"].get(node["member"])
    runs_etcd = bool(peer and peer.get("etcd"))
    # node.key: the postgres user's (this runs as postgres); etcd.key is the etcd user's.
    context = etcd_tls_context(node, key="node.key") if runs_etcd else None
    ready = await_ready(lambda: check_once(node, args.lag_bytes, context), reporter, timeout=args.timeout,
                        interval=args.interval)
    return 0 if ready else 1


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parameter = contract.status_parameter("<cluster>", "<member>")
    p = sub.add_parser("report-status", parents=[common],
                       help=f"publish this member's status to SSM ({parameter})",
                       description=f"Write {{instance_id, state, message, at, timeline, lag_bytes}} (JSON) to the "
                                   f"SSM parameter {parameter}; the instance id comes from IMDSv2. The message "
                                   f"(at most {contract.STATUS_MESSAGE_MAX} bytes, its end kept) is --message or "
                                   f"the last --tail lines of --message-file, a log that holds no secrets.")
    p.add_argument("--state", required=True, choices=contract.STATUS_STATES)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--message", metavar="TEXT")
    what.add_argument("--message-file", metavar="PATH")
    p.add_argument("--tail", type=int, default=DEFAULT_TAIL, metavar="N",
                   help=f"lines of --message-file (default {DEFAULT_TAIL})")
    p.add_argument("--retry-for", type=float, default=REPORT_RETRY_FOR, metavar="SECONDS",
                   help=f"keep retrying SSM this long (default {REPORT_RETRY_FOR:g})")
    p.set_defaults(func=cmd_report_status)

    p = sub.add_parser("await-ready", parents=[common],
                       help="wait until this member is ready, then report ready (failed on timeout)",
                       description="Every --interval seconds: ready when Patroni runs this member and it is the "
                                   "leader, or a replica streaming from the leader on the leader's timeline "
                                   "within --lag-bytes, and (where it runs etcd) its etcd member is healthy, "
                                   f"{CONFIRMATIONS} checks in a row. Then report-status ready; at --timeout "
                                   "report failed with the last reason and exit 1.")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"default {DEFAULT_TIMEOUT:g}")
    p.add_argument("--lag-bytes", type=int, default=DEFAULT_LAG_BYTES, metavar="N",
                   help=f"a replica's largest lag behind the leader (default {DEFAULT_LAG_BYTES})")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
                   help=f"default {DEFAULT_INTERVAL:g}")
    p.set_defaults(func=cmd_await_ready)
