"""Render every file a node receives: a pure function of (spec, member, context).

The same function feeds EC2 user-data and the loopback cluster; only the context's
addresses and layout differ between the two.
"""

import functools
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from .. import contract
from ..observability.scrape import scrape_targets
from ..spec import PORTS, ClusterSpec, Member, image
from ..spec.schedule import cron_to_oncalendar
from .agentzip import agent_zipapp, fetcher_source
from .context import LOGS_STATE_DIR, NodeContext, NodeFile
from .pgparams import data_disk_gib, sized_parameters

# Database and OS accounts every node uses; passwords live only in the cluster secret.
USERS: dict[str, str] = {
    "superuser": "postgres",
    "replication": "replicator",
    "pgbouncer_auth": "pgbouncer_auth",
    "monitor": "dbuser_monitor",
    "patroni_rest": "patroni",
    # The application's login (not a superuser: PgBouncer's auth_query refuses those) and its
    # database `app`, made at bootstrap.
    "app": "dbuser_app",
}
APP_DATABASE = contract.APP_DATABASE
OS_USERS: dict[str, str] = {"postgres": "postgres", "etcd": "etcd", "exporter": "pgha-exporter", "haproxy": "haproxy",
                            "logs": "pgha-logs"}
# System users pgha makes itself at every boot (pgha-prepare-dirs); the others come with Debian's packages.
# pgha-logs is made by the bootstrap already: the IMDS filter, loaded before pgha-prepare, names it.
CREATED_OS_USERS: tuple[str, ...] = (OS_USERS["exporter"], OS_USERS["logs"])
# The daemons' logs the shipper follows (agent ship_logs), under paths.log: daemon (its stream
# <member>/<daemon>) -> globs. Every pgha unit appends its output to one of these files.
LOG_SOURCES: dict[str, tuple[str, ...]] = {
    "postgresql": ("postgresql/*.log",),
    "patroni": ("patroni/*.log",),
    "pgbouncer": ("pgbouncer/*.log",),
    "haproxy": ("haproxy.log",),
    "etcd": ("etcd.log",),
    "pgbackrest": ("pgbackrest/*.log",),
    "agent": ("bootstrap.log", "prepare.log", "config.log", "ready.log", "handover.log", "timeline-guard.log",
              "etcd-leadership.log"),
    "exporters": ("*-exporter.log",),
}
LOGS_UNIT = "pgha-ship-logs.service"
# IMDS (EC2's instance metadata, and the instance role's credentials): pgha-imds-filter lets
# only these users open a connection to it, each for the reason given (the ruleset's comments).
IMDS_IPV4 = "169.254.169.254"
IMDS_IPV6 = "fd00:ec2::254"  # served only where the instance's IPv6 metadata endpoint is on
IMDS_UNIT = "pgha-imds-filter.service"
IMDS_RULESET = "imds-filter.nft"  # under /etc/pgha
IMDS_TABLE = "pgha_imds"
IMDS_USERS: dict[str, str] = {
    "root": "cloud-init, pgha-fetch, pgha-prepare (Secrets Manager), pgha-config (the bucket), sudo",
    OS_USERS["postgres"]: "pgBackRest on the role's keys (repo1-s3-key-type=auto): WAL archive and restore, "
                          "backups, its exporter; pgha-ready (SSM)",
    contract.SSH_KEYS_USER: "sshd's key command: EC2 Instance Connect's pushed keys (it reads no credentials)",
    OS_USERS["logs"]: "pgha-ship-logs: the daemons' logs to CloudWatch Logs (the role may only put them)",
}
# Parameters Patroni reads from the DCS only (it ignores them in the local configuration).
DCS_ONLY_PARAMETERS = frozenset({
    "max_connections", "max_locks_per_transaction", "max_worker_processes", "max_prepared_transactions",
    "wal_level", "track_commit_timestamp", "max_wal_senders", "max_replication_slots", "wal_keep_size",
    "wal_log_hints",
})
# Replicas further behind than this are taken out of the read services.
READ_LAG_LIMIT = "16MB"
# The repository cipher of backup.encryption (pgbackrest.conf.j2), and so of an encrypted source.
SOURCE_CIPHER_TYPE = "aes-256-cbc"


