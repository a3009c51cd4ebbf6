"""An EC2 instance metadata service for one rehearsal member, inside that member's namespace.

On EC2 a node learns its identity and its instance role's credentials from IMDS at
169.254.169.254; boto3 and pgBackRest (``repo1-s3-key-type=auto``) read nothing else. Each
rehearsal member gets the same service, bound to 169.254.169.254 on the loopback device of its
own network namespace (never the root namespace's: the machine itself may use that address).
As the instances pgha creates (``http_tokens=required``), it answers only IMDSv2 requests:
a PUT for a session token first, then GETs that carry it.

The facts come from a JSON file the rehearsal writes (re-read per request, so a replaced
instance's new id is served at once). The credentials are moto's: any key is accepted there.
EC2 Instance Connect's pushed keys (``managed-ssh-keys/``) come from a second file beside it,
which ``pgha.local.eic.push`` writes as AWS's send-ssh-public-key would; a key is served until
its 60 s are up, as AWS serves it.
"""

import argparse
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

ADDRESS = "169.254.169.254"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600


# Written by pgha.local.eic.push.
KEYS_FILE = "managed-ssh-keys.json"


def managed_ssh_keys(keys: dict[str, Any], path: str, now: float) -> str | None:
    """What IMDS answers under meta-data/managed-ssh-keys/ (``path`` below it), or None (404)."""
    name = path.rstrip("/")
    if name == "signer-cert" and keys.get("signer_cert"):
        return str(keys["signer_cert"])
    staples: dict[str, str] = keys.get("ocsp", {})
    if name == "signer-ocsp" and staples:
        return "\n".join(staples)
    if name.startswith("signer-ocsp/") and name.removeprefix("signer-ocsp/") in staples:
        return staples[name.removeprefix("signer-ocsp/")]
    if name.startswith("active-keys/"):
        user = name.removeprefix("active-keys/")
        live = [k["block"] for k in keys.get("active_keys", {}).get(user, []) if k["until"] > now]
        return "".join(live) if live else None
    return None


def metadata(facts: dict[str, Any], path: str, keys: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """The body and content type IMDS answers for ``path`` (under /latest/), or None (404)."""
    role = facts["role"]
    now = time.time()
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 6 * 3600))
    credentials = {"Code": "Success", "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                   "Type": "AWS-HMAC", "AccessKeyId": facts["access_key_id"],
                   "SecretAccessKey": facts["secret_access_key"], "Token": facts["session_token"],
                   "Expiration": expiration}
    identity = {"instanceId": facts["instance_id"], "region": facts["region"],
                "availabilityZone": facts["availability_zone"], "privateIp": facts["local_ipv4"],
                "instanceType": facts["instance_type"], "accountId": facts["account_id"],
                "architecture": facts["architecture"], "imageId": facts["image_id"]}
    plain = {
        "meta-data/instance-id": facts["instance_id"],
        "meta-data/instance-type": facts["instance_type"],
        "meta-data/local-ipv4": facts["local_ipv4"],
        "meta-data/local-hostname": facts["hostname"],
        "meta-data/placement/region": facts["region"],
        "meta-data/placement/availability-zone": facts["availability_zone"],
        "meta-data/services/domain": "amazonaws.com",
        "meta-data/iam/security-credentials/": role,
        "meta-data/iam/security-credentials": role,
    }
    if path in plain:
        return plain[path], "text/plain"
    if path == f"meta-data/iam/security-credentials/{role}":
        return json.dumps(credentials), "application/json"
    if path == "dynamic/instance-identity/document":
        return json.dumps(identity), "application/json"
    if path.startswith("meta-data/managed-ssh-keys/"):
        body = managed_ssh_keys(keys or {}, path.removeprefix("meta-data/managed-ssh-keys/"), now)
        return None if body is None else (body, "text/plain")
    return None


class _Handler(BaseHTTPRequestHandler):
    server: "ImdsServer"
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Server", "EC2ws")
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802 (http.server's names)
        if self.path != "/latest/api/token":
            return self._reply(404, "Not Found")
        try:
            ttl = int(self.headers.get(TTL_HEADER, ""))
        except ValueError:
            return self._reply(400, "Missing or invalid " + TTL_HEADER)
        if not 1 <= ttl <= MAX_TTL:
            return self._reply(400, "Invalid " + TTL_HEADER)
        token = secrets.token_urlsafe(32)
        self.server.tokens[token] = time.monotonic() + ttl
        self._reply(200, token)

    def do_GET(self) -> None:  # noqa: N802
        token = self.headers.get(TOKEN_HEADER, "")
        if self.server.tokens.get(token, 0.0) < time.monotonic():
            return self._reply(401, "Unauthorized")  # IMDSv1 is off, as on pgha's instances
        if not self.path.startswith("/latest/"):
            return self._reply(404, "Not Found")
        keys_file = self.server.facts_file.parent / KEYS_FILE
        keys = json.loads(keys_file.read_text()) if keys_file.exists() else {}
        found = metadata(json.loads(self.server.facts_file.read_text()), self.path.removeprefix("/latest/"), keys)
        if found is None:
            return self._reply(404, "Not Found")
        self._reply(200, *found)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        sys.stderr.write("imds: " + (format % args) + "\n")


class ImdsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], facts_file: Path):
        super().__init__(address, _Handler)
        self.facts_file = facts_file
        self.tokens: dict[str, float] = {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgha.local.imds", description=__doc__.splitlines()[0])
    parser.add_argument("--facts", required=True, type=Path, help="JSON file of the instance's facts")
    parser.add_argument("--listen", default=f"{ADDRESS}:80", help="address:port (default %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ImdsServer((host, int(port)), args.facts)
    print(f"imds: serving {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
