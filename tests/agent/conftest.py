"""Fixtures of the agent's tests. Tests that need root or real daemons get the `daemons`
marker here (by the fixtures they use), so `-m "not daemons"` runs as any user, daemon-free."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from .agent_helpers import mkbase

# Fixtures that mean root (chown to postgres/etcd, daemons running as postgres).
DAEMON_FIXTURES = {"_root", "stack", "bootstrapped", "exporter_proc", "etcd_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DAEMON_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.daemons)


@pytest.fixture
def _root() -> None:
    # chown and daemons run as postgres: these tests need root (CI runs as root).
    assert os.geteuid() == 0, "needs root (chown, daemons as postgres)"


@pytest.fixture
def base(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A world-readable scratch directory under /tmp (postgres must reach it; pytest's
    tmp_path is private to root), removed afterwards."""
    path = mkbase(f"pgha-agent-{request.node.name[:40]}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for moto's in-process AWS (boto3 refuses to sign without some)."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def mocked_aws(fake_aws: None) -> Iterator[None]:
    """moto's in-process AWS for the whole test."""
    from moto import mock_aws

    with mock_aws():
        yield
