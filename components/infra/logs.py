"""Where the cluster's audit trails go: a log bucket of their own, for the backup bucket's S3
server access logs (``s3-access/``) and, for a VPC pgha creates, the VPC's flow logs
(``flow-logs/``).

Flow logs go to S3 rather than CloudWatch Logs: no IAM role for the delivery, no use of the
cluster's key by the logs service, one place for both trails (Athena reads them as they lie),
and a retention set by one lifecycle rule. The bucket is encrypted with SSE-S3, not the
cluster's key: the two delivery services write with their own service principals, and giving
them the key (which guards the backups and secrets) would widen who may use it; S3 documents
SSE-S3 as the default encryption that always works for access-log targets.

It is retained by ``pulumi destroy`` (logs are evidence; they outlive the cluster and expire by
the lifecycle rule) but not protected: a destroy completes and leaves it behind.
"""

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec
from .common import child, cluster_tags, partition

LOG_RETENTION_DAYS = 90
ACCESS_LOG_PREFIX = "s3-access/"
FLOW_LOG_PREFIX = "flow-logs/"


def log_bucket_policy_document(spec: ClusterSpec, *, bucket_arn: str, source_bucket_arn: str, account: str) -> str:
    """TLS only; S3's logging service may put access logs of the backup bucket only, and the
    log delivery service flow logs of this account only (AWS's documented statements)."""
    logs_source = f"arn:{partition(spec.region)}:logs:{spec.region}:{account}:*"
    statements: list[dict[str, Any]] = [
        {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "S3ServerAccessLogs", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": f"{bucket_arn}/{ACCESS_LOG_PREFIX}*",
         "Condition": {"ArnLike": {"aws:SourceArn": source_bucket_arn},
                       "StringEquals": {"aws:SourceAccount": account}}},
        {"Sid": "FlowLogsWrite", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": f"{bucket_arn}/{FLOW_LOG_PREFIX}AWSLogs/{account}/*",
         "Condition": {"StringEquals": {"aws:SourceAccount": account, "s3:x-amz-acl": "bucket-owner-full-control"},
                       "ArnLike": {"aws:SourceArn": logs_source}}},
        {"Sid": "FlowLogsCheck", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"},
         "Action": ["s3:GetBucketAcl", "s3:ListBucket"], "Resource": bucket_arn,
         "Condition": {"StringEquals": {"aws:SourceAccount": account}, "ArnLike": {"aws:SourceArn": logs_source}}},
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class LogBucket(pulumi.ComponentResource):
    """The log bucket, the backup bucket's access logging into it and (``vpc_id``) the VPC's flow log."""

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]

    def __init__(self, name: str, *, spec: ClusterSpec, source_bucket: pulumi.Input[str],
                 source_bucket_arn: pulumi.Input[str], account_arn: pulumi.Input[str],
                 vpc_id: pulumi.Input[str] | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:LogBucket", name, None, opts)
        keep = {"retain_on_delete": True}
        bucket = aws.s3.Bucket(f"{name}-bucket", bucket_prefix=f"{spec.cluster_name}-logs-", force_destroy=False,
                               tags=cluster_tags(spec, Name=f"{spec.cluster_name}-logs"), opts=child(self, **keep))
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child(self, **keep))
        # ACLs off: S3 and the log delivery service are allowed by the bucket policy instead.
        aws.s3.BucketOwnershipControls(f"{name}-ownership", bucket=bucket.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=child(self, **keep))
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=child(self, **keep))
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=bucket.id,
            rules=[{"id": "expire-logs", "status": "Enabled", "filter": {},
                    "expiration": {"days": LOG_RETENTION_DAYS},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7}}],
            opts=child(self, **keep))
        policy = pulumi.Output.all(bucket.arn, source_bucket_arn, account_arn).apply(
            lambda v: log_bucket_policy_document(spec, bucket_arn=v[0], source_bucket_arn=v[1],
                                                 account=v[2].split(":")[4]))
        written = aws.s3.BucketPolicy(f"{name}-policy", bucket=bucket.id, policy=policy,
                                      opts=child(self, depends_on=[block], **keep))
        # The delivery checks its permission when logging is turned on: after the policy.
        aws.s3.BucketLogging(f"{name}-backup-access", bucket=source_bucket, target_bucket=bucket.id,
                             target_prefix=ACCESS_LOG_PREFIX, opts=child(self, depends_on=[written], **keep))
        if vpc_id is not None:
            aws.ec2.FlowLog(f"{name}-flow-log", vpc_id=vpc_id, traffic_type="ALL", log_destination_type="s3",
                            log_destination=bucket.arn.apply(lambda arn: f"{arn}/{FLOW_LOG_PREFIX}"),
                            max_aggregation_interval=600, tags=cluster_tags(spec, Name=f"{spec.cluster_name}-flow-log"),
                            opts=child(self, depends_on=[written]))
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.register_outputs({"bucket_name": bucket.bucket})
