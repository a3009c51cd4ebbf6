"""Bad input fails with its message before anything is declared; the stack program and config."""

import json
import runpy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from infra_mocks import REGION, REGION_AZS, Run, resolve, run_program
from pgha.infra import PostgresCluster
from pgha.spec import SpecError, build_spec
from pgha.spec.stackfile import pgha_values, read_stack_config
from pgha.spec.validate import TOP_KEYS

ROOT = Path(__file__).resolve().parent.parent


def failing_run(program: Callable[[], Any], **kwargs: Any) -> tuple[SpecError, Run]:
    """Run a program that must raise SpecError; return the error and what was declared."""
    with pytest.raises(SpecError) as caught:
        run_program(program, **kwargs)
    return caught.value, caught.value.pgha_run  # type: ignore[attr-defined]


BAD_ARGS: list[tuple[dict[str, Any], str]] = [
    ({"arch": "sparc"}, "arch"),
    ({"instance_type": "r8g.large", "arch": "x86_64"}, "is arm64, but pgha:arch is x86_64"),
    ({"storage": {"kind": "metal"}, "instance_type": "r8g.large"}, "NVMe"),
    ({"storage": {"kind": "ebs", "size_gib": 0}}, "storage.size_gib"),
    ({"replicas": 9}, "replicas"),
    ({"availability_zones": ["us-east-1a", "us-east-1a", "us-east-1b"]}, "three distinct"),
    ({"availability_zones": ["eu-west-1a", "eu-west-1b", "eu-west-1c"]}, "not in region us-east-1"),
    ({"postgres_version": 12}, "postgres_version"),
    ({"network": {"allowed_cidrs": ["0.0.0.0/0"]}}, "whole internet"),
    ({"network": {"monitoring_cidrs": ["::/0"]}}, "whole internet"),
    ({"network": {"vpc_id": "vpc-0123456789abcdef0"}}, "one private subnet per availability zone"),
    ({"parameters": {"archive_command": "true"}}, "pgha sets the commands it needs"),
    ({"clusterName": "camel"}, "unknown key"),
    ({"cluster_name": "Bad_Name"}, "cluster_name"),
    ({"network": {"vpc_cidr": "10.42.0.0/24"}, "replicas": 5}, "from /16 to /22"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS)
def test_bad_args_declare_nothing(args: dict[str, Any], message: str) -> None:
    error, run = failing_run(lambda: PostgresCluster("db", args))
    assert message in str(error)
    assert run.resources == [], [r.type for r in run.resources]


def test_every_problem_is_reported_at_once() -> None:
    error, run = failing_run(lambda: PostgresCluster("db", {"arch": "sparc", "replicas": -1, "rto": "slow"}))
    assert len(error.problems) == 3 and run.resources == []


def test_existing_subnets_in_wrong_azs_declare_nothing() -> None:
    error, run = failing_run(lambda: PostgresCluster("db", {"network": {
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_ids": ["subnet-0000000000000000b", "subnet-0000000000000000a", "subnet-0000000000000000c"]}}))
    assert "must be the subnet of us-east-1a" in str(error) and run.resources == []


def test_existing_subnet_too_small_declares_nothing() -> None:
    error, run = failing_run(lambda: PostgresCluster("db", {"replicas": 5, "network": {
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_ids": ["subnet-0000000000000000a", "subnet-0000000000000000f", "subnet-0000000000000000c"]}}))
    assert "too small" in str(error) and run.resources == []


def run_main(config: dict[str, str]) -> Run:
    return run_program(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"), config=config)


def test_main_program_deploys_the_dev_stack() -> None:
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    config = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in stack.items()}
    run = run_main(config)
    instances = run.of_type("aws:ec2/instance:Instance")
    assert len(instances) == 3 and {i.inputs["instanceType"] for i in instances} == {"t4g.medium"}
    volumes = run.of_type("aws:ebs/volume:Volume")
    assert {(v.inputs["type"], v.inputs["size"]) for v in volumes} == {("gp3", 20)}
    (cluster,) = run.of_type("pgha:index:PostgresCluster")
    assert cluster.name == "pg-dev"


def test_main_program_rejects_unknown_and_bad_keys() -> None:
    error, run = failing_run(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"),
                             config={"pgha:replicas": "seven", "pgha:colour": "blue",
                                     "pgha:storage": json.dumps({"kind": "ebs", "sizeGb": 10})})
    text = str(error)
    assert "pgha:replicas" in text and "pgha:colour" in text and "pgha:storage.sizeGb" in text
    assert "did you mean sizeGiB" in text
    assert run.resources == []


def test_stacks_registry_and_region_lookup() -> None:
    import pgha.stacks

    assert set(pgha.stacks.REGISTRY) == {"regional", "branch"}
    run = run_program(lambda: pgha.stacks.deploy({"clusterName": "pg-reg"}, stack="dev"), region=None)
    assert "aws:index/getRegion:getRegion" in [c[0] for c in run.calls]
    assert run.of_type("pgha:index:PostgresCluster")


def test_pulumi_yaml_declares_every_key_with_spec_defaults() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "pgha"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    declared = project["config"]
    assert set(declared) == set(TOP_KEYS)
    for key, decl in declared.items():
        assert "default" in decl and decl.get("description"), key
        assert decl.get("type", "object") in ("string", "integer", "boolean", "array", "object"), key
        if decl.get("type") == "array":
            assert decl["items"] == {"type": "string"}
    # The defaults, as Pulumi hands them to the program, build the same spec as no config at all.
    config = {f"pgha:{k}": (json.dumps(d["default"]) if isinstance(d["default"], (dict, list)) else str(d["default"]))
              for k, d in declared.items()}
    # __main__.py hands the CLI's config through pgha_values, which drops these "not set" defaults.
    values = pgha_values(config)
    assert build_spec(values, stack="dev", region=REGION, region_azs=REGION_AZS) == \
        build_spec({}, stack="dev", region=REGION, region_azs=REGION_AZS)


def test_component_outputs_without_spec_error() -> None:
    run = run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-out"}))
    ca, secret = resolve(run.result.ca_cert_pem)
    assert ca.startswith("-----BEGIN CERTIFICATE-----") and not secret


def test_stack_files_read_offline_match_what_the_cli_would_hand_over() -> None:
    values, region = read_stack_config(ROOT, "dev")
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    cli = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in stack.items()}
    assert region == stack["aws:region"]
    assert build_spec(values, stack="dev", region=REGION, region_azs=REGION_AZS) == \
        build_spec(pgha_values(cli), stack="dev", region=REGION, region_azs=REGION_AZS)


@pytest.fixture
def r8g_gone_from_b(monkeypatch: pytest.MonkeyPatch) -> None:
    import infra_mocks

    offered = {zone: set(types) for zone, types in infra_mocks.OFFERINGS.items()}
    offered["us-east-1b"].discard("r8g.large")
    monkeypatch.setattr(infra_mocks, "OFFERINGS", offered)


def test_a_type_not_offered_in_a_chosen_az_declares_nothing(r8g_gone_from_b: None) -> None:
    error, run = failing_run(lambda: PostgresCluster("db", {
        "instance_type": "r8g.large", "availability_zones": ["us-east-1a", "us-east-1b", "us-east-1c"]}))
    assert "r8g.large is not offered in us-east-1b; it is offered in us-east-1a, us-east-1c, us-east-1d" in str(error)
    assert run.resources == []


def test_the_program_places_members_in_azs_that_offer_the_type(r8g_gone_from_b: None) -> None:
    run = run_main({"pgha:instanceType": "r8g.large"})
    subnets = {r.inputs["availabilityZone"] for r in run.of_type("aws:ec2/subnet:Subnet")}
    assert subnets == {"us-east-1a", "us-east-1c", "us-east-1d"}


EXISTING_NETWORK = {"vpc_id": "vpc-0123456789abcdef0",
                    "subnet_ids": ["subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"]}


def test_an_address_another_interface_holds_declares_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import infra_mocks

    # pg-db-2's fixed address (host 12 of 10.9.1.0/24) belongs to someone else's interface.
    monkeypatch.setattr(infra_mocks, "EXISTING_ENIS", {"eni-0aaa": {
        "subnetId": "subnet-0000000000000000b", "privateIps": ["10.9.1.12"], "description": "a build agent",
        "tags": {"team": "ci"}}})
    error, run = failing_run(lambda: PostgresCluster("db", {"cluster_name": "pg-db", "network": EXISTING_NETWORK}))
    assert "pg-db-2's fixed address (host 12 of its subnet) is in use by eni-0aaa (a build agent)" in str(error)
    assert "10.9.1.12" in str(error) and run.resources == []


def test_the_cluster_s_own_interfaces_do_not_block_a_later_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import infra_mocks

    monkeypatch.setattr(infra_mocks, "EXISTING_ENIS", {"eni-0bbb": {
        "subnetId": "subnet-0000000000000000b", "privateIps": ["10.9.1.12"], "description": "pgha pg-db-2",
        "tags": {"pgha:cluster": "pg-db"}}})
    run = run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-db", "network": EXISTING_NETWORK}))
    assert len(run.of_type("aws:ec2/instance:Instance")) == 3
