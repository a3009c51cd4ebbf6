"""``PostgresCluster``: a highly available PostgreSQL cluster on EC2 as one Pulumi component.

The constructor validates everything first (spec rules, region, AZs, given subnets) and
only then registers itself and its children, so a bad input declares nothing at all.
"""

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypedDict

import pulumi
import pulumi_aws as aws

from ..spec import PORTS, SERVICES, ClusterSpec, build_spec
from . import network as net
from .access import InstanceConnect, shell_command
from .alarms import StatusCheckAlarms
from .ami import choose_ami
from .backup import BackupBucket
from .common import invoke_options
from .endpoints import Endpoints
from .identity import ClusterSecret, EncryptionKey, NodeRole, node_access_policy
from .logs import LogBucket
from .node import Node, node_context, rolling_order
from .node_logs import NodeLogGroup
from .nodefiles import upload_node_files
from .restore import cipher_secret_reference, restore_source_of, source_read_access
from .security import SecurityGroups
from .tls import ClusterTls
from .vpc_endpoints import InterfaceEndpoints

if TYPE_CHECKING:
    from .kubernetes import Observability

TYPE_TOKEN = "pgha:index:PostgresCluster"


# The Args classes mirror spec.schema key by key (tests/test_schema.py checks names, types and
# the "(default ...)" of each docstring). Values are plain, not pulumi.Input: the spec is
# validated and the members laid out while the program runs, before any resource exists.


class StorageArgs(TypedDict, total=False):
    """Where PostgreSQL's data lives."""

    kind: str
    """One EBS volume per member (``ebs``), or the instance's NVMe store (``metal``). (default ``ebs``)"""
    size_gib: int
    """EBS volume size in GiB (1-65536 for gp3, 4-65536 for io2). (default 100)"""
    volume_type: str
    """EBS volume type, ``gp3`` or ``io2``. (default ``gp3``)"""
    iops: int
    """Provisioned IOPS, within the volume type's limits. (default 3000)"""
    throughput_mibps: int
    """gp3 throughput in MiB/s (at most 0.25 per IOPS above 125). (default 125)"""


class NetworkArgs(TypedDict, total=False):
    """The VPC and who may connect."""

    vpc_id: str
    """An existing VPC; omit to let pgha create one. (default a new VPC)"""
    subnet_ids: Sequence[str]
    """With ``vpc_id``: one private subnet per availability zone, in AZ order. (default none)"""
    vpc_cidr: str
    """CIDR of the created VPC, /16 to /22. (default ``10.42.0.0/16``)"""
    allowed_cidrs: Sequence[str]
    """Client CIDRs allowed on the service ports. (default the VPC CIDR)"""
    allowed_security_group_ids: Sequence[str]
    """Client security groups allowed on the service ports. (default none)"""
    monitoring_cidrs: Sequence[str]
    """CIDRs allowed on the metrics ports. (default none)"""
    cidr_policy: str
    """How broad ``allowed_cidrs`` and ``monitoring_cidrs`` may be: ``private`` (inside 10/8, 172.16/12, 192.168/16, 100.64/10 or fc00::/7) or ``public`` (any range, opted in deliberately); either way no block broader than /8 (/32 for public IPv6). (default ``private``)"""
    nat_gateways: str
    """NAT gateways of a created VPC: one per AZ (``per-az``) or a ``single`` one. (default ``per-az``)"""
    expose_direct_ports: bool
    """Also allow clients on 5432 (PostgreSQL) and 6432 (PgBouncer) of each member. (default ``false``)"""
    vpc_endpoints: str
    """Interface endpoints (private DNS) for the AWS APIs the members call: ``create`` them in the members' subnets (about $7.30 a month per service and AZ), ``existing`` (a given VPC already has them) or ``none`` (through the NAT gateways). (default ``create``; ``none`` on a branch)"""
    package_mirror_cidrs: Sequence[str]
    """With ``vpc_endpoints`` create or existing: where the members may reach Debian's mirrors (443), their only egress beyond the VPC and S3; an internal mirror's block, or none for an image that has every package (either needs ``ami_id``, an image of one's own). (default ``0.0.0.0/0`` (Debian's mirrors are a CDN))"""


