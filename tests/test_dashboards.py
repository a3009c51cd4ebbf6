"""The Grafana dashboards (grafanalib): six boards of valid panels whose every query parses
(promtool), selects this cluster and names only metrics the node's exporters serve
(``exporter_metrics.txt``, captured from them)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pgha.observability import cluster_alerts
from pgha.observability.dashboards import ALL_MEMBERS, boards, dashboards, overview_panels, queries
from render_fixtures import make_spec

SPEC = make_spec({}, stack="dev")
BOARDS = ("overview", "instance", "replication", "pooler", "backups", "queries")
# Prometheus's own series: the target's up and the alerts' state.
PROMETHEUS_METRICS = {"up", "ALERTS"}


def served_metrics() -> set[str]:
    text = (Path(__file__).parent / "exporter_metrics.txt").read_text()
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def _models() -> dict[str, dict]:
    return {name: json.loads(text) for name, text in dashboards(SPEC).items()}


def test_six_boards_of_valid_panels() -> None:
    models = _models()
    assert list(models) == [f"pg-dev-{b}.json" for b in BOARDS]
    assert len(overview_panels(SPEC)) == len(models["pg-dev-overview.json"]["panels"]) >= 10
    for name, model in models.items():
        assert model["uid"] == f"pgha-{name.removesuffix('.json')}" and model["title"].startswith("pgha pg-dev ")
        panels = model["panels"]
        assert len(panels) >= 10, name
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            assert panel["type"] in ("stat", "timeseries", "table") and panel["title"]
            assert panel["datasource"] == "Prometheus"
            pos = panel["gridPos"]
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24
            targets = panel["targets"]
            assert targets and len({t["refId"] for t in targets}) == len(targets)
            for target in targets:
                assert 'cls="pg-dev"' in target["expr"] and target["datasource"] == "Prometheus"
                # A table shows the values now; a time series the range.
                assert target["instant"] is (panel["type"] == "table")


def test_per_member_boards_select_the_member_variable() -> None:
    for board in boards(SPEC):
        model = json.loads(dashboards(SPEC)[f"pg-dev-{board.slug}.json"])
        variables = model["templating"]["list"]
        exprs = [t["expr"] for p in model["panels"] for t in p["targets"]]
        if board.per_member:
            (var,) = variables
            assert var["name"] == "ins" and var["allValue"] == ALL_MEMBERS and var["includeAll"]
            assert var["query"] == 'label_values(up{cls="pg-dev"}, ins)'
            assert all('ins=~"$ins"' in e for e in exprs), board.slug
        else:
            assert variables == [] and not any("$ins" in e for e in exprs), board.slug
    assert {b.slug for b in boards(SPEC) if b.per_member} == {"instance", "queries"}
    assert not any("$" in expr for _, _, expr in queries(SPEC, "pg-dev-1"))


def test_every_query_names_served_metrics_only() -> None:
    served = served_metrics() | PROMETHEUS_METRICS
    for board, title, expr in queries(SPEC):
        for metric in re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\{", expr):
            assert metric in served, (board, title, metric)
    # The alerts too: one list of names for both.
    for alert in cluster_alerts(SPEC):
        for metric in re.findall(r"\b([a-z_][a-z0-9_]*)\{", alert.expr):
            assert metric in served, (alert.alert, metric)


def test_top_queries_read_pg_stat_statements() -> None:
    exprs = [e for board, _, e in queries(SPEC) if board == "queries"]
    assert exprs and all("pg_stat_statements_" in e for e in exprs)
    # The exporter's labels: by statement (queryid) per database and user, never the text.
    assert all("query=" not in e for e in exprs)
    assert any("by (ins, datname, user, queryid)" in e for e in exprs)


def test_every_query_parses(tmp_path: Path) -> None:
    exprs = [expr for _, _, expr in queries(SPEC)]
    # promtool parses a recording rule's expression like Prometheus does a query.
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"pgha:panel{i}", "expr": e}
                                                     for i, e in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "panels.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and f"SUCCESS: {len(exprs)} rules found" in result.stdout, result.stdout
