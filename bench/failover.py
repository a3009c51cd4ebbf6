"""Failover bench: every drill N times with the rto presets fast and norm and with Patroni's own
defaults (ttl 30, loop_wait 10, retry_timeout 10) as the baseline, on one running loopback cluster.

Timings are switched with Patroni's authenticated REST ``PATCH /config`` (the DCS copy every
member follows within a loop), so one cluster serves all three; HAProxy's check timings stay
those the stack rendered (the dev stack: rto fast). Usage::

    pgha local up --addresses 10.223.0. --root /srv/pgha-h4 --s3-port 29000
    python bench/failover.py --addresses 10.223.0. --root /srv/pgha-h4 --s3-port 29000 \\
        --trials 5 --json bench/failover-results.json --plot docs/failover-timeline.png

The members are booted machines of the node image (a lost node is its machine killed). The
replication timeouts (wal_sender_timeout) are PostgreSQL parameters and stay the stack's in every set.

Prints median/max RTO, the longest write gap, RPO and preset/baseline ratios as a Markdown table.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Patroni timings per run: the rto presets' own (RTO_PLANS) plus Patroni's defaults.
BASELINE_TIMINGS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
DEFAULT_SCENARIOS = ["primary-node", "postgres-crash", "patroni-crash", "primary-hang", "pgbouncer-crash",
                     "haproxy-crash", "replica-node", "etcd-member", "switchover", "replicas", "partition"]


def med(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def top(values):
    values = [v for v in values if v is not None]
    return round(max(values), 2) if values else None


def table(rows):
    lines = ["| scenario | timings | trials | RTO median | RTO max | write gap median | write gap max | "
             "RPO rows (of acked) | split brain | rejoined | rejoin max | raft leader lost | "
             "RTO ratio vs baseline | gap ratio vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["scenario"]: r for r in rows if r["timings"] == "baseline"}
    for r in rows:
        b = base.get(r["scenario"])
        ratio = gap_ratio = "-"
        if b and r["timings"] != "baseline":
            if b["rto_median"] and r["rto_median"] is not None:
                ratio = f"{r['rto_median'] / b['rto_median']:.2f}"
            if b["gap_median"] and r["gap_median"] is not None:
                gap_ratio = f"{r['gap_median'] / b['gap_median']:.2f}"
        lines.append(f"| {r['scenario']} | {r['timings']} | {r['trials']} | {r['rto_median']} | {r['rto_max']} | "
                     f"{r['gap_median']} | {r['gap_max']} | {r['rpo']} ({r['acked']}) | "
                     f"{'YES' if r['split_brain'] else 'no'} | {r['rejoined']}/{r['trials']} | {r['rejoin_max']} | "
                     f"{r['raft_leader_lost']} | {ratio} | {gap_ratio} |")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result["timeline"]
    fault = tl["fault_at"]
    acked = [(a - fault) for s, a, e in tl["writes"] if a is not None]
    errors = [(s - fault) for s, a, e in tl["writes"] if e and a is None]
    errors += [t - fault for t, _ in tl["connect_errors"]]
    read_err = [(s - fault) for s, a, e in tl["reads"] if e and a is None]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    bins = [x * 0.5 for x in range(int(min(acked + errors + [-5]) * 2) - 1, int(max(acked + [0]) * 2) + 2)]
    ax.hist(acked, bins=bins, color="tab:green", label="acknowledged writes / 0.5 s")
    ax.hist(errors, bins=bins, color="tab:red", alpha=0.8, label="write/connect errors / 0.5 s")
    if read_err:
        ax.hist(read_err, bins=bins, color="tab:orange", alpha=0.6, label="read errors / 0.5 s")
    ax.axvline(0, color="black", linestyle="--", label="fault (kill -9 of the primary node)")
    if result.get("rto_s") is not None:
        ax.axvline(result["rto_s"], color="tab:blue", linestyle=":", label=f"first write acked, RTO {result['rto_s']}s")
    ax.set_xlabel("seconds from the fault")
    ax.set_ylabel("count")
    ax.set_title(f"{result['scenario']}: {result['old_primary']} -> {result['new_primary']} "
                 f"(ttl {result['config']['ttl']}, loop_wait {result['config']['loop_wait']})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    sys.path.insert(0, str(REPO))
    from pgha.local.cluster import LocalCluster
    from pgha.local.drills import patch_config, run_drill, summary_line
    from pgha.spec import RTO_PLANS

    timings: dict[str, dict[str, int]] = {}
    for name in ("fast", "norm"):
        plan = RTO_PLANS[name]
        timings[name] = {"ttl": plan.ttl, "loop_wait": plan.loop_wait, "retry_timeout": plan.retry_timeout}
    timings["baseline"] = BASELINE_TIMINGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    ap.add_argument("--timings", default=",".join(timings))
    ap.add_argument("--root", type=Path, default=Path("/srv/pgha-local"))
    ap.add_argument("--addresses", default="10.213.0.")
    ap.add_argument("--s3-port", type=int, default=9000)
    ap.add_argument("--json", type=Path, help="write every trial here")
    ap.add_argument("--plot", type=Path, help="PNG timeline of one primary-node trial (needs matplotlib)")
    args = ap.parse_args(argv)
    cluster = LocalCluster(project_dir=REPO, stack="dev", root=args.root, address_prefix=args.addresses,
                           s3_http_port=args.s3_port)
    scenarios = args.scenarios.split(",")
    rows, trials = [], []
    began = time.monotonic()
    for timing in args.timings.split(","):
        patch_config(cluster, timings[timing])
        time.sleep(timings[timing]["loop_wait"] + 1)  # every member picks the new timings up
        for scenario in scenarios:
            results = []
            for trial in range(args.trials):
                keep = args.plot is not None and scenario == "primary-node" and timing == "fast" and trial == 0
                r = run_drill(cluster, scenario, log=lambda line: print(line, file=sys.stderr), keep_timeline=keep)
                r.update(timings=timing, trial=trial + 1, loadavg=os.getloadavg())
                print(f"[{timing}] {summary_line(r)}", file=sys.stderr, flush=True)
                if keep:
                    plot(r, args.plot)
                    r.pop("timeline")
                results.append(r)
            trials += results
            rows.append({"scenario": scenario, "timings": timing, "trials": len(results),
                         "rto_median": med(r["rto_s"] for r in results), "rto_max": top(r["rto_s"] for r in results),
                         "gap_median": med(r["max_write_gap_s"] for r in results),
                         "gap_max": top(r["max_write_gap_s"] for r in results),
                         "rpo": sum(r["rpo_rows"] for r in results), "acked": sum(r["writes_acked"] for r in results),
                         "split_brain": any(r["split_brain"] for r in results),
                         "rejoined": sum(1 for r in results if r["rejoined"]),
                         "rejoin_max": top(r["rejoin_s"] for r in results),
                         # trials whose failed node was also etcd's raft leader
                         "raft_leader_lost": sum(1 for r in results if r["raft_leader_failed"])})
            if args.json:  # after every block, so an interrupted run keeps what it measured
                args.json.write_text(json.dumps({"rows": rows, "trials": trials}, indent=1, default=str))
    patch_config(cluster, timings["fast"])  # back to what the dev stack renders
    rows.sort(key=lambda r: (DEFAULT_SCENARIOS.index(r["scenario"]) if r["scenario"] in DEFAULT_SCENARIOS else 99,
                             r["timings"]))
    print(table(rows))
    print(f"\n{len(trials)} trials in {time.monotonic() - began:.0f}s; load average now {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "trials": trials}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
