"""The instance catalog is AWS's DescribeInstanceTypes data, regenerated, not typed by hand."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from pgha.spec import SpecError, build_spec
from pgha.spec.catalog import catalog

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "instance_catalog.py"
AZS = ["us-east-1a", "us-east-1b", "us-east-1c"]


def test_the_committed_catalog_is_the_generated_one() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_current_families_are_accepted_with_aws_figures() -> None:
    # r8gd.large: refused as unknown by the hand-kept list.
    spec = build_spec({"instanceType": "r8gd.large", "storage": {"kind": "metal"}}, stack="dev",
                      region="us-east-1", region_azs=AZS)
    itype = spec.instance
    assert (itype.arch, itype.vcpu, itype.memory_gib, itype.nvme_count, itype.nvme_gib) == ("arm64", 2, 16, 1, 118)
    assert catalog()["r7gd.large"].has_nvme  # the arm64 metal default, "previous generation" to AWS now


def test_what_pgha_does_not_run_stays_out() -> None:
    wanted = runpy.run_path(str(SCRIPT))["wanted"]
    base = {"CurrentGeneration": True, "Hypervisor": "nitro", "BareMetal": False,
            "ProcessorInfo": {"SupportedArchitectures": ["arm64"]}}
    assert wanted({**base, "InstanceType": "r8g.large"}) == "memory"
    assert wanted({**base, "InstanceType": "g5g.xlarge"}) is None  # accelerated
    assert wanted({**base, "InstanceType": "r8g.metal-24xl"}) is None  # bare metal size
    assert wanted({**base, "InstanceType": "t4g.micro"}) is None  # too small for a member
    assert wanted({**base, "InstanceType": "t4g.medium"}) == "burstable"
    assert wanted({**base, "InstanceType": "m4.large", "Hypervisor": "xen"}) is None
    for name in ("g5g.xlarge", "p4d.24xlarge", "t4g.micro", "m4.large"):
        assert name not in catalog()
    with pytest.raises(SpecError):
        build_spec({"instanceType": "p4d.24xlarge"}, stack="dev", region="us-east-1", region_azs=AZS)
