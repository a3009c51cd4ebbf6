"""The validated cluster spec: the single source of truth for infrastructure and node files.

Nothing here talks to AWS or Pulumi. ``pgha.spec.validate.build_spec`` is the only way to
make a :class:`ClusterSpec`; everything downstream (resources, rendered files, the loopback
cluster) is a function of it.
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import contract
from .catalog import InstanceType, catalog
from .presets import RTO_PLANS, RtoPlan

# Ports are part of the public interface (HAProxy services follow Pigsty's numbering).
PORTS: Mapping[str, int] = {
    "postgres": 5432,
    "pgbouncer": 6432,
    "primary": 5433,
    "replica": 5434,
    "default": 5436,
    "offline": 5438,
    "haproxy_stats": 9101,
    "patroni": 8008,
    "etcd_client": 2379,
    "etcd_peer": 2380,
    # etcd's metrics listener (plain HTTP, /metrics and /health only): its client port needs a CA certificate.
    "etcd_metrics": 2381,
    "node_exporter": 9100,
    "postgres_exporter": 9630,
    "pgbouncer_exporter": 9631,
    "pgbackrest_exporter": 9854,
    # pgBackRest's TLS server: a standby taking a backup reaches the primary's PostgreSQL through it.
    "pgbackrest_server": 8432,
}

# Pigsty's service names: pg-name-<service> on the HAProxy port of the same name.
SERVICES: tuple[str, ...] = ("primary", "replica", "default", "offline")
CLIENT_PORTS: tuple[int, ...] = tuple(PORTS[s] for s in SERVICES)
METRICS_PORTS: tuple[int, ...] = (
    PORTS["node_exporter"],
    PORTS["postgres_exporter"],
    PORTS["pgbouncer_exporter"],
    PORTS["pgbackrest_exporter"],
    # Also Patroni's metrics (/patroni/metrics): its REST API itself is for members only.
    PORTS["haproxy_stats"],
    PORTS["etcd_metrics"],
)
MEMBER_PORTS: tuple[int, ...] = (
    PORTS["etcd_client"],
    PORTS["etcd_peer"],
    PORTS["postgres"],
    PORTS["pgbouncer"],
    PORTS["patroni"],
    PORTS["pgbackrest_server"],
)


# Certificate lifetimes (infra.tls): ``pulumi up`` renews a certificate inside its last
# EARLY_RENEWAL_HOURS; the certificate-expiry alert fires when half of that window went unused.
CA_VALIDITY_HOURS = 10 * 365 * 24
CERT_VALIDITY_HOURS = 3 * 365 * 24
EARLY_RENEWAL_HOURS = 60 * 24

# The largest cluster: a primary and five replicas over three AZs.
MAX_MEMBERS = 6


# The spec classes have no defaults: build_spec fills every field, from spec.schema's defaults.


@dataclass(frozen=True)
class StorageSpec:
    """Where PostgreSQL's data lives: instance-store NVMe (``metal``) or one EBS volume."""

    kind: str
    size_gib: int
    volume_type: str
    iops: int | None
    throughput_mibps: int | None


@dataclass(frozen=True)
class NetworkSpec:
    """The VPC the cluster lives in and who may reach it."""

    vpc_id: str | None
    subnet_ids: tuple[str, ...]
    vpc_cidr: str
    allowed_cidrs: tuple[str, ...]
    allowed_security_group_ids: tuple[str, ...]
    monitoring_cidrs: tuple[str, ...]
    nat_gateways: str
    expose_direct_ports: bool
    # create | existing | none (pgha.infra.vpc_endpoints).
    vpc_endpoints: str
    # Egress 443 for apt beyond the VPC and S3 (pgha.infra.security).
    package_mirror_cidrs: tuple[str, ...]

    @property
    def creates_vpc(self) -> bool:
        return self.vpc_id is None

    @property
    def through_endpoints(self) -> bool:
        """Every AWS API call of the members stays in the VPC (interface endpoints, S3's gateway)."""
        return self.vpc_endpoints != "none"


@dataclass(frozen=True)
class BackupSpec:
    """pgBackRest schedules (cron, UTC), retention and compression."""

    full_schedule: str
    diff_schedule: str | None
    incr_schedule: str | None
    retention_days: int
    compression: str
    encryption: bool


@dataclass(frozen=True)
class LogsSpec:
    """Where the members' daemon logs go: the cluster's CloudWatch Logs group, kept this long."""

    retention_days: int


@dataclass(frozen=True)
class RestoreSpec:
    """Where a new cluster's first member restores its data from (a branch, or a restore).

    The source repository is read only: its options reach the restore command alone, never
    the node's pgbackrest.conf, so archive-push can only ever write the cluster's own repository.
    ``target`` is ``latest``, an ISO-8601 time with a zone, or an LSN (``0/3000060``).
    """

    # Defaults here (unlike the other spec classes): the loopback cluster's restore makes one by hand.
    source_stanza: str
    source_bucket: str = ""
    source_stack: str = ""
    target: str = "latest"
    # Given-bucket form only (a StackReference brings both): the Secrets Manager secret holding
    # an encrypted source's pgBackRest cipher pass, and the source's KMS key that encrypts it.
    source_cipher_secret_arn: str = ""
    source_key_arn: str = ""

    @property
    def target_type(self) -> str:
        """pgBackRest's restore --type: default (end of the archive), time or lsn."""
        if self.target == "latest":
            return "default"
        return "lsn" if "/" in self.target and ":" not in self.target else "time"

    @property
    def source_path(self) -> str:
        """repo1-path of the source repository (pgha's layout: /<stanza>/pgbackrest)."""
        return contract.repo_path(self.source_stanza)


