"""Shared fixtures: the loopback cluster the integration tests run against."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def wipe_test_root(root: Path, **cluster_args) -> None:
    """Start a test cluster from nothing: the machine may hold a previous run's root and, if
    that run was cut off, its machines, helpers, loop devices and mounts. moto keeps its state in
    memory, so old volumes would not match a new bucket. First an orderly destroy through the
    old pid files, then anything still naming a path under the root."""
    from pgha.local import procfs
    from pgha.local.cluster import LocalCluster

    if (root / "pki" / "pki.json").exists():
        with contextlib.suppress(Exception):
            LocalCluster(project_dir=REPO, root=root, **cluster_args).destroy(log=lambda _: None)
    mark = str(root).rstrip("/") + "/"
    for pid in procfs.mentioning(mark, exclude=os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    mounts = [mount_point for _, mount_point, _ in procfs.mounts() if mount_point.startswith(mark)]
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    loops = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"], capture_output=True, text=True).stdout
    for line in loops.splitlines():
        name, _, back = line.partition(" ")
        if back.strip().startswith(mark):
            subprocess.run(["losetup", "-d", name], check=False)
    for _ in range(20):
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        if not root.exists():
            break
        time.sleep(0.25)


def cluster_args(name: str = "", prefix_default: str = "10.213.0.", port_offset: int = 0) -> dict:
    """Where a test cluster lives: PGHA_TEST_ROOT (default /srv/pgha-test) plus ``name``, its /24
    PGHA_TEST_ADDRESSES (default 10.213.0.) or the one given, moto on PGHA_TEST_S3_PORT (default
    19000) plus ``port_offset`` (TLS on the next port)."""
    root = Path(os.environ.get("PGHA_TEST_ROOT", "/srv/pgha-test") + (f"-{name}" if name else ""))
    prefix = os.environ.get(f"PGHA_TEST_{name.upper()}_ADDRESSES" if name else "PGHA_TEST_ADDRESSES", prefix_default)
    return {"root": root, "address_prefix": prefix,
            "s3_http_port": int(os.environ.get("PGHA_TEST_S3_PORT", "19000")) + port_offset}


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


@pytest.fixture(scope="session")
def local_cluster():
    """The dev stack booted as machines of the Debian 13 node image on 10.213.0.1-3, from
    nothing, up for the whole session, destroyed afterwards (machines, volumes, keys).
    Elsewhere: PGHA_TEST_ROOT, PGHA_TEST_ADDRESSES, PGHA_TEST_S3_PORT (see cluster_args)."""
    from pgha.local.cluster import LocalCluster

    args = cluster_args()
    wipe_test_root(args["root"], address_prefix=args["address_prefix"], s3_http_port=args["s3_http_port"])
    cluster = LocalCluster(project_dir=REPO, stack="dev", log=log_to_stderr, **args)
    cluster.up(timeout=300, log=log_to_stderr)
    yield cluster
    if os.environ.get("PGHA_TEST_KEEP"):  # left running to look into; the next session wipes it
        return
    cluster.destroy(log=log_to_stderr)




def wait_for_archived(cluster, segment: str, bucket: str, prefix: str = "", timeout: float | None = None) -> list[str]:
    """Wait until a key naming ``segment`` is in ``bucket`` (at most backups.ARCHIVE_WAIT: the
    archiver retries a failed push after 60 s); fail with the primary's archiver state and
    pgBackRest's own words if it is not there."""
    from pgha.local import backups

    timeout = backups.ARCHIVE_WAIT if timeout is None else timeout

    def keys() -> list[str]:
        pages = cluster.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    deadline = time.monotonic() + timeout
    while True:
        found = keys()
        if any(segment in key for key in found):
            return found
        if time.monotonic() > deadline:
            detail = ""
            with contextlib.suppress(Exception):
                detail += f"\npg_stat_archiver: {backups.archiver(cluster)}"
                node = backups.leader(cluster, running=False)
                log = Path(node.layout.log) / "pgbackrest" / f"{cluster.spec.cluster_name}-archive-push-async.log"
                detail += "\n" + "\n".join(log.read_text().splitlines()[-15:])
            raise AssertionError(f"{segment} did not reach s3://{bucket}/{prefix} within {timeout:.0f} s{detail}")
        time.sleep(1)
