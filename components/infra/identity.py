"""Keys, the node role and the cluster secret.

* one KMS key (rotation on) encrypts the root and data volumes, the backup bucket and the
  secret; it is protected and retained because the retained backups are unreadable without it;
* the node role gets SSM core, read access to the cluster secret only, S3 access to the
  backup bucket limited to the stanza prefix ``<cluster_name>/``, use of the key, and
  PutParameter/GetParameter on the cluster's status parameters ``/pgha/<cluster_name>/*``;
* the passwords are ``pulumi_random`` passwords and travel only inside the Secrets Manager
  secret, whose JSON also carries every member's TLS private key;
* with backup encryption the pgBackRest cipher pass is also kept in a secret of its own (same
  key): a branch of the cluster is granted that secret alone, never the cluster's passwords.
"""

import json
from typing import Any, Mapping

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from .. import contract
from ..spec import ClusterSpec
from .common import child, cluster_tags, partition

PASSWORDS: tuple[str, ...] = contract.PASSWORD_KEYS
# pgBackRest repository encryption key: only generated when backup.encryption is on.
CIPHER_PASS = contract.CIPHER_PASS_KEY


def stanza_prefix(spec: ClusterSpec) -> str:
    """The S3 key prefix the cluster's members may write: its repository and node files."""
    return contract.cluster_prefix(spec.cluster_name)


class EncryptionKey(pulumi.ComponentResource):
    """A customer-managed KMS key with yearly rotation and an alias ``alias/pgha/<cluster>``."""

    key_arn: pulumi.Output[str]
    key_id: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:EncryptionKey", name, None, opts)
        key = aws.kms.Key(f"{name}-key", description=f"pgha {spec.cluster_name}: volumes, backups, secret",
                          enable_key_rotation=True, deletion_window_in_days=30,
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


def node_policy_document(spec: ClusterSpec, *, bucket_arn: str, secret_arn: str, key_arn: str) -> str:
    """The members' inline policy: their secret, their bucket prefix, their key, their status
    parameters. No ``*`` resources."""
    statements = [
        {"Sid": "ReadClusterSecret", "Effect": "Allow",
         "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"], "Resource": secret_arn},
        *s3_statements(spec, bucket_arn),
        {"Sid": "UseClusterKey", "Effect": "Allow",
         "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"], "Resource": key_arn},
        # Readiness: each member publishes /pgha/<cluster>/<member>/status, which `pulumi up` waits on.
        {"Sid": "PublishMemberStatus", "Effect": "Allow", "Action": ["ssm:PutParameter", "ssm:GetParameter"],
         "Resource": status_parameters_arn(spec, account_arn=secret_arn)},
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def node_access_policy(name: str, *, spec: ClusterSpec, role_name: pulumi.Input[str],
                       bucket_arn: pulumi.Input[str], secret_arn: pulumi.Input[str], key_arn: pulumi.Input[str],
                       parent: pulumi.Resource) -> aws.iam.RolePolicy:
    """Attach the members' data access policy to the role."""
    document = pulumi.Output.all(bucket_arn, secret_arn, key_arn).apply(
        lambda v: node_policy_document(spec, bucket_arn=v[0], secret_arn=v[1], key_arn=v[2]))
    return aws.iam.RolePolicy(f"{name}-access", role=role_name, policy=document, opts=child(parent))


class ClusterSecret(pulumi.ComponentResource):
    """Generated passwords and the Secrets Manager secret the members read at boot.

    The secret's JSON: ``superuser_password``, ``replication_password``,
    ``pgbouncer_auth_password``, ``patroni_rest_password``, ``monitor_password``, ``app_password``,
    ``tls_keys`` (member name -> private key PEM) and, with backup encryption,
    ``pgbackrest_cipher_pass``, which the cipher secret (``cipher_secret_arn``) holds again on
    its own as ``{"pgbackrest_cipher_pass": ...}`` for branches.
    """

    secret_arn: pulumi.Output[str]
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
        payload = pulumi.Output.all(passwords=pulumi.Output.all(**self.passwords),
                                    tls_keys=pulumi.Output.all(**dict(tls_keys)))
        secret_string: pulumi.Output[str] = pulumi.Output.secret(payload.apply(
            lambda v: json.dumps({**v["passwords"], "tls_keys": v["tls_keys"]}, sort_keys=True)))
        aws.secretsmanager.SecretVersion(f"{name}-secret-value", secret_id=secret.id, secret_string=secret_string,
                                         opts=child(self))
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
