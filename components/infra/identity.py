"""Keys, the node role and the cluster secret.

* one KMS key (rotation on) encrypts the root and data volumes, the backup bucket and the
  secret; it is protected and retained because the retained backups are unreadable without it.
  Its key policy (``key_policy_document``) separates administration (the account, no
  cryptographic use) from use, and allows use only through S3, Secrets Manager and (for the
  volumes) EC2: nobody, the node role included, can call kms:Decrypt on it directly;
* the node role gets SSM core, read access to the cluster secret only, S3 access to the
  backup bucket limited to the stanza prefix ``<cluster_name>/``, use of the key through S3 and
  Secrets Manager only, PutParameter/GetParameter on the cluster's status parameters
  ``/pgha/<cluster_name>/*``, and CreateLogStream/PutLogEvents in its log group ``/pgha/<cluster_name>``;
* the passwords are ``pulumi_random`` passwords and travel only inside the Secrets Manager
  cluster secret; each member's TLS private key is in a secret of its own, which the role may
  read only with the credentials delivered to that member's instance (its fixed primary
  address, aws:ec2InstanceSourcePrivateIPv4);
* with backup encryption the pgBackRest cipher pass is also kept in a secret of its own (same
  key): a branch of the cluster is granted that secret alone, never the cluster's passwords.
"""

import json
from functools import partial
from typing import Any, Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from .. import contract
from ..spec import ClusterSpec
from .common import child, cluster_tags, dns_suffix, partition
from .node_logs import log_group_arn, log_statements

PASSWORDS: tuple[str, ...] = contract.PASSWORD_KEYS
# pgBackRest repository encryption key: only generated when backup.encryption is on.
CIPHER_PASS = contract.CIPHER_PASS_KEY


def stanza_prefix(spec: ClusterSpec) -> str:
    """The S3 key prefix the cluster's members may write: its repository and node files."""
    return contract.cluster_prefix(spec.cluster_name)


# What the account (its IAM administrators, through their IAM policies) may do with the key:
# manage it, never use it. Not kms:Create* (it would include CreateGrant, a way to use it).
KEY_ADMIN_ACTIONS: tuple[str, ...] = (
    "kms:CancelKeyDeletion", "kms:CreateAlias", "kms:DeleteAlias", "kms:DescribeKey", "kms:DisableKey",
    "kms:DisableKeyRotation", "kms:EnableKey", "kms:EnableKeyRotation", "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus", "kms:ListAliases", "kms:ListGrants", "kms:ListKeyPolicies",
    "kms:ListKeyRotations", "kms:ListResourceTags", "kms:PutKeyPolicy", "kms:RevokeGrant",
    "kms:RotateKeyOnDemand", "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource",
    "kms:UpdateAlias", "kms:UpdateKeyDescription",
)
# What the node role does with the key, and only through S3 and Secrets Manager: S3 SSE-KMS
# PutObject (and a bucket key) needs GenerateDataKey, GetObject and multipart uploads Decrypt;
# GetSecretValue needs Decrypt. Nothing needs kms:Encrypt or DescribeKey.
NODE_KEY_ACTIONS: tuple[str, ...] = ("kms:Decrypt", "kms:GenerateDataKey")
# What CloudWatch Logs does with the key of an encrypted log group (AWS's documented statement).
LOGS_KEY_ACTIONS: tuple[str, ...] = ("kms:Decrypt*", "kms:Describe*", "kms:Encrypt*", "kms:GenerateDataKey*",
                                     "kms:ReEncrypt*")


def account_of(arn: str) -> str:
    """The account id of an ARN (``arn:aws:iam::123456789012:role/x``)."""
    parts = arn.split(":")
    if len(parts) < 6 or not parts[4]:
        raise ValueError(f"not an ARN with an account: {arn!r}")
    return parts[4]


def via_services(spec: ClusterSpec, *services: str, region: str = "") -> list[str]:
    """kms:ViaService values of ``services`` in ``region`` (default the cluster's): the region
    of the service endpoint that calls KMS, which is the key's region."""
    region = region or spec.region
    return [f"{service}.{region}.{dns_suffix(region)}" for service in services]