class BackupArgs(TypedDict, total=False):
    """pgBackRest schedules (cron, UTC), retention and compression."""

    full_schedule: str
    """Cron (five fields, UTC) of full backups. (default ``0 1 * * *``)"""
    diff_schedule: str
    """Cron of differential backups. (default none)"""
    incr_schedule: str
    """Cron of incremental backups. (default none)"""
    retention_days: int
    """Days full backups are kept, 1 to 3650. (default 14)"""
    compression: str
    """pgBackRest compression: ``lz4``, ``zst``, ``gz``, ``bz2`` or ``none``. (default ``lz4``)"""
    encryption: bool
    """Encrypt the repository with a pgBackRest cipher pass (on top of SSE-KMS). (default ``false``)"""


class LogsArgs(TypedDict, total=False):
    """The members' daemon logs in CloudWatch Logs (group ``/pgha/<cluster_name>``)."""

    retention_days: int
    """Days CloudWatch Logs keeps the members' daemon logs (one of the periods CloudWatch allows). (default 7)"""


class BranchArgs(TypedDict, total=False):
    """``stack_kind`` ``branch``: where the branch's data comes from and up to when."""

    source_stack: str
    """The source as a stack name (stack, project/stack or org/project/stack), read by a
    StackReference: its bucket, stanza, key and cipher secret come from its outputs. (default none)"""
    source_bucket: str
    """The source's backup bucket (instead of ``source_stack``). (default none)"""
    source_stanza: str
    """With ``source_bucket``: the source's cluster name (its stanza). (default none)"""
    source_cipher_secret_arn: str
    """With ``source_bucket``, an encrypted source: its ``backupCipherSecretArn`` output. (default none)"""
    source_key_arn: str
    """With ``source_bucket``: the source's KMS key ARN (its ``backupKeyArn`` output). (default none)"""
    target_time: str
    """Restore up to this ISO-8601 time with a zone, or ``latest``. (default the end of the archive)"""
    target_lsn: str
    """Restore up to this LSN (``0/3000060``) instead of a time. (default none)"""


class KubernetesArgs(TypedDict, total=False):
    """``kubernetes``: where the monitoring and connection objects go."""

    namespace: str
    """Namespace of the monitoring objects, the applications' Secret and the Services (a DNS-1123
    label); required once ``kubernetes`` is given. (default none)"""
    kubeconfig: str
    """Path of a kubeconfig file for a provider of its own. (default the default Kubernetes provider)"""
    context: str
    """The kubeconfig context to use. (default the kubeconfig's current context)"""
    release: str
    """The ``release`` label kube-prometheus-stack selects ScrapeConfigs and PrometheusRules on (its
    Helm release name). (default ``kube-prometheus-stack``)"""
    scrape_interval: str
    """How often Prometheus scrapes each target (``30s``, ``1m``). (default ``30s``)"""


