"""A real Prometheus (Debian's) on the host scraping the session's `local_cluster` with the
configuration pgha generates: every target up, every dashboard query answered, every alert rule
loaded and healthy, and the failover alert firing and resolving around a killed primary.

The Prometheus scrapes and evaluates every 2 s (production: 15-30 s) and listens on 127.0.0.1,
PGHA_TEST_S3_PORT + 500 (outside the +0..+301 the test clusters use)."""

import json
import time
from typing import Any, Callable

import psycopg
import pytest
import yaml

from conftest import cluster_args
from pgha.local import backups
from pgha.local.drills import run_drill, summary_line
from pgha.local.prometheus import SCRAPE_INTERVAL, LocalPrometheus, member_ips
from pgha.observability import cluster_alerts, scrape_targets
from pgha.observability.alerts import FAILOVER_WINDOW
from pgha.observability.dashboards import dashboards
from pgha.observability.panels import panel_queries, substitute, variable_values
from pgha.spec import PORTS

pytestmark = pytest.mark.cluster

# The failover alert stays firing for its window (10m) after a new timeline. The drill loads the
# same rule, built by the same function with a 1m window, beside it, to see it resolve within
# minutes; the production rule is seen firing, and still firing when its short twin resolved.
DRILL_WINDOW = "1m"
DRILL_WINDOW_S = 60
STEP_S = int(SCRAPE_INTERVAL.rstrip("s"))


