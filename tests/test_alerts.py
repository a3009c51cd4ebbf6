"""The generated alert rules under Prometheus' own tool: ``promtool check rules`` on the rule file,
and ``promtool test rules`` feeding synthetic series of the metric names the nodes serve, proving
each alert fires when it should (with the labels it should) and stays silent when it should not.

The firing cases run on a copy of the rules without annotations: promtool compares annotations
too, and the text is checked by ``check rules`` (template syntax) and by the one case below that
expands a summary and description. Thresholds are read from the spec, not copied here.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from pgha.observability import alerts as alerts_module
from pgha.observability import cluster_alerts as alerts
from pgha.observability import rule_groups, rules_yaml
from pgha.render import files as render_files
from pgha.render import sized_parameters
from render_fixtures import make_spec

PROMTOOL = shutil.which("promtool")
DEV = make_spec({}, stack="dev")  # pg-dev: rto norm, rpo 0, oltp, full backup daily
ASYNC = make_spec({"rpo": 1048576, "profile": "olap", "rto": "fast", "backup": {"fullSchedule": "30 2 * * 0"}},
                  stack="olap")
BRANCH_LIKE = make_spec({"replicas": 0, "rpo": 65536}, stack="one")
C = DEV.cluster_name


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def _labels(ins: int | None = None, job: str = "patroni", **extra: str) -> dict[str, str]:
    out = {"cls": C, "job": job, **extra}
    if ins is not None:
        out["ins"] = f"{C}-{ins}"
    return out


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


class Case(NamedTuple):
    """One promtool test group for ``alert``: its series, and at each eval time the label sets
    expected to fire (beyond the rule's own ``severity`` and ``cls``); an empty list: silent."""

    alert: str
    series: list[dict[str, str]]
    expect: dict[str, list[dict[str, str]]]
    interval: str = "15s"


def _cases() -> list[Case]:
    ttl = DEV.rto_plan.ttl
    max_connections = int(sized_parameters(DEV)["max_connections"])
    lag_limit = alerts_module.replication_lag_limit(DEV)
    backup_age = alerts_module.full_backup_max_age(DEV)
    assert backup_age is not None and backup_age % 3600 == 0
    idle = int(re.fullmatch(r"(\d+)min", sized_parameters(DEV)["idle_in_transaction_session_timeout"])[1]) * 30
    other = {"cls": "pg-other", "job": "node", "ins": "pg-other-1"}
    fs = {"mountpoint": "/var/lib/pgha", "fstype": "xfs", "device": "/dev/nvme1n1"}
    tmpfs = {"mountpoint": "/run", "fstype": "tmpfs", "device": "tmpfs"}
    node1 = _labels(1, "node")
    return [
        Case("PgTargetDown", [_series("up", node1, "0x20"), _series("up", _labels(2, "node"), "1x20"),
                              _series("up", other, "0x20")],
             {"2m": [node1], "30s": []}),
        Case("PostgresDown", [_series("pg_up", _labels(1, "pgsql"), "0x20"),
                              _series("pg_up", _labels(2, "pgsql"), "0 0 1x20")],
             {"2m": [_labels(1, "pgsql")]}),
        Case("PgbouncerDown", [_series("pgbouncer_up", _labels(3, "pgbouncer"), "0x20"),
                               _series("pgbouncer_up", _labels(2, "pgbouncer"), "1x20")],
             {"2m": [_labels(3, "pgbouncer")]}),
        # No member reports holding the key (also when none answers at all): fires after the ttl.
        Case("PatroniNoLeader", [_series("patroni_primary", _labels(i), "1 0x20") for i in (1, 2, 3)],
             {f"{ttl - 15}s": [], f"{ttl + 30}s": [{}]}),
        Case("PatroniNoLeader", [_series("patroni_primary", {**other, "job": "patroni"}, "1x20")],
             {f"{ttl + 30}s": [{}]}),
        Case("PatroniNoLeader", [_series("patroni_primary", _labels(1), "1x20"),
                                 _series("patroni_primary", _labels(2), "0x20")], {"4m": []}),
        Case("PatroniDcsUnreachable", [_series("patroni_dcs_last_seen", _labels(1), "0x20"),
                                       # contacted every 15 s: its timestamp keeps up with time()
                                       _series("patroni_dcs_last_seen", _labels(2), "0+15x20")],
             {"2m": [_labels(1)]}),
        Case("PatroniPaused", [_series("patroni_is_paused", _labels(1), "1x80"),
                               _series("patroni_is_paused", _labels(2), "0x80")],
             {"10m": [], "16m": [_labels(1)]}),
        # Timeline 1 -> 2 at 10m: the alert fires and resolves by itself 10 minutes later.
        Case("PostgresFailover", [_series("patroni_postgres_timeline", _labels(1), "1x40 2x80"),
                                  _series("patroni_postgres_timeline", _labels(2), "1x41 2x80")],
             {"9m": [], "11m": [{}], "21m": []}),
        Case("PostgresReplicaNotStreaming",
             [_series("patroni_replica", _labels(2), "1x20"), _series("patroni_postgres_streaming", _labels(2), "0x20"),
              _series("patroni_replica", _labels(3), "1x20"), _series("patroni_postgres_streaming", _labels(3), "1x20"),
              # the primary streams from no one: not a replica
              _series("patroni_replica", _labels(1), "0x20"), _series("patroni_postgres_streaming", _labels(1), "0x20")],
             {"3m": [_labels(2)]}),
        Case("PostgresReplicationLag",
             [_series("patroni_xlog_location", _labels(1), "1000000000x20"),
              _series("patroni_xlog_location", _labels(2), "0x20"), _series("patroni_xlog_location", _labels(3), "0x20"),
              _series("patroni_xlog_replayed_location", _labels(1), "0x20"),
              _series("patroni_xlog_replayed_location", _labels(2), f"{1000000000 - lag_limit - 1}x20"),
              _series("patroni_xlog_replayed_location", _labels(3), f"{1000000000 - lag_limit}x20"),
              _series("patroni_replica", _labels(1), "0x20"), _series("patroni_replica", _labels(2), "1x20"),
              _series("patroni_replica", _labels(3), "1x20")],
             {"2m": [_labels(2)]}),
        Case("PostgresNoSyncStandby",
             [_series("patroni_primary", _labels(1), "1x40"), _series("patroni_sync_standby", _labels(2), "1 1 0x40"),
              _series("patroni_sync_standby", _labels(3), "0x40")],
             {f"{ttl}s": [], f"{ttl + 60}s": [{}]}),
        Case("PostgresNoSyncStandby",
             [_series("patroni_primary", _labels(1), "1x40"), _series("patroni_sync_standby", _labels(2), "1x40")],
             {"3m": []}),
        Case("PostgresArchiveFailing",
             [_series("pg_stat_archiver_failed_count", _labels(1, "pgsql"), "0+1x60"),
              _series("pg_stat_archiver_failed_count", _labels(2, "pgsql"), "5x60")],
             {"3m": [], "10m": [_labels(1, "pgsql")]}),
        Case("PgBackRestRepositoryUnreadable",
             [_series("pgbackrest_up", _labels(1, "pgbackrest"), "0x30"),
              _series("pgbackrest_up", _labels(2, "pgbackrest"), "1x30")],
             {"10m": [], "20m": [_labels(1, "pgbackrest")]}, interval="1m"),
        # Every member's exporter reads the same repository: the newest stop time of any counts.
        Case("BackupFullTooOld",
             [_series("pgbackrest_backup_last_time_seconds", _labels(1, "pgbackrest", stanza=C, type="full"), "0x60"),
              _series("pgbackrest_backup_last_time_seconds", _labels(2, "pgbackrest", stanza=C, type="full"), "0x60"),
              _series("pgbackrest_backup_last_time_seconds", _labels(2, "pgbackrest", stanza=C, type="diff"),
                      "0+3600x60")],
             {f"{backup_age // 3600 - 1}h": [], f"{backup_age // 3600 + 1}h": [{}]}, interval="1h"),
        Case("BackupFullMissing",
             [_series("pgbackrest_backup_count", _labels(1, "pgbackrest", stanza=C, type="full"), "0x60"),
              _series("pgbackrest_backup_count", _labels(1, "pgbackrest", stanza=C, type="incr"), "3x60")],
             {f"{backup_age // 3600 - 1}h": [], f"{backup_age // 3600 + 1}h": [{}]}, interval="1h"),
        Case("BackupFullMissing",
             [_series("pgbackrest_backup_count", _labels(1, "pgbackrest", stanza=C, type="full"), "1x60")],
             {f"{backup_age // 3600 + 1}h": []}, interval="1h"),
        # Losing 6 GB an hour with 32 GB left at 3h: full in about 5 h, inside the 6 h horizon.
        Case("NodeFsFullSoon",
             [_series("node_filesystem_avail_bytes", {**node1, **fs}, "50e9-0.5e9x60"),
              _series("node_filesystem_size_bytes", {**node1, **fs}, "100e9x60"),
              _series("node_filesystem_avail_bytes", {**node1, **tmpfs}, "1e9-0.01e9x60"),
              _series("node_filesystem_size_bytes", {**node1, **tmpfs}, "2e9x60"),
              _series("node_filesystem_avail_bytes", {**_labels(2, "node"), **fs}, "30e9x60"),
              _series("node_filesystem_size_bytes", {**_labels(2, "node"), **fs}, "100e9x60")],
             {"3h": [{**node1, **fs}]}, interval="5m"),
        Case("NodeFsAlmostFull",
             [_series("node_filesystem_avail_bytes", {**node1, **fs}, "5e9x20"),
              _series("node_filesystem_size_bytes", {**node1, **fs}, "100e9x20"),
              _series("node_filesystem_avail_bytes", {**_labels(2, "node"), **fs}, "20e9x20"),
              _series("node_filesystem_size_bytes", {**_labels(2, "node"), **fs}, "100e9x20")],
             {"10m": [{**node1, **fs}]}, interval="1m"),
        Case("PostgresConnectionsHigh",
             [_series("pg_stat_activity_count", _labels(1, "pgsql", datname="app", state="active"),
                      f"{max_connections // 2}x20"),
              _series("pg_stat_activity_count", _labels(1, "pgsql", datname="app", state="idle"),
                      f"{max_connections * 3 // 10 + 1}x20"),
              _series("pg_stat_activity_count", _labels(2, "pgsql", datname="app", state="active"),
                      f"{max_connections * 8 // 10}x20")],
             {"10m": [{"cls": C, "ins": f"{C}-1"}]}, interval="1m"),
        Case("PgbouncerClientsWaiting",
             [_series("pgbouncer_pools_client_maxwait_seconds", _labels(1, "pgbouncer", database="app", user="u"),
                      "3x20"),
              _series("pgbouncer_pools_client_maxwait_seconds",
                      _labels(1, "pgbouncer", database="pgbouncer", user="pgbouncer"), "9x20"),
              _series("pgbouncer_pools_client_maxwait_seconds", _labels(2, "pgbouncer", database="app", user="u"),
                      "0.5x20")],
             {"5m": [{"cls": C, "ins": f"{C}-1", "database": "app"}]}, interval="1m"),
        Case("PostgresXidWraparound",
             [_series("pg_database_wraparound_age_datfrozenxid_seconds", _labels(1, "pgsql", datname="app"),
                      f"{alerts_module.XID_AGE_LIMIT + 1}x30"),
              _series("pg_database_wraparound_age_datfrozenxid_seconds", _labels(1, "pgsql", datname="postgres"),
                      f"{alerts_module.XID_AGE_LIMIT // 2}x30")],
             {"5m": [], "20m": [{"cls": C, "ins": f"{C}-1", "datname": "app"}]}, interval="1m"),
        Case("PostgresLongTransaction",
             [_series("pg_stat_activity_max_tx_duration", _labels(1, "pgsql", datname="app", state="active"),
                      f"{alerts_module.LONG_TRANSACTION_SECONDS + 60}x10"),
              _series("pg_stat_activity_max_tx_duration", _labels(2, "pgsql", datname="app", state="idle"),
                      f"{alerts_module.LONG_TRANSACTION_SECONDS * 2}x10"),
              _series("pg_stat_activity_max_tx_duration", _labels(3, "pgsql", datname="app", state="active"),
                      "100x10")],
             {"5m": [{"cls": C, "ins": f"{C}-1", "datname": "app"}]}, interval="1m"),
        Case("PostgresIdleInTransaction",
             [_series("pg_stat_activity_max_tx_duration",
                      _labels(1, "pgsql", datname="app", state="idle in transaction (aborted)"), f"{idle + 1}x10"),
              _series("pg_stat_activity_max_tx_duration", _labels(2, "pgsql", datname="app", state="idle in transaction"),
                      f"{idle - 1}x10"),
              _series("pg_stat_activity_max_tx_duration", _labels(3, "pgsql", datname="app", state="active"),
                      f"{idle * 10}x10")],
             {"5m": [{"cls": C, "ins": f"{C}-1", "datname": "app"}]}, interval="1m"),
        Case("EtcdNoLeader", [_series("etcd_server_has_leader", _labels(3, "etcd"), "0x20"),
                              _series("etcd_server_has_leader", _labels(1, "etcd"), "1x20")],
             {"30s": [], "2m": [_labels(3, "etcd")]}),
        Case("EtcdDatabaseQuotaHigh",
             [_series("etcd_mvcc_db_total_size_in_bytes", _labels(1, "etcd"), "1.8e9x30"),
              _series("etcd_server_quota_backend_bytes", _labels(1, "etcd"), "2147483648x30"),
              _series("etcd_mvcc_db_total_size_in_bytes", _labels(2, "etcd"), "1e9x30"),
              _series("etcd_server_quota_backend_bytes", _labels(2, "etcd"), "2147483648x30")],
             {"20m": [_labels(1, "etcd")]}, interval="1m"),
        Case("EtcdQuorumAtRisk", [_series("up", _labels(i, "etcd"), "1x20" if i < 3 else "1 0x20") for i in (1, 2, 3)],
             {"2m": [{}]}),
        Case("EtcdQuorumAtRisk", [_series("up", _labels(i, "etcd"), "1x20") for i in (1, 2, 3)], {"2m": []}),
        Case("CertificateExpiringSoon",
             [_series("pgha_tls_certificate_expiry_timestamp_seconds", _labels(1, "pgbackrest", file="node.crt"),
                      f"{20 * 86400}x20"),
              _series("pgha_tls_certificate_expiry_timestamp_seconds", _labels(1, "pgbackrest", file="ca.crt"),
                      f"{3650 * 86400}x20"),
              _series("pgha_tls_certificate_expiry_timestamp_seconds", _labels(2, "pgbackrest", file="node.crt"),
                      f"{(alerts_module.EARLY_RENEWAL_HOURS // 2 + 48) * 3600}x20")],
             {"30m": [], "2h": [_labels(1, "pgbackrest", file="node.crt")]}, interval="10m"),
        Case("HAProxyPrimaryServiceDown",
             [_series("haproxy_backend_active_servers", _labels(1, "haproxy", proxy="be-primary-pooled"), "0x20"),
              _series("haproxy_backend_active_servers", _labels(2, "haproxy", proxy="be-primary-pooled"), "1x20"),
              _series("haproxy_backend_active_servers", _labels(2, "haproxy", proxy="be-replica-pooled"), "0x20")],
             {"2m": [_labels(1, "haproxy", proxy="be-primary-pooled")]}),
    ]


def _strip_annotations(groups: dict[str, Any]) -> dict[str, Any]:
    return {"groups": [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                       for g in groups["groups"]]}


def _test_groups(cases: list[Case]) -> list[dict[str, Any]]:
    groups = []
    for case in cases:
        tests = [{"eval_time": at, "alertname": case.alert,
                  "exp_alerts": [{"exp_labels": {**labels, "severity": _severity(case.alert), "cls": C}}
                                 for labels in firing]}
                 for at, firing in case.expect.items()]
        groups.append({"interval": case.interval, "input_series": case.series, "alert_rule_test": tests})
    return groups


def _severity(name: str) -> str:
    return next(a.severity for a in alerts(DEV) if a.name == name)


def test_promtool_check_rules(tmp_path: Path) -> None:
    for spec in (DEV, ASYNC, BRANCH_LIKE):
        path = tmp_path / f"{spec.cluster_name}.yml"
        path.write_text(rules_yaml(spec))
        result = _promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alerts(spec))} rules found" in result.stdout