class PostgresClusterArgs(TypedDict, total=False):
    """Inputs of ``PostgresCluster``: the snake_case names of the stack config keys."""

    cluster_name: str
    """Pigsty-style cluster name; prefixes members and services. (default ``pg-<stack>``)"""
    arch: str
    """CPU architecture, ``arm64`` or ``x86_64``. (default ``arm64``)"""
    instance_type: str
    """EC2 instance type from pgha's catalog. (default per arch and storage kind)"""
    storage: StorageArgs
    """Data storage: an EBS volume or the instance-store NVMe. (default each key's default)"""
    replicas: int
    """Replicas besides the primary, 0 to 5; a branch defaults to 0. (default 2)"""
    availability_zones: Sequence[str]
    """Three distinct availability zones of the region. (default the region's first three)"""
    postgres_version: int
    """PostgreSQL major version: the one Debian 13 (the node image) provides. (default 17)"""
    profile: str
    """Tuning profile: ``oltp``, ``olap``, ``crit`` or ``tiny``. (default ``oltp``)"""
    rto: str
    """Failover timing plan: ``fast``, ``norm``, ``safe`` or ``wide``. (default ``norm``)"""
    rpo: int
    """Bytes of WAL a failover may lose; 0 means synchronous replication. (default 0)"""
    parameters: Mapping[str, Any]
    """Extra PostgreSQL parameters (name -> value); those pgha manages are refused. (default none)"""
    network: NetworkArgs
    """VPC, subnets and who may connect. (default each key's default)"""
    backup: BackupArgs
    """pgBackRest schedules, retention, compression and encryption. (default each key's default)"""
    logs: LogsArgs
    """The members' daemon logs in CloudWatch Logs (``/pgha/<cluster_name>``). (default each key's default)"""
    stack_kind: str
    """Deployment shape: ``regional``, or ``branch``, restored from another stack's backups (one
    small asynchronous node unless ``replicas`` is raised). (default ``regional``)"""
    branch: BranchArgs
    """With ``stack_kind`` ``branch``: where its data comes from and up to when. (default none)"""
    ami_id: str
    """Pin the AMI. (default the newest official Debian 13 image of the arch)"""
    pool_mode: str
    """PgBouncer pool mode: ``transaction``, ``session`` or ``statement``. (default ``transaction``)"""
    kubernetes: KubernetesArgs
    """Monitoring (ScrapeConfigs, the PrometheusRule) and the applications' Secret and ExternalName
    Services in a Kubernetes cluster running kube-prometheus-stack (an ``Observability`` child);
    unset, nothing is declared there. (default none)"""


def resolve_region(opts: pulumi.ResourceOptions | None = None) -> tuple[str, tuple[str, ...]]:
    """The region of the aws provider and its available (non opt-in) availability zones."""
    invoke = invoke_options(opts)
    region = aws.config.region if invoke is None else None
    if not region:
        region = aws.get_region(opts=invoke).region
    zones = aws.get_availability_zones(
        state="available", filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}], opts=invoke)
    return region, tuple(zones.names)


def resolve_offerings(zones: tuple[str, ...], opts: pulumi.ResourceOptions | None = None) -> dict[str, set[str]]:
    """AZ -> the instance types EC2 offers there, for ``zones`` (checked before any resource)."""
    found = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone", filters=[{"name": "location", "values": list(zones)}],
        opts=invoke_options(opts))
    offered: dict[str, set[str]] = {zone: set() for zone in zones}
    for instance_type, zone in zip(found.instance_types, found.locations):
        offered.setdefault(zone, set()).add(instance_type)
    return offered


def spec_of(args: PostgresClusterArgs, opts: pulumi.ResourceOptions | None = None) -> ClusterSpec:
    """The validated spec of ``args`` in the provider's region (raises ``SpecError``, declares nothing)."""
    region, zones = resolve_region(opts)
    return build_spec(dict(args), stack=pulumi.get_stack(), region=region, region_azs=zones,
                      style="args", offerings=resolve_offerings(zones, opts))


