"""Small helpers the infra modules share: tags, ARN partitions, port ranges, option plumbing."""

from typing import Iterable, Mapping

import pulumi

from ..render.context import dns_suffix
from ..spec import ClusterSpec

__all__ = ["DEBIAN_OWNER_ID", "child", "cluster_tags", "dns_suffix", "invoke_options",
           "partition", "port_ranges"]

# AWS's own ids used by more than one module.
DEBIAN_OWNER_ID = "136693071363"


def cluster_tags(spec: ClusterSpec, **extra: str) -> dict[str, str]:
    """Tags every pgha resource carries, plus ``extra`` (e.g. Name, pgha:member)."""
    tags = {"pgha:cluster": spec.cluster_name, "pgha:stack": spec.stack, "pgha:managed-by": "pulumi"}
    tags.update(extra)
    return tags


def partition(region: str) -> str:
    """The ARN partition of a region (policies must not hard-code ``aws``)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Merge ports into inclusive ranges of consecutive ports (fewer rules, same exposure)."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if ranges and ranges[-1][1] + 1 == port:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def child(parent: pulumi.Resource, **options: object) -> pulumi.ResourceOptions:
    """Resource options of a child of ``parent`` (providers are inherited through the parent)."""
    return pulumi.ResourceOptions(parent=parent, **options)  # type: ignore[arg-type]


def invoke_options(opts: pulumi.ResourceOptions | None) -> pulumi.InvokeOptions | None:
    """Invoke options that use the aws provider given to the component, if any.

    Invokes made before the component exists cannot name it as parent, so an explicit
    provider has to be forwarded by hand.
    """
    if opts is None:
        return None
    provider = opts.provider
    if provider is None and opts.providers:
        providers = opts.providers
        if isinstance(providers, Mapping):
            provider = providers.get("aws")
        else:
            provider = next((p for p in providers if getattr(p, "package", None) == "aws"), None)
    return pulumi.InvokeOptions(provider=provider) if provider is not None else None
