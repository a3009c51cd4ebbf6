"""Which image the members boot: ``ami_id`` if given, else the newest official Debian 13."""

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec, image
from .common import DEBIAN_OWNER_ID

DEBIAN_ARCH: dict[str, str] = {"arm64": "arm64", "x86_64": "amd64"}


@dataclass(frozen=True)
class AmiChoice:
    """The AMI id and whether it was looked up (the newest Debian 13) or pinned (``ami_id``)."""

    ami_id: pulumi.Input[str]
    looked_up: bool


def debian_name_pattern(arch: str) -> str:
    """Name filter of Debian's official AMIs for an arch (``debian-13-arm64-*``): the release of
    the node image (pgha.spec.image) the rehearsal boots."""
    return f"debian-{image.DEBIAN_MAJOR}-{DEBIAN_ARCH[arch]}-*"


def choose_ami(spec: ClusterSpec, *, parent: pulumi.Resource) -> AmiChoice:
    """The members' image.

    A looked-up image changes whenever Debian publishes a point release (security fixes of
    the kernel and base system): the next ``pulumi up`` then replaces the members with it,
    one healthy member at a time (infra.node). Every instance runs the image the spec says,
    never one recorded in state long ago. Pin ``ami_id`` to choose when that happens.
    """
    if spec.ami_id:
        return AmiChoice(ami_id=spec.ami_id, looked_up=False)
    image = aws.ec2.get_ami_output(
        most_recent=True, owners=[DEBIAN_OWNER_ID],
        filters=[{"name": "name", "values": [debian_name_pattern(spec.arch)]},
                 {"name": "architecture", "values": [spec.arch]},
                 {"name": "virtualization-type", "values": ["hvm"]},
                 {"name": "root-device-type", "values": ["ebs"]}],
        opts=pulumi.InvokeOutputOptions(parent=parent))
    return AmiChoice(ami_id=image.id, looked_up=True)