def test_every_alert_fires_and_stays_silent(tmp_path: Path) -> None:
    cases = _cases()
    names = {a.name for a in alerts(DEV)}
    assert {c.alert for c in cases} == names, "every alert needs a case"
    # promtool compares the whole set at each eval time: a firing case also proves the other
    # series (another member, another cluster, a filtered label) silent.
    for name in names:
        assert any(f for c in cases if c.alert == name for f in c.expect.values()), f"{name} never fires"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(_strip_annotations(rule_groups(DEV)), sort_keys=False))
    # One file per sampling interval, evaluated at that interval: a series sampled hourly is absent
    # between samples (Prometheus' 5-minute lookback), which would reset every pending ``for``.
    files = []
    for interval in sorted({c.interval for c in cases}):
        path = tmp_path / f"tests-{interval}.yml"
        path.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": interval,
                                        "tests": _test_groups([c for c in cases if c.interval == interval])},
                                       sort_keys=False))
        files.append(str(path))
    result = _promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


def test_annotations_expand(tmp_path: Path) -> None:
    """Summary and description as Prometheus expands them, on the full rule file."""
    alert = next(a for a in alerts(DEV) if a.name == "PgTargetDown")
    labels = {**_labels(2, "node"), "instance": "10.42.16.12:9100"}

    def expand(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)

    assert "{{" not in expand(alert.summary) + expand(alert.description)
    (tmp_path / "rules.yml").write_text(rules_yaml(DEV))
    test = {"interval": "15s", "input_series": [_series("up", labels, "0x20")],
            "alert_rule_test": [{"eval_time": "2m", "alertname": "PgTargetDown", "exp_alerts": [{
                "exp_labels": {**labels, "severity": "critical"},
                "exp_annotations": {"summary": expand(alert.summary), "description": expand(alert.description),
                                    "runbook": alert.runbook}}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": [test]}))
    result = _promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_thresholds_follow_the_spec() -> None:
    by_name = {a.name: a for a in alerts(ASYNC)}
    # rpo > 0: no synchronous standby to lose; the lag a failover may lose is the rpo.
    assert "PostgresNoSyncStandby" not in by_name and "PostgresNoSyncStandby" in {a.name for a in alerts(DEV)}
    assert by_name["PostgresReplicationLag"].expr.endswith(f"> {ASYNC.rpo}")
    assert alerts_module.replication_lag_limit(DEV) == 16 * 1024 * 1024
    assert alerts_module.READ_LAG_LIMIT == render_files.READ_LAG_LIMIT
    # The rto plan's ttl.
    assert by_name["PatroniNoLeader"].for_ == f"{ASYNC.rto_plan.ttl}s" != f"{DEV.rto_plan.ttl}s"
    # A weekly full backup: a week and a quarter of it.
    week = 7 * 86400
    assert f"> {week + week // 4}" in by_name["BackupFullTooOld"].expr
    # olap has no idle_in_transaction_session_timeout: ten minutes; oltp's 10min: half of it.
    assert by_name["PostgresIdleInTransaction"].expr.endswith("> 600")
    assert next(a for a in alerts(DEV) if a.name == "PostgresIdleInTransaction").expr.endswith("> 300")
    # max_connections as pgha sizes it (olap 200), and a user's override.
    assert by_name["PostgresConnectionsHigh"].expr.endswith(f"> {int(sized_parameters(ASYNC)['max_connections'] * 0.8)}")
    custom = make_spec({"parameters": {"max_connections": 1000}}, stack="big")
    assert next(a for a in alerts(custom) if a.name == "PostgresConnectionsHigh").expr.endswith("> 800")
    # One etcd member: no quorum to put at risk.
    assert "EtcdQuorumAtRisk" not in {a.name for a in alerts(BRANCH_LIKE)}
    # Every expression selects this cluster only.
    for a in alerts(DEV):
        metrics = re.findall(r"\b([a-z_]+)\{", a.expr)
        assert metrics and all(f'{m}{{cls="{C}"' in a.expr for m in metrics), a.name


@pytest.mark.parametrize("spec", [DEV, ASYNC], ids=["dev", "olap"])
def test_every_alert_is_documented(spec) -> None:
    for a in alerts(spec):
        assert a.severity in ("critical", "warning", "info")
        assert a.summary and a.description and a.runbook, a.name


def test_readme_lists_every_alert() -> None:
    """README "Monitoring": the alerts table names every alert of the dev stack with its severity."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("### Alerts\n"):]
    section = section[:section.index("\n## ")]
    rows = set(re.findall(r"^\| `(\w+)` \| (\w+) \|", section, flags=re.M))
    assert rows == {(a.name, a.severity) for a in alerts(DEV)}
