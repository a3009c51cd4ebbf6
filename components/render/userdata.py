"""EC2 user-data (the boot files) and the member's configuration manifest (the rest).

User-data carries only what a first boot needs: the bootstrap, the fetcher, boot.json (where
the configuration is) and the apt pins of the image. A routine change (a parameter, a backup
schedule, one more replica) changes the manifest only, which ``pulumi up`` rewrites in place
in the bucket and the agent's ``apply-config`` applies; no instance is replaced for it.

cloud-init writes the boot files and runs ``pgha-bootstrap`` once per instance; every later boot
is carried by the systemd units themselves. EC2 allows 16 KB of user-data (before base64),
so the document is compressed; ``user_data_size`` lets tests and benchmarks hold that line.
"""

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from .. import contract
from ..contract import AGENT_FILE, node_files_prefix
from ..spec import ClusterSpec, Member, Problem
from .context import NodeContext, NodeFile, ec2_context
from .files import APT_PREFERENCES_PATH, render_node

EC2_USER_DATA_LIMIT = 16 * 1024
BOOT_SUFFIXES: tuple[str, ...] = ("/" + contract.BOOT_FILE, "/pgha-bootstrap", "/" + contract.FETCHER_FILE,
                                  APT_PREFERENCES_PATH)
# Binary files travel as content-addressed objects of their own; the manifest names their key.
S3_DELIVERED_SUFFIXES: tuple[str, ...] = ("/" + AGENT_FILE,)


@dataclass(frozen=True)
class BucketFile:
    """A node file delivered through S3: content-addressed, verified by sha256 at boot."""

    path: str
    key: str
    sha256: str
    mode: int
    content: bytes


def is_boot_file(f: NodeFile) -> bool:
    return f.path.endswith(BOOT_SUFFIXES)


def bucket_files(spec: ClusterSpec, member: Member, ctx: NodeContext) -> list[BucketFile]:
    """The binary files of ``member``'s configuration, uploaded under their own keys (upload these)."""
    out = []
    for f in render_node(spec, member, ctx):
        if f.path.endswith(S3_DELIVERED_SUFFIXES):
            body = f.content.encode() if isinstance(f.content, str) else f.content
            digest = hashlib.sha256(body).hexdigest()
            name = f.path.rsplit("/", 1)[-1]
            out.append(BucketFile(f.path, f"{node_files_prefix(spec.cluster_name)}{digest[:16]}/{name}", digest,
                                  f.mode, body))
    return out


def config_manifest(spec: ClusterSpec, member: Member, ctx: NodeContext) -> dict[str, Any]:
    """The member's configuration: every file but the boot files, with its sha256, mode, owner
    and the actions its change asks for; text inline, binaries by key. ``version`` is the
    sha256 of the rest, so it changes exactly when a file (or an action) does."""
    by_path = {b.path: b for b in bucket_files(spec, member, ctx)}
    entries = []
    for f in render_node(spec, member, ctx):
        if is_boot_file(f):
            continue
        body = f.content.encode() if isinstance(f.content, str) else f.content
        entry: dict[str, Any] = {"path": f.path, "mode": f.mode, "owner": f.owner,
                                 "sha256": hashlib.sha256(body).hexdigest(), "on_change": list(f.on_change)}
        if f.path in by_path:
            entry.update(bucket=ctx.bucket, key=by_path[f.path].key)
        else:
            assert isinstance(f.content, str), f.path
            entry["content"] = f.content
        entries.append(entry)
    manifest: dict[str, Any] = {"format": contract.CONFIG_FORMAT, "cluster": spec.cluster_name,
                                "member": member.name, "files": entries}
    manifest["version"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return manifest


def config_manifest_bytes(spec: ClusterSpec, member: Member, ctx: NodeContext) -> bytes:
    """The manifest as uploaded to ``contract.config_key``: stable bytes (no spurious diffs)."""
    return (json.dumps(config_manifest(spec, member, ctx), sort_keys=True, indent=1) + "\n").encode()


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line file contents as YAML block literals: readable in the console, smaller."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_LiteralDumper.add_representer(str, _str_presenter)


def cloud_config(spec: ClusterSpec, member: Member, ctx: NodeContext) -> str:
    """The cloud-config document (uncompressed) for ``member``: its boot files, then the bootstrap."""
    files = [f for f in render_node(spec, member, ctx) if is_boot_file(f)]
    bootstrap = next(f.path for f in files if f.path.endswith("/pgha-bootstrap"))
    entries = [{"path": f.path, "owner": f"{f.owner}:{f.owner}", "permissions": f"0{f.mode:o}", "content": f.content}
               for f in files]
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


def user_data_problems(spec: ClusterSpec) -> list[Problem]:
    """Members whose user-data would exceed EC2's limit, as validation problems (before anything exists).

    What ``pulumi up`` learns only later (the bucket's name, the secret's ARN, the subnets'
    addresses) is taken at its longest, so the real user-data is never larger than measured here.
    The inputs user-data carries are the cluster name (members, stanza, config keys) and the region;
    parameters and everything else travel in the manifest.
    """
    widest_ip = "255.255.255.255"
    ctx = ec2_context(spec.region, member_ips={m.name: widest_ip for m in spec.members}, bucket="b" * 63,
                      secret_id="arn:aws-us-gov:secretsmanager:" + spec.region + ":123456789012:secret:" + "s" * 512,
                      peer_ips=tuple(widest_ip for _ in spec.member_slots))
    problems = []
    for member in spec.members:
        size = len(gzip.compress(cloud_config(spec, member, ctx).encode(), compresslevel=9, mtime=0))
        if size > EC2_USER_DATA_LIMIT:
            problems.append(Problem(("clusterName",), spec.cluster_name,
                                    f"user-data of {member.name} would be {size} bytes (gzip'd), over EC2's "
                                    f"{EC2_USER_DATA_LIMIT}: it carries the cluster name and the region"))
    return problems


def user_data(spec: ClusterSpec, member: Member, ctx: NodeContext) -> str:
    """Base64 user-data for ``aws.ec2.Instance(user_data_base64=...)``."""
    return base64.b64encode(user_data_bytes(spec, member, ctx)).decode()
