"""A member's readiness in the Pulumi graph: ``MemberReady`` waits for the status the node publishes.

The node (``pgha-node await-ready``, ``report-status``) writes ``/pgha/<cluster>/<member>/status``
in SSM: ``{"instance_id", "state", ...}`` (pgha.contract.MemberStatus). ``MemberReady`` is a
dynamic resource whose creation returns once that parameter says ready for the instance it is
given, and fails with the node's own message when it says failed or the timeout passes. It is
updated, so waited for again, whenever the instance id changes, and when an input changes that
EC2 applies to the same instance by stopping and starting it (its type): then only a status
written after the wait began counts, since the member's "ready" from before the restart is still
in the parameter. Anything that must not start before the member is back (the next member's
replacement or restart) depends on it.

The wait runs in Pulumi's dynamic provider process, which unpickles the provider there: the
boto3 client is made inside ``create`` and credentials come from the environment ``pulumi up``
runs in (or ``profile``), as the AWS provider's do by default.
"""

import datetime
import time
from typing import Any, Callable

import pulumi
import pulumi.dynamic

from .. import contract

DEFAULT_POLL = 5.0


class MemberNotReady(Exception):
    """The member did not become ready: it reported failed (``status`` is that report) or the
    wait timed out (``status`` is the last report of this instance seen, if any)."""

    def __init__(self, message: str, status: contract.MemberStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


def describe(status: contract.MemberStatus) -> str:
    return f"{status['state']} at {status['at'] or '?'} from {status['instance_id']}: {status['message'] or '-'}"


def wait_for_member(ssm_client: Any, parameter: str, instance_id: str, *, timeout: float,
                    poll: float = DEFAULT_POLL, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    written_after: datetime.datetime | None = None) -> contract.MemberStatus:
    """The status in ``parameter`` once it says ready for ``instance_id``.

    A status written by another instance (the one this replaces) is ignored: its "ready" says
    nothing about the new one; so is one written before ``written_after`` (the same instance
    before EC2 restarted it). Raises MemberNotReady with the node's message when this instance
    reports failed, and at ``timeout`` naming the instance and the last status seen."""
    deadline = clock() + timeout
    last: contract.MemberStatus | None = None  # this instance's latest
    other = ""  # what else the parameter held (another instance's status, an error)
    while True:
        seen, other = _read(ssm_client, parameter, other)
        if seen is not None and seen["instance_id"] != instance_id:
            other = f"a status of another instance ({describe(seen)})"
        elif seen is not None and written_after is not None and not _written_after(seen, written_after):
            other = f"a status from before the restart ({describe(seen)})"
        elif seen is not None:
            last = seen
            if seen["state"] == contract.STATUS_READY:
                return seen
            if seen["state"] == contract.STATUS_FAILED:
                raise MemberNotReady(f"{parameter}: instance {instance_id} failed: {seen['message'] or '-'}", seen)
        if clock() >= deadline:
            if last is not None:
                what = f"last status {describe(last)}"
            else:
                what = "no status published" + (f" (the parameter held {other})" if other else "")
            raise MemberNotReady(f"{parameter}: instance {instance_id} not ready after {timeout:.0f} s: {what}",
                                 last)
        sleep(max(0.0, min(poll, deadline - clock())))


def _read(ssm_client: Any, parameter: str, other: str) -> tuple[contract.MemberStatus | None, str]:
    """(the status the parameter holds, if it parses; what to say about it otherwise)."""
    import botocore.exceptions

    try:
        value = ssm_client.get_parameter(Name=parameter)["Parameter"]["Value"]
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        # Not there yet is the normal start; anything else (AccessDenied, throttling) is retried
        # and named if the wait runs out.
        return None, (other if code == "ParameterNotFound" else f"an error reading it: {exc}")
    except botocore.exceptions.BotoCoreError as exc:
        return None, f"an error reading it: {exc}"
    status = contract.parse_status(value)
    if status is None:
        return None, f"a value that is not a member status: {value[:200]!r}"
    return status, other


def _written_after(status: contract.MemberStatus, moment: datetime.datetime) -> bool:
    try:
        at = datetime.datetime.fromisoformat(status["at"].replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return False  # no time: it cannot prove it is new
    return at >= moment.replace(microsecond=0)


def ssm_client(region: str, endpoint_url: str | None = None, profile: str | None = None) -> Any:
    import boto3

    session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
    return session.client("ssm", region_name=region, endpoint_url=endpoint_url or None)


# The inputs, kept as outputs too (state holds what the wait was for).
_INPUTS = ("parameter_name", "instance_id", "restarted_by", "region", "timeout_seconds", "endpoint_url", "profile")


class MemberReadyProvider(pulumi.dynamic.ResourceProvider):
    """A new instance id (a replaced instance) waits for the member; the first one does not.

    Members of a new cluster boot together: one alone never gets ready (etcd has no quorum
    and no leader), so a wait at creation would hold the next member back forever. A member
    replaced later is waited for before the next replacement starts."""

    def _outs(self, props: dict[str, Any], status: contract.MemberStatus | None) -> dict[str, Any]:
        outs = {key: props.get(key) for key in _INPUTS}
        outs.update(state=status["state"] if status else "created", timeline=status["timeline"] if status else None)
        return outs

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(id_=str(props["parameter_name"]), outs=self._outs(props, None))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        client = ssm_client(news["region"], news.get("endpoint_url"), news.get("profile"))
        restarted = olds.get("instance_id") == news["instance_id"]
        if restarted and olds.get("restarted_by") is None:
            # A state from before ``restarted_by`` existed: record it; nothing tells whether EC2
            # restarted the instance in this very update (pgha plan warns of it).
            outs = self._outs(news, None)
            outs.update(state=olds.get("state"), timeline=olds.get("timeline"))
            return pulumi.dynamic.UpdateResult(outs=outs)
        # EC2 has started the instance again by now (pulumi-aws waits for it to run), and the
        # member becomes ready only seconds later: a ready written before this moment is stale.
        since = datetime.datetime.now(datetime.timezone.utc) if restarted else None
        status = wait_for_member(client, news["parameter_name"], news["instance_id"],
                                 timeout=float(news["timeout_seconds"]), written_after=since)
        return pulumi.dynamic.UpdateResult(outs=self._outs(news, status))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        # An unknown id (the instance is being replaced in this preview) differs too, and so does
        # what EC2 applies by restarting the instance (a state without it: recorded once). Any
        # other input (the timeout, the endpoint) changes nothing about the member: no wait again.
        if (olds.get("instance_id") != news.get("instance_id")
                or olds.get("restarted_by") != news.get("restarted_by")):
            return pulumi.dynamic.DiffResult(changes=True, replaces=[], delete_before_replace=False)
        return pulumi.dynamic.DiffResult(changes=False)


class MemberReady(pulumi.dynamic.Resource, module="pgha", name="MemberReady"):
    """Exists once the member on ``instance_id`` published ready to ``parameter_name``."""

    instance_id: pulumi.Output[str]
    state: pulumi.Output[str]
    timeline: pulumi.Output[int | None]

    def __init__(self, name: str, *, parameter_name: pulumi.Input[str], instance_id: pulumi.Input[str],
                 region: pulumi.Input[str], timeout_seconds: pulumi.Input[float], restarted_by: str = "",
                 endpoint_url: pulumi.Input[str] | None = None, profile: pulumi.Input[str] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        # ``restarted_by``: the values of the instance's inputs that EC2 applies by stopping and
        # starting it (node.INSTANCE_STOPPED_BY); a change waits for the member again.
        props: dict[str, Any] = {"parameter_name": parameter_name, "instance_id": instance_id,
                                 "restarted_by": restarted_by, "region": region,
                                 "timeout_seconds": timeout_seconds, "endpoint_url": endpoint_url,
                                 "profile": profile, "state": None, "timeline": None}
        super().__init__(MemberReadyProvider(), name, props, opts)