def key_policy_document(spec: ClusterSpec, *, role_arn: str) -> str:
    """The key's own policy (AWS applies no default one when a policy is given).

    * ``KeyAdministration``: the account root, i.e. IAM principals whose IAM policies allow it,
      may administer the key (and must: without PutKeyPolicy for the account the key could
      become unmanageable, and KMS refuses such a policy at creation); no cryptographic action.
    * ``NodeRoleUse``: the members' role, Decrypt/GenerateDataKey through S3 and Secrets
      Manager only (its IAM policy says the same: both must allow).
    * ``AccountUseThroughS3AndSecretsManager``: other principals of the account whose IAM
      policies allow it, through those two services only: ``pulumi up`` writing the secrets and
      node files, a branch's role reading this repository.
    * ``AccountUseThroughEc2`` / ``AccountGrantsForEbs``: EBS encryption of the volumes with
      this key. EC2 acts for the caller of RunInstances/CreateVolume (the deployer, not an
      Auto Scaling service-linked role: pgha launches instances itself), which needs the data
      key actions through ec2.<region> and kms:CreateGrant, limited to grants for AWS
      resources (the grant EC2 gives itself to attach the volume to an instance).
    * ``LogsServiceUse``: CloudWatch Logs of the cluster's region, for the cluster's log group
      only (its ARN as the encryption context CloudWatch passes, ``kms:EncryptionContext:aws:logs:arn``).
    """
    account = account_of(role_arn)
    root = f"arn:{partition(spec.region)}:iam::{account}:root"
    in_account = {"kms:CallerAccount": account}
    statements: list[dict[str, Any]] = [
        {"Sid": "KeyAdministration", "Effect": "Allow", "Principal": {"AWS": root},
         "Action": list(KEY_ADMIN_ACTIONS), "Resource": "*"},
        {"Sid": "NodeRoleUse", "Effect": "Allow", "Principal": {"AWS": role_arn},
         "Action": list(NODE_KEY_ACTIONS), "Resource": "*",
         "Condition": {"StringEquals": {"kms:ViaService": via_services(spec, "s3", "secretsmanager")}}},
        {"Sid": "AccountUseThroughS3AndSecretsManager", "Effect": "Allow", "Principal": {"AWS": root},
         "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"StringEquals": {**in_account,
                                        "kms:ViaService": via_services(spec, "s3", "secretsmanager")}}},
        {"Sid": "AccountUseThroughEc2", "Effect": "Allow", "Principal": {"AWS": root},
         "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"],
         "Resource": "*",
         "Condition": {"StringEquals": {**in_account, "kms:ViaService": via_services(spec, "ec2")}}},
        {"Sid": "AccountGrantsForEbs", "Effect": "Allow", "Principal": {"AWS": root},
         "Action": "kms:CreateGrant", "Resource": "*",
         "Condition": {"StringEquals": {**in_account, "kms:ViaService": via_services(spec, "ec2")},
                       "Bool": {"kms:GrantIsForAWSResource": "true"}}},
        {"Sid": "LogsServiceUse", "Effect": "Allow",
         "Principal": {"Service": f"logs.{spec.region}.{dns_suffix(spec.region)}"},
         "Action": list(LOGS_KEY_ACTIONS), "Resource": "*",
         "Condition": {"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": log_group_arn(spec, account)}}},
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class EncryptionKey(pulumi.ComponentResource):
    """A customer-managed KMS key with yearly rotation, an explicit key policy
    (``key_policy_document``) and an alias ``alias/pgha/<cluster>``."""

    key_arn: pulumi.Output[str]
    key_id: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, role_arn: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:EncryptionKey", name, None, opts)
        policy = pulumi.Output.from_input(role_arn).apply(lambda arn: key_policy_document(spec, role_arn=arn))
        key = aws.kms.Key(f"{name}-key", description=f"pgha {spec.cluster_name}: volumes, backups, secret",
                          enable_key_rotation=True, deletion_window_in_days=30, policy=policy,
                          tags=cluster_tags(spec, Name=f"{spec.cluster_name}-key"),
                          opts=child(self, protect=True, retain_on_delete=True))
        aws.kms.Alias(f"{name}-alias", name=f"alias/pgha/{spec.cluster_name}", target_key_id=key.key_id,
                      opts=child(self))
        self.key_arn = key.arn
        self.key_id = key.key_id
        self.register_outputs({"key_arn": key.arn})


