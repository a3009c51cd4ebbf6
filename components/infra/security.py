"""Security groups: who may reach the members and the load balancer, on which ports.

* clients reach only the HAProxy service ports (5433/5434/5436/5438), plus 5432/6432 when
  ``network.expose_direct_ports``, from ``allowed_cidrs`` / ``allowed_security_group_ids``
  (the VPC CIDR when neither is given);
* members reach each other on MEMBER_PORTS (etcd, PostgreSQL, PgBouncer, Patroni) through a
  rule that references the members' own group;
* metrics ports only from ``monitoring_cidrs`` (no rule at all when empty); Patroni's REST API
  is not one of them (its metrics go through HAProxy's 9101), so only members reach 8008;
* the NLB's group forwards the service ports to the members (traffic and health checks);
* egress: 443 only, one rule per destination with endpoints (their group, S3's prefix list,
  packageMirrorCidrs), 443 to anywhere without (no port 80: the bootstrap points apt at
  Debian's mirrors over https), member ports between members;
* SSH (22) only from the EC2 Instance Connect Endpoint's own group, whose only egress is 22 to
  the members (pgha.infra.access); never 0.0.0.0/0 or ::/0 ingress.

Every rule is a separate ``aws.vpc.SecurityGroupIngressRule``/``EgressRule`` resource so a
changed source replaces one rule, not the group.
"""

import ipaddress

import pulumi
import pulumi_aws as aws

from .. import contract
from ..spec import CLIENT_PORTS, MEMBER_PORTS, METRICS_PORTS, PORTS, ClusterSpec
from .common import child, cluster_tags, port_ranges
from .vpc_endpoints import endpoint_service_name

DIRECT_PORTS: tuple[int, ...] = (PORTS["postgres"], PORTS["pgbouncer"])
EGRESS_PORTS: tuple[int, ...] = (443,)


def client_ports(spec: ClusterSpec) -> tuple[int, ...]:
    """The ports clients may reach on the members."""
    return CLIENT_PORTS + (DIRECT_PORTS if spec.network.expose_direct_ports else ())


