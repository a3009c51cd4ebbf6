"""Every query of a Grafana dashboard model, and Grafana's variables in it substituted as Grafana
would before sending it to Prometheus: what a test or a plot runs against a real Prometheus.

Walks every panel, rows' nested panels included, so it holds for any dashboard
``pgha.observability.dashboards`` produces, not a fixed list.
"""

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

# Grafana's built-in interval variables, at values that suit a Prometheus scraping every few seconds.
BUILTINS: dict[str, str] = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__interval_ms": "15000",
                            "__range_s": "3600", "__range_ms": "3600000"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$", re.S)


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def panel_queries(name: str, model: Mapping[str, Any]) -> list[PanelQuery]:
    """Every Prometheus target expression of every panel of the dashboard ``model``."""
    return [PanelQuery(name, str(panel.get("title", "")), str(t.get("refId", "")), t["expr"])
            for panel in _panels(list(model.get("panels") or [])) for t in panel.get("targets") or []
            if t.get("expr")]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]`` replaced; an unknown
    variable raises KeyError naming it (a query Grafana could not send either)."""
    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        merged = {**BUILTINS, **values}
        if name not in merged:
            raise KeyError(f"dashboard variable ${name} has no value")
        return merged[name]
    return _VAR.sub(one, expr)


def variable_values(model: Mapping[str, Any], label_values: Callable[[str | None, str], list[str]],
                    cluster: str) -> dict[str, str]:
    """One value per templating variable, in order (a later variable's query may use an earlier
    one): a ``label_values(...)`` query's first answer from ``label_values(selector, label)``
    (``selector`` None: every series), else the variable's current value or first option. A
    variable named ``cluster`` or ``cls`` is the cluster itself when nothing else gives a value."""
    values: dict[str, str] = {}
    for var in (model.get("templating") or {}).get("list") or []:
        name, kind = var.get("name"), var.get("type")
        if not name or kind in ("datasource", "adhoc"):
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query or "") if kind == "query" else None
        found: list[str] = []
        if match:
            selector = substitute(match.group(1), values) if match.group(1) else None
            found = sorted(label_values(selector, match.group(2)))
        else:
            current = (var.get("current") or {}).get("value")
            current = current[0] if isinstance(current, list) and current else current
            options = [o.get("value") for o in var.get("options") or [] if o.get("value")]
            found = [v for v in [current, *options, *(str(query or "").split(",") if kind == "custom" else [])]
                     if isinstance(v, str) and v and v != "$__all"]
        if not found and name in ("cluster", "cls"):
            found = [cluster]
        if not found:
            raise KeyError(f"dashboard variable ${name} ({kind}, query {query!r}) has no value")
        values[name] = found[0]
    return values
