"""The cluster's alert rules, generated from the spec: one Prometheus rule group per cluster.

Metric names are those the nodes serve (README "Monitoring"): prometheus-postgres-exporter 0.17
(its default collectors plus ``database_wraparound``), pgha's PgBouncer and pgBackRest exporters
(``pgha.agent.exporters``), prometheus-node-exporter 1.9, Patroni 4.0's ``/metrics``, etcd 3.5's
metrics listener and HAProxy 3.0's Prometheus exporter. Every expression selects on the cluster's
``cls`` label (``pgha.observability.scrape``), so rules of several clusters live side by side.
Thresholds come from the spec where it has one: the rto plan's ttl, max_connections and
idle_in_transaction_session_timeout as pgha sizes them, rpo (synchronous mode, the lag a failover
may lose), the full-backup schedule and the certificates' renewal window (retention is named in the
backup alert's text: no metric of the oldest backup is served to alert on).
"""

import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..spec import ClusterSpec
from ..spec.model import EARLY_RENEWAL_HOURS
from ..spec.schedule import longest_interval

# Replicas further behind than this are taken out of the read services (render.files, which
# imports the scrape model: its constant is repeated here, and tests/test_alerts.py compares them).
READ_LAG_LIMIT = "16MB"
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
# Long-running active transactions hold back vacuum (and, with hot_standby_feedback, the primary's
# vacuum for a replica's query); the spec has no limit for them.
LONG_TRANSACTION_SECONDS = 1800
# Half of 2^31, the XID space: autovacuum's freeze (autovacuum_freeze_max_age, 200M) has fallen
# far behind; PostgreSQL stops assigning XIDs 3M short of the limit.
XID_AGE_LIMIT = 1_000_000_000
# Disk: a filesystem the last 2 hours' trend fills within this many hours.
DISK_FULL_HORIZON_HOURS = 6
# How long PostgresFailover fires after the timeline rose.
FAILOVER_WINDOW = "10m"
# Only real filesystems: the data volume (XFS) and the root volume (ext4).
FSTYPES = "xfs|ext4"


@dataclass(frozen=True)
class Alert:
    """One alerting rule. ``for_`` is Prometheus' ``for`` (``0s``: fire at once)."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str

    def rule(self, cluster: str) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "cls": cluster},
            "annotations": {"summary": self.summary, "description": self.description, "runbook": self.runbook},
        }


def _sel(metric: str, cluster: str, **matchers: str) -> str:
    """``metric{cls="cluster",...}``; a value starting with ``~`` is a regex match, ``!`` a negation."""
    parts = [f'cls="{cluster}"']
    for key, value in matchers.items():
        op = {"~": "=~", "!": "!="}.get(value[:1], "=")
        parts.append(f'{key}{op}"{value[1:] if op != "=" else value}"')
    return f"{metric}{{{','.join(parts)}}}"


_UNITS_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "": 1}


def _ms(value: Any) -> int:
    """A PostgreSQL time setting whose base unit is ms (``10min``, ``60000``, ``0``) in ms."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|min|h|d)?\s*", str(value))
    if not m:
        raise ValueError(f"not a time setting: {value!r}")
    return int(m.group(1)) * _UNITS_MS[m.group(2) or ""]


def _bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)(kB|MB|GB)", text)
    assert m, text
    return int(m.group(1)) * {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)]


