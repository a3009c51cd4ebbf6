"""Least privilege in AWS (issue 12, point 3), under the mock runtime: the key policy, the node
role's KMS use, what the role may not do to the backups, where its credentials work, per-member
secrets, node-file encryption, and the review's controls (NLB deletion protection, flow logs,
access logging, egress)."""

import json
from typing import Any

import pytest

from infra_mocks import ACCOUNT, REGION, Run, run_program
from pgha.infra import PostgresCluster

ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/db-role-role-mock"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
VIA_S3_SM = [f"s3.{REGION}.amazonaws.com", f"secretsmanager.{REGION}.amazonaws.com"]
VIA_EC2 = [f"ec2.{REGION}.amazonaws.com"]
# Every cryptographic KMS action (what "use" means), as opposed to administration.
CRYPTO_ACTIONS = {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKey*",
                  "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncrypt*", "kms:ReEncryptFrom", "kms:ReEncryptTo",
                  "kms:CreateGrant", "kms:GenerateDataKeyPair", "kms:Sign", "kms:Verify", "kms:GenerateMac",
                  "kms:DeriveSharedSecret", "kms:Create*", "kms:*"}


def cluster(extra: dict[str, Any] | None = None) -> Run:
    return run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-sec", **(extra or {})}))


@pytest.fixture(scope="module")
def run() -> Run:
    return cluster()


def actions(statement: dict[str, Any]) -> list[str]:
    value = statement.get("Action", [])
    return [value] if isinstance(value, str) else list(value)


def key_policy(run: Run) -> dict[str, Any]:
    (key,) = run.of_type("aws:kms/key:Key")
    assert key.inputs.get("policy"), "the key has no explicit policy (AWS's default gives the account kms:*)"
    return json.loads(key.inputs["policy"])


def node_policy(run: Run) -> dict[str, Any]:
    return json.loads(run.one("aws:iam/rolePolicy:RolePolicy", "db-role-access").inputs["policy"])


def by_sid(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in doc["Statement"]}


# -- 1. the key policy and the role's KMS use ------------------------------------------------------

def test_key_policy_separates_administration_from_use(run: Run) -> None:
    doc = key_policy(run)
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "kms:*" not in actions(statement), statement["Sid"]
        crypto = set(actions(statement)) & CRYPTO_ACTIONS
        if crypto:
            # Every use of the key is bound to a service: nobody calls kms:Decrypt directly.
            via = statement["Condition"]["StringEquals"]["kms:ViaService"]
            assert via in (VIA_S3_SM, VIA_EC2), statement["Sid"]
    admin = by_sid(doc)["KeyAdministration"]
    assert admin["Principal"] == {"AWS": ROOT}
    assert not set(actions(admin)) & CRYPTO_ACTIONS
    # The account keeps the right to change the policy (else the key could become unmanageable).
    assert {"kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:EnableKeyRotation"} <= set(actions(admin))
    assert "Condition" not in admin


def test_key_policy_node_role_uses_the_key_only_through_s3_and_secrets_manager(run: Run) -> None:
    doc = key_policy(run)
    for_role = [s for s in doc["Statement"] if s["Principal"] == {"AWS": ROLE_ARN}]
    assert [s["Sid"] for s in for_role] == ["NodeRoleUse"]
    (use,) = for_role
    assert sorted(actions(use)) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert use["Condition"] == {"StringEquals": {"kms:ViaService": VIA_S3_SM}}