class SecurityGroups(pulumi.ComponentResource):
    """The members' group, the NLB's group and the Instance Connect Endpoint's group, with every
    rule as its own resource."""

    node_sg_id: pulumi.Output[str]
    lb_sg_id: pulumi.Output[str]
    eice_sg_id: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, vpc_id: pulumi.Input[str], vpc_cidr: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:SecurityGroups", name, None, opts)
        net = spec.network
        node = aws.ec2.SecurityGroup(f"{name}-nodes", vpc_id=vpc_id,
                                     description=f"pgha {spec.cluster_name} members",
                                     tags=cluster_tags(spec, Name=f"{spec.cluster_name}-nodes"), opts=child(self))
        lb = aws.ec2.SecurityGroup(f"{name}-nlb", vpc_id=vpc_id, description=f"pgha {spec.cluster_name} NLB",
                                   tags=cluster_tags(spec, Name=f"{spec.cluster_name}-nlb"), opts=child(self))

        eice = aws.ec2.SecurityGroup(f"{name}-eice", vpc_id=vpc_id,
                                     description=f"pgha {spec.cluster_name} EC2 Instance Connect Endpoint",
                                     tags=cluster_tags(spec, Name=f"{spec.cluster_name}-eice"), opts=child(self))

        node_ref = (f"{name}-nodes", node.id)
        lb_ref = (f"{name}-nlb", lb.id)
        cidrs = list(net.allowed_cidrs)
        groups = list(net.allowed_security_group_ids)
        if not cidrs and not groups:
            cidrs = [vpc_cidr]

        # Clients -> members (HAProxy on every member, direct ports if asked) and -> NLB.
        for i, cidr in enumerate(cidrs):
            self._ingress(node_ref, f"client-cidr-{i}", client_ports(spec), cidr=cidr, what="clients")
            self._ingress(lb_ref, f"client-cidr-{i}", CLIENT_PORTS, cidr=cidr, what="clients")
        for i, group in enumerate(groups):
            self._ingress(node_ref, f"client-sg-{i}", client_ports(spec), group=group, what="clients")
            self._ingress(lb_ref, f"client-sg-{i}", CLIENT_PORTS, group=group, what="clients")

        # NLB -> members: forwarded connections and the TCP health checks, same ports.
        self._ingress(node_ref, "from-nlb", CLIENT_PORTS, group=lb.id, what="NLB traffic and health checks")
        self._egress(lb_ref, "to-nodes", CLIENT_PORTS, group=node.id, what="NLB to members")

        # Members <-> members.
        self._ingress(node_ref, "members", MEMBER_PORTS, group=node.id, what="cluster members")
        self._egress(node_ref, "members", MEMBER_PORTS, group=node.id, what="cluster members")

        # Operators' shells: EC2 Instance Connect Endpoint -> members' sshd, and nothing else.
        eice_ref = (f"{name}-eice", eice.id)
        self._ingress(node_ref, "from-eice", (contract.SSH_PORT,), group=eice.id,
                      what="sshd from the EC2 Instance Connect Endpoint")
        self._egress(eice_ref, "to-nodes", (contract.SSH_PORT,), group=node.id,
                     what="EC2 Instance Connect Endpoint to members' sshd")

        for i, cidr in enumerate(net.monitoring_cidrs):
            self._ingress(node_ref, f"metrics-{i}", METRICS_PORTS, cidr=cidr, what="monitoring")

        # HTTPS only. Without endpoints the AWS APIs are on the internet, so 443 to all of it. With
        # them: S3 (its gateway, or a given VPC's path) by AWS's prefix list, a given VPC's own
        # endpoints by its CIDR (pgha's get a rule from pgha.infra.vpc_endpoints), and Debian's
        # mirrors where packageMirrorCidrs says (default anywhere: a CDN has no fixed addresses).
        if not net.through_endpoints:
            for port in EGRESS_PORTS:
                self._egress(node_ref, f"internet-{port}", (port,), cidr="0.0.0.0/0", what="packages and AWS APIs")
        else:
            s3 = aws.ec2.get_prefix_list(name=endpoint_service_name(spec.region, "s3"),
                                         opts=pulumi.InvokeOptions(parent=self))
            self._egress(node_ref, "s3", EGRESS_PORTS, prefix_list=s3.id, what="S3 (pgBackRest, node files)")
            if net.vpc_endpoints == "existing":
                self._egress(node_ref, "vpc-endpoints", EGRESS_PORTS, cidr=vpc_cidr, what="the VPC's AWS API endpoints")
            for i, cidr in enumerate(net.package_mirror_cidrs):
                label = f"internet-{EGRESS_PORTS[0]}" if cidr == "0.0.0.0/0" else f"mirror-{i}"
                self._egress(node_ref, label, EGRESS_PORTS, cidr=cidr, what="Debian's mirrors (apt)")

        self.node_sg_id = node.id
        self.lb_sg_id = lb.id
        self.eice_sg_id = eice.id
        self.register_outputs({"node_sg_id": node.id, "lb_sg_id": lb.id, "eice_sg_id": eice.id})

    def _ingress(self, sg: tuple[str, pulumi.Input[str]], label: str, ports: tuple[int, ...], *,
                 cidr: str | None = None, group: pulumi.Input[str] | None = None, what: str) -> None:
        self._rules(aws.vpc.SecurityGroupIngressRule, f"{sg[0]}-in-{label}", sg[1], ports, cidr, group, what)

    def _egress(self, sg: tuple[str, pulumi.Input[str]], label: str, ports: tuple[int, ...], *,
                cidr: str | None = None, group: pulumi.Input[str] | None = None,
                prefix_list: str | None = None, what: str) -> None:
        self._rules(aws.vpc.SecurityGroupEgressRule, f"{sg[0]}-out-{label}", sg[1], ports, cidr, group, what,
                    prefix_list=prefix_list)

    def _rules(self, rule: type[aws.vpc.SecurityGroupIngressRule] | type[aws.vpc.SecurityGroupEgressRule],
               prefix: str, sg_id: pulumi.Input[str], ports: tuple[int, ...], cidr: str | None,
               group: pulumi.Input[str] | None, what: str, *, prefix_list: str | None = None) -> None:
        """One rule per contiguous port range, from a CIDR, a security group or a prefix list."""
        network = ipaddress.ip_network(cidr, strict=False) if group is None and cidr is not None else None
        if group is None and network is None and prefix_list is None:
            raise ValueError(f"{prefix}: a rule needs a CIDR, a security group or a prefix list")
        for low, high in port_ranges(ports):
            rule(f"{prefix}-{low}", security_group_id=sg_id, ip_protocol="tcp", from_port=low, to_port=high,
                 description=what, referenced_security_group_id=group, prefix_list_id=prefix_list,
                 cidr_ipv4=str(network) if network is not None and network.version == 4 else None,
                 cidr_ipv6=str(network) if network is not None and network.version == 6 else None,
                 opts=child(self))
