"""The security baseline of every resource PostgresCluster declares, and secret hygiene."""

import base64
import ipaddress
import json
from typing import Any

import pytest

from infra_mocks import S3_PREFIX_LIST, SECRET_MARK, Run, decode_user_data, resolve, run_program
from pgha.infra import PostgresCluster
from pgha.spec import CLIENT_PORTS, MEMBER_PORTS, METRICS_PORTS, PORTS

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cidrs": {"network": {"cidr_policy": "public", "allowed_cidrs": ["10.1.0.0/16", "2001:db8::/32"],
                          "monitoring_cidrs": ["10.2.0.0/24"]}},
    "groups": {"network": {"allowed_security_group_ids": ["sg-0123456789abcdef0"]}},
    "direct": {"network": {"allowed_cidrs": ["10.1.0.0/16"], "expose_direct_ports": True}},
    "metal-x86": {"arch": "x86_64", "storage": {"kind": "metal"}},
}


def cluster(extra: dict[str, Any]) -> Run:
    return run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-sec", **extra}))


@pytest.fixture(scope="module", params=list(VARIANTS))
def run(request: pytest.FixtureRequest) -> Run:
    return cluster(VARIANTS[request.param])


def ports_of(rule: Any) -> set[int]:
    return set(range(int(rule.inputs["fromPort"]), int(rule.inputs["toPort"]) + 1))


def sg_name(run: Run, rule: Any) -> str:
    sg_id = rule.inputs["securityGroupId"]
    return next(r.name for r in run.of_type("aws:ec2/securityGroup:SecurityGroup") if f"{r.name}-id" == sg_id)


def test_no_open_ingress_and_ssh_only_from_the_endpoint(run: Run) -> None:
    rules = run.of_type(INGRESS)
    assert rules
    ssh = []
    for rule in rules:
        assert rule.inputs.get("cidrIpv4") != "0.0.0.0/0" and rule.inputs.get("cidrIpv6") != "::/0"
        for key in ("cidrIpv4", "cidrIpv6"):
            if key in rule.inputs:
                assert ipaddress.ip_network(rule.inputs[key]).prefixlen > 0
        if 22 in ports_of(rule):
            ssh.append(rule)
        assert rule.inputs["ipProtocol"] == "tcp"
    # Port 22: one rule, on the members' group, from the Instance Connect Endpoint's group alone.
    (rule,) = ssh
    assert ports_of(rule) == {22} and sg_name(run, rule) == "db-sg-nodes"
    assert rule.inputs["referencedSecurityGroupId"] == "db-sg-eice-id"
    assert not {"cidrIpv4", "cidrIpv6", "prefixListId"} & set(rule.inputs)
    assert not [r for r in rules if sg_name(run, r) == "db-sg-eice"]  # nothing may connect to the endpoint's ENI
    for sg in run.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert not sg.inputs.get("ingress")
    default_sg = run.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert all(not d.inputs.get("ingress") and not d.inputs.get("egress") for d in default_sg)


