"""What the drills ask of the cluster: who leads, each member's view, Patroni's REST API and
dynamic configuration, etcd's members, each PgBouncer's advertised role."""

import contextlib
import json
import subprocess
import time
from typing import Any, Callable

import psycopg

from ...render import USERS
from ...spec import PORTS
from ..cluster import LocalCluster, Node
from ..health import leader
from .load import in_recovery, short_error


class DrillError(RuntimeError):
    """The drill could not run or the cluster did not recover."""


def node_named(cluster: LocalCluster, name: str) -> Node:
    return next(n for n in cluster.nodes if n.member.name == name)


def members(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in (cluster.cluster_view() or {}).get("members", [])}


def sync_standby(cluster: LocalCluster) -> Node | None:
    for name, m in members(cluster).items():
        if m.get("role") in ("sync_standby", "quorum_standby"):
            return node_named(cluster, name)
    return None


def node_pids(node: Node) -> list[int]:
    """Every process of the node's machine (its PID 1 and all below it), as the host knows them."""
    return node.machine.pids()


def patroni_request(cluster: LocalCluster, node: Node, method: str, path: str, body: Any = None,
                    timeout: float = 30) -> tuple[int, str]:
    """An authenticated call to Patroni's REST API (unsafe endpoints need the REST user)."""
    password = json.loads(cluster.secrets_file.read_text())["patroni_rest_password"]
    client = cluster.patroni_client(node, auth=(USERS["patroni_rest"], password))
    status, raw = client.request(method, path, body, timeout=timeout)
    return status, raw.decode()


def dynamic_config(cluster: LocalCluster) -> dict[str, Any]:
    for node in cluster.nodes:
        with contextlib.suppress(OSError, ValueError):
            return cluster.patroni(node, "/config")
    raise DrillError("no Patroni answers /config")


def patch_config(cluster: LocalCluster, changes: dict[str, Any]) -> dict[str, Any]:
    """PATCH Patroni's dynamic configuration (DCS) through the leader's REST API."""
    primary = leader(cluster, running=True, error=DrillError)
    status, text = patroni_request(cluster, primary, "PATCH", "/config", changes)
    if status != 200:
        raise DrillError(f"PATCH /config failed: {status} {text}")
    return json.loads(text)


def etcdctl(cluster: LocalCluster, *args: str, endpoints: list[Node] | None = None) -> subprocess.CompletedProcess[str]:
    return cluster.etcdctl(*args, endpoints=endpoints)


def etcd_member_ids(cluster: LocalCluster) -> tuple[dict[str, int], int | None]:
    """Every answering etcd member's ID by member name, and the raft leader's ID (None: no leader)."""
    out = etcdctl(cluster, "endpoint", "status", "-w", "json")
    ids, leader = {}, None
    for s in json.loads(out.stdout or "[]"):
        ip = s["Endpoint"].split("//", 1)[1].rsplit(":", 1)[0]
        ids[next(n.member.name for n in cluster.nodes if n.ip == ip)] = s["Status"]["header"]["member_id"]
        if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
            leader = s["Status"]["leader"]
    return ids, leader


def etcd_leader_node(cluster: LocalCluster) -> Node:
    """Ask etcd which member is the raft leader."""
    ids, leader = etcd_member_ids(cluster)
    name = next((name for name, member_id in ids.items() if member_id == leader), None)
    if name is None:
        raise DrillError(f"etcd has no leader (members answering: {sorted(ids)})")
    return next(n for n in cluster.nodes if n.member.name == name)


def pgbouncer_roles(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    """What each PgBouncer advertises (in_hot_standby) against what its PostgreSQL is."""
    found = {}
    for node in cluster.nodes:
        entry: dict[str, Any] = {}
        try:
            with psycopg.connect(cluster.dsn(node.ip, PORTS["pgbouncer"]) + " connect_timeout=3",
                                 autocommit=True, prepare_threshold=None) as conn:
                entry["advertised_standby"] = conn.info.parameter_status("in_hot_standby") == "on"
                entry["in_recovery"] = in_recovery(conn)
        except Exception as exc:  # noqa: BLE001
            entry["error"] = short_error(exc)
        entry["stale"] = "error" not in entry and entry["advertised_standby"] != entry["in_recovery"]
        found[node.member.name] = entry
    return found


def wait(pred: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(step)
    return False


def quiet_value(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:  # noqa: BLE001
        return None


def quiet(check: Callable[[], bool]) -> bool:
    return bool(quiet_value(check))
