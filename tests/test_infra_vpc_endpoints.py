"""Interface endpoints (security.md #31) under the mock runtime: one per AWS API the members
call, private DNS, an ENI in each member's AZ, a security group of their own; the VPC the user
brings (``create`` there, ``existing``, ``none``); the cost the README states."""

import ast
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import infra_mocks
from infra_mocks import REGION, REGION_AZS, Run, run_program
from pgha.infra import PostgresCluster
from pgha.infra.vpc_endpoints import INTERFACE_SERVICES, endpoint_service_name
from pgha.plan.cost import monthly_cost, price_table
from pgha.spec import SpecError, build_spec

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
# An image with the node packages (a narrower packageMirrorCidrs needs one).
OWN_IMAGE = "ami-0123456789abcdef0"
GIVEN = {"vpc_id": "vpc-0123456789abcdef0",
         "subnet_ids": ["subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"]}


def cluster(network: dict[str, Any] | None = None, **extra: Any) -> Run:
    return run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-ep", "network": network or {}, **extra}))


def failing_run(program: Callable[[], Any]) -> tuple[SpecError, Run]:
    with pytest.raises(SpecError) as caught:
        run_program(program)
    return caught.value, caught.value.pgha_run  # type: ignore[attr-defined]


def interface_endpoints(run: Run) -> dict[str, dict[str, Any]]:
    """Service (last part of the service name) -> inputs, for the Interface endpoints only."""
    return {r.inputs["serviceName"].rsplit(".", 1)[1]: r.inputs for r in run.of_type(ENDPOINT)
            if r.inputs["vpcEndpointType"] == "Interface"}


@pytest.fixture(scope="module")
def run() -> Run:
    return cluster()


@pytest.fixture
def given_vpc() -> Iterator[None]:
    """The given VPC's attributes and endpoints, restored after the test."""
    vpc, endpoints = dict(infra_mocks.EXISTING_VPC), dict(infra_mocks.EXISTING_VPC_ENDPOINTS)
    yield
    infra_mocks.EXISTING_VPC.clear()
    infra_mocks.EXISTING_VPC.update(vpc)
    infra_mocks.EXISTING_VPC_ENDPOINTS.clear()
    infra_mocks.EXISTING_VPC_ENDPOINTS.update(endpoints)


def test_one_interface_endpoint_per_service_with_private_dns_in_every_member_az(run: Run) -> None:
    found = interface_endpoints(run)
    assert sorted(found) == sorted(INTERFACE_SERVICES) == ["logs", "secretsmanager", "ssm"]
    private = [r.name for r in run.of_type("aws:ec2/subnet:Subnet") if "-private-" in r.name]
    assert len(private) == 3
    for service, inputs in found.items():
        assert inputs["serviceName"] == f"com.amazonaws.{REGION}.{service}"
        assert inputs["privateDnsEnabled"] is True, service
        assert inputs["vpcId"] == "db-network-vpc-id"
        # One ENI per AZ: the three private subnets, one each.
        assert sorted(inputs["subnetIds"]) == sorted(f"{name}-id" for name in private)
        assert inputs["securityGroupIds"] == ["db-api-sg-id"]
    # The S3 gateway endpoint is still the one for S3 (free, on the private route tables).
    gateways = [r.inputs for r in run.of_type(ENDPOINT) if r.inputs["vpcEndpointType"] == "Gateway"]
    assert [g["serviceName"] for g in gateways] == [f"com.amazonaws.{REGION}.s3"]


def test_endpoint_group_admits_https_from_the_members_only(run: Run) -> None:
    group = run.one("aws:ec2/securityGroup:SecurityGroup", "db-api-sg")
    assert group.inputs["vpcId"] == "db-network-vpc-id"
    ingress = [r.inputs for r in run.of_type(INGRESS) if r.inputs["securityGroupId"] == "db-api-sg-id"]
    assert ingress == [{**ingress[0], "ipProtocol": "tcp", "fromPort": 443, "toPort": 443,
                        "referencedSecurityGroupId": "db-sg-nodes-id"}]
    assert "cidrIpv4" not in ingress[0] and "cidrIpv6" not in ingress[0]
    # It sends nothing of its own; and nobody else's group names it as a source.
    assert not [r for r in run.of_type(EGRESS) if r.inputs["securityGroupId"] == "db-api-sg-id"]
    assert not [r for r in run.of_type(INGRESS) if r.inputs.get("referencedSecurityGroupId") == "db-api-sg-id"]


def test_members_boot_after_the_endpoints_exist(run: Run) -> None:
    endpoints = [r.urn for r in run.of_type(ENDPOINT) if r.inputs["vpcEndpointType"] == "Interface"]
    assert len(endpoints) == len(INTERFACE_SERVICES)
    for instance in run.of_type("aws:ec2/instance:Instance"):
        assert set(endpoints) <= set(instance.dependencies), instance.name


