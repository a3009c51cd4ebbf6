"""The pgBackRest repository bucket.

Versioned, SSE-KMS with a bucket key, public access fully blocked, TLS-only. pgBackRest's
own retention (``backup.retention_days``) deletes current objects; the lifecycle rule only
removes what pgBackRest's deletes leave behind (noncurrent versions, after the retention and
a margin, so an accidental or malicious delete can still be undone) and aborts incomplete
multipart uploads. It never expires current objects.

The bucket and its settings are protected and retained: ``pulumi destroy`` fails on the
bucket, and after ``pulumi state unprotect`` it leaves the bucket (and the backups) in place.
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


def bucket_policy_document(spec: ClusterSpec, *, bucket_arn: str, role_arn: str) -> str:
    """Deny anything without TLS; allow the members' role its stanza prefix."""
    allow = []
    for statement in s3_statements(spec, bucket_arn):
        allow.append({**statement, "Sid": f"Members{statement['Sid']}", "Principal": {"AWS": role_arn}})
    statements: list[dict[str, Any]] = [
        {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        *allow,
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class BackupBucket(pulumi.ComponentResource):
    """The S3 bucket of the cluster's pgBackRest repository and its settings."""

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, key_arn: pulumi.Input[str], role_arn: pulumi.Input[str],
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
        policy = pulumi.Output.all(bucket.arn, role_arn).apply(
            lambda v: bucket_policy_document(spec, bucket_arn=v[0], role_arn=v[1]))
        # The public access block first: S3 checks a new policy against it.
        aws.s3.BucketPolicy(f"{name}-policy", bucket=bucket.id, policy=policy,
                            opts=child(self, depends_on=[block], **settings))
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.register_outputs({"bucket_name": bucket.bucket})
