"""The VPC side: create a VPC with a private subnet per AZ, or adopt an existing one.

Member IPs are fixed (``member_ip``), so the subnet CIDRs must be known while the program
runs: for a created VPC they come from the spec, for an existing one from an invoke per
subnet made before anything is declared.
"""

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec, Member, Problem, SpecError, member_ip, member_ip_problems
from .common import child, cluster_tags
from .vpc_endpoints import INTERFACE_SERVICES, endpoint_service_name


@dataclass(frozen=True)
class ExistingNetwork:
    """What the invokes found out about a given VPC and its subnets (AZ order)."""

    vpc_id: str
    vpc_cidr: str
    subnet_ids: tuple[str, ...]
    subnet_cidrs: tuple[str, ...]


@dataclass(frozen=True)
class NetworkRefs:
    """Where the cluster lives: one private subnet per AZ of the spec, in AZ order."""

    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    subnet_ids: tuple[pulumi.Input[str], ...]
    subnet_cidrs: tuple[str, ...]
    # A VPC pgha created: the public addresses of its NAT gateways (the members' requests to
    # AWS APIs other than S3 come from them) and its S3 gateway endpoint. Unknown for a given
    # VPC, whose egress pgha does not manage.
    egress_ips: tuple[pulumi.Input[str], ...] = ()
    s3_endpoint_id: pulumi.Input[str] | None = None

    def subnet_of(self, member: Member) -> pulumi.Input[str]:
        return self.subnet_ids[member.az_index]

    def ip_of(self, member: Member) -> str:
        return member_ip(self.subnet_cidrs[member.az_index], member)


def lookup_existing(spec: ClusterSpec, *, invoke_opts: pulumi.InvokeOptions | None) -> ExistingNetwork:
    """Read the given VPC and subnets; raise SpecError if they don't fit the spec.

    The spec's rules (validate) cannot see a given subnet's AZ or CIDR; these checks run on
    what the invokes return, and report in the style of the spec's input.
    """
    key = ("network", "subnetIds")
    vpc_id = spec.network.vpc_id
    assert vpc_id is not None
    vpc = aws.ec2.get_vpc(id=vpc_id, opts=invoke_opts)
    problems: list[Problem] = []
    cidrs: list[str] = []
    for index, subnet_id in enumerate(spec.network.subnet_ids):
        subnet = aws.ec2.get_subnet(id=subnet_id, opts=invoke_opts)
        cidrs.append(subnet.cidr_block)
        if subnet.vpc_id != vpc_id:
            problems.append(Problem(key, subnet_id, f"belongs to {subnet.vpc_id}, not to network.vpcId {vpc_id}"))
        expected = spec.availability_zones[index]
        if subnet.availability_zone != expected:
            problems.append(Problem(key, subnet_id, f"is in {subnet.availability_zone}, but entry {index + 1} "
                                                    f"must be the subnet of {expected} (AZ order)"))
    problems += endpoint_problems(spec, vpc, invoke_opts=invoke_opts)
    if not problems:
        problems += member_ip_problems(spec, cidrs, key)
    if not problems:
        problems += addresses_in_use(spec, cidrs, key, invoke_opts=invoke_opts)
    if problems:
        raise SpecError(problems, spec.key_style)
    return ExistingNetwork(vpc_id=vpc_id, vpc_cidr=vpc.cidr_block, subnet_ids=tuple(spec.network.subnet_ids),
                           subnet_cidrs=tuple(cidrs))


def endpoint_problems(spec: ClusterSpec, vpc: aws.ec2.GetVpcResult, *,
                      invoke_opts: pulumi.InvokeOptions | None) -> list[Problem]:
    """What network.vpcEndpoints needs of a given VPC. ``create``: DNS support and hostnames
    (private DNS of an interface endpoint needs both). ``existing``: an available interface
    endpoint with private DNS for each of INTERFACE_SERVICES, since the role's Deny then refuses
    those calls from anywhere but the VPC (a missing one would fail every boot)."""
    key = ("network", "vpcEndpoints")
    mode = spec.network.vpc_endpoints
    if mode == "create" and not (vpc.enable_dns_support and vpc.enable_dns_hostnames):
        return [Problem(key, mode, f"creates endpoints with private DNS, which needs enableDnsSupport and "
                                   f"enableDnsHostnames on {vpc.id}: turn them on, or use none")]
    if mode != "existing":
        return []
    problems = []
    for service in INTERFACE_SERVICES:
        name = endpoint_service_name(spec.region, service)
        try:
            found = aws.ec2.get_vpc_endpoint(vpc_id=vpc.id, service_name=name, state="available", opts=invoke_opts)
        except Exception:  # noqa: BLE001 - the invoke's error when no endpoint matches
            found = None
        if found is None or found.vpc_endpoint_type != "Interface" or not found.private_dns_enabled:
            problems.append(Problem(key, mode, f"{vpc.id} has no available interface endpoint with private DNS "
                                               f"for {name}: create one, or use create or none"))
    return problems


def addresses_in_use(spec: ClusterSpec, cidrs: list[str], key: tuple[str, ...], *,
                     invoke_opts: pulumi.InvokeOptions | None) -> list[Problem]:
    """Members' fixed addresses that another network interface of the adopted subnets holds
    (EC2 refuses the ENI half way through `up`). This cluster's own ENIs (its tag) are fine:
    they hold the addresses on every later `up`."""
    wanted = {member_ip(cidrs[m.az_index], m): m.name for m in spec.members}
    found = aws.ec2.get_network_interfaces(
        filters=[{"name": "subnet-id", "values": list(spec.network.subnet_ids)},
                 {"name": "addresses.private-ip-address", "values": sorted(wanted)}], opts=invoke_opts)
    problems = []
    for eni_id in sorted(found.ids):
        eni = aws.ec2.get_network_interface(id=eni_id, opts=invoke_opts)
        if (eni.tags or {}).get("pgha:cluster") == spec.cluster_name:
            continue
        for ip in sorted({eni.private_ip, *eni.private_ips} & wanted.keys()):
            problems.append(Problem(key, ip, f"{wanted[ip]}'s fixed address (host {ip.rsplit('.', 1)[1]} of its "
                                             f"subnet) is in use by {eni_id} ({eni.description or 'no description'}); "
                                             "free it or give subnets where it is free"))
    return problems