class PostgresCluster(pulumi.ComponentResource):
    """A Patroni/etcd/HAProxy/PgBouncer/pgBackRest PostgreSQL cluster across three AZs.

    ``PostgresCluster("db", {"replicas": 2, "storage": {"kind": "ebs", "size_gib": 200}})``
    validates its args and raises ``SpecError`` listing every problem before anything is
    declared. A stack that has already validated its config passes ``spec=`` instead.

    A branch (``stack_kind`` ``branch``) reads its source from ``branch``: a StackReference
    the component makes (``source_stack``) or a given bucket and stanza. The source is plain
    config, not an Input: a source declared in the same program is not supported, because the
    spec (and with it the members and their files) must be known before anything is declared.
    """

    endpoints: pulumi.Output[dict[str, Any]]
    """NLB DNS name, zone name, ``host:port`` per service (Route53 and NLB), member names."""
    member_ips: pulumi.Output[dict[str, str]]
    """Fixed private IP of each member."""
    member_azs: pulumi.Output[dict[str, str]]
    """Availability zone of each member."""
    instance_ids: pulumi.Output[dict[str, str]]
    """EC2 instance id of each member."""
    vpc_id: pulumi.Output[str]
    """The VPC the cluster lives in."""
    nlb_dns_name: pulumi.Output[str]
    """DNS name of the internal NLB."""
    zone_name: pulumi.Output[str]
    """The private hosted zone (``<cluster_name>.pgha.internal``)."""
    bucket_name: pulumi.Output[str]
    """The pgBackRest repository bucket."""
    log_group_name: pulumi.Output[str]
    """The CloudWatch Logs group of the members' daemon logs (``/pgha/<cluster_name>``)."""
    secret_arn: pulumi.Output[str]
    """ARN of the Secrets Manager secret with the passwords and TLS keys."""
    backup_key_arn: pulumi.Output[str]
    """ARN of the KMS key of the repository, volumes and secrets (a branch of this cluster decrypts with it)."""
    backup_cipher_secret_arn: pulumi.Output[str] | None
    """With backup encryption: ARN of the secret holding the repository cipher pass alone (for branches)."""
    ca_cert_pem: pulumi.Output[str]
    """The cluster CA certificate clients verify the servers with."""
    superuser_password: pulumi.Output[str]
    """The postgres superuser password (a Pulumi secret)."""
    app_password: pulumi.Output[str]
    """The application role's password (``dbuser_app``, database ``app``; a Pulumi secret)."""
    instance_connect: pulumi.Output[dict[str, Any]]
    """The way in: the EC2 Instance Connect Endpoint's id, the shell command per member, and the
    IAM policy (JSON) an operator needs for it (README "Getting a shell on a node")."""

    # ``args`` is a plain TypedDict, not ``X | None``: Pulumi's component analyser (the schema other
    # languages use) reads this annotation and refuses unions. The empty default is never mutated.
    def __init__(self, name: str, args: PostgresClusterArgs = PostgresClusterArgs(),
                 opts: pulumi.ResourceOptions | None = None, *, spec: ClusterSpec | None = None) -> None:
        # Validate everything before registering anything: a SpecError must leave no trace.
        if spec is None:
            spec = spec_of(args, opts)
        elif args:
            raise TypeError("PostgresCluster takes either args or spec=, not both")
        existing = None if spec.network.creates_vpc else net.lookup_existing(spec, invoke_opts=invoke_options(opts))

        super().__init__(TYPE_TOKEN, name, None, opts)
        self.spec = spec
        this = pulumi.ResourceOptions(parent=self)
        # A branch: the repository it restores from.
        restore_source = restore_source_of(spec) if spec.restore is not None else None
        self.restore_source = restore_source

        network_component = None
        if existing is None:
            network_component = net.Network(f"{name}-network", spec=spec, opts=this)
            refs = network_component.refs
        else:
            refs = net.existing_refs(existing)
        member_ips = {m.name: refs.ip_of(m) for m in spec.members}

        groups = SecurityGroups(f"{name}-sg", spec=spec, vpc_id=refs.vpc_id, vpc_cidr=refs.vpc_cidr, opts=this)
        # The members' AWS API calls through the VPC (network.vpcEndpoints create; existing: the
        # given VPC has them, checked by lookup_existing).
        api_endpoints = None
        if spec.network.vpc_endpoints == "create":
            api_endpoints = InterfaceEndpoints(f"{name}-api", spec=spec, vpc_id=refs.vpc_id, subnet_ids=refs.subnet_ids,
                                               node_security_group_id=groups.node_sg_id, opts=this)
        role = NodeRole(f"{name}-role", spec=spec, opts=this)
        key = EncryptionKey(f"{name}-kms", spec=spec, role_arn=role.role_arn, opts=this)
        backup = BackupBucket(f"{name}-backup", spec=spec, key_arn=key.key_arn, role_arn=role.role_arn,
                              s3_endpoint_id=refs.s3_endpoint_id, opts=this)
        LogBucket(f"{name}-logs", spec=spec, source_bucket=backup.bucket_name, source_bucket_arn=backup.bucket_arn,
                  account_arn=role.role_arn, vpc_id=refs.vpc_id if network_component is not None else None, opts=this)
        logs = NodeLogGroup(f"{name}-node-logs", spec=spec, key_arn=key.key_arn, opts=this)
        certs = ClusterTls(f"{name}-tls", spec=spec, member_ips=member_ips, opts=this)
        secret = ClusterSecret(f"{name}-secret", spec=spec, key_arn=key.key_arn, tls_keys=certs.key_pems, opts=this)
        access = node_access_policy(f"{name}-role", spec=spec, role_name=role.role_name,
                                    bucket_arn=backup.bucket_arn, secret_arn=secret.secret_arn,
                                    key_arn=key.key_arn, parent=self,
                                    vpc_id=refs.vpc_id if refs.egress_ips or spec.network.through_endpoints else "",
                                    egress_ips=refs.egress_ips, through_endpoints=spec.network.through_endpoints,
                                    s3_in_vpc=refs.s3_endpoint_id is not None,
                                    tls_secret_arns=secret.tls_secret_arns, member_ips=member_ips,
                                    # A running cluster gaining endpoints: the Deny that refuses the NAT
                                    # path applies only once the endpoints are there.
                                    after=[api_endpoints] if api_endpoints else [])
        ami = choose_ami(spec, parent=self)
        ctx = node_context(spec, member_ips=member_ips, bucket=backup.bucket_name, secret_arn=secret.secret_arn,
                           tls_secret_arns=secret.tls_secret_arns,
                           ca_cert_pem=certs.ca_cert_pem, cert_pems=certs.cert_pems,
                           peer_ips=tuple(refs.ip_of(m) for m in spec.member_slots))
        restore_access = []
        if restore_source is not None:
            # A branch: read-only access to the source's repository, whose name the nodes need,
            # and (encrypted source) to the secret its cipher pass is fetched from at boot.
            restore_access.append(source_read_access(f"{name}-role", spec=spec, role_name=role.role_name,
                                                     source=restore_source, parent=self))
            ctx = pulumi.Output.all(ctx, restore_source.bucket, restore_source.stanza,
                                    restore_source.cipher_secret_arn).apply(
                lambda v: dataclasses.replace(v[0], restore_bucket=v[1], restore_stanza=v[2],
                                              restore_cipher_secret=cipher_secret_reference(v[3])))

        files = upload_node_files(name, spec=spec, bucket=backup.bucket_name, key_arn=key.key_arn,
                                  member_ips=member_ips, ctx=ctx, parent=self)

        # A node boots only when it can read its secret and configuration, reach the internet and
        # the AWS APIs, and ship its logs.
        base: list[pulumi.Resource] = [access, logs, *restore_access,
                                       *([network_component] if network_component else []),
                                       *([api_endpoints] if api_endpoints else [])]
        nodes: dict[str, Node] = {}
        previous: list[pulumi.Resource] = []
        for member in rolling_order(spec):
            node = Node(f"{name}-{member.index}", spec=spec, member=member, subnet_id=refs.subnet_of(member),
                        private_ip=member_ips[member.name], security_group_id=groups.node_sg_id,
                        instance_profile=role.instance_profile_name, key_arn=key.key_arn, ami=ami,
                        context=ctx, bucket=backup.bucket_name, files=files, after=[*base, *previous], opts=this)
            nodes[member.name] = node
            previous = node.ready

        # EC2 brings back a member whose host or operating system fails (alarms.py).
        StatusCheckAlarms(f"{name}-alarms", spec=spec,
                          instance_ids={m: n.instance_id for m, n in nodes.items()}, opts=this)

        endpoints = Endpoints(f"{name}-endpoints", spec=spec, vpc_id=refs.vpc_id, subnet_ids=refs.subnet_ids,
                              lb_security_group_id=groups.lb_sg_id, member_ips=member_ips, opts=this)

        # The way in: EC2 Instance Connect through an endpoint in the first member's subnet.
        eice = InstanceConnect(f"{name}-eice", spec=spec, subnet_id=refs.subnet_of(spec.members[0]),
                               security_group_id=groups.eice_sg_id, member_ips=member_ips, opts=this)

        zone = spec.zone_name
        self.member_ips = pulumi.Output.from_input(member_ips)
        self.member_azs = pulumi.Output.from_input({m.name: m.availability_zone for m in spec.members})
        self.instance_ids = pulumi.Output.all(**{n: nodes[n].instance_id for n in sorted(nodes)})
        self.vpc_id = pulumi.Output.from_input(refs.vpc_id)
        self.nlb_dns_name = endpoints.nlb_dns_name
        self.zone_name = pulumi.Output.from_input(zone)
        self.bucket_name = backup.bucket_name
        self.log_group_name = logs.group_name
        self.secret_arn = secret.secret_arn
        self.backup_key_arn = key.key_arn
        self.backup_cipher_secret_arn = secret.cipher_secret_arn
        self.ca_cert_pem = certs.ca_cert_pem
        self.superuser_password = pulumi.Output.secret(secret.passwords["superuser_password"])
        self.app_password = pulumi.Output.secret(secret.passwords["app_password"])
        self.instance_connect = pulumi.Output.all(eice.endpoint_id, eice.operator_policy, self.instance_ids).apply(
            lambda v: {"endpoint_id": v[0], "operator_policy": v[1],
                       "shell_commands": {m: shell_command(i, spec.region) for m, i in sorted(v[2].items())}})
        # pgha:kubernetes: monitoring and the applications' objects in Kubernetes (nothing otherwise,
        # not even a provider).
        self.observability: "Observability | None" = None
        if spec.kubernetes is not None:
            from .kubernetes import Observability  # pulumi_kubernetes loads only when it is used

            self.observability = Observability(
                f"{name}-observability", {"member_ips": member_ips, "nlb_dns_name": endpoints.nlb_dns_name,
                                          "ca_cert_pem": certs.ca_cert_pem, "app_password": self.app_password},
                this, spec=spec)
        self.endpoints = endpoints.nlb_dns_name.apply(lambda dns: {
            "nlb_dns_name": dns,
            "zone_name": zone,
            "services": {s: f"{spec.service_name(s)}.{zone}:{PORTS[s]}" for s in SERVICES},
            "nlb_services": {s: f"{dns}:{PORTS[s]}" for s in SERVICES},
            "members": {m.name: f"{m.name}.{zone}" for m in spec.members},
        })
        self.register_outputs({
            "endpoints": self.endpoints, "member_ips": self.member_ips, "member_azs": self.member_azs,
            "instance_ids": self.instance_ids, "vpc_id": self.vpc_id, "nlb_dns_name": self.nlb_dns_name,
            "zone_name": self.zone_name, "bucket_name": self.bucket_name,
            "log_group_name": self.log_group_name, "secret_arn": self.secret_arn,
            "backup_key_arn": self.backup_key_arn, "backup_cipher_secret_arn": self.backup_cipher_secret_arn,
            "ca_cert_pem": self.ca_cert_pem, "superuser_password": self.superuser_password,
            "app_password": self.app_password, "instance_connect": self.instance_connect,
        })
