"""Issue 13, part 3, the AWS side under the mock runtime: the cluster's log group (name, retention,
the cluster key), the key policy's statement for CloudWatch Logs, the node role's log permissions,
and the EC2 status-check alarms of every member (recover where EC2 supports it)."""

import json
from typing import Any

import pytest

from infra_mocks import ACCOUNT, REGION, Run, run_program
from pgha.infra import PostgresCluster

GROUP_ARN = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/pgha/pg-logs"


def cluster(extra: dict[str, Any] | None = None) -> Run:
    return run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-logs", **(extra or {})}))


@pytest.fixture(scope="module")
def run() -> Run:
    return cluster()


def statements(doc: str) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in json.loads(doc)["Statement"]}


def alarms(run: Run) -> dict[str, dict[str, Any]]:
    return {r.inputs["name"]: r.inputs for r in run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}


def test_one_log_group_per_cluster_kept_7_days_by_default_and_encrypted_with_the_cluster_key(run: Run) -> None:
    (group,) = run.of_type("aws:cloudwatch/logGroup:LogGroup")
    assert group.inputs["name"] == "/pgha/pg-logs"
    assert group.inputs["retentionInDays"] == 7
    (key,) = run.of_type("aws:kms/key:Key")
    assert group.inputs["kmsKeyId"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-{key.name}"
    assert group.inputs["tags"]["pgha:cluster"] == "pg-logs"
    # The members boot only once the group exists, so their first lines have somewhere to go.
    for instance in run.of_type("aws:ec2/instance:Instance"):
        assert any("db-node-logs" in d for d in instance.dependencies), instance.name


def test_retention_follows_the_spec() -> None:
    (group,) = cluster({"logs": {"retention_days": 90}}).of_type("aws:cloudwatch/logGroup:LogGroup")
    assert group.inputs["retentionInDays"] == 90


def test_the_logs_service_may_use_the_key_for_this_log_group_only(run: Run) -> None:
    (key,) = run.of_type("aws:kms/key:Key")
    use = statements(key.inputs["policy"])["LogsServiceUse"]
    assert use["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}
    assert use["Condition"] == {"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": GROUP_ARN}}
    assert set(use["Action"]) == {"kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                                  "kms:Describe*"}
    # No other statement names the logs service.
    others = [s for sid, s in statements(key.inputs["policy"]).items() if sid != "LogsServiceUse"]
    assert "logs." not in json.dumps([s["Principal"] for s in others])


def test_node_role_creates_streams_and_puts_events_in_its_own_group_only(run: Run) -> None:
    policy = run.one("aws:iam/rolePolicy:RolePolicy", "db-role-access").inputs["policy"]
    found = statements(policy)
    logs = {sid: s for sid, s in found.items() if "logs:" in json.dumps(s.get("Action"))}
    assert set(logs) == {"CreateOwnLogStreams", "PutOwnLogEvents"}
    assert logs["CreateOwnLogStreams"]["Action"] == "logs:CreateLogStream"
    assert logs["CreateOwnLogStreams"]["Resource"] == f"{GROUP_ARN}:*"
    assert logs["PutOwnLogEvents"]["Action"] == "logs:PutLogEvents"
    assert logs["PutOwnLogEvents"]["Resource"] == f"{GROUP_ARN}:log-stream:*"
    # Nothing that reads, deletes or re-keys logs, or shortens their retention.
    assert not {"logs:*", "logs:GetLogEvents", "logs:DeleteLogGroup", "logs:PutRetentionPolicy",
                "logs:AssociateKmsKey", "logs:DisassociateKmsKey"} & {
        a for s in found.values() for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}


def test_the_log_group_name_is_a_stack_output(run: Run) -> None:
    component = run.result
    assert component.log_group_name is not None
    assert run.one("pgha:infra:NodeLogGroup", "db-node-logs").parent.endswith("PostgresCluster::db")


def test_every_ebs_member_is_recovered_by_ec2_when_its_host_fails(run: Run) -> None:
    found = alarms(run)
    assert set(found) == {f"pg-logs-{i}-{c}-check" for i in (1, 2, 3) for c in ("system", "instance")}
    for index in (1, 2, 3):
        system = found[f"pg-logs-{index}-system-check"]
        assert system["namespace"] == "AWS/EC2" and system["metricName"] == "StatusCheckFailed_System"
        assert system["dimensions"] == {"InstanceId": f"db-{index}-instance-id"}
        assert system["alarmActions"] == [f"arn:aws:automate:{REGION}:ec2:recover"]
        assert system["comparisonOperator"] == "GreaterThanOrEqualToThreshold" and system["threshold"] == 1
        assert system["statistic"] == "Maximum" and system["period"] == 60
        guest = found[f"pg-logs-{index}-instance-check"]
        assert guest["metricName"] == "StatusCheckFailed_Instance"
        assert guest["dimensions"] == {"InstanceId": f"db-{index}-instance-id"}
        assert guest["alarmActions"] == [f"arn:aws:automate:{REGION}:ec2:reboot"]


def test_metal_members_are_rebooted_never_recovered() -> None:
    # EC2 cannot recover an instance with instance store volumes: the system alarm acts not at all.
    found = alarms(cluster({"storage": {"kind": "metal"}}))
    assert len(found) == 6
    for index in (1, 2, 3):
        assert found[f"pg-logs-{index}-system-check"]["alarmActions"] == []
        assert "no EC2 recovery" in found[f"pg-logs-{index}-system-check"]["alarmDescription"]
        assert found[f"pg-logs-{index}-instance-check"]["alarmActions"] == [
            f"arn:aws:automate:{REGION}:ec2:reboot"]
    assert ":ec2:recover" not in json.dumps(found)


def test_a_type_without_automatic_recovery_gets_no_recover_action() -> None:
    # r7gd.large: EBS storage chosen, but the type carries an NVMe instance store (no recovery).
    found = alarms(cluster({"instance_type": "r7gd.large"}))
    assert found["pg-logs-1-system-check"]["alarmActions"] == []
