"""Grafana dashboards of a cluster, as code (grafanalib): the cluster overview first.

Each panel's query selects the cluster's ``cls`` and uses the metric names the alerts use
(``pgha.observability.alerts``); ``tests/test_dashboards.py`` parses every query with promtool.
The Kubernetes component ships them as ConfigMaps for Grafana's dashboard sidecar.
"""

import json
from typing import Any

from grafanalib.core import Dashboard, GridPos, Stat, Target, TimeSeries
from grafanalib.core import Time as TimeRange

from ..spec import ClusterSpec
from .alerts import replication_lag_limit

# Grafana's Prometheus data source as kube-prometheus-stack provisions it.
DATASOURCE = "Prometheus"


def _q(expr: str, legend: str = "") -> Target:
    return Target(expr=expr, legendFormat=legend, refId="A", datasource=DATASOURCE)


def overview_panels(spec: ClusterSpec) -> list[tuple[str, str, str, str]]:
    """(title, kind, query, legend) of each overview panel: kind ``stat`` or ``timeseries``."""
    c = f'cls="{spec.cluster_name}"'
    lag = (f"max by (cls) (patroni_xlog_location{{{c}}}) - on (cls) group_right() "
           f"(patroni_xlog_replayed_location{{{c}}} and on (cls, ins) patroni_replica{{{c}}} == 1)")
    return [
        ("Members up", "stat", f'sum(up{{{c},job="pgsql"}})', ""),
        ("Primary", "stat", f"max by (ins) (patroni_primary{{{c}}}) == 1", "{{ins}}"),
        ("Synchronous standbys", "stat", f"sum(patroni_sync_standby{{{c}}})", ""),
        ("Timeline", "stat", f"max(patroni_postgres_timeline{{{c}}})", ""),
        ("Alerts firing", "stat", f'count(ALERTS{{{c},alertstate="firing"}}) or vector(0)', ""),
        ("Last full backup age", "stat",
         f'time() - max(pgbackrest_backup_last_time_seconds{{{c},type="full"}})', ""),
        ("Replication lag (bytes)", "timeseries", lag, "{{ins}}"),
        ("Commits per second", "timeseries", f"sum by (ins) (rate(pg_stat_database_xact_commit{{{c}}}[1m]))",
         "{{ins}}"),
        ("Connections", "timeseries", f"sum by (ins) (pg_stat_activity_count{{{c}}})", "{{ins}}"),
        ("PgBouncer clients waiting", "timeseries",
         f'sum by (ins) (pgbouncer_pools_client_waiting_connections{{{c},database!="pgbouncer"}})', "{{ins}}"),
        ("Filesystem free", "timeseries",
         f'node_filesystem_avail_bytes{{{c},fstype=~"xfs|ext4"}} / node_filesystem_size_bytes{{{c},fstype=~"xfs|ext4"}}',
         "{{ins}} {{mountpoint}}"),
        ("etcd has leader", "timeseries", f"etcd_server_has_leader{{{c}}}", "{{ins}}"),
    ]


def cluster_overview(spec: ClusterSpec) -> dict[str, Any]:
    """The overview dashboard's JSON model: health at a glance, then the trends behind the alerts."""
    panels: list[Any] = []
    stats = [p for p in overview_panels(spec) if p[1] == "stat"]
    series = [p for p in overview_panels(spec) if p[1] == "timeseries"]
    width = 24 // len(stats)
    for i, (title, _, expr, legend) in enumerate(stats):
        panels.append(Stat(title=title, dataSource=DATASOURCE, targets=[_q(expr, legend)],
                           gridPos=GridPos(h=4, w=width, x=i * width, y=0),
                           format="s" if "age" in title else "none"))
    for i, (title, _, expr, legend) in enumerate(series):
        unit = {"Replication lag (bytes)": "bytes", "Filesystem free": "percentunit"}.get(title, "short")
        panels.append(TimeSeries(title=title, dataSource=DATASOURCE, targets=[_q(expr, legend)], unit=unit,
                                 gridPos=GridPos(h=8, w=12, x=(i % 2) * 12, y=4 + (i // 2) * 8)))
    dashboard = Dashboard(
        title=f"pgha {spec.cluster_name} overview", uid=f"pgha-{spec.cluster_name}-overview"[:40],
        tags=["pgha", spec.cluster_name], timezone="utc", panels=panels, time=TimeRange("now-6h", "now"),
        description=f"Replication lag limit {replication_lag_limit(spec)} bytes; rto {spec.rto}, rpo {spec.rpo}.",
    ).auto_panel_ids()
    return dashboard.to_json_data()


def dashboard_json(model: dict[str, Any]) -> str:
    """The model as Grafana's JSON (grafanalib's encoder turns its objects into plain JSON)."""
    from grafanalib._gen import DashboardEncoder

    return json.dumps(model, cls=DashboardEncoder, sort_keys=True, indent=1)


def dashboards(spec: ClusterSpec) -> dict[str, str]:
    """File name -> dashboard JSON, as the ConfigMap's data."""
    return {f"{spec.cluster_name}-overview.json": dashboard_json(cluster_overview(spec))}
