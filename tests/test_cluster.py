"""The dev stack booted as machines of the node image on 10.213.0.1-3 (etcd, Patroni, PostgreSQL,
PgBouncer, HAProxy, pgBackRest to a moto S3 over TLS, exporters)."""

import re
import signal
import threading
import time
import urllib.request

import psycopg
import pytest

from conftest import wait_for_archived
from pgha.local import backups
from pgha.spec import PORTS

pytestmark = pytest.mark.cluster


def connect(cluster, ip, port, **kw):
    return psycopg.connect(cluster.dsn(ip, port), connect_timeout=5, autocommit=True, **kw)


def one(cluster, ip, port, sql, params=None):
    with connect(cluster, ip, port) as conn:
        return conn.execute(sql, params).fetchone()


def members(cluster):
    return {m["name"]: m for m in cluster.cluster_view()["members"]}


def leader_ip(cluster):
    name = next(n for n, m in members(cluster).items() if m["role"] == "leader")
    return next(node.ip for node in cluster.nodes if node.member.name == name)


def test_cluster_forms_with_one_leader_and_streaming_replicas(local_cluster):
    roles = sorted(m["role"] for m in members(local_cluster).values())
    assert roles == ["leader", "replica", "sync_standby"]
    states = {m["state"] for m in members(local_cluster).values() if m["role"] != "leader"}
    assert states == {"streaming"}
    assert local_cluster.health_problems() == []


def test_writes_through_5433_land_on_the_primary(local_cluster):
    primary = leader_ip(local_cluster)
    with connect(local_cluster, local_cluster.nodes[2].ip, PORTS["primary"]) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t_route (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t_route (note) VALUES ('via 5433')")
        in_recovery, server = conn.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()
    assert in_recovery is False and server == primary
    assert one(local_cluster, primary, PORTS["default"], "SELECT count(*) FROM t_route WHERE note='via 5433'")[0] >= 1


@pytest.mark.parametrize("node_index", [0, 1, 2])
def test_every_haproxy_routes_each_service(local_cluster, node_index):
    ip = local_cluster.nodes[node_index].ip
    primary = leader_ip(local_cluster)
    replicas = {n.ip for n in local_cluster.nodes} - {primary}
    assert one(local_cluster, ip, PORTS["primary"], "SELECT pg_is_in_recovery(), host(inet_server_addr())") == (
        False, primary)
    in_recovery, server = one(local_cluster, ip, PORTS["replica"], "SELECT pg_is_in_recovery(), host(inet_server_addr())")
    assert in_recovery is True and server in replicas
    # 5436 and 5438 go straight to PostgreSQL: the client is the HAProxy node, not a local PgBouncer.
    assert one(local_cluster, ip, PORTS["default"], "SELECT pg_is_in_recovery(), host(inet_server_addr()), "
               "inet_server_port()") == (False, primary, 5432)
    in_recovery, server, port = one(local_cluster, ip, PORTS["offline"],
                                    "SELECT pg_is_in_recovery(), host(inet_server_addr()), inet_server_port()")
    assert in_recovery is True and server in replicas and port == 5432


@pytest.mark.parametrize("port", ["postgres", "pgbouncer", "primary", "replica", "default", "offline"])
def test_plaintext_connections_are_refused_on_every_port(local_cluster, port):
    for node in local_cluster.nodes:
        dsn = local_cluster.dsn(node.ip, PORTS[port]).replace("sslmode=verify-full", "sslmode=disable")
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn, connect_timeout=5).close()
        assert "SSL" in str(info.value) or "no encryption" in str(info.value) or "reject" in str(info.value)


def test_tls_connection_verifies_the_cluster_ca(local_cluster):
    ip = local_cluster.nodes[0].ip
    assert one(local_cluster, ip, PORTS["primary"], "SELECT 1") == (1,)
    with connect(local_cluster, ip, PORTS["default"]) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_a_commit_is_acknowledged_only_once_a_replica_has_it(local_cluster):
    primary = leader_ip(local_cluster)
    replica_nodes = [n for n in local_cluster.nodes if n.ip != primary]
    with connect(local_cluster, primary, PORTS["default"]) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t_sync (id int)")
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] not in ("", None)
    done = threading.Event()

    def commit():
        with connect(local_cluster, primary, PORTS["default"]) as conn:
            conn.execute("INSERT INTO t_sync VALUES (1)")
        done.set()

    # Freeze both replicas' PostgreSQL: the primary must hold the commit back.
    for node in replica_nodes:
        local_cluster.signal_postgres(node, signal.SIGSTOP)
    try:
        writer = threading.Thread(target=commit, daemon=True)
        writer.start()
        assert not done.wait(4), "commit returned while no replica could confirm it"
    finally:
        for node in replica_nodes:
            local_cluster.signal_postgres(node, signal.SIGCONT)
    assert done.wait(30), "commit did not return after the replicas resumed"


