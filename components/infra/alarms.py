"""EC2 status-check alarms per member: EC2 itself brings back a member whose host fails.

* ``StatusCheckFailed_System`` (the host: power, network, hardware) -> EC2's ``recover`` action,
  which moves the instance to new hardware keeping its id, ENI (address), EBS volumes and
  metadata. EC2 supports it only for instance types with automatic recovery and without instance
  store volumes (``InstanceType.auto_recovery``, from DescribeInstanceTypes): a ``metal`` member
  (NVMe instance store) or such a type gets the alarm with no action. Its data lives on the host's
  instance store, which no recovery can carry over; the cluster fails over regardless and
  ``pulumi up`` replaces the member, which rebuilds from a replica or the repository.
* ``StatusCheckFailed_Instance`` (the guest: kernel, network configuration, exhausted memory)
  -> ``reboot``, which every instance type supports and which keeps instance store data.

Patroni has failed the member over long before either action (minutes of failed checks); the
actions only spare an operator bringing the old member back.
"""

from typing import Mapping

import pulumi
import pulumi_aws as aws

from ..spec import ClusterSpec
from .common import child, cluster_tags, partition

# One-minute status checks (free, basic monitoring): act after this many failed minutes in a row.
PERIOD_SECONDS = 60
SYSTEM_FAILED_MINUTES = 2
INSTANCE_FAILED_MINUTES = 3


def ec2_action(spec: ClusterSpec, action: str) -> str:
    """The ARN of an EC2 alarm action (``recover``, ``reboot``) in the cluster's region."""
    return f"arn:{partition(spec.region)}:automate:{spec.region}:ec2:{action}"


def recovers(spec: ClusterSpec) -> bool:
    """Whether EC2 can recover the members: EBS storage on a type with automatic recovery."""
    return spec.storage.kind == "ebs" and spec.instance.auto_recovery


class StatusCheckAlarms(pulumi.ComponentResource):
    """Two alarms per member (member name -> instance id): system check -> recover (where EC2
    supports it), instance check -> reboot."""

    alarm_names: dict[str, list[str]]

    def __init__(self, name: str, *, spec: ClusterSpec, instance_ids: Mapping[str, pulumi.Input[str]],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:StatusCheckAlarms", name, None, opts)
        self.alarm_names = {}
        for member in spec.members:
            instance = instance_ids[member.name]
            tags = cluster_tags(spec, **{"pgha:member": member.name})
            system, guest = f"{member.name}-system-check", f"{member.name}-instance-check"
            aws.cloudwatch.MetricAlarm(
                f"{name}-{member.index}-system", name=system, namespace="AWS/EC2",
                metric_name="StatusCheckFailed_System", dimensions={"InstanceId": instance},
                statistic="Maximum", period=PERIOD_SECONDS, evaluation_periods=SYSTEM_FAILED_MINUTES,
                comparison_operator="GreaterThanOrEqualToThreshold", threshold=1,
                alarm_actions=[ec2_action(spec, "recover")] if recovers(spec) else [],
                alarm_description=(f"pgha {member.name}: its host failed; EC2 recovers the instance onto new "
                                   "hardware" if recovers(spec) else
                                   f"pgha {member.name}: its host failed; no EC2 recovery for this instance "
                                   "type or instance store: the cluster fails over, pulumi up replaces it"),
                tags=tags, opts=child(self))
            aws.cloudwatch.MetricAlarm(
                f"{name}-{member.index}-instance", name=guest, namespace="AWS/EC2",
                metric_name="StatusCheckFailed_Instance", dimensions={"InstanceId": instance},
                statistic="Maximum", period=PERIOD_SECONDS, evaluation_periods=INSTANCE_FAILED_MINUTES,
                comparison_operator="GreaterThanOrEqualToThreshold", threshold=1,
                alarm_actions=[ec2_action(spec, "reboot")],
                alarm_description=f"pgha {member.name}: its operating system stopped answering; EC2 reboots it",
                tags=tags, opts=child(self))
            self.alarm_names[member.name] = [system, guest]
        self.register_outputs({"alarm_names": self.alarm_names})
