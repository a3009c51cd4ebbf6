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
import grp
import hashlib
import json
import logging
import os
import pwd
import sys
import time
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


def main(argv: list[str] | None = None) -> int:
    """As <bin>/pgha-fetch BOOT_JSON (boot.json: the bucket and key of the manifest, the AWS facts)."""
    logging.basicConfig(format="%(asctime)s pgha-fetch %(levelname)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(prog="pgha-fetch", description="install this member's configuration "
                                     "from the cluster's bucket")
    parser.add_argument("boot_json")
    args = parser.parse_args(argv)
    try:
        boot = read_boot(args.boot_json)
        first_boot(boot, bucket_getter(boot["aws"]))
    except (FetchError, OSError, ValueError, KeyError) as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