@dataclass(frozen=True)
class _Dir:
    path: str
    owner: str
    group: str
    mode: int


@functools.cache
def _environment() -> jinja2.Environment:
    root = resources.files("pgha.templates")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # Shell templates use ${#array[@]}; Jinja's default "{#" comments would swallow it.
        comment_start_string="<#",
        comment_end_string="#>",
    )


def postgres_version(spec: ClusterSpec, ctx: NodeContext) -> int:
    return spec.postgres_version


def unit_names(spec: ClusterSpec, member: Member, ctx: NodeContext) -> list[str]:
    """The node's systemd units in start order."""
    # First: the IMDS filter, before any daemon (start-node starts them in this order at first boot).
    units = [IMDS_UNIT, "pgha-host.service", "pgha-prepare.service"]
    if member.runs_etcd:
        units.append("pgha-etcd.service")
    units += [
        "pgha-patroni.service",
        "pgha-pgbouncer.service",
        "pgha-haproxy.service",
        # Started after what it needs at stop, so stopped before them (it switches over).
        "pgha-handover.service",
        "pgha-node-exporter.service",
        "pgha-postgres-exporter.service",
        "pgha-pgbouncer-exporter.service",
        "pgha-pgbackrest-exporter.service",
        "pgha-pgbackrest-server.service",
        "pgha-timeline-guard.service",
        LOGS_UNIT,
    ]
    if member.runs_etcd:
        units.append("pgha-etcd-leadership.service")
    # Last: it publishes the member's readiness once the rest is up (started without waiting).
    units.append(contract.READY_UNIT)
    return units


BACKUP_TYPES: tuple[str, ...] = contract.BACKUP_TYPES


def backup_schedules(spec: ClusterSpec) -> dict[str, list[str]]:
    """Backup type -> OnCalendar= values of its timer (full always; diff/incr when scheduled)."""
    crons = {"full": spec.backup.full_schedule, "diff": spec.backup.diff_schedule,
             "incr": spec.backup.incr_schedule}
    return {kind: cron_to_oncalendar(cron) for kind, cron in crons.items() if cron}


def timer_names(spec: ClusterSpec) -> list[str]:
    """The node's timers (enabled at boot): apply-config's, and each backup type's (it starts
    the oneshot service of its name)."""
    return [CONFIG_TIMER] + [f"pgha-backup-{kind}.timer" for kind in backup_schedules(spec)]


# apply-config's timer: how a changed configuration reaches a running member.
CONFIG_TIMER = "pgha-config.timer"
# How soon a change in the bucket reaches a running member, at most (one S3 GET per period).
CONFIG_POLL_SECONDS = 30
# Long-running agent commands: they read node.json and the agent's code at start.
AGENT_DAEMONS = ("pgha-timeline-guard.service", "pgha-etcd-leadership.service", "pgha-pgbouncer-exporter.service",
                 "pgha-pgbackrest-exporter.service", LOGS_UNIT)
# Units whose restart would interrupt the database, its clients or etcd's quorum, or would stop
# every unit that Requires= them: a change of their unit file takes effect at their next start
# (a replacement or a reboot). Their configuration files are reloaded instead.
# pgha-handover's stop is a switchover: restarting it would move the primary for nothing.
NOT_RESTARTED_ON_CHANGE = frozenset({"pgha-host.service", "pgha-prepare.service", "pgha-etcd.service",
                                     "pgha-patroni.service", "pgha-pgbouncer.service", "pgha-haproxy.service",
                                     "pgha-handover.service"})


def _unit_on_change(unit: str, units: list[str]) -> tuple[str, ...]:
    """A changed unit file: systemd re-reads it; a daemon that may restart does, a timer too."""
    if unit in NOT_RESTARTED_ON_CHANGE or unit.startswith("pgha-backup-") and unit.endswith(".service"):
        return (contract.ACTION_DAEMON_RELOAD,)  # a running backup is never cut short
    return (contract.ACTION_DAEMON_RELOAD, contract.ACTION_RESTART + unit)


