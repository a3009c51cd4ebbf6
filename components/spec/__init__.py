"""The typed, validated cluster spec and what it derives (members, ports, presets)."""

from . import image
from .catalog import InstanceType, catalog
from .model import (
    CLIENT_PORTS,
    MEMBER_PORTS,
    METRICS_PORTS,
    PORTS,
    SERVICES,
    BackupSpec,
    ClusterSpec,
    KubernetesSpec,
    LogsSpec,
    Member,
    NetworkSpec,
    RestoreSpec,
    StorageSpec,
    certificate_ips,
    member_ip,
)
from .presets import PROFILES, RTO_PLANS, RtoPlan
from .validate import SUPPORTED_POSTGRES_VERSIONS, Problem, SpecError, build_spec, member_ip_problems

__all__ = [
    "BackupSpec", "CLIENT_PORTS", "ClusterSpec", "InstanceType", "KubernetesSpec", "LogsSpec", "MEMBER_PORTS", "METRICS_PORTS", "Member",
    "NetworkSpec", "PORTS", "RestoreSpec", "PROFILES", "Problem", "RTO_PLANS", "RtoPlan", "SERVICES", "SUPPORTED_POSTGRES_VERSIONS",
    "SpecError", "StorageSpec", "build_spec", "certificate_ips", "catalog", "image", "member_ip", "member_ip_problems",
]
