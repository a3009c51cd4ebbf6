"""A routine change on the running local cluster, the way `pulumi up` makes it on EC2: a new
manifest in the bucket, applied by each member's own pgha-config.timer; no member replaced."""

import dataclasses
import time

import psycopg
import pytest

from pgha.render import CONFIG_POLL_SECONDS
from pgha.spec import PORTS

pytestmark = pytest.mark.cluster


def show(cluster, node, name: str) -> str:
    with psycopg.connect(cluster.dsn(node.ip, PORTS["postgres"]), connect_timeout=5, autocommit=True) as conn:
        return str(conn.execute(f"SHOW {name}").fetchone()[0])


def instance_ids(cluster) -> dict[str, str]:
    return {n.member.name: n.machine.instance["instance_id"] for n in cluster.nodes}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (psycopg.Error, OSError) as exc:
            last = exc
        time.sleep(2)
    raise AssertionError(f"{what} not within {timeout:.0f}s; last: {last!r}")


def test_a_parameter_change_reaches_every_member_through_the_bucket(local_cluster):
    cluster = local_cluster
    before_ids = instance_ids(cluster)
    spec = cluster.spec
    changed = cluster.with_spec(dataclasses.replace(spec, parameters={**spec.parameters, "work_mem": "12MB"}))
    try:
        for node in changed.nodes:
            changed.publish_config(node.member)  # pulumi up's part; the members' timers do the rest
        began = time.monotonic()
        wait_for(lambda: all(show(cluster, n, "work_mem") == "12MB" for n in cluster.nodes),
                 3 * CONFIG_POLL_SECONDS, "work_mem=12MB on every member")
        print(f"work_mem reached every member {time.monotonic() - began:.1f}s after the manifest changed")
        assert instance_ids(cluster) == before_ids
        cluster.wait_healthy(timeout=60)
    finally:
        for node in cluster.nodes:
            cluster.apply_config(node)
    # Applied at once (Patroni reloads PostgreSQL within its loop): no timer to wait for.
    wait_for(lambda: all(show(cluster, n, "work_mem") != "12MB" for n in cluster.nodes), 30, "work_mem back")


def test_a_parameter_that_needs_a_restart_is_rolled_replicas_first_without_replacing_anyone(local_cluster):
    cluster = local_cluster
    before_ids = instance_ids(cluster)
    spec = cluster.spec
    leader_before = cluster.wait_for_leader(timeout=30)
    wanted = str(int(show(cluster, cluster.nodes[0], "max_connections")) + 7)
    changed = cluster.with_spec(dataclasses.replace(spec, parameters={**spec.parameters, "max_connections": int(wanted)}))
    try:
        for node in changed.nodes:  # pulumi up writes every manifest; the members apply them
            changed.publish_config(node.member)
        for node in changed.nodes:
            changed.apply_config(node)
        # dcs-sync puts it in the DCS; Patroni flags the pending restart; the leader's next
        # apply-config restarts the replicas, switches over and restarts itself.
        wait_for(lambda: all(show(cluster, n, "max_connections") == wanted for n in cluster.nodes),
                 6 * CONFIG_POLL_SECONDS + 120, f"max_connections={wanted} on every member")
        assert instance_ids(cluster) == before_ids
        view = wait_for(lambda: (v := cluster.cluster_view()) and not any(m.get("pending_restart")
                                                                          for m in v["members"]) and v,
                        60, "no pending restart left")
        leader_after = next(m["name"] for m in view["members"] if m["role"] == "leader")
        # The old leader restarted last, as a replica: leadership moved by a switchover.
        assert leader_after != leader_before
        cluster.wait_healthy(timeout=120)
    finally:
        original = show(cluster, cluster.nodes[0], "max_connections")
        for node in cluster.nodes:
            cluster.publish_config(node.member)
        for node in cluster.nodes:
            cluster.apply_config(node)
        if original == wanted:  # rolled back the same way, before the next test runs
            wait_for(lambda: all(show(cluster, n, "max_connections") != wanted for n in cluster.nodes)
                     and not any(m.get("pending_restart") for m in cluster.cluster_view()["members"]),
                     6 * CONFIG_POLL_SECONDS + 120, "max_connections back")
            cluster.wait_healthy(timeout=120)
