"""`pgbouncer-exporter`: metrics from PgBouncer's admin console."""

import argparse
import os
import time

from ...contract import NodeFacts
from ..cli_types import Subparsers
from ..envfile import env_unquote
from ..errors import LOG, AgentError
from .common import Families, label_text, number, parse_listen, rows_of, serve

# column -> (metric name, type, scale, help). Names follow prometheus-community/pgbouncer_exporter.
# Columns a PgBouncer version lacks are skipped; unknown new columns are ignored.
POOLS_COLUMNS: dict[str, tuple[str, str, float, str]] = {
    "cl_active": ("pgbouncer_pools_client_active_connections", "gauge", 1, "Client connections linked to a server connection and able to process queries"),
    "cl_waiting": ("pgbouncer_pools_client_waiting_connections", "gauge", 1, "Client connections waiting on a server connection"),
    "cl_active_cancel_req": ("pgbouncer_pools_client_active_cancel_connections", "gauge", 1, "Client connections that have forwarded query cancellations to the server"),
    "cl_waiting_cancel_req": ("pgbouncer_pools_client_waiting_cancel_connections", "gauge", 1, "Client connections whose query cancellations have not been forwarded yet"),
    "cl_cancel_req": ("pgbouncer_pools_client_cancel_requests", "gauge", 1, "Client connections that have not forwarded query cancellations to the server yet"),
    "sv_active": ("pgbouncer_pools_server_active_connections", "gauge", 1, "Server connections linked to a client connection"),
    "sv_active_cancel": ("pgbouncer_pools_server_active_cancel_connections", "gauge", 1, "Server connections currently forwarding a cancel request"),
    "sv_being_canceled": ("pgbouncer_pools_server_being_canceled_connections", "gauge", 1, "Server connections waiting for a cancel request to complete"),
    "sv_idle": ("pgbouncer_pools_server_idle_connections", "gauge", 1, "Server connections idle and ready for a client query"),
    "sv_used": ("pgbouncer_pools_server_used_connections", "gauge", 1, "Server connections idle more than server_check_delay, needing server_check_query"),
    "sv_tested": ("pgbouncer_pools_server_testing_connections", "gauge", 1, "Server connections running server_reset_query or server_check_query"),
    "sv_login": ("pgbouncer_pools_server_login_connections", "gauge", 1, "Server connections currently logging in"),
}
STATS_COLUMNS: dict[str, tuple[str, str, float, str]] = {
    "total_query_count": ("pgbouncer_stats_queries_pooled_total", "counter", 1, "Total number of SQL queries pooled"),
    "total_requests": ("pgbouncer_stats_queries_total", "counter", 1, "Total number of SQL requests pooled (PgBouncer < 1.8)"),
    "total_query_time": ("pgbouncer_stats_queries_duration_seconds_total", "counter", 1e-6, "Total seconds spent by pgbouncer actively connected to PostgreSQL, executing queries"),
    "total_xact_count": ("pgbouncer_stats_sql_transactions_pooled_total", "counter", 1, "Total number of SQL transactions pooled"),
    "total_xact_time": ("pgbouncer_stats_server_in_transaction_seconds_total", "counter", 1e-6, "Total seconds spent by pgbouncer connected to PostgreSQL in a transaction"),
    "total_wait_time": ("pgbouncer_stats_client_wait_seconds_total", "counter", 1e-6, "Time spent by clients waiting for a server, in seconds"),
    "total_received": ("pgbouncer_stats_received_bytes_total", "counter", 1, "Total bytes of network traffic received by pgbouncer"),
    "total_sent": ("pgbouncer_stats_sent_bytes_total", "counter", 1, "Total bytes of network traffic sent by pgbouncer"),
    "total_server_assignment_count": ("pgbouncer_stats_server_assignments_total", "counter", 1, "Total times a server was assigned to a client"),
    "total_client_parse_count": ("pgbouncer_stats_client_parses_total", "counter", 1, "Total prepared statements created by clients"),
    "total_server_parse_count": ("pgbouncer_stats_server_parses_total", "counter", 1, "Total prepared statements created on servers by pgbouncer"),
    "total_bind_count": ("pgbouncer_stats_binds_total", "counter", 1, "Total prepared statements readied for execution"),
}
DATABASES_LABELS = ("name", "host", "port", "database", "force_user", "pool_mode")
DATABASES_COLUMNS = {
    "pool_size": ("pgbouncer_databases_pool_size", "gauge", 1, "Maximum number of server connections"),
    "min_pool_size": ("pgbouncer_databases_min_pool_size", "gauge", 1, "Minimum number of server connections"),
    "reserve_pool": ("pgbouncer_databases_reserve_pool", "gauge", 1, "Maximum number of additional connections for this database"),
    "reserve_pool_size": ("pgbouncer_databases_reserve_pool", "gauge", 1, "Maximum number of additional connections for this database"),
    "max_connections": ("pgbouncer_databases_max_connections", "gauge", 1, "Maximum number of allowed server connections"),
    "current_connections": ("pgbouncer_databases_current_connections", "gauge", 1, "Current number of server connections for this database"),
    "paused": ("pgbouncer_databases_paused", "gauge", 1, "1 if this database is paused"),
    "disabled": ("pgbouncer_databases_disabled", "gauge", 1, "1 if this database is disabled"),
}
LISTS_ITEMS = {
    "databases": ("pgbouncer_databases", "Count of databases"),
    "users": ("pgbouncer_users", "Count of users"),
    "pools": ("pgbouncer_pools", "Count of pools"),
    "free_clients": ("pgbouncer_free_clients", "Count of free clients"),
    "used_clients": ("pgbouncer_used_clients", "Count of used clients"),
    "login_clients": ("pgbouncer_login_clients", "Count of clients in login state"),
    "free_servers": ("pgbouncer_free_servers", "Count of free servers"),
    "used_servers": ("pgbouncer_used_servers", "Count of used servers"),
    "dns_names": ("pgbouncer_cached_dns_names", "Count of DNS names in the cache"),
    "dns_zones": ("pgbouncer_cached_dns_zones", "Count of DNS zones in the cache"),
    "dns_queries": ("pgbouncer_in_flight_dns_queries", "Count of in-flight DNS queries"),
}
PGBOUNCER_QUERIES = ("POOLS", "STATS", "LISTS", "DATABASES")

