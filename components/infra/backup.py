"""The pgBackRest repository bucket.

Versioned, SSE-KMS with a bucket key, public access fully blocked, TLS-only. pgBackRest's
own retention (``backup.retention_days``) deletes current objects; the lifecycle rule only
removes what pgBackRest's deletes leave behind (noncurrent versions, after the retention and
a margin, so an accidental or malicious delete can still be undone) and aborts incomplete
multipart uploads. It never expires current objects.

The bucket and its settings are protected and retained: ``pulumi destroy`` fails on the
bucket, and after ``pulumi state unprotect`` it leaves the bucket (and the backups) in place.

What the members' role cannot do, however its credentials are used: remove a version (its
policy has no s3:DeleteObjectVersion, and the bucket policy denies it that and every setting
that could undo the protection: versioning, lifecycle, the policy itself, Object Lock,
encryption, public access, logging). pgBackRest's expire issues DeleteObject without a version
id, which on this versioned bucket only adds a delete marker; an overwrite makes the previous
object a noncurrent version. Either way the old bytes stay readable (GetObjectVersion) for
``retention_days`` + 7 days after they stopped being current, then the lifecycle rule removes
them. With a created VPC the role's S3 requests must also come through the VPC's S3 gateway
endpoint.

Object Lock is not used: it would add nothing against the members' role (which can already
remove no version), and against an account administrator only compliance mode would (one with
s3:BypassGovernanceRetention or s3:PutBucketPolicy undoes governance mode or this policy
alike), at the price of versions nobody can remove before their retention ends, a retention
that must then match pgBackRest's expire, and PutObject checksums with a retention on every
WAL push. A bucket already holding backups would keep its policy-based protection either way.
"""

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec
from .common import child, cluster_tags
from .identity import s3_statements

NONCURRENT_MARGIN_DAYS = 7
ABORT_MULTIPART_DAYS = 7


# What the members' role may never do to the bucket (an explicit Deny: no IAM policy added
# to the role later can grant it): remove versions, or change what keeps them.
MEMBER_DENIED_ACTIONS: tuple[str, ...] = (
    "s3:BypassGovernanceRetention", "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:DeleteObjectVersion",
    "s3:DeleteObjectVersionTagging", "s3:PutBucketLogging", "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketOwnershipControls", "s3:PutBucketPolicy", "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketVersioning", "s3:PutEncryptionConfiguration", "s3:PutLifecycleConfiguration",
    "s3:PutObjectLegalHold", "s3:PutObjectRetention", "s3:PutReplicationConfiguration",
)


def bucket_policy_document(spec: ClusterSpec, *, bucket_arn: str, role_arn: str, s3_endpoint_id: str = "") -> str:
    """Deny anything without TLS; deny the members' role permanent deletes and setting changes
    (and, given the VPC's S3 gateway endpoint, any request not made through it); allow the
    members' role its stanza prefix."""
    allow = []
    for statement in s3_statements(spec, bucket_arn):
        allow.append({**statement, "Sid": f"Members{statement['Sid']}", "Principal": {"AWS": role_arn}})
    everything = [bucket_arn, f"{bucket_arn}/*"]
    statements: list[dict[str, Any]] = [
        {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": everything, "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "DenyMembersPermanentDeletes", "Effect": "Deny", "Principal": {"AWS": role_arn},
         "Action": list(MEMBER_DENIED_ACTIONS), "Resource": everything},
    ]
    if s3_endpoint_id:
        # The members reach S3 through the gateway endpoint only (network.Network): their
        # credentials used anywhere else (copied off a member) get nothing from the bucket.
        statements.append({"Sid": "DenyMembersOutsideTheVpc", "Effect": "Deny", "Principal": {"AWS": role_arn},
                           "Action": "s3:*", "Resource": everything,
                           "Condition": {"StringNotEquals": {"aws:SourceVpce": s3_endpoint_id}}})
    statements += allow
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class BackupBucket(pulumi.ComponentResource):
    """The S3 bucket of the cluster's pgBackRest repository and its settings."""

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, key_arn: pulumi.Input[str], role_arn: pulumi.Input[str],
                 s3_endpoint_id: pulumi.Input[str] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:BackupBucket", name, None, opts)
        keep = {"protect": True, "retain_on_delete": True}
        # Deleting these setting resources would weaken a retained bucket: keep them too.
        settings = {"retain_on_delete": True}
        bucket = aws.s3.Bucket(f"{name}-bucket", bucket_prefix=f"{spec.cluster_name}-backup-", force_destroy=False,
                               tags=cluster_tags(spec, Name=f"{spec.cluster_name}-backup"),
                               opts=child(self, **keep))
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child(self, **settings))
        aws.s3.BucketOwnershipControls(f"{name}-ownership", bucket=bucket.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=child(self, **settings))
        versioning = aws.s3.BucketVersioning(f"{name}-versioning", bucket=bucket.id,
                                             versioning_configuration={"status": "Enabled"},
                                             opts=child(self, **settings))
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                                "kms_master_key_id": key_arn},
                    "bucket_key_enabled": True}],
            opts=child(self, **settings))
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=bucket.id,
            rules=[{
                "id": "noncurrent-versions-and-uploads",
                "status": "Enabled",
                "filter": {},
                "noncurrent_version_expiration": {
                    "noncurrent_days": spec.backup.retention_days + NONCURRENT_MARGIN_DAYS},
                "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_MULTIPART_DAYS},
                # Only delete markers that hide nothing; never a current object.
                "expiration": {"expired_object_delete_marker": True},
            }],
            # Noncurrent-version rules act on versions: declare them once versioning is on.
            opts=child(self, depends_on=[versioning], **settings))
        policy = pulumi.Output.all(bucket.arn, role_arn, s3_endpoint_id or "").apply(
            lambda v: bucket_policy_document(spec, bucket_arn=v[0], role_arn=v[1], s3_endpoint_id=v[2]))
        # The public access block first: S3 checks a new policy against it.
        aws.s3.BucketPolicy(f"{name}-policy", bucket=bucket.id, policy=policy,
                            opts=child(self, depends_on=[block], **settings))
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.register_outputs({"bucket_name": bucket.bucket})
