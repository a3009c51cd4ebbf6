"""apply-config: which actions a changed configuration asks for, run once each, in order; a
failed run retried; units gained and lost; the leader's rolling restart plan."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pgha import contract
from pgha.agent import apply_config, fetch, handover
from pgha.agent.errors import AgentError

from .agent_helpers import make_node, write_json
from .test_fetch import KEY, boot, manifest, text_entry


class Systemd:
    """Records the commands apply-config runs; fails the ones named in ``failing``."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.failing = failing

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        bad = any(f in " ".join(argv) for f in self.failing)
        return subprocess.CompletedProcess(argv, 1 if bad else 0, "", "Job failed." if bad else "")


def test_actions_run_once_each_in_contract_order():
    entries = [{"on_change": ["reload:pgha-patroni.service", "dcs-sync"]},
               {"on_change": ["daemon-reload", "restart:pgha-timeline-guard.service"]},
               {"on_change": ["reload:pgha-patroni.service", "sysctl:/etc/sysctl.d/90-pgha.conf"]}]
    assert apply_config.plan_actions(entries) == [
        "daemon-reload", "sysctl:/etc/sysctl.d/90-pgha.conf", "reload:pgha-patroni.service",
        "restart:pgha-timeline-guard.service", "dcs-sync"]
    with pytest.raises(ValueError, match="unknown action 'reboot'"):
        apply_config.plan_actions([{"on_change": ["reboot"]}])
    with pytest.raises(ValueError):
        contract.action_rank("reload:")  # a reload of no unit


def node_entry(base: Path, **facts: Any) -> dict[str, Any]:
    node = make_node(base, **facts)
    return text_entry(base / "etc" / "node.json", json.dumps(node), on_change=("restart:pgha-timeline-guard.service",))


def test_unit_changes_start_what_is_gained_and_stop_what_is_lost(base):
    nj = str(base / "etc" / "node.json")
    old = manifest(node_entry(base, units=["a.service", "b.service"], timers=["t1.timer", "t2.timer"]))
    new = manifest(node_entry(base, units=["a.service", "c.service"], timers=["t1.timer"]))
    assert apply_config.unit_changes(old, new, nj) == (["c.service"], ["b.service", "t2.timer"])
    assert apply_config.unit_changes(None, new, nj) == ([], [])


@pytest.fixture
def member(base: Path) -> dict[str, Any]:
    write_json(base / "etc" / contract.BOOT_FILE, boot(base))
    return make_node(base)


def serve(m: dict[str, Any]) -> fetch.Getter:
    def get(bucket: str, key: str) -> bytes:
        assert (bucket, key) == ("nodes", KEY)
        return json.dumps(m).encode()
    return get


def test_a_changed_file_runs_its_actions_and_a_failed_run_is_retried(base, member):
    ini = base / "etc" / "pgbouncer.ini"
    v1 = manifest(node_entry(base), text_entry(ini, "pool_mode = transaction\n",
                                               on_change=("reload:pgha-pgbouncer.service",)))
    fetch.first_boot(boot(base), serve(v1))
    systemd = Systemd()
    assert apply_config.apply(member, get=serve(v1), run=systemd) is False and systemd.calls == []

    v2 = manifest(node_entry(base), text_entry(ini, "pool_mode = session\n",
                                               on_change=("reload:pgha-pgbouncer.service",)))
    failing = Systemd(failing=("pgha-pgbouncer",))
    with pytest.raises(AgentError, match="not applied .retried on the next run.: systemctl try-reload-or-restart "
                                         "pgha-pgbouncer.service: Job failed"):
        apply_config.apply(member, get=serve(v2), run=failing)
    assert ini.read_text() == "pool_mode = session\n"
    assert fetch.read_applied(str(base / "etc"))["version"] == v1["version"]
    # The next run does the reload again, though the file is already in place.
    systemd = Systemd()
    assert apply_config.apply(member, get=serve(v2), run=systemd) is True
    assert systemd.calls == [["systemctl", "try-reload-or-restart", "pgha-pgbouncer.service"]]
    assert fetch.read_applied(str(base / "etc"))["version"] == v2["version"]


def test_a_lost_timer_is_stopped_before_its_file_goes_and_a_gained_one_started(base, member):
    timer_a, timer_b = base / "units" / "pgha-backup-diff.timer", base / "units" / "pgha-backup-incr.timer"
    v1 = manifest(node_entry(base, timers=["pgha-backup-diff.timer"]), text_entry(timer_a, "[Timer]\n"))
    fetch.first_boot(boot(base), serve(v1))
    v2 = manifest(node_entry(base, timers=["pgha-backup-incr.timer"]),
                  text_entry(timer_b, "[Timer]\n", on_change=("daemon-reload", "restart:pgha-backup-incr.timer")))
    systemd = Systemd()
    apply_config.apply(member, get=serve(v2), run=systemd)
    assert not timer_a.exists() and timer_b.exists()
    assert systemd.calls == [
        ["systemctl", "disable", "--now", "pgha-backup-diff.timer"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "try-restart", "pgha-timeline-guard.service"],
        ["systemctl", "try-restart", "pgha-backup-incr.timer"],
        ["systemctl", "enable", "--now", "pgha-backup-incr.timer"],
    ]


