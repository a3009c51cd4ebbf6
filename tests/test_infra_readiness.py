"""MemberReady: the stack's wait on a member's status parameter (moto's SSM), its provider, the
node role's access to the parameters, and the resource under Pulumi's mock runtime."""

from __future__ import annotations

import base64
import fnmatch
import json
from typing import Any, Callable, Iterator

import boto3
import botocore.exceptions
import dill
import pulumi
import pulumi.dynamic
import pulumi_aws as aws
import pytest
from moto import mock_aws

from infra_mocks import resolve, run_program
from pgha import contract
from pgha.agent import status as agent_status
from pgha.infra import identity, readiness
from pgha.infra.readiness import MemberNotReady, MemberReady, MemberReadyProvider, wait_for_member
from pgha.spec import build_spec

REGION = "us-east-1"
PARAMETER = contract.status_parameter("pg-ready", "pg-ready-2")
NODE = {"cluster": "pg-ready", "member": "pg-ready-2", "aws": {"region": REGION, "endpoint_url": "",
                                                              "s3_addressing": "path"}}


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("ssm", region_name=REGION)


def publish(ssm: Any, instance_id: str, state: str, message: str = "", **kw: Any) -> None:
    """What the node does: the agent's own reporter, against the same SSM."""
    agent_status.Reporter(NODE, instance_id, client=ssm).report(state, message, retry_for=0, **kw)


