"""Every AWS name pgha sets or lets Pulumi derive fits AWS's limit (the mock runtime checks none).

The program runs as `pulumi up` runs it (__main__.py, the component named after the cluster),
with the longest cluster name the spec allows, for both stack kinds' resources.
"""

import runpy
from pathlib import Path
from typing import Any

import pytest

from infra_mocks import Registration, Run, run_program
from pgha.infra.names import AUTONAME_SUFFIX, BUCKET_PREFIX_SUFFIX, NAME_LIMITS
from pgha.spec import SERVICES
from pgha.spec.validate import CLUSTER_NAME_MAX

ROOT = Path(__file__).resolve().parents[1]
LONGEST = "pg-" + "x" * (CLUSTER_NAME_MAX - 3)

# Types whose physical name pgha neither sets nor lets Pulumi derive (AWS assigns an id), or
# whose name is a child's path under its parent (bucket settings, records in pgha's own zone).
# (pulumi-python:dynamic: MemberReady, no AWS resource of its own)
UNNAMED_PREFIXES = ("pgha:", "pulumi:", "pulumi-python:dynamic/", "random:", "tls:", "aws:ec2/", "aws:ec2transitgateway/", "aws:ebs/", "aws:vpc/", "aws:s3/bucket",
                    "aws:s3/bucketObjectv2", "aws:route53/record:", "aws:lb/listener:", "aws:lb/targetGroupAttachment",
                    "aws:kms/key:", "aws:secretsmanager/secretVersion", "aws:iam/rolePolicyAttachment")


def physical_name(r: Registration) -> str:
    """The name AWS will see: the one given, a bucket's prefix and S3's suffix, or Pulumi's derived one."""
    if r.type == "aws:route53/zone:Zone":
        return r.inputs["name"]
    if r.inputs.get("name"):
        return r.inputs["name"]
    if r.inputs.get("bucketPrefix"):
        return r.inputs["bucketPrefix"] + "x" * BUCKET_PREFIX_SUFFIX
    return r.name + "-" + "x" * (AUTONAME_SUFFIX - 1)


def run_main(config: dict[str, str]) -> Run:
    return run_program(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"), config=config)


KINDS = {
    "regional": {"pgha:backup": '{"encryption": true}'},
    "branch": {"pgha:stackKind": "branch", "pgha:replicas": "2",
               "pgha:branch": '{"sourceBucket": "pg-source-backup-0123", "sourceStanza": "pg-source"}'},
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def longest(request: pytest.FixtureRequest) -> Run:
    return run_main({"pgha:clusterName": LONGEST, **KINDS[request.param]})


def too_long(run: Run) -> list[str]:
    return [f"{r.type} {physical_name(r)!r}: {len(physical_name(r))} > {NAME_LIMITS[r.type]}"
            for r in run.resources if r.type in NAME_LIMITS and len(physical_name(r)) > NAME_LIMITS[r.type]]


def test_every_name_fits_its_limit_with_the_longest_cluster_name(longest: Run) -> None:
    assert len(LONGEST) == CLUSTER_NAME_MAX
    assert too_long(longest) == []
    # The tight ones are named by pgha from the cluster name: exactly at AWS's 32.
    groups = {r.inputs["name"] for r in longest.of_type("aws:lb/targetGroup:TargetGroup")}
    assert groups == {f"{LONGEST}-{s}" for s in SERVICES} and max(map(len, groups)) == 32


def test_every_declared_type_is_classified(longest: Run) -> None:
    """A new resource type must be added to NAME_LIMITS or to the unnamed types: this fails first."""
    unknown = {r.type for r in longest.resources
               if r.type not in NAME_LIMITS and not r.type.startswith(UNNAMED_PREFIXES)}
    assert unknown == set()


def test_the_check_catches_a_derived_name_over_the_limit(longest: Run) -> None:
    # What pulumi-aws derived before pgha named the target groups: logical name + 7 characters.
    group = longest.of_type("aws:lb/targetGroup:TargetGroup")[0]
    derived: dict[str, Any] = {k: v for k, v in group.inputs.items() if k != "name"}
    unnamed = Registration(**{**group.__dict__, "inputs": derived})
    run = Run()
    run.resources.append(unnamed)
    assert len(physical_name(unnamed)) == len(group.name) + AUTONAME_SUFFIX > 32
    assert too_long(run) and "targetGroup" in too_long(run)[0]
