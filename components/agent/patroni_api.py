"""One client of Patroni's REST API: the agent's, and the local runner's (pgha.local)."""

import base64
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from ..contract import NodeFacts
from .envfile import env_unquote
from .errors import AgentError

PRIMARY_ROLES = {"primary", "master"}
# A cluster's leader, as Patroni's /cluster names it (master: Patroni 3.x).
LEADER_ROLES = {"leader", "master", "standby_leader"}


class PatroniError(AgentError):
    """Patroni answered with an HTTP error status (``status``, ``body``: its reply)."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status, self.body = status, body


class PatroniClient:
    """Patroni's REST API at ``host:port``: plain HTTP, or HTTPS when ``context`` is given
    (restapi.certfile); ``auth`` (user, password) for the unsafe endpoints (PATCH /config,
    switchover, restart). The password only ever goes into the Authorization header."""

    def __init__(self, host: str, port: int, *, auth: tuple[str, str] | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        scheme = "https" if context is not None else "http"
        self.base = f"{scheme}://{host}:{port}"
        self.auth, self.context = auth, context

    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, raw reply); an HTTP error status is returned, not raised; OSError when unreachable."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``path`` as JSON. Raises PatroniError on an error status (Patroni's health endpoints
        answer 503 with a JSON body: ``PatroniError.body``), OSError/ValueError otherwise."""
        status, raw = self.request("GET", path, timeout=timeout)
        if status >= 400:
            raise PatroniError(f"GET {self.base}{path}: HTTP {status}", status, raw.decode(errors="replace"))
        return json.loads(raw)

    def patch_config(self, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        status, raw = self.request("PATCH", "/config", body, timeout=timeout)
        if status >= 400:
            raise PatroniError(f"PATCH {self.base}/config: HTTP {status} {raw[:200]!r}", status,
                               raw.decode(errors="replace"))
        result: dict[str, Any] = json.loads(raw or b"{}")
        return result


def tls_context(node: NodeFacts) -> ssl.SSLContext:
    """How the agent talks to Patroni's TLS REST API (patroni.yml restapi.certfile): the cluster
    CA verifies the member's certificate (its address is in the SANs); the member's own
    certificate, where this process may read its key (root, postgres), is the client certificate
    that the unsafe endpoints require (restapi.verify_client: optional)."""
    tls = node["paths"]["tls"]
    context = ssl.create_default_context(cafile=os.path.join(tls, "ca.crt"))
    key = os.path.join(tls, "node.key")
    if os.access(key, os.R_OK):
        context.load_cert_chain(os.path.join(tls, "node.crt"), key)
    return context


def _context(node: NodeFacts | None) -> ssl.SSLContext | None:
    return tls_context(node) if node is not None and node.get("patroni_tls") else None


def member_client(member: Mapping[str, Any], auth: tuple[str, str] | None = None, *,
                  node: NodeFacts | None = None) -> PatroniClient | None:
    """A client of a /cluster member's own REST API (its api_url): plain HTTP, or HTTPS with
    ``node``'s TLS context; None when the URL is neither (or HTTPS without ``node``)."""
    url = urllib.parse.urlsplit(str(member.get("api_url") or ""))
    if not url.hostname or url.scheme not in ("http", "https"):
        return None
    context = _context(node) if url.scheme == "https" else None
    if url.scheme == "https" and context is None:
        return None
    return PatroniClient(url.hostname, url.port or 8008, auth=auth, context=context)


def local_client(node: NodeFacts, auth: tuple[str, str] | None = None) -> PatroniClient:
    """This node's Patroni, as patroni.yml's restapi.listen serves it (HTTPS when patroni_tls)."""
    return PatroniClient(node["ip"], int(node["ports"]["patroni"]), auth=auth, context=_context(node))


def patroni_get(node: NodeFacts, path: str, timeout: float = 5.0) -> Any:
    client = local_client(node)
    try:
        return client.get(path, timeout=timeout)
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot ask the local Patroni ({client.base}{path}): {exc}")


def rest_credentials(node: NodeFacts) -> tuple[str, str]:
    # Patroni drops its PATRONI_* variables before it runs callbacks: read the env file.
    creds = {k: v for k, v in os.environ.items() if k.startswith("PATRONI_RESTAPI_")}
    if len(creds) < 2:
        path = os.path.join(node["paths"]["secrets"], "patroni.env")
        try:
            with open(path, encoding="utf-8") as fh:
                creds = env_unquote(fh.read())
        except OSError as exc:
            raise AgentError(f"no REST API credentials: {path}: {exc.strerror}")
    user, password = creds.get("PATRONI_RESTAPI_USERNAME"), creds.get("PATRONI_RESTAPI_PASSWORD")
    if not user or not password:
        raise AgentError("no PATRONI_RESTAPI_USERNAME/PASSWORD in the environment or patroni.env")
    return user, password


def patroni_patch_config(node: NodeFacts, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    client = local_client(node, auth=rest_credentials(node))
    try:
        return client.patch_config(body, timeout=timeout)
    except (OSError, ValueError) as exc:
        raise AgentError(f"PATCH {client.base}/config: {exc}")