class Clock:
    """A fake monotonic clock whose sleep runs ``on_sleep`` (what the node does meanwhile)."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda n: None) -> None:
        self.now, self.sleeps, self.on_sleep = 0.0, 0, on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        self.on_sleep(self.sleeps)


def wait(ssm: Any, instance_id: str, clock: Clock, timeout: float = 60.0) -> contract.MemberStatus:
    return wait_for_member(ssm, PARAMETER, instance_id, timeout=timeout, poll=5.0, clock=clock, sleep=clock.sleep)


# -- wait_for_member ---------------------------------------------------------------------------------

def test_the_wait_returns_what_the_node_published_once_it_is_ready(ssm):
    def node(n: int) -> None:
        if n == 1:
            publish(ssm, "i-0new", "booting", "waiting: replica not streaming from pg-ready-1: replication_state=none")
        if n == 3:
            publish(ssm, "i-0new", "ready", "ready after 12 s: timeline 4", timeline=4, lag_bytes=0)

    clock = Clock(node)
    got = wait(ssm, "i-0new", clock)
    assert (got["instance_id"], got["state"], got["timeline"], got["lag_bytes"]) == ("i-0new", "ready", 4, 0)
    assert clock.sleeps == 3 and clock.now == 15.0


def test_a_failed_member_fails_the_wait_with_its_own_message(ssm):
    publish(ssm, "i-0new", "failed", "not ready after 1800 s: etcd member unhealthy: RAFT NO LEADER")
    with pytest.raises(MemberNotReady) as exc:
        wait(ssm, "i-0new", Clock())
    assert str(exc.value) == (f"{PARAMETER}: instance i-0new failed: "
                              "not ready after 1800 s: etcd member unhealthy: RAFT NO LEADER")
    assert exc.value.status is not None and exc.value.status["state"] == "failed"


def test_the_replaced_instances_ready_is_ignored(ssm):
    publish(ssm, "i-0old", "ready", "ready after 20 s: timeline 3", timeline=3, lag_bytes=0)

    def node(n: int) -> None:
        if n == 2:
            publish(ssm, "i-0new", "ready", "ready after 30 s: timeline 3", timeline=3, lag_bytes=0)

    clock = Clock(node)
    assert wait(ssm, "i-0new", clock)["instance_id"] == "i-0new"
    assert clock.sleeps == 2  # not at once, on the old instance's word
    # Nor does the old one's failure fail the new one: only its own.
    publish(ssm, "i-0old", "failed", "old news")
    with pytest.raises(MemberNotReady, match="no status published") as exc:
        wait(ssm, "i-0new", Clock(), timeout=20)
    assert "i-0new" in str(exc.value) and "another instance" in str(exc.value) and "i-0old" in str(exc.value)


def test_a_timeout_names_the_instance_and_the_last_status_seen(ssm):
    with pytest.raises(MemberNotReady) as exc:
        wait(ssm, "i-0new", Clock(), timeout=30)
    assert str(exc.value) == f"{PARAMETER}: instance i-0new not ready after 30 s: no status published"
    assert exc.value.status is None

    publish(ssm, "i-0new", "booting", "waiting: replica 20000000 bytes behind pg-ready-1, more than 16777216")
    with pytest.raises(MemberNotReady) as exc:
        wait(ssm, "i-0new", Clock(), timeout=30)
    message = str(exc.value)
    assert message.startswith(f"{PARAMETER}: instance i-0new not ready after 30 s: last status booting at ")
    assert message.endswith("from i-0new: waiting: replica 20000000 bytes behind pg-ready-1, more than 16777216")


def test_a_value_that_is_no_status_and_read_errors_are_named():
    class Stub:
        """A client whose GetParameter answers ``answer()`` (no moto: these are not its replies)."""


        def __init__(self, answer: Callable[[], Any]) -> None:
            self.answer = answer

        def get_parameter(self, Name: str) -> Any:  # noqa: N803 (boto3's names)
            return self.answer()

    def denied() -> Any:
        raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                                              "GetParameter")

    clock = Clock()
    with pytest.raises(MemberNotReady, match="AccessDeniedException"):
        wait_for_member(Stub(denied), PARAMETER, "i-0new", timeout=10, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == 2  # retried until the timeout, then named
    clock = Clock()
    garbage = Stub(lambda: {"Parameter": {"Value": "hello"}})
    with pytest.raises(MemberNotReady, match="not a member status: 'hello'"):
        wait_for_member(garbage, PARAMETER, "i-0new", timeout=10, clock=clock, sleep=clock.sleep)


# -- the dynamic provider -------------------------------------------------------------------------

PROPS = {"parameter_name": PARAMETER, "instance_id": "i-0new", "region": REGION, "timeout_seconds": 5,
         "endpoint_url": None, "profile": None}


def test_diff_updates_on_a_new_instance_and_on_nothing_else():
    provider = MemberReadyProvider()
    same = provider.diff("id", PROPS, {**PROPS, "timeout_seconds": 900, "endpoint_url": "https://x"})
    assert same.changes is False and not same.replaces
    new = provider.diff("id", PROPS, {**PROPS, "instance_id": "i-0newer"})
    # An update (which waits), not a replacement: the engine would otherwise delete this
    # resource before the instance it depends on, and create it without waiting.
    assert new.changes is True and not new.replaces
    # In a preview the new instance's id is not known yet: that is a new instance too.
    unknown = provider.diff("id", PROPS, {**PROPS, "instance_id": pulumi.runtime.rpc.UNKNOWN})
    assert unknown.changes is True


def test_diff_waits_again_when_ec2_restarts_the_same_instance():
    provider = MemberReadyProvider()
    olds = {**PROPS, "restarted_by": "instance_type=t4g.medium"}
    resized = provider.diff("id", olds, {**olds, "restarted_by": "instance_type=t4g.large"})
    assert resized.changes is True and not resized.replaces
    assert provider.diff("id", olds, dict(olds)).changes is False
    # A state written before restarted_by existed: one update records it.
    assert provider.diff("id", PROPS, dict(olds)).changes is True


def put_status(ssm: Any, instance_id: str, state: str, at: str) -> None:
    ssm.put_parameter(Name=PARAMETER, Type="String", Overwrite=True,
                      Value=contract.status_value(instance_id, state, f"{state} at {at}", at, timeline=1, lag_bytes=0))


def test_a_status_from_before_the_restart_is_ignored(ssm):
    import datetime

    restart = datetime.datetime(2026, 12, 2, 3, 0, 0, tzinfo=datetime.timezone.utc)
    put_status(ssm, "i-0new", "ready", "2026-12-02T02:10:00Z")  # the last boot's word

    def node(n: int) -> None:
        if n == 1:
            put_status(ssm, "i-0new", "booting", "2026-12-02T03:00:20Z")
        if n == 3:
            put_status(ssm, "i-0new", "ready", "2026-12-02T03:01:05Z")

    clock = Clock(node)
    status = wait_for_member(ssm, PARAMETER, "i-0new", timeout=60, poll=5.0, clock=clock, sleep=clock.sleep,
                             written_after=restart)
    assert status["at"] == "2026-12-02T03:01:05Z" and clock.sleeps == 3
    # Only the stale status there: the wait runs out and says why.
    put_status(ssm, "i-0new", "ready", "2026-12-02T02:10:00Z")
    idle = Clock()
    with pytest.raises(MemberNotReady, match="a status from before the restart"):
        wait_for_member(ssm, PARAMETER, "i-0new", timeout=10, poll=5.0, clock=idle, sleep=idle.sleep,
                        written_after=restart)


def test_an_instance_ec2_restarted_is_waited_for_until_it_reports_after_the_restart(ssm, monkeypatch):
    put_status(ssm, "i-0new", "ready", "2026-12-01T09:00:00Z")  # before the resize
    real_wait, seen = readiness.wait_for_member, {}

    def wait_with_a_node_that_boots(*args: Any, **kw: Any) -> contract.MemberStatus:
        seen.update(kw)

        def node(n: int) -> None:
            if n == 1:
                put_status(ssm, "i-0new", "ready", "2999-01-01T00:00:00Z")
        clock = Clock(node)
        status = real_wait(*args, **kw, clock=clock, sleep=clock.sleep)
        seen["sleeps"], seen["at"] = clock.sleeps, status["at"]
        return status
    monkeypatch.setattr(readiness, "wait_for_member", wait_with_a_node_that_boots)
    olds = {**PROPS, "restarted_by": "instance_type=t4g.medium", "state": "ready", "timeline": 1}
    result = MemberReadyProvider().update(PARAMETER, olds, {**PROPS, "restarted_by": "instance_type=t4g.large"})
    assert seen["written_after"] is not None
    assert result.outs["state"] == "ready" and result.outs["restarted_by"] == "instance_type=t4g.large"
    # Not the ready from before the restart: the one the node wrote while the update waited.
    assert seen["sleeps"] == 1 and seen["at"] == "2999-01-01T00:00:00Z"


def test_a_state_from_before_restarted_by_is_recorded_without_a_wait(ssm):
    olds = {**PROPS, "state": "ready", "timeline": 4}  # no restarted_by, no status published
    result = MemberReadyProvider().update(PARAMETER, olds, {**PROPS, "restarted_by": "instance_type=t4g.large"})
    assert result.outs["restarted_by"] == "instance_type=t4g.large"
    assert result.outs["state"] == "ready" and result.outs["timeline"] == 4


def test_the_first_instance_is_not_waited_for(ssm):
    # A new cluster's members boot together; one alone never becomes ready (no etcd quorum).
    result = MemberReadyProvider().create(dict(PROPS))
    assert result.id == PARAMETER and result.outs["state"] == "created"


def test_a_new_instance_is_waited_for_and_returns_the_status(ssm):
    publish(ssm, "i-0new", "ready", "ready after 9 s: timeline 2", timeline=2, lag_bytes=512)
    # As Pulumi runs it: the provider pickled with dill, unpickled in the provider process.
    provider = dill.loads(base64.b64decode(pulumi.dynamic.dynamic.serialize_provider(MemberReadyProvider())))
    result = provider.update(PARAMETER, {**PROPS, "instance_id": "i-0old"}, dict(PROPS))
    assert result.outs["state"] == "ready" and result.outs["timeline"] == 2
    assert result.outs["instance_id"] == "i-0new" and result.outs["parameter_name"] == PARAMETER


def test_a_new_instance_that_fails_fails_the_update_with_the_nodes_message(ssm):
    publish(ssm, "i-0new", "failed", "bootstrap: E: Unable to locate package etcd-server")
    with pytest.raises(MemberNotReady, match="Unable to locate package etcd-server"):
        MemberReadyProvider().update(PARAMETER, {**PROPS, "instance_id": "i-0old"}, dict(PROPS))


# -- the node role may write the status parameters, and only the cluster's -------------------------

def test_the_node_role_may_put_and_get_its_clusters_status_parameters_only():
    spec = build_spec({"clusterName": "pg-ready"}, stack="dev", region=REGION,
                      region_azs=["us-east-1a", "us-east-1b", "us-east-1c"])
    secret = "arn:aws:secretsmanager:us-east-1:210987654321:secret:pg-ready-AbCdEf"
    doc = json.loads(identity.node_policy_document(spec, bucket_arn="arn:aws:s3:::b", secret_arn=secret,
                                                    key_arn="arn:aws:kms:us-east-1:210987654321:key/k"))
    (statement,) = [s for s in doc["Statement"] if s["Sid"] == "PublishMemberStatus"]
    assert statement["Action"] == ["ssm:PutParameter", "ssm:GetParameter"]
    pattern = statement["Resource"]
    assert pattern == "arn:aws:ssm:us-east-1:210987654321:parameter/pgha/pg-ready/*"
    arn = "arn:aws:ssm:us-east-1:210987654321:parameter"
    for member in spec.members:
        assert fnmatch.fnmatchcase(arn + contract.status_parameter("pg-ready", member.name), pattern)
    assert not fnmatch.fnmatchcase(arn + contract.status_parameter("pg-other", "pg-other-1"), pattern)
    assert not fnmatch.fnmatchcase(arn + "/pgha/pg-ready-x/status", pattern)
    gov = build_spec({"clusterName": "pg-ready"}, stack="dev", region="us-gov-west-1",
                     region_azs=["us-gov-west-1a", "us-gov-west-1b", "us-gov-west-1c"])
    assert identity.status_parameters_arn(gov, account_arn=secret).startswith("arn:aws-us-gov:ssm:us-gov-west-1:")
    with pytest.raises(ValueError, match="account"):
        identity.status_parameters_arn(spec, account_arn="arn:aws:s3:::bucket")


# -- under Pulumi's mock runtime -------------------------------------------------------------------

def test_member_ready_is_declared_with_the_instances_id():
    def program() -> tuple[Any, Any]:
        instance = aws.ec2.Instance("pg-ready-2", ami="ami-0test", instance_type="t4g.medium")
        ready = MemberReady("pg-ready-2-ready", parameter_name=PARAMETER, instance_id=instance.id, region=REGION,
                            timeout_seconds=2400, opts=pulumi.ResourceOptions(depends_on=[instance]))
        return instance, ready

    run = run_program(program)
    instance, ready = run.result
    (registered,) = [r for r in run.resources if r.name == "pg-ready-2-ready"]
    assert registered.type == "pulumi-python:dynamic/pgha:MemberReady"
    assert registered.inputs["instance_id"] == "pg-ready-2-id"  # the mocked instance's id
    assert registered.inputs["parameter_name"] == PARAMETER and registered.inputs["timeout_seconds"] == 2400
    assert run.by_urn(registered.dependencies[0]).name == "pg-ready-2"
    provider = dill.loads(base64.b64decode(registered.inputs["__provider"]))
    assert isinstance(provider, readiness.MemberReadyProvider)
    assert resolve(ready.instance_id)[0] == resolve(instance.id)[0] == "pg-ready-2-id"