def test_key_policy_lets_ec2_encrypt_volumes_with_grants_for_aws_resources_only(run: Run) -> None:
    doc = by_sid(key_policy(run))
    ec2 = doc["AccountUseThroughEc2"]
    assert {"kms:Decrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"} <= set(actions(ec2))
    assert ec2["Condition"]["StringEquals"] == {"kms:CallerAccount": ACCOUNT, "kms:ViaService": VIA_EC2}
    grants = doc["AccountGrantsForEbs"]
    assert actions(grants) == ["kms:CreateGrant"]
    assert grants["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert grants["Condition"]["StringEquals"]["kms:ViaService"] == VIA_EC2
    # No other statement hands out grants.
    assert [s["Sid"] for s in doc.values() if {"kms:CreateGrant", "kms:Create*"} & set(actions(s))] \
        == ["AccountGrantsForEbs"]


def test_key_policy_names_the_role_and_account_of_this_cluster(run: Run) -> None:
    key = run.of_type("aws:kms/key:Key")[0]
    role = run.one("aws:iam/role:Role", "db-role-role")
    assert role.urn in key.dependencies or any("db-role-role" in d for d in key.dependencies)
    assert key.protect and key.retain_on_delete and key.inputs["enableKeyRotation"] is True


def test_node_role_kms_statement_is_bound_to_s3_and_secrets_manager(run: Run) -> None:
    kms = [s for s in node_policy(run)["Statement"] if any(a.startswith("kms:") for a in actions(s))]
    assert len(kms) == 1
    (use,) = kms
    assert sorted(actions(use)) == ["kms:Decrypt", "kms:GenerateDataKey"]  # no kms:Encrypt, no DescribeKey
    assert use["Condition"] == {"StringEquals": {"kms:ViaService": VIA_S3_SM}}
    assert use["Resource"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-db-kms-key"


# -- 2. backups: no permanent delete, overwrites keep the previous version -------------------------

def bucket_policy(run: Run) -> dict[str, Any]:
    (policy,) = run.of_type("aws:s3/bucketPolicy:BucketPolicy")
    return json.loads(policy.inputs["policy"])


# The actions by which a principal removes a version for good or undoes what keeps versions.
PERMANENT = {"s3:DeleteObjectVersion", "s3:BypassGovernanceRetention", "s3:PutBucketVersioning",
             "s3:PutLifecycleConfiguration", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
             "s3:PutBucketObjectLockConfiguration", "s3:PutObjectRetention", "s3:DeleteBucket"}


def test_node_role_is_granted_no_permanent_delete(run: Run) -> None:
    granted = {a for s in node_policy(run)["Statement"] if s["Effect"] == "Allow" for a in actions(s)}
    granted |= {a for s in bucket_policy(run)["Statement"] if s["Effect"] == "Allow" for a in actions(s)}
    assert not granted & PERMANENT
    assert not any(a in ("s3:*", "*") or a.startswith("s3:Put") and "Object" not in a for a in granted), granted
    # What pgBackRest's expire needs is still there: DeleteObject (a delete marker on a versioned bucket).
    assert "s3:DeleteObject" in granted


def test_bucket_policy_denies_the_node_role_permanent_deletes(run: Run) -> None:
    deny = by_sid(bucket_policy(run))["DenyMembersPermanentDeletes"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": ROLE_ARN}
    assert PERMANENT <= set(actions(deny))
    assert "s3:DeleteObject" not in actions(deny)  # expire keeps working
    assert deny["Resource"] == ["arn:aws:s3:::pg-sec-backup-mock", "arn:aws:s3:::pg-sec-backup-mock/*"]
    assert "Condition" not in deny


def test_overwritten_and_expired_objects_stay_retention_plus_7_days() -> None:
    run = cluster({"backup": {"retention_days": 9}})
    (versioning,) = run.of_type("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    (lifecycle,) = run.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    (rule,) = lifecycle.inputs["rules"]
    assert rule["status"] == "Enabled"
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] == 9 + 7
    # Current objects never expire by lifecycle (only pgBackRest's expire retires them).
    assert set(rule["expiration"]) == {"expiredObjectDeleteMarker"}
    assert versioning.urn in lifecycle.dependencies
    # Nothing can turn versioning off from `pulumi destroy` either.
    assert versioning.retain_on_delete and lifecycle.retain_on_delete


# -- 3. credentials work only from the VPC -----------------------------------------------------------

def test_bucket_denies_the_node_role_outside_the_s3_gateway_endpoint(run: Run) -> None:
    (endpoint,) = run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert endpoint.inputs["vpcEndpointType"] == "Gateway"
    deny = by_sid(bucket_policy(run))["DenyMembersOutsideTheVpc"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": ROLE_ARN} and actions(deny) == ["s3:*"]
    assert deny["Condition"] == {"StringNotEquals": {"aws:SourceVpce": f"{endpoint.name}-id"}}


def test_node_role_denied_everything_outside_the_vpc_and_its_nat_gateways(run: Run) -> None:
    deny = by_sid(node_policy(run))["DenyOutsideTheVpc"]
    assert deny["Effect"] == "Deny" and actions(deny) == ["*"] and deny["Resource"] == "*"
    assert len(run.of_type("aws:ec2/eip:Eip")) == 3  # one NAT gateway per AZ by default
    condition = deny["Condition"]
    # The NAT gateways' public addresses (the mock gives EIPs 198.51.100.x), each as a /32.
    sources = condition["NotIpAddress"]["aws:SourceIp"]
    assert len(set(sources)) == 3 and all(s.startswith("198.51.100.") and s.endswith("/32") for s in sources)
    assert condition["StringNotEquals"] == {"aws:SourceVpc": "db-network-vpc-id"}
    # KMS calls S3 and Secrets Manager make for the role are not denied for their origin.
    assert condition["BoolIfExists"] == {"aws:ViaAWSService": "false"}


def test_single_nat_gateway_is_the_one_egress_address() -> None:
    run = cluster({"network": {"nat_gateways": "single"}})
    deny = by_sid(node_policy(run))["DenyOutsideTheVpc"]
    assert len(deny["Condition"]["NotIpAddress"]["aws:SourceIp"]) == 1


def test_given_vpc_has_no_network_bound_and_says_so_nowhere_else() -> None:
    """A given VPC: pgha does not know its egress addresses or endpoints, so it adds no
    network condition it could not keep (documented in README)."""
    run = cluster({"network": {"vpc_id": "vpc-0123456789abcdef0", "subnet_ids": [
        "subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"]}})
    assert "DenyOutsideTheVpc" not in by_sid(node_policy(run))
    assert "DenyMembersOutsideTheVpc" not in by_sid(bucket_policy(run))
    assert "DenyMembersPermanentDeletes" in by_sid(bucket_policy(run))
