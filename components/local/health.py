"""How the local cluster is doing, as Patroni and the ports say: the members' agreed view, the
health problems ``up`` and the drills wait out, ``pgha local status``, and who leads."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..spec import PORTS, SERVICES
from .cluster import LocalCluster, LocalClusterError, Node


def cluster_view(cluster: LocalCluster) -> dict[str, Any] | None:
    """Patroni's /cluster as most members see it.

    A member cut off from the DCS answers from its cache (itself still the leader, say),
    so one member's word is not enough: every member is asked at once and the view
    whose leader most of them name wins (ties: the earliest member's)."""

    def ask(node: Node) -> dict[str, Any] | None:
        try:
            return cluster.patroni(node)
        except (OSError, ValueError):
            return None

    with ThreadPoolExecutor(max_workers=len(cluster.nodes)) as pool:
        views = [v for v in pool.map(ask, cluster.nodes) if v is not None]
    if not views:
        return None

    def leader_of(view: dict[str, Any]) -> str | None:
        return next((m["name"] for m in view.get("members", []) if m.get("role") == "leader"), None)

    votes = [leader_of(v) for v in views]
    return max(views, key=lambda v: votes.count(leader_of(v)))


def wait_for_leader(cluster: LocalCluster, *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = cluster.cluster_view() or {}
        for m in view.get("members", []):
            if m.get("role") == "leader" and m.get("state") == "running":
                return m["name"]
        time.sleep(0.5)
    raise LocalClusterError(f"no leader after {timeout:.0f}s; see each member's /var/log/pgha/patroni")


def wait_healthy(cluster: LocalCluster, *, timeout: float) -> None:
    """A leader, every replica streaming, a synchronous standby when rpo is 0, every port up."""
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while time.monotonic() < deadline:
        problems = cluster.health_problems()
        if not problems:
            return
        time.sleep(0.5)
    raise LocalClusterError("cluster not healthy after {:.0f}s: {}".format(timeout, "; ".join(problems)))


def health_problems(cluster: LocalCluster) -> list[str]:
    view = cluster.cluster_view()
    if view is None:
        return ["no Patroni answers"]
    members = {m["name"]: m for m in view.get("members", [])}
    problems = []
    leaders = [m for m in members.values() if m.get("role") == "leader"]
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} leaders")
    for node in cluster.nodes:
        m = members.get(node.member.name)
        if m is None or m.get("state") not in ("running", "streaming"):
            problems.append(f"{node.member.name} is {m.get('state') if m else 'absent'}")
    if cluster.spec.synchronous and not any(m.get("role") == "sync_standby" for m in members.values()):
        problems.append("no synchronous standby yet")
    for node in cluster.nodes:
        for port in (PORTS["pgbouncer"], *[PORTS[s] for s in SERVICES]):
            if not _port_open(node.ip, port):
                problems.append(f"{node.ip}:{port} closed")
    return problems


def status(cluster: LocalCluster) -> dict[str, Any]:
    """Members, roles, lag and endpoints (DSNs without passwords: they use the passfile)."""
    view = cluster.cluster_view() or {"members": []}
    by_name = {m["name"]: m for m in view.get("members", [])}
    members = []
    for node in cluster.nodes:
        m = by_name.get(node.member.name, {})
        members.append({
            "name": node.member.name,
            "ip": node.ip,
            "role": m.get("role", "down"),
            "state": m.get("state", "down"),
            "timeline": m.get("timeline"),
            "lag_bytes": m.get("lag", 0) if m.get("role") != "leader" else 0,
            "instance": node.machine.instance.get("instance_id"),
            "running": node.machine.running(),
            "units": _active_units(node) if node.machine.running() else dict.fromkeys(node.units, False),
        })
    services = {
        cluster.spec.service_name(s): {
            "port": PORTS[s],
            "dsn": [cluster.dsn(node.ip, PORTS[s]) for node in cluster.nodes],
            "multi_host_dsn": cluster.multi_host_dsn(PORTS[s]),
        }
        for s in SERVICES
    }
    return {
        "cluster": cluster.spec.cluster_name,
        "stack": cluster.stack,
        "root": str(cluster.root),
        "members": members,
        "services": services,
        "ca_file": str(cluster.ca_file),
        "passfile": str(cluster.passfile),
        "s3": {"endpoint": cluster.s3.url, "bucket": cluster.bucket},
        "image": {"key": cluster.image.key, "release": cluster.image.manifest["release"]} if cluster._image else None,
        "health": cluster.health_problems() if view.get("members") else ["cluster is down"],
    }


def leader(cluster: LocalCluster, *, running: bool,
           error: Callable[[str], Exception] = LocalClusterError) -> Node:
    """The member the cluster's view (``cluster_view``) names leader. ``running``: only one
    whose state is running, i.e. one that takes writes now (drills); without, any leader the
    DCS names (backups ask it, whatever its state). Raises ``error`` when there is none."""
    view = cluster.cluster_view() or {}
    for m in view.get("members", []):
        if m.get("role") == "leader" and (not running or m.get("state") == "running"):
            return next(n for n in cluster.nodes if n.member.name == m["name"])
    raise error("no running leader" if running else "the cluster has no leader (is it up?)")


def _active_units(node: Node) -> dict[str, bool]:
    """Each unit of the node: active or not (one systemctl call)."""
    states = node.machine.systemctl("is-active", *node.units).stdout.split()
    return {unit: state == "active" for unit, state in zip(node.units, states)}


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False