def test_the_role_s_deny_changes_only_after_the_endpoints_exist(run: Run) -> None:
    """A running cluster turning endpoints on: its members keep the NAT path until they are there."""
    endpoints = [r.urn for r in run.of_type(ENDPOINT) if r.inputs["vpcEndpointType"] == "Interface"]
    policy = run.one("aws:iam/rolePolicy:RolePolicy", "db-role-access")
    assert endpoints and set(endpoints) <= set(policy.dependencies)


def test_none_declares_no_interface_endpoint() -> None:
    run = cluster({"vpc_endpoints": "none"})
    assert interface_endpoints(run) == {}
    assert not [r for r in run.resources if r.type == "pgha:infra:InterfaceEndpoints"]


def test_given_vpc_create_puts_the_endpoints_in_the_given_subnets() -> None:
    run = cluster(GIVEN)
    found = interface_endpoints(run)
    assert sorted(found) == sorted(INTERFACE_SERVICES)
    for inputs in found.values():
        assert inputs["vpcId"] == GIVEN["vpc_id"] and inputs["privateDnsEnabled"] is True
        assert inputs["subnetIds"] == GIVEN["subnet_ids"]
    # pgha adds no S3 gateway to route tables it does not own.
    assert [r.inputs["vpcEndpointType"] for r in run.of_type(ENDPOINT)] == ["Interface"] * 3


@pytest.mark.usefixtures("given_vpc")
def test_given_vpc_without_dns_hostnames_cannot_have_private_dns_endpoints() -> None:
    infra_mocks.EXISTING_VPC["enable_dns_hostnames"] = False
    error, run = failing_run(lambda: PostgresCluster("db", {"network": GIVEN}))
    assert len(error.problems) == 1 and run.resources == []
    text = str(error)
    assert "network.vpc_endpoints" in text and '"create"' in text and "enableDnsHostnames" in text


@pytest.mark.usefixtures("given_vpc")
def test_given_vpc_existing_endpoints_are_checked_and_none_is_declared() -> None:
    for service in INTERFACE_SERVICES:
        infra_mocks.EXISTING_VPC_ENDPOINTS[endpoint_service_name(REGION, service)] = ("Interface", True)
    run = cluster({**GIVEN, "vpc_endpoints": "existing"})
    assert run.of_type(ENDPOINT) == []
    asked = sorted(c[1]["serviceName"] for c in run.calls if c[0] == "aws:ec2/getVpcEndpoint:getVpcEndpoint")
    assert asked == sorted(endpoint_service_name(REGION, s) for s in INTERFACE_SERVICES)


@pytest.mark.usefixtures("given_vpc")
def test_given_vpc_existing_refused_when_an_endpoint_is_missing_or_has_no_private_dns() -> None:
    infra_mocks.EXISTING_VPC_ENDPOINTS[endpoint_service_name(REGION, "secretsmanager")] = ("Interface", True)
    infra_mocks.EXISTING_VPC_ENDPOINTS[endpoint_service_name(REGION, "ssm")] = ("Interface", False)
    error, run = failing_run(lambda: PostgresCluster("db", {"network": {**GIVEN, "vpc_endpoints": "existing"}}))
    assert run.resources == []
    messages = [p.allowed for p in error.problems]
    assert len(messages) == 2, messages
    assert any(f"{REGION}.ssm" in m for m in messages) and any(f"{REGION}.logs" in m for m in messages)
    assert all("private DNS" in m and "use create or none" in m for m in messages)


def test_existing_needs_a_given_vpc() -> None:
    with pytest.raises(SpecError) as caught:
        build_spec({"network": {"vpc_endpoints": "existing"}}, stack="dev", region=REGION, region_azs=REGION_AZS,
                   style="args")
    (problem,) = caught.value.problems
    assert problem.path == ("network", "vpcEndpoints") and "needs network.vpcId" in problem.allowed


ENDPOINTS_COST = "VPC interface endpoints"


def test_a_branch_defaults_to_none_and_a_regional_cluster_to_create() -> None:
    branch = {"stack_kind": "branch", "branch": {"source_bucket": "src-bucket", "source_stanza": "pg-src",
                                                 "source_key_arn": "arn:aws:kms:us-east-1:123456789012:key/k"}}
    spec = build_spec(branch, stack="feature", region=REGION, region_azs=REGION_AZS, style="args")
    assert spec.network.vpc_endpoints == "none"
    assert ENDPOINTS_COST not in {line.item for line in monthly_cost(spec).lines}
    regional = build_spec({}, stack="dev", region=REGION, region_azs=REGION_AZS, style="args")
    assert regional.network.vpc_endpoints == "create"


def test_readme_states_the_cost_of_create() -> None:
    regional = build_spec({}, stack="dev", region=REGION, region_azs=REGION_AZS, style="args")
    (cost,) = [line.monthly_usd for line in monthly_cost(regional).lines if line.item == ENDPOINTS_COST]
    hourly = price_table().regions[REGION]["interface_endpoint_hour"]
    assert cost == pytest.approx(len(INTERFACE_SERVICES) * 3 * hourly * 730)
    readme = (ROOT / "README.md").read_text()
    assert f"${cost:.2f}" in readme