def test_client_and_metrics_sources(run: Run) -> None:
    network = next(v for k, v in VARIANTS.items() if cluster_key(run) == k).get("network", {})
    allowed_cidrs = set(network.get("allowed_cidrs", []))
    allowed_groups = set(network.get("allowed_security_group_ids", []))
    if not allowed_cidrs and not allowed_groups:
        allowed_cidrs = {"10.42.0.0/16"}
    monitoring = set(network.get("monitoring_cidrs", []))
    client_ports = set(CLIENT_PORTS) | ({5432, 6432} if network.get("expose_direct_ports") else set())
    node_sg = "db-sg-nodes"
    lb_id = "db-sg-nlb-id"
    for rule in run.of_type(INGRESS):
        source = rule.inputs.get("cidrIpv4") or rule.inputs.get("cidrIpv6") or rule.inputs.get("referencedSecurityGroupId")
        ports = ports_of(rule)
        if source in allowed_cidrs or source in allowed_groups:
            allowed = client_ports if sg_name(run, rule) == node_sg else set(CLIENT_PORTS)
            assert ports <= allowed, (source, ports)
        elif source in monitoring:
            assert ports <= set(METRICS_PORTS)
        elif source == f"{node_sg}-id" and sg_name(run, rule) == "db-api-sg":
            assert ports == {443}  # the members' AWS API calls to the interface endpoints
        elif source == f"{node_sg}-id":
            assert ports <= set(MEMBER_PORTS)
        elif source == lb_id:
            assert ports <= set(CLIENT_PORTS)
        elif source == "db-sg-eice-id":
            assert ports == {22}
        else:
            pytest.fail(f"ingress from unexpected source {source} on {sorted(ports)}")
    # Metrics ports are reachable from monitoring CIDRs only.
    metric_sources = {rule.inputs.get("cidrIpv4") for rule in run.of_type(INGRESS)
                      if ports_of(rule) & set(METRICS_PORTS)}
    assert metric_sources <= monitoring
    # Patroni's REST API (8008) only from members: monitoring gets its metrics through 9101.
    patroni_sources = {rule.inputs.get("cidrIpv4") or rule.inputs.get("referencedSecurityGroupId")
                       for rule in run.of_type(INGRESS) if PORTS["patroni"] in ports_of(rule)}
    assert patroni_sources == {f"{node_sg}-id"}, patroni_sources
    assert PORTS["patroni"] not in METRICS_PORTS
    covered = set().union(*(ports_of(r) for r in run.of_type(INGRESS)
                            if (r.inputs.get("cidrIpv4") or r.inputs.get("cidrIpv6")
                                or r.inputs.get("referencedSecurityGroupId")) in allowed_cidrs | allowed_groups
                            and sg_name(run, r) == node_sg))
    assert covered == client_ports


def cluster_key(run: Run) -> str:
    return run.key  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _label(request: pytest.FixtureRequest) -> None:
    if "run" in request.fixturenames:
        request.getfixturevalue("run").key = request.node.callspec.params["run"]


def test_egress_is_limited(run: Run) -> None:
    for rule in run.of_type(EGRESS):
        ports = ports_of(rule)
        if rule.inputs.get("cidrIpv4") == "0.0.0.0/0":
            assert ports == {443}  # no port 80: apt uses Debian's mirrors over https
        elif "prefixListId" in rule.inputs:
            assert ports == {443} and rule.inputs["prefixListId"] == S3_PREFIX_LIST  # S3 alone
        else:
            assert "referencedSecurityGroupId" in rule.inputs
    # The endpoint's group reaches the members' sshd and nothing else.
    (eice_out,) = [r for r in run.of_type(EGRESS) if sg_name(run, r) == "db-sg-eice"]
    assert ports_of(eice_out) == {22} and eice_out.inputs["referencedSecurityGroupId"] == "db-sg-nodes-id"
    assert not [r for r in run.of_type(EGRESS) if sg_name(run, r) == "db-sg-nodes" and 22 in ports_of(r)]


def test_instance_connect_endpoint(run: Run) -> None:
    (endpoint,) = run.of_type("aws:ec2transitgateway/instanceConnectEndpoint:InstanceConnectEndpoint")
    assert endpoint.inputs["securityGroupIds"] == ["db-sg-eice-id"]
    # Its connections come from its own interface, so that the members' group can name its group.
    assert endpoint.inputs["preserveClientIp"] is False
    subnets = {i.inputs["subnetId"] for i in run.of_type("aws:ec2/networkInterface:NetworkInterface")}
    assert subnets
    assert endpoint.inputs["subnetId"] in subnets  # a private subnet of the members
    assert not run.of_type("aws:ec2/keyPair:KeyPair")
    # No public address on a member: the NAT gateways' are the only elastic IPs.
    for eip in run.of_type("aws:ec2/eip:Eip"):
        assert not {"instance", "networkInterface", "associateWithPrivateIp"} & set(eip.inputs)


