"""Issue 13, part 3, on the booted members: every member's daemons' logs reach the cluster's log
group in moto's CloudWatch Logs, one stream per member and daemon, the group kept 7 days, and a
password PostgreSQL logs never leaves the member."""

import json
import time
from typing import Any

import psycopg
import pytest

from pgha.local.health import leader as leader_of

pytestmark = pytest.mark.cluster

# What every member runs and logs from its first minute; pgBackRest logs on the primary (archiving).
EVERY_MEMBER = ("postgresql", "patroni", "pgbouncer", "haproxy", "etcd", "agent", "exporters")
# How long the members may take: one shipper cycle (5 s) per member, a first put after boot.
WAIT_SECONDS = 120


def streams(logs: Any, group: str) -> set[str]:
    """The group's streams: a shipper creates one just before its first events."""
    pages = logs.get_paginator("describe_log_streams").paginate(logGroupName=group)
    return {s["logStreamName"] for page in pages for s in page["logStreams"]}


def messages(logs: Any, group: str, stream: str) -> list[str]:
    """Every event of ``stream``, oldest first (GetLogEvents pages until its token repeats)."""
    found: list[str] = []
    ask: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
    while True:
        page = logs.get_log_events(**ask)
        found += [e["message"] for e in page["events"]]
        if not page["events"] or page.get("nextForwardToken") == ask.get("nextToken"):
            return found
        ask["nextToken"] = page["nextForwardToken"]


def wait_for(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_SECONDS} s")
        time.sleep(2)


def test_every_member_ships_its_daemons_logs_to_the_cluster_group_kept_7_days(local_cluster):
    spec, logs = local_cluster.spec, local_cluster.aws_client("logs")
    (group,) = logs.describe_log_groups(logGroupNamePrefix=spec.log_group)["logGroups"]
    assert group["logGroupName"] == f"/pgha/{spec.cluster_name}" and group["retentionInDays"] == 7
    wanted = {f"{m.name}/{daemon}" for m in spec.members for daemon in EVERY_MEMBER}

    def shipped() -> set[str]:
        found = streams(logs, spec.log_group)
        return found if wanted <= found and any(name.endswith("/pgbackrest") for name in found) else set()

    found = wait_for(f"a stream with events for each of {sorted(wanted)}", shipped)
    # Nothing but <member>/<daemon>, and each member's lines are its own (its name in Patroni's).
    assert {name.split("/")[0] for name in found} == {m.name for m in spec.members}
    for name in wanted:
        assert messages(logs, spec.log_group, name), name
    for member in spec.members:
        # Patroni names its member in its own lines ("I am pg-dev-1", "I am (pg-dev-1)").
        patroni = "\n".join(messages(logs, spec.log_group, f"{member.name}/patroni"))
        assert f"I am {member.name}" in patroni or f"I am ({member.name})" in patroni
    for node in local_cluster.nodes:
        assert node.systemd.is_active("pgha-ship-logs.service"), node.member.name
        # Every file under the daemons' log directories was readable to it (pgha-logs).
        journal = node.machine.run(["journalctl", "-u", "pgha-ship-logs.service", "-o", "cat", "--no-pager"],
                                   check=True).stdout
        assert "cannot read" not in journal and "shipping " in journal, journal[-2000:]


def test_a_password_postgresql_logs_is_redacted_before_it_leaves_the_member(local_cluster):
    spec, logs = local_cluster.spec, local_cluster.aws_client("logs")
    leader = leader_of(local_cluster, running=True)
    secret = "LogProbe7Secret"
    with psycopg.connect(local_cluster.superuser_dsn(leader), connect_timeout=5, autocommit=True) as conn:
        # log_statement=ddl: PostgreSQL writes this statement, password included, to its log.
        conn.execute(f"CREATE ROLE pgha_log_probe LOGIN PASSWORD '{secret}'")
        conn.execute("DROP ROLE pgha_log_probe")
    stream = f"{leader.member.name}/postgresql"

    def probe() -> list[str]:
        return [m for m in messages(logs, spec.log_group, stream) if "pgha_log_probe" in m and "CREATE ROLE" in m]

    (line,) = wait_for("the CREATE ROLE statement in the leader's postgresql stream", probe)
    assert secret not in line and "PASSWORD '[redacted]'" in line
    log_dir = leader.machine.fs / "var/log/pgha/postgresql"
    assert any(secret in p.read_text(errors="replace") for p in log_dir.glob("*.log")), \
        "the statement was not in PostgreSQL's own log: nothing was redacted"
    assert not any(secret in m for s in streams(logs, spec.log_group) for m in messages(logs, spec.log_group, s))


def test_no_password_of_the_cluster_secret_is_in_any_shipped_event(local_cluster):
    spec, logs = local_cluster.spec, local_cluster.aws_client("logs")
    values = json.loads(local_cluster.secrets_file.read_text())
    passwords = [v for k, v in values.items() if k.endswith("_password")]
    assert len(passwords) == 6 and all(len(p) >= 16 for p in passwords)
    shipped = {name: messages(logs, spec.log_group, name) for name in streams(logs, spec.log_group)}
    assert sum(map(len, shipped.values())) > 100  # what was searched is the members' real output
    leaks = [(name, m[:80]) for name, lines in shipped.items() for m in lines for p in passwords if p in m]
    assert leaks == []
