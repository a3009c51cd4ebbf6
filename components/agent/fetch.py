"""The member's configuration from the cluster's bucket: pgha-fetch at boot, apply-config after.

A member's files (all but the boot files of user-data) are one JSON manifest in the bucket at
``contract.config_key`` (render.userdata.config_manifest): each entry a path, mode, owner,
sha256 and the actions its change asks for, with the text inline or, for the agent zipapp, a
content-addressed key. A file whose bytes do not match its sha256 is never installed; a file
already in place with the right sha256 is not written again.

The bootstrap cannot run the agent zipapp before it has it, so this very module is written
from user-data as ``<bin>/pgha-fetch`` and run as a plain script (``pgha-bootstrap.sh.j2``) to
install the first configuration; the agent's ``apply-config`` uses the same functions and
then runs the actions. One fetcher, tested once. Hence: stdlib and boto3 only, no pgha imports.
"""

import argparse
import datetime
import grp
import hashlib
import hmac
import json
import logging
import os
import pwd
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from ..contract import AwsFacts, BootFacts

LOG = logging.getLogger("pgha-node")
# At boot a mirror, the NAT or the instance role may lag: 5 attempts, 10 s more apart each time.
ATTEMPTS = 5
BACKOFF = 10.0
# pgha.contract's names, spelled again: this file runs without pgha (a test holds them equal).
CONFIG_FORMAT = 1
APPLIED_CONFIG_FILE = "applied-config.json"
STATUS_MESSAGE_MAX = 2048
IMDS_ENDPOINT = "http://169.254.169.254/"
IMDS_TOKEN_TTL = 300
Getter = Callable[[str, str], bytes]


class FetchError(Exception):
    """A file could not be fetched or did not match its sha256 (one line for the log)."""


def sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except FileNotFoundError:
        return None


