"""dcs-sync: Patroni's DCS settings brought to the node's spec, once per spec."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pgha.agent import dcs_sync, errors


def test_dcs_changes_patches_only_what_differs():
    current = {"ttl": 30, "loop_wait": "10", "synchronous_mode": False, "failsafe_mode": True,
               "check_timeline": True,  # an operator's own key: left alone
               "postgresql": {"use_slots": True, "parameters": {"max_connections": "100", "wal_log_hints": "on"}}}
    desired = {"ttl": 30, "loop_wait": 10, "synchronous_mode": True, "synchronous_mode_strict": True,
               "failsafe_mode": "on",
               "postgresql": {"use_slots": True, "parameters": {"max_connections": 200, "wal_log_hints": True}}}
    assert dcs_sync.dcs_changes(current, desired) == {
        "synchronous_mode": True, "synchronous_mode_strict": True,
        "postgresql": {"parameters": {"max_connections": 200}}}
    assert dcs_sync.dcs_changes(current, {"ttl": 30, "postgresql": {"use_slots": True}}) == {}


def test_sync_candidate_needs_a_streaming_replica_that_may_be_synchronous():
    leader = {"name": "a", "role": "leader", "state": "running"}
    restoring = {"name": "b", "role": "replica", "state": "creating replica"}
    nosync = {"name": "c", "role": "replica", "state": "streaming", "tags": {"nosync": True}}
    streaming = {"name": "d", "role": "replica", "state": "streaming"}
    assert not dcs_sync.sync_candidate_ready({"members": [leader, restoring, nosync]})
    assert dcs_sync.sync_candidate_ready({"members": [leader, restoring, streaming]})


def dcs_node(tmp_path: Path, patroni_yml: str) -> tuple[dict, Path, Path]:
    """A node whose patroni.yml says ``patroni_yml``: (node facts, its etc, its data directory)."""
    etc, data = tmp_path / "etc", tmp_path / "data"
    (data / "pg").mkdir(parents=True)
    etc.mkdir()
    (etc / "patroni.yml").write_text(patroni_yml)
    return {"ip": "127.0.0.1", "ports": {"patroni": 1}, "paths": {"etc": str(etc), "data": str(data)}}, etc, data


def test_dcs_sync_runs_once_per_spec(tmp_path, monkeypatch):
    node, etc, data = dcs_node(tmp_path, "bootstrap:\n  dcs:\n    ttl: 20\n    synchronous_mode: true\n")
    config = {"ttl": 30, "synchronous_mode": False}
    cluster = {"members": [{"name": "a", "role": "leader", "state": "running"},
                           {"name": "b", "role": "replica", "state": "streaming"}]}
    patches = []
    monkeypatch.setattr(dcs_sync, "patroni_get", lambda node, path: cluster if path == "/cluster" else config)
    monkeypatch.setattr(dcs_sync, "patroni_patch_config", lambda node, body: patches.append(body) or {})
    args = types.SimpleNamespace(timeout=5.0, force=False)
    assert dcs_sync.cmd_dcs_sync(node, args) == 0
    assert patches == [{"ttl": 20, "synchronous_mode": True}]
    assert dcs_sync.cmd_dcs_sync(node, args) == 0  # same spec: not applied again, whatever the DCS says
    assert len(patches) == 1
    (etc / "patroni.yml").write_text("bootstrap:\n  dcs:\n    ttl: 25\n")
    assert dcs_sync.cmd_dcs_sync(node, args) == 0  # a new spec (a replaced node) applies
    assert patches[-1] == {"ttl": 25}


def test_a_dcs_sync_started_while_another_runs_applies_the_newer_spec_after_it(tmp_path, monkeypatch):
    # CI, 2026-12-01: a change reverted while the previous change's dcs-sync still ran "left it
    # to that one", which held the older patroni.yml's settings: the revert never reached the DCS.
    import fcntl
    import threading
    import time

    node, etc, data = dcs_node(tmp_path, "bootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        work_mem: 12MB\n")
    config: dict = {"postgresql": {"parameters": {"work_mem": "12MB"}}}
    cluster = {"members": [{"name": "a", "role": "leader", "state": "running"}]}
    patches: list[dict] = []

    def patch(node: dict, body: dict) -> dict:
        patches.append(body)
        config["postgresql"]["parameters"].update(body["postgresql"]["parameters"])
        return config

    monkeypatch.setattr(dcs_sync, "patroni_get", lambda node, path: cluster if path == "/cluster" else config)
    monkeypatch.setattr(dcs_sync, "patroni_patch_config", patch)
    monkeypatch.setattr(dcs_sync, "LOCK_POLL", 0.02)
    stamp = data / "pg" / "dcs-applied.sha256"
    running = open(f"{stamp}.lock", "a")  # the earlier dcs-sync, still at work
    fcntl.flock(running, fcntl.LOCK_EX)
    done: list[int] = []
    later = threading.Thread(target=lambda: done.append(
        dcs_sync.cmd_dcs_sync(node, types.SimpleNamespace(timeout=10.0, force=False))))
    later.start()
    time.sleep(0.3)
    assert not done and patches == []  # it waits its turn
    (etc / "patroni.yml").write_text("bootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        work_mem: 4MB\n")
    fcntl.flock(running, fcntl.LOCK_UN)
    running.close()
    later.join(timeout=10)
    assert done == [0]
    assert patches == [{"postgresql": {"parameters": {"work_mem": "4MB"}}}]  # the spec as it is now
    assert stamp.read_text().strip() == dcs_sync.dcs_digest(dcs_sync.desired_dcs(node))


def test_dcs_sync_waits_for_a_replica_before_strict_synchronous_mode(tmp_path, monkeypatch):
    node, etc, data = dcs_node(tmp_path, "bootstrap:\n  dcs:\n    synchronous_mode: true\n")
    cluster = {"members": [{"name": "a", "role": "leader", "state": "running"}]}
    monkeypatch.setattr(dcs_sync, "patroni_get", lambda node, path: cluster if path == "/cluster" else {})
    monkeypatch.setattr(dcs_sync, "patroni_patch_config", lambda node, body: pytest.fail("patched with no replica"))
    monkeypatch.setattr(dcs_sync, "DCS_SYNC_POLL", 0.05)
    with pytest.raises(errors.AgentError, match="streaming replica"):
        dcs_sync.cmd_dcs_sync(node, types.SimpleNamespace(timeout=0.3, force=False))
    assert not (data / "pg" / "dcs-applied.sha256").exists()


# --- etcd leadership -----------------------------------------------------------------------

