"""The EC2 boot-time storage script (pgha-host) run for real on loop devices.

It must format only a blank device, keep the data of a device that has some (a reboot, a
replaced instance re-attaching its EBS volume), refuse a device holding anything else, and
grow the filesystem when the volume grew. NVMe RAID0 over several devices needs the md driver,
which this machine lacks; the one-device metal path runs here.
"""

import os
import subprocess
from pathlib import Path

import pytest

from pgha.render import render_node
from render_fixtures import ec2_context, make_spec

MiB = 1024 * 1024


class Loop:
    """A file-backed block device."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.write_bytes(b"")
        os.truncate(path, size)
        self.device = subprocess.run(["losetup", "-f", "--show", str(path)], check=True, capture_output=True,
                                     text=True).stdout.strip()

    def grow(self, size: int) -> None:
        os.truncate(self.path, size)
        subprocess.run(["losetup", "-c", self.device], check=True)

    def detach(self) -> None:
        subprocess.run(["losetup", "-d", self.device], check=False)


@pytest.fixture
def world(tmp_path):
    """Fake by-id directory, fstab and mount point; every mount and loop device undone after."""
    loops: list[Loop] = []
    by_id, mount = tmp_path / "by-id", tmp_path / "data"
    by_id.mkdir()
    (tmp_path / "fstab").write_text("# test fstab\n")
    env = {**os.environ, "PGHA_BY_ID": str(by_id), "PGHA_FSTAB": str(tmp_path / "fstab"),
           "PGHA_DATA_MOUNT": str(mount), "PGHA_DEVICE_WAIT": "5", "PGHA_STORAGE_ONLY": "1"}

    def loop(size: int = 320 * MiB) -> Loop:
        loops.append(Loop(tmp_path / f"disk{len(loops)}.img", size))
        return loops[-1]

    yield {"tmp": tmp_path, "by_id": by_id, "mount": mount, "env": env, "loop": loop}
    subprocess.run(["umount", str(mount)], capture_output=True)
    for item in loops:
        item.detach()


def host_script(tmp_path: Path, values: dict) -> tuple[Path, str]:
    spec = make_spec(values)
    ctx = ec2_context(spec)
    member = spec.members[0]
    script = next(f for f in render_node(spec, member, ctx) if f.path.endswith("/pgha-host"))
    path = tmp_path / "pgha-host"
    path.write_text(script.content)
    path.chmod(0o755)
    return path, ctx.data_volume_ids.get(member.name, "")


def run(script: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=120)


def uuid_of(device: str) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", device], capture_output=True, text=True).stdout.strip()


def test_ebs_volume_formatted_once_then_kept_across_reboots_and_grown(world):
    script, volume = host_script(world["tmp"], {"storage": {"kind": "ebs", "sizeGiB": 20}})
    disk = world["loop"]()
    (world["by_id"] / f"nvme-Amazon_Elastic_Block_Store_{volume.replace('-', '')}").symlink_to(disk.device)

    first = run(script, world["env"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "formatting blank device" in first.stdout
    options = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(world["mount"])], capture_output=True,
                             text=True).stdout
    assert options.startswith("xfs") and "noatime" in options
    uuid = uuid_of(disk.device)
    (world["mount"] / "PG_VERSION").write_text("17\n")

    # A reboot (or a replacement instance re-attaching the volume): same data, no second format.
    subprocess.run(["umount", str(world["mount"])], check=True)
    disk.grow(640 * MiB)
    second = run(script, world["env"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert "formatting" not in second.stdout
    assert uuid_of(disk.device) == uuid
    assert (world["mount"] / "PG_VERSION").read_text() == "17\n"
    fstab = [line for line in (world["tmp"] / "fstab").read_text().splitlines() if str(world["mount"]) in line]
    assert fstab == [f"UUID={uuid} {world['mount']} xfs defaults,noatime,nofail 0 2"]
    size = int(subprocess.run(["findmnt", "-n", "-b", "-o", "SIZE", str(world["mount"])], capture_output=True,
                              text=True).stdout)
    assert size > 500 * MiB, "the filesystem did not grow with the volume"


def test_a_device_holding_another_filesystem_is_refused_untouched(world):
    script, volume = host_script(world["tmp"], {"storage": {"kind": "ebs", "sizeGiB": 20}})
    disk = world["loop"]()
    subprocess.run(["mkfs.ext4", "-q", "-F", disk.device], check=True)
    before = uuid_of(disk.device)
    (world["by_id"] / f"nvme-Amazon_Elastic_Block_Store_{volume.replace('-', '')}").symlink_to(disk.device)
    result = run(script, world["env"])
    assert result.returncode == 1
    assert f"refusing to use {disk.device}: it holds ext4" in result.stdout
    assert uuid_of(disk.device) == before and not os.path.ismount(world["mount"])


def test_a_volume_that_never_attaches_fails_clearly(world):
    script, volume = host_script(world["tmp"], {"storage": {"kind": "ebs", "sizeGiB": 20}})
    result = run(script, world["env"])
    assert result.returncode == 1
    assert f"data volume {volume} is not attached after 5s" in result.stdout


def test_metal_single_nvme_device_is_used_directly(world):
    script, _ = host_script(world["tmp"], {"instanceType": "i4g.large", "storage": {"kind": "metal"}})
    disk = world["loop"]()
    (world["by_id"] / "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0123456789").symlink_to(disk.device)
    result = run(script, world["env"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.path.ismount(world["mount"])


def test_metal_with_missing_devices_stops_before_touching_any(world):
    script, _ = host_script(world["tmp"], {"instanceType": "i4g.8xlarge", "storage": {"kind": "metal"}})
    disk = world["loop"]()
    (world["by_id"] / "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0000000001").symlink_to(disk.device)
    result = run(script, world["env"])
    assert result.returncode == 1 and "expected 2 instance-store devices, found 1" in result.stdout
    assert uuid_of(disk.device) == ""
