"""`fetch-files`: the node files too large for user-data, from the cluster's bucket.

The bootstrap cannot run the agent zipapp before it has it, so this very module is also
written from user-data as ``<bin>/pgha-fetch`` and run as a plain script to fetch the zipapp
(``pgha-bootstrap.sh.j2``). One fetcher, tested once, and no second copy in the bootstrap;
it costs ~1.5 KiB of the 16 KiB user-data. Hence: stdlib and boto3 only, no pgha imports.

Each manifest entry (``bucket-files.json``, written by render.userdata) names a bucket, a
content-addressed key, the sha256 and the file's path and mode. An object whose bytes do not
match is never installed; a file already in place with the right sha256 is not fetched again.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from ..contract import AwsFacts, NodeFacts
    from .cli_types import Subparsers

LOG = logging.getLogger("pgha-node")
# At boot a mirror, the NAT or the instance role may lag: 5 attempts, 10 s more apart each time.
ATTEMPTS = 5
BACKOFF = 10.0
MANIFEST = "bucket-files.json"


class FetchError(Exception):
    """A file could not be fetched or did not match its sha256 (one line for the log)."""


def sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except FileNotFoundError:
        return None


def install(path: str, body: bytes, mode: int) -> None:
    """Write beside the target, then rename: a reader sees the old file or the whole new one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def s3_client(aws: "AwsFacts") -> Any:
    import boto3  # lazily: --help and the tests' fake getters need no boto3
    from botocore.config import Config

    return boto3.client("s3", region_name=aws["region"], endpoint_url=aws["endpoint_url"] or None,
                        config=Config(s3={"addressing_style": aws["s3_addressing"]}))


def fetch_files(entries: Sequence[Mapping[str, Any]], get: Callable[[str, str], bytes], *,
                attempts: int = ATTEMPTS, backoff: float = BACKOFF,
                sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Install every entry; ``get(bucket, key)`` reads an object. Returns the paths written."""
    written = []
    for item in entries:
        path, digest = item["path"], item["sha256"]
        if sha256_of(path) == digest:
            LOG.info("%s is current (sha256 %s)", path, digest[:16])
            continue
        for attempt in range(1, attempts + 1):
            try:
                body = get(item["bucket"], item["key"])
                break
            except Exception as exc:  # noqa: BLE001 - boto3's errors vary; retried, then one line
                if attempt == attempts:
                    raise FetchError(f"cannot fetch s3://{item['bucket']}/{item['key']} after {attempts} "
                                     f"attempts: {exc}")
                LOG.warning("fetching %s failed (attempt %d of %d), retrying: %s", item["key"], attempt,
                            attempts, exc)
                sleep(backoff * attempt)
        # Content-addressed: a mismatch is a wrong or damaged object, which no retry mends.
        if hashlib.sha256(body).hexdigest() != digest:
            raise FetchError(f"{item['key']}: sha256 mismatch, refusing to install it")
        install(path, body, int(item["mode"]))
        LOG.info("installed %s (%d bytes, sha256 %s)", path, len(body), digest[:16])
        written.append(path)
    return written


def run(manifest: str, aws: "AwsFacts") -> list[str]:
    try:
        with open(manifest, encoding="utf-8") as fh:
            entries = json.load(fh)
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read the manifest {manifest}: {exc}")
    client = s3_client(aws)

    def get(bucket: str, key: str) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    return fetch_files(entries, get)


def cmd_fetch_files(node: "NodeFacts", args: argparse.Namespace) -> int:
    run(args.manifest or os.path.join(node["paths"]["etc"], MANIFEST), node["aws"])
    return 0


def register(sub: "Subparsers", common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch-files", parents=[common], help="fetch the node files delivered through S3",
                       description="Fetch every file of the manifest (bucket, key, sha256, path, mode) from "
                                   "the cluster's bucket; install each atomically once its sha256 matches. "
                                   "The bootstrap runs this module as <bin>/pgha-fetch to get the agent.")
    p.add_argument("--manifest", metavar="PATH", help=f"default <paths.etc>/{MANIFEST}")
    p.set_defaults(func=cmd_fetch_files)


def main(argv: list[str] | None = None) -> int:
    """As <bin>/pgha-fetch: MANIFEST NODE_JSON (the node facts give the AWS region and endpoint)."""
    logging.basicConfig(format="%(asctime)s pgha-fetch %(levelname)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(prog="pgha-fetch", description="fetch the node files delivered through S3")
    parser.add_argument("manifest")
    parser.add_argument("node_json")
    args = parser.parse_args(argv)
    try:
        with open(args.node_json, encoding="utf-8") as fh:
            aws = json.load(fh)["aws"]
        run(args.manifest, aws)
    except (FetchError, OSError, ValueError, KeyError) as exc:
        LOG.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
