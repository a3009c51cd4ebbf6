"""Backup benchmark on the loopback cluster: pgBackRest vs pg_basebackup of the same database.

    python bench/backup.py --root /srv/pgha-h5 --addresses 127.0.3. --s3-port 29100 [--scale 70]

Loads pgbench (scale 70 is about 1.05 GB), then measures in one run: a full pgBackRest backup
(from the sync standby, lz4, to moto S3 over TLS), its repository size, a pgBackRest restore of
it into a scratch directory, pg_basebackup of the same cluster to local disk, and a whole-cluster
PITR (`pgha restore --to TIME`). Prints a Markdown table.
"""

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from pgha.local import backups
from pgha.local.cluster import LocalCluster, installed_postgres_major


def timed(fn):
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/srv/pgha-h5")
    ap.add_argument("--addresses", default="127.0.3.")
    ap.add_argument("--s3-port", type=int, default=29100)
    ap.add_argument("--scale", type=int, default=70)
    args = ap.parse_args()
    cluster = LocalCluster(project_dir=Path(__file__).resolve().parents[1], root=Path(args.root),
                           address_prefix=args.addresses, s3_http_port=args.s3_port, s3_tls_port=args.s3_port + 1)
    cluster.up(log=lambda _: None)
    pg_bin = f"/usr/lib/postgresql/{installed_postgres_major()}/bin"
    lead = backups.leader(cluster)
    dsn = backups.superuser_dsn(cluster, lead)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname='bench'").fetchone():
            conn.execute("CREATE DATABASE bench")
    bench_dsn = dsn.replace("dbname=postgres", "dbname=bench")
    load_s, _ = timed(lambda: subprocess.run([f"{pg_bin}/pgbench", "-i", "-q", "-s", str(args.scale), bench_dsn],
                                             check=True, capture_output=True))
    with psycopg.connect(dsn, autocommit=True) as conn:
        db_bytes = conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()[0]
    full_s, made = timed(lambda: backups.run_backup(cluster, "full", log=lambda _: None))
    repo_bytes = made["info"]["repository"]["delta"]

    scratch = Path(tempfile.mkdtemp(prefix="pgha-bench-", dir="/var/tmp"))
    os.chown(scratch, *(lambda p: (p.pw_uid, p.pw_gid))(__import__("pwd").getpwnam("postgres")))
    restore_s, proc = timed(lambda: backups.pgbackrest(
        cluster, lead, f"--stanza={cluster.spec.cluster_name}", f"--pg1-path={scratch}/data", f"--set={made['label']}",
        "restore", timeout=3600))
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(scratch / "data")
    # pg_hba admits replication connections for the replication user only (over TLS).
    import json
    secret = json.loads(cluster.secrets_file.read_text())
    repl_dsn = cluster.dsn(lead.ip, 5432, user="replicator", dbname="postgres").replace(
        f" passfile={cluster.passfile}", "")
    base_s, proc = timed(lambda: subprocess.run(
        [f"{pg_bin}/pg_basebackup", "-d", repl_dsn, "-D", str(scratch / "base"), "-X", "stream", "-c", "fast"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": secret["replication_password"]}))
    assert proc.returncode == 0, proc.stderr
    base_bytes = sum(f.stat().st_size for f in (scratch / "base").rglob("*") if f.is_file())
    shutil.rmtree(scratch)

    with psycopg.connect(bench_dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgbench_branches SET bbalance = bbalance + 1")
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
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
    print(f"\n{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, scale {args.scale}\n")
    print("| measure | value | vs |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