def _restart(units: list[str], *names: str) -> tuple[str, ...]:
    return tuple(contract.ACTION_RESTART + n for n in names if n in units)


def _reload(units: list[str], *names: str) -> tuple[str, ...]:
    return tuple(contract.ACTION_RELOAD + n for n in names if n in units)


def _paths(spec: ClusterSpec, ctx: NodeContext) -> dict[str, str]:
    lay = ctx.layout
    return {
        "etc": lay.etc, "secrets": lay.secrets, "tls": lay.tls, "bin": lay.bin, "data": lay.data,
        "pgdata": lay.pgdata, "etcd_data": lay.etcd_data(spec.storage.kind), "log": lay.log, "run": lay.run,
        "python": lay.python, "patroni": lay.patroni,
        "pg_bin": lay.pg_bin(postgres_version(spec, ctx)),
        "pgbackrest_config": lay.pgbackrest_config,
        "logs_state": lay.logs_state,
    }


def _directories(paths: dict[str, str]) -> list[_Dir]:
    pg, etcd, logs = OS_USERS["postgres"], OS_USERS["etcd"], OS_USERS["logs"]
    return [
        _Dir(paths["etc"], "root", "root", 0o755),
        _Dir(paths["secrets"], "root", "root", 0o711),
        _Dir(paths["secrets"] + "/pgbackrest", pg, pg, 0o700),
        _Dir(paths["tls"], "root", "root", 0o755),
        _Dir(paths["data"], "root", "root", 0o755),
        _Dir(paths["data"] + "/pg", pg, pg, 0o700),
        _Dir(paths["data"] + "/pgbackrest-spool", pg, pg, 0o750),
        _Dir(paths["etcd_data"], etcd, etcd, 0o700),
        _Dir(paths["log"], "root", "root", 0o755),
        # The daemons' own log directories: their group is the log shipper's, inherited (setgid)
        # by every file made in them, which the daemons make group-readable.
        _Dir(paths["log"] + "/patroni", pg, logs, 0o2750),
        _Dir(paths["log"] + "/postgresql", pg, logs, 0o2750),
        _Dir(paths["log"] + "/pgbouncer", pg, logs, 0o2750),
        _Dir(paths["log"] + "/pgbackrest", pg, logs, 0o2750),
        _Dir(paths["run"], "root", "root", 0o755),
        _Dir(paths["run"] + "/postgres", pg, pg, 0o2775),
        _Dir(paths["run"] + "/pgbouncer", pg, pg, 0o755),
        _Dir(paths["run"] + "/pgbackrest", pg, pg, 0o750),
        _Dir(paths["run"] + "/haproxy", OS_USERS["haproxy"], OS_USERS["haproxy"], 0o750),
        _Dir(paths["run"] + "/etcd", etcd, etcd, 0o700),
    ]


