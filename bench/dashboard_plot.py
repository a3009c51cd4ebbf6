"""One overview dashboard panel's series, as Prometheus scraped them from the local cluster
around a killed primary, drawn as a small SVG (no plotting library: polylines).

A real Prometheus (``pgha.local.prometheus``, the generated scrape configuration) scrapes the
running cluster; the drill ``primary-node`` (its writer is the load) kills the primary's machine;
the panel's own query, as the dashboards module generates it, is asked with ``query_range``::

    pgha local up --addresses 10.242.0. --root /srv/pgha-prom --s3-port 21000
    python bench/dashboard_plot.py --addresses 10.242.0. --root /srv/pgha-prom --s3-port 21000 \\
        --port 21501 --panel "Commits per second" --svg docs/dashboard-commits.svg
"""

import argparse
import json
import sys
import time
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgha.spec import ClusterSpec

REPO = Path(__file__).resolve().parents[1]

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 300, 60, 120, 30, 40


def panel_expr(spec: "ClusterSpec", title: str) -> str:
    from pgha.observability.dashboards import dashboards
    from pgha.observability.panels import panel_queries

    for name, text in dashboards(spec).items():
        for query in panel_queries(name, json.loads(text)):
            if query.panel == title:
                return query.expr
    raise SystemExit(f"no panel titled {title!r}")


def _first(series: list[dict]) -> float | None:
    return min((float(t) for s in series for t, _ in s["values"]), default=None)


def svg(series: dict[str, list[tuple[float, float]]], start: float, end: float, marks: dict[str, float | None],
        title: str) -> str:
    """Each series a polyline over [start, end]; each mark a dashed vertical line."""
    top = max((v for points in series.values() for _, v in points), default=1.0) * 1.1 or 1.0
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - start) / (end - start) * w

    def y(v: float) -> float:
        return TOP + h - v / top * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="18" font-size="13">{escape(title)}</text>',
           f'<line x1="{LEFT}" y1="{TOP + h}" x2="{LEFT + w}" y2="{TOP + h}" stroke="black"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + h}" stroke="black"/>']
    for i in range(5):
        v = top * i / 4
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for s in range(0, int(end - start) + 1, 30):
        out.append(f'<text x="{x(start + s):.1f}" y="{TOP + h + 16}" text-anchor="middle">{s} s</text>')
    for label, at in marks.items():
        if at is None:
            continue
        out.append(f'<line x1="{x(at):.1f}" y1="{TOP}" x2="{x(at):.1f}" y2="{TOP + h}" stroke="gray" '
                   'stroke-dasharray="4,3"/>')
        out.append(f'<text x="{x(at) + 3:.1f}" y="{TOP + 12}" fill="gray">{escape(label)}</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{LEFT + w + 10}" y="{TOP + 14 + 16 * i}" fill="{colour}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    sys.path.insert(0, str(REPO))
    from pgha.local.cluster import LocalCluster
    from pgha.local.drills import run_drill, summary_line
    from pgha.local.prometheus import LocalPrometheus

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--addresses", required=True)
    p.add_argument("--s3-port", type=int, required=True)
    p.add_argument("--port", type=int, required=True, help="the Prometheus' port on 127.0.0.1")
    p.add_argument("--panel", default="Commits per second")
    p.add_argument("--svg", type=Path, required=True)
    p.add_argument("--settle", type=float, default=30.0, help="seconds of data before the fault and after the drill")
    args = p.parse_args()
    cluster = LocalCluster(project_dir=REPO, root=args.root, address_prefix=args.addresses,
                           s3_http_port=args.s3_port, log=lambda _: None)
    expr = panel_expr(cluster.spec, args.panel)
    prom = LocalPrometheus(cluster, port=args.port)
    prom.start()
    try:
        time.sleep(60)  # rate()'s 1m window fills first: a series younger than its window reads low
        start = time.time()
        result = run_drill(cluster, "primary-node", log=print, settle=args.settle)
        print(summary_line(result))
        time.sleep(args.settle)
        end = time.time()
        data = prom.query_range(expr, start, end, 2)
        c, old = cluster.spec.cluster_name, result["old_primary"]
        # The marks as Prometheus saw them: the old primary's last answer, the new timeline's first.
        marks = {f"{old} gone": _first(prom.query_range(f'up{{cls="{c}",ins="{old}",job="pgsql"}} == 0',
                                                         start, end, 1)),
                 "new timeline": _first(prom.query_range(
                     f'max(patroni_postgres_timeline{{cls="{c}"}}) > min_over_time(max(patroni_postgres_timeline'
                     f'{{cls="{c}"}})[10m:])', start, end, 1))}
    finally:
        prom.stop()
    series = {s["metric"].get("ins", "?"): [(float(t), float(v)) for t, v in s["values"]] for s in data}
    title = f"{args.panel}: {expr}"[:110]
    args.svg.write_text(svg(series, start, end, marks, title))
    print(f"wrote {args.svg}: {sum(len(v) for v in series.values())} points, {len(series)} series")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
