"""Turn raw stack config (or component args) into a ClusterSpec, reporting every problem.

Pulumi hands config over as strings (``"2"``) and JSON text for objects; component args
arrive as Python values under snake_case names. Both go through one set of rules, and a
bad input yields one :class:`SpecError` that lists each offending key, the value given and
what is allowed, before any resource exists.
"""

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Mapping, Sequence

from . import image, pgsettings, schema
from .catalog import DEFAULT_INSTANCE_TYPE, catalog
from .model import BackupSpec, ClusterSpec, KubernetesSpec, LogsSpec, NetworkSpec, RestoreSpec, StorageSpec, member_ip
from .schedule import CronError, cron_to_oncalendar

# The majors the node image provides: one package source (Debian 13), no PGDG.
SUPPORTED_POSTGRES_VERSIONS: tuple[int, ...] = schema.field(["postgresVersion"]).choices
STACK_KINDS: tuple[str, ...] = schema.field(["stackKind"]).choices
# A branch is one cost-optimised node unless its replicas are raised (then the full architecture).
BRANCH_DEFAULT_INSTANCE_TYPE = {"arm64": "t4g.medium", "x86_64": "t3.medium"}
BRANCH_DEFAULT_RPO: int = schema.field(["rpo"]).branch_default
# Every pattern is matched with fullmatch: `$` would let a trailing newline through.
CLUSTER_NAME_RE = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
# 24 leaves room for the suffixes AWS name limits allow (NLB and target group names: 32).
CLUSTER_NAME_MAX = 24
GUC_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
# Parameters pgha and Patroni own: overriding them would break routing, replication or backups,
# and each of them is set by patroni.yml.j2 or render/pgparams.py (a user value would be a second,
# silently ignored YAML key). The parameters render sizes (max_connections, work_mem, ...) are
# merged deliberately instead: the user's value replaces pgha's (pgparams.sized_parameters).
MANAGED = "is managed by pgha and Patroni and cannot be overridden"
MANAGED_PARAMETERS: frozenset[str] = frozenset(
    {
        "listen_addresses", "port", "unix_socket_directories", "hba_file", "ident_file",
        "data_directory", "config_file", "external_pid_file", "archive_mode", "archive_timeout",
        "synchronous_standby_names", "synchronous_commit", "primary_conninfo", "primary_slot_name",
        "hot_standby", "wal_level", "cluster_name", "logging_collector", "log_directory", "log_filename",
        "log_truncate_on_rotation", "log_file_mode", "recovery_target", "recovery_target_action", "recovery_target_inclusive",
        "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_timeline",
        "recovery_target_xid",
    }
)
# Refused with their own reason: they weaken security or durability, or pgha's tools depend on them.
REFUSED_PARAMETERS: Mapping[str, str] = {
    "password_encryption": "must stay scram-sha-256 (pgha's default): pg_hba accepts SCRAM only, and md5 "
                           "verifiers are a security downgrade",
    "log_line_prefix": "is set by pgha (its log format); a second value would be silently ignored",
    "shared_preload_libraries": "is managed by pgha (it preloads pg_stat_statements and auto_explain); load other modules "
                                "per session with session_preload_libraries",
    "fsync": "must stay on: off risks an unrecoverable cluster after a crash",
    "full_page_writes": "must stay on: off risks torn pages after a crash (and breaks pg_rewind)",
    "allow_system_table_mods": "is a developer option that can corrupt the catalog",
    "ignore_system_indexes": "is a developer option",
    "ignore_checksum_failure": "would hide data corruption (the cluster has data checksums)",
    "ignore_invalid_pages": "would hide data corruption during recovery",
    "zero_damaged_pages": "destroys data silently",
}
SSL_REASON = ("is managed by pgha: TLS is always on, with pgha's certificates and TLSv1.2 at least; "
              "ssl settings cannot be weakened or moved")
COMMAND_REASON = ("runs a shell command as the postgres user; pgha sets the commands it needs "
                  "(archive and restore through pgBackRest) and refuses others")
ARCHIVE_REASON = ("belongs to pgBackRest's archiving (pgha's archive_command); changing it would break "
                  "backups and point-in-time recovery")
# Control characters (newline, tab, NUL, DEL, C1, and the Unicode line separators) in any string:
# a value is one line of a config file, a YAML scalar or a shell word on a node.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
SINGLE_LINE = "must be a single line without control characters (newline, tab, NUL, ...)"
# AWS region names: us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-7.
REGION_RE = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}")
# Client and monitoring CIDRs: cidrPolicy private (the default) keeps them inside these ranges.
PRIVATE_NETWORKS: tuple[Any, ...] = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 shared address space (CGNAT, often used inside VPCs)
    "fc00::/7",  # RFC 4193 unique local IPv6
))
# The broadest block accepted under any policy: IPv4 /8, IPv6 /32 (a whole ISP's allocation); /8
# inside the private ranges (fd00::/8, the locally assigned ULAs).
MIN_PREFIX: Mapping[int, int] = {4: 8, 6: 32}

# EBS limits as of 2025 (gp3 raised to 64 TiB / 80,000 IOPS / 2,000 MiB/s in September 2025). gp3's
# free baseline (3000 IOPS, 125 MiB/s) is pgha's default (schema.STORAGE) and always allowed.
GP3: dict[str, Any] = {"size": (1, 65536), "iops": (3000, 80000), "throughput": (125, 2000), "iops_per_gib": 500,
       "mibps_per_iops": 0.25}