def _services(spec: ClusterSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """HAProxy frontends (Pigsty's services) and the backends they route to."""
    replica_check = f"/replica?lag={READ_LAG_LIMIT}"
    backends = [
        {"name": "be-primary-pooled", "port": PORTS["pgbouncer"], "check": "/primary", "pooled": True,
         "balance": "roundrobin"},
        {"name": "be-replica-pooled", "port": PORTS["pgbouncer"], "check": replica_check, "pooled": True,
         "balance": "leastconn"},
        {"name": "be-primary-direct", "port": PORTS["postgres"], "check": "/primary", "pooled": False,
         "balance": "roundrobin"},
        {"name": "be-offline-direct", "port": PORTS["postgres"], "check": "/replica", "pooled": False,
         "balance": "leastconn"},
    ]
    services = [
        {"name": spec.service_name("primary"), "port": PORTS["primary"], "backend": "be-primary-pooled",
         "fallback": None, "description": "read-write through the primary's PgBouncer"},
        {"name": spec.service_name("replica"), "port": PORTS["replica"], "backend": "be-replica-pooled",
         "fallback": "be-primary-pooled",
         "description": "read-only through replicas' PgBouncer; the primary when no replica is healthy"},
        {"name": spec.service_name("default"), "port": PORTS["default"], "backend": "be-primary-direct",
         "fallback": None, "description": "read-write straight to the primary's PostgreSQL"},
        {"name": spec.service_name("offline"), "port": PORTS["offline"], "backend": "be-offline-direct",
         "fallback": "be-primary-direct",
         "description": "offline/analytics straight to a replica's PostgreSQL; the primary when none is up"},
    ]
    return services, backends



def own_etcd_first(member: Member, etcd_members: Sequence[Member]) -> list[Member]:
    """The etcd members in the order this member's Patroni tries them: its own node's first.
    Patroni otherwise picks one at random; when that one's node stops, every request of that
    Patroni hangs to its read timeout first (1.7-2.0 s: the third member followed the new leader
    that late after the primary's replacement, and commits waited on it, 2026-12-01)."""
    own = [m for m in etcd_members if m.name == member.name]
    return own + [m for m in etcd_members if m.name != member.name]

def _view(spec: ClusterSpec, member: Member, ctx: NodeContext) -> dict[str, Any]:
    """Everything the templates may use, computed once."""
    paths = _paths(spec, ctx)
    ip = ctx.member_ips[member.name]
    members = [{"name": m.name, "ip": ctx.member_ips[m.name]} for m in spec.members]
    etcd_members = [m for m in spec.members if m.runs_etcd]
    params = sized_parameters(spec)
    shared_buffers_mb = int(str(params["shared_buffers"]).removesuffix("MB")) if str(
        params["shared_buffers"]).endswith("MB") else 0
    services, backends = _services(spec)
    restore = _restore_facts(spec, ctx)
    host, _, port = ctx.s3_endpoint.partition(":")
    pgbackrest_cmd = shlex.join(contract.pgbackrest_argv(paths, binary="/usr/bin/pgbackrest"))

    def agent(command: str, *args: str) -> str:
        """The agent's command line for the templates: {{ agent("etcd", "--config", path) }}."""
        return shlex.join(contract.agent_argv(paths, command, *args))
    node_facts = {
        "cluster": spec.cluster_name,
        "member": member.name,
        "index": member.index,
        "ip": ip,
        "postgres_version": postgres_version(spec, ctx),
        "paths": paths,
        "users": USERS,
        "os_users": OS_USERS,
        "ports": dict(PORTS),
        # How boto3 reaches AWS (Secrets Manager, S3): the region, and an endpoint only where
        # AWS's own is not the one (the rehearsal's moto).
        "aws": {"region": ctx.s3_region, "endpoint_url": ctx.aws_endpoint_url,
                "s3_addressing": "path" if ctx.s3_uri_style == "path" else "virtual"},
        "secret": {"source": "aws", "id": ctx.secret_id, "region": ctx.s3_region},
        "tls_secret": ({"source": "aws", "id": ctx.tls_secret_ids[member.name], "region": ctx.s3_region}
                       if member.name in ctx.tls_secret_ids else None),
        "stanza": spec.cluster_name,
        "backup_encryption": spec.backup.encryption,
        "backup_types": list(backup_schedules(spec)),
        # Every member's address and PostgreSQL paths: a standby taking a backup names the
        # primary's data directory and socket to pgBackRest (pg1) through the TLS server.
        "peers": {m.name: _peer(spec, m, ctx) for m in spec.members},
        "restore": restore,
        "patroni_tls": True,
        "units": unit_names(spec, member, ctx),
        "timers": timer_names(spec),
        "logs": {"group": spec.log_group, "state": paths["logs_state"] + "/offsets.json",
                 "sources": {name: [f"{paths['log']}/{glob}" for glob in globs]
                             for name, globs in LOG_SOURCES.items()}},
    }
    boot_facts = {
        "cluster": spec.cluster_name,
        "member": member.name,
        "aws": node_facts["aws"],
        "config": {"bucket": ctx.bucket, "key": contract.config_key(spec.cluster_name, member.name)},
        "etc": paths["etc"],
    }
    max_connections = int(params["max_connections"])
    return {
        "spec": spec,
        "cluster": spec.cluster_name,
        "member": member,
        "ip": ip,
        "members": members,
        "member_ips": [m["ip"] for m in members],
        "peer_ips": list(ctx.peer_ips) or [m["ip"] for m in members],
        "paths": paths,
        "ports": PORTS,
        "users": USERS,
        "os_users": OS_USERS,
        "plan": spec.rto_plan,
        "profile": spec.profile,
        "pg_version": postgres_version(spec, ctx),
        "synchronous": spec.synchronous,
        "maximum_lag_on_failover": spec.rpo if spec.rpo > 0 else 1048576,
        "dcs_parameters": {k: v for k, v in params.items() if k in DCS_ONLY_PARAMETERS},
        "local_parameters": {k: v for k, v in params.items() if k not in DCS_ONLY_PARAMETERS},
        "etcd_hosts": [f"{ctx.member_ips[m.name]}:{PORTS['etcd_client']}" for m in own_etcd_first(member, etcd_members)],
        "etcd_initial_cluster": ",".join(
            f"{m.name}=https://{ctx.member_ips[m.name]}:{PORTS['etcd_peer']}" for m in etcd_members),
        "agent": agent,
        "agent_file": contract.agent_path(paths),
        "callback": agent("on-role-change"),
        "pgbackrest_cmd": pgbackrest_cmd,
        "stanza": spec.cluster_name,
        "pool_mode": spec.pool_mode,
        "pgbouncer": {
            "max_client_conn": 1000 if spec.profile == "tiny" else 10000,
            "default_pool_size": 20 if spec.profile == "tiny" else 64,
            "reserve_pool_size": 4 if spec.profile == "tiny" else 16,
            "max_db_connections": max(10, int(max_connections * 0.8)),
        },
        "services": services,
        "backends": backends,
        "s3": {"bucket": ctx.bucket, "endpoint_host": host, "port": port, "region": ctx.s3_region,
               "key_type": ctx.s3_key_type, "uri_style": ctx.s3_uri_style, "ca_file": ctx.s3_ca_file},
        "backup": spec.backup,
        "backup_process_max": max(1, spec.instance.vcpu // 2),
        "archive_push_queue_max": f"{max(1, data_disk_gib(spec) // 5)}GiB",
        "storage": spec.storage,
        "nvme_count": spec.instance.nvme_count,
        "data_volume_id": ctx.data_volume_ids.get(member.name, ""),
        "nr_hugepages": 0 if spec.profile == "tiny" else int(shared_buffers_mb / 2 * 1.1) + 16,
        "node_facts": node_facts,
        "boot_facts": boot_facts,
        "directories": _directories(paths),
        "created_os_users": CREATED_OS_USERS,
        # HAProxy's TLS to Patroni's REST API (checks, /patroni/metrics): the cluster CA verifies it.
        "patroni_check_tls": f"ca-file {paths['tls']}/ca.crt verify required",
        "patroni_tls_server": f" ssl ca-file {paths['tls']}/ca.crt verify required",
        # The scrape model (pgha.observability.scrape): the same targets every monitoring path uses.
        "scrape_targets": scrape_targets(spec, ctx.member_ips),
        "image": {"packages": image.NODE_PACKAGES, "packaged_services": image.PACKAGED_SERVICES,
                  "postgres_packages": image.postgres_packages(postgres_version(spec, ctx))},
        "units": unit_names(spec, member, ctx),
        "timers": timer_names(spec),
        "config_poll_seconds": CONFIG_POLL_SECONDS,
        "logs_state_dir": LOGS_STATE_DIR,
        "backup_schedules": backup_schedules(spec),
        "restore": restore,
        "imds": {"unit": IMDS_UNIT, "ruleset": paths["etc"] + "/" + IMDS_RULESET, "table": IMDS_TABLE,
                 "ipv4": IMDS_IPV4, "ipv6": IMDS_IPV6, "users": IMDS_USERS},
        "ssh": {"unit": SSH_UNIT, "port": contract.SSH_PORT, "login_user": contract.SSH_LOGIN_USER, "keys_user": contract.SSH_KEYS_USER,
                "keys_command": agent("authorized-keys", "%u", "%f")},
    }


APT_PREFERENCES_PATH = "/etc/apt/preferences.d/pgha"
# Before cloud-init's 50-cloud-init.conf (sshd keeps the first value it reads).
SSHD_CONFIG_PATH = "/etc/ssh/sshd_config.d/10-pgha.conf"
SSH_UNIT = "ssh.service"  # Debian's openssh-server


def apt_preferences() -> str:
    """The apt pins of the node image: the same file on every EC2 node and in the rehearsal's image."""
    return _environment().get_template("apt-preferences.j2").render(
        debian_major=image.DEBIAN_MAJOR, codename=image.DEBIAN_CODENAME, pins=image.DAEMON_PACKAGES)


def render_node(spec: ClusterSpec, member: Member, ctx: NodeContext) -> list[NodeFile]:
    """Every file ``member`` receives, with absolute paths, modes and owners."""
    view = _view(spec, member, ctx)
    paths = view["paths"]
    lay = ctx.layout
    env = _environment()

    def render(template: str) -> str:
        return env.get_template(template).render(view)

    units = view["units"]
    agent_restarts = _restart(units, *AGENT_DAEMONS)
    tls_change = (*_reload(units, "pgha-patroni.service", "pgha-pgbouncer.service"),
                  *_restart(units, "pgha-pgbackrest-server.service"))
    files = [
        # Boot files (user-data): what a first boot needs to fetch the rest (render.userdata).
        NodeFile(paths["etc"] + "/" + contract.BOOT_FILE, render("boot.json.j2")),
        NodeFile(paths["bin"] + "/pgha-bootstrap", render("pgha-bootstrap.sh.j2"), mode=0o755),
        # Verbatim: pgha/agent/fetch.py, the fetcher of everything below.
        NodeFile(f"{paths['bin']}/{contract.FETCHER_FILE}", fetcher_source(), mode=0o755),
        NodeFile(lay.path(APT_PREFERENCES_PATH), apt_preferences()),
        # The configuration (the bucket's manifest), each file with what its change asks for.
        NodeFile(paths["etc"] + "/node.json", render("node.json.j2"), on_change=agent_restarts),
        NodeFile(paths["etc"] + "/patroni.yml", render("patroni.yml.j2"),
                 on_change=(*_reload(units, "pgha-patroni.service"), contract.ACTION_DCS_SYNC)),
        NodeFile(paths["etc"] + "/pgbouncer/pgbouncer.ini", render("pgbouncer.ini.j2"),
                 on_change=_reload(units, "pgha-pgbouncer.service")),
        NodeFile(paths["etc"] + "/pgbouncer/pgb_hba.conf", render("pgb_hba.conf.j2"),
                 on_change=_reload(units, "pgha-pgbouncer.service")),
        NodeFile(paths["etc"] + "/haproxy/haproxy.cfg", render("haproxy.cfg.j2"),
                 on_change=_reload(units, "pgha-haproxy.service")),
        NodeFile(paths["pgbackrest_config"], render("pgbackrest.conf.j2"),
                 on_change=_restart(units, "pgha-pgbackrest-server.service", "pgha-pgbackrest-exporter.service")),
        NodeFile(paths["etc"] + "/prometheus/targets.yml", render("prometheus-targets.yml.j2")),
        NodeFile(paths["tls"] + "/ca.crt", ctx.ca_cert_pem, on_change=tls_change),
        NodeFile(paths["tls"] + "/node.crt", ctx.node_cert_pems.get(member.name, ""), on_change=tls_change),
        # Runs at every boot (pgha-prepare): nothing to redo while the member runs.
        NodeFile(paths["bin"] + "/pgha-prepare-dirs", render("pgha-prepare-dirs.sh.j2"), mode=0o755),
        # Not a template: the agent zipapp (run by paths.python; bucket-delivered by key).
        NodeFile(contract.agent_path(paths), agent_zipapp(), on_change=agent_restarts),
        NodeFile(lay.path("etc/sysctl.d/90-pgha.conf"), render("sysctl.conf.j2"),
                 on_change=(contract.ACTION_SYSCTL + lay.path("etc/sysctl.d/90-pgha.conf"),)),
        NodeFile(lay.path("etc/logrotate.d/pgha"), render("logrotate.conf.j2")),
        NodeFile(view["imds"]["ruleset"], render("imds-filter.nft.j2"), on_change=_reload(units, IMDS_UNIT)),
        NodeFile(f"{lay.units}/nftables.service.d/pgha.conf", render("systemd/nftables.service.d-pgha.conf.j2"),
                 on_change=(contract.ACTION_DAEMON_RELOAD,)),
        # The way in (EC2 Instance Connect): Debian's sshd, keys from `pgha-node authorized-keys`.
        NodeFile(lay.path(SSHD_CONFIG_PATH), render("sshd_config.j2"),
                 on_change=(contract.ACTION_RELOAD + SSH_UNIT,)),
        NodeFile(f"{lay.units}/{SSH_UNIT}.d/pgha.conf", render("systemd/ssh.service.d-pgha.conf.j2"),
                 on_change=(contract.ACTION_DAEMON_RELOAD,)),
    ]
    if member.runs_etcd:
        # etcd reads it at start only; a running member learns of new peers through etcd's own
        # member API (agent etcd/membership.py).
        files.append(NodeFile(paths["etc"] + "/etcd/etcd.conf.yml", render("etcd.conf.yml.j2")))
    files.append(NodeFile(paths["bin"] + "/pgha-host", render("pgha-host.sh.j2"), mode=0o755))
    for unit in units:
        files.append(NodeFile(lay.units + "/" + unit, render(f"systemd/{unit}.j2"),
                              on_change=_unit_on_change(unit, units)))
    for suffix in ("service", "timer"):
        name = CONFIG_TIMER.removesuffix(".timer") + "." + suffix
        files.append(NodeFile(lay.units + "/" + name, render(f"systemd/{name}.j2"),
                              on_change=_unit_on_change(name, units)))
    # A service per backup type (`pgha backup run` starts them too); a timer per scheduled type.
    for kind in BACKUP_TYPES:
        job = {**view, "backup_type": kind}
        suffixes = ("service", "timer") if kind in view["backup_schedules"] else ("service",)
        for suffix in suffixes:
            text = env.get_template(f"systemd/pgha-backup.{suffix}.j2").render(job)
            name = f"pgha-backup-{kind}.{suffix}"
            files.append(NodeFile(f"{lay.units}/{name}", text, on_change=_unit_on_change(name, units)))
    return files


def _peer(spec: ClusterSpec, member: Member, ctx: NodeContext) -> dict[str, Any]:
    lay = ctx.layout
    return {"ip": ctx.member_ips[member.name], "pgdata": lay.pgdata, "socket": lay.run + "/postgres",
            "etcd": member.runs_etcd}


def _restore_facts(spec: ClusterSpec, ctx: NodeContext) -> dict[str, Any] | None:
    """Where the first member of a branch (or a restored cluster) restores from; None otherwise."""
    r = spec.restore
    if r is None:
        return None
    stanza = r.source_stanza or ctx.restore_stanza
    facts: dict[str, Any] = {"stanza": stanza, "bucket": r.source_bucket or ctx.restore_bucket or ctx.bucket,
                             "path": contract.repo_path(stanza), "target": r.target, "type": r.target_type}
    if stanza != spec.cluster_name:
        # Another cluster's repository (a branch): its cipher, never this cluster's own from
        # pgbackrest.conf; the pass is fetched at boot from the secret named here.
        facts["cipher"] = SOURCE_CIPHER_TYPE if ctx.restore_cipher_secret else "none"
        if ctx.restore_cipher_secret:
            facts["cipher_secret"] = dict(ctx.restore_cipher_secret)
    return facts


def render_cluster(spec: ClusterSpec, ctx: NodeContext) -> dict[str, list[NodeFile]]:
    """Every member's files, by member name."""
    return {m.name: render_node(spec, m, ctx) for m in spec.members}
