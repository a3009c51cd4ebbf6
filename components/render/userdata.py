"""EC2 user-data: the rendered files of one member in a gzip'd cloud-config.

cloud-init writes the files and runs ``pgha-bootstrap`` once per instance; every later boot
is carried by the systemd units themselves. EC2 allows 16 KB of user-data (before base64),
so the document is compressed; ``user_data_size`` lets tests and benchmarks hold that line.
"""

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass

import yaml

from ..contract import AGENT_FILE, node_files_prefix
from ..spec import ClusterSpec, Member
from .context import NodeContext
from .files import render_node

EC2_USER_DATA_LIMIT = 16 * 1024
# Static files too large for user-data travel through the cluster's bucket instead.
S3_DELIVERED_SUFFIXES: tuple[str, ...] = ("/" + AGENT_FILE,)


@dataclass(frozen=True)
class BucketFile:
    """A node file delivered through S3: content-addressed, verified by sha256 at boot."""

    path: str
    key: str
    sha256: str
    mode: int
    content: bytes


def bucket_files(spec: ClusterSpec, member: Member, ctx: NodeContext) -> list[BucketFile]:
    """The files of ``member`` that the bootstrap fetches from the bucket (upload these)."""
    out = []
    for f in render_node(spec, member, ctx):
        if f.path.endswith(S3_DELIVERED_SUFFIXES):
            body = f.content.encode() if isinstance(f.content, str) else f.content
            digest = hashlib.sha256(body).hexdigest()
            name = f.path.rsplit("/", 1)[-1]
            out.append(BucketFile(f.path, f"{node_files_prefix(spec.cluster_name)}{digest[:16]}/{name}", digest,
                                  f.mode, body))
    return out


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line file contents as YAML block literals: readable in the console, smaller."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_LiteralDumper.add_representer(str, _str_presenter)


def cloud_config(spec: ClusterSpec, member: Member, ctx: NodeContext) -> str:
    """The cloud-config document (uncompressed) for ``member``."""
    files = [f for f in render_node(spec, member, ctx) if not f.path.endswith(S3_DELIVERED_SUFFIXES)]
    fetched = [{"path": b.path, "bucket": ctx.bucket, "key": b.key, "sha256": b.sha256, "mode": b.mode}
               for b in bucket_files(spec, member, ctx)]
    manifest = ctx.layout.etc + "/bucket-files.json"
    bootstrap = next(f.path for f in files if f.path.endswith("/pgha-bootstrap"))
    entries = [{"path": f.path, "owner": f"{f.owner}:{f.owner}", "permissions": f"0{f.mode:o}", "content": f.content}
               for f in files]
    entries.append({"path": manifest, "owner": "root:root", "permissions": "0644",
                    "content": json.dumps(fetched, indent=1) + "\n"})
    document = {
        "write_files": entries,
        "runcmd": [[bootstrap]],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=4096)


def user_data_bytes(spec: ClusterSpec, member: Member, ctx: NodeContext) -> bytes:
    """Gzip'd cloud-config; mtime 0 keeps it byte-identical between runs (no spurious diffs)."""
    payload = gzip.compress(cloud_config(spec, member, ctx).encode(), compresslevel=9, mtime=0)
    if len(payload) > EC2_USER_DATA_LIMIT:
        raise ValueError(f"user-data for {member.name} is {len(payload)} bytes, over EC2's {EC2_USER_DATA_LIMIT}")
    return payload


def user_data(spec: ClusterSpec, member: Member, ctx: NodeContext) -> str:
    """Base64 user-data for ``aws.ec2.Instance(user_data_base64=...)``."""
    return base64.b64encode(user_data_bytes(spec, member, ctx)).decode()
