"""Stack programs: one per ``pgha:stackKind``, each a function of the validated config."""

from typing import Any, Callable, Mapping

from ..spec import ClusterSpec, build_spec
from . import branch, regional

# stackKind -> the program that declares that kind of stack from a validated spec.
REGISTRY: dict[str, Callable[[ClusterSpec], object]] = {
    "regional": regional.deploy,
    "branch": branch.deploy,
}


def deploy(config_values: Mapping[str, Any], *, stack: str, region: str | None = None,
           region_azs: tuple[str, ...] | None = None) -> None:
    """Validate ``config_values`` (``pgha:`` keys without the prefix) and declare the stack.

    Raises ``SpecError`` listing every problem before anything is declared. Without
    ``region``/``region_azs`` they are read from the aws provider.
    """
    offerings = None
    if region is None or region_azs is None:
        from ..infra import resolve_offerings, resolve_region

        region, region_azs = resolve_region()
        offerings = resolve_offerings(region_azs)
    spec = build_spec(config_values, stack=stack, region=region, region_azs=region_azs, style="config",
                      offerings=offerings)
    REGISTRY[spec.stack_kind](spec)