def test_patroni_yml_changes_start_dcs_sync_with_the_new_facts(base, member):
    v1 = manifest(node_entry(base), text_entry(base / "etc" / "patroni.yml", "a: 1\n"))
    fetch.first_boot(boot(base), serve(v1))
    v2 = manifest(node_entry(base, stanza="pg-y"), text_entry(base / "etc" / "patroni.yml", "a: 2\n",
                  on_change=("reload:pgha-patroni.service", "dcs-sync")))
    started: list[str] = []
    apply_config.apply(member, get=serve(v2), run=Systemd(), dcs_sync=lambda n: started.append(n["stanza"]))
    assert started == ["pg-y"]


def cluster(*members: dict[str, Any]) -> dict[str, Any]:
    return {"members": list(members)}


def m(name: str, role: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "state": state, "api_url": f"http://10.0.0.{name[-1]}:8008/patroni",
            **extra}


def test_the_leader_restarts_pending_replicas_in_order_then_itself():
    c = cluster(m("pg-x-1", "leader", "running", pending_restart=True),
                m("pg-x-3", "replica", "streaming", pending_restart=True),
                m("pg-x-2", "sync_standby", "streaming", pending_restart=True))
    assert apply_config.restart_order(c, "pg-x-1") == apply_config.RestartPlan(["pg-x-2", "pg-x-3"], "last")
    assert apply_config.restart_order(c, "pg-x-2") == apply_config.RestartPlan([])  # only the leader drives it
    down = cluster(m("pg-x-1", "leader", "running"), m("pg-x-2", "replica", "starting", pending_restart=True))
    assert apply_config.restart_order(down, "pg-x-1") == apply_config.RestartPlan([])  # never while one is down
    assert apply_config.restart_order(cluster(m("pg-x-1", "leader", "running"), m("pg-x-2", "replica", "streaming")),
                                      "pg-x-1") == apply_config.RestartPlan([])


def test_a_lowered_primary_bounded_parameter_restarts_the_leader_first():
    # Patroni 4.0's /cluster shape; a standby may not run max_connections below the primary's.
    lower = {"max_connections": {"old_value": "107", "new_value": "100"}}
    higher = {"max_connections": {"old_value": "100", "new_value": "107"}, "work_mem": {"old_value": "4MB",
                                                                                         "new_value": "1MB"}}
    for reason, leader in ((lower, "first"), (higher, "last")):
        c = cluster(m("pg-x-1", "leader", "running", pending_restart=True, pending_restart_reason=reason),
                    m("pg-x-2", "replica", "streaming", pending_restart=True, pending_restart_reason=reason))
        assert apply_config.restart_order(c, "pg-x-1") == apply_config.RestartPlan(["pg-x-2"], leader)
    # The leader restarted first already (it runs the lower value): its replicas follow.
    c = cluster(m("pg-x-1", "leader", "running"),
                m("pg-x-2", "replica", "streaming", pending_restart=True, pending_restart_reason=lower))
    assert apply_config.restart_order(c, "pg-x-1") == apply_config.RestartPlan(["pg-x-2"])


def test_the_leader_hands_over_to_a_restarted_sync_standby_only():
    # The restart's handover chooses as a stop's does (handover_candidate), never a member
    # that still needs its own restart.
    sync = {"synchronous_mode": True, "maximum_lag_on_failover": 1048576}
    c = cluster(m("pg-x-1", "leader", "running", pending_restart=True),
                m("pg-x-2", "replica", "streaming", lag=0),
                m("pg-x-3", "sync_standby", "streaming", lag=1024))
    assert handover.handover_candidate("pg-x-1", c, sync, restarted_only=True)[0] == "pg-x-3"
    # Synchronous mode: Patroni refuses any candidate but the sync standby (HTTP 412), so a
    # sync standby that still needs its restart means no candidate yet, not another replica.
    c = cluster(m("pg-x-1", "leader", "running", pending_restart=True),
                m("pg-x-2", "replica", "streaming", lag=0),
                m("pg-x-3", "sync_standby", "streaming", lag=0, pending_restart=True))
    name, why = handover.handover_candidate("pg-x-1", c, sync, restarted_only=True)
    assert name is None and "pg-x-3: needs a restart itself" in why
    assert handover.handover_candidate("pg-x-1", c, sync)[0] == "pg-x-3"  # a stop may take it
    not_sync = {"synchronous_mode": False, "maximum_lag_on_failover": 1048576}
    c = cluster(m("pg-x-1", "leader", "running"), m("pg-x-2", "replica", "streaming", lag=4096),
                m("pg-x-3", "replica", "streaming", lag="unknown"), m("pg-x-4", "replica", "streaming", lag=0,
                                                                     tags={"nofailover": True}))
    assert handover.handover_candidate("pg-x-1", c, not_sync, restarted_only=True)[0] == "pg-x-2"
    assert handover.handover_candidate("pg-x-1", cluster(m("pg-x-1", "leader", "running"),
                                                         m("pg-x-2", "replica", "starting")), not_sync)[0] is None
