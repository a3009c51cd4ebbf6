"""The regional stack: one PostgresCluster in one region, and its stack outputs."""

import pulumi

from ..infra import PostgresCluster
from ..spec import ClusterSpec


def deploy(spec: ClusterSpec) -> PostgresCluster:
    """Declare the cluster of ``spec`` and export what clients and operators need."""
    cluster = PostgresCluster(spec.cluster_name, spec=spec)
    export_outputs(spec, cluster)
    return cluster


def export_outputs(spec: ClusterSpec, cluster: PostgresCluster) -> None:
    """The stack outputs of every stack kind that declares a PostgresCluster."""
    pulumi.export("clusterName", spec.cluster_name)
    pulumi.export("region", spec.region)
    pulumi.export("endpoints", cluster.endpoints)
    pulumi.export("memberIps", cluster.member_ips)
    pulumi.export("memberAzs", cluster.member_azs)
    pulumi.export("instanceIds", cluster.instance_ids)
    # The way in: `aws ec2-instance-connect ssh ...` per member, the endpoint, the operator's IAM policy.
    pulumi.export("instanceConnect", cluster.instance_connect)
    pulumi.export("vpcId", cluster.vpc_id)
    pulumi.export("nlbDnsName", cluster.nlb_dns_name)
    pulumi.export("zoneName", cluster.zone_name)
    pulumi.export("backupBucket", cluster.bucket_name)
    # The members' daemon logs (a stream per member and daemon), kept pgha:logs.retentionDays.
    pulumi.export("logGroup", cluster.log_group_name)
    # A branch of this stack reads the repository with this key (SSE-KMS).
    pulumi.export("backupKeyArn", cluster.backup_key_arn)
    if cluster.backup_cipher_secret_arn is not None:
        # With backup encryption, a branch reads the repository cipher pass from this secret (the
        # pass alone). An ARN, not a secret: the value stays in Secrets Manager.
        pulumi.export("backupCipherSecretArn", cluster.backup_cipher_secret_arn)
    pulumi.export("secretArn", cluster.secret_arn)
    pulumi.export("caCertificate", cluster.ca_cert_pem)
    pulumi.export("superuserPassword", cluster.superuser_password)
    # PgBouncer pools every role but superusers: applications log in as dbuser_app.
    pulumi.export("appPassword", cluster.app_password)
