"""`secrets`: fetch the cluster secret and the member's own TLS key secret, write the node's
secret files."""

import argparse
import base64
import hashlib
import hmac
import json
import os
import pwd
import time
from typing import Any, Mapping

from .. import contract
from ..contract import AwsFacts, NodeFacts, NodeUsers, SecretRef
from .cli_types import Subparsers
from .envfile import conninfo, env_file
from .errors import LOG, PROG, AgentError
from .facts import os_user
from .fsutil import ensure_dir, write_atomic


def fetch_secret(src: SecretRef, aws: AwsFacts | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """The secret JSON object ``src`` names (node.secret, or a branch's restore.cipher_secret)."""
    source = src.get("source")
    if source == "file":
        path = src.get("file")
        if not path:
            raise AgentError("secret.source is 'file' but secret.file is not set")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise AgentError(f"cannot read the secret file {path}: {exc.strerror}")
        where = path
    elif source == "aws":
        text = _fetch_aws_secret(src, aws, timeout)
        where = src.get("id", "")
    else:
        raise AgentError(f"secret.source must be 'aws' or 'file', not {source!r}")
    try:
        secret = json.loads(text)
    except ValueError:
        # Never echo the text: it is the secret.
        raise AgentError(f"the secret from {where} is not valid JSON")
    if not isinstance(secret, dict):
        raise AgentError(f"the secret from {where} is not a JSON object")
    return secret


def _fetch_aws_secret(src: SecretRef, aws: AwsFacts | None, timeout: float) -> str:
    import boto3  # imported here: only the aws source needs it
    import botocore.exceptions

    secret_id, region = src.get("id"), src.get("region")
    if not secret_id or not region:
        raise AgentError("secret.source is 'aws' but secret.id or secret.region is not set")
    deadline = time.monotonic() + timeout
    delay, attempt = 2.0, 0
    while True:
        attempt += 1
        try:
            # AWS's own endpoint on EC2; the rehearsal's moto otherwise.
            client = boto3.client("secretsmanager", region_name=region, endpoint_url=aws["endpoint_url"] if aws and aws.get("endpoint_url") else None)
            resp = client.get_secret_value(SecretId=secret_id)
            if "SecretString" not in resp:
                raise AgentError(f"secret {secret_id} has no SecretString (binary secrets are not supported)")
            return resp["SecretString"]
        except AgentError:
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            # At boot the instance profile or the network may lag: retry until the deadline.
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"cannot read secret {secret_id} in {region} after {attempt} attempts: {exc}")
            LOG.warning("reading secret %s failed (attempt %d), retrying: %s", secret_id, attempt, exc)
            time.sleep(min(delay, max(left, 0.1)))
            delay = min(delay * 2, 15.0)