def agent_aws_services() -> set[str]:
    """Every AWS service a member's code names: boto3 clients and hand-built https://<svc>.<region> URLs."""
    found: set[str] = set()
    for path in (ROOT / "components" / "agent").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
        found |= set(re.findall(r"https://([a-z0-9-]+)\.\{", path.read_text()))
    return found


def test_every_aws_api_the_members_call_has_an_endpoint_in_the_vpc() -> None:
    """If the agent starts calling another service, the role's Deny would refuse it from the
    members (no endpoint, so not from the VPC): this fails first."""
    services = agent_aws_services()
    assert {"secretsmanager", "ssm", "s3"} <= services, services
    assert services <= set(INTERFACE_SERVICES) | {"s3"}, services - set(INTERFACE_SERVICES)


def node_egress(run: Run) -> list[dict[str, Any]]:
    return [r.inputs for r in run.of_type(EGRESS) if r.inputs["securityGroupId"] == "db-sg-nodes-id"]


def beyond_the_group(rule: dict[str, Any]) -> tuple[str, str]:
    """Where a members' egress rule leads other than to the members: (kind, target)."""
    for kind in ("cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId"):
        if kind in rule:
            return kind, rule[kind]
    raise AssertionError(rule)


def test_with_endpoints_each_aws_destination_has_its_own_https_rule(run: Run) -> None:
    out = {beyond_the_group(r): (r["fromPort"], r["toPort"]) for r in node_egress(run)
           if r.get("referencedSecurityGroupId") != "db-sg-nodes-id"}
    assert out == {("referencedSecurityGroupId", "db-api-sg-id"): (443, 443),        # the interface endpoints
                   ("prefixListId", infra_mocks.S3_PREFIX_LIST): (443, 443),         # S3 (its gateway)
                   ("cidrIpv4", "0.0.0.0/0"): (443, 443)}                            # Debian's mirrors (default)
    asked = [c[1] for c in run.calls if c[0] == "aws:ec2/getPrefixList:getPrefixList"]
    assert asked == [{"name": f"com.amazonaws.{REGION}.s3"}]


def test_package_mirror_cidrs_replace_the_internet() -> None:
    run = cluster({"package_mirror_cidrs": ["10.0.5.0/24"]}, ami_id=OWN_IMAGE)
    targets = {beyond_the_group(r) for r in node_egress(run)}
    assert ("cidrIpv4", "10.0.5.0/24") in targets
    assert not [t for t in targets if t[0] in ("cidrIpv4", "cidrIpv6") and t[1] != "10.0.5.0/24"], targets
    # An image with every package: no egress beyond the VPC and S3 at all.
    sealed = {beyond_the_group(r)[0] for r in node_egress(cluster({"package_mirror_cidrs": []}, ami_id=OWN_IMAGE))}
    assert sealed == {"referencedSecurityGroupId", "prefixListId"}


def test_without_endpoints_the_internet_rule_carries_the_aws_apis() -> None:
    out = {beyond_the_group(r) for r in node_egress(cluster({"vpc_endpoints": "none"}))}
    assert out == {("referencedSecurityGroupId", "db-sg-nodes-id"), ("cidrIpv4", "0.0.0.0/0")}


@pytest.mark.usefixtures("given_vpc")
def test_given_vpc_existing_endpoints_are_reached_by_the_vpc_cidr() -> None:
    for service in INTERFACE_SERVICES:
        infra_mocks.EXISTING_VPC_ENDPOINTS[endpoint_service_name(REGION, service)] = ("Interface", True)
    run = cluster({**GIVEN, "vpc_endpoints": "existing", "package_mirror_cidrs": []}, ami_id=OWN_IMAGE)
    out = {beyond_the_group(r) for r in node_egress(run)}
    assert out == {("referencedSecurityGroupId", "db-sg-nodes-id"), ("prefixListId", infra_mocks.S3_PREFIX_LIST),
                   ("cidrIpv4", infra_mocks.EXISTING_VPC["cidr_block"])}


def test_package_mirror_cidrs_need_the_endpoints() -> None:
    with pytest.raises(SpecError) as caught:
        build_spec({"network": {"vpc_endpoints": "none", "package_mirror_cidrs": ["10.0.5.0/24"]},
                    "ami_id": OWN_IMAGE}, stack="dev", region=REGION, region_azs=REGION_AZS, style="args")
    (problem,) = caught.value.problems
    assert problem.path == ("network", "packageMirrorCidrs") and "use create or existing" in problem.allowed


@pytest.mark.parametrize("cidrs", [[], ["10.0.5.0/24"]])
def test_narrower_package_mirror_cidrs_need_an_image_of_one_s_own(cidrs: list[str]) -> None:
    """The official Debian AMI has none of the node packages and names deb.debian.org (a CDN)."""
    error, run = failing_run(lambda: PostgresCluster("db", {"network": {"package_mirror_cidrs": cidrs}}))
    (problem,) = error.problems
    assert run.resources == []
    assert problem.path == ("network", "packageMirrorCidrs") and "needs amiId" in problem.allowed
