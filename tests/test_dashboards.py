"""The Grafana dashboards (grafanalib): valid panels whose every query parses (promtool) and
selects this cluster with the metric names the alerts use."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pgha.observability import cluster_alerts
from pgha.observability.dashboards import dashboards, overview_panels
from render_fixtures import make_spec

SPEC = make_spec({}, stack="dev")
# Metric names the nodes serve beyond those the alerts use (README "Monitoring").
EXTRA_METRICS = {"pg_stat_database_xact_commit", "pgbouncer_pools_client_waiting_connections", "ALERTS"}


def _models() -> dict[str, dict]:
    return {name: json.loads(text) for name, text in dashboards(SPEC).items()}


def test_overview_panels_are_valid() -> None:
    (name, model), = _models().items()
    assert name == "pg-dev-overview.json" and model["uid"] == "pgha-pg-dev-overview"
    panels = model["panels"]
    assert len(panels) == len(overview_panels(SPEC)) >= 10
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in ("stat", "timeseries") and panel["title"] and panel["datasource"] == "Prometheus"
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24
        (target,) = panel["targets"]
        assert 'cls="pg-dev"' in target["expr"] and target["refId"] == "A"


def test_every_query_parses_and_uses_served_metrics(tmp_path: Path) -> None:
    alert_metrics = {m for a in cluster_alerts(SPEC) for m in re.findall(r"\b([a-z_]+)\{", a.expr)}
    exprs = [p["targets"][0]["expr"] for m in _models().values() for p in m["panels"]]
    for expr in exprs:
        for metric in re.findall(r"\b([A-Za-z_]+)\{", expr):
            assert metric in alert_metrics | EXTRA_METRICS, metric
    # promtool parses a recording rule's expression like Prometheus does a query.
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"pgha:panel{i}", "expr": e}
                                                     for i, e in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "panels.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and f"SUCCESS: {len(exprs)} rules found" in result.stdout, result.stdout