def poll(what: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """``what()`` until it is truthy or ``timeout`` passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def drill_rules(spec) -> str:
    rule = next(a for a in cluster_alerts(spec, failover_window=DRILL_WINDOW)
                if a.name == "PostgresFailover").rule(spec.cluster_name)
    rule["labels"]["window"] = DRILL_WINDOW  # its ALERTS series apart from the production rule's
    return yaml.safe_dump({"groups": [{"name": "pgha-drill", "rules": [rule]}]}, sort_keys=False, width=1000)


@pytest.fixture(scope="module")
def prometheus(local_cluster):
    # What two panels need on any cluster that runs: a full backup (the last full backup's age)
    # and a client through each PgBouncer (its pools, whose waiting clients a panel shows).
    if not any(b["type"] == "full" for b in backups.info(local_cluster).get("backup", [])):
        began = time.monotonic()
        backups.run_backup(local_cluster, "full", log=print)
        print(f"full backup: {time.monotonic() - began:.1f} s")
    for node in local_cluster.nodes:
        with psycopg.connect(local_cluster.dsn(node.ip, PORTS["pgbouncer"]), connect_timeout=5,
                             prepare_threshold=None) as conn:
            conn.execute("SELECT 1")
    prom = LocalPrometheus(local_cluster, port=cluster_args()["s3_http_port"] + 500,
                           extra_rules={"pgha-drill-rules.yml": drill_rules(local_cluster.spec)})
    prom.start()
    yield prom
    prom.stop()


def test_every_generated_target_is_up(prometheus, local_cluster):
    spec = local_cluster.spec
    expected = {(t.job, t.member, t.ip, f"http://{t.address}{t.path}")
                for t in scrape_targets(spec, member_ips(local_cluster))}
    assert len(expected) == 3 * 7  # every member runs etcd in the dev stack

    def seen() -> set[tuple[str, str, str, str]]:
        return {(t["labels"]["job"], t["labels"]["ins"], t["labels"]["ip"], t["scrapeUrl"])
                for t in prometheus.targets() if t["health"] == "up" and t["labels"].get("cls") == spec.cluster_name}

    poll(lambda: seen() == expected, 30)
    down = {(t["labels"].get("job"), t["labels"].get("ins"), t["lastError"]) for t in prometheus.targets()
            if t["health"] != "up"}
    assert seen() == expected, f"down: {down}"
    up = prometheus.query(f'up{{cls="{spec.cluster_name}"}}')
    assert {(s["metric"]["job"], s["metric"]["ins"]) for s in up} == {(j, m) for j, m, _, _ in expected}
    assert {s["value"][1] for s in up} == {"1"}


def test_every_alert_rule_loads_and_evaluates_healthy(prometheus, local_cluster):
    wanted = [a.name for a in cluster_alerts(local_cluster.spec)]

    def group() -> dict[str, Any] | None:
        found = [g for g in prometheus.rule_groups() if g["name"] == f"pgha-{local_cluster.spec.cluster_name}"]
        evaluated = found and all(r["health"] != "unknown" for r in found[0]["rules"])
        return found[0] if evaluated else None

    loaded = poll(group, 30)
    assert loaded is not None, [g["name"] for g in prometheus.rule_groups()]
    assert loaded["interval"] == STEP_S
    assert [r["name"] for r in loaded["rules"]] == wanted and len(wanted) == 26
    sick = {r["name"]: (r["health"], r.get("lastError")) for r in loaded["rules"]
            if r["health"] != "ok" or r["type"] != "alerting" or r.get("lastError")}
    assert sick == {}


def test_every_dashboard_query_returns_series(prometheus, local_cluster):
    spec = local_cluster.spec
    queries = []
    for name, text in dashboards(spec).items():
        model = json.loads(text)
        values = variable_values(model, prometheus.label_values, spec.cluster_name)
        queries += [(q, substitute(q.expr, values)) for q in panel_queries(name, model)]
    assert len(queries) >= 12 and all(expr for _, expr in queries)

    def empty() -> list[str]:
        return [f"{q.dashboard} / {q.panel} ({q.ref}): {expr}" for q, expr in queries if not prometheus.query(expr)]

    # rate() wants two scrapes; the pgBackRest exporter caches `pgbackrest info` for 60 s.
    poll(lambda: not empty(), 90, interval=STEP_S)
    left = empty()
    assert not left, "no series for:\n" + "\n".join(left)


def _alert(prometheus: LocalPrometheus, window: str | None) -> dict[str, Any] | None:
    """The active PostgresFailover alert: the drill's twin (``window``) or the production rule (None)."""
    for alert in prometheus.alerts():
        if alert["labels"]["alertname"] == "PostgresFailover" and alert["labels"].get("window") == window:
            return alert
    return None


def _firing(prometheus: LocalPrometheus, window: str | None, since: float) -> list[float]:
    """When (1 s steps since ``since``) Prometheus' ALERTS shows that PostgresFailover firing."""
    expr = f'ALERTS{{alertname="PostgresFailover",alertstate="firing",window="{window or ""}"}}'
    series = prometheus.query_range(expr, since, time.time(), 1)
    return sorted(float(t) for s in series for t, _ in s["values"])


def test_killing_the_primary_fires_the_failover_alert_then_it_resolves(prometheus, local_cluster):
    c = local_cluster.spec.cluster_name
    assert FAILOVER_WINDOW == "10m"  # the production window this test relies on outlasting its twin's

    def timeline() -> int:
        return int(float(prometheus.query(f'max(patroni_postgres_timeline{{cls="{c}"}})')[0]["value"][1]))

    before = poll(lambda: prometheus.query(f'patroni_postgres_timeline{{cls="{c}"}}') and timeline(), 30)
    # Rules evaluated with the timeline known and steady: neither alert is active.
    time.sleep(2 * STEP_S)
    assert _alert(prometheus, None) is None and _alert(prometheus, DRILL_WINDOW) is None
    began = time.time()
    result = run_drill(local_cluster, "primary-node", log=print)
    print(summary_line(result))
    assert result["new_primary"] != result["old_primary"] and result["rpo_rows"] == 0
    assert result["rejoined"] and result["healthy_after"]  # the session's later tests find it whole
    assert poll(lambda: timeline() > before, 30), "Prometheus never saw the new timeline"

    # The production rule fired on the new timeline and is still firing: its window is 10 minutes.
    fired = poll(lambda: _alert(prometheus, None), 30)
    assert fired is not None and fired["state"] == "firing", prometheus.alerts()
    assert int(float(fired["value"])) == timeline() > before
    assert fired["labels"]["cls"] == c and fired["labels"]["severity"] == "warning"
    assert _firing(prometheus, None, began)[0] >= began
    # Its twin fired too (maybe gone already: the drill's recovery can outlast a minute) and
    # resolves by itself, one window after it fired and not before.
    assert poll(lambda: _alert(prometheus, DRILL_WINDOW) is None, DRILL_WINDOW_S + 30, interval=STEP_S)
    twin = _firing(prometheus, DRILL_WINDOW, began)
    assert twin and twin[0] >= began
    assert DRILL_WINDOW_S - 2 * STEP_S <= twin[-1] - twin[0] <= DRILL_WINDOW_S + 2 * STEP_S, (twin[0], twin[-1])
    still = _alert(prometheus, None)
    assert still is not None and still["state"] == "firing"