def _duration(seconds: float) -> str:
    """Prometheus' duration text, in the largest whole unit."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def full_backup_max_age(spec: ClusterSpec) -> int | None:
    """Seconds after which the newest full backup is too old: the schedule's longest interval plus
    a quarter of it (at least 2 h) for the backup itself to run. None if the schedule never repeats."""
    interval = longest_interval(spec.backup.full_schedule)
    if interval is None:
        return None
    gap = int(interval.total_seconds())
    return gap + max(7200, gap // 4)


def replication_lag_limit(spec: ClusterSpec) -> int:
    """Bytes a replica may be behind: what a failover may lose (rpo > 0), or with rpo 0 the lag
    beyond which HAProxy takes a replica out of the read services."""
    return spec.rpo if spec.rpo > 0 else _bytes(READ_LAG_LIMIT)


def etcd_members(spec: ClusterSpec) -> int:
    return sum(1 for m in spec.members if m.runs_etcd)


def cluster_alerts(spec: ClusterSpec, *, failover_window: str = FAILOVER_WINDOW) -> tuple[Alert, ...]:
    """Every alert of the cluster of ``spec``. ``failover_window``: how long ``PostgresFailover``
    stays firing after a new timeline (a test's Prometheus may shorten it; production never does)."""
    from ..render.pgparams import sized_parameters  # render imports this package (the scrape model)

    c = spec.cluster_name
    plan = spec.rto_plan
    ttl = plan.ttl
    params = sized_parameters(spec)
    max_connections = int(params["max_connections"])
    idle_timeout_ms = _ms(params["idle_in_transaction_session_timeout"])
    # Half the timeout (which ends such sessions), or 10 minutes where there is none (olap).
    idle_seconds = idle_timeout_ms // 2000 if idle_timeout_ms else 600
    lag = replication_lag_limit(spec)
    on_ins = "on (cls, ins)"
    out: list[Alert] = [
        Alert("PgTargetDown", f"{_sel('up', c)} == 0", "1m", "critical",
              "{{ $labels.job }} of {{ $labels.ins }} does not answer scrapes",
              "Prometheus cannot scrape {{ $labels.job }} on {{ $labels.ins }} ({{ $labels.instance }}) for 1m: the "
              "member is down or unreachable, or that exporter stopped.",
              "Check the member (`pgha local status`, or the status parameter /pgha/<cluster>/<member>/status), "
              "then the unit: `systemctl status pgha-<daemon>` and /var/log/pgha/ on the node."),
        Alert("PostgresDown", f"{_sel('pg_up', c)} == 0", "1m", "critical",
              "PostgreSQL on {{ $labels.ins }} is down",
              "The PostgreSQL exporter on {{ $labels.ins }} cannot connect to PostgreSQL for 1m.",
              "`patronictl list` on a member; Patroni's log /var/log/pgha/patroni/ and PostgreSQL's log on it."),
        Alert("PgbouncerDown", f"{_sel('pgbouncer_up', c)} == 0", "1m", "critical",
              "PgBouncer on {{ $labels.ins }} is down",
              "PgBouncer's admin console on {{ $labels.ins }} does not answer: HAProxy routes the pooled services "
              "(5433, 5434) away from this member.",
              "`systemctl status pgha-pgbouncer` and /var/log/pgha/pgbouncer/ on the node."),
        Alert("PatroniNoLeader", f"absent({_sel('patroni_primary', c)} == 1)", f"{ttl}s", "critical",
              f"{c} has no primary",
              f"No member has held the leader key for the rto plan's ttl ({ttl}s): writes fail on every service.",
              "`patronictl list`; a failover needs a healthy replica within maximum_lag_on_failover and a "
              "working etcd (see EtcdNoLeader). README \"Failover\"."),
        Alert("PatroniDcsUnreachable", f"time() - {_sel('patroni_dcs_last_seen', c)} > {ttl}", "0s", "critical",
              "Patroni on {{ $labels.ins }} has not reached etcd for over the ttl",
              f"Patroni on {{{{ $labels.ins }}}} last reached the DCS more than ttl ({ttl}s) ago: a primary "
              "that cannot renew its leader key demotes itself.",
              "Check etcd on the members (EtcdNoLeader, EtcdQuorumAtRisk) and the network between them."),
        Alert("PatroniPaused", f"{_sel('patroni_is_paused', c)} == 1", "15m", "warning",
              f"{c} is in Patroni maintenance mode",
              "Patroni has been paused for 15m: no automatic failover happens while it is.",
              "`patronictl resume` once the maintenance is over."),
        # The lowest cluster timeline over the window (a subquery), not one sample `offset` the window
        # ago: a Prometheus (re)started within the window has no such sample and would miss the failover.
        Alert("PostgresFailover",
              f"max by (cls) ({_sel('patroni_postgres_timeline', c)}) "
              f"> min_over_time((max by (cls) ({_sel('patroni_postgres_timeline', c)}))[{failover_window}:])",
              "0s", "warning",
              f"{c} failed over: timeline now {{{{ $value }}}}",
              f"The cluster's timeline rose in the last {failover_window}: a new primary was promoted (a failover "
              f"or a switchover). Resolves by itself {failover_window} after it.",
              "Find why the old primary lost the key (Patroni's log on it, `patronictl history`); check that it "
              "rejoined as a replica (`patronictl list`)."),
        Alert("PostgresReplicaNotStreaming",
              f"{_sel('patroni_replica', c)} == 1 and {on_ins} {_sel('patroni_postgres_streaming', c)} == 0",
              "2m", "warning",
              "Replica {{ $labels.ins }} is not streaming from the primary",
              "{{ $labels.ins }} is a replica but has not streamed WAL for 2m (it may be replaying from the "
              "archive): it falls behind and cannot confirm commits.",
              "Patroni's and PostgreSQL's logs on the replica; `patronictl list` shows its lag."),
        Alert("PostgresReplicationLag",
              f"max by (cls) ({_sel('patroni_xlog_location', c)}) - on (cls) group_right() "
              f"({_sel('patroni_xlog_replayed_location', c)} and {on_ins} {_sel('patroni_replica', c)} == 1)"
              f" > {lag}", "1m", "warning",
              "Replica {{ $labels.ins }} is {{ $value | humanize1024 }}B behind the primary",
              f"{{{{ $labels.ins }}}} has replayed the primary's WAL more than {lag} bytes behind for 1m ("
              + (f"rpo {spec.rpo}: a failover to it would lose more than the rpo allows, so Patroni would not "
                 "promote it" if spec.rpo else
                 f"beyond {READ_LAG_LIMIT}, HAProxy takes it out of the read services") + ").",
              "Look for a long query holding replay (hot_standby_feedback), I/O saturation on the replica "
              "(node dashboards) or a network problem between the members."),
    ]
    if spec.synchronous and spec.replicas > 0:
        out.append(Alert(
            "PostgresNoSyncStandby",
            f"absent({_sel('patroni_sync_standby', c)} == 1) and on () ({_sel('patroni_primary', c)} == 1)",
            f"{ttl}s", "critical",
            f"{c} has no synchronous standby: writes are stopped",
            f"rpo 0 (strict synchronous mode): every commit waits for a synchronous standby, and none has been "
            f"chosen for the ttl ({ttl}s). Writes hang until a replica is healthy again.",
            "Bring a replica back (`patronictl list`; on EC2 a member's status parameter). Do not turn "
            "synchronous mode off unless losing the last commits on a failover is acceptable."))
    out += [
        Alert("PostgresArchiveFailing", f"increase({_sel('pg_stat_archiver_failed_count', c)}[5m]) > 0", "5m",
              "critical",
              "WAL archiving fails on {{ $labels.ins }}",
              "archive_command (pgBackRest archive-push to S3) has failed for 5m: WAL piles up in pg_wal, and "
              "point-in-time recovery and new replicas from the repository stop at the last archived segment.",
              "pgBackRest's log /var/log/pgha/pgbackrest/ on the primary; `pgbackrest check`; the bucket policy "
              "and the node role (README \"Least privilege in AWS\")."),
        Alert("PgBackRestRepositoryUnreadable", f"{_sel('pgbackrest_up', c)} == 0", "15m", "warning",
              "pgBackRest cannot read the repository from {{ $labels.ins }}",
              "`pgbackrest info` has failed on {{ $labels.ins }} for 15m: backups, restores and the backup "
              "alerts depend on it.",
              "`sudo -u postgres pgbackrest --stanza=<cluster> info` on the node; S3 reachability and credentials."),
    ]
    max_age = full_backup_max_age(spec)
    if max_age is not None:
        out.append(Alert(
            "BackupFullTooOld",
            f"time() - max by (cls) ({_sel('pgbackrest_backup_last_time_seconds', c, type='full')}) > {max_age}",
            "0s", "warning",
            f"{c}'s newest full backup is {{{{ $value | humanizeDuration }}}} old",
            f"No full backup completed for {_duration(max_age)}: the schedule ({spec.backup.full_schedule}, UTC) "
            f"should have run one. With {spec.backup.retention_days} days' retention, older backups keep expiring "
            "and the recovery window shrinks toward the last full backup.",
            "`pgha backup status` (or `pgbackrest info`); the timer `pgha-backup-full.timer` and "
            "/var/log/pgha/backup.log on the synchronous standby; run one with `pgha-node backup --type full`."))
        out.append(Alert(
            "BackupFullMissing",
            f"max by (cls) ({_sel('pgbackrest_backup_count', c, type='full')}) == 0", _duration(max_age), "warning",
            f"{c} has no full backup",
            f"The repository has held no full backup for {_duration(max_age)}: a lost cluster cannot be restored.",
            "As BackupFullTooOld: the full backup timer and its log on the synchronous standby."))
    out += [
        Alert("NodeFsFullSoon",
              f"predict_linear({_sel('node_filesystem_avail_bytes', c, fstype='~' + FSTYPES)}[2h], "
              f"{DISK_FULL_HORIZON_HOURS * 3600}) < 0 and "
              f"{_sel('node_filesystem_avail_bytes', c, fstype='~' + FSTYPES)} / "
              f"{_sel('node_filesystem_size_bytes', c, fstype='~' + FSTYPES)} < 0.5", "15m", "warning",
              "{{ $labels.mountpoint }} on {{ $labels.ins }} fills within "
              f"{DISK_FULL_HORIZON_HOURS} hours",
              f"At the last 2 hours' rate {{{{ $labels.mountpoint }}}} on {{{{ $labels.ins }}}} runs out of space "
              f"within {DISK_FULL_HORIZON_HOURS} hours. PostgreSQL stops when its data volume is full.",
              "Look for WAL kept by a failing archive (PostgresArchiveFailing) or an inactive replication slot, "
              "then table growth; grow the EBS volume (`pgha:storage.sizeGiB`, `pulumi up`)."),
        Alert("NodeFsAlmostFull",
              f"{_sel('node_filesystem_avail_bytes', c, fstype='~' + FSTYPES)} / "
              f"{_sel('node_filesystem_size_bytes', c, fstype='~' + FSTYPES)} < 0.1", "5m", "critical",
              "{{ $labels.mountpoint }} on {{ $labels.ins }} is over 90% full",
              "Less than 10% of {{ $labels.mountpoint }} on {{ $labels.ins }} is free.",
              "As NodeFsFullSoon."),
        Alert("PostgresConnectionsHigh",
              f"sum by (cls, ins) ({_sel('pg_stat_activity_count', c)}) > {int(max_connections * 0.8)}", "5m",
              "warning",
              "{{ $labels.ins }} has {{ $value }} connections, near max_connections",
              f"Over 80% of max_connections ({max_connections}) has been in use on {{{{ $labels.ins }}}} for 5m; "
              "new connections are refused at the limit.",
              "Connect through PgBouncer (5433/5434) rather than 5436/5438; find the clients in pg_stat_activity "
              "(application_name, client_addr); raise max_connections in `pgha:parameters` if really needed."),
        Alert("PgbouncerClientsWaiting",
              # PgBouncer's own admin database is no pool of the application's.
              f"max by (cls, ins, database) ({_sel('pgbouncer_pools_client_maxwait_seconds', c, database='!pgbouncer')})"
              " > 1",
              "2m", "warning",
              "Clients of {{ $labels.database }} wait {{ $value }}s for a server connection on {{ $labels.ins }}",
              "The oldest waiting client of PgBouncer's pool for {{ $labels.database }} has waited over 1s, "
              "for 2m: the pool is saturated by long transactions or too small.",
              "SHOW POOLS on PgBouncer's admin console; long transactions (PostgresLongTransaction); the pool size "
              "follows the profile (default_pool_size)."),
        Alert("PostgresXidWraparound",
              f"max by (cls, ins, datname) ({_sel('pg_database_wraparound_age_datfrozenxid_seconds', c)}) "
              f"> {XID_AGE_LIMIT}", "10m", "critical",
              "Database {{ $labels.datname }} is {{ $value }} transactions from its last freeze",
              f"The oldest unfrozen transaction ID of {{{{ $labels.datname }}}} is over {XID_AGE_LIMIT} old "
              "(half of the 2^31 space): autovacuum is not freezing. At the limit PostgreSQL stops accepting "
              "writes to prevent wraparound.",
              "Find what holds the xmin horizon (long transactions, prepared transactions, replication slots, a "
              "replica's hot_standby_feedback) and VACUUM (FREEZE) the oldest tables of that database."),
        Alert("PostgresLongTransaction",
              f"max by (cls, ins, datname) ({_sel('pg_stat_activity_max_tx_duration', c, state='active')}) "
              f"> {LONG_TRANSACTION_SECONDS}", "1m", "warning",
              "A transaction on {{ $labels.ins }}/{{ $labels.datname }} has run {{ $value | humanizeDuration }}",
              f"A transaction has been active over {_duration(LONG_TRANSACTION_SECONDS)}: it holds back vacuum "
              "and its locks.",
              "SELECT pid, usename, application_name, xact_start, query FROM pg_stat_activity ORDER BY xact_start; "
              "pg_cancel_backend(pid) if it should not run."),
        Alert("PostgresIdleInTransaction",
              f"max by (cls, ins, datname) "
              f"({_sel('pg_stat_activity_max_tx_duration', c, state='~idle in transaction.*')}) > {idle_seconds}",
              "1m", "warning",
              "A session on {{ $labels.ins }}/{{ $labels.datname }} is idle in a transaction for "
              "{{ $value | humanizeDuration }}",
              f"A client opened a transaction and has done nothing for over {_duration(idle_seconds)} "
              + ("(half of idle_in_transaction_session_timeout, "
                 f"{params['idle_in_transaction_session_timeout']}, which ends it)" if idle_timeout_ms else
                 "(no idle_in_transaction_session_timeout in this profile)")
              + ": it holds its locks and the xmin horizon.",
              "pg_stat_activity WHERE state LIKE 'idle in transaction%': fix the application (a missing commit)."),
        Alert("EtcdNoLeader", f"{_sel('etcd_server_has_leader', c)} == 0", "1m", "critical",
              "etcd on {{ $labels.ins }} has no leader",
              "The etcd member on {{ $labels.ins }} has seen no raft leader for 1m: Patroni there cannot renew "
              "or take the leader key.",
              "`etcdctl endpoint status --cluster` with the cluster CA's certificates on a member; etcd's log "
              "/var/log/pgha/etcd/ (journal of pgha-etcd)."),
        Alert("EtcdDatabaseQuotaHigh",
              f"{_sel('etcd_mvcc_db_total_size_in_bytes', c)} / {_sel('etcd_server_quota_backend_bytes', c)} > 0.8",
              "10m", "warning",
              "etcd's database on {{ $labels.ins }} is over 80% of its quota",
              "At the quota etcd raises NOSPACE and refuses writes: Patroni cannot renew the leader key.",
              "`etcdctl defrag` on each member in turn; the auto-compaction settings in etcd.conf.yml."),
        Alert("CertificateExpiringSoon",
              f"{_sel('pgha_tls_certificate_expiry_timestamp_seconds', c)} - time() < {EARLY_RENEWAL_HOURS * 1800}",
              "1h", "warning",
              "{{ $labels.file }} on {{ $labels.ins }} expires in {{ $value | humanizeDuration }}",
              f"`pulumi up` renews the cluster's certificates in their last {EARLY_RENEWAL_HOURS // 24} days; this "
              f"one has under {EARLY_RENEWAL_HOURS // 48} left, so no `pulumi up` ran in half that window. Expired, "
              "members reject each other (etcd, replication, Patroni's API).",
              "Run `pulumi up` on the stack: it renews the certificates and rolls the members one at a time."),
        Alert("HAProxyPrimaryServiceDown",
              f"{_sel('haproxy_backend_active_servers', c, proxy='~be-primary-pooled|be-primary-direct')} < 1",
              "1m", "critical",
              "HAProxy on {{ $labels.ins }} has no server for {{ $labels.proxy }}",
              "The read-write service of this node has had no healthy server for 1m: clients of "
              f"{spec.service_name('primary')} and {spec.service_name('default')} reaching this node fail.",
              "If every node shows it, see PatroniNoLeader; otherwise HAProxy's checks from this node to the "
              "primary's 8008 and 6432 (the stats page on 127.0.0.1:9101 of the node)."),
    ]
    etcd_count = etcd_members(spec)
    if etcd_count >= 3:
        quorum = etcd_count // 2 + 1
        out.append(Alert(
            "EtcdQuorumAtRisk", f"sum by (cls) ({_sel('up', c, job='etcd')}) <= {quorum}", "1m", "critical",
            f"{c}'s etcd has {{{{ $value }}}} of {etcd_count} members up",
            f"etcd needs {quorum} of its {etcd_count} members: one more lost member stops the DCS, and then "
            "the primary demotes itself.",
            "Bring the missing etcd member back (its node, `systemctl status pgha-etcd`); a member without its "
            "data rejoins by itself (README \"etcd membership looks after itself\")."))
    assert all(a.severity in SEVERITIES for a in out)
    return tuple(out)


def rule_groups(spec: ClusterSpec) -> dict[str, Any]:
    """The rule file's content (``groups:``): one group, ``pgha-<cluster>``."""
    return {"groups": [{"name": f"pgha-{spec.cluster_name}",
                        "rules": [a.rule(spec.cluster_name) for a in cluster_alerts(spec)]}]}


def rules_yaml(spec: ClusterSpec) -> str:
    """The rule file as ``promtool check rules`` and Prometheus' ``rule_files`` read it."""
    return yaml.safe_dump(rule_groups(spec), sort_keys=False, width=1000)