def install(path: str, body: bytes, mode: int, owner: str = "root") -> None:
    """Write beside the target, then rename: a reader sees the old file or the whole new one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)
    if os.geteuid() == 0:  # a test as another user installs as itself
        os.chown(tmp, pwd.getpwnam(owner).pw_uid, grp.getgrnam(owner).gr_gid)
    os.replace(tmp, path)


def get_object(get: Getter, bucket: str, key: str, *, attempts: int = ATTEMPTS, backoff: float = BACKOFF,
               sleep: Callable[[float], None] = time.sleep) -> bytes:
    for attempt in range(1, attempts + 1):
        try:
            return get(bucket, key)
        except Exception as exc:  # noqa: BLE001 - boto3's errors vary; retried, then one line
            if attempt == attempts:
                raise FetchError(f"cannot fetch s3://{bucket}/{key} after {attempts} attempts: {exc}")
            LOG.warning("fetching %s failed (attempt %d of %d), retrying: %s", key, attempt, attempts, exc)
            sleep(backoff * attempt)
    raise AssertionError("unreachable")


def load_manifest(boot: "BootFacts", get: Getter, **retry: Any) -> dict[str, Any]:
    """The member's manifest from the bucket, checked to be one this fetcher reads and this member's."""
    ref = boot["config"]
    raw = get_object(get, ref["bucket"], ref["key"], **retry)
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise FetchError(f"s3://{ref['bucket']}/{ref['key']} is not JSON: {exc}")
    if manifest.get("format") != CONFIG_FORMAT:
        raise FetchError(f"s3://{ref['bucket']}/{ref['key']}: format {manifest.get('format')!r}, this fetcher "
                         f"reads {CONFIG_FORMAT}")
    if (manifest.get("cluster"), manifest.get("member")) != (boot["cluster"], boot["member"]):
        raise FetchError(f"s3://{ref['bucket']}/{ref['key']} is the configuration of {manifest.get('member')!r} "
                         f"of {manifest.get('cluster')!r}, not of {boot['member']!r} of {boot['cluster']!r}")
    return manifest


def read_applied(etc: str) -> dict[str, Any] | None:
    """The manifest last applied in full, or None (a first boot, or a record that cannot be read)."""
    try:
        with open(os.path.join(etc, APPLIED_CONFIG_FILE), encoding="utf-8") as fh:
            applied: dict[str, Any] = json.load(fh)
            return applied
    except (OSError, ValueError):
        return None


def record_applied(etc: str, manifest: Mapping[str, Any]) -> None:
    install(os.path.join(etc, APPLIED_CONFIG_FILE), (json.dumps(manifest, sort_keys=True) + "\n").encode(), 0o644)


@dataclass
class Sync:
    """What bringing the files to a manifest did: the entries that differ from the applied
    record (installed now, or earlier by a run whose actions did not all succeed) and the
    entries the record had that the manifest no longer has (their files removed)."""

    version: str
    changed: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def sync_files(manifest: Mapping[str, Any], applied: Mapping[str, Any] | None, get: Getter, **retry: Any) -> Sync:
    """Install every file of ``manifest`` whose bytes on disk differ; remove the files of the
    applied record that the manifest dropped."""
    before = {e["path"]: e for e in (applied or {}).get("files", [])}
    result = Sync(str(manifest["version"]))
    for entry in manifest["files"]:
        path, digest = entry["path"], entry["sha256"]
        if sha256_of(path) != digest:
            if "content" in entry:
                body = str(entry["content"]).encode()
            else:
                body = get_object(get, entry["bucket"], entry["key"], **retry)
            # A mismatch is a wrong or damaged object (or manifest), which no retry mends.
            if hashlib.sha256(body).hexdigest() != digest:
                raise FetchError(f"{entry.get('key', path)}: sha256 mismatch, refusing to install {path}")
            install(path, body, int(entry["mode"]), str(entry.get("owner", "root")))
            LOG.info("installed %s (%d bytes, sha256 %s)", path, len(body), digest[:16])
            result.written.append(path)
        old = before.get(path)
        if old is None or old["sha256"] != digest:
            result.changed.append(entry)
    kept = {e["path"] for e in manifest["files"]}
    for path, entry in before.items():
        if path not in kept:
            try:
                os.unlink(path)
                LOG.info("removed %s (no longer in the configuration)", path)
            except FileNotFoundError:
                pass
            result.removed.append(entry)
    return result


def s3_client(aws: "AwsFacts") -> Any:
    import boto3  # lazily: --help and the tests' fake getters need no boto3
    from botocore.config import Config

    return boto3.client("s3", region_name=aws["region"], endpoint_url=aws["endpoint_url"] or None,
                        config=Config(s3={"addressing_style": aws["s3_addressing"]}))


def bucket_getter(aws: "AwsFacts") -> Getter:
    """GetObject with a client made again after a failure: a boto3 client resolves its
    credentials once, so one made while the instance role was not served yet (a first boot,
    seen 2026-12-01 as "Unable to locate credentials" five times over) would never get any."""
    clients: list[Any] = []

    def get(bucket: str, key: str) -> bytes:
        if not clients:
            clients.append(s3_client(aws))
        try:
            body: bytes = clients[0].get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception:
            clients.clear()
            raise
        return body

    return get


def read_boot(path: str) -> "BootFacts":
    try:
        with open(path, encoding="utf-8") as fh:
            boot: "BootFacts" = json.load(fh)
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read {path}: {exc}")
    missing = sorted({"cluster", "member", "aws", "config", "etc"} - boot.keys())
    if missing:
        raise FetchError(f"{path}: missing {', '.join(missing)}")
    return boot


def first_boot(boot: "BootFacts", get: Getter, **retry: Any) -> Sync:
    """The bootstrap's part: install the member's whole configuration and record it applied
    (nothing runs yet, so no action is due)."""
    manifest = load_manifest(boot, get, **retry)
    result = sync_files(manifest, None, get, **retry)
    record_applied(boot["etc"], manifest)
    LOG.info("configuration %s installed: %d files written", result.version[:16], len(result.written))
    return result


# -- a boot failure before the agent is there ---------------------------------------------------
# The agent reports a failed boot to the member's status parameter, which `pulumi up` waits on.
# A boot that fails before it has the agent (apt, the bucket) reports from here, with the
# standard library only: on a fresh Debian AMI even boto3 may be what failed to install.

def imds_endpoint() -> str:
    """IMDS's base URL: AWS_EC2_METADATA_SERVICE_ENDPOINT where set (as botocore honours it)."""
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT
    return base if base.endswith("/") else base + "/"