def test_operator_policy_and_shell_commands(run: Run) -> None:
    way_in, _ = resolve(run.result.instance_connect)
    ids, _ = resolve(run.result.instance_ids)
    ips, _ = resolve(run.result.member_ips)
    assert way_in["endpoint_id"] == "db-eice-eice-id"
    assert way_in["shell_commands"] == {
        m: f"aws ec2-instance-connect ssh --region us-east-1 --instance-id {i} --connection-type eice --os-user admin"
        for m, i in ids.items()}
    tunnel, push, describe = json.loads(way_in["operator_policy"])["Statement"]
    assert tunnel["Action"] == "ec2-instance-connect:OpenTunnel"
    assert tunnel["Resource"] == "arn:aws:ec2:us-east-1:123456789012:instance-connect-endpoint/eice-db-eice-eice"
    assert tunnel["Condition"]["NumericEquals"] == {"ec2-instance-connect:remotePort": "22"}
    assert tunnel["Condition"]["IpAddress"]["ec2-instance-connect:privateIpAddress"] == sorted(
        f"{ip}/32" for ip in ips.values())
    assert push["Action"] == "ec2-instance-connect:SendSSHPublicKey"
    assert push["Condition"]["StringEquals"] == {"ec2:osuser": "admin", "aws:ResourceTag/pgha:cluster": "pg-sec"}
    assert set(describe["Action"]) == {"ec2:DescribeInstances", "ec2:DescribeInstanceConnectEndpoints"}


def test_instances_hardened(run: Run) -> None:
    for inst in run.of_type("aws:ec2/instance:Instance"):
        meta = inst.inputs["metadataOptions"]
        assert meta["httpTokens"] == "required" and meta["httpPutResponseHopLimit"] == 1
        root = inst.inputs["rootBlockDevice"]
        assert root["encrypted"] is True and root["volumeType"] == "gp3" and root["kmsKeyId"].startswith("arn:aws:kms")
        assert "keyName" not in inst.inputs and not inst.inputs.get("associatePublicIpAddress")
        assert inst.inputs["iamInstanceProfile"]
    for vol in run.of_type("aws:ebs/volume:Volume"):
        assert vol.inputs["encrypted"] is True and vol.inputs["kmsKeyId"].startswith("arn:aws:kms")


def test_bucket_is_private_and_tls_only(run: Run) -> None:
    block = run.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "db-backup-public-access")
    for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block.inputs[key] is True
    policy = run.one("aws:s3/bucketPolicy:BucketPolicy", "db-backup-policy")
    doc = json.loads(policy.inputs["policy"])
    deny = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
    assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny[0]["Action"] == "s3:*" and deny[0]["Principal"] == "*"
    for statement in doc["Statement"]:
        if statement["Effect"] == "Allow":
            assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:role/db-role-role-mock"}
            assert "*" not in json.dumps(statement["Principal"])


