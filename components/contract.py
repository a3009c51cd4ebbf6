"""The deploy-time -> run-time contract: what render/infra/local write and the node agent reads.

Stdlib only: the node agent (``pgha.agent``, shipped in ``pgha-node.pyz``) imports this module
on Debian's python3, where no other pgha layer (pulumi, jinja2, cryptography) exists. Every
name both sides must agree on is spelled here once: the node facts (``node.json``), the keys
of the cluster secret, backup types, the agent's command line, pgBackRest's base command line,
the S3 layout and the member status parameter.
"""


import json
from typing import Any, Mapping, NotRequired, TypedDict, cast

# -- the node agent ---------------------------------------------------------------------------

AGENT_PROG = "pgha-node"
# The zipapp the nodes run with Debian's python3 (render/agentzip.py builds it).
AGENT_FILE = "pgha-node.pyz"
# The bootstrap's own copy of pgha/agent/fetch.py (it fetches the zipapp: see pgha-bootstrap.sh.j2).
FETCHER_FILE = "pgha-fetch"


def agent_path(paths: Mapping[str, str]) -> str:
    return f"{paths['bin']}/{AGENT_FILE}"


def agent_argv(paths: Mapping[str, Any], command: str, *args: str, node_json: str | None = None) -> list[str]:
    """The agent's command line as the units, Patroni's hooks and the agent itself run it."""
    return [paths["python"], agent_path(paths), "--node-json", node_json or f"{paths['etc']}/node.json",
            command, *args]


# -- the cluster secret (one JSON object: Secrets Manager on EC2, a file on the loopback) -----

SUPERUSER_PASSWORD = "superuser_password"
REPLICATION_PASSWORD = "replication_password"
PGBOUNCER_AUTH_PASSWORD = "pgbouncer_auth_password"
PATRONI_REST_PASSWORD = "patroni_rest_password"
MONITOR_PASSWORD = "monitor_password"
APP_PASSWORD = "app_password"
# The passwords every cluster's secret holds, and who uses each.
PASSWORD_OWNERS: Mapping[str, str] = {
    SUPERUSER_PASSWORD: "PostgreSQL superuser (Patroni, pg_rewind, pgBackRest)",
    REPLICATION_PASSWORD: "streaming replication (Patroni)",
    PGBOUNCER_AUTH_PASSWORD: "PgBouncer's auth_query login",
    PATRONI_REST_PASSWORD: "Patroni's REST API (unsafe endpoints; dcs-sync, drills)",
    MONITOR_PASSWORD: "exporters and PgBouncer's stats user",
    APP_PASSWORD: "the application's login",
}
PASSWORD_KEYS: tuple[str, ...] = tuple(PASSWORD_OWNERS)
# pgBackRest's repository cipher pass (backup.encryption); a branch reads its source's from the
# source's cipher secret, which holds {CIPHER_PASS_KEY: ...} alone.
CIPHER_PASS_KEY = "pgbackrest_cipher_pass"
# Static S3 credentials (the loopback's S3 stand-in; EC2 uses the instance role).
S3_KEY = "s3_key"
S3_KEY_SECRET = "s3_key_secret"
# {member name: PEM private key} of the node certificates. On EC2 (and in the rehearsal) each
# member's key is in a secret of its own, {TLS_KEYS: {member: key}}, which only that member may
# read (NodeFacts.tls_secret); the cluster secret holds the passwords alone.
TLS_KEYS = "tls_keys"

# -- backups and databases -----------------------------------------------------------------------

BACKUP_TYPES: tuple[str, ...] = ("full", "diff", "incr")
# The application's database, made by post-bootstrap.
APP_DATABASE = "app"


def pgbackrest_argv(paths: Mapping[str, Any], *args: str, binary: str = "pgbackrest") -> list[str]:
    """pgBackRest with the node's config and the secrets include (S3 keys, cipher pass)."""
    return [binary, f"--config={paths['pgbackrest_config']}",
            f"--config-include-path={paths['secrets']}/pgbackrest", *args]


# -- S3 layout ---------------------------------------------------------------------------------

def repo_path(stanza: str) -> str:
    """repo1-path of a cluster's pgBackRest repository in its bucket."""
    return f"/{stanza}/pgbackrest"


def cluster_prefix(cluster: str) -> str:
    """The key prefix a cluster's members may write (its repository and node files)."""
    return f"{cluster}/"


def node_files_prefix(cluster: str) -> str:
    """Where content-addressed node files (the agent zipapp) live in the bucket."""
    return f"{cluster_prefix(cluster)}node-files/"


# -- the node configuration: every file but the boot files, through the bucket ----------------
# User-data carries only what a boot needs (the bootstrap, the fetcher, boot.json, apt pins).
# Everything else is one JSON manifest per member at a fixed key, rewritten in place by
# ``pulumi up``; the agent's ``apply-config`` (a timer) installs what changed and runs the
# actions each changed file names. A change of it never touches an instance.

CONFIG_FORMAT = 1
BOOT_FILE = "boot.json"
# The last manifest applied in full (files installed and their actions run), beside node.json.
APPLIED_CONFIG_FILE = "applied-config.json"


