"""How clients find the cluster: an internal NLB on the HAProxy ports and private DNS names.

Every member runs HAProxy on 5433/5434/5436/5438 and routes each port to the right
PostgreSQL (Pigsty's services), so the NLB forwards each port to every member's fixed IP
(target type ``ip``) and health-checks that same port. Route53 names:
``pg-name-<n>.<zone>`` -> member IPs, ``pg-name-<service>.<zone>`` -> the NLB.
"""

from typing import Mapping, Sequence

import pulumi
import pulumi_aws as aws

from ..spec import PORTS, SERVICES, ClusterSpec
from .common import child, cluster_tags
from .names import load_balancer_name, target_group_name


class Endpoints(pulumi.ComponentResource):
    """Internal NLB (cross-zone), target groups, listeners and the private hosted zone."""

    nlb_dns_name: pulumi.Output[str]
    zone_id: pulumi.Output[str]
    zone_name: str

    def __init__(self, name: str, *, spec: ClusterSpec, vpc_id: pulumi.Input[str],
                 subnet_ids: Sequence[pulumi.Input[str]], lb_security_group_id: pulumi.Input[str],
                 member_ips: Mapping[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:Endpoints", name, None, opts)
        nlb = aws.lb.LoadBalancer(
            f"{name}-nlb", name=load_balancer_name(spec.cluster_name), internal=True, load_balancer_type="network", subnets=list(subnet_ids),
            security_groups=[lb_security_group_id], enable_cross_zone_load_balancing=True,
            # ELB.6: `pulumi destroy` (or a replacement) fails until it is turned off (README,
            # "Destroying a stack").
            enable_deletion_protection=True,
            tags=cluster_tags(spec, Name=f"{spec.cluster_name}-nlb"), opts=child(self, delete_before_replace=True))
        for service in SERVICES:
            port = PORTS[service]
            group = aws.lb.TargetGroup(
                f"{name}-{service}-tg", name=target_group_name(spec.cluster_name, service), port=port,
                protocol="TCP", target_type="ip", vpc_id=vpc_id,
                deregistration_delay=10, connection_termination=True,
                health_check={"protocol": "TCP", "port": "traffic-port", "interval": 10,
                              "healthy_threshold": 2, "unhealthy_threshold": 2},
                tags=cluster_tags(spec, Name=f"{spec.cluster_name}-{service}"),
                # A fixed name cannot exist twice: a replacement (a new VPC) deletes first.
                opts=child(self, delete_before_replace=True))
            for member_name, ip in member_ips.items():
                aws.lb.TargetGroupAttachment(f"{name}-{service}-tg-{member_name}", target_group_arn=group.arn,
                                             target_id=ip, port=port, opts=child(self))
            aws.lb.Listener(f"{name}-{service}-listener", load_balancer_arn=nlb.arn, port=port, protocol="TCP",
                            default_actions=[{"type": "forward", "target_group_arn": group.arn}], opts=child(self))

        zone = aws.route53.Zone(f"{name}-zone", name=spec.zone_name, comment=f"pgha {spec.cluster_name}",
                                vpcs=[{"vpc_id": vpc_id}], tags=cluster_tags(spec), opts=child(self))
        for member_name, ip in member_ips.items():
            aws.route53.Record(f"{name}-dns-{member_name}", zone_id=zone.zone_id, name=f"{member_name}.{spec.zone_name}",
                               type="A", ttl=60, records=[ip], opts=child(self))
        for service in SERVICES:
            aws.route53.Record(
                f"{name}-dns-{spec.service_name(service)}", zone_id=zone.zone_id,
                name=f"{spec.service_name(service)}.{spec.zone_name}", type="A",
                aliases=[{"name": nlb.dns_name, "zone_id": nlb.zone_id, "evaluate_target_health": True}],
                opts=child(self))

        self.nlb_dns_name = nlb.dns_name
        self.zone_id = zone.zone_id
        self.zone_name = spec.zone_name
        self.register_outputs({"nlb_dns_name": nlb.dns_name, "zone_id": zone.zone_id})
