"""One member: its network interface (its identity), its instance and, for ebs, its data volume.

The ENI carries the member's fixed private IP and the EBS volume its data; both are
separate resources that outlive the instance, so replacing the instance (new user-data,
instance type, AMI) keeps the address and the data. An ENI and a volume attach to one
instance only, hence ``delete_before_replace`` on the instance.
"""

from dataclasses import replace
from typing import Any, Mapping, Sequence

import pulumi
import pulumi_aws as aws

from .. import contract
from ..render.context import NodeContext, ec2_context
from ..spec import ClusterSpec, Member
from .ami import AmiChoice
from .common import child, cluster_tags
from .nodefiles import upload_node_config
from .readiness import MemberReady

DATA_DEVICE = "/dev/sdf"
ROOT_VOLUME_GIB = 20
# Longer than the node's own wait (agent status.DEFAULT_TIMEOUT, 30 min), so that the update
# fails with the member's reason, not with this timeout.
READY_TIMEOUT_SECONDS = 2400


# What pulumi-aws does when an input changes (`pulumi up` plans it; `pgha plan` tells it offline).
# An instance is replaced (delete_before_replace: a new instance id on the same ENI and volume)
# for a new AMI or user-data (user_data_replace_on_change), or a new subnet (a new AZ); its
# instance type is changed in place: EC2 stops the instance, modifies it and starts it again.
INSTANCE_REPLACED_BY: tuple[str, ...] = ("ami", "user_data", "availability_zone")
INSTANCE_STOPPED_BY: tuple[str, ...] = ("instance_type",)
# An EBS volume is modified in place (ModifyVolume: larger only, one modification per 6 hours)
# for size, type, IOPS and throughput; a new AZ is a new, empty volume.
VOLUME_REPLACED_BY: tuple[str, ...] = ("availability_zone",)
VOLUME_MODIFIED_BY: tuple[str, ...] = ("size", "type", "iops", "throughput")
VOLUME_MODIFICATION_INTERVAL_HOURS = 6


def restart_key(spec: ClusterSpec) -> str:
    """The values of INSTANCE_STOPPED_BY: a change has EC2 restart the instance, and MemberReady
    waits for the member again before the next one goes."""
    values = {"instance_type": spec.instance_type}
    return ",".join(f"{name}={values[name]}" for name in INSTANCE_STOPPED_BY)


def data_volume(spec: ClusterSpec, member: Member) -> dict[str, Any] | None:
    """The inputs of ``member``'s EBS data volume (None for metal) that the spec decides."""
    if spec.storage.kind != "ebs":
        return None
    storage = spec.storage
    return {"availability_zone": member.availability_zone, "size": storage.size_gib, "type": storage.volume_type,
            "iops": storage.iops, "throughput": storage.throughput_mibps if storage.volume_type == "gp3" else None}


def node_context(spec: ClusterSpec, *, member_ips: Mapping[str, str], bucket: pulumi.Input[str],
                 secret_arn: pulumi.Input[str], ca_cert_pem: pulumi.Input[str],
                 cert_pems: Mapping[str, pulumi.Input[str]], peer_ips: tuple[str, ...] = (),
                 tls_secret_arns: Mapping[str, pulumi.Input[str]] | None = None) -> pulumi.Output[NodeContext]:
    """The NodeContext of the cluster on EC2, once the bucket, secrets and certificates exist."""
    return pulumi.Output.all(bucket=bucket, secret_arn=secret_arn, ca=ca_cert_pem,
                             certs=pulumi.Output.all(**dict(cert_pems)),
                             tls=pulumi.Output.all(**dict(tls_secret_arns or {}))).apply(
        lambda v: ec2_context(spec.region, member_ips=member_ips, bucket=v["bucket"], secret_id=v["secret_arn"],
                              peer_ips=peer_ips, ca_cert_pem=v["ca"], node_cert_pems=v["certs"],
                              tls_secret_ids=v["tls"]))


def node_user_data(spec: ClusterSpec, member: Member, ctx: pulumi.Output[NodeContext]) -> pulumi.Output[str]:
    """Base64 of the member's gzip'd cloud-config (its boot files), by ``pgha.render.user_data``.

    It names only where the member's configuration is, never what it holds: a routine change
    (a parameter, a schedule, a new member) leaves it byte for byte the same.
    """
    from ..render import user_data  # the renderer is optional until a program actually declares nodes

    return ctx.apply(lambda c: user_data(spec, member, c))