class NodeRole(pulumi.ComponentResource):
    """The members' IAM role and instance profile (no managed policy; data access is added later)."""

    role_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    instance_profile_name: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:NodeRole", name, None, opts)
        assume = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        role = aws.iam.Role(f"{name}-role", assume_role_policy=json.dumps(assume),
                            description=f"pgha {spec.cluster_name} members",
                            tags=cluster_tags(spec), opts=child(self))
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=cluster_tags(spec),
                                          opts=child(self))
        self.role_name = role.name
        self.role_arn = role.arn
        self.instance_profile_name = profile.name
        self.register_outputs({"role_arn": role.arn})


def s3_statements(spec: ClusterSpec, bucket_arn: str) -> list[dict[str, Any]]:
    """S3 access of pgBackRest limited to the stanza prefix (the shape pgBackRest's guide uses)."""
    prefix = stanza_prefix(spec)
    return [
        {"Sid": "ListRepoRoot", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
         "Condition": {"StringEquals": {"s3:prefix": [prefix.rstrip("/"), prefix], "s3:delimiter": ["/"]}}},
        {"Sid": "ListRepo", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        {"Sid": "ReadWriteRepo", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:PutObjectTagging",
                    "s3:DeleteObject"],
         "Resource": f"{bucket_arn}{contract.repo_path(spec.cluster_name)}/*"},
        # The members' configuration (unit files, the agent) is written by `pulumi up` only: a
        # member that could write it could run commands as root on every other member.
        {"Sid": "ReadNodeConfig", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": [f"{bucket_arn}/{contract.node_config_prefix(spec.cluster_name)}*",
                      f"{bucket_arn}/{contract.node_files_prefix(spec.cluster_name)}*"]},
    ]


def status_parameters_arn(spec: ClusterSpec, *, account_arn: str) -> str:
    """The ARN pattern of the cluster's member status parameters (pgha.contract.status_parameter).
    The account is the one of ``account_arn`` (an ARN of the cluster's own, e.g. its secret's):
    no caller-identity lookup, and no account wildcard."""
    parts = account_arn.split(":")
    if len(parts) < 6 or not parts[4]:
        raise ValueError(f"not an ARN with an account: {account_arn!r}")
    return (f"arn:{partition(spec.region)}:ssm:{spec.region}:{parts[4]}:parameter"
            f"{contract.status_parameter_prefix(spec.cluster_name)}*")


def outside_the_vpc_denial(*, vpc_id: str, egress_ips: Sequence[str] = (), through_endpoints: bool = False,
                           s3_in_vpc: bool = True) -> dict[str, Any]:
    """Deny the role every request that does not come from the cluster's VPC: credentials
    copied off a member work nowhere else.

    AWS's own keys for this, aws:ec2InstanceSourceVPC / aws:ec2InstanceSourcePrivateIPv4, name
    the VPC and address the credentials were delivered to, not where a request comes from.
    aws:SourceVpc and aws:SourceVpce are in a request's context only when it comes through a VPC
    endpoint, gateway (S3) or interface alike; aws:SourceIp is then not the requester's (AWS:
    "not effective" through an endpoint), and over the internet it is the NAT gateway's public
    address. A negated operator is true when its key is absent, so ``StringNotEquals
    aws:SourceVpc`` denies requests over the internet as well as through another VPC.

    * ``through_endpoints`` (network.vpcEndpoints create or existing): every call of a member
      goes through an endpoint of the VPC, so aws:SourceVpc alone decides (not aws:SourceVpce:
      the ids of endpoints a given VPC already has are unknown, and the VPC is the boundary).
      S3 is included only when it has the VPC's gateway endpoint (``s3_in_vpc``, a VPC pgha
      creates); a given VPC's S3 path is its own (a NAT or a gateway), so there S3 is left out.
    * otherwise (``none``, a VPC pgha creates): also allowed from the NAT gateways' addresses
      (NotIpAddress is true when aws:SourceIp is absent, as through an endpoint).

    Requests an AWS service makes for the role (S3 or Secrets Manager calling KMS) are not the
    role's own network location and stay allowed."""
    statement: dict[str, Any] = {"Sid": "DenyOutsideTheVpc", "Effect": "Deny", "Resource": "*",
                                 "Condition": {"StringNotEquals": {"aws:SourceVpc": vpc_id},
                                               "BoolIfExists": {"aws:ViaAWSService": "false"}}}
    if through_endpoints:
        if s3_in_vpc:
            statement["Action"] = "*"
        else:
            statement["NotAction"] = "s3:*"
        return statement
    if not egress_ips:
        raise ValueError("a VPC-bound Deny without endpoints needs the NAT gateways' addresses")
    statement["Action"] = "*"
    statement["Condition"]["NotIpAddress"] = {"aws:SourceIp": [f"{ip}/32" for ip in egress_ips]}
    return statement


