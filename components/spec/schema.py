"""The stack config, declared once: every key, its component arg name, type, default and limits.

``validate.build_spec`` takes its key tables, defaults, choices and ranges from here;
``Pulumi.yaml``'s ``config:`` block is generated from it (``scripts/pulumi_config.py``) and
``tests/test_schema.py`` checks that block and the component's ``*Args`` TypedDicts against it.
Rules that span keys (EBS limits per volume type, a branch's other defaults, cron syntax)
stay in validate.py; what a single key may be is stated here.
"""

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .image import POSTGRES_MAJORS
from .model import MAX_MEMBERS
from .presets import PROFILES, RTO_PLANS

# A single-node branch cannot be synchronous; it may lose up to this much WAL.
BRANCH_SINGLE_NODE_RPO = 1048576


@dataclass(frozen=True)
class Group:
    """An object-valued key (``storage``, ``network``, ...): its own keys, and the TypedDict of its args."""

    args_class: str
    fields: tuple["Field", ...]

    def field(self, key: str) -> "Field":
        return next(f for f in self.fields if f.key == key)

    @property
    def keys(self) -> dict[str, str]:
        """Config key -> arg name."""
        return {f.key: f.arg for f in self.fields}


@dataclass(frozen=True)
class Field:
    """One key. ``type`` is str, int, bool, list (of strings), dict (free-form object) or a Group.

    ``default`` is None when the value is derived (``derived`` says from what) or simply unset.
    ``branch_default``: a branch stack's own default where it differs. Pulumi.yaml cannot say
    that (its default applies to every stack), so it declares such a key unset, untyped.
    """

    key: str
    arg: str
    type: Any
    doc: str
    default: Any = None
    derived: str = "none"
    choices: tuple[Any, ...] = ()
    range: tuple[int, int] | None = None
    branch_default: Any = None

    @property
    def group(self) -> Group | None:
        return self.type if isinstance(self.type, Group) else None

    @property
    def default_text(self) -> str:
        """The default as the docs state it: ``(default <this>)`` in each TypedDict field's docstring."""
        if self.default is None:
            return self.derived
        if isinstance(self.default, bool):
            return "``true``" if self.default else "``false``"
        if isinstance(self.default, str):
            return f"``{self.default}``"
        return str(self.default)

    @property
    def unset(self) -> Any:
        """Pulumi.yaml's stand-in for "not set" (a declared key needs a default there)."""
        if self.type is list:
            return []
        if self.type is dict or self.group is not None:
            return {}
        return ""


EACH = "each key's default"

STORAGE = Group("StorageArgs", (
    Field("kind", "kind", str, "``ebs`` (one EBS volume per member) or ``metal`` (the instance's NVMe store).",
          default="ebs", choices=("ebs", "metal")),
    Field("sizeGiB", "size_gib", int, "EBS volume size in GiB (1-65536 for gp3, 4-65536 for io2).", default=100),
    Field("volumeType", "volume_type", str, "EBS volume type.", default="gp3", choices=("gp3", "io2")),
    # gp3's free baseline; io2 gets the same, within its per-GiB limit.
    Field("iops", "iops", int, "Provisioned IOPS, within the volume type's limits.", default=3000),
    Field("throughputMiBps", "throughput_mibps", int, "gp3 throughput in MiB/s (at most 0.25 per IOPS above 125).",
          default=125),
))

NETWORK = Group("NetworkArgs", (
    Field("vpcId", "vpc_id", str, "An existing VPC; omit to let pgha create one.", derived="a new VPC"),
    Field("subnetIds", "subnet_ids", list, "With ``vpc_id``: one private subnet per availability zone, in AZ order."),
    Field("vpcCidr", "vpc_cidr", str, "CIDR of the created VPC, /16 to /22.", default="10.42.0.0/16"),
    Field("allowedCidrs", "allowed_cidrs", list, "Client CIDRs allowed on the service ports.",
          derived="the VPC CIDR"),
    Field("allowedSecurityGroupIds", "allowed_security_group_ids", list,
          "Client security groups allowed on the service ports."),
    Field("monitoringCidrs", "monitoring_cidrs", list, "CIDRs allowed on the metrics ports."),
    Field("cidrPolicy", "cidr_policy", str,
          "How broad ``allowed_cidrs`` and ``monitoring_cidrs`` may be: ``private`` (inside 10/8, 172.16/12, "
          "192.168/16, 100.64/10 or fc00::/7) or ``public`` (any range, opted in deliberately); either way no "
          "block broader than /8 (/32 for public IPv6).", default="private", choices=("private", "public")),
    Field("natGateways", "nat_gateways", str, "NAT gateways of a created VPC: one per AZ, or a single one.",
          default="per-az", choices=("per-az", "single")),
    Field("exposeDirectPorts", "expose_direct_ports", bool,
          "Also allow clients on 5432 (PostgreSQL) and 6432 (PgBouncer) of each member.", default=False),
    Field("vpcEndpoints", "vpc_endpoints", str,
          "Interface endpoints (private DNS) for the AWS APIs the members call: ``create`` them in the members' "
          "subnets (about $7.30 a month per service and AZ), ``existing`` (a given VPC already has them) or "
          "``none`` (through the NAT gateways).",
          derived="``create``; ``none`` on a branch", choices=("create", "existing", "none")),
    Field("packageMirrorCidrs", "package_mirror_cidrs", list,
          "With ``vpc_endpoints`` create or existing: where the members may reach Debian's mirrors (443), their only "
          "egress beyond the VPC and S3; an internal mirror's block, or none for an image that has every package "
          "(either needs ``ami_id``, an image of one's own).",
          derived="``0.0.0.0/0`` (Debian's mirrors are a CDN)"),
))

