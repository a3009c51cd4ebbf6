"""etcd's v3 JSON gateway and peer API over the cluster's TLS."""

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from ...contract import NodeFacts
from ..errors import AgentError


def etcd_peer_url(node: NodeFacts, name: str) -> str:
    return f"https://{node['peers'][name]['ip']}:{node['ports']['etcd_peer']}"


def etcd_client_url(node: NodeFacts, name: str) -> str:
    return f"https://{node['peers'][name]['ip']}:{node['ports']['etcd_client']}"


def other_etcd_members(node: NodeFacts) -> list[str]:
    """The names of the other members that run etcd, sorted."""
    return sorted(name for name, peer in node["peers"].items() if peer.get("etcd") and name != node["member"])


def etcd_tls_context(node: NodeFacts, key: str = "etcd.key") -> "ssl.SSLContext":
    """Client TLS for the members' etcd: the cluster CA, this node's certificate and its key
    (etcd.key for the etcd user, node.key for postgres)."""
    import ssl

    tls = node["paths"]["tls"]
    context = ssl.create_default_context(cafile=f"{tls}/ca.crt")
    context.load_cert_chain(f"{tls}/node.crt", f"{tls}/{key}")
    return context


def etcd_cluster_version(endpoint: str, context: Any, timeout: float = 2.0) -> tuple[int, ...] | None:
    """The cluster version an etcd member reports, None while it is not decided."""
    try:
        with urllib.request.urlopen(endpoint + "/version", context=context, timeout=timeout) as reply:
            text = json.loads(reply.read()).get("etcdcluster", "")
        return tuple(int(x) for x in text.split("."))
    except (OSError, ValueError, AttributeError):
        return None


def etcd_call(endpoint: str, path: str, body: dict, context: Any, timeout: float = 3.0) -> dict:
    """POST to etcd's v3 JSON gateway; AgentError carries etcd's own message."""
    request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as reply:
            return json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("message") or exc.reason
        except ValueError:
            detail = exc.reason
        raise AgentError(f"etcd {endpoint}{path}: {detail}")
    except (OSError, ValueError) as exc:
        raise AgentError(f"etcd {endpoint}{path}: {exc}")


def etcd_member_status(endpoint: str, context: Any, timeout: float = 2.0) -> dict:
    """One member's own status: its ID, the raft leader it follows (\"\" for none), its raft index."""
    reply = etcd_call(endpoint, "/v3/maintenance/status", {}, context, timeout=timeout)
    header = reply.get("header") or {}
    # proto3 JSON: uint64 as strings, zero values left out.
    return {"id": str(header.get("member_id") or header.get("memberId") or ""),
            "leader": str(reply.get("leader") or ""),
            "raft_index": int(reply.get("raftIndex") or reply.get("raft_index") or 0)}


def etcd_peer_members(endpoint: str, context: Any, timeout: float = 3.0) -> list[dict]:
    """A member's own view of the membership, from its peer port: answered as soon as the
    process runs, even without quorum (the client port answers only once the member has
    joined a cluster with quorum). A member that never started has no clientURLs."""
    request = urllib.request.Request(endpoint + "/members")
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as reply:
            raw = json.loads(reply.read())
    except (OSError, ValueError) as exc:
        raise AgentError(f"etcd {endpoint}/members: {exc}")
    return [{"ID": str(m.get("id") or m.get("ID")), "name": m.get("name") or "", "peerURLs": m.get("peerURLs") or [],
             "clientURLs": m.get("clientURLs") or []} for m in raw]




def etcd_health(endpoint: str, context: Any, timeout: float = 3.0) -> dict:
    """etcd's own health verdict (GET /health: a raft leader, no alarm, a linearizable read):
    ``{"health": "true"|"false", "reason": ...}``, also from the 503 it answers when unhealthy."""
    try:
        with urllib.request.urlopen(endpoint + "/health", context=context, timeout=timeout) as reply:
            raw = reply.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        if not raw:
            raise AgentError(f"etcd {endpoint}/health: HTTP {exc.code}")
    except OSError as exc:
        raise AgentError(f"etcd {endpoint}/health: {exc}")
    try:
        data = json.loads(raw)
    except ValueError:
        raise AgentError(f"etcd {endpoint}/health: not JSON: {raw[:100]!r}")
    if not isinstance(data, dict):
        raise AgentError(f"etcd {endpoint}/health: not a JSON object: {raw[:100]!r}")
    return data