def imds_get(path: str, endpoint: str | None = None, timeout: float = 2.0) -> str:
    """GET latest/<path> through IMDSv2 (a token PUT first; pgha's instances refuse IMDSv1),
    never through a proxy."""
    base = endpoint or imds_endpoint()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    put = urllib.request.Request(base + "latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)})
    with opener.open(put, timeout=timeout) as reply:
        token = reply.read().decode()
    get = urllib.request.Request(base + "latest/" + path, headers={"X-aws-ec2-metadata-token": token})
    with opener.open(get, timeout=timeout) as reply:
        return str(reply.read().decode()).strip()


def role_credentials(endpoint: str | None = None) -> dict[str, str]:
    """The instance role's credentials from IMDS (AccessKeyId, SecretAccessKey, Token)."""
    role = imds_get("meta-data/iam/security-credentials/", endpoint).splitlines()[0]
    creds: dict[str, str] = json.loads(imds_get(f"meta-data/iam/security-credentials/{role}", endpoint))
    return creds


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(url: str, body: bytes, headers: Mapping[str, str], *, service: str, region: str,
                  creds: Mapping[str, str], now: datetime.datetime) -> dict[str, str]:
    """``headers`` plus Host, X-Amz-Date, X-Amz-Security-Token and Authorization: AWS Signature
    Version 4 of a POST to ``url`` (no query string), every header signed."""
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed["host"] = urllib.parse.urlsplit(url).netloc
    signed["x-amz-date"] = amz_date
    if creds.get("Token"):
        signed["x-amz-security-token"] = creds["Token"]
    names = ";".join(sorted(signed))
    canonical = "\n".join(["POST", urllib.parse.urlsplit(url).path or "/", "",
                           "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)), names,
                           hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + creds["SecretAccessKey"]).encode(), day), region), service),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = dict(signed)
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
                            f"SignedHeaders={names}, Signature={signature}")
    return out


def clean_message(text: str) -> str:
    """Printable text only (a log may carry terminal escapes), newlines and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text).strip()


def failure_status(instance_id: str, message: str, at: str) -> str:
    """A 'failed' status as pgha.contract.status_value writes it (the message's end kept)."""
    text = clean_message(message.encode("utf-8", errors="replace")[-STATUS_MESSAGE_MAX:]
                         .decode("utf-8", errors="ignore"))
    return json.dumps({"at": at, "instance_id": instance_id, "lag_bytes": None, "message": text,
                       "state": "failed", "timeline": None}, sort_keys=True, ensure_ascii=False)


def report_boot_failure(boot: "BootFacts", message: str, *, imds: str | None = None, timeout: float = 10.0) -> None:
    """PutParameter of a 'failed' status to this member's parameter (pgha.contract's
    status_parameter), signed with the instance role: the agent's report, before the agent."""
    aws = boot["aws"]
    now = datetime.datetime.now(datetime.timezone.utc)
    value = failure_status(imds_get("meta-data/instance-id", imds), message, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    parameter = f"/pgha/{boot['cluster']}/{boot['member']}/status"
    body = json.dumps({"Name": parameter, "Value": value, "Type": "String", "Overwrite": True}).encode()
    url = aws["endpoint_url"] or f"https://ssm.{aws['region']}.amazonaws.com/"
    headers = sigv4_headers(url, body, {"Content-Type": "application/x-amz-json-1.1",
                                        "X-Amz-Target": "AmazonSSM.PutParameter"},
                            service="ssm", region=aws["region"], creds=role_credentials(imds), now=now)
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        reply.read()
    LOG.info("reported the failed boot to %s", parameter)


def main(argv: list[str] | None = None) -> int:
    """As <bin>/pgha-fetch BOOT_JSON (boot.json: the bucket and key of the manifest, the AWS facts)."""
    logging.basicConfig(format="%(asctime)s pgha-fetch %(levelname)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(prog="pgha-fetch", description="install this member's configuration "
                                     "from the cluster's bucket")
    parser.add_argument("boot_json")
    parser.add_argument("--report-failure", metavar="LOG",
                        help="instead: report a failed boot (the end of LOG) to this member's status parameter")
    args = parser.parse_args(argv)
    try:
        boot = read_boot(args.boot_json)
        if args.report_failure:
            with open(args.report_failure, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 4 * STATUS_MESSAGE_MAX))
                report_boot_failure(boot, fh.read().decode("utf-8", errors="replace"))
            return 0
        first_boot(boot, bucket_getter(boot["aws"]))
    except (FetchError, OSError, ValueError, KeyError, IndexError) as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
