"""The local cluster's costs on this machine: the node image build, and the time from
`pgha local up` to a healthy cluster (leader, streaming replicas, synchronous standby, every
service port open) in three situations, and the memory the three members take:

  image   `pgha image build --force` into a fresh cache (debootstrap + the node packages)
  cold    the image cached, nothing else: three new instances boot from their user-data
  warm    after `pgha local down`: the same instances boot again on their volumes
  member  one member's machine was killed (a lost instance); `up` boots only it

    venv/bin/python bench/local_up.py [--runs 3] [--image-runs 1] [--addresses 10.221.0.] [--root /srv/pgha-bench]

Memory is the proportional set size (PSS: shared pages split between their users) of every
process of the three machines, read from /proc/<pid>/smaps_rollup once the cluster is healthy.
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pgha.local import image
from pgha.local.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]


def timed(action) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began


def pss_mib(cluster: LocalCluster) -> float:
    total = 0
    for node in cluster.nodes:
        for pid in node.machine.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                continue
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image-runs", type=int, default=1, help="fresh image builds to time (0: none)")
    parser.add_argument("--addresses", default="10.221.0.")
    parser.add_argument("--root", type=Path, default=Path("/srv/pgha-bench"))
    parser.add_argument("--s3-port", type=int, default=39000)
    args = parser.parse_args()
    quiet = lambda *_: None  # noqa: E731
    results: dict[str, list[float]] = {"image": [], "cold": [], "warm": [], "member": []}
    for _ in range(args.image_runs):
        cache = Path(tempfile.mkdtemp(prefix="pgha-image-bench-", dir="/var/tmp"))
        try:
            results["image"].append(timed(lambda: image.build(cache, log=quiet, force=True)))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"image build: {results['image'][-1]:.1f}s", flush=True)

    def cluster() -> LocalCluster:
        return LocalCluster(project_dir=REPO, stack="dev", root=args.root, address_prefix=args.addresses,
                            s3_http_port=args.s3_port, log=quiet)

    memory = []
    cluster().destroy(log=quiet)
    for run in range(args.runs):
        c = cluster()
        results["cold"].append(timed(lambda: c.up(log=quiet)))
        memory.append(pss_mib(c))
        c.down(log=quiet)
        c = cluster()
        results["warm"].append(timed(lambda: c.up(log=quiet)))
        c.nodes[-1].machine.kill()
        results["member"].append(timed(lambda: c.up(log=quiet)))
        c.destroy(log=quiet)
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in results.items() if v)
              + f", memory {memory[-1]:.0f} MiB", flush=True)
    print(f"\n{'situation':<8} {'median':>8} {'min':>8} {'max':>8}   (s)")
    for name, values in results.items():
        if values:
            print(f"{name:<8} {statistics.median(values):>8.1f} {min(values):>8.1f} {max(values):>8.1f}"
                  f"   ({len(values)} runs)")
    print(f"memory of the three members (PSS) after a cold up: median {statistics.median(memory):.0f} MiB "
          f"(min {min(memory):.0f}, max {max(memory):.0f})")


if __name__ == "__main__":
    main()
