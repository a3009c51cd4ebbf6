"""The branch stack kind under Pulumi mocks: one small node restored (read only) from another
stack's repository, its own bucket for its own archive, promoted by raising replicas."""

import json
from typing import Any

import pytest
import yaml

from infra_mocks import REGION, REGION_AZS, Run, decode_user_data, resolve, run_program
from pgha import stacks

INSTANCE = "aws:ec2/instance:Instance"
POLICY = "aws:iam/rolePolicy:RolePolicy"
BUCKET = "aws:s3/bucket:Bucket"


def deploy(values: dict[str, Any]) -> Run:
    return run_program(lambda: stacks.deploy(values, stack="feature", region=REGION, region_azs=REGION_AZS))


def policies(run: Run) -> dict[str, dict]:
    return {r.name: json.loads(resolve(r.inputs["policy"])[0]) for r in run.of_type(POLICY)}


def files_of(instance) -> dict[str, str]:
    document = yaml.safe_load(decode_user_data(resolve(instance.inputs["userDataBase64"])[0]))
    return {f["path"]: f["content"] for f in document["write_files"]}


def facts_of(run: Run) -> list[dict]:
    return [json.loads(files_of(inst)["/etc/pgha/node.json"]) for inst in run.of_type(INSTANCE)]


BRANCH = {"stackKind": "branch", "clusterName": "pg-feature", "branch": {"sourceStack": "acme/pgha/prod",
                                                                         "targetTime": "2025-01-31T12:00:00Z"}}


def test_branch_from_a_stack_reference_is_one_small_node_restoring_read_only():
    run = deploy(BRANCH)
    # The StackReference is read, not registered: its outputs (bucket, stanza, key) show below.
    instances = run.of_type(INSTANCE)
    assert len(instances) == 1 and instances[0].inputs["instanceType"] == "t4g.medium"
    # Its own bucket for its own archive.
    assert len(run.of_type(BUCKET)) == 1
    docs = policies(run)
    source = docs["pg-feature-role-restore-source"]
    actions = {a for st in source["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:GetObjectVersion", "kms:Decrypt", "kms:DescribeKey"}
    resources = {st["Resource"] for st in source["Statement"]}
    assert "arn:aws:s3:::prod-backup-src/pg-source/*" in resources
    assert "arn:aws:kms:us-east-1:123456789012:key/key-source" in resources
    # The node restores from the source's bucket and stanza, archives into its own.
    (facts,) = facts_of(run)
    assert facts["restore"] == {"stanza": "pg-source", "bucket": "prod-backup-src", "path": "/pg-source/pgbackrest",
                                "target": "2025-01-31T12:00:00Z", "type": "time"}
    assert facts["stanza"] == "pg-feature"


def test_branch_user_data_never_names_the_source_in_its_archive_or_config():
    run = deploy(BRANCH)
    files = files_of(run.of_type(INSTANCE)[0])
    conf = files["/etc/pgha/pgbackrest/pgbackrest.conf"]
    assert "prod-backup-src" not in conf and "pg-source" not in conf
    patroni = files["/etc/pgha/patroni.yml"]
    assert "method: pgha_restore" in patroni and "restore-bootstrap" in patroni
    assert "--stanza=pg-feature archive-push" in patroni
    # Asynchronous: a single node never waits for a synchronous standby.
    assert "synchronous_mode: false" in patroni


def test_branch_with_given_bucket_and_stanza_needs_no_stack_reference():
    run = deploy({"stackKind": "branch", "clusterName": "pg-copy",
                  "branch": {"sourceBucket": "pg-prod-backup-1a2b", "sourceStanza": "pg-prod"}})
    (facts,) = facts_of(run)
    assert facts["restore"]["bucket"] == "pg-prod-backup-1a2b" and facts["restore"]["type"] == "default"


def test_raising_replicas_promotes_the_branch_to_three_azs():
    small = deploy(BRANCH)
    big = deploy({**BRANCH, "replicas": 2, "instanceType": "r8g.large"})
    azs = {r.inputs["availabilityZone"] for r in big.of_type("aws:ebs/volume:Volume")}
    assert len(big.of_type(INSTANCE)) == 3 and len(azs) == 3
    # Same bucket, same key, same first member: promotion keeps the branch's data and archive.
    names = lambda run, t: sorted(r.name for r in run.of_type(t))  # noqa: E731
    assert names(small, BUCKET) == names(big, BUCKET)
    assert "pg-feature-1" in [r.name for r in big.of_type("pgha:infra:Node")]
    assert all(f["restore"]["stanza"] == "pg-source" for f in facts_of(big))


@pytest.mark.parametrize("values, key, fragment", [
    ({"stackKind": "branch", "clusterName": "pg-b"}, "pgha:branch", "sourceStack"),
    ({"stackKind": "branch", "clusterName": "pg-b", "branch": {"sourceBucket": "b-1234"}}, "pgha:branch.sourceStack",
     "both sourceBucket and sourceStanza"),
    ({"stackKind": "branch", "clusterName": "pg-b", "branch": {"sourceStack": "prod", "targetTime": "yesterday"}},
     "pgha:branch.targetTime", "ISO-8601"),
    ({"stackKind": "branch", "clusterName": "pg-prod", "branch": {"sourceBucket": "b-1234", "sourceStanza": "pg-prod"}},
     "pgha:clusterName", "name of its own"),
    ({"branch": {"sourceStack": "prod"}}, "pgha:branch", "stackKind branch only"),
])
def test_branch_config_problems_are_reported(values, key, fragment):
    from pgha.spec import SpecError, build_spec

    with pytest.raises(SpecError) as caught:
        build_spec(values, stack="feature", region=REGION, region_azs=REGION_AZS)
    found = {p.key: p for p in caught.value.problems}
    assert key in found and fragment in found[key].allowed, caught.value
