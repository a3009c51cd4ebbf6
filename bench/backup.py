"""Backup benchmark on the local cluster: pgBackRest vs pg_basebackup of the same database.

    python bench/backup.py --root /srv/pgha-h5 --addresses 10.222.0. --s3-port 29100 [--scale 70]

Loads pgbench (scale 70 is about 1.05 GB), then measures in one run: a full pgBackRest backup
(from the sync standby, lz4, to moto S3 over TLS), its repository size, a pgBackRest restore of
it into a scratch directory, pg_basebackup of the same cluster to local disk, and a whole-cluster
PITR (`pgha restore --to TIME`). The tools run inside the primary's machine (the node image's
PostgreSQL 17 and pgBackRest 2.55), the scratch directory on its data volume. Prints a Markdown table.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from pgha.local import backups
from pgha.local.cluster import LocalCluster
from pgha.render import EC2_LAYOUT

PG_BIN = "/usr/lib/postgresql/17/bin"
# On the member's data volume, beside its data directory.
SCRATCH = EC2_LAYOUT.data + "/bench-scratch"



def scalar(conn: psycopg.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]

def timed(fn):
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/srv/pgha-h5")
    ap.add_argument("--addresses", default="10.222.0.")
    ap.add_argument("--s3-port", type=int, default=29100)
    ap.add_argument("--scale", type=int, default=70)
    args = ap.parse_args()
    cluster = LocalCluster(project_dir=Path(__file__).resolve().parents[1], root=Path(args.root),
                           address_prefix=args.addresses, s3_http_port=args.s3_port)
    cluster.up(log=lambda _: None)
    lead = backups.leader(cluster, running=False)

    def on_leader(*argv: str) -> float:
        took, proc = timed(lambda: cluster.run_on(lead, list(argv), user="postgres", timeout=3600))
        assert proc.returncode == 0, proc.stderr
        return took

    local = ["-h", EC2_LAYOUT.run + "/postgres", "-U", "postgres"]
    dsn = backups.superuser_dsn(cluster, lead)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname='bench'").fetchone():
            conn.execute("CREATE DATABASE bench")
    bench_dsn = dsn.replace("dbname=postgres", "dbname=bench")
    load_s = on_leader(f"{PG_BIN}/pgbench", *local, "-i", "-q", "-s", str(args.scale), "bench")
    with psycopg.connect(dsn, autocommit=True) as conn:
        db_bytes = scalar(conn, "SELECT sum(pg_database_size(datname)) FROM pg_database")
    full_s, made = timed(lambda: backups.run_backup(cluster, "full", log=lambda _: None))
    repo_bytes = made["info"]["repository"]["delta"]

    on_leader("rm", "-rf", SCRATCH)
    on_leader("mkdir", "-p", SCRATCH)
    restore_s, proc = timed(lambda: backups.pgbackrest(
        cluster, lead, f"--stanza={cluster.spec.cluster_name}", f"--pg1-path={SCRATCH}/data", f"--set={made['label']}",
        "restore", timeout=3600))
    assert proc.returncode == 0, proc.stderr
    on_leader("rm", "-rf", f"{SCRATCH}/data")
    base_s = on_leader(f"{PG_BIN}/pg_basebackup", *local, "-D", f"{SCRATCH}/base", "-X", "stream", "-c", "fast")
    base_bytes = int(cluster.run_on(lead, ["du", "-sb", f"{SCRATCH}/base"]).stdout.split()[0])
    on_leader("rm", "-rf", SCRATCH)

    with psycopg.connect(bench_dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgbench_branches SET bbalance = bbalance + 1")
        target = scalar(conn, "SELECT clock_timestamp()")
        time.sleep(1)
        conn.execute("UPDATE pgbench_branches SET bbalance = bbalance + 1000")
    pitr_s, _ = timed(lambda: backups.restore(cluster, target.astimezone(datetime.timezone.utc).isoformat(),
                                              log=lambda _: None))

    gib = 1024 ** 3
    rows = [
        ("database size (all databases)", f"{db_bytes / gib:.2f} GiB", ""),
        ("pgbench -i load", f"{load_s:.0f} s", ""),
        ("full backup, pgBackRest (standby, lz4, S3/TLS)", f"{full_s:.1f} s", f"{full_s / base_s:.2f}x pg_basebackup"),
        ("pg_basebackup (plain, local disk, -X stream)", f"{base_s:.1f} s", "1.00x"),
        ("repository size of the full backup", f"{repo_bytes / gib:.2f} GiB",
         f"{repo_bytes / base_bytes:.2f}x pg_basebackup's {base_bytes / gib:.2f} GiB"),
        ("restore, pgBackRest (scratch dir)", f"{restore_s:.1f} s", ""),
        ("PITR, whole cluster (pgha restore --to TIME)", f"{pitr_s:.1f} s", "stop, restore, promote, new full, 2 replicas"),
    ]
    print(f"\n{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, scale {args.scale}, "
          f"PostgreSQL {cluster.image.versions['postgresql-17']}, pgBackRest {cluster.image.versions['pgbackrest']}\n")
    print("| measure | value | vs |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
