"""Read-only access of a branch's members to its source's backup repository.

A branch restores from another stack's pgBackRest repository (the source's bucket, stanza
prefix ``<stanza>/``) and archives into its own bucket. Its role may list and read the
source's prefix and decrypt with the source's KMS key, nothing else: no Put, no Delete, so
a branch can never write into the source's history, whatever its configuration says. For an
encrypted source it may also read the source's cipher secret (the repository cipher pass
alone, not the source's cluster secret), which its nodes fetch at boot.
"""

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec
from .common import child, partition
from .identity import via_services


@dataclass(frozen=True)
class RestoreSource:
    """The source repository of a branch: values or Outputs (e.g. from a StackReference)."""

    bucket: pulumi.Input[str]
    stanza: pulumi.Input[str]
    key_arn: pulumi.Input[str] | None = None
    # An encrypted source: the secret with its pgBackRest cipher pass (None or "" otherwise).
    cipher_secret_arn: pulumi.Input[str] | None = None


def restore_source_of(spec: ClusterSpec) -> RestoreSource:
    """Where a branch's data comes from: a StackReference's outputs, or the bucket and stanza given.

    The StackReference has no parent, as when the stack program made it: its URN stays the same.
    """
    r = spec.restore
    assert r is not None, "a branch spec always has restore (validated)"
    if r.source_stack:
        source = pulumi.StackReference(r.source_stack)
        return RestoreSource(bucket=source.require_output("backupBucket"),
                             stanza=source.require_output("clusterName"),
                             key_arn=source.get_output("backupKeyArn"),
                             # Exported by an encrypted source only: absent means unencrypted.
                             cipher_secret_arn=source.get_output("backupCipherSecretArn"))
    return RestoreSource(bucket=r.source_bucket, stanza=r.source_stanza, key_arn=r.source_key_arn or None,
                         cipher_secret_arn=r.source_cipher_secret_arn or None)


def cipher_secret_reference(arn: str | None) -> dict[str, str]:
    """Where a node fetches the source's cipher pass (node facts); empty for an unencrypted source.

    The secret's region is the ARN's: a branch may live in another region than its source.
    """
    if not arn:
        return {}
    return {"source": "aws", "id": arn, "region": arn.split(":")[3]}


def source_read_policy_document(spec: ClusterSpec, *, bucket: str, stanza: str, key_arn: str | None,
                                cipher_secret_arn: str | None = None) -> str:
    """List and read ``<bucket>/<stanza>/*``; decrypt with the source's key when known; read
    the source's cipher secret (that ARN exactly) when the source is encrypted."""
    arn = f"arn:{partition(spec.region)}:s3:::{bucket}"
    prefix = f"{stanza}/"
    statements: list[dict[str, Any]] = [
        {"Sid": "ListSourceRepo", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": arn,
         "Condition": {"StringLike": {"s3:prefix": [stanza, f"{prefix}*"]}}},
        {"Sid": "ReadSourceRepo", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": f"{arn}/{prefix}*"},
    ]
    if key_arn:
        # The repository objects (SSE-KMS) and the cipher secret are both encrypted with it;
        # only through S3 and Secrets Manager of the key's region (the source's key policy
        # allows the account that much: identity.key_policy_document).
        statements.append({"Sid": "DecryptSourceRepo", "Effect": "Allow", "Action": "kms:Decrypt",
                           "Resource": key_arn, "Condition": {"StringEquals": {
                               "kms:ViaService": via_services(spec, "s3", "secretsmanager",
                                                              region=key_arn.split(":")[3])}}})
    if cipher_secret_arn:
        statements.append({"Sid": "ReadSourceCipherSecret", "Effect": "Allow",
                           "Action": "secretsmanager:GetSecretValue", "Resource": cipher_secret_arn})
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def source_read_access(name: str, *, spec: ClusterSpec, role_name: pulumi.Input[str], source: RestoreSource,
                       parent: pulumi.Resource) -> aws.iam.RolePolicy:
    """Attach the branch's read-only access to its source (repository, key, cipher secret) to its role."""
    document = pulumi.Output.all(source.bucket, source.stanza, source.key_arn, source.cipher_secret_arn).apply(
        lambda v: source_read_policy_document(spec, bucket=v[0], stanza=v[1], key_arn=v[2], cipher_secret_arn=v[3]))
    return aws.iam.RolePolicy(f"{name}-restore-source", role=role_name, policy=document, opts=child(parent))