def metrics(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        return reply.read().decode()


@pytest.mark.parametrize("port, path, sample", [
    ("node_exporter", "/metrics", r"^node_cpu_seconds_total\{"),
    ("postgres_exporter", "/metrics", r"^pg_up 1$"),
    ("pgbouncer_exporter", "/metrics", r"^pgbouncer_up 1\.0$"),
    ("pgbackrest_exporter", "/metrics", r"^pgbackrest_up 1\.0$"),
    # Patroni's through HAProxy's metrics frontend (its REST API is for members only).
    ("haproxy_stats", "/patroni/metrics", r"^patroni_postgres_running\{[^}]*\} 1$"),
    ("haproxy_stats", "/metrics", r"^haproxy_backend_active_servers\{proxy=\"be-primary-pooled\"\} 1$"),
])
def test_every_exporter_serves_metrics_on_every_node(local_cluster, port, path, sample):
    for node in local_cluster.nodes:
        text = metrics(f"http://{node.ip}:{PORTS[port]}{path}")
        assert re.search(sample, text, re.MULTILINE), f"{node.member.name}: no {sample}"


def test_wal_segments_reach_the_s3_bucket(local_cluster):
    prefix = f"{local_cluster.spec.cluster_name}/pgbackrest/archive/{local_cluster.spec.cluster_name}/"
    with psycopg.connect(backups.superuser_dsn(local_cluster, backups.leader(local_cluster, running=False)), autocommit=True) as conn:
        segment = backups.switch_wal(conn)
    wait_for_archived(local_cluster, segment, local_cluster.bucket, prefix)


def test_status_json_gives_a_working_dsn_per_service(local_cluster):
    status = local_cluster.status()
    assert status["health"] == []
    assert {m["role"] for m in status["members"]} == {"leader", "replica", "sync_standby"}
    for name, service in status["services"].items():
        assert "password" not in service["multi_host_dsn"]
        with psycopg.connect(service["multi_host_dsn"]) as conn:
            expected = name.endswith(("replica", "offline"))
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is expected


def test_every_patroni_watches_etcd(local_cluster):
    # Patroni reads etcd's cluster version once, at start; started before a new etcd cluster had
    # decided it (3.0.0 for a moment), it runs without watches for good (pgha-node dcs-ready).
    for node in local_cluster.nodes:
        log = open(f"{node.layout.log}/patroni/patroni.log").read()
        assert "watches are not supported" not in log, node.member.name
        assert "etcd cluster version" in open(f"{node.layout.log}/patroni/patroni.stdout.log").read()


def test_etcd_raft_leadership_settles_on_the_asynchronous_replicas_node(local_cluster):
    # Losing the raft leader's node adds a raft election, and the new raft leader restarts
    # every lease (Patroni's leader key) at its full TTL (pgha-etcd-leadership.service).
    # Put raft leadership on the primary's node by hand; it must move to the asynchronous
    # replica's node, whose loss needs no DCS write.
    from pgha.local.drills import etcd_leader_node, etcd_member_ids, etcdctl

    roles = {m["name"]: m["role"] for m in members(local_cluster).values()}
    by_role = {role: next(n for n in local_cluster.nodes if n.member.name == name) for name, role in roles.items()}
    primary, asynchronous = by_role["leader"], by_role["replica"]
    ids, _ = etcd_member_ids(local_cluster)
    raft_leader = etcd_leader_node(local_cluster)
    if raft_leader is not primary:
        moved = etcdctl(local_cluster, "move-leader", format(ids[primary.member.name], "x"), endpoints=[raft_leader])
        assert moved.returncode == 0, moved.stderr
    deadline = time.monotonic() + 20
    while etcd_leader_node(local_cluster) is not asynchronous:
        assert time.monotonic() < deadline, (f"etcd's raft leader is on {etcd_leader_node(local_cluster).member.name}, "
                                             f"not the asynchronous replica's node {asynchronous.member.name}")
        time.sleep(0.5)
    assert "moved etcd's raft leadership from" in open(f"{primary.layout.log}/etcd-leadership.log").read()
    # and it stays there: the asynchronous replica's agent has nowhere cheaper to send it
    time.sleep(6)
    assert etcd_leader_node(local_cluster) is asynchronous


def test_prepared_statements_survive_transaction_pooling(local_cluster):
    """PgBouncer 1.24's max_prepared_statements: psycopg's default (prepare after 5 executions)
    works through the pooled port, across pooled server connections, with no client setting."""
    ip = leader_ip(local_cluster)
    clients = [psycopg.connect(local_cluster.dsn(ip, PORTS["primary"]), connect_timeout=5, autocommit=True)
               for _ in range(3)]
    try:
        for round_ in range(10):
            for n, conn in enumerate(clients):
                assert conn.execute("SELECT %s::int + 1", (round_ * 10 + n,)).fetchone()[0] == round_ * 10 + n + 1
        assert all(conn.prepare_threshold == 5 for conn in clients)
    finally:
        for conn in clients:
            conn.close()