class Node(pulumi.ComponentResource):
    """A member's ENI, instance, configuration manifest and (storage kind ebs) data volume + attachment."""

    instance_id: pulumi.Output[str]
    private_ip: str
    availability_zone: str
    # What the next member of the rolling chain waits for.
    ready: list[pulumi.Resource]

    def __init__(self, name: str, *, spec: ClusterSpec, member: Member, subnet_id: pulumi.Input[str],
                 private_ip: str, security_group_id: pulumi.Input[str], instance_profile: pulumi.Input[str],
                 key_arn: pulumi.Input[str], ami: AmiChoice, context: pulumi.Output[NodeContext],
                 bucket: pulumi.Input[str], files: Sequence[pulumi.Resource] = (),
                 after: Sequence[pulumi.Resource] = (), opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:Node", name, None, opts)
        tags = cluster_tags(spec, Name=member.name, **{"pgha:member": member.name})
        volume = None
        volume_args = data_volume(spec, member)
        if volume_args is not None:
            # Created before the instance: the user-data names it, and it outlives every instance.
            volume = aws.ebs.Volume(
                f"{name}-data", **volume_args, encrypted=True, kms_key_id=key_arn, final_snapshot=True,
                tags={**tags, "Name": f"{member.name}-data"},
                opts=child(self, protect=True, retain_on_delete=True))
        user_data_base64 = node_user_data(spec, member, context)
        if volume is not None:
            # pgha-prepare-dirs finds the data volume by its id: part of the configuration.
            context = pulumi.Output.all(context, volume.id).apply(
                lambda v: replace(v[0], data_volume_ids={member.name: v[1]}))
        self.config = upload_node_config(f"{name}", spec=spec, member=member, bucket=bucket, key_arn=key_arn,
                                         ctx=context, after=files, parent=self)
        eni = aws.ec2.NetworkInterface(
            f"{name}-eni", subnet_id=subnet_id, private_ips=[private_ip], security_groups=[security_group_id],
            description=f"pgha {member.name} (fixed address)", tags=tags, opts=child(self))

        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=ami.ami_id,
            instance_type=spec.instance_type,
            primary_network_interface={"network_interface_id": eni.id},
            iam_instance_profile=instance_profile,
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                              "http_put_response_hop_limit": 1, "instance_metadata_tags": "disabled"},
            root_block_device={"volume_type": "gp3", "volume_size": ROOT_VOLUME_GIB, "encrypted": True,
                               "kms_key_id": key_arn, "delete_on_termination": True,
                               "tags": {**tags, "Name": f"{member.name}-root"}},
            user_data_base64=user_data_base64,
            user_data_replace_on_change=True,
            tags=tags,
            opts=child(self, delete_before_replace=True, depends_on=[*after, self.config]))
        booted: list[pulumi.Resource] = [instance]
        if volume is not None:
            # Stopping first lets PostgreSQL shut down cleanly before its disk goes away.
            attachment = aws.ec2.VolumeAttachment(
                f"{name}-data-attachment", device_name=DATA_DEVICE, volume_id=volume.id, instance_id=instance.id,
                stop_instance_before_detaching=True, opts=child(self))
            booted.append(attachment)
        # What the next member's instance waits for: this member published ready from this
        # instance (a replaced one: streaming on the leader's timeline, its etcd member healthy).
        # The member's own reason fails the update if it cannot get there (infra.readiness).
        self.member_ready = MemberReady(
            f"{name}-ready", parameter_name=contract.status_parameter(spec.cluster_name, member.name),
            instance_id=instance.id, region=spec.region, timeout_seconds=READY_TIMEOUT_SECONDS,
            restarted_by=restart_key(spec), opts=child(self, depends_on=booted))
        self.ready = [self.member_ready]

        self.instance_id = instance.id
        self.private_ip = private_ip
        self.availability_zone = member.availability_zone
        self.register_outputs({"instance_id": instance.id, "private_ip": private_ip})


def rolling_order(spec: ClusterSpec) -> list[Member]:
    """Members in the order a change reaches them: replicas first, member 1 (initial primary) last.

    Each member's instance ``depends_on`` the previous member's readiness (``MemberReady``), so
    ``pulumi up`` replaces one instance at a time and starts the next only once the replaced
    member is back: streaming on the leader's timeline within the lag bound, its etcd member
    healthy. The primary may have moved since creation; wherever it is, its member hands
    leadership to the synchronous standby before its instance stops (pgha-handover).
    """
    return sorted(spec.members, key=lambda m: -m.index)
