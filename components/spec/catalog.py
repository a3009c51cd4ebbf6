"""The instance catalog: what pgha knows about each EC2 instance type it accepts."""

import functools
from dataclasses import dataclass
from importlib import resources

import yaml


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type as the catalog describes it."""

    name: str
    arch: str
    instance_class: str
    vcpu: int
    memory_gib: int
    nvme_count: int = 0
    nvme_gib: int = 0
    auto_recovery: bool = False

    @property
    def has_nvme(self) -> bool:
        return self.nvme_count > 0

    @property
    def nvme_total_gib(self) -> int:
        return self.nvme_count * self.nvme_gib


@functools.cache
def catalog() -> dict[str, InstanceType]:
    """Every instance type in ``pgha/data/instances.yaml`` (scripts/instance_catalog.py writes it
    from AWS's DescribeInstanceTypes), by name."""
    text = resources.files("pgha.data").joinpath("instances.yaml").read_text()
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # ~1,000 types: C is 5x faster
    return {
        name: InstanceType(
            name=name,
            arch=entry["arch"],
            instance_class=entry["class"],
            vcpu=int(entry["vcpu"]),
            memory_gib=int(entry["memory_gib"]),
            nvme_count=int(entry.get("nvme_count", 0)),
            nvme_gib=int(entry.get("nvme_gib", 0)),
            auto_recovery=bool(entry.get("auto_recovery", False)),
        )
        for name, entry in raw.items()
    }


# The memory-optimised default of each arch, per storage kind (metal needs instance store).
DEFAULT_INSTANCE_TYPE: dict[tuple[str, str], str] = {
    ("arm64", "ebs"): "r8g.large",
    ("arm64", "metal"): "r7gd.large",
    ("x86_64", "ebs"): "r7i.large",
    ("x86_64", "metal"): "r6id.large",
}