def pgbouncer_families(results: dict[str, tuple[list[str], list[tuple]]], up: bool) -> list:
    """Pure: metric families from the SHOW results ({'POOLS': (columns, rows), ...}).
    Columns are looked up by name, so versions with more or fewer columns work."""
    f = Families()
    f.add("pgbouncer_up", "gauge", "1 if PgBouncer's admin console answered the last scrape", {}, 1.0 if up else 0.0)
    for row in rows_of(results.get("POOLS")):
        labels = {"database": label_text(row.get("database")), "user": label_text(row.get("user"))}
        for col, (name, kind, scale, help_text) in POOLS_COLUMNS.items():
            if col in row:
                f.add(name, kind, help_text, labels, number(row[col], scale))
        if "maxwait" in row:
            wait = (number(row["maxwait"]) or 0.0) + (number(row.get("maxwait_us"), 1e-6) or 0.0)
            f.add("pgbouncer_pools_client_maxwait_seconds", "gauge",
                  "Age of the oldest unserved client connection in seconds", labels, wait)
    for row in rows_of(results.get("STATS")):
        labels = {"database": label_text(row.get("database"))}
        for col, (name, kind, scale, help_text) in STATS_COLUMNS.items():
            if col in row:
                f.add(name, kind, help_text, labels, number(row[col], scale))
    for row in rows_of(results.get("DATABASES")):
        labels = {k: label_text(row.get(k)) for k in DATABASES_LABELS}
        for col, (name, kind, scale, help_text) in DATABASES_COLUMNS.items():
            if col in row:
                f.add(name, kind, help_text, labels, number(row[col], scale))
    for row in rows_of(results.get("LISTS")):
        item = LISTS_ITEMS.get(label_text(row.get("list")))
        if item:
            f.add(item[0], "gauge", item[1], {}, number(row.get("items")))
    return f.list()


class PgBouncerCollector:
    def __init__(self, dsn: str):
        self.dsn = dsn

    def scrape(self) -> tuple[dict, bool]:
        import psycopg

        results: dict = {}
        try:
            # connect_timeout bounds the login too: PgBouncer hangs a login it cannot authenticate
            with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None, connect_timeout=5,
                                 cursor_factory=psycopg.ClientCursor) as conn:
                for what in PGBOUNCER_QUERIES:
                    cur = conn.execute(f"SHOW {what}")
                    results[what] = ([d.name for d in cur.description or []], cur.fetchall())
        except Exception as exc:
            LOG.warning("PgBouncer scrape failed: %s", str(exc).strip())
            return {}, False
        return results, True

    def collect(self):
        start = time.monotonic()
        results, up = self.scrape()
        yield from pgbouncer_families(results, up)
        from prometheus_client.core import GaugeMetricFamily
        yield GaugeMetricFamily("pgbouncer_exporter_scrape_duration_seconds",
                                "Time the last scrape of PgBouncer took", value=time.monotonic() - start)


def cmd_pgbouncer_exporter(node: NodeFacts, args: argparse.Namespace) -> int:
    if args.env_file:
        try:
            with open(args.env_file, encoding="utf-8") as fh:
                os.environ.update(env_unquote(fh.read()))
        except OSError as exc:
            raise AgentError(f"cannot read {args.env_file}: {exc.strerror}")
    dsn = os.environ.get("PGHA_PGBOUNCER_DSN")
    if not dsn:
        raise AgentError("PGHA_PGBOUNCER_DSN is not set (EnvironmentFile=<secrets>/exporter.env, or --env-file)")
    listen = parse_listen(args.listen) if args.listen else (node["ip"], int(node["ports"]["pgbouncer_exporter"]))
    serve(PgBouncerCollector(dsn), listen)
    return 0



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pgbouncer-exporter", parents=[common], help="Prometheus exporter for PgBouncer",
                       description="Serve PgBouncer metrics (SHOW POOLS/STATS/LISTS/DATABASES) read through "
                                   "$PGHA_PGBOUNCER_DSN; pgbouncer_up is 0 while PgBouncer is unreachable.")
    p.add_argument("--listen", metavar="HOST:PORT", help="default <ip>:<ports.pgbouncer_exporter>")
    p.add_argument("--env-file", metavar="PATH", help="read PGHA_PGBOUNCER_DSN from this env file (exporter.env)")
    p.set_defaults(func=cmd_pgbouncer_exporter)
