"""A stack's monthly cost from the dated price table (``pgha/data/prices.yaml``), offline.

Only what the spec decides is counted: the members' instances and data volumes, the NAT
gateways of a created VPC, the interface endpoints pgha creates, the NLB and an estimate of the backup bucket. A price the table
lacks is reported as missing (and the total marked incomplete), never guessed.
"""

import functools
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

import yaml

from ..infra import vpc_endpoints
from ..infra.node import data_volume
from ..render.pgparams import data_disk_gib
from ..spec import ClusterSpec
from ..spec.schedule import longest_interval

# Backup size estimate: the data volume full, each full backup at this fraction of it
# (pgBackRest's lz4/zstd on typical table data), WAL and diffs not counted.
BACKUP_COMPRESSION_RATIO = 0.35


@dataclass(frozen=True)
class PriceTable:
    """``prices.yaml``: the date it was written, where it came from, each region's prices."""

    as_of: str
    source: str
    hours_per_month: int
    regions: Mapping[str, Mapping[str, Any]]


@functools.cache
def price_table() -> PriceTable:
    raw = yaml.safe_load(resources.files("pgha.data").joinpath("prices.yaml").read_text())
    return PriceTable(as_of=str(raw["as_of"]), source=raw["source"], hours_per_month=int(raw["hours_per_month"]),
                      regions=raw["regions"])


@dataclass(frozen=True)
class CostLine:
    """One item of the bill: what, how many, USD a month (None: the table has no price)."""

    item: str
    quantity: str
    monthly_usd: float | None


@dataclass(frozen=True)
class Cost:
    lines: tuple[CostLine, ...]
    as_of: str
    region: str
    missing: tuple[str, ...] = field(default=())

    @property
    def total_usd(self) -> float:
        """The sum of the priced lines (``complete`` says whether that is all of it)."""
        return round(sum(line.monthly_usd or 0.0 for line in self.lines), 2)

    @property
    def complete(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"region": self.region, "prices_as_of": self.as_of, "total_usd": self.total_usd,
                "complete": self.complete, "missing": list(self.missing),
                "lines": [{"item": li.item, "quantity": li.quantity, "monthly_usd": li.monthly_usd}
                          for li in self.lines]}


def fulls_retained(spec: ClusterSpec) -> int:
    """Full backups the repository holds at once: one per full interval over the retention
    window, plus the one being replaced."""
    interval = longest_interval(spec.backup.full_schedule)
    days = interval.total_seconds() / 86400 if interval else spec.backup.retention_days
    return math.ceil(spec.backup.retention_days / max(days, 1 / 24)) + 1


def backup_gb(spec: ClusterSpec) -> float:
    """Estimated S3 Standard GB of the repository (an upper bound on data: the volume full)."""
    return round(data_disk_gib(spec) * BACKUP_COMPRESSION_RATIO * fulls_retained(spec), 1)


def monthly_cost(spec: ClusterSpec) -> Cost:
    """The spec's monthly on-demand cost in its region, by the price table."""
    table = price_table()
    hours = table.hours_per_month
    prices = table.regions.get(spec.region)
    members = len(spec.members)
    if prices is None:
        return Cost(lines=(), as_of=table.as_of, region=spec.region,
                    missing=(f"region {spec.region} (the table has {', '.join(sorted(table.regions))})",))
    lines: list[CostLine] = []
    missing: list[str] = []

    hourly = prices["instance_hour"].get(spec.instance_type)
    if hourly is None:
        missing.append(f"instance type {spec.instance_type} in {spec.region}")
    lines.append(CostLine("EC2 instances", f"{members} x {spec.instance_type} x {hours} h",
                          None if hourly is None else round(hourly * hours * members, 2)))

    volume = data_volume(spec, spec.members[0])
    if volume is not None:
        ebs = prices["ebs"].get(volume["type"])
        if ebs is None:
            missing.append(f"EBS {volume['type']} in {spec.region}")
            lines.append(CostLine(f"EBS {volume['type']}", f"{members} x {volume['size']} GiB", None))
        else:
            per_volume = volume["size"] * ebs["gb_month"]
            extra_iops = max(0, (volume["iops"] or 0) - ebs.get("free_iops", 0))
            per_volume += extra_iops * ebs.get("iops_month", 0.0)
            if volume["throughput"] is not None:
                per_volume += max(0, volume["throughput"] - ebs["free_mibps"]) * ebs["mibps_month"]
            quantity = f"{members} x {volume['size']} GiB, {volume['iops']} IOPS" + (
                f", {volume['throughput']} MiB/s" if volume["throughput"] is not None else "")
            lines.append(CostLine(f"EBS {volume['type']}", quantity, round(per_volume * members, 2)))

    if spec.nat_gateway_count:
        lines.append(CostLine("NAT gateway", f"{spec.nat_gateway_count} x {hours} h",
                              round(prices["nat_gateway_hour"] * hours * spec.nat_gateway_count, 2)))
    if spec.network.vpc_endpoints == "create":
        endpoints = len(vpc_endpoints.INTERFACE_SERVICES) * len(vpc_endpoints.endpoint_subnet_indexes(spec))
        lines.append(CostLine("VPC interface endpoints", f"{endpoints} x {hours} h: "
                              f"{', '.join(vpc_endpoints.INTERFACE_SERVICES)} in each member's AZ",
                              round(prices["interface_endpoint_hour"] * hours * endpoints, 2)))
    lines.append(CostLine("NLB", f"1 x {hours} h", round(prices["nlb_hour"] * hours, 2)))
    gb = backup_gb(spec)
    lines.append(CostLine("S3 Standard (backups, estimate)",
                          f"{gb} GB ({fulls_retained(spec)} fulls at {BACKUP_COMPRESSION_RATIO:.0%} of "
                          f"{data_disk_gib(spec)} GiB)", round(gb * prices["s3_standard_gb_month"], 2)))
    return Cost(lines=tuple(lines), as_of=table.as_of, region=spec.region, missing=tuple(missing))
