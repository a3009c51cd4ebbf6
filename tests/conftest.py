"""Shared fixtures: the loopback cluster the integration tests run against."""

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def wipe_test_root(root: Path, **cluster_args) -> None:
    """Start a test cluster from nothing: the machine may hold a previous run's root and, if
    that run was cut off, its processes. moto keeps S3 in memory, so old data directories would
    not match the new bucket. First an orderly `down` through the old pid files, then any
    process still naming a path under the root, a member address or the S3 port (the
    exporters and moto name no path). A `pgha local up` cluster on the same addresses goes too:
    the two could not run side by side anyway."""
    from pgha.local.cluster import LocalCluster

    if (root / "pki" / "pki.json").exists():
        with contextlib.suppress(Exception):
            LocalCluster(project_dir=REPO, root=root, **cluster_args).down(log=lambda _: None)
    marks = [str(root).rstrip("/") + "/"]
    prefix = cluster_args.get("address_prefix", "127.0.1.")
    marks += [f"{prefix}{index}:" for index in range(1, 7)]
    marks += [f"-p {cluster_args[key]}" for key in ("s3_http_port",) if key in cluster_args]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
    # Killed processes may still be writing for a moment.
    for _ in range(20):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            break
        time.sleep(0.25)


@pytest.fixture(scope="session")
def local_cluster():
    """The dev stack's cluster on 127.0.1.1-3, up for the whole session, stopped afterwards.

    PGHA_TEST_ROOT chooses where its files live (default /srv/pgha-test, apart from a
    cluster a developer runs with `pgha local up`); PGHA_TEST_ADDRESSES the address prefix
    (default 127.0.1.: stop a `pgha local up` cluster first, or pick e.g. 127.0.5.) and
    PGHA_TEST_S3_PORT the moto port (TLS on the next one).
    """
    from pgha.local.cluster import LocalCluster

    s3_port = int(os.environ.get("PGHA_TEST_S3_PORT", "19000"))
    root = Path(os.environ.get("PGHA_TEST_ROOT", "/srv/pgha-test"))
    args = {"stack": "dev", "s3_http_port": s3_port, "s3_tls_port": s3_port + 1,
            "address_prefix": os.environ.get("PGHA_TEST_ADDRESSES", "127.0.1.")}
    wipe_test_root(root, **args)
    cluster = LocalCluster(project_dir=REPO, root=root, **args)
    cluster.up(timeout=240, log=lambda line: print(line, file=sys.stderr))
    yield cluster
    cluster.down(log=lambda line: print(line, file=sys.stderr))


@pytest.fixture(scope="session")
def rehearsal():
    """The dev stack booted as machines of the Debian 13 node image (pgha.local.rehearsal), from
    nothing, for the whole session; destroyed afterwards (machines, volumes, keys).

    PGHA_TEST_REHEARSAL_ROOT chooses its files (default /srv/pgha-test-rehearsal),
    PGHA_TEST_REHEARSAL_ADDRESSES its /24 (default 10.214.0.), PGHA_TEST_REHEARSAL_S3_PORT moto's
    port (TLS on the next one)."""
    from pgha.local.rehearsal import Rehearsal

    args = {"root": Path(os.environ.get("PGHA_TEST_REHEARSAL_ROOT", "/srv/pgha-test-rehearsal")),
            "address_prefix": os.environ.get("PGHA_TEST_REHEARSAL_ADDRESSES", "10.214.0."),
            "s3_http_port": int(os.environ.get("PGHA_TEST_REHEARSAL_S3_PORT", "19400")), "stack": "dev"}
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    Rehearsal(project_dir=REPO, log=log, **args).destroy(log=log)
    cluster = Rehearsal(project_dir=REPO, log=log, **args)
    cluster.up(timeout=300, log=log)
    yield cluster
    cluster.destroy(log=log)