class Network(pulumi.ComponentResource):
    """A VPC for the cluster: private subnets (members, NLB), NAT for egress, an S3 gateway endpoint.

    ``network.nat_gateways`` is ``per-az`` (one NAT gateway per AZ: egress survives an AZ
    outage) or ``single`` (one shared gateway: cheaper, egress depends on one AZ).
    """

    vpc_id: pulumi.Output[str]
    refs: NetworkRefs

    def __init__(self, name: str, *, spec: ClusterSpec, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:Network", name, None, opts)
        net = spec.network
        tags = lambda label: cluster_tags(spec, Name=f"{spec.cluster_name}-{label}")  # noqa: E731

        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=net.vpc_cidr, enable_dns_support=True,
                          enable_dns_hostnames=True, tags=tags("vpc"), opts=child(self))
        # Adopt the default security group and strip its rules so nothing can use it by accident.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, tags=tags("default-unused"),
                                     opts=child(self))

        private = []
        for index, (az, cidr) in enumerate(zip(spec.availability_zones, spec.private_subnet_cidrs)):
            private.append(aws.ec2.Subnet(f"{name}-private-{index + 1}", vpc_id=vpc.id, cidr_block=cidr,
                                          availability_zone=az, map_public_ip_on_launch=False,
                                          tags=tags(f"private-{az}"), opts=child(self)))

        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags("igw"), opts=child(self))
        public_rt = aws.ec2.RouteTable(f"{name}-public-rt", vpc_id=vpc.id, tags=tags("public"), opts=child(self))
        aws.ec2.Route(f"{name}-public-default", route_table_id=public_rt.id, destination_cidr_block="0.0.0.0/0",
                      gateway_id=igw.id, opts=child(self))

        nat_count = spec.nat_gateway_count
        nats = []
        eips = []
        for index in range(nat_count):
            az = spec.availability_zones[index]
            public = aws.ec2.Subnet(f"{name}-public-{index + 1}", vpc_id=vpc.id,
                                    cidr_block=spec.public_subnet_cidrs[index], availability_zone=az,
                                    map_public_ip_on_launch=False, tags=tags(f"public-{az}"), opts=child(self))
            aws.ec2.RouteTableAssociation(f"{name}-public-assoc-{index + 1}", subnet_id=public.id,
                                          route_table_id=public_rt.id, opts=child(self))
            eip = aws.ec2.Eip(f"{name}-nat-eip-{index + 1}", domain="vpc", tags=tags(f"nat-{az}"), opts=child(self))
            eips.append(eip)
            nats.append(aws.ec2.NatGateway(f"{name}-nat-{index + 1}", allocation_id=eip.id, subnet_id=public.id,
                                           tags=tags(f"nat-{az}"), opts=child(self, depends_on=[igw])))

        route_tables = []
        for index, subnet in enumerate(private):
            nat = nats[index if net.nat_gateways == "per-az" else 0]
            rt = aws.ec2.RouteTable(f"{name}-private-rt-{index + 1}", vpc_id=vpc.id,
                                    tags=tags(f"private-{spec.availability_zones[index]}"), opts=child(self))
            aws.ec2.Route(f"{name}-private-default-{index + 1}", route_table_id=rt.id,
                          destination_cidr_block="0.0.0.0/0", nat_gateway_id=nat.id, opts=child(self))
            aws.ec2.RouteTableAssociation(f"{name}-private-assoc-{index + 1}", subnet_id=subnet.id, route_table_id=rt.id,
                                          opts=child(self))
            route_tables.append(rt)

        # Backups and WAL archives go to S3 through the free gateway endpoint, not the NAT gateways.
        s3_endpoint = aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=vpc.id, vpc_endpoint_type="Gateway",
                            service_name=endpoint_service_name(spec.region, "s3"),
                            route_table_ids=[rt.id for rt in route_tables], tags=tags("s3"), opts=child(self))

        self.vpc_id = vpc.id
        self.refs = NetworkRefs(vpc_id=vpc.id, vpc_cidr=net.vpc_cidr, subnet_ids=tuple(s.id for s in private),
                                subnet_cidrs=tuple(spec.private_subnet_cidrs),
                                egress_ips=tuple(e.public_ip for e in eips), s3_endpoint_id=s3_endpoint.id)
        self.register_outputs({"vpc_id": vpc.id})


def planned_member_ips(spec: ClusterSpec) -> dict[str, str]:
    """Each member's fixed IP in a VPC pgha creates (the ones ``Network``'s subnets give it)."""
    if not spec.network.creates_vpc:
        raise ValueError("a given VPC's member IPs depend on its subnets: look them up (lookup_existing)")
    return {m.name: member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.members}


def existing_refs(found: ExistingNetwork) -> NetworkRefs:
    """NetworkRefs of a VPC pgha does not manage."""
    return NetworkRefs(vpc_id=found.vpc_id, vpc_cidr=found.vpc_cidr, subnet_ids=found.subnet_ids,
                       subnet_cidrs=found.subnet_cidrs)
