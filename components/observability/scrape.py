"""Every member's scrape targets, labelled with Pigsty's identity (``cls``, ``ins``, ``ip``).

One list feeds the node's file_sd file (``/etc/pgha/prometheus/targets.yml``), the plain
``prometheus.yml`` for a Prometheus of one's own, and the Kubernetes ScrapeConfig, so the three
never disagree. Ports come from ``spec.model.PORTS``; every one of them is a metrics port the
monitoring CIDRs may reach (``METRICS_PORTS``), never Patroni's REST API itself.
"""

from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from ..spec import METRICS_PORTS, PORTS, ClusterSpec, Member


@dataclass(frozen=True)
class ScrapeJob:
    """One kind of target every member (or every etcd member) serves."""

    job: str
    port: int
    path: str
    what: str
    etcd_only: bool = False


JOBS: tuple[ScrapeJob, ...] = (
    ScrapeJob("node", PORTS["node_exporter"], "/metrics", "prometheus-node-exporter 1.9: CPU, memory, filesystems"),
    ScrapeJob("pgsql", PORTS["postgres_exporter"], "/metrics",
              "prometheus-postgres-exporter 0.17: PostgreSQL (pg_up, pg_stat_*, pg_settings_*)"),
    ScrapeJob("pgbouncer", PORTS["pgbouncer_exporter"], "/metrics", "pgha's PgBouncer exporter (pgbouncer_*)"),
    ScrapeJob("pgbackrest", PORTS["pgbackrest_exporter"], "/metrics",
              "pgha's pgBackRest exporter (pgbackrest_*) and the node's certificate expiry (pgha_tls_*)"),
    # Patroni's REST API is for members only: HAProxy proxies this one path to it (README "Access on the node").
    ScrapeJob("patroni", PORTS["haproxy_stats"], "/patroni/metrics", "Patroni 4.0's /metrics, through HAProxy"),
    ScrapeJob("haproxy", PORTS["haproxy_stats"], "/metrics", "HAProxy 3.0's built-in Prometheus exporter"),
    # etcd's metrics listener (listen-metrics-urls): its client port wants a certificate of the cluster CA.
    ScrapeJob("etcd", PORTS["etcd_metrics"], "/metrics", "etcd 3.5's metrics listener (plain HTTP, metrics and "
              "/health only)", etcd_only=True),
)
assert all(j.port in METRICS_PORTS for j in JOBS), "every scrape port must be a metrics port"


@dataclass(frozen=True)
class Target:
    """One member's endpoint of one job."""

    job: str
    member: str
    ip: str
    port: int
    path: str

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def labels(self, cluster: str) -> dict[str, str]:
        """Pigsty's identity labels (and the job): what every alert and dashboard selects on."""
        return {"job": self.job, "cls": cluster, "ins": self.member, "ip": self.ip}


def _jobs_of(member: Member) -> tuple[ScrapeJob, ...]:
    return tuple(j for j in JOBS if member.runs_etcd or not j.etcd_only)


def scrape_targets(spec: ClusterSpec, member_ips: Mapping[str, str]) -> tuple[Target, ...]:
    """Every target of every member of ``spec`` (members in order, jobs in ``JOBS`` order)."""
    return tuple(Target(j.job, m.name, member_ips[m.name], j.port, j.path)
                 for m in spec.members for j in _jobs_of(m))


def file_sd(spec: ClusterSpec, member_ips: Mapping[str, str]) -> list[dict[str, Any]]:
    """Prometheus file_sd entries: one per target, the metrics path as ``__metrics_path__``."""
    return [{"targets": [t.address], "labels": {**t.labels(spec.cluster_name), "__metrics_path__": t.path}}
            for t in scrape_targets(spec, member_ips)]


def static_configs(spec: ClusterSpec, member_ips: Mapping[str, str], job: str) -> list[dict[str, Any]]:
    """``static_configs`` of one job: one entry per member, so each target carries its own ``ins``/``ip``."""
    return [{"targets": [t.address], "labels": {k: v for k, v in t.labels(spec.cluster_name).items() if k != "job"}}
            for t in scrape_targets(spec, member_ips) if t.job == job]


def prometheus_config(spec: ClusterSpec, member_ips: Mapping[str, str], *, scrape_interval: str = "15s",
                      rule_files: tuple[str, ...] = ()) -> str:
    """A complete ``prometheus.yml`` scraping the cluster: one scrape job per exporter kind."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": f"{spec.cluster_name}-{j.job}", "metrics_path": j.path, "scheme": "http",
             "static_configs": static_configs(spec, member_ips, j.job),
             # Keep job as the exporter kind (alerts select on it), not the per-cluster job name.
             "relabel_configs": [{"target_label": "job", "replacement": j.job}]}
            for j in JOBS if static_configs(spec, member_ips, j.job)
        ],
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    return yaml.safe_dump(config, sort_keys=False)
