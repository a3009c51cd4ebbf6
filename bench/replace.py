"""Replacement bench: what `pulumi up`'s replacements cost a client, rehearsed on a running local
cluster with a writer committing through 5433 (and a reader on 5434) the whole time.

Each scenario (pgha.local.drills): the primary's instance replaced; the synchronous standby's;
the standby's on a blank volume (metal, a lost volume: it rebuilds from the repository or a
peer); every member in turn (a roll: replicas first, the leader last). A replacement is a
graceful stop (the leader hands over first), a new instance with a new id, and the wait for
the member's own readiness signal (its SSM status parameter, in moto), exactly as the stack
waits. Usage::

    pgha local up --addresses 10.223.0. --root /srv/pgha-bench --s3-port 29000
    venv/bin/python bench/replace.py --addresses 10.223.0. --root /srv/pgha-bench --s3-port 29000 --trials 3

Prints, per scenario, the median and max of the longest write pause, RTO (the first
acknowledged write after the first stop), client errors, lost acknowledged rows, and how
long a replacement (or the roll) took, as a Markdown table.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIOS = ["replace-primary", "replace-replica", "replace-replica-wiped", "roll"]


def med(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def top(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return round(max(values), 2) if values else None


def replacement_seconds(result: dict[str, Any]) -> float | None:
    """The whole replacement (or roll): the drill's notes say 'ready after N s' per member."""
    found = [float(x) for note in result["notes"] for x in re.findall(r"ready after ([0-9.]+)s", note)]
    return round(sum(found), 1) if found else None


def summarise(scenario: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scenario": scenario, "trials": len(results),
        "gap_median": med([r["max_write_gap_s"] for r in results]),
        "gap_max": top([r["max_write_gap_s"] for r in results]),
        "rto_median": med([r["rto_s"] for r in results]),
        "write_errors": sum(r["write_errors"] for r in results),
        "read_errors": sum(r["read_errors"] for r in results),
        "rpo_rows": sum(r["rpo_rows"] for r in results), "acked": sum(r["writes_acked"] for r in results),
        "split_brain": any(r["split_brain"] for r in results),
        "rejoined": sum(1 for r in results if r["rejoined"]),
        "took_median": med([replacement_seconds(r) for r in results]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | trials | write pause median | write pause max | RTO median | write errors | "
             "read errors | RPO rows (of acked) | split brain | rejoined | replacement took (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['trials']} | {r['gap_median']} s | {r['gap_max']} s | "
                     f"{r['rto_median']} s | {r['write_errors']} | {r['read_errors']} | {r['rpo_rows']} ({r['acked']}) | "
                     f"{'YES' if r['split_brain'] else 'no'} | {r['rejoined']}/{r['trials']} | {r['took_median']} s |")
    return "\n".join(lines)


def set_pooler_pause(cluster: Any, pause: bool) -> None:
    """Every running member's handover pauses its PgBouncer, or not (the flag lives in /run: a
    new instance boots without it)."""
    from pgha.agent.handover import NO_POOLER_PAUSE_FLAG
    from pgha.render.context import EC2_LAYOUT

    for node in cluster.nodes:
        if node.machine.running():
            flag = f"{EC2_LAYOUT.run}/{NO_POOLER_PAUSE_FLAG}"
            node.machine.run(["rm", "-f", flag] if pause else ["touch", flag], timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--root", default="/srv/pgha")
    parser.add_argument("--addresses", default="10.42.0.")
    parser.add_argument("--s3-port", type=int, default=19000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", default=DEFAULT_SCENARIOS)
    parser.add_argument("--json", type=Path, help="write every trial's result here")
    parser.add_argument("--no-pooler-pause", action="store_true",
                        help="the stopping primary hands over without pausing its PgBouncer (the comparison)")
    args = parser.parse_args(argv)

    from pgha.local.cluster import LocalCluster
    from pgha.local.drills import run_drill

    cluster = LocalCluster(project_dir=REPO, stack=args.stack, root=Path(args.root), address_prefix=args.addresses,
                           s3_http_port=args.s3_port)
    cluster.up(log=lambda line: print(line, file=sys.stderr))
    every: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for scenario in args.scenarios:
        results = []
        for trial in range(1, args.trials + 1):
            set_pooler_pause(cluster, not args.no_pooler_pause)
            result = run_drill(cluster, scenario, log=lambda line: print(line, file=sys.stderr))
            print(f"{scenario} #{trial}: pause {result['max_write_gap_s']} s, errors {result['write_errors']}, "
                  f"lost {result['rpo_rows']}, took {replacement_seconds(result)} s", file=sys.stderr)
            results.append(result)
        every[scenario] = results
        rows.append(summarise(scenario, results))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(every, indent=1, default=str))
    return 0 if all(r["rpo_rows"] == 0 and not r["split_brain"] for r in rows) else 4


if __name__ == "__main__":
    sys.exit(main())