def node_config_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}node-config/"


def config_key(cluster: str, member: str) -> str:
    """The S3 key of a member's configuration manifest."""
    return f"{node_config_prefix(cluster)}{member}.json"


# What a changed (or removed) file asks of the node, in the order apply-config runs them:
# systemd re-reads its units; a sysctl file is loaded; a unit is reloaded (restarted when it
# cannot reload) or restarted, in each case only if it is running; Patroni's dynamic
# configuration is brought to patroni.yml's bootstrap.dcs (dcs-sync).
ACTION_DAEMON_RELOAD = "daemon-reload"
ACTION_DCS_SYNC = "dcs-sync"
ACTION_SYSCTL = "sysctl:"
ACTION_RELOAD = "reload:"
ACTION_RESTART = "restart:"
ACTION_ORDER = (ACTION_DAEMON_RELOAD, ACTION_SYSCTL, ACTION_RELOAD, ACTION_RESTART, ACTION_DCS_SYNC)


def action_rank(action: str) -> int:
    """Where ``action`` runs in ACTION_ORDER; ValueError for an action this agent does not know."""
    for rank, prefix in enumerate(ACTION_ORDER):
        if (action.startswith(prefix) and len(action) > len(prefix)) if prefix.endswith(":") else action == prefix:
            return rank
    raise ValueError(f"unknown action {action!r}")


# -- a member's readiness: an SSM parameter the node writes and `pulumi up` waits on ----------

# The states a member publishes: the bootstrap says booting (and failed when it cannot get
# past a step); `pgha-node await-ready` says ready once the member streams on the leader's
# timeline within the lag bound with its etcd member healthy, failed when it gives up.
STATUS_BOOTING = "booting"
STATUS_READY = "ready"
STATUS_FAILED = "failed"
STATUS_STATES: tuple[str, ...] = (STATUS_BOOTING, STATUS_READY, STATUS_FAILED)
# A standard SSM parameter holds 4 KB: the message (a log tail) gets half, and the whole
# document is trimmed to fit.
STATUS_MESSAGE_MAX = 2048
STATUS_VALUE_MAX = 4096


# The unit that runs await-ready at every boot (start-node starts it without waiting for it).
READY_UNIT = "pgha-ready.service"


def status_parameter(cluster: str, member: str) -> str:
    """The SSM parameter (String) a member publishes its status to."""
    return f"/pgha/{cluster}/{member}/status"


def log_group(cluster: str) -> str:
    """The CloudWatch Logs group every member of ``cluster`` ships its daemons' logs to."""
    return f"/pgha/{cluster}"


def log_stream(member: str, source: str) -> str:
    """A member's stream of one daemon's log in the cluster's group: who wrote it, and what."""
    return f"{member}/{source}"


def status_parameter_prefix(cluster: str) -> str:
    """Every member's status parameter is under this path (the node role may write it)."""
    return f"/pgha/{cluster}/"


class MemberStatus(TypedDict):
    """The JSON value of a status parameter.

    ``instance_id`` is the EC2 instance that wrote it: a waiter for a new instance ignores a
    status its predecessor left. ``at`` is ISO 8601 UTC. ``timeline`` and ``lag_bytes`` are
    Patroni's (the member's timeline, its lag behind the leader; 0 on the leader) when known."""

    instance_id: str
    state: str
    message: str
    at: str
    timeline: int | None
    lag_bytes: int | None


def status_value(instance_id: str, state: str, message: str, at: str, *, timeline: int | None = None,
                 lag_bytes: int | None = None) -> str:
    """The parameter's value: the JSON of a MemberStatus, its message cut (keeping the end, where
    a log tail's error is) so the message stays within STATUS_MESSAGE_MAX and the whole within
    STATUS_VALUE_MAX bytes."""
    if state not in STATUS_STATES:
        raise ValueError(f"status state must be one of {', '.join(STATUS_STATES)}, not {state!r}")
    text = message.encode("utf-8", errors="replace")[-STATUS_MESSAGE_MAX:].decode("utf-8", errors="ignore")
    status: MemberStatus = {"instance_id": instance_id, "state": state, "message": "", "at": at,
                            "timeline": timeline, "lag_bytes": lag_bytes}
    budget = STATUS_VALUE_MAX - len(json.dumps(status, sort_keys=True, ensure_ascii=False).encode())
    if budget < 0:
        raise ValueError(f"a status of instance {instance_id!r} does not fit {STATUS_VALUE_MAX} bytes")
    # JSON escapes (quotes, control characters) can make the message longer than its bytes:
    # keep the longest end of it that fits, escaped (each character escapes on its own).
    keep, size = len(text), 0
    for i in range(len(text) - 1, -1, -1):
        size += len(json.dumps(text[i], ensure_ascii=False).encode()) - 2
        if size > budget:
            break
        keep = i
    status["message"] = text[keep:]
    return json.dumps(status, sort_keys=True, ensure_ascii=False)


