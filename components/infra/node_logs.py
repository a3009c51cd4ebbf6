"""The members' daemon logs in CloudWatch Logs: one log group per cluster, ``/pgha/<cluster_name>``,
encrypted with the cluster key and kept ``logs.retention_days`` (7 by default).

Each member's ``pgha-node ship-logs`` (agent/ship_logs.py) writes one stream per member and
daemon (``<member>/<daemon>``); the node role may create streams in and put events to this
group only (``log_statements``), and the logs service may use the cluster key for this group
only (identity.key_policy_document, ``LogsServiceUse``).
"""

from typing import Any

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec
from .common import child, cluster_tags, partition


def log_group_arn(spec: ClusterSpec, account: str) -> str:
    """The group's ARN as KMS's encryption context (aws:logs:arn) and IAM name it: no ``:*``."""
    return f"arn:{partition(spec.region)}:logs:{spec.region}:{account}:log-group:{spec.log_group}"


def log_statements(spec: ClusterSpec, account: str) -> list[dict[str, Any]]:
    """What the members do with the group: create their streams and put events, nothing else
    (no reading, no other group, no retention or key change)."""
    group = log_group_arn(spec, account)
    return [
        {"Sid": "CreateOwnLogStreams", "Effect": "Allow", "Action": "logs:CreateLogStream", "Resource": f"{group}:*"},
        {"Sid": "PutOwnLogEvents", "Effect": "Allow", "Action": "logs:PutLogEvents",
         "Resource": f"{group}:log-stream:*"},
    ]


class NodeLogGroup(pulumi.ComponentResource):
    """The cluster's log group (name ``spec.log_group``), its retention and its KMS key."""

    group_name: pulumi.Output[str]
    group_arn: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, key_arn: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:NodeLogGroup", name, None, opts)
        # The key's policy (which lets the logs service use it for this group) is part of the key:
        # CloudWatch checks it when the group is created with kms_key_id.
        group = aws.cloudwatch.LogGroup(
            f"{name}-group", name=spec.log_group, retention_in_days=spec.logs.retention_days, kms_key_id=key_arn,
            tags=cluster_tags(spec, Name=spec.log_group), opts=child(self))
        self.group_name = group.name
        self.group_arn = group.arn
        self.register_outputs({"group_name": group.name})