BACKUP = Group("BackupArgs", (
    Field("fullSchedule", "full_schedule", str, "Cron (five fields, UTC) of full backups.", default="0 1 * * *"),
    Field("diffSchedule", "diff_schedule", str, "Cron of differential backups."),
    Field("incrSchedule", "incr_schedule", str, "Cron of incremental backups."),
    Field("retentionDays", "retention_days", int, "Days full backups are kept.", default=14, range=(1, 3650)),
    Field("compression", "compression", str, "pgBackRest compression.", default="lz4",
          choices=("lz4", "zst", "gz", "bz2", "none")),
    Field("encryption", "encryption", bool,
          "Encrypt the repository with a pgBackRest cipher pass (on top of SSE-KMS).", default=False),
))

BRANCH = Group("BranchArgs", (
    Field("sourceStack", "source_stack", str,
          "The source as a stack name (stack, project/stack or org/project/stack), read by StackReference."),
    Field("sourceBucket", "source_bucket", str, "The source's backup bucket (instead of ``source_stack``)."),
    Field("sourceStanza", "source_stanza", str, "With ``source_bucket``: the source's cluster name (its stanza)."),
    Field("sourceCipherSecretArn", "source_cipher_secret_arn", str,
          "With ``source_bucket``, an encrypted source: its ``backupCipherSecretArn`` output."),
    Field("sourceKeyArn", "source_key_arn", str,
          "With ``source_bucket``: the source's KMS key ARN (its ``backupKeyArn`` output)."),
    Field("targetTime", "target_time", str, "Restore up to this ISO-8601 time with a zone, or ``latest``.",
          derived="the end of the archive"),
    Field("targetLsn", "target_lsn", str, "Restore up to this LSN (``0/3000060``) instead of a time."),
))

# What CloudWatch Logs accepts as a retention period (PutRetentionPolicy), in days.
CLOUDWATCH_RETENTION_DAYS: tuple[int, ...] = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                                              1827, 2192, 2557, 2922, 3288, 3653)

LOGS = Group("LogsArgs", (
    Field("retentionDays", "retention_days", int,
          "Days CloudWatch Logs keeps the members' daemon logs (one of the periods CloudWatch allows).",
          default=7, choices=CLOUDWATCH_RETENTION_DAYS),
))

KUBERNETES = Group("KubernetesArgs", (
    Field("namespace", "namespace", str, "Namespace of the monitoring objects, the applications' Secret and the "
          "Services (a DNS-1123 label)."),
    Field("kubeconfig", "kubeconfig", str, "Path of a kubeconfig file for a provider of its own.",
          derived="the default Kubernetes provider"),
    Field("context", "context", str, "The kubeconfig context to use.", derived="the kubeconfig's current context"),
    Field("release", "release", str, "The ``release`` label kube-prometheus-stack selects ScrapeConfigs and "
          "PrometheusRules on (its Helm release name).", default="kube-prometheus-stack"),
    Field("scrapeInterval", "scrape_interval", str, "How often Prometheus scrapes each target.", default="30s"),
))