@dataclass(frozen=True)
class KubernetesSpec:
    """Where the cluster's monitoring and connection objects go (``pgha:kubernetes``)."""

    namespace: str
    kubeconfig: str | None
    context: str | None
    release: str
    scrape_interval: str


@dataclass(frozen=True)
class Member:
    """One cluster member: a node of its own in its own AZ (the first three at least)."""

    name: str
    index: int
    availability_zone: str
    az_index: int
    runs_etcd: bool


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster description. Build it with ``build_spec``; never by hand."""

    stack: str
    cluster_name: str
    region: str
    arch: str
    instance_type: str
    storage: StorageSpec
    replicas: int
    availability_zones: tuple[str, ...]
    postgres_version: int
    profile: str
    rto: str
    rpo: int
    parameters: Mapping[str, Any]
    network: NetworkSpec
    backup: BackupSpec
    stack_kind: str
    ami_id: str | None
    pool_mode: str
    # Set for a branch (and a local restore): the first member restores instead of initdb.
    restore: RestoreSpec | None
    logs: LogsSpec
    # Set when pgha:kubernetes is: the monitoring and connection objects in Kubernetes.
    kubernetes: KubernetesSpec | None = None
    # How the input spelled its keys ("config": pgha:network.subnetIds, "args": network.subnet_ids),
    # so problems found later (a given VPC's subnets, looked up by infra) read like the input.
    key_style: str = field(default="config", compare=False)

    @property
    def instance(self) -> InstanceType:
        return catalog()[self.instance_type]

    @property
    def rto_plan(self) -> RtoPlan:
        return RTO_PLANS[self.rto]

    @property
    def synchronous(self) -> bool:
        """rpo 0: every commit is confirmed by at least one replica before it returns."""
        return self.rpo == 0

    @property
    def members(self) -> tuple[Member, ...]:
        return self._members(1 + self.replicas)

    @property
    def member_slots(self) -> tuple[Member, ...]:
        """Every member the cluster may grow to (``replicas`` raised to the most allowed): the
        addresses the members let replicate from them, so a member added later can clone from a
        running one whose files predate it."""
        return self._members(MAX_MEMBERS)

    def _members(self, count: int) -> tuple[Member, ...]:
        # An even etcd cluster tolerates no more failures than the odd one below it.
        etcd_count = 3 if count >= 3 else 1
        return tuple(
            Member(
                name=f"{self.cluster_name}-{i}",
                index=i,
                availability_zone=self.availability_zones[(i - 1) % len(self.availability_zones)],
                az_index=(i - 1) % len(self.availability_zones),
                runs_etcd=i <= etcd_count,
            )
            for i in range(1, count + 1)
        )

    @property
    def log_group(self) -> str:
        """The CloudWatch Logs group of the members' daemon logs: ``/pgha/<cluster_name>``."""
        return contract.log_group(self.cluster_name)

    def service_name(self, service: str) -> str:
        return f"{self.cluster_name}-{service}"

    @property
    def zone_name(self) -> str:
        """The private hosted zone of the cluster: ``<cluster_name>.pgha.internal``."""
        return f"{self.cluster_name}.pgha.internal"

    def certificate_dns_names(self, member: Member) -> list[str]:
        """DNS names in a member's certificate: its own, every service name, localhost.

        TLS passes through HAProxy to whichever member serves a port, so a client that
        asked any node for ``pg-name-primary`` (or any member address, see the IPs in
        ``certificate_ips``) may be answered by this member.
        """
        services = [self.service_name(s) for s in SERVICES]
        return [member.name, f"{member.name}.{self.zone_name}", *services,
                *[f"{s}.{self.zone_name}" for s in services], "localhost"]

    @property
    def private_subnet_cidrs(self) -> tuple[str, ...]:
        """The private subnet of each AZ when pgha creates the VPC (first /20s of the VPC)."""
        return _split(self.network.vpc_cidr)[: len(self.availability_zones)]

    @property
    def nat_gateway_count(self) -> int:
        """NAT gateways of a created VPC (none in a given one): one per AZ, or a single one."""
        if not self.network.creates_vpc:
            return 0
        return len(self.availability_zones) if self.network.nat_gateways == "per-az" else 1

    @property
    def public_subnet_cidrs(self) -> tuple[str, ...]:
        """Public subnets for the NAT gateways, after the private ones."""
        azs = len(self.availability_zones)
        return _split(self.network.vpc_cidr)[azs : 2 * azs]


def _split(vpc_cidr: str) -> tuple[str, ...]:
    net = ipaddress.ip_network(vpc_cidr)
    return tuple(str(s) for s in net.subnets(new_prefix=min(net.prefixlen + 4, 28)))


def certificate_ips(member: Member, member_ips: Mapping[str, Any]) -> list[Any]:
    """IP SANs of a member's certificate: its own first, then every other member's (a client
    of another node's HAProxy is answered by this one), and 127.0.0.1 for local clients."""
    own = member_ips[member.name]
    return [own, *[ip for name, ip in member_ips.items() if name != member.name], "127.0.0.1"]


def member_ip(subnet_cidr: str, member: Member) -> str:
    """The fixed private IP of a member inside its subnet: host number 10 + index.

    AWS reserves the first four addresses of a subnet; 10 leaves room below for them and
    keeps the addresses readable (10.42.0.11 is pg-name-1).
    """
    net = ipaddress.ip_network(subnet_cidr)
    return str(net.network_address + 10 + member.index)
