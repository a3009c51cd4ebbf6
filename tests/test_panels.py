"""The dashboard walker the real-Prometheus test (test_prometheus.py) relies on: every panel's
query found, rows' nested panels too, and Grafana's variables substituted as Grafana would."""

import json

import pytest

from pgha.observability.dashboards import dashboards
from pgha.observability.panels import panel_queries, substitute, variable_values
from render_fixtures import make_spec

MODEL = {
    "templating": {"list": [
        {"name": "ds", "type": "datasource", "query": "prometheus"},
        {"name": "cluster", "type": "query", "query": {"query": "label_values(pg_up, cls)"}},
        {"name": "ins", "type": "query", "query": 'label_values(pg_up{cls="$cluster"}, ins)'},
        {"name": "mode", "type": "custom", "query": "sync,async", "current": {"value": ["$__all"]}},
    ]},
    "panels": [
        {"title": "top", "targets": [{"refId": "A", "expr": 'up{cls="$cluster"}'}, {"refId": "B"}]},
        {"title": "a row", "type": "row", "panels": [
            {"title": "inner", "targets": [{"refId": "A",
                                            "expr": 'rate(x{ins=~"${ins}",m="[[mode]]"}[$__rate_interval])'}]}]},
    ],
}


ANSWERS = {("pg_up", "cls"): ["pg-b", "pg-a"], ('pg_up{cls="pg-a"}', "ins"): ["pg-a-2", "pg-a-1"]}


def label_values(selector: str | None, label: str) -> list[str]:
    return ANSWERS.get((selector, label), [])


def test_every_query_is_found_rows_included() -> None:
    queries = panel_queries("d.json", MODEL)
    assert [(q.dashboard, q.panel, q.ref) for q in queries] == [("d.json", "top", "A"), ("d.json", "inner", "A")]


def test_variables_resolve_in_order_and_substitute() -> None:
    values = variable_values(MODEL, label_values, "pg-z")
    assert values == {"cluster": "pg-a", "ins": "pg-a-1", "mode": "sync"}
    assert [substitute(q.expr, values) for q in panel_queries("d.json", MODEL)] == [
        'up{cls="pg-a"}', 'rate(x{ins=~"pg-a-1",m="sync"}[1m])']


def test_an_unknown_or_empty_variable_is_named() -> None:
    with pytest.raises(KeyError, match=r"\$nope"):
        substitute('up{ins="$nope"}', {})
    empty = {"templating": {"list": [{"name": "ins", "type": "query", "query": "label_values(absent_metric, ins)"}]}}
    with pytest.raises(KeyError, match=r"\$ins"):
        variable_values(empty, lambda _s, _l: [], "pg-dev")
    # A cluster variable nobody answers for is the cluster itself.
    lone = {"templating": {"list": [{"name": "cluster", "type": "query", "query": "label_values(absent, cls)"}]}}
    assert variable_values(lone, lambda _s, _l: [], "pg-dev") == {"cluster": "pg-dev"}


def test_every_generated_dashboard_has_queries_and_every_variable_a_value() -> None:
    spec = make_spec({}, stack="dev")
    for name, text in dashboards(spec).items():
        model = json.loads(text)
        queries = panel_queries(name, model)
        assert queries, name
        values = variable_values(model, lambda _s, _l: ["x"], spec.cluster_name)
        assert all("$" not in substitute(q.expr, values) for q in queries)