TOP = Group("PostgresClusterArgs", (
    Field("clusterName", "cluster_name", str, "Pigsty-style cluster name; prefixes members and services.",
          derived="``pg-<stack>``"),
    Field("arch", "arch", str, "CPU architecture.", default="arm64", choices=("arm64", "x86_64")),
    Field("instanceType", "instance_type", str, "EC2 instance type from pgha's catalog.",
          derived="per arch and storage kind"),
    Field("storage", "storage", STORAGE, "Data storage: an EBS volume or the instance-store NVMe.",
          derived=EACH),
    Field("replicas", "replicas", int, "Replicas besides the primary.", default=2,
          range=(0, MAX_MEMBERS - 1), branch_default=0),
    Field("availabilityZones", "availability_zones", list, "Three distinct availability zones of the region.",
          derived="the region's first three"),
    Field("postgresVersion", "postgres_version", int,
          "PostgreSQL major version: the one Debian 13 (the node image) provides.", default=17,
          choices=POSTGRES_MAJORS),
    Field("profile", "profile", str, "Tuning profile.", default="oltp", choices=PROFILES),
    Field("rto", "rto", str, "Failover timing plan.", default="norm", choices=tuple(RTO_PLANS)),
    Field("rpo", "rpo", int, "Bytes of WAL a failover may lose; 0 means synchronous replication.", default=0,
          range=(0, 1 << 30), branch_default=BRANCH_SINGLE_NODE_RPO),
    Field("parameters", "parameters", dict, "Extra PostgreSQL parameters (name -> value); those pgha manages "
          "are refused."),
    Field("network", "network", NETWORK, "VPC, subnets and who may connect.", derived=EACH),
    Field("backup", "backup", BACKUP, "pgBackRest schedules, retention, compression and encryption.",
          derived=EACH),
    Field("logs", "logs", LOGS, "The members' daemon logs in CloudWatch Logs (``/pgha/<cluster_name>``).",
          derived=EACH),
    Field("stackKind", "stack_kind", str, "Deployment shape: ``branch`` is restored from another stack's backups.",
          default="regional", choices=("regional", "branch")),
    Field("branch", "branch", BRANCH, "stackKind branch only: where its data comes from and up to when."),
    Field("amiId", "ami_id", str, "Pin the AMI.", derived="the newest official Debian 13 image of the arch"),
    Field("poolMode", "pool_mode", str, "PgBouncer pool mode.", default="transaction",
          choices=("transaction", "session", "statement")),
    Field("kubernetes", "kubernetes", KUBERNETES, "Monitoring and the applications' connection objects in a "
          "Kubernetes cluster running kube-prometheus-stack; unset, nothing is declared there."),
))

GROUPS: dict[str, Group] = {f.key: f.group for f in TOP.fields if f.group is not None}


def field(path: Sequence[str]) -> Field:
    """The field at a config-key path such as ``("storage", "sizeGiB")``."""
    group, found = TOP, None
    for key in path:
        found = group.field(key)
        group = found.group or group
    assert found is not None
    return found


def key_name(path: Sequence[str], given: Sequence[str] = (), *, style: str) -> str:
    """A key as the input spells it: ``pgha:storage.sizeGiB`` (config), ``storage.size_gib`` (args)
    or ``storage.sizeGiB`` (inputs: the package schema's names, from a program in another language).

    ``path`` holds schema keys (config spelling); ``given`` is appended verbatim: a key the
    schema does not know (a typo) or a free-form name (a PostgreSQL parameter).
    """
    if style == "config":
        return "pgha:" + ".".join([*path, *given])
    if style == "inputs":
        return ".".join([*path, *given])
    names, group = [], TOP
    for key in path:
        f = group.field(key)
        names.append(f.arg)
        group = f.group or group
    return ".".join([*names, *given])


def pulumi_config() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's ``config:`` block: every key with a type, a description and a default.

    Pulumi wants a default for a declared key (else every stack must set it), so a key
    without one gets the empty value that pgha_values reads as "not set".
    """
    block: dict[str, dict[str, Any]] = {}
    for f in TOP.fields:
        entry: dict[str, Any] = {}
        pulumi_type = None if f.branch_default is not None else _PULUMI_TYPES.get(f.type)
        if pulumi_type:  # objects have no type: Pulumi's project schema has no object type
            entry["type"] = pulumi_type
        if f.type is list:
            entry["items"] = {"type": "string"}
        entry["description"] = describe(f)
        entry["default"] = f.unset if f.default is None or f.branch_default is not None else f.default
        block[f.key] = entry
    return block


def describe(f: Field) -> str:
    """One line for Pulumi.yaml: the doc, the choices or a group's keys, and a derived default."""
    text = f.doc
    if f.choices:
        text += f" One of: {', '.join(map(str, f.choices))}."
    if f.range:
        text += f" From {f.range[0]} to {f.range[1]}."
    if f.group is not None:
        text += f" Keys: {', '.join(g.key for g in f.group.fields)}."
    if f.default is None and f.derived != "none":
        text += f" Empty means {f.derived}."
    if f.branch_default is not None:
        text += f" Empty means {f.default}; on a branch {f.branch_default}" + (
            " (with no replicas)." if f.key == "rpo" else ".")
    return text.replace("``", "")  # reST literals read badly in `pulumi config`


_PULUMI_TYPES: Mapping[Any, str] = {str: "string", int: "integer", bool: "boolean", list: "array"}