IO2: dict[str, Any] = {"size": (4, 65536), "iops": (100, 256000), "iops_per_gib": 1000}

# Config key (camelCase, under pgha:) -> component arg (snake_case), for each level.
TOP_KEYS: dict[str, str] = schema.TOP.keys
NESTED: dict[str, dict[str, str]] = {key: group.keys for key, group in schema.GROUPS.items()}


@dataclass(frozen=True)
class Problem:
    """One offending key: where it is (schema keys), what was given, what is allowed.

    ``given`` follows ``path`` verbatim: a key the schema does not know, or a parameter name.
    ``key`` is the whole key as the input spells it; :class:`SpecError` fills it in.
    """

    path: tuple[str, ...]
    value: Any
    allowed: str
    given: tuple[str, ...] = ()
    key: str = ""

    def in_style(self, style: str) -> "Problem":
        if self.key:  # a key outside pgha's config (aws:region), the same in every style
            return self
        return replace(self, key=schema.key_name(self.path, self.given, style=style))

    def __str__(self) -> str:
        shown = "(not set)" if self.value is _MISSING else json.dumps(self.value, default=str)
        key = self.key or schema.key_name(self.path, self.given, style="config")
        if _CONTROL.search(key):  # a given name with a newline: quoted, so the message stays one line
            key = json.dumps(key)
        return f"{key} = {shown}: {self.allowed}"


class SpecError(ValueError):
    """Raised with every problem of an input at once; nothing has been declared yet.

    ``style`` is the input's: ``config`` (``pgha:network.vpcCidr``) or ``args`` (``network.vpc_cidr``).
    """

    def __init__(self, problems: Sequence[Problem], style: str = "config"):
        self.style = style
        self.problems = [p.in_style(style) for p in problems]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"invalid pgha configuration ({len(self.problems)} {noun}):\n{lines}")


class _Missing:
    def __repr__(self) -> str:
        return "(not set)"


_MISSING: Any = _Missing()
_SCHEMA: Any = object()  # "the schema's default"


class _Reader:
    """Reads typed values out of one input, collecting problems instead of raising."""

    def __init__(self, values: Mapping[str, Any], style: str):
        self.values = values
        self.style = style
        self.problems: list[Problem] = []

    def fail(self, path: Sequence[str], value: Any, allowed: str, given: Sequence[str] = ()) -> None:
        self.problems.append(Problem(tuple(path), value, allowed, tuple(given)))

    # -- lookups --------------------------------------------------------------------------
    def raw(self, path: Sequence[str]) -> Any:
        node: Any = self.values
        keys = list(path) if self.style == "config" else _to_arg_path(path)
        for index, key in enumerate(keys):
            if index and isinstance(node, str):
                node = _decode(node)
            if not isinstance(node, Mapping) or key not in node or node[key] is None:
                return _MISSING
            node = node[key]
        return node

    def string(self, path: Sequence[str], default: Any = _SCHEMA, *, pattern: re.Pattern[str] | None = None,
               allowed: str = "") -> Any:
        """A string; the schema gives its default (unless ``default`` overrides it) and choices."""
        spec_field = schema.field(path)
        default = spec_field.default if default is _SCHEMA else default
        choices = spec_field.choices or None
        value = self.raw(path)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.fail(path, value, allowed or "must be a string")
            return default
        if _CONTROL.search(value):
            self.fail(path, value, f"{SINGLE_LINE}; {allowed}" if allowed else SINGLE_LINE)
            return default
        if choices is not None and value not in choices:
            self.fail(path, value, f"must be one of {', '.join(choices)}")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(path, value, allowed)
            return default
        return value

    def integer(self, path: Sequence[str], default: Any = _SCHEMA, bounds: tuple[int, int] | None = None,
                what: str = "") -> Any:
        """An integer; default and range from the schema unless given (a range that depends on other keys)."""
        spec_field = schema.field(path)
        default = spec_field.default if default is _SCHEMA else default
        lo, hi = bounds or spec_field.range or (None, None)
        value = self.raw(path)
        if value is _MISSING:
            return default
        number = _as_int(value)
        in_range = number is not None and (lo is None or number >= lo) and (hi is None or number <= hi)
        if not in_range:
            limits = f" from {lo} to {hi}" if lo is not None and hi is not None else ""
            if spec_field.choices and not limits:
                limits = f": one of {', '.join(map(str, spec_field.choices))}"
            self.fail(path, value, f"must be an integer{limits}{what}")
            return default
        return number

    def boolean(self, path: Sequence[str]) -> bool:
        default: bool = schema.field(path).default
        value = self.raw(path)
        if value is _MISSING:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.fail(path, value, "must be true or false")
        return default

    def string_list(self, path: Sequence[str], check: Callable[[str], str | None]) -> tuple[str, ...]:
        value = _decode(self.raw(path))
        if value is _MISSING:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(path, value, "must be a list of strings")
            return ()
        good = []
        for item in value:
            error = SINGLE_LINE if _CONTROL.search(item) else check(item)
            if error:
                self.fail(path, item, error)
            else:
                good.append(item)
        return tuple(good)

    def obj(self, path: Sequence[str]) -> Mapping[str, Any]:
        """An object value; for a schema group, any key outside it is reported as unknown."""
        value = _decode(self.raw(path))
        if value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, value, "must be an object")
            return {}
        known = NESTED.get(path[0]) if len(path) == 1 else None
        if known is not None:
            names = list(known) if self.style == "config" else list(known.values())
            for key in value:
                if key not in names:
                    self.fail(path, value[key], _unknown(str(key), names), given=[str(key)])
        return value


