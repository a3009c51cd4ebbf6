"""The way in: an EC2 Instance Connect Endpoint, and what an operator's IAM needs to use it.

An operator opens a shell on a member with ``aws ec2-instance-connect ssh --instance-id ...
--connection-type eice``: IAM authorizes the tunnel (``OpenTunnel``, on this endpoint, to port
22 of a member's address) and the key push (``SendSSHPublicKey``, as the ``admin`` user, on the
cluster's instances); the endpoint, an AWS-managed interface in one of the cluster's private
subnets, carries the connection to sshd, which trusts only the pushed, AWS-signed key
(``pgha-node authorized-keys``). No public address, no key pair, no internet egress.
The endpoint does not preserve the client's address: its connections come from its own
interface, which is what lets the members' group admit port 22 from the endpoint's group only.
"""

import json
from typing import Any, Mapping

import pulumi
import pulumi_aws as aws

from .. import contract
from ..spec import ClusterSpec
from .common import child, cluster_tags, partition

# What `aws ec2-instance-connect ssh --connection-type eice` looks up first (no resource-level
# permissions for Describe*).
DESCRIBE_ACTIONS = ("ec2:DescribeInstances", "ec2:DescribeInstanceConnectEndpoints")
# The longest tunnel the policy allows (AWS's maximum: 3600 s).
MAX_TUNNEL_SECONDS = 3600


def shell_command(instance_id: str, region: str) -> str:
    return (f"aws ec2-instance-connect ssh --region {region} --instance-id {instance_id} "
            f"--connection-type eice --os-user {contract.SSH_LOGIN_USER}")


def operator_policy(spec: ClusterSpec, endpoint_arn: str, member_ips: Mapping[str, str]) -> dict[str, Any]:
    """The IAM policy an operator needs for a shell on this cluster's members, and no more: the
    tunnel through this endpoint to port 22 of a member, the key push as ``admin`` to an instance
    tagged with this cluster (instance ids change when a member is replaced; its tag does not)."""
    arn = partition(spec.region)
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "TunnelToMembersSsh", "Effect": "Allow", "Action": "ec2-instance-connect:OpenTunnel",
         "Resource": endpoint_arn,
         "Condition": {"NumericEquals": {"ec2-instance-connect:remotePort": str(contract.SSH_PORT)},
                       "IpAddress": {"ec2-instance-connect:privateIpAddress":
                                     [f"{ip}/32" for _, ip in sorted(member_ips.items())]},
                       "NumericLessThanEquals": {"ec2-instance-connect:maxTunnelDuration": str(MAX_TUNNEL_SECONDS)}}},
        {"Sid": "PushKeyAsAdmin", "Effect": "Allow", "Action": "ec2-instance-connect:SendSSHPublicKey",
         "Resource": f"arn:{arn}:ec2:{spec.region}:*:instance/*",
         "Condition": {"StringEquals": {"ec2:osuser": contract.SSH_LOGIN_USER,
                                        "aws:ResourceTag/pgha:cluster": spec.cluster_name}}},
        {"Sid": "FindInstancesAndEndpoint", "Effect": "Allow", "Action": list(DESCRIBE_ACTIONS), "Resource": "*"},
    ]}


class InstanceConnect(pulumi.ComponentResource):
    """The cluster's EC2 Instance Connect Endpoint (in the first member's subnet)."""

    endpoint_id: pulumi.Output[str]
    endpoint_arn: pulumi.Output[str]
    operator_policy: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, subnet_id: pulumi.Input[str],
                 security_group_id: pulumi.Input[str], member_ips: Mapping[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:InstanceConnect", name, None, opts)
        endpoint = aws.ec2transitgateway.InstanceConnectEndpoint(
            f"{name}-eice", subnet_id=subnet_id, security_group_ids=[security_group_id], preserve_client_ip=False,
            tags=cluster_tags(spec, Name=f"{spec.cluster_name}-eice"), opts=child(self))
        self.endpoint_id = endpoint.id
        self.endpoint_arn = endpoint.arn
        ips = dict(member_ips)
        self.operator_policy = endpoint.arn.apply(lambda a: json.dumps(operator_policy(spec, a, ips), indent=1))
        self.register_outputs({"endpoint_id": endpoint.id, "endpoint_arn": endpoint.arn})
