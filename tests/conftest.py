"""Shared fixtures: the loopback cluster the integration tests run against."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def local_cluster():
    """The dev stack's cluster on 127.0.1.1-3, up for the whole session, stopped afterwards.

    PGHA_TEST_ROOT chooses where its files live (default /srv/pgha-test, apart from a
    cluster a developer runs with `pgha local up`, which uses the same addresses: stop
    that one first).
    """
    from pgha.local.cluster import LocalCluster

    cluster = LocalCluster(project_dir=REPO, stack="dev", root=Path(os.environ.get("PGHA_TEST_ROOT", "/srv/pgha-test")),
                           s3_http_port=19000, s3_tls_port=19443)
    cluster.up(timeout=240, log=lambda line: print(line, file=sys.stderr))
    yield cluster
    cluster.down(log=lambda line: print(line, file=sys.stderr))