def own_tls_key_statements(tls_secrets: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """One statement per member (name -> (its TLS secret ARN, its fixed IP)): the role reads a
    member's key secret only with the credentials EC2 delivered to the instance whose primary
    private address is that member's. All members share one role; the address (the member's
    ENI, kept across replacements) is what tells them apart."""
    return [{"Sid": f"ReadOwnTlsKey{index}", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": arn, "Condition": {"IpAddress": {"aws:ec2InstanceSourcePrivateIPv4": f"{ip}/32"}}}
            for index, (_, (arn, ip)) in enumerate(sorted(tls_secrets.items()), start=1)]


def node_policy_document(spec: ClusterSpec, *, bucket_arn: str, secret_arn: str, key_arn: str,
                         vpc_id: str = "", egress_ips: Sequence[str] = (), through_endpoints: bool = False,
                         s3_in_vpc: bool = True, tls_secrets: Mapping[str, tuple[str, str]] | None = None) -> str:
    """The members' inline policy: their secret, their bucket prefix, their key, their status
    parameters. No ``*`` resources in an Allow. With the VPC's id and either its endpoints or
    its NAT addresses, a Deny of any use from elsewhere (``outside_the_vpc_denial``)."""
    statements = [
        {"Sid": "ReadClusterSecret", "Effect": "Allow",
         "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"], "Resource": secret_arn},
        *own_tls_key_statements(tls_secrets or {}),
        *s3_statements(spec, bucket_arn),
        {"Sid": "UseClusterKey", "Effect": "Allow", "Action": list(NODE_KEY_ACTIONS), "Resource": key_arn,
         "Condition": {"StringEquals": {"kms:ViaService": via_services(spec, "s3", "secretsmanager")}}},
        # Readiness: each member publishes /pgha/<cluster>/<member>/status, which `pulumi up` waits on.
        {"Sid": "PublishMemberStatus", "Effect": "Allow", "Action": ["ssm:PutParameter", "ssm:GetParameter"],
         "Resource": status_parameters_arn(spec, account_arn=secret_arn)},
        # The daemons' logs: streams of the cluster's log group only (node_logs).
        *log_statements(spec, account_of(secret_arn)),
    ]
    if vpc_id and (through_endpoints or egress_ips):
        statements.append(outside_the_vpc_denial(vpc_id=vpc_id, egress_ips=egress_ips,
                                                 through_endpoints=through_endpoints, s3_in_vpc=s3_in_vpc))
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def node_access_policy(name: str, *, spec: ClusterSpec, role_name: pulumi.Input[str],
                       bucket_arn: pulumi.Input[str], secret_arn: pulumi.Input[str], key_arn: pulumi.Input[str],
                       parent: pulumi.Resource, vpc_id: pulumi.Input[str] = "",
                       egress_ips: Sequence[pulumi.Input[str]] = (), through_endpoints: bool = False,
                       s3_in_vpc: bool = True,
                       tls_secret_arns: Mapping[str, pulumi.Input[str]] | None = None,
                       member_ips: Mapping[str, str] | None = None,
                       after: Sequence[pulumi.Resource] = ()) -> aws.iam.RolePolicy:
    """Attach the members' data access policy to the role."""
    ips = dict(member_ips or {})
    document = pulumi.Output.all(bucket_arn, secret_arn, key_arn, vpc_id, pulumi.Output.all(*egress_ips),
                                 pulumi.Output.all(**dict(tls_secret_arns or {}))).apply(
        lambda v: node_policy_document(spec, bucket_arn=v[0], secret_arn=v[1], key_arn=v[2], vpc_id=v[3],
                                       egress_ips=v[4], through_endpoints=through_endpoints, s3_in_vpc=s3_in_vpc,
                                       tls_secrets={m: (arn, ips[m]) for m, arn in v[5].items()}))
    return aws.iam.RolePolicy(f"{name}-access", role=role_name, policy=document,
                              opts=child(parent, depends_on=list(after)))


def _own_tls_key_json(member: str, pem: str) -> str:
    return json.dumps({contract.TLS_KEYS: {member: pem}}, sort_keys=True)


class ClusterSecret(pulumi.ComponentResource):
    """Generated passwords and the Secrets Manager secrets the members read at boot.

    The cluster secret's JSON: ``superuser_password``, ``replication_password``,
    ``pgbouncer_auth_password``, ``patroni_rest_password``, ``monitor_password``, ``app_password``
    and, with backup encryption, ``pgbackrest_cipher_pass``, which the cipher secret
    (``cipher_secret_arn``) holds again on its own as ``{"pgbackrest_cipher_pass": ...}`` for
    branches. Every member needs every one of them: any member may become the leader that
    bootstraps the cluster (creating the monitor, app and pgbouncer_auth roles) and runs
    Patroni (superuser, replication, rewind, REST), PgBouncer (pgbouncer_auth, monitor), the
    exporters (monitor) and pgBackRest (the cipher pass).

    Each member's TLS private key is in a secret of its own (``tls_secret_arns``, member name
    -> ARN), ``{"tls_keys": {member: PEM}}``, which only that member reads
    (``own_tls_key_statements``): a member cannot impersonate another to etcd or its peers.
    """

    secret_arn: pulumi.Output[str]
    tls_secret_arns: dict[str, pulumi.Output[str]]
    # The secret a branch reads the repository cipher pass from; None without backup encryption.
    cipher_secret_arn: pulumi.Output[str] | None
    passwords: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, *, spec: ClusterSpec, key_arn: pulumi.Input[str],
                 tls_keys: Mapping[str, pulumi.Input[str]], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:ClusterSecret", name, None, opts)
        names = PASSWORDS + ((CIPHER_PASS,) if spec.backup.encryption else ())
        # Alphanumeric only: the values end up in connection strings and config files unquoted.
        self.passwords = {
            key: pulumi.Output.secret(random.RandomPassword(
                f"{name}-{key.removesuffix('_password').replace('_', '-')}", length=40 if key == CIPHER_PASS else 32,
                special=False, opts=child(self)).result)
            for key in names
        }
        secret = aws.secretsmanager.Secret(f"{name}-secret", description=f"pgha {spec.cluster_name} credentials",
                                           kms_key_id=key_arn, recovery_window_in_days=7,
                                           tags=cluster_tags(spec), opts=child(self))
        secret_string: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.all(**self.passwords).apply(
            lambda v: json.dumps(v, sort_keys=True)))
        aws.secretsmanager.SecretVersion(f"{name}-secret-value", secret_id=secret.id, secret_string=secret_string,
                                         opts=child(self))
        self.tls_secret_arns = {}
        for member in spec.members:
            own = aws.secretsmanager.Secret(
                f"{name}-tls-{member.index}", description=f"pgha {member.name}: its TLS private key",
                kms_key_id=key_arn, recovery_window_in_days=7,
                tags=cluster_tags(spec, **{"pgha:member": member.name}), opts=child(self))
            value: pulumi.Output[str] = pulumi.Output.secret(
                pulumi.Output.from_input(tls_keys[member.name]).apply(partial(_own_tls_key_json, member.name)))
            aws.secretsmanager.SecretVersion(f"{name}-tls-{member.index}-value", secret_id=own.id,
                                             secret_string=value, opts=child(self))
            self.tls_secret_arns[member.name] = own.arn
        self.secret_arn = secret.arn
        self.cipher_secret_arn = None
        if CIPHER_PASS in self.passwords:
            self.cipher_secret_arn = self._cipher_secret(name, spec=spec, key_arn=key_arn)
        outputs: dict[str, pulumi.Input[str]] = {"secret_arn": secret.arn}
        if self.cipher_secret_arn is not None:
            outputs["cipher_secret_arn"] = self.cipher_secret_arn
        self.register_outputs(outputs)

    def _cipher_secret(self, name: str, *, spec: ClusterSpec, key_arn: pulumi.Input[str]) -> pulumi.Output[str]:
        """The cipher pass alone, in a secret a branch's role may read without the cluster's passwords."""
        cipher = aws.secretsmanager.Secret(
            f"{name}-cipher", description=f"pgha {spec.cluster_name}: pgBackRest repository cipher pass (branches)",
            kms_key_id=key_arn, recovery_window_in_days=7, tags=cluster_tags(spec), opts=child(self))
        value: pulumi.Output[str] = pulumi.Output.secret(self.passwords[CIPHER_PASS].apply(
            lambda v: json.dumps({CIPHER_PASS: v}, sort_keys=True)))
        aws.secretsmanager.SecretVersion(f"{name}-cipher-value", secret_id=cipher.id, secret_string=value,
                                         opts=child(self))
        return cipher.arn
