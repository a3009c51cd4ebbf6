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
        if crypto and statement["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}:
            # CloudWatch Logs itself, for the cluster's log group only (test_infra_logs.py).
            assert list(statement["Condition"]) == ["ArnEquals"], statement["Sid"]
        elif crypto:
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
    return json.loads(run.one("aws:s3/bucketPolicy:BucketPolicy", "db-backup-policy").inputs["policy"])


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
    lifecycle = run.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "db-backup-lifecycle")
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
    (endpoint,) = [e for e in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint") if e.inputs["vpcEndpointType"] == "Gateway"]
    deny = by_sid(bucket_policy(run))["DenyMembersOutsideTheVpc"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": ROLE_ARN} and actions(deny) == ["s3:*"]
    assert deny["Condition"] == {"StringNotEquals": {"aws:SourceVpce": f"{endpoint.name}-id"}}


def test_node_role_denied_everything_not_through_the_vpc_with_its_endpoints(run: Run) -> None:
    """network.vpcEndpoints create (the default): every call goes through an endpoint of the VPC
    (S3's gateway, the interface endpoints), so aws:SourceVpc alone decides; the NAT gateways'
    addresses no longer pass (no aws:SourceIp escape)."""
    deny = by_sid(node_policy(run))["DenyOutsideTheVpc"]
    assert deny["Effect"] == "Deny" and actions(deny) == ["*"] and deny["Resource"] == "*"
    assert "NotAction" not in deny
    assert deny["Condition"] == {"StringNotEquals": {"aws:SourceVpc": "db-network-vpc-id"},
                                 # KMS calls S3 and Secrets Manager make for the role are not denied for their origin.
                                 "BoolIfExists": {"aws:ViaAWSService": "false"}}


def test_every_service_the_role_may_call_is_reached_through_the_vpc(run: Run) -> None:
    """What the Allow statements grant is callable under the Deny: S3 through its gateway
    endpoint, the rest through an interface endpoint; KMS only through S3 and Secrets Manager."""
    from pgha.infra.vpc_endpoints import INTERFACE_SERVICES

    doc = node_policy(run)
    for statement in doc["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        for action in actions(statement):
            service = action.split(":")[0]
            if service == "kms":
                assert statement["Condition"]["StringEquals"]["kms:ViaService"] == VIA_S3_SM, statement["Sid"]
            else:
                assert service == "s3" or service in INTERFACE_SERVICES, (statement["Sid"], action)


def test_without_endpoints_the_nat_gateways_addresses_also_pass() -> None:
    run = cluster({"network": {"vpc_endpoints": "none"}})
    assert [e.inputs["vpcEndpointType"] for e in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")] == ["Gateway"]
    deny = by_sid(node_policy(run))["DenyOutsideTheVpc"]
    assert deny["Effect"] == "Deny" and actions(deny) == ["*"] and deny["Resource"] == "*"
    assert len(run.of_type("aws:ec2/eip:Eip")) == 3  # one NAT gateway per AZ by default
    condition = deny["Condition"]
    # The NAT gateways' public addresses (the mock gives EIPs 198.51.100.x), each as a /32.
    sources = condition["NotIpAddress"]["aws:SourceIp"]
    assert len(set(sources)) == 3 and all(s.startswith("198.51.100.") and s.endswith("/32") for s in sources)
    assert condition["StringNotEquals"] == {"aws:SourceVpc": "db-network-vpc-id"}
    assert condition["BoolIfExists"] == {"aws:ViaAWSService": "false"}


def test_single_nat_gateway_is_the_one_egress_address() -> None:
    run = cluster({"network": {"nat_gateways": "single", "vpc_endpoints": "none"}})
    deny = by_sid(node_policy(run))["DenyOutsideTheVpc"]
    assert len(deny["Condition"]["NotIpAddress"]["aws:SourceIp"]) == 1


GIVEN_VPC = {"vpc_id": "vpc-0123456789abcdef0", "subnet_ids": [
    "subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"]}


def test_given_vpc_with_endpoints_binds_every_call_but_s3_to_that_vpc() -> None:
    """A given VPC with endpoints (created there by default): its id is known, so the role is
    denied everything but S3 from elsewhere. Its S3 path (a NAT, or a gateway endpoint pgha does
    not own) is unknown, so S3 is left out, and the bucket adds no endpoint condition."""
    run = cluster({"network": GIVEN_VPC})
    deny = by_sid(node_policy(run))["DenyOutsideTheVpc"]
    assert deny["NotAction"] == "s3:*" and "Action" not in deny and deny["Resource"] == "*"
    assert deny["Condition"] == {"StringNotEquals": {"aws:SourceVpc": GIVEN_VPC["vpc_id"]},
                                 "BoolIfExists": {"aws:ViaAWSService": "false"}}
    assert "DenyMembersOutsideTheVpc" not in by_sid(bucket_policy(run))


def test_given_vpc_without_endpoints_has_no_network_bound() -> None:
    """A given VPC and vpcEndpoints none: pgha knows neither its egress addresses nor its
    endpoints, so it adds no network condition it could not keep (documented in README)."""
    run = cluster({"network": {**GIVEN_VPC, "vpc_endpoints": "none"}})
    assert "DenyOutsideTheVpc" not in by_sid(node_policy(run))
    assert "DenyMembersOutsideTheVpc" not in by_sid(bucket_policy(run))
    assert "DenyMembersPermanentDeletes" in by_sid(bucket_policy(run))


# -- 4. each member reads its own TLS key -----------------------------------------------------------

def test_each_member_reads_only_its_own_tls_key_secret(run: Run) -> None:

    doc = node_policy(run)
    ips = resolve_member_ips(run)
    own = [s for s in doc["Statement"] if s["Sid"].startswith("ReadOwnTlsKey")]
    assert len(own) == len(ips) == 3
    for index, statement in enumerate(own, start=1):
        member = f"pg-sec-{index}"
        assert statement["Action"] == "secretsmanager:GetSecretValue"
        assert statement["Resource"] == f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:db-secret-tls-{index}-AbCdEf"
        assert statement["Condition"] == {"IpAddress": {"aws:ec2InstanceSourcePrivateIPv4": f"{ips[member]}/32"}}
    # The cluster secret (readable by every member) carries no TLS key.
    shared = run.one("aws:secretsmanager/secretVersion:SecretVersion", "db-secret-secret-value")
    assert "tls_keys" not in json.loads(shared.inputs["secretString"])
    assert "PRIVATE KEY" not in shared.inputs["secretString"]


def resolve_member_ips(run: Run) -> dict[str, str]:
    from infra_mocks import resolve

    value, _ = resolve(run.result.member_ips)
    return dict(value)


def test_each_member_is_told_its_own_tls_secret(run: Run) -> None:
    from infra_mocks import member_files

    for index in (1, 2, 3):
        member = f"pg-sec-{index}"
        facts = json.loads(member_files(run, member)["/etc/pgha/node.json"])
        assert facts["tls_secret"] == {"source": "aws", "region": REGION,
                                       "id": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:db-secret-tls-{index}-AbCdEf"}
        assert facts["secret"]["id"] == f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:db-secret-secret-AbCdEf"


# -- 5. node files encrypted with the cluster's key --------------------------------------------------

def test_node_files_and_manifests_are_encrypted_with_the_cluster_key(run: Run) -> None:
    key_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-db-kms-key"
    objects = run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    assert len(objects) >= 4  # the agent zipapp and a manifest per member
    for obj in objects:
        # With "aws:kms" and no key id S3 would use the account's aws/s3 key.
        assert obj.inputs["serverSideEncryption"] == "aws:kms", obj.name
        assert obj.inputs["kmsKeyId"] == key_arn, obj.name


# -- 6. the review's controls: NLB deletion protection, flow logs, access logging, egress -----------

def test_nlb_has_deletion_protection(run: Run) -> None:
    (nlb,) = run.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert nlb.inputs["enableDeletionProtection"] is True and nlb.inputs["internal"] is True


def log_bucket(run: Run) -> Any:
    return run.one("aws:s3/bucket:Bucket", "db-logs-bucket")


def test_backup_bucket_access_logs_go_to_a_separate_sse_s3_log_bucket(run: Run) -> None:
    (logging,) = run.of_type("aws:s3/bucketLogging:BucketLogging")
    assert logging.inputs["bucket"] == "pg-sec-backup-mock"
    assert logging.inputs["targetBucket"] == "pg-sec-logs-mock" and logging.inputs["targetPrefix"] == "s3-access/"
    assert log_bucket(run).retain_on_delete and not log_bucket(run).protect
    sse = run.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                  "db-logs-sse")
    # Access-log delivery writes with S3's own principal: the target uses SSE-S3, not the cluster key.
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}
    block = run.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "db-logs-public-access")
    assert all(block.inputs[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                 "restrictPublicBuckets"))
    (lifecycle,) = [r for r in run.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
                    if r.name == "db-logs-lifecycle"]
    assert lifecycle.inputs["rules"][0]["expiration"] == {"days": 90}


def test_log_bucket_policy_admits_only_the_two_delivery_services_of_this_account(run: Run) -> None:
    policy = run.one("aws:s3/bucketPolicy:BucketPolicy", "db-logs-policy")
    doc = by_sid(json.loads(policy.inputs["policy"]))
    assert doc["DenyInsecureTransport"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    access = doc["S3ServerAccessLogs"]
    assert access["Principal"] == {"Service": "logging.s3.amazonaws.com"} and access["Action"] == "s3:PutObject"
    assert access["Resource"] == "arn:aws:s3:::pg-sec-logs-mock/s3-access/*"
    assert access["Condition"] == {"ArnLike": {"aws:SourceArn": "arn:aws:s3:::pg-sec-backup-mock"},
                                   "StringEquals": {"aws:SourceAccount": ACCOUNT}}
    flow = doc["FlowLogsWrite"]
    assert flow["Principal"] == {"Service": "delivery.logs.amazonaws.com"}
    assert flow["Resource"] == f"arn:aws:s3:::pg-sec-logs-mock/flow-logs/AWSLogs/{ACCOUNT}/*"
    assert flow["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT
    allowed = [s for s in doc.values() if s["Effect"] == "Allow"]
    assert all("Service" in s["Principal"] and s["Condition"] for s in allowed)
    # The cluster's role has no business in the log bucket.
    assert ROLE_ARN not in json.dumps(doc)


def test_vpc_flow_logs_all_traffic_to_the_log_bucket(run: Run) -> None:
    (flow,) = run.of_type("aws:ec2/flowLog:FlowLog")
    assert flow.inputs["vpcId"] == "db-network-vpc-id" and flow.inputs["trafficType"] == "ALL"
    assert flow.inputs["logDestinationType"] == "s3"
    assert flow.inputs["logDestination"] == "arn:aws:s3:::pg-sec-logs-mock/flow-logs/"


def test_given_vpc_gets_access_logs_but_no_flow_log_pgha_does_not_own() -> None:
    run = cluster({"network": {"vpc_id": "vpc-0123456789abcdef0", "subnet_ids": [
        "subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"]}})
    assert not run.of_type("aws:ec2/flowLog:FlowLog")
    assert len(run.of_type("aws:s3/bucketLogging:BucketLogging")) == 1


def test_egress_to_the_internet_is_https_only(run: Run) -> None:
    rules = run.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    internet = [r for r in rules if r.inputs.get("cidrIpv4") == "0.0.0.0/0" or r.inputs.get("cidrIpv6") == "::/0"]
    assert internet and all((r.inputs["fromPort"], r.inputs["toPort"]) == (443, 443) for r in internet)
    assert not any(r.inputs["fromPort"] <= 80 <= r.inputs["toPort"] for r in rules)


def test_bootstrap_switches_apt_to_https_before_apt_runs(tmp_path: Any) -> None:
    """No port 80 out: the bootstrap's rewrite, run on a copy of Debian's source files."""
    import re
    import subprocess

    from pgha.render import render_node
    from pgha.spec import build_spec
    from render_fixtures import ec2_context

    spec = build_spec({}, stack="dev", region=REGION, region_azs=["us-east-1a", "us-east-1b", "us-east-1c"])
    (boot,) = [f for f in render_node(spec, spec.members[0], ec2_context(spec)) if f.path.endswith("/pgha-bootstrap")]
    text = str(boot.content)
    loop = re.search(r"^ *for list in .*?^ *done$", text, re.S | re.M)
    assert loop and text.index(loop.group(0)) < text.index("apt-get update")
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "mirrors").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: trixie\n")
    (tmp_path / "mirrors/debian.list").write_text("http://cdn-aws.deb.debian.org/debian\n")
    (tmp_path / "mirrors/debian-security.list").write_text("https://cdn-aws.deb.debian.org/debian-security\n")
    (tmp_path / "sources.list.d/extra.list").write_text("deb http://deb.debian.org/debian trixie-backports main\n")
    script = "set -euo pipefail\n" + loop.group(0).replace("/etc/apt", str(tmp_path)) + "\necho ok\n"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    assert (tmp_path / "mirrors/debian.list").read_text() == "https://cdn-aws.deb.debian.org/debian\n"
    assert (tmp_path / "mirrors/debian-security.list").read_text() == "https://cdn-aws.deb.debian.org/debian-security\n"
    assert "deb https://deb.debian.org/debian" in (tmp_path / "sources.list.d/extra.list").read_text()
    assert "http://" not in "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
