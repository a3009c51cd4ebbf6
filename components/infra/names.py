"""AWS's limits on the names pgha sets or lets Pulumi derive, and the names pgha sets itself.

Pulumi derives a physical name from the logical one plus '-' and 7 random characters; AWS
refuses it beyond the type's limit, and the mock runtime never checks ("name '...' plus 7
random chars is longer than maximum length 32" in preview). The logical names start with
the component's name, which a user's program chooses, so where the limit is tight (load
balancers and target groups: 32) pgha names the resource from the cluster name, whose
length the spec bounds.
"""

from typing import Mapping

# Random characters Pulumi appends to a derived name, with their '-'.
AUTONAME_SUFFIX = 8
# S3 appends 26 characters to a bucket_prefix.
BUCKET_PREFIX_SUFFIX = 26

# type token -> longest physical name AWS accepts.
NAME_LIMITS: Mapping[str, int] = {
    "aws:lb/loadBalancer:LoadBalancer": 32,
    "aws:lb/targetGroup:TargetGroup": 32,
    "aws:iam/role:Role": 64,
    "aws:iam/instanceProfile:InstanceProfile": 128,
    "aws:iam/rolePolicy:RolePolicy": 128,
    "aws:ec2/securityGroup:SecurityGroup": 255,
    "aws:kms/alias:Alias": 256,
    "aws:secretsmanager/secret:Secret": 512,
    "aws:s3/bucket:Bucket": 63,
    "aws:route53/zone:Zone": 1024,
    "aws:cloudwatch/logGroup:LogGroup": 512,
    "aws:cloudwatch/metricAlarm:MetricAlarm": 255,
}


def load_balancer_name(cluster_name: str) -> str:
    return f"{cluster_name}-nlb"


def target_group_name(cluster_name: str, service: str) -> str:
    """``<cluster>-<service>``: 32 for the longest cluster name and service (``-primary``)."""
    return f"{cluster_name}-{service}"