def check_value(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise AgentError(f"the secret has no usable '{name}' (must be a non-empty string)")
    if any(c in value for c in "\n\r\0"):
        raise AgentError(f"the secret's '{name}' contains a newline or NUL character")
    return value
def _userlist_line(user: str, password: str) -> str:
    q = lambda v: '"' + v.replace('"', '""') + '"'  # noqa: E731 - PgBouncer auth_file quoting
    return f"{q(user)} {q(password)}\n"


def pgbouncer_userlist(users: NodeUsers, pw: Mapping[str, str]) -> str:
    """PgBouncer's auth_file. auth_query resolves every application user, but PgBouncer (#303,
    still in 1.18) never runs auth_query for its admin database `pgbouncer`: a user it does not
    find in auth_file hangs there. So the file also lists
      - the monitor (stats_users), in clear so PgBouncer can also log it in to PostgreSQL by SCRAM;
      - the superuser (admin_users, peer on the socket only) with the verifier of a random,
        discarded password: it names the user for peer auth and can never be used to log in.
    (Adding a user here while a running PgBouncer already resolved it by auth_query and then
    reloading crashes 1.18: `put_in_order: found existing elem`. Restart PgBouncer instead.)"""
    return (_userlist_line(users["pgbouncer_auth"], pw["pgbouncer_auth_password"])
            + _userlist_line(users["monitor"], pw["monitor_password"])
            + _userlist_line(users["superuser"], scram_sha256_verifier(base64.b64encode(os.urandom(32)).decode())))


def render_secret_files(node: NodeFacts, secret: dict) -> dict[str, tuple[str, str]]:
    """Pure: {path: (content, owner key in os_users)} for every file `secrets` writes."""
    p, u, ports = node["paths"], node["users"], node["ports"]
    pw = {k: check_value(k, secret.get(k)) for k in contract.PASSWORD_KEYS}
    member = node["member"]
    keys = secret.get(contract.TLS_KEYS)
    if not isinstance(keys, dict) or not keys.get(member):
        raise AgentError(f"the secret has no tls_keys entry for member '{member}'")
    tls_key = keys[member]
    if not isinstance(tls_key, str) or "PRIVATE KEY" not in tls_key:
        raise AgentError(f"tls_keys['{member}'] in the secret is not a PEM private key")
    if not tls_key.endswith("\n"):
        tls_key += "\n"

    sec, run = p["secrets"], p["run"]
    files: dict[str, tuple[str, str]] = {}
    files[f"{sec}/patroni.env"] = (env_file([
        ("PATRONI_SUPERUSER_USERNAME", u["superuser"]),
        ("PATRONI_SUPERUSER_PASSWORD", pw["superuser_password"]),
        ("PATRONI_REPLICATION_USERNAME", u["replication"]),
        ("PATRONI_REPLICATION_PASSWORD", pw["replication_password"]),
        ("PATRONI_REWIND_USERNAME", u["superuser"]),
        ("PATRONI_REWIND_PASSWORD", pw["superuser_password"]),
        ("PATRONI_RESTAPI_USERNAME", u["patroni_rest"]),
        ("PATRONI_RESTAPI_PASSWORD", pw["patroni_rest_password"]),
    ]), "postgres")
    files[f"{sec}/pgbouncer-userlist.txt"] = (pgbouncer_userlist(u, pw), "postgres")

    br = ["# written by pgha-node secrets; included through --config-include-path", "[global]"]
    if secret.get("s3_key") or secret.get("s3_key_secret"):
        br.append(f"repo1-s3-key={check_value('s3_key', secret.get('s3_key'))}")
        br.append(f"repo1-s3-key-secret={check_value('s3_key_secret', secret.get('s3_key_secret'))}")
    if node.get("backup_encryption"):
        br.append(f"repo1-cipher-pass={check_value(contract.CIPHER_PASS_KEY, secret.get(contract.CIPHER_PASS_KEY))}")
    files[f"{sec}/pgbackrest/secrets.conf"] = ("\n".join(br) + "\n", "postgres")

    files[f"{sec}/exporter.env"] = (env_file([
        ("DATA_SOURCE_NAME", conninfo(host=f"{run}/postgres", port=ports["postgres"], dbname="postgres",
                                      user=u["monitor"], password=pw["monitor_password"], sslmode="disable")),
        ("PGHA_PGBOUNCER_DSN", conninfo(host=f"{run}/pgbouncer", port=ports["pgbouncer"], dbname="pgbouncer",
                                        user=u["monitor"], password=pw["monitor_password"], sslmode="disable")),
    ]), "exporter")
    files[f"{p['tls']}/node.key"] = (tls_key, "postgres")
    files[f"{p['tls']}/etcd.key"] = (tls_key, "etcd")
    return files


# A branch of an encrypted source keeps the source repository's cipher pass here (postgres,
# 0600); bootstrap hands it to pgBackRest in the environment, never on a command line.
SOURCE_CIPHER_FILE = "source-cipher-pass"


def source_cipher_path(node: NodeFacts) -> str:
    return os.path.join(node["paths"]["secrets"], SOURCE_CIPHER_FILE)


def source_cipher_reference(node: NodeFacts) -> SecretRef | None:
    """Where this branch's source cipher pass comes from (restore.cipher_secret: an 'aws' or
    'file' secret, like node.secret), or None: not a branch, or an unencrypted source."""
    restore = node.get("restore")
    ref = restore.get("cipher_secret") if restore else None
    return ref if isinstance(ref, dict) and ref else None


def render_source_cipher_file(node: NodeFacts, secret: dict) -> dict[str, tuple[str, str]]:
    """Pure: {path: (content, owner)} of the source cipher pass file, from the source's secret
    (its own cipher secret on EC2, the source cluster's secret file on the loopback)."""
    value = check_value(contract.CIPHER_PASS_KEY, secret.get(contract.CIPHER_PASS_KEY))
    return {source_cipher_path(node): (value + "\n", "postgres")}


def fetch_source_cipher(node: NodeFacts, ref: SecretRef, user: pwd.struct_passwd, timeout: float) -> bool:
    """Write the source's cipher pass for the restore. A failure is a warning, not an error: only
    a member that restores needs it (that restore then fails, naming the file), while a member
    added to a branch long promoted must boot even if its source is gone."""
    try:
        files = render_source_cipher_file(node, fetch_secret(ref, node["aws"], timeout=timeout))
    except AgentError as exc:
        LOG.warning("the source repository's cipher pass was not fetched: %s; a restore from the source "
                    "fails until '%s secrets' succeeds", exc, PROG)
        return False
    for path, (content, _) in files.items():
        write_atomic(path, content, user.pw_uid, user.pw_gid, 0o600)
        LOG.info("wrote %s (owner %s, mode 0600): the source repository's cipher pass", path, user.pw_name)
    return True


def fetch_node_secret(node: NodeFacts, timeout: float) -> dict[str, Any]:
    """The cluster secret (passwords) with the member's TLS key: from the member's own TLS
    secret when node.json names one (the cluster secret then carries no TLS key at all), else
    from the cluster secret itself."""
    secret = fetch_secret(node["secret"], node["aws"], timeout=timeout)
    ref = node.get("tls_secret")
    if ref:
        own = fetch_secret(ref, node["aws"], timeout=timeout)
        keys = own.get(contract.TLS_KEYS)
        member = node["member"]
        if not isinstance(keys, dict) or set(keys) != {member}:
            # Never name what it holds beyond member names: the values are private keys.
            names = sorted(keys) if isinstance(keys, dict) else []
            raise AgentError(f"the TLS secret {ref.get('id') or ref.get('file')} must hold tls_keys for "
                             f"'{member}' alone, not {names}")
        secret = {**secret, contract.TLS_KEYS: keys}
    return secret


def cmd_secrets(node: NodeFacts, args: argparse.Namespace) -> int:
    pg, etcd = os_user(node, "postgres"), os_user(node, "etcd")
    owners = {"postgres": pg, "etcd": etcd, "exporter": os_user(node, "exporter")}
    secret = fetch_node_secret(node, timeout=args.timeout)
    files = render_secret_files(node, secret)
    p = node["paths"]
    ensure_dir(p["secrets"], 0o700, pg.pw_uid, pg.pw_gid)
    ensure_dir(f"{p['secrets']}/pgbackrest", 0o700, pg.pw_uid, pg.pw_gid)
    ensure_dir(p["tls"], 0o755, 0, 0)
    for path, (content, owner) in files.items():
        user = owners[owner]
        write_atomic(path, content, user.pw_uid, user.pw_gid, 0o600)
        LOG.info("wrote %s (owner %s, mode 0600)", path, user.pw_name)
    LOG.info("%d secret files written for %s", len(files), node["member"])
    # Post-bootstrap once read the app's password from here; it now fetches the secret when it
    # runs (docs/security.md N27), so a member that kept the file from an older agent drops it.
    stale = os.path.join(p["secrets"], "roles.json")
    if os.path.exists(stale):
        os.unlink(stale)
        LOG.info("removed %s: no password stays on the node that no daemon reads", stale)
    ref = source_cipher_reference(node)
    if ref:
        fetch_source_cipher(node, ref, pg, args.timeout)
    return 0

def scram_sha256_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802/7677), computed
    here so the clear password never reaches the server's logs or pg_stat_statements."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("secrets", parents=[common], help="write the node's secret files",
                       description="Fetch the cluster secret (Secrets Manager with the instance role, or a "
                                   "local JSON file) and write the node's secret files atomically, with "
                                   "their owners and mode 0600. Never prints a secret value.")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to keep retrying Secrets Manager (default 120)")
    p.set_defaults(func=cmd_secrets)