def parse_status(value: str) -> MemberStatus | None:
    """A status parameter's value, or None when it is not a status document."""
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if (not isinstance(data, dict) or not isinstance(data.get("instance_id"), str)
            or data.get("state") not in STATUS_STATES):
        return None
    return cast(MemberStatus, {"instance_id": data["instance_id"], "state": data["state"],
                               "message": str(data.get("message") or ""), "at": str(data.get("at") or ""),
                               "timeline": data.get("timeline") if isinstance(data.get("timeline"), int) else None,
                               "lag_bytes": data.get("lag_bytes") if isinstance(data.get("lag_bytes"), int)
                               else None})


# -- node facts: node.json, written by render, validated by the agent at load -----------------

class NodePaths(TypedDict):
    etc: str
    secrets: str
    tls: str
    bin: str
    data: str
    pgdata: str
    etcd_data: str
    log: str
    run: str
    python: str
    patroni: str
    pg_bin: str
    pgbackrest_config: str
    # The log shipper's state directory (its offsets).
    logs_state: str


class NodeUsers(TypedDict):
    superuser: str
    replication: str
    pgbouncer_auth: str
    monitor: str
    patroni_rest: str
    app: str


class OsUsers(TypedDict):
    postgres: str
    etcd: str
    # The PostgreSQL and PgBouncer exporters: the monitor role by password, never the postgres OS user.
    exporter: str
    haproxy: str
    # The log shipper (agent ship_logs): reads the daemons' logs, may only put them to CloudWatch.
    logs: str


class AwsFacts(TypedDict):
    region: str
    endpoint_url: str
    s3_addressing: str


class SecretRef(TypedDict, total=False):
    """Where a secret comes from: source 'aws' (id, region) or 'file' (file)."""

    source: str
    id: str
    region: str
    file: str


class Peer(TypedDict):
    ip: str
    pgdata: str
    socket: str
    etcd: bool


class RestoreFacts(TypedDict):
    stanza: str
    bucket: str
    path: str
    target: str
    type: str
    cipher: NotRequired[str]
    cipher_secret: NotRequired[SecretRef]


class ConfigRef(TypedDict):
    bucket: str
    key: str


class BootFacts(TypedDict):
    """boot.json: what pgha-fetch needs to fetch the member's configuration (user-data)."""

    cluster: str
    member: str
    aws: AwsFacts
    config: ConfigRef
    # Where applied-config.json is kept (paths.etc).
    etc: str


class LogFacts(TypedDict):
    """Where the member's daemon logs go (agent ship_logs): the cluster's CloudWatch Logs group,
    the files of each daemon (globs; stream ``<member>/<daemon>``) and the shipper's offsets file."""

    group: str
    sources: dict[str, list[str]]
    state: str


class NodeFacts(TypedDict):
    cluster: str
    member: str
    index: int
    ip: str
    postgres_version: int
    paths: NodePaths
    users: NodeUsers
    os_users: OsUsers
    ports: dict[str, int]
    aws: AwsFacts
    secret: SecretRef
    # The member's own TLS key secret ({TLS_KEYS: {member: PEM}}); None: the key is in `secret`.
    tls_secret: SecretRef | None
    stanza: str
    backup_encryption: bool
    backup_types: list[str]
    peers: dict[str, Peer]
    restore: RestoreFacts | None
    # Patroni's REST API serves TLS (restapi.certfile): its clients use https and the cluster CA.
    patroni_tls: bool
    # The node's systemd units in start order and its timers (backups, apply-config).
    units: list[str]
    timers: list[str]
    logs: LogFacts
    # Set by the agent at load (where it read the facts from); never in the file.
    node_json: NotRequired[str]


# The dict-valued facts whose own keys are fixed, checked like the top level.
_NESTED: Mapping[str, Any] = {"paths": NodePaths, "users": NodeUsers, "os_users": OsUsers, "aws": AwsFacts}


def node_facts_problems(data: Any) -> list[str]:
    """Every way ``data`` (parsed node.json) breaks the contract: missing and unknown keys."""
    if not isinstance(data, dict):
        return ["is not a JSON object"]
    problems = []
    required = set(NodeFacts.__required_keys__)
    # node_json is the agent's own addition: a file carrying it is not one render wrote.
    missing, extra = sorted(required - data.keys()), sorted(data.keys() - required)
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unknown " + ", ".join(extra))
    for key, shape in _NESTED.items():
        value = data.get(key)
        if key not in data:
            continue
        if not isinstance(value, dict):
            problems.append(f"{key} is not an object")
            continue
        want = set(shape.__required_keys__)
        if want - value.keys():
            problems.append(f"missing {', '.join(f'{key}.{k}' for k in sorted(want - value.keys()))}")
        if value.keys() - want:
            problems.append(f"unknown {', '.join(f'{key}.{k}' for k in sorted(value.keys() - want))}")
    return problems


# -- the way in: EC2 Instance Connect (README "Getting a shell on a node") ---------------------

# The operator's login: the default user of Debian's AMIs (cloud-init, passwordless sudo).
SSH_LOGIN_USER = "admin"
# The unprivileged account sshd runs `pgha-node authorized-keys` as (AWS's package: ec2-instance-connect).
SSH_KEYS_USER = "pgha-eic"
SSH_PORT = 22
