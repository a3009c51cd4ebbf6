"""One rehearsal member: the node image booted for real, the way an EC2 instance boots.

A member is a systemd-nspawn container of the image (``pgha.local.image``): systemd is PID 1,
cloud-init boots it from a NoCloud seed holding exactly the user-data ``render`` gives EC2, and
it lives in the network namespace of its own address (``pgha.local.netns``). What EC2 gives an
instance from outside its user-data, the machine is given from outside too:

* identity and instance-role credentials: an IMDSv2 service on 169.254.169.254 inside its
  namespace (``pgha.local.imds``);
* its data volume: a loop device over a file that outlives the instance, seen inside under
  the name EC2's NVMe driver gives it (``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...``),
  or for metal an instance-store device discarded whenever the instance stops (a stop/start or a
  replacement: EC2 wipes instance stores then);
* a fresh instance id per instance, so cloud-init runs the user-data once per instance.

The image stays read-only: each instance is a new overlay upper layer over it, so replacing an
instance is a new upper layer with the same volumes.
"""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import netns as netns_mod
from . import procfs
from .imds import ADDRESS as IMDS_ADDRESS
from .process import Daemon

EBS_BY_ID = "nvme-Amazon_Elastic_Block_Store_"
INSTANCE_STORE_BY_ID = "nvme-Amazon_EC2_NVMe_Instance_Storage_"
SEED_DIR = "var/lib/cloud/seed/nocloud"
# The platform's cloud-init settings (EC2's AMIs carry theirs): the NoCloud seed, nothing probed;
# the default user of Debian's EC2 AMIs (`admin`, passwordless sudo; Debian's package says
# `debian`). cloud-init's own defaults do the rest as on EC2: each instance makes its SSH host
# keys at first boot and prints their fingerprints to the console.
PLATFORM_CLOUD_CFG = """datasource_list: [NoCloud, None]
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, audio, cdrom, dialout, dip, floppy, plugdev, sudo, video]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""


def cgroup2_root() -> Path:
    """Where the host mounts the cgroup2 hierarchy (/sys/fs/cgroup, or /sys/fs/cgroup/unified
    on a host with cgroup v1 controllers)."""
    for _, mount_point, fs_type in procfs.mounts():
        if fs_type == "cgroup2":
            return Path(mount_point)
    raise MachineError("no cgroup2 hierarchy is mounted on this host (systemd-nspawn needs one)")


class MachineError(RuntimeError):
    """A machine could not be booted, reached or stopped; the message says which and why."""


@dataclass(frozen=True)
class Volume:
    """A block device handed to the machine: a file on the host behind a loop device."""

    file: Path
    size_gib: int
    # The name the device has inside under /dev/disk/by-id (what EC2's NVMe driver names it).
    by_id: str
    # EBS volumes outlive the instance; an instance store is blank at every start of it.
    persistent: bool = True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _read_pid(path: Path) -> int | None:
    """The pid in ``path`` while that process (same start time) lives."""
    try:
        pid, started = (int(word) for word in path.read_text().split()[:2])
    except (OSError, ValueError):
        return None
    return pid if procfs.start_time(pid) == started else None


class Machine:
    """Boot, reach and stop one member's container."""

    def __init__(self, name: str, home: Path, *, image_root: Path, netns: str, volumes: Sequence[Volume] = (),
                 relay_ports: Sequence[int] = (), log: Callable[[str], None] = print):
        self.name = name
        self.home = Path(home)
        self.image_root = Path(image_root)
        self.netns = netns
        self.volumes = list(volumes)
        self.log = log
        # Outside the machine, in its namespace: IMDS, and a relay per host port it must reach as
        # localhost:<port> (the AWS endpoint: pgBackRest checks its TLS name, localhost).
        # IMDS binds inside the namespace, so the whole process lives there (ip netns exec execs it).
        self.helpers = [Daemon("imds", ["ip", "netns", "exec", netns, sys.executable, "-m", "pgha.local.imds",
                                        "--facts", str(self.home / "imds.json")], self.home)]
        self.helpers += [Daemon(f"relay-{port}", [sys.executable, "-m", "pgha.local.netns", "relay", "--netns", netns,
                                                  "--port", str(port)], self.home) for port in relay_ports]

    # -- where things are ------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The merged overlay: the machine's root filesystem as the host sees it when it is down."""
        return self.home / "root"

    @property
    def fs(self) -> Path:
        """The machine's filesystem as the machine sees it (its mounts included), while it runs:
        a symlink to /proc/<PID 1>/root."""
        return self.home / "fs"

    @property
    def console_log(self) -> Path:
        return self.home / "console.log"

    def _pidfile(self, what: str) -> Path:
        return self.home / f"{what}.pid"

    @property
    def instance(self) -> dict[str, Any]:
        path = self.home / "instance.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # -- state -----------------------------------------------------------------------------------
    def nspawn_pid(self) -> int | None:
        return _read_pid(self._pidfile("nspawn"))

    def leader(self) -> int | None:
        """Host PID of the machine's PID 1 (systemd), or None when it is not running."""
        nspawn = self.nspawn_pid()
        if nspawn is None:
            return None
        for child in procfs.children(nspawn):
            if procfs.comm(child) == "systemd":
                return child
            # nspawn may keep an intermediate stub process in between.
            for grandchild in procfs.children(child):
                if procfs.comm(grandchild) == "systemd":
                    return grandchild
        return None

    def running(self) -> bool:
        return self.leader() is not None

    # -- lifecycle -------------------------------------------------------------------------------
    def boot(self, *, user_data: bytes, instance_id: str, hostname: str, imds_facts: dict[str, Any],
             trusted_ca_pem: str = "", timeout: float = 60.0) -> None:
        """Start the machine: the instance's overlay, seed and volumes, its IMDS, then systemd.

        A new ``instance_id`` is a new instance: a fresh overlay upper layer (the image's state,
        not the last instance's), so cloud-init runs the user-data as on a new EC2 instance."""
        if self.running():
            raise MachineError(f"{self.name} is already running")
        self.home.mkdir(parents=True, exist_ok=True)
        self._start_instance(instance_id)
        self._mount_overlay()
        seed = self.root / SEED_DIR
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
        (seed / "user-data").write_bytes(user_data)
        cfg = self.root / "etc/cloud/cloud.cfg.d/90-pgha-platform.cfg"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(PLATFORM_CLOUD_CFG)
        if trusted_ca_pem:
            self._trust(trusted_ca_pem)
        (self.home / "instance.json").write_text(json.dumps({"instance_id": instance_id, "hostname": hostname}))
        (self.home / "imds.json").write_text(json.dumps({**imds_facts, "instance_id": instance_id,
                                                         "hostname": hostname}, indent=1))
        self._start_helpers()
        binds = []
        for volume in self.volumes:
            device = self._attach(volume)
            binds += [f"--bind={device}", f"--bind={device}:/dev/disk/by-id/{volume.by_id}",
                      f"--property=DeviceAllow={device} rwm"]
        argv = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", f"--machine={self.name}",
                f"--hostname={hostname}", "-D", str(self.root), f"--network-namespace-path={netns_mod.NETNS_DIR}/"
                f"{self.netns}", "--console=read-only", "--kill-signal=SIGRTMIN+3",
                # Root on EC2 administers its own network: the IMDS filter (pgha-imds-filter) loads
                # an nftables table. nspawn grants this only with --private-network, not with a
                # namespace of ours; it reaches no namespace but the member's own.
                "--capability=CAP_NET_ADMIN", *binds]
        cgroup = self._new_cgroup()
        with open(self.console_log, "ab") as console:
            # systemd inside gets a cgroup2 tree of its own (nspawn: the payload under ours), as on
            # EC2; on a host with cgroup v1 it would otherwise never hear that a unit's cgroup
            # emptied, and wait out TimeoutStopSec whenever a stop left a process for a moment.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
                                    preexec_fn=lambda: (cgroup / "cgroup.procs").write_text("0\n"))
        self._pidfile("nspawn").write_text(f"{proc.pid} {procfs.start_time(proc.pid)}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                if self.fs.is_symlink() or self.fs.exists():
                    self.fs.unlink()
                self.fs.symlink_to(f"/proc/{leader}/root")
                return
            if proc.poll() is not None:
                raise MachineError(f"{self.name}: systemd-nspawn exited with {proc.returncode}:\n"
                                   + self._console_tail())
            time.sleep(0.1)
        raise MachineError(f"{self.name}: no systemd inside after {timeout:.0f}s:\n" + self._console_tail())

    @property
    def cgroup(self) -> Path:
        """The machine's cgroup2 directory on the host (its processes, and cgroup.kill). Named by
        its home too: two local clusters of one stack on a host have members of the same name,
        and a kill of one killed the other's (seen 2026-12-01: a drill run beside the tests)."""
        home = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:10]
        return cgroup2_root() / "pgha" / f"{self.name}.{home}"

    def _new_cgroup(self) -> Path:
        self._remove_cgroup()
        self.cgroup.mkdir(parents=True, exist_ok=True)
        return self.cgroup

    def _remove_cgroup(self) -> None:
        """rmdir the machine's cgroup tree, deepest first (a cgroup holding processes stays)."""
        if not self.cgroup.is_dir():
            return
        for path in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            self.cgroup.rmdir()

    def _trust(self, ca_pem: str) -> None:
        """Put ``ca_pem`` in the machine's trust store, as an AMI carries the roots that sign AWS's
        endpoints: the system bundle boto3 and pgBackRest read, and ca-certificates' local
        directory, so a regenerated bundle keeps it."""
        local = self.root / "usr/local/share/ca-certificates/pgha-aws.crt"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(ca_pem)
        bundle = self.root / "etc/ssl/certs/ca-certificates.crt"
        system = (self.image_root / "etc/ssl/certs/ca-certificates.crt").read_text()
        bundle.write_text(system + ca_pem)

    def _console_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console output)"

    def _start_instance(self, instance_id: str) -> None:
        """What EC2 does to the disks of an instance that starts: a new instance gets a new root
        volume (upper layer); a stopped one started again keeps its root volume, and either gets
        blank instance stores (a stop/start wipes them, as a termination does)."""
        if self.instance.get("instance_id") != instance_id:
            self._new_instance(instance_id)
        else:
            self._discard_instance_stores()

    def _new_instance(self, instance_id: str) -> None:
        """Discard the last instance's upper layer and its instance-store volumes."""
        self._umount_overlay()
        for part in ("upper", "work"):
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.home / part)], check=True)
        self._discard_instance_stores()
        self.log(f"{self.name}: new instance {instance_id}")

    def _discard_instance_stores(self) -> None:
        for volume in self.volumes:
            if not volume.persistent:
                self._detach(volume)
                volume.file.unlink(missing_ok=True)

    def discard_volumes(self) -> None:
        """Every volume blank again (a lost EBS volume, a metal instance's wiped stores); the
        machine must be off. The next boot attaches new, empty files."""
        if self.running():
            raise MachineError(f"{self.name}: cannot discard the volumes of a running machine")
        for volume in self.volumes:
            self._detach(volume)
            volume.file.unlink(missing_ok=True)

    def _mount_overlay(self) -> None:
        for part in ("upper", "work", "root"):
            (self.home / part).mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.root):
            return
        options = f"lowerdir={self.image_root},upperdir={self.home / 'upper'},workdir={self.home / 'work'}"
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise MachineError(f"{self.name}: cannot mount its overlay: {proc.stderr.strip()}")

    def _umount_overlay(self) -> None:
        if os.path.ismount(self.root):
            subprocess.run(["umount", str(self.root)], check=True)

    def _attach(self, volume: Volume) -> str:
        """The loop device of ``volume`` (the same one while attached), creating the file if new."""
        if not volume.file.exists():
            volume.file.parent.mkdir(parents=True, exist_ok=True)
            with open(volume.file, "wb") as out:
                out.truncate(volume.size_gib * 1024 ** 3)  # sparse, like a fresh EBS volume: blank
        found = subprocess.run(["losetup", "-j", str(volume.file), "-O", "NAME", "-n"], capture_output=True,
                               text=True).stdout.split()
        if found:
            return found[0]
        proc = subprocess.run(["losetup", "-f", "--show", str(volume.file)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise MachineError(f"{self.name}: cannot attach {volume.file}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def _detach(self, volume: Volume) -> None:
        found = subprocess.run(["losetup", "-j", str(volume.file), "-O", "NAME", "-n"], capture_output=True,
                               text=True).stdout.split()
        for device in found:
            subprocess.run(["losetup", "-d", device], capture_output=True)

    def _start_helpers(self) -> None:
        netns_mod.add_address(self.netns, f"{IMDS_ADDRESS}/32", "lo")
        for daemon in self.helpers:
            daemon.start()

    def _stop_helpers(self) -> None:
        for daemon in self.helpers:
            daemon.stop()

    def poweroff(self, timeout: float = 90.0) -> None:
        """An orderly shutdown (systemd stops every unit), as `aws ec2 stop-instances` does."""
        nspawn = self.nspawn_pid()
        if nspawn is not None:
            os.kill(nspawn, signal.SIGTERM)
            if not self._wait_gone(nspawn, timeout):
                self.log(f"{self.name}: no clean shutdown after {timeout:.0f}s; killing it")
                self.kill()
        self._after_stop()

    def kill(self) -> None:
        """The instance lost at once: every process of the machine killed by the kernel in one
        stroke (cgroup.kill), as when EC2 loses the host."""
        payload = self.cgroup / "payload" / "cgroup.kill"  # nspawn's container, not nspawn itself
        if payload.exists():
            payload.write_text("1\n")
        for pid in self.pids():  # a kernel before 5.14 has no cgroup.kill
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        nspawn = self.nspawn_pid()
        if nspawn is not None:
            self._wait_gone(nspawn, 30)
        self._after_stop()

    def _after_stop(self) -> None:
        self._stop_helpers()
        self._remove_cgroup()
        self._pidfile("nspawn").unlink(missing_ok=True)
        if self.fs.is_symlink():
            self.fs.unlink()

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        return not _pid_alive(pid)

    def destroy(self) -> None:
        """Terminate the instance and delete it, the volumes included (``pulumi destroy``)."""
        if self.running():
            self.kill()
        self._stop_helpers()
        self._umount_overlay()
        for volume in self.volumes:
            self._detach(volume)
            volume.file.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.home)], check=True)

    # -- inside ----------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, user: str | None = None, timeout: float = 120.0, check: bool = False,
            input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the running machine (its namespaces, its root), as ``user``, with
        a clean environment plus ``env`` (never the host's)."""
        leader = self.leader()
        if leader is None:
            raise MachineError(f"{self.name} is not running")
        prefix = ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "--"]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        clean = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "HOME": "/var/lib/postgresql" if user == "postgres" else "/root", **(env or {})}
        proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, errors="replace", timeout=timeout,
                              input=input, env=clean, cwd="/")
        if check and proc.returncode != 0:
            raise MachineError(f"{self.name}: {' '.join(argv)} exited with {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def systemctl(self, *args: str, check: bool = False, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def wait_booted(self, timeout: float = 300.0) -> dict[str, Any]:
        """Wait for cloud-init to finish the user-data; its status, or its own errors raised."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not self.running():
                raise MachineError(f"{self.name} stopped while booting:\n{self._console_tail()}")
            proc = self.run(["cloud-init", "status", "--format", "json"], timeout=30)
            try:
                status = json.loads(proc.stdout)
            except ValueError:
                status = {}
            if status.get("status") in ("done", "error", "degraded done", "disabled"):
                break
            time.sleep(0.5)
        else:
            raise MachineError(f"{self.name}: cloud-init still {status.get('status', 'starting')} after "
                               f"{timeout:.0f}s")
        if status.get("status") != "done" or status.get("errors"):
            raise MachineError(f"{self.name}: cloud-init reports {status.get('status')}: "
                               + "; ".join(status.get("errors") or []) + self._bootstrap_tail())
        return status

    def _bootstrap_tail(self, lines: int = 20) -> str:
        proc = self.run(["tail", "-n", str(lines), "/var/log/pgha/bootstrap.log"], timeout=10)
        return f"\n--- /var/log/pgha/bootstrap.log ---\n{proc.stdout}" if proc.stdout else ""

    def host_pid(self, pid_inside: int) -> int | None:
        """The host PID of a process known inside the machine by ``pid_inside``."""
        leader = self.leader()
        if leader is None:
            return None
        if pid_inside == 1:
            return leader
        for pid in self.pids():
            inside = procfs.ns_pids(pid)
            if len(inside) > 1 and inside[-1] == pid_inside:
                return pid
        return None

    def pids(self) -> list[int]:
        """Host PIDs of every process of the machine (PID 1 and its descendants)."""
        leader = self.leader()
        if leader is None:
            return []
        return procfs.tree(leader)