def _to_arg_path(path: Sequence[str]) -> list[str]:
    """Schema keys -> the component's arg names."""
    return schema.key_name(path, style="args").split(".")


def _unknown(key: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key{hint}; allowed keys: {', '.join(names)}"


def _decode(value: Any) -> Any:
    """Pulumi stores object and list config as JSON text."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _cidr_check(policy: str) -> Callable[[str], str | None]:
    """The rule of a client or monitoring CIDR under ``network.cidrPolicy``.

    Every block is at least a /8 (IPv6: /32), so no set of blocks (0.0.0.0/1 + 128.0.0.0/1) opens
    the internet; under ``private`` each lies inside RFC 1918, 100.64.0.0/10 or fc00::/7 too.
    """
    def check(value: str) -> str | None:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return "must be a CIDR block such as 10.0.0.0/16"
        if net.prefixlen == 0:
            return "must not be open to the whole internet (0.0.0.0/0 or ::/0 is refused)"
        private = any(net.version == p.version and net.subnet_of(p) for p in PRIVATE_NETWORKS)
        broadest = 8 if private else MIN_PREFIX[net.version]
        if net.prefixlen < broadest:
            return (f"is broader than /{broadest}, the broadest {'private ' if private else ''}block pgha accepts "
                    f"for IPv{net.version}: list narrower blocks")
        if policy == "private" and not private:
            return ("must lie inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, "
                    "fc00::/7); set pgha:network.cidrPolicy to public to allow public client ranges")
        return None
    return check


def _check_id(prefix: str) -> Callable[[str], str | None]:
    pattern = re.compile(rf"{prefix}-[0-9a-f]{{8,17}}")
    return lambda v: None if pattern.fullmatch(v) else f"must be an AWS id like {prefix}-0123456789abcdef0"


_CRON_FIELD = re.compile(r"(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*")


def _is_cron(value: str) -> bool:
    # Fields are separated by spaces only: a newline or tab would reach the timer unit's lines.
    fields = value.split(" ")
    return len(fields) == 5 and all(_CRON_FIELD.fullmatch(f) for f in fields)


def build_spec(values: Mapping[str, Any], *, stack: str, region: str, region_azs: Sequence[str],
               style: str = "config", offerings: Mapping[str, Collection[str]] | None = None) -> ClusterSpec:
    """Validate ``values`` and return the spec, or raise SpecError naming every problem.

    ``style`` is ``"config"`` for stack config (camelCase keys, strings and JSON text) and
    ``"args"`` for component args (snake_case keys, Python values). ``offerings``: the instance
    types EC2 offers in each of the region's AZs (DescribeInstanceTypeOfferings); given, the
    type must be offered in every member's AZ, and the default AZs are the first three that offer it.
    """
    if not isinstance(values, Mapping):
        raise SpecError([Problem((), values, "the configuration must be an object (a map of pgha's keys)",
                                 key="pgha" if style == "config" else "args")], style)
    r = _Reader(values, style)
    if not isinstance(region, str) or not REGION_RE.fullmatch(region):
        r.problems.append(Problem((), region, "must be an AWS region name such as us-east-1 (lowercase letters, "
                                              "'-' and a number, one line)", key="aws:region"))
        region = "us-east-1"  # only to go on collecting problems; the SpecError stops everything
    top_names = list(TOP_KEYS) if style == "config" else list(TOP_KEYS.values())
    for key in values:
        if key not in top_names:
            r.problems.append(Problem((), values[key], _unknown(str(key), top_names), given=(str(key),)))

    name_rule = ("must be lowercase letters, digits and '-', starting with a letter and not ending with '-' "
                 f"(Pigsty's naming, DNS-safe), 2 to {CLUSTER_NAME_MAX} characters")
    default_name = f"pg-{stack}".lower()
    cluster_name = r.string(["clusterName"], default_name, pattern=CLUSTER_NAME_RE, allowed=name_rule)
    if r.raw(["clusterName"]) is _MISSING and (not CLUSTER_NAME_RE.fullmatch(default_name)
                                                or len(default_name) > CLUSTER_NAME_MAX):
        r.fail(["clusterName"], _MISSING, f"the default, {default_name!r} from stack {stack!r}, is not a valid "
                                          f"cluster name ({name_rule.removeprefix('must be ')}): set pgha:clusterName, or "
                                          "use a stack name of lowercase letters, digits and '-'")
        cluster_name = "pg-invalid"
    elif len(cluster_name) > CLUSTER_NAME_MAX or len(cluster_name) < 2:
        r.fail(["clusterName"], cluster_name, f"must be 2 to {CLUSTER_NAME_MAX} characters long")
    # Read first: a branch has other defaults (one small node, asynchronous).
    is_branch = r.raw(["stackKind"]) == "branch"
    problems_before = len(r.problems)
    arch = r.string(["arch"])
    arch_valid = len(r.problems) == problems_before
    storage = _storage(r)
    instance_type = _instance_type(r, arch, storage.kind, check_arch=arch_valid,
                                   default=BRANCH_DEFAULT_INSTANCE_TYPE.get(arch) if is_branch and storage.kind == "ebs"
                                   else None)
    replicas = r.integer(["replicas"], schema.field(["replicas"]).branch_default if is_branch else _SCHEMA)
    problems_before_azs = len(r.problems)
    azs = _availability_zones(r, region, region_azs)
    if offerings is not None and len(r.problems) == problems_before_azs and instance_type in catalog():
        azs = _offered_zones(r, instance_type, azs, region, region_azs, offerings)
    postgres_version = r.integer(["postgresVersion"])
    if postgres_version not in SUPPORTED_POSTGRES_VERSIONS:
        r.fail(["postgresVersion"], postgres_version,
               f"must be {' or '.join(map(str, SUPPORTED_POSTGRES_VERSIONS))}: the node image is Debian "
               f"{image.DEBIAN_MAJOR} with its own packages, which provide PostgreSQL "
               f"{', '.join(map(str, SUPPORTED_POSTGRES_VERSIONS))} (and pgBackRest {image.DAEMON_PACKAGES['pgbackrest']}, "
               "which reads it)")
        postgres_version = schema.field(["postgresVersion"]).default
    profile = r.string(["profile"])
    rto = r.string(["rto"])
    rpo = r.integer(["rpo"], BRANCH_DEFAULT_RPO if is_branch and replicas == 0 else _SCHEMA, what=" (bytes of WAL a failover may lose; 0 = synchronous)")
    if rpo == 0 and replicas == 0 and r.raw(["replicas"]) is not _MISSING:
        r.fail(["replicas"], replicas, "rpo 0 confirms every commit on a replica: needs at least 1 replica")
    parameters = _parameters(r, postgres_version)
    network = _network(r, len(azs), is_branch)
    backup = _backup(r)
    logs = _logs(r)
    stack_kind = r.string(["stackKind"])
    ami_id = r.string(["amiId"], pattern=re.compile(r"ami-[0-9a-f]{8,17}"),
                      allowed="must be an AMI id like ami-0123456789abcdef0")
    mirrors_ok = not any(p.path == ("network", "packageMirrorCidrs") for p in r.problems)
    if mirrors_ok and network.package_mirror_cidrs != (INTERNET_V4,) and r.raw(["amiId"]) is _MISSING:
        # The official Debian AMI has none of the node packages and names deb.debian.org (a CDN).
        r.fail(["network", "packageMirrorCidrs"], list(network.package_mirror_cidrs),
               "narrower than 0.0.0.0/0 needs amiId: an image that has every node package or whose apt "
               "sources name that mirror (the official Debian image has neither)")
    pool_mode = r.string(["poolMode"])
    restore = _branch(r, stack_kind, cluster_name)
    kubernetes = _kubernetes(r)

    if r.problems:
        raise SpecError(r.problems, style)
    spec = ClusterSpec(
    stack=stack, cluster_name=cluster_name, region=region, arch=arch, instance_type=instance_type,
        storage=storage, replicas=replicas, availability_zones=azs, postgres_version=postgres_version,
        profile=profile, rto=rto, rpo=rpo, parameters=parameters, network=network, backup=backup,
        stack_kind=stack_kind, ami_id=ami_id, pool_mode=pool_mode, restore=restore, logs=logs, key_style=style,
        kubernetes=kubernetes,
    )
    if spec.network.creates_vpc:
        # Given subnets are checked the same way once infra has looked their CIDRs up.
        problems = member_ip_problems(spec, spec.private_subnet_cidrs, ("network", "vpcCidr"))
        if problems:
            raise SpecError(problems, style)
    # EC2's user-data limit, measured on the real boot files (render imports spec: import here).
    from ..render.userdata import user_data_problems

    problems = user_data_problems(spec)
    if problems:
        raise SpecError(problems, style)
    return spec


def member_ip_problems(spec: ClusterSpec, subnet_cidrs: Sequence[str], path: tuple[str, ...]) -> list[Problem]:
    """Every member's fixed IP must be a usable address of its subnet (``path``: the key that sets them).

    AWS reserves the network address, the next three and the last address of a subnet.
    """
    problems = []
    for member in spec.members:
        cidr = subnet_cidrs[member.az_index]
        net = ipaddress.IPv4Network(cidr)  # subnets are IPv4 (vpcCidr is; AWS subnets' cidr_block is)
        ip = ipaddress.IPv4Address(member_ip(cidr, member))
        if ip not in net or ip >= net.broadcast_address:
            problems.append(Problem(path, cidr, f"subnet is too small for {member.name}'s fixed address "
                                                f"(host {10 + member.index}); use a /27 or larger"))
    return problems


def _storage(r: _Reader) -> StorageSpec:
    given = r.obj(["storage"])
    kind = r.string(["storage", "kind"])
    if kind == "metal":
        for key in ("sizeGiB", "volumeType", "iops", "throughputMiBps"):
            if r.raw(["storage", key]) is not _MISSING:
                r.fail(["storage", key], r.raw(["storage", key]),
                       "applies to ebs only; metal uses all of the instance's NVMe instance store")
        return StorageSpec(kind="metal", size_gib=0, volume_type="", iops=None, throughput_mibps=None)
    del given
    volume_type = r.string(["storage", "volumeType"])
    limits = GP3 if volume_type == "gp3" else IO2
    size = r.integer(["storage", "sizeGiB"], bounds=limits["size"], what=f" GiB for {volume_type}")
    iops = r.integer(["storage", "iops"], bounds=limits["iops"], what=f" IOPS for {volume_type}")
    max_iops = limits["iops_per_gib"] * size
    # gp3's baseline (the default) comes with any size.
    if iops > max(max_iops, schema.field(["storage", "iops"]).default if volume_type == "gp3" else 0):
        r.fail(["storage", "iops"], iops,
               f"{volume_type} allows at most {limits['iops_per_gib']} IOPS per GiB: {max_iops} for {size} GiB")
    throughput = None
    if volume_type == "gp3":
        throughput = r.integer(["storage", "throughputMiBps"], bounds=GP3["throughput"], what=" MiB/s for gp3")
        cap = int(iops * GP3["mibps_per_iops"])
        if throughput > schema.field(["storage", "throughputMiBps"]).default and throughput > cap:
            r.fail(["storage", "throughputMiBps"], throughput,
                   f"gp3 allows at most 0.25 MiB/s per provisioned IOPS: {cap} MiB/s with {iops} IOPS")
    elif r.raw(["storage", "throughputMiBps"]) is not _MISSING:
        r.fail(["storage", "throughputMiBps"], r.raw(["storage", "throughputMiBps"]),
               "applies to gp3 only; io2 throughput follows its IOPS")
    return StorageSpec(kind="ebs", size_gib=size, volume_type=volume_type, iops=iops, throughput_mibps=throughput)


def _instance_type(r: _Reader, arch: str, storage_kind: str, *, check_arch: bool, default: str | None = None) -> str:
    default = default or DEFAULT_INSTANCE_TYPE[(arch, storage_kind)]
    name = r.string(["instanceType"], default)
    known = catalog()
    if name not in known:
        same_arch = sorted(n for n, t in known.items() if t.arch == arch)
        close = difflib.get_close_matches(name, same_arch, n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        r.fail(["instanceType"], name, f"must be an instance type in pgha's catalog{hint}")
        return default
    itype = known[name]
    if check_arch and itype.arch != arch:
        r.fail(["instanceType"], name,
               f"is {itype.arch}, but pgha:arch is {arch}: pick an {arch} type such as {default}")
    if storage_kind == "metal" and not itype.has_nvme:
        nvme = sorted(n for n, t in known.items() if t.arch == arch and t.has_nvme)[:6]
        r.fail(["instanceType"], name,
               f"has no NVMe instance store, which storage kind metal needs (e.g. {', '.join(nvme)})")
    return name


def _availability_zones(r: _Reader, region: str, region_azs: Sequence[str]) -> tuple[str, ...]:
    given = _decode(r.raw(["availabilityZones"]))
    if len(set(region_azs)) < 3:
        r.fail(["availabilityZones"], list(region_azs),
               f"region {region} must offer at least three availability zones; it offers {len(set(region_azs))}")
        return tuple(region_azs)
    if given is _MISSING:
        return tuple(region_azs[:3])
    az_re = re.compile(REGION_RE.pattern + "[a-z]")
    if not isinstance(given, list) or not all(isinstance(z, str) for z in given):
        r.fail(["availabilityZones"], given, "must be a list of three distinct availability zones")
        return tuple(region_azs[:3])
    malformed = [z for z in given if not az_re.fullmatch(z)]
    if malformed:
        r.fail(["availabilityZones"], given, f"{', '.join(map(json.dumps, malformed))}: an availability zone is "
                                             f"its region's name and a letter ({region}a)")
        return tuple(region_azs[:3])
    if len(given) != 3 or len(set(given)) != 3:
        r.fail(["availabilityZones"], given, "must be a list of three distinct availability zones")
        return tuple(region_azs[:3])
    foreign = [z for z in given if z not in region_azs]
    if foreign:
        r.fail(["availabilityZones"], given,
               f"{', '.join(map(str, foreign))} not in region {region} (it has {', '.join(region_azs)})")
        return tuple(region_azs[:3])
    return tuple(given)


def _offered_zones(r: _Reader, instance_type: str, azs: tuple[str, ...], region: str, region_azs: Sequence[str],
                   offerings: Mapping[str, Collection[str]]) -> tuple[str, ...]:
    """The member AZs, each offering ``instance_type``: EC2 refuses the launch otherwise ("Your
    requested instance type is not supported in your requested Availability Zone"), after the VPC,
    bucket, key and secret exist."""
    offered = [z for z in region_azs if instance_type in offerings.get(z, ())]
    where = f"offered in {', '.join(offered)}" if offered else f"offered in no AZ of {region}"
    if r.raw(["availabilityZones"]) is _MISSING:
        if len(offered) < 3:
            r.fail(["instanceType"], instance_type, f"must be offered in three AZs of {region}; it is {where}")
            return azs
        return tuple(offered[:3])
    missing = [z for z in azs if z not in offered]
    if missing:
        r.fail(["availabilityZones"], list(azs), f"{instance_type} is not offered in {', '.join(missing)}; it is {where}")
    return azs


def refusal(name: str) -> str | None:
    """Why pgha refuses the parameter ``name`` whatever its value, or None."""
    if name in MANAGED_PARAMETERS:
        return MANAGED
    if name in REFUSED_PARAMETERS:
        return REFUSED_PARAMETERS[name]
    if name == "ssl" or name.startswith("ssl_"):
        return SSL_REASON
    if name.endswith("_command"):
        return COMMAND_REASON
    if name.startswith("archive_"):
        return ARCHIVE_REASON
    return None


def _parameters(r: _Reader, major: int) -> dict[str, Any]:
    """``parameters``: each a parameter of PostgreSQL ``major`` that pgha leaves to the user, with a
    single-line value of its type, in range (pgsettings.check_value)."""
    given = r.obj(["parameters"])
    known = pgsettings.settings(major)
    out: dict[str, Any] = {}
    for key, value in given.items():
        name = str(key)
        if not isinstance(key, str) or not GUC_NAME_RE.fullmatch(key):
            r.fail(["parameters"], value, "is not a PostgreSQL parameter name (lowercase letters, digits, '_', "
                                          "and one '.' for an extension's parameters)", given=[name])
            continue
        reason = refusal(key)
        setting = known.get(key)
        if reason:
            r.fail(["parameters"], value, reason, given=[key])
        elif setting is None:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            r.fail(["parameters"], value, f"is not a parameter of PostgreSQL {major}{hint}", given=[key])
        elif setting.context == "internal":
            r.fail(["parameters"], value, "is read-only: PostgreSQL sets it (context internal)", given=[key])
        elif not isinstance(value, (str, int, float, bool)):
            r.fail(["parameters"], value, "must be a string, number or boolean", given=[key])
        elif isinstance(value, str) and _CONTROL.search(value):
            r.fail(["parameters"], value, SINGLE_LINE, given=[key])
        elif len(str(value)) > pgsettings.MAX_VALUE_LENGTH:
            r.fail(["parameters"], f"{str(value)[:32]}... ({len(str(value))} characters)",
                   f"must be at most {pgsettings.MAX_VALUE_LENGTH} characters", given=[key])
        elif (error := pgsettings.check_value(setting, value)) is not None:
            r.fail(["parameters"], value, error, given=[key])
        else:
            out[key] = value
    return out


def _network(r: _Reader, az_count: int, is_branch: bool) -> NetworkSpec:
    r.obj(["network"])
    cidr_check = _cidr_check(r.string(["network", "cidrPolicy"]))
    vpc_id = r.string(["network", "vpcId"], pattern=re.compile(r"vpc-[0-9a-f]{8,17}"),
                      allowed="must be a VPC id like vpc-0123456789abcdef0")
    subnet_ids = r.string_list(["network", "subnetIds"], _check_id("subnet"))
    if vpc_id is not None and len(subnet_ids) != az_count:
        r.fail(["network", "subnetIds"], list(subnet_ids),
               f"with vpcId, give one private subnet per availability zone ({az_count}), in AZ order")
    if vpc_id is None and subnet_ids:
        r.fail(["network", "subnetIds"], list(subnet_ids), "needs network.vpcId, the VPC they belong to")
    default_cidr = schema.field(["network", "vpcCidr"]).default
    vpc_cidr = r.string(["network", "vpcCidr"])
    try:
        net = ipaddress.ip_network(vpc_cidr)
        # Six subnets of prefix+4 each; /22 leaves /26 subnets with room for six members.
        if net.version != 4 or not 16 <= net.prefixlen <= 22:
            r.fail(["network", "vpcCidr"], vpc_cidr, "must be an IPv4 block from /16 to /22")
            vpc_cidr = default_cidr
    except ValueError:
        r.fail(["network", "vpcCidr"], vpc_cidr,
               f"must be an IPv4 CIDR block such as {default_cidr} (host bits zero)")
        vpc_cidr = default_cidr
    endpoints = _vpc_endpoints(r, vpc_id, is_branch)
    return NetworkSpec(
    vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        vpc_cidr=vpc_cidr,
        allowed_cidrs=r.string_list(["network", "allowedCidrs"], cidr_check),
        allowed_security_group_ids=r.string_list(["network", "allowedSecurityGroupIds"], _check_id("sg")),
        monitoring_cidrs=r.string_list(["network", "monitoringCidrs"], cidr_check),
        nat_gateways=r.string(["network", "natGateways"]),
        expose_direct_ports=r.boolean(["network", "exposeDirectPorts"]),
        vpc_endpoints=endpoints,
        package_mirror_cidrs=_package_mirror_cidrs(r, endpoints),
    )


INTERNET_V4 = "0.0.0.0/0"


def _package_mirror_cidrs(r: _Reader, vpc_endpoints: str) -> tuple[str, ...]:
    """``network.packageMirrorCidrs``: any CIDR block (a mirror may be public); narrower than the
    internet only when the AWS APIs do not need it (endpoints on)."""
    path = ["network", "packageMirrorCidrs"]
    if r.raw(path) is _MISSING:
        return (INTERNET_V4,)

    def check(value: str) -> str | None:
        try:
            ipaddress.ip_network(value)
        except ValueError:
            return "must be a CIDR block such as 10.0.5.0/24 or 0.0.0.0/0 (host bits zero)"
        return None

    cidrs = r.string_list(path, check)
    if vpc_endpoints == "none" and cidrs != (INTERNET_V4,):
        r.fail(path, list(cidrs), "with network.vpcEndpoints none the AWS APIs go through the NAT gateways to the "
                                  f"internet: only [\"{INTERNET_V4}\"]; use create or existing to narrow it")
    return cidrs


def _vpc_endpoints(r: _Reader, vpc_id: str | None, is_branch: bool) -> str:
    """``network.vpcEndpoints``; ``existing`` speaks of a VPC the user brings, so it needs vpcId."""
    # A branch is one cost-optimised node: the endpoints would cost more than it.
    value = r.string(["network", "vpcEndpoints"], "none" if is_branch else "create")
    if value == "existing" and vpc_id is None:
        r.fail(["network", "vpcEndpoints"], value,
               "existing needs network.vpcId (a VPC pgha creates has no endpoints but its own): use create or none")
        return "create"
    return value


def _backup(r: _Reader) -> BackupSpec:
    r.obj(["backup"])
    cron = "must be a cron expression of five fields (minute hour day month weekday, UTC)"
    schedules = {}
    for key in ("fullSchedule", "diffSchedule", "incrSchedule"):
        default = schema.field(["backup", key]).default
        value = r.string(["backup", key])
        if value is not None and not _is_cron(value):
            r.fail(["backup", key], value, cron)
            value = default
        elif value is not None:
            try:
                cron_to_oncalendar(value)  # the nodes' systemd timers need values in range too
            except CronError as error:
                r.fail(["backup", key], value, f"{cron}: {error}")
                value = default
        schedules[key] = value
    return BackupSpec(
    full_schedule=schedules["fullSchedule"],
        diff_schedule=schedules["diffSchedule"],
        incr_schedule=schedules["incrSchedule"],
        retention_days=r.integer(["backup", "retentionDays"], what=" days"),
        compression=r.string(["backup", "compression"]),
        encryption=r.boolean(["backup", "encryption"]),
    )


def _logs(r: _Reader) -> LogsSpec:
    r.obj(["logs"])
    path = ["logs", "retentionDays"]
    allowed = schema.field(path).choices
    days = r.integer(path, what=" (days CloudWatch Logs keeps the logs)")
    if days not in allowed:
        r.fail(path, days, f"must be one of {', '.join(map(str, allowed))}: the retention periods CloudWatch "
                           "Logs allows, in days")
        days = schema.field(path).default
    return LogsSpec(retention_days=days)


# Kubernetes names: a DNS-1123 label (namespaces), a label value (release), a Go duration of Prometheus.
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_INTERVAL_RE = re.compile(r"[1-9][0-9]{0,3}(s|m)")
_PATH_RE = re.compile(r"[^\x00]{1,4096}")


def _kubernetes(r: _Reader) -> KubernetesSpec | None:
    """``kubernetes``: the namespace (required once the key is set), a kubeconfig path or the
    default provider, the release label kube-prometheus-stack selects on, the scrape interval."""
    given = r.obj(["kubernetes"])
    if not given:
        return None
    namespace = r.string(["kubernetes", "namespace"], "", pattern=_DNS_LABEL_RE,
                         allowed="must be a Kubernetes namespace: a DNS-1123 label (lowercase letters, digits and "
                                 "'-', starting and ending with a letter or digit, at most 63 characters)")
    if r.raw(["kubernetes", "namespace"]) is _MISSING:
        r.fail(["kubernetes", "namespace"], _MISSING, "is required with pgha:kubernetes: the namespace of the "
                                                      "monitoring objects, the Secret and the Services")
    kubeconfig = r.string(["kubernetes", "kubeconfig"], pattern=_PATH_RE, allowed="must be a kubeconfig file's path")
    context = r.string(["kubernetes", "context"], pattern=re.compile(r"[^\s]{1,253}"),
                       allowed="must be a kubeconfig context name (no spaces)")
    release = r.string(["kubernetes", "release"], pattern=_LABEL_VALUE_RE,
                       allowed="must be a Kubernetes label value (letters, digits, '-', '_', '.', at most 63 "
                               "characters): kube-prometheus-stack's Helm release name")
    interval = r.string(["kubernetes", "scrapeInterval"], pattern=_INTERVAL_RE,
                        allowed="must be a whole number of seconds or minutes such as 30s or 1m")
    return KubernetesSpec(namespace=namespace, kubeconfig=kubeconfig, context=context, release=release,
                          scrape_interval=interval)


_LSN_RE = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
_STACK_REF_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SECRET_ARN_RE = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+")
_KEY_ARN_RE = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+")


def offline_region_azs(region: str, given: Any) -> list[str]:
    """The region's AZs where AWS cannot be asked (``pgha render``, the rehearsal): its a, b and c,
    plus any given. Validation judges the given list itself: duplicates or foreign zones are
    reported as such, never as a region with too few AZs."""
    zones = [f"{region}a", f"{region}b", f"{region}c"]
    given = _decode(given)
    if isinstance(given, list):
        zones += [z for z in given if isinstance(z, str) and z not in zones]
    return zones


def check_bucket_name(value: Any) -> str | None:
    """Why ``value`` is not an S3 bucket name, or None."""
    if isinstance(value, str) and _BUCKET_RE.fullmatch(value) and ".." not in value:
        return None
    return "must be an S3 bucket name (3-63 lowercase letters, digits, '.', '-'; one line)"


def check_secret_id(value: Any) -> str | None:
    """Why ``value`` is not a Secrets Manager secret ARN, or None."""
    if isinstance(value, str) and _SECRET_ARN_RE.fullmatch(value):
        return None
    return "must be a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"


def parse_lsn(value: Any) -> int | None:
    """An LSN (``0/3000060``: two groups of 1-8 hex digits) as a number, or None.

    Strict on purpose (one parser for the branch config and ``restore --to``): ``int(x, 16)`` alone
    takes a sign, ``0x``, ``_``, surrounding whitespace and any length.
    """
    if not isinstance(value, str) or not _LSN_RE.fullmatch(value):
        return None
    hi, lo = value.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def parse_target_time(value: str) -> Any:
    """An ISO-8601 time with an explicit zone (``2025-01-31T12:00:00Z``), or None."""
    import datetime

    if _CONTROL.search(value) or value != value.strip():
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _branch(r: _Reader, stack_kind: str, cluster_name: str) -> RestoreSpec | None:
    """The ``branch`` object: where a branch's data comes from and up to when."""
    given = r.obj(["branch"])
    if stack_kind != "branch":
        if given:
            r.fail(["branch"], dict(given), "applies to stackKind branch only")
        return None
    if not given:
        r.fail(["branch"], _MISSING, "a branch needs {sourceStack} or {sourceBucket, sourceStanza}, "
                                     "and optionally targetTime or targetLsn")
        return None
    source_stack = r.string(["branch", "sourceStack"], "", pattern=_STACK_REF_RE,
                            allowed="must be a stack name: stack, project/stack or org/project/stack")
    source_bucket = r.string(["branch", "sourceBucket"], "", pattern=_BUCKET_RE,
                             allowed="must be an S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
    source_stanza = r.string(["branch", "sourceStanza"], "", pattern=CLUSTER_NAME_RE,
                             allowed="must be the source's cluster name (its pgBackRest stanza)")
    if not source_stack and not (source_bucket and source_stanza):
        r.fail(["branch", "sourceStack"], _MISSING,
               "give sourceStack (a StackReference to the source), or both sourceBucket and sourceStanza")
    if source_stack and source_bucket:
        r.fail(["branch", "sourceBucket"], source_bucket, "give either sourceStack or sourceBucket, not both")
    if source_stanza and source_stanza == cluster_name:
        r.fail(["clusterName"], cluster_name, "a branch needs a cluster name of its own (it is the source's "
                                              "stanza): its archive must never mix with the source's")
    cipher_secret_arn, key_arn = _branch_source_encryption(r, source_stack)
    target_time = r.string(["branch", "targetTime"], "")
    target_lsn = r.string(["branch", "targetLsn"], "")
    target = "latest"
    if target_time and target_lsn:
        r.fail(["branch", "targetLsn"], target_lsn, "give targetTime or targetLsn, not both")
    elif target_time:
        if target_time != "latest" and parse_target_time(target_time) is None:
            r.fail(["branch", "targetTime"], target_time,
                   "must be latest or an ISO-8601 time with a zone, such as 2025-01-31T12:00:00Z")
        else:
            target = target_time
    elif target_lsn:
        if parse_lsn(target_lsn) is None:
            r.fail(["branch", "targetLsn"], target_lsn, "must be an LSN such as 0/3000060")
        else:
            target = target_lsn
    # With a StackReference the stanza is the source stack's clusterName output, known at deploy time.
    return RestoreSpec(source_stanza=source_stanza or "", source_bucket=source_bucket,
                       source_stack=source_stack, target=target, source_cipher_secret_arn=cipher_secret_arn,
                       source_key_arn=key_arn)


def _branch_source_encryption(r: _Reader, source_stack: str) -> tuple[str, str]:
    """``sourceCipherSecretArn`` and ``sourceKeyArn``: an encrypted source given by bucket and stanza.

    A StackReference brings both (the source's ``backupCipherSecretArn`` and ``backupKeyArn``
    outputs), so they apply to the sourceBucket form only. The cipher secret is encrypted with
    the source's KMS key: the branch's role needs kms:Decrypt on it, hence the key is required.
    """
    secret_arn = r.string(["branch", "sourceCipherSecretArn"], "", pattern=_SECRET_ARN_RE,
                          allowed="must be a Secrets Manager secret ARN (the source stack's "
                                  "backupCipherSecretArn output)")
    key_arn = r.string(["branch", "sourceKeyArn"], "", pattern=_KEY_ARN_RE,
                       allowed="must be a KMS key ARN (the source stack's backupKeyArn output)")
    if source_stack:
        for key, value in (("sourceCipherSecretArn", secret_arn), ("sourceKeyArn", key_arn)):
            if value:
                r.fail(["branch", key], value, "applies to sourceBucket/sourceStanza only: with sourceStack it "
                                               "comes from the source stack's outputs")
        return "", ""
    if secret_arn and not key_arn and r.raw(["branch", "sourceKeyArn"]) is _MISSING:
        r.fail(["branch", "sourceKeyArn"], _MISSING, "an encrypted source (sourceCipherSecretArn) needs the "
                                                     "source's KMS key ARN too: its cipher secret is encrypted "
                                                     "with it (the source stack's backupKeyArn output)")
    return secret_arn, key_arn
