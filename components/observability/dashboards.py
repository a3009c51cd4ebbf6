"""Grafana dashboards of a cluster, as code (grafanalib): six boards, one ConfigMap each.

The overview, one member (instance), replication and failover, the pooler, backups and the PITR
window, and the top queries (pg_stat_statements). Panels are data (``Panel``) so tests read every
query: each selects the cluster's ``cls`` and uses metric names exactly as the node's exporters
serve them (README "Monitoring"). A query that would be empty in a healthy cluster (no app pool
yet, no failover yet) is written to return a series anyway (``or`` a zero, ``changes()``).
The instance and top-queries boards have an ``ins`` variable; ``queries`` expands it.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from grafanalib.core import Dashboard, GridPos, Stat, Table, Target, Template, Templating, TimeSeries
from grafanalib.core import Time as TimeRange

from ..spec import PORTS, SERVICES, ClusterSpec
from .alerts import replication_lag_limit

# Grafana's Prometheus data source as kube-prometheus-stack provisions it.
DATASOURCE = "Prometheus"
# The ``ins`` variable's "All": every member.
ALL_MEMBERS = ".+"
# Rates over 5 minutes: at least two samples at kube-prometheus-stack's 30 s scrape interval.
RATE = "5m"


@dataclass(frozen=True)
class Panel:
    """One panel: ``stat``, ``timeseries`` or ``table`` (an instant query), its queries and legends."""

    title: str
    kind: str
    targets: tuple[tuple[str, str], ...]
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Board:
    """One dashboard: a file of the ConfigMap, its uid and panels."""

    slug: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    per_member: bool = False
    tags: tuple[str, ...] = field(default=())


def _p(title: str, kind: str, expr: str, legend: str = "", unit: str = "short", description: str = "") -> Panel:
    return Panel(title, kind, ((expr, legend),), unit, description)


def overview_board(spec: ClusterSpec) -> Board:
    """Health at a glance, then the trends behind the alerts."""
    c = f'cls="{spec.cluster_name}"'
    lag = (f"max by (cls) (patroni_xlog_location{{{c}}}) - on (cls) group_right() "
           f"(patroni_xlog_replayed_location{{{c}}} and on (cls, ins) patroni_replica{{{c}}} == 1)")
    return Board("overview", "overview",
                 f"Replication lag limit {replication_lag_limit(spec)} bytes; rto {spec.rto}, rpo {spec.rpo}.", (
        _p("Members up", "stat", f'sum(up{{{c},job="pgsql"}})'),
        _p("Primary", "stat", f"max by (ins) (patroni_primary{{{c}}}) == 1", "{{ins}}"),
        _p("Synchronous standbys", "stat", f"sum(patroni_sync_standby{{{c}}})"),
        _p("Timeline", "stat", f"max(patroni_postgres_timeline{{{c}}})"),
        _p("Alerts firing", "stat", f'count(ALERTS{{{c},alertstate="firing"}}) or vector(0)'),
        _p("Last full backup age", "stat",
           f'time() - max(pgbackrest_backup_last_time_seconds{{{c},type="full"}})', unit="s"),
        _p("Replication lag (bytes)", "timeseries", lag, "{{ins}}", "bytes"),
        _p("Commits per second", "timeseries",
           f"sum by (ins) (rate(pg_stat_database_xact_commit{{{c}}}[1m]))", "{{ins}}"),
        _p("Connections", "timeseries", f"sum by (ins) (pg_stat_activity_count{{{c}}})", "{{ins}}"),
        _p("PgBouncer clients waiting", "timeseries",
           f'sum by (ins) (pgbouncer_pools_client_waiting_connections{{{c},database!="pgbouncer"}}) '
           f"or on (ins) (0 * pgbouncer_up{{{c}}})", "{{ins}}"),
        _p("Filesystem free", "timeseries",
           f'node_filesystem_avail_bytes{{{c},fstype=~"xfs|ext4"}} / node_filesystem_size_bytes{{{c},fstype=~"xfs|ext4"}}',
           "{{ins}} {{mountpoint}}", "percentunit"),
        _p("etcd has leader", "timeseries", f"etcd_server_has_leader{{{c}}}", "{{ins}}"),
    ))


def instance_board(spec: ClusterSpec) -> Board:
    """One member: its PostgreSQL, the machine under it and its connections."""
    i = f'cls="{spec.cluster_name}",ins=~"$ins"'
    db = f'{i},datname!~"template.*"'
    return Board("instance", "instance", "One member (the ins variable): PostgreSQL, the node, connections.", (
        _p("PostgreSQL up", "stat", f"pg_up{{{i}}}", "{{ins}}"),
        _p("Primary (1) or replica (0)", "stat", f"patroni_primary{{{i}}}", "{{ins}}"),
        _p("PostgreSQL uptime", "stat", f"time() - patroni_postmaster_start_time{{{i}}}", "{{ins}}", "s"),
        _p("Databases' size", "stat", f"sum by (ins) (pg_database_size_bytes{{{i}}})", "{{ins}}", "bytes"),
        _p("CPU busy", "timeseries",
           f'1 - avg by (ins) (rate(node_cpu_seconds_total{{{i},mode="idle"}}[{RATE}]))', "{{ins}}", "percentunit"),
        _p("Load (1 min)", "timeseries", f"node_load1{{{i}}}", "{{ins}}"),
        _p("Memory used", "timeseries",
           f"1 - node_memory_MemAvailable_bytes{{{i}}} / node_memory_MemTotal_bytes{{{i}}}", "{{ins}}", "percentunit"),
        Panel("Disk I/O", "timeseries", (
            (f"sum by (ins) (rate(node_disk_read_bytes_total{{{i}}}[{RATE}]))", "{{ins}} read"),
            (f"sum by (ins) (rate(node_disk_written_bytes_total{{{i}}}[{RATE}]))", "{{ins}} written")), "Bps"),
        Panel("Network", "timeseries", (
            (f'sum by (ins) (rate(node_network_receive_bytes_total{{{i},device!="lo"}}[{RATE}]))', "{{ins}} in"),
            (f'sum by (ins) (rate(node_network_transmit_bytes_total{{{i},device!="lo"}}[{RATE}]))', "{{ins}} out")),
            "Bps"),
        _p("Filesystem free", "timeseries",
           f'node_filesystem_avail_bytes{{{i},fstype=~"xfs|ext4"}} / node_filesystem_size_bytes{{{i},fstype=~"xfs|ext4"}}',
           "{{ins}} {{mountpoint}}", "percentunit"),
        _p("Connections by state", "timeseries",
           f"sum by (ins, state) (pg_stat_activity_count{{{i}}})", "{{ins}} {{state}}"),
        _p("Connections used", "timeseries",
           f"sum by (ins) (pg_stat_activity_count{{{i}}}) / on (ins) pg_settings_max_connections{{{i}}}",
           "{{ins}}", "percentunit"),
        Panel("Transactions per second", "timeseries", (
            (f"sum by (ins) (rate(pg_stat_database_xact_commit{{{db}}}[{RATE}]))", "{{ins}} commit"),
            (f"sum by (ins) (rate(pg_stat_database_xact_rollback{{{db}}}[{RATE}]))", "{{ins}} rollback"))),
        Panel("Rows per second", "timeseries", (
            (f"sum by (ins) (rate(pg_stat_database_tup_fetched{{{db}}}[{RATE}]))", "{{ins}} fetched"),
            (f"sum by (ins) (rate(pg_stat_database_tup_inserted{{{db}}}[{RATE}]))", "{{ins}} inserted"),
            (f"sum by (ins) (rate(pg_stat_database_tup_updated{{{db}}}[{RATE}]))", "{{ins}} updated"),
            (f"sum by (ins) (rate(pg_stat_database_tup_deleted{{{db}}}[{RATE}]))", "{{ins}} deleted"))),
        _p("Buffer cache hit ratio", "timeseries",
           f"sum by (ins) (rate(pg_stat_database_blks_hit{{{db}}}[{RATE}])) / "
           f"(sum by (ins) (rate(pg_stat_database_blks_hit{{{db}}}[{RATE}])) + "
           f"sum by (ins) (rate(pg_stat_database_blks_read{{{db}}}[{RATE}])))", "{{ins}}", "percentunit"),
        _p("Longest transaction", "timeseries", f"max by (ins) (pg_stat_activity_max_tx_duration{{{i}}})",
           "{{ins}}", "s"),
        _p("Locks by mode", "timeseries", f"sum by (ins, mode) (pg_locks_count{{{i}}})", "{{ins}} {{mode}}"),
        Panel("Temporary files and deadlocks", "timeseries", (
            (f"sum by (ins) (rate(pg_stat_database_temp_bytes{{{db}}}[{RATE}]))", "{{ins}} temp bytes/s"),
            (f"sum by (ins) (increase(pg_stat_database_deadlocks{{{db}}}[{RATE}]))", "{{ins}} deadlocks"))),
        _p("WAL on disk", "timeseries", f"pg_wal_size_bytes{{{i}}}", "{{ins}}", "bytes"),
    ), per_member=True)


def replication_board(spec: ClusterSpec) -> Board:
    """Lag per replica, and the failover timeline: roles, timelines, the synchronous standby."""
    c = f'cls="{spec.cluster_name}"'
    lag = (f"max by (cls) (patroni_xlog_location{{{c}}}) - on (cls) group_right() "
           f"(patroni_xlog_replayed_location{{{c}}} and on (cls, ins) patroni_replica{{{c}}} == 1)")
    return Board("replication", "replication and failover",
                 f"Lag against the limit HAProxy reads by ({replication_lag_limit(spec)} bytes) and each role "
                 f"change; rto {spec.rto}, rpo {spec.rpo}.", (
        _p("Primary", "stat", f"max by (ins) (patroni_primary{{{c}}}) == 1", "{{ins}}"),
        _p("Timeline", "stat", f"max(patroni_postgres_timeline{{{c}}})"),
        _p("New timelines in 24 h", "stat", f"max(changes(patroni_postgres_timeline{{{c}}}[1d]))",
           description="Each failover or switchover starts a timeline."),
        _p("Role changes in 24 h", "stat", f"sum(changes(patroni_primary{{{c}}}[1d]))"),
        _p("Streaming replicas", "stat", f"sum(patroni_postgres_streaming{{{c}}})"),
        _p("Replication lag (bytes)", "timeseries", lag, "{{ins}}", "bytes",
           "The primary's WAL position minus each replica's replayed position (Patroni)."),
        _p("Replay delay", "timeseries",
           f"pg_replication_lag_seconds{{{c}}} and on (ins) pg_replication_is_replica{{{c}}} == 1", "{{ins}}", "s",
           "Time since the last replayed transaction while WAL is pending (0 when caught up)."),
        _p("Sent but not replayed, per replica", "timeseries", f"pg_stat_replication_pg_wal_lsn_diff{{{c}}}",
           "{{ins}} -> {{application_name}}", "bytes", "The primary's view (pg_stat_replication)."),
        _p("Role (1 = primary)", "timeseries", f"patroni_primary{{{c}}}", "{{ins}}"),
        _p("Timeline per member", "timeseries", f"patroni_postgres_timeline{{{c}}}", "{{ins}}"),
        _p("Synchronous standby (1 = yes)", "timeseries", f"patroni_sync_standby{{{c}}}", "{{ins}}"),
        _p("Role changes (10 min)", "timeseries", f"changes(patroni_primary{{{c}}}[10m])", "{{ins}}"),
        _p("DCS last seen", "timeseries", f"time() - patroni_dcs_last_seen{{{c}}}", "{{ins}}", "s",
           f"A primary that has not reached etcd for ttl ({spec.rto_plan.ttl} s) demotes itself."),
        _p("Pending restart", "timeseries", f"patroni_pending_restart{{{c}}}", "{{ins}}"),
        _p("Replication slots active", "timeseries", f"pg_replication_slot_slot_is_active{{{c}}}",
           "{{ins}} {{slot_name}}"),
        _p("etcd leader changes (1 h)", "timeseries",
           f"increase(etcd_server_leader_changes_seen_total{{{c}}}[1h])", "{{ins}}"),
    ))


def pooler_board(spec: ClusterSpec) -> Board:
    """PgBouncer's clients and pools, and HAProxy's services on each member."""
    c = f'cls="{spec.cluster_name}"'
    app = f'{c},database!="pgbouncer"'

    def per_ins(metric: str) -> str:
        # 0 on a member whose PgBouncer has no application pool yet (pools appear with clients).
        return f"sum by (ins) ({metric}{{{app}}}) or on (ins) (0 * pgbouncer_up{{{c}}})"

    frontends = "|".join(spec.service_name(s) for s in SERVICES)
    ports = ", ".join(f"{spec.service_name(s)} {PORTS[s]}" for s in SERVICES)
    return Board("pooler", "pooler", f"PgBouncer (port {PORTS['pgbouncer']}) and HAProxy's services: {ports}.", (
        _p("PgBouncers up", "stat", f"sum(pgbouncer_up{{{c}}})"),
        _p("Clients active", "stat", f"sum({per_ins('pgbouncer_pools_client_active_connections')})"),
        _p("Clients waiting", "stat", f"sum({per_ins('pgbouncer_pools_client_waiting_connections')})"),
        _p("Longest client wait", "stat", f"max(pgbouncer_pools_client_maxwait_seconds{{{c}}})", unit="s"),
        _p("Clients active per member", "timeseries", per_ins("pgbouncer_pools_client_active_connections"),
           "{{ins}}"),
        _p("Clients waiting per member", "timeseries", per_ins("pgbouncer_pools_client_waiting_connections"),
           "{{ins}}"),
        Panel("Server connections per pool", "timeseries", (
            (f"pgbouncer_pools_server_active_connections{{{c}}}", "{{ins}} {{database}}/{{user}} active"),
            (f"pgbouncer_pools_server_idle_connections{{{c}}}", "{{ins}} {{database}}/{{user}} idle"))),
        _p("Pool size per database", "timeseries", f"pgbouncer_databases_pool_size{{{c}}}", "{{ins}} {{name}}"),
        _p("Queries per second", "timeseries",
           f"sum by (ins) (rate(pgbouncer_stats_queries_pooled_total{{{c}}}[{RATE}]))", "{{ins}}"),
        _p("Client wait per second", "timeseries",
           f"sum by (ins) (rate(pgbouncer_stats_client_wait_seconds_total{{{c}}}[{RATE}]))", "{{ins}}", "s",
           "Seconds clients spent waiting for a server, per second."),
        _p("Client slots used", "timeseries",
           f"pgbouncer_used_clients{{{c}}} / (pgbouncer_used_clients{{{c}}} + pgbouncer_free_clients{{{c}}})",
           "{{ins}}", "percentunit"),
        _p("HAProxy sessions per service", "timeseries",
           f'haproxy_frontend_current_sessions{{{c},proxy=~"{frontends}"}}', "{{ins}} {{proxy}}",
           description=f"Service ports: {ports}."),
        _p("HAProxy new sessions per second", "timeseries",
           f'rate(haproxy_frontend_sessions_total{{{c},proxy=~"{frontends}"}}[{RATE}])', "{{ins}} {{proxy}}"),
        _p("HAProxy servers up per backend", "timeseries",
           f'haproxy_backend_active_servers{{{c},proxy=~"be-.+"}}', "{{ins}} {{proxy}}",
           "Members HAProxy routes each service to (Patroni's checks)."),
        _p("HAProxy server state", "timeseries",
           f'haproxy_server_status{{{c},proxy=~"be-.+",state="UP"}}', "{{ins}} {{proxy}} {{server}}"),
        _p("HAProxy connection errors per second", "timeseries",
           f'sum by (ins, proxy) (rate(haproxy_backend_connection_errors_total{{{c},proxy=~"be-.+"}}[{RATE}]))',
           "{{ins}} {{proxy}}"),
    ))


def backups_board(spec: ClusterSpec) -> Board:
    """Backup ages per type, WAL archiving, and the PITR window the repository offers."""
    c = f'cls="{spec.cluster_name}"'
    primary = f"on (ins) pg_replication_is_replica{{{c}}} == 0"
    return Board("backups", "backups and PITR window",
                 f"pgBackRest's repository: retention {spec.backup.retention_days} days.", (
        _p("Last backup age", "stat", f"time() - max by (type) (pgbackrest_backup_last_time_seconds{{{c}}})",
           "{{type}}", "s"),
        _p("PITR window", "stat", f'time() - min(pgbackrest_backup_oldest_time_seconds{{{c},type="full"}})',
           unit="s", description="From the oldest full backup's end to now: how far back a restore can go."),
        _p("Newest archived WAL age", "stat",
           f"pg_stat_archiver_last_archive_age{{{c}}} and {primary}", "{{ins}}", "s"),
        _p("Backups held", "stat", f"max by (type) (pgbackrest_backup_count{{{c}}})", "{{type}}"),
        _p("Repository readable", "stat", f"min(pgbackrest_up{{{c}}})"),
        Panel("WAL archived and failed per minute", "timeseries", (
            (f"60 * rate(pg_stat_archiver_archived_count{{{c}}}[{RATE}]) and {primary}", "{{ins}} archived"),
            (f"60 * rate(pg_stat_archiver_failed_count{{{c}}}[{RATE}]) and {primary}", "{{ins}} failed"))),
        _p("Backup age by type", "timeseries",
           f"time() - max by (type) (pgbackrest_backup_last_time_seconds{{{c}}})", "{{type}}", "s"),
        _p("PITR window over time", "timeseries",
           f'time() - min(pgbackrest_backup_oldest_time_seconds{{{c},type="full"}})', "window", "s"),
        _p("Newest archived WAL segment", "timeseries",
           f"max by (archive_id) (pgbackrest_archive_max_wal_segment{{{c}}})", "{{archive_id}}",
           description="Grows with every archived 16 MiB segment; flat while the primary writes means archiving stalled."),
        _p("Last backup duration", "timeseries",
           f"max by (type) (pgbackrest_backup_last_duration_seconds{{{c}}})", "{{type}}", "s"),
        Panel("Last backup size", "timeseries", (
            (f"max by (type) (pgbackrest_backup_last_size_bytes{{{c}}})", "{{type}} database"),
            (f"max by (type) (pgbackrest_backup_last_repo_size_bytes{{{c}}})", "{{type}} in the repository")),
            "bytes"),
        _p("Backup running", "timeseries", f"pgbackrest_stanza_backup_lock_held{{{c}}}", "{{ins}}"),
        _p("Repository status (0 ok)", "timeseries", f"pgbackrest_repo_status{{{c}}}", "{{ins}} repo {{repo_key}}"),
    ))


def queries_board(spec: ClusterSpec) -> Board:
    """The top statements of pg_stat_statements (the exporter serves queryid, never the text)."""
    i = f'cls="{spec.cluster_name}",ins=~"$ins"'
    by = "ins, datname, user, queryid"
    legend = "{{ins}} {{datname}} {{user}} {{queryid}}"

    def top(metric: str, window: str = RATE) -> str:
        return f"topk(10, sum by ({by}) (rate({metric}{{{i}}}[{window}])))"

    return Board("queries", "top queries",
                 "pg_stat_statements, the top statements per member by queryid (its text: SELECT query FROM "
                 "pg_stat_statements WHERE queryid = ...). Slow statements' plans are in the PostgreSQL log "
                 "(auto_explain).", (
        _p("Statements tracked", "stat", f"count(pg_stat_statements_calls_total{{{i}}})"),
        _p("Calls per second", "stat", f"sum(rate(pg_stat_statements_calls_total{{{i}}}[{RATE}]))"),
        _p("Execution time per second", "stat", f"sum(rate(pg_stat_statements_seconds_total{{{i}}}[{RATE}]))",
           unit="s"),
        _p("Mean time per call", "stat",
           f"sum(rate(pg_stat_statements_seconds_total{{{i}}}[{RATE}])) / "
           f"sum(rate(pg_stat_statements_calls_total{{{i}}}[{RATE}]))", unit="s"),
        _p("Top 10 by total time", "timeseries", top("pg_stat_statements_seconds_total"), legend, "s"),
        _p("Top 10 by calls", "timeseries", top("pg_stat_statements_calls_total"), legend),
        _p("Top 10 by mean time per call", "timeseries",
           f"topk(10, sum by ({by}) (rate(pg_stat_statements_seconds_total{{{i}}}[{RATE}])) / "
           f"sum by ({by}) (rate(pg_stat_statements_calls_total{{{i}}}[{RATE}])))", legend, "s"),
        _p("Top 10 by rows", "timeseries", top("pg_stat_statements_rows_total"), legend),
        Panel("Top 10 by block I/O time", "timeseries", (
            (top("pg_stat_statements_block_read_seconds_total"), f"{legend} read"),
            (top("pg_stat_statements_block_write_seconds_total"), f"{legend} write")), "s"),
        _p("Top 20 by total time in the last hour", "table",
           f"topk(20, sum by ({by}) (increase(pg_stat_statements_seconds_total{{{i}}}[1h])))", legend, "s"),
    ), per_member=True)


BOARDS: tuple[Callable[[ClusterSpec], Board], ...] = (
    overview_board, instance_board, replication_board, pooler_board, backups_board, queries_board)


def boards(spec: ClusterSpec) -> tuple[Board, ...]:
    return tuple(make(spec) for make in BOARDS)


def overview_panels(spec: ClusterSpec) -> list[tuple[str, str, str, str]]:
    """(title, kind, query, legend) of each overview panel."""
    return [(p.title, p.kind, p.targets[0][0], p.targets[0][1]) for p in overview_board(spec).panels]


def queries(spec: ClusterSpec, ins: str = ALL_MEMBERS) -> list[tuple[str, str, str]]:
    """(board slug, panel title, query) of every target of every board, ``$ins`` set to ``ins``."""
    return [(b.slug, p.title, expr.replace("$ins", ins)) for b in boards(spec) for p in b.panels
            for expr, _ in p.targets]


def _targets(panel: Panel) -> list[Target]:
    instant = panel.kind == "table"
    return [Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + n), datasource=DATASOURCE,
                   instant=instant, format="table" if instant else "time_series")
            for n, (expr, legend) in enumerate(panel.targets)]


def _layout(panels: tuple[Panel, ...]) -> list[Any]:
    """Stats in one row across, then time series two by two, then tables full width."""
    out: list[Any] = []
    stats = [p for p in panels if p.kind == "stat"]
    series = [p for p in panels if p.kind == "timeseries"]
    tables = [p for p in panels if p.kind == "table"]
    width = 24 // max(len(stats), 1)
    for n, p in enumerate(stats):
        out.append(Stat(title=p.title, description=p.description or None, dataSource=DATASOURCE,
                        targets=_targets(p), format=p.unit, gridPos=GridPos(h=4, w=width, x=n * width, y=0)))
    for n, p in enumerate(series):
        out.append(TimeSeries(title=p.title, description=p.description or None, dataSource=DATASOURCE,
                              targets=_targets(p), unit=p.unit,
                              gridPos=GridPos(h=8, w=12, x=(n % 2) * 12, y=4 + (n // 2) * 8)))
    y = 4 + ((len(series) + 1) // 2) * 8
    for n, p in enumerate(tables):
        out.append(Table(title=p.title, description=p.description or None, dataSource=DATASOURCE,
                         targets=_targets(p), unit=p.unit, gridPos=GridPos(h=10, w=24, x=0, y=y + n * 10)))
    return out


def board_model(spec: ClusterSpec, board: Board) -> dict[str, Any]:
    """A board's Grafana JSON model."""
    cluster = spec.cluster_name
    templating = Templating()
    if board.per_member:
        templating = Templating([Template(
            name="ins", label="member", query=f'label_values(up{{cls="{cluster}"}}, ins)', dataSource=DATASOURCE,
            includeAll=True, allValue=ALL_MEMBERS, default="$__all", multi=False, refresh=2)])
    dashboard = Dashboard(
        title=f"pgha {cluster} {board.title}", uid=f"pgha-{cluster}-{board.slug}"[:40],
        tags=["pgha", cluster], timezone="utc", panels=_layout(board.panels), time=TimeRange("now-6h", "now"),
        description=board.description, templating=templating,
    ).auto_panel_ids()
    return dashboard.to_json_data()


def cluster_overview(spec: ClusterSpec) -> dict[str, Any]:
    """The overview dashboard's JSON model."""
    return board_model(spec, overview_board(spec))


def dashboard_json(model: dict[str, Any]) -> str:
    """The model as Grafana's JSON (grafanalib's encoder turns its objects into plain JSON)."""
    from grafanalib._gen import DashboardEncoder

    return json.dumps(model, cls=DashboardEncoder, sort_keys=True, indent=1)


def dashboards(spec: ClusterSpec) -> dict[str, str]:
    """File name -> dashboard JSON, one per board (each the data of its own ConfigMap)."""
    return {f"{spec.cluster_name}-{b.slug}.json": dashboard_json(board_model(spec, b)) for b in boards(spec)}
