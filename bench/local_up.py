"""Time from `pgha local up` to a healthy cluster (leader, streaming replicas, synchronous
standby, every service port open) on this machine, in three situations:

  cold   nothing on disk but the nodes' Python environment (first-boot of every node)
  warm   the cluster was stopped with `pgha local down`; data, etcd and certificates kept
  member one member's units were killed; `up` starts only what is missing

    venv/bin/python bench/local_up.py [--runs 3] [--addresses 127.0.1.] [--root /srv/pgha-bench]
"""

import argparse
import shutil
import signal
import statistics
import time
from pathlib import Path

from pgha.local.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]


def timed(action) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--addresses", default="127.0.1.")
    parser.add_argument("--root", type=Path, default=Path("/srv/pgha-bench"))
    parser.add_argument("--s3-port", type=int, default=39000)
    args = parser.parse_args()

    def cluster() -> LocalCluster:
        return LocalCluster(project_dir=REPO, stack="dev", root=args.root, address_prefix=args.addresses,
                            s3_http_port=args.s3_port, s3_tls_port=args.s3_port + 1)

    quiet = lambda *_: None  # noqa: E731
    results: dict[str, list[float]] = {"cold": [], "warm": [], "member": []}
    # The nodes' venv is built once (pip install); every "cold" run keeps it and nothing else.
    cluster().up(log=quiet)
    cluster().down(log=quiet)
    for run in range(args.runs):
        for entry in args.root.iterdir():
            if entry.name != "venv":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        c = cluster()
        results["cold"].append(timed(lambda: c.up(log=quiet)))
        c.down(log=quiet)
        c = cluster()
        results["warm"].append(timed(lambda: c.up(log=quiet)))
        victim = c.nodes[-1]
        for unit in reversed(victim.units):
            if victim.supervisor.is_active(unit) and unit != "pgha-prepare.service":
                victim.supervisor.kill(unit, signal.SIGKILL)
        if c.postmaster_pid(victim):
            c.signal_postgres(victim, signal.SIGKILL)
        time.sleep(1)
        results["member"].append(timed(lambda: c.up(log=quiet)))
        c.down(log=quiet)
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in results.items()), flush=True)
    print(f"\n{'situation':<8} {'median':>8} {'min':>8} {'max':>8}   (s, {args.runs} runs)")
    for name, values in results.items():
        print(f"{name:<8} {statistics.median(values):>8.1f} {min(values):>8.1f} {max(values):>8.1f}")


if __name__ == "__main__":
    main()
