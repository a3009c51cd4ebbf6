"""Interface VPC endpoints: the members' AWS API calls stay inside the VPC.

What a member calls (pgha.agent, config-templates): Secrets Manager (its passwords and TLS
key), SSM (its status parameter, also from pgha-fetch's standard-library client), S3
(pgBackRest, the node files: the VPC's gateway endpoint when pgha creates the VPC) and
CloudWatch Logs (log shipping). KMS is not among them: the role may use the key only through
S3 and Secrets Manager (kms:ViaService), whose own calls to KMS do not leave from the member.
Each endpoint has private DNS, so the SDKs' default hostnames resolve to its ENIs, one per AZ
that holds a member, behind a security group that admits 443 from the members only.
"""

from typing import Sequence

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec
from .common import child, cluster_tags, dns_suffix

# Interface endpoints pgha creates ("existing" promises the same set); S3 is not one: its
# gateway endpoint is free.
INTERFACE_SERVICES: tuple[str, ...] = ("secretsmanager", "ssm", "logs")
HTTPS_PORT = 443


def endpoint_service_name(region: str, service: str) -> str:
    """The PrivateLink service name of an AWS service in ``region`` (China has a prefix of its own)."""
    prefix = "com.amazonaws" if dns_suffix(region) == "amazonaws.com" else "cn.com.amazonaws"
    return f"{prefix}.{region}.{service}"


def endpoint_subnet_indexes(spec: ClusterSpec) -> tuple[int, ...]:
    """AZ indexes (into the subnets) that hold a member: one endpoint ENI each."""
    return tuple(sorted({m.az_index for m in spec.members}))


class InterfaceEndpoints(pulumi.ComponentResource):
    """One interface endpoint per service in ``INTERFACE_SERVICES`` (private DNS on), its ENIs
    in the members' subnets, and their security group: 443 from the members' group, nothing out."""

    security_group_id: pulumi.Output[str]
    endpoint_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, *, spec: ClusterSpec, vpc_id: pulumi.Input[str],
                 subnet_ids: Sequence[pulumi.Input[str]], node_security_group_id: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:InterfaceEndpoints", name, None, opts)
        group = aws.ec2.SecurityGroup(f"{name}-sg", vpc_id=vpc_id,
                                      description=f"pgha {spec.cluster_name} AWS API endpoints",
                                      tags=cluster_tags(spec, Name=f"{spec.cluster_name}-endpoints"),
                                      opts=child(self))
        # No egress rule: an endpoint ENI only answers (security groups are stateful).
        aws.vpc.SecurityGroupIngressRule(f"{name}-sg-in-members-{HTTPS_PORT}", security_group_id=group.id,
                                         ip_protocol="tcp", from_port=HTTPS_PORT, to_port=HTTPS_PORT,
                                         referenced_security_group_id=node_security_group_id,
                                         description="AWS APIs from the cluster members", opts=child(self))
        # The members' side (their group's other egress is pgha.infra.security's).
        aws.vpc.SecurityGroupEgressRule(f"{name}-members-out-{HTTPS_PORT}", security_group_id=node_security_group_id,
                                        ip_protocol="tcp", from_port=HTTPS_PORT, to_port=HTTPS_PORT,
                                        referenced_security_group_id=group.id,
                                        description="AWS APIs through the interface endpoints", opts=child(self))
        subnets = [subnet_ids[index] for index in endpoint_subnet_indexes(spec)]
        self.endpoint_ids = {}
        for service in INTERFACE_SERVICES:
            endpoint = aws.ec2.VpcEndpoint(
                f"{name}-{service}", vpc_id=vpc_id, vpc_endpoint_type="Interface",
                service_name=endpoint_service_name(spec.region, service), private_dns_enabled=True,
                subnet_ids=subnets, security_group_ids=[group.id],
                tags=cluster_tags(spec, Name=f"{spec.cluster_name}-{service}"), opts=child(self))
            self.endpoint_ids[service] = endpoint.id
        self.security_group_id = group.id
        self.register_outputs({"security_group_id": group.id, **self.endpoint_ids})
