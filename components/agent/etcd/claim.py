"""A claim in etcd: one member at a time does what timers start on every member (a backup).

Each member decides from its own Patroni's view of the cluster; while members restart or a
replica's lag crosses the bound, two views can differ and two members both decide it is theirs
(the CI run of 2026-12-02 took two full backups 5 s apart at the 01:00 timer). The claim makes
that decision exclusive: a key created only if absent, tied to a lease this process keeps alive
and revokes when done, so a member that dies frees it within the lease's TTL.
"""

import base64
import threading
from typing import Any

from ..errors import AgentError
from .client import etcd_call

CLAIM_TTL = 30  # seconds; renewed every TTL/3 while held


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class ClaimHeld(AgentError):
    """Another process holds the claim; ``holder`` is what it wrote as its owner."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{holder or 'another member'} holds {key}")
        self.holder = holder


class Claim:
    """``with Claim(endpoints, context, key, owner):`` holds ``key`` (value ``owner``) for the
    block, or raises ClaimHeld (another holds it) or AgentError (no etcd endpoint answered)."""

    def __init__(self, endpoints: list[str], context: Any, key: str, owner: str, ttl: int = CLAIM_TTL) -> None:
        self.endpoints, self.context, self.key, self.owner, self.ttl = endpoints, context, key, owner, ttl
        self.endpoint = ""
        self.lease = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _call(self, path: str, body: dict) -> dict:
        errors = []
        # The endpoint that answered last first: a lease lives in the cluster, any member serves it.
        for endpoint in sorted(self.endpoints, key=lambda e: e != self.endpoint):
            try:
                reply = etcd_call(endpoint, path, body, self.context)
                self.endpoint = endpoint
                return reply
            except AgentError as exc:
                errors.append(str(exc))
        raise AgentError("no etcd member answered: " + "; ".join(errors))

    def __enter__(self) -> "Claim":
        self.lease = str(self._call("/v3/lease/grant", {"TTL": self.ttl})["ID"])
        key = _b64(self.key)
        reply = self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(self.owner), "lease": self.lease}}],
            "failure": [{"request_range": {"key": key}}]})
        if not reply.get("succeeded"):
            self._revoke()
            first = (reply.get("responses") or [{}])[0]
            kvs = (first.get("response_range") or first.get("responseRange") or {}).get("kvs") or []
            holder = base64.b64decode(kvs[0].get("value", "")).decode(errors="replace") if kvs else ""
            raise ClaimHeld(self.key, holder)
        self._renewer = threading.Thread(target=self._renew, name="etcd-claim", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._call("/v3/lease/keepalive", {"ID": self.lease})
            except AgentError:
                pass  # the next round tries again; past the TTL the claim is lost, as if we died

    def _revoke(self) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": self.lease})
        except AgentError:
            pass  # it expires within the TTL anyway

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        self._revoke()