def test_iam_policies_are_scoped(run: Run) -> None:
    bucket_arn = "arn:aws:s3:::pg-sec-backup-mock"
    (policy,) = run.of_type("aws:iam/rolePolicy:RolePolicy")
    doc = json.loads(policy.inputs["policy"])
    secret = run.of_type("aws:secretsmanager/secret:Secret")
    secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-secret-secret-AbCdEf"
    assert secret
    denies = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
    # The only Deny binds the credentials to the VPC (tests/test_infra_least_privilege.py).
    assert [s["Sid"] for s in denies] in ([], ["DenyOutsideTheVpc"])
    for statement in doc["Statement"]:
        if statement["Effect"] == "Deny":
            continue
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert "*" not in resources
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            assert not action.endswith(":*")
            service = action.split(":")[0]
            if service == "s3":
                # Read-write: the repository only. The configuration (unit files, the agent) is
                # read-only to members: one that could write it could run commands on the others.
                writes = {"s3:PutObject", "s3:DeleteObject", "s3:PutObjectTagging"} & set(actions)
                allowed = {bucket_arn, f"{bucket_arn}/pg-sec/pgbackrest/*"} | (set() if writes else {
                    f"{bucket_arn}/pg-sec/node-config/*", f"{bucket_arn}/pg-sec/node-files/*"})
                assert set(resources) <= allowed, (action, resources)
                if action == "s3:ListBucket":
                    prefixes = json.dumps(statement["Condition"])
                    assert "pg-sec" in prefixes and '""' not in prefixes
            elif service == "secretsmanager":
                # The cluster secret; a member's own TLS key secret only from that member's address.
                if statement["Sid"].startswith("ReadOwnTlsKey"):
                    assert resources[0].startswith("arn:aws:secretsmanager:us-east-1:123456789012:secret:db-secret-tls-")
                    assert list(statement["Condition"]["IpAddress"]) == ["aws:ec2InstanceSourcePrivateIPv4"]
                else:
                    assert resources == [secret_arn]
            elif service == "kms":
                assert all(r.startswith("arn:aws:kms:") for r in resources)
            elif service == "ssm":
                # Only the cluster's status parameters, in this account and region.
                assert action in ("ssm:PutParameter", "ssm:GetParameter")
                assert resources == ["arn:aws:ssm:us-east-1:123456789012:parameter/pgha/pg-sec/*"]
            elif service == "logs":
                # Streams of the cluster's own log group, write only (test_infra_logs.py).
                assert action in ("logs:CreateLogStream", "logs:PutLogEvents")
                group = "arn:aws:logs:us-east-1:123456789012:log-group:/pgha/pg-sec"
                assert resources in ([f"{group}:*"], [f"{group}:log-stream:*"])
            else:
                pytest.fail(f"unexpected action {action}")
    # No managed policy: nothing on a member uses SSM's agent (the way in is EC2 Instance Connect).
    assert run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == []
    role = run.of_type("aws:iam/role:Role")[0]
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_secret_payload(run: Run) -> None:
    version = run.one("aws:secretsmanager/secretVersion:SecretVersion", "db-secret-secret-value")
    assert "secretString" in version.secret_inputs
    payload = json.loads(version.inputs["secretString"])
    # The passwords only: the members' TLS keys are each in a secret of its own.
    assert set(payload) == {"superuser_password", "replication_password", "pgbouncer_auth_password",
                            "patroni_rest_password", "monitor_password", "app_password"}
    members = sorted(inst.name.split("-")[1] for inst in run.of_type("aws:ec2/instance:Instance"))
    for index in members:
        own = run.one("aws:secretsmanager/secretVersion:SecretVersion", f"db-secret-tls-{index}-value")
        assert "secretString" in own.secret_inputs
        keys = json.loads(own.inputs["secretString"])["tls_keys"]
        assert list(keys) == [f"pg-sec-{index}"] and SECRET_MARK in keys[f"pg-sec-{index}"]
    for secret in run.of_type("aws:secretsmanager/secret:Secret"):
        assert secret.inputs["kmsKeyId"].startswith("arn:aws:kms:")


def test_no_secret_in_user_data_or_plain_outputs(run: Run) -> None:
    for inst in run.of_type("aws:ec2/instance:Instance"):
        assert SECRET_MARK not in decode_user_data(inst.inputs["userDataBase64"])
    for obj in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2"):
        body = obj.inputs.get("content") or base64.b64decode(obj.inputs["contentBase64"]).decode(errors="replace")
        assert SECRET_MARK not in body
    cluster_obj = run.result
    for attr in ("endpoints", "member_ips", "member_azs", "instance_ids", "vpc_id", "nlb_dns_name", "zone_name",
                 "bucket_name", "secret_arn", "ca_cert_pem", "superuser_password", "app_password"):
        value, secret = resolve(getattr(cluster_obj, attr))
        if SECRET_MARK in json.dumps(value):
            assert secret, f"{attr} carries a secret value but is not a Pulumi secret"
    for attr in ("superuser_password", "app_password"):
        value, secret = resolve(getattr(cluster_obj, attr))
        assert secret and value.startswith(SECRET_MARK), attr
    # Besides the secret version, no resource input holds a password or private key.
    holders = {r.type for r in run.resources if SECRET_MARK in json.dumps(r.inputs, default=str)}
    assert holders <= {"aws:secretsmanager/secretVersion:SecretVersion", "tls:index/certRequest:CertRequest",
                       "tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"}


def test_backup_encryption_adds_cipher_pass() -> None:
    run = cluster({"backup": {"encryption": True}})
    version = run.one("aws:secretsmanager/secretVersion:SecretVersion", "db-secret-secret-value")
    assert "pgbackrest_cipher_pass" in json.loads(version.inputs["secretString"])
