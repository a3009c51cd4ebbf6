"""The members' configuration in the backup bucket: one manifest per member at a fixed key
(``render.config_manifest``), updated in place by ``pulumi up``, and the binary files it names
(``render.bucket_files``: the agent zipapp).

The manifest's key never changes, so a new configuration is an update of one object, which
the members' ``apply-config`` picks up; no instance input depends on it.

Keys are content-addressed under ``<cluster_name>/node-files/`` (inside the members' S3
prefix), and the bootstrap verifies each file's sha256, so the same file shared by several
members is one object. Which objects exist must be known while the program runs, before the
bucket name, secret and certificates are: the set is computed with a provisional context
(the real member IPs, placeholders for the rest) and each object's key and content come
from the real context.
"""

import base64
from functools import partial
from typing import TYPE_CHECKING, Mapping, Sequence

import pulumi
import pulumi_aws as aws

from ..render.context import NodeContext
from ..spec import ClusterSpec, Member
from .common import child

if TYPE_CHECKING:  # render is imported lazily, as for the user-data
    from ..render.userdata import BucketFile


def provisional_context(member_ips: Mapping[str, str]) -> NodeContext:
    """A NodeContext with the real member IPs and placeholders for values not known yet."""
    return NodeContext(member_ips=dict(member_ips), bucket="provisional", s3_endpoint="provisional",
                       s3_region="provisional", secret_id="provisional")


def upload_node_files(name: str, *, spec: ClusterSpec, bucket: pulumi.Input[str], key_arn: pulumi.Input[str],
                      member_ips: Mapping[str, str], ctx: pulumi.Output[NodeContext],
                      parent: pulumi.Resource) -> Sequence[aws.s3.BucketObjectv2]:
    """One S3 object per distinct bucket-delivered file of the members."""
    from ..render import bucket_files  # same lazy hand-off as the user-data renderer

    provisional = provisional_context(member_ips)
    seen: dict[str, tuple[str, str]] = {}  # provisional key -> (member name, file path)
    for member in spec.members:
        for f in bucket_files(spec, member, provisional):
            seen.setdefault(f.key, (member.name, f.path))
    members = {m.name: m for m in spec.members}
    objects = []
    for index, (member_name, path) in enumerate(seen.values()):
        member = members[member_name]
        found = ctx.apply(partial(_bucket_file, spec, member, path))
        objects.append(aws.s3.BucketObjectv2(
            f"{name}-node-file-{index + 1}", bucket=bucket, key=found.apply(lambda f: f.key),
            # The agent zipapp is binary: base64 on the wire, the object holds the bytes.
            content_base64=found.apply(lambda f: base64.b64encode(f.content).decode()),
            content_type="application/octet-stream",
            # Named: with "aws:kms" alone S3 would use the account's aws/s3 key, not the cluster's.
            server_side_encryption="aws:kms", kms_key_id=key_arn, opts=child(parent)))
    return objects


def upload_node_config(name: str, *, spec: ClusterSpec, member: Member, bucket: pulumi.Input[str],
                       key_arn: pulumi.Input[str], ctx: pulumi.Output[NodeContext],
                       after: Sequence[pulumi.Resource], parent: pulumi.Resource) -> aws.s3.BucketObjectv2:
    """The member's manifest (after the objects it names, so a member never reads a key that
    is not there yet)."""
    from .. import contract
    from ..render import config_manifest_bytes

    return aws.s3.BucketObjectv2(
        f"{name}-config", bucket=bucket, key=contract.config_key(spec.cluster_name, member.name),
        content=ctx.apply(lambda c: config_manifest_bytes(spec, member, c).decode()),
        content_type="application/json", server_side_encryption="aws:kms", kms_key_id=key_arn,
        opts=child(parent, depends_on=list(after)))


def _bucket_file(spec: ClusterSpec, member: Member, path: str, ctx: NodeContext) -> "BucketFile":
    from ..render import bucket_files

    return next(f for f in bucket_files(spec, member, ctx) if f.path == path)
