"""What a node's files depend on besides the spec: addresses, paths and AWS names.

EC2 and the local rehearsal differ only in these values; the templates are the same.
"""

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # the spec imports nothing of render; render needs the spec only to type this
    from ..spec import ClusterSpec

# The log shipper's systemd StateDirectory= (under /var/lib).
LOGS_STATE_DIR = "pgha-logs"


@dataclass(frozen=True)
class Layout:
    """Where things live on a node. ``root`` prefixes every path (empty on EC2)."""

    root: str = ""
    # Debian's PostgreSQL binaries of the major being run.
    pg_bin_template: str = "/usr/lib/postgresql/{version}/bin"
    systemd_dir: str = "/etc/systemd/system"

    # Debian 13's python3 (the node agent's) and patroni (pgha.spec.image): no virtualenv on a node.
    python: str = "/usr/bin/python3"
    patroni: str = "/usr/bin/patroni"

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts]])

    @property
    def etc(self) -> str:
        return self.path("etc/pgha")

    @property
    def secrets(self) -> str:
        return self.path("etc/pgha/secrets")

    @property
    def tls(self) -> str:
        return self.path("etc/pgha/tls")

    @property
    def pgbackrest_config(self) -> str:
        return self.path("etc/pgha/pgbackrest/pgbackrest.conf")

    @property
    def bin(self) -> str:
        return self.path("opt/pgha/bin")

    @property
    def data(self) -> str:
        """The mount point of the data volume (EBS volume or NVMe RAID0)."""
        return self.path("var/lib/pgha")

    @property
    def pgdata(self) -> str:
        return self.data + "/pg/data"

    def etcd_data(self, storage_kind: str) -> str:
        """etcd's data directory: on the data volume with EBS, which outlives the instance, so a
        replaced node keeps its etcd membership; on the root volume with metal, whose data
        volume is the instance store that a stop/start wipes (a cluster stopped and started
        whole would come back to an empty DCS)."""
        return self.data + "/etcd" if storage_kind == "ebs" else self.path("var/lib/pgha-etcd")

    @property
    def log(self) -> str:
        return self.path("var/log/pgha")

    @property
    def logs_state(self) -> str:
        """The log shipper's offsets (its unit's StateDirectory, on the root volume)."""
        return self.path("var/lib", LOGS_STATE_DIR)

    @property
    def run(self) -> str:
        """Sockets and pid files; per node, so three nodes can share one host."""
        return self.path("run/pgha")

    @property
    def units(self) -> str:
        return self.path(self.systemd_dir) if self.root else self.systemd_dir

    def pg_bin(self, version: int) -> str:
        return self.pg_bin_template.format(version=version)


EC2_LAYOUT = Layout()


@dataclass(frozen=True)
class NodeContext:
    """Facts about the cluster's surroundings that the rendered files need."""

    # Fixed private IP of every member, by member name (pg-name-1 ...).
    member_ips: Mapping[str, str]
    # Backup bucket and where to reach it; on EC2 credentials come from the instance role.
    bucket: str
    s3_endpoint: str
    s3_region: str
    # Secrets Manager id of the cluster secret (the passwords).
    secret_id: str
    s3_ca_file: str | None = None
    s3_key_type: str = "auto"
    s3_uri_style: str = "host"
    # Where the node's boto3 reaches AWS: empty on EC2 (AWS's own endpoints); the rehearsal's
    # moto server otherwise (whose CA the platform puts in the node's trust store, as the AMI
    # carries AWS's).
    aws_endpoint_url: str = ""
    # The address of every member slot the cluster may grow to (ClusterSpec.member_slots): who may
    # replicate and rewind from a member. Empty: the current members only.
    peer_ips: tuple[str, ...] = ()
    layout: Layout = field(default_factory=Layout)
    # The CA certificate (public) and each member's certificate (public); keys are secrets.
    ca_cert_pem: str = ""
    node_cert_pems: Mapping[str, str] = field(default_factory=dict)
    # Secrets Manager id of each member's own TLS key secret, by member name. A member left
    # out reads its key from the cluster secret.
    tls_secret_ids: Mapping[str, str] = field(default_factory=dict)
    # EBS data volume id of each member (the bootstrap finds its device by this id).
    data_volume_ids: Mapping[str, str] = field(default_factory=dict)
    # A branch whose source is a StackReference: the source's bucket and stanza, known at deploy time.
    restore_bucket: str = ""
    restore_stanza: str = ""
    # A branch of an encrypted source: where its nodes read the source's pgBackRest cipher pass
    # ({"source": "aws", "id": ARN, "region": ...}).
    # Empty for an unencrypted source. A reference only: the pass itself never enters the files.
    restore_cipher_secret: Mapping[str, str] = field(default_factory=dict)

    def with_layout(self, layout: Layout) -> "NodeContext":
        return replace(self, layout=layout)


def dns_suffix(region: str) -> str:
    """The AWS service DNS suffix of a region (``amazonaws.com`` or ``amazonaws.com.cn``)."""
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def ec2_context(region: str, *, member_ips: Mapping[str, str], bucket: str, secret_id: str,
                peer_ips: tuple[str, ...] = (), ca_cert_pem: str = "",
                node_cert_pems: Mapping[str, str] | None = None,
                tls_secret_ids: Mapping[str, str] | None = None) -> NodeContext:
    """The NodeContext of a cluster on EC2: AWS's own S3 endpoint of the region, the instance
    role's credentials. Used by infra (with the real names) and ``pgha render`` (placeholders)."""
    return NodeContext(member_ips=dict(member_ips), bucket=bucket, s3_endpoint=f"s3.{region}.{dns_suffix(region)}",
                       s3_region=region, secret_id=secret_id, s3_key_type="auto", ca_cert_pem=ca_cert_pem,
                       node_cert_pems=dict(node_cert_pems or {}), peer_ips=peer_ips, layout=EC2_LAYOUT,
                       tls_secret_ids=dict(tls_secret_ids or {}))


def offline_ec2_context(spec: "ClusterSpec", *, bucket: str, secret_id: str) -> NodeContext:
    """The EC2 NodeContext where AWS cannot be asked (``pgha render``, ``pgha plan``): the member
    IPs the spec's subnets give, the names ``pulumi up`` creates as the values given."""
    from ..spec import member_ip

    ips = {m.name: member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.members}
    return ec2_context(spec.region, member_ips=ips, bucket=bucket, secret_id=secret_id,
                       peer_ips=tuple(member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.member_slots),
                       tls_secret_ids={m.name: f"TLS-SECRET-ARN-OF-{m.name}" for m in spec.members})


@dataclass(frozen=True)
class NodeFile:
    """One file a node receives: absolute path, content (text; bytes for the agent zipapp), mode and owner."""

    path: str
    content: str | bytes
    mode: int = 0o644
    owner: str = "root"
    # What the node does when this file changes on a running member (pgha.contract's actions).
    on_change: tuple[str, ...] = ()
