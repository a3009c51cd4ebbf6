"""The rehearsal of EC2: a stack's members booted from the node image, with the user-data EC2 gets.

Every member is a machine (``pgha.local.machine``) of the Debian 13 node image, in a network
namespace with the address it would have, booted by cloud-init from exactly the gzip'd
user-data ``pgha.render.user_data_bytes`` produces for it with EC2's layout. Real systemd runs
the real units. Around the members, what AWS provides, stood in for the way AWS provides it:

* S3 and Secrets Manager: one moto server behind a TLS terminator (``pgha.local.s3``), reached
  from every namespace through a relay on ``localhost``; the node agent's big files are
  uploaded to the bucket and the cluster secret is created, as ``pulumi up`` does;
* identity and instance-role credentials: IMDSv2 in each namespace (``pgha.local.imds``), so
  boto3 and pgBackRest's ``repo1-s3-key-type=auto`` work as on EC2;
* data volumes: loop-device files that outlive instances, under EBS's device names.

The rendered files differ from EC2's only in what the context carries (addresses, the bucket
and secret names, the endpoint and its CA); no template knows where it runs.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from ..render import EC2_LAYOUT, Layout, NodeContext, bucket_files, unit_names, user_data_bytes
from ..spec import ClusterSpec, Member
from . import image as image_mod
from . import netns as netns_mod
from .cluster import LocalCluster, LocalClusterError, Node, _write_private
from .machine import EBS_BY_ID, INSTANCE_STORE_BY_ID, Machine, MachineError, Volume

DEFAULT_ROOT = Path("/srv/pgha-rehearsal")
DEFAULT_PREFIX = "10.214.0."
# The node's view of AWS: the CA of the moto terminator is the cluster CA, which user-data carries.
NODE_CA_FILE = EC2_LAYOUT.tls + "/ca.crt"
ACCOUNT_ID = "123456789012"
# Per-member data volume of the rehearsal (a sparse file: only what is written takes space).
VOLUME_GIB = 8


def volume_id(cluster: str, member: str) -> str:
    """A stable EBS-style volume id for a member's data volume (vol- and 17 hex digits)."""
    return "vol-" + hashlib.sha256(f"{cluster}/{member}".encode()).hexdigest()[:17]


@dataclass(frozen=True)
class MachineUnits:
    """A machine's systemd units, with the calls the drills and backups make of a supervisor."""

    machine: Machine

    def is_active(self, unit: str) -> bool:
        return self.machine.running() and self.machine.systemctl("is-active", "--quiet", unit).returncode == 0

    def start(self, unit: str) -> None:
        proc = self.machine.systemctl("start", unit, timeout=900)
        if proc.returncode != 0:
            journal = self.machine.run(["journalctl", "-u", unit, "-n", "20", "--no-pager", "-o", "cat"]).stdout
            raise LocalClusterError(f"{self.machine.name}: {unit} failed to start: {proc.stderr.strip()}\n{journal}")

    def stop(self, unit: str) -> None:
        if self.machine.running():
            self.machine.systemctl("stop", unit)

    def pid(self, unit: str) -> int | None:
        """Host PID of the unit's main process."""
        if not self.machine.running():
            return None
        out = self.machine.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
        return self.machine.host_pid(int(out)) if out.isdigit() and int(out) > 0 else None

    def kill(self, unit: str, sig: int = signal.SIGKILL, group: bool = True) -> None:
        self.machine.systemctl("kill", f"--signal={int(sig)}", f"--kill-whom={'all' if group else 'main'}", unit)


class Rehearsal(LocalCluster):
    """A stack's cluster as booted machines of the node image."""

    def __init__(self, *, project_dir: Path, stack: str = "dev", root: Path = DEFAULT_ROOT,
                 address_prefix: str = DEFAULT_PREFIX, s3_http_port: int = 19400, spec: ClusterSpec | None = None,
                 image_cache: Path = image_mod.DEFAULT_CACHE, log: Callable[[str], None] = print):
        self.image_cache = Path(image_cache)
        self._log = log
        self._image: image_mod.Image | None = image_mod.cached(self.image_cache)
        super().__init__(project_dir=project_dir, stack=stack, root=root, s3_http_port=s3_http_port,
                         address_prefix=address_prefix, spec=spec, netns=True)

    # -- the members ---------------------------------------------------------------------------
    @property
    def image(self) -> image_mod.Image:
        if self._image is None:
            self._image = image_mod.build(self.image_cache, log=self._log)
        return self._image

    def machine(self, member: Member) -> Machine:
        ns = netns_mod.namespace(self.address_prefix, member.index)
        home = self.root / "machines" / member.name
        if self.spec.storage.kind == "ebs":
            volumes = [Volume(self.root / "volumes" / f"{member.name}.img", VOLUME_GIB,
                              EBS_BY_ID + volume_id(self.spec.cluster_name, member.name).replace("-", ""))]
        else:
            volumes = [Volume(self.root / "volumes" / f"{member.name}-nvme{i}.img", VOLUME_GIB,
                              f"{INSTANCE_STORE_BY_ID}{volume_id(self.spec.cluster_name, member.name)[4:]}{i}",
                              persistent=False)
                       for i in range(self.spec.instance.nvme_count)]
        image_root = self._image.root if self._image else self.image_cache / "unbuilt"
        return Machine(member.name, home, image_root=image_root, netns=ns, volumes=volumes, log=self._log)

    def _node(self, member: Member) -> Node:
        machine = self.machine(member)
        # The host's view of the member's files: its own root, mounts included, while it runs.
        layout = Layout(root=str(machine.fs))
        return Node(member, self.member_ip(member), layout, MachineUnits(machine),  # type: ignore[arg-type]
                    unit_names(self.spec, member, self.node_context()))

    def machine_of(self, node: Node) -> Machine:
        return node.supervisor.machine  # type: ignore[attr-defined]

    def node_context(self) -> NodeContext:
        """The context EC2 gets (its layout, Secrets Manager, role credentials), with the
        rehearsal's addresses and AWS endpoint."""
        ca, members = self._pki()
        endpoint = f"{self.s3.host}:{self.s3.port}"
        return NodeContext(
            member_ips={m.name: self.member_ip(m) for m in self.spec.members},
            bucket=self.bucket, s3_endpoint=endpoint, s3_region=self.s3.region,
            secret_id=self.secret_arn, s3_ca_file=NODE_CA_FILE, s3_uri_style="path",
            aws_endpoint_url=f"https://{endpoint}", aws_ca_file=NODE_CA_FILE, layout=EC2_LAYOUT,
            ca_cert_pem=ca.cert_pem, node_cert_pems={name: ck.cert_pem for name, ck in members.items()},
            data_volume_ids={m.name: volume_id(self.spec.cluster_name, m.name) for m in self.spec.members})

    def context(self, layout: Layout) -> NodeContext:
        return self.node_context()

    @property
    def secret_arn(self) -> str:
        """How nodes name the cluster secret. EC2 gets its ARN from Pulumi; here it is the name,
        which Secrets Manager accepts as well and which, unlike moto's ARN (a random suffix per
        creation), survives a restart of the in-memory moto."""
        return self.secret_name

    @property
    def secret_name(self) -> str:
        return f"{self.spec.cluster_name}-secret"

    def user_data(self, member: Member) -> bytes:
        """The gzip'd user-data of ``member``: what EC2 would receive for it."""
        return user_data_bytes(self.spec, member, self.node_context())

    # -- what AWS holds ------------------------------------------------------------------------
    def _aws_client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.s3.url, region_name=self.s3.region,
                            aws_access_key_id=self.s3.access_key, aws_secret_access_key=self.s3.secret_key,
                            verify=str(self.s3.ca_file))

    def _publish(self, values: dict[str, Any]) -> None:
        """The cluster secret in Secrets Manager and the node files in the bucket (pulumi up's part)."""
        client = self._aws_client("secretsmanager")
        body = json.dumps({k: v for k, v in values.items() if k not in ("s3_key", "s3_key_secret")})
        try:
            client.put_secret_value(SecretId=self.secret_name, SecretString=body)
        except client.exceptions.ResourceNotFoundException:
            client.create_secret(Name=self.secret_name, SecretString=body)
        s3 = self.s3.client()
        ctx = self.node_context()
        for member in self.spec.members:
            for f in bucket_files(self.spec, member, ctx):
                s3.put_object(Bucket=self.bucket, Key=f.key, Body=f.content.encode())

    # -- lifecycle -----------------------------------------------------------------------------
    def missing(self) -> list[str]:
        problems = image_mod.missing_host_tools()
        if shutil.which("haproxy") is None:
            problems.append("haproxy (apt-get install haproxy), the TLS terminator in front of moto")
        if os.geteuid() != 0:
            problems.append("root: machines, namespaces and loop devices need it")
        return problems

    def up(self, *, timeout: float = 300.0, log: Any = print, hold: Collection[str] = ()) -> float:
        """Boot every member that is not running (a new instance when it never ran), then wait
        until the cluster is healthy; returns seconds."""
        began = time.monotonic()
        missing = self.missing()
        if missing:
            raise LocalClusterError("missing on this machine:\n  - " + "\n  - ".join(missing))
        built = self.image
        self.nodes = [self._node(m) for m in self.spec.members]
        log(f"image {built.key}: {built.manifest['release']}, PostgreSQL {built.versions['postgresql-17']}")
        self.root.mkdir(parents=True, exist_ok=True)
        values = self._ensure_secrets()
        self._write_passfile(values)
        netns_mod.setup(self.address_prefix, len(self.nodes))
        self.s3.start()
        self.s3.create_bucket(self.bucket)
        self._publish(values)
        booting = []
        for node in self.nodes:
            machine = self.machine_of(node)
            if machine.running() or node.member.name in hold:
                continue
            instance_id = machine.instance.get("instance_id") or self.new_instance_id(node.member)
            log(f"{node.member.name}: booting {instance_id} at {node.ip}")
            machine.boot(user_data=self.user_data(node.member), instance_id=instance_id,
                         hostname=node.member.name, imds_facts=self.imds_facts(node.member))
            booting.append(machine)
        with ThreadPoolExecutor(max_workers=max(1, len(booting))) as pool:
            for machine, status in zip(booting, pool.map(lambda m: m.wait_booted(timeout), booting)):
                log(f"{machine.name}: cloud-init {status['status']}")
        self.wait_healthy(timeout=timeout)
        log(f"healthy after {time.monotonic() - began:.1f}s")
        return time.monotonic() - began

    def new_instance_id(self, member: Member) -> str:
        return "i-" + hashlib.sha256(f"{member.name}/{time.time_ns()}".encode()).hexdigest()[:17]

    def replace(self, node: Node, *, log: Any = print, timeout: float = 300.0) -> str:
        """Terminate the member's instance and boot a new one on the same volumes (EBS) or on
        blank instance stores (metal), as a replacement by ``pulumi up`` does; returns its id."""
        machine = self.machine_of(node)
        if machine.running():
            machine.poweroff()
        instance_id = self.new_instance_id(node.member)
        machine.boot(user_data=self.user_data(node.member), instance_id=instance_id, hostname=node.member.name,
                     imds_facts=self.imds_facts(node.member))
        machine.wait_booted(timeout)
        log(f"{node.member.name}: replaced by {instance_id}")
        return instance_id

    def imds_facts(self, member: Member) -> dict[str, Any]:
        return {"role": f"{self.spec.cluster_name}-node", "access_key_id": "ASIAPGHAREHEARSAL",
                "secret_access_key": self.s3.secret_key, "session_token": "pgha-rehearsal-session",
                "region": self.s3.region, "availability_zone": self.spec.availability_zones[member.az_index],
                "local_ipv4": self.member_ip(member), "instance_type": self.spec.instance_type,
                "account_id": ACCOUNT_ID, "architecture": self.spec.arch, "image_id": f"pgha-image-{self.image.key}"}

    def stop_database(self, *, log: Any = print) -> None:
        """Power every member off (systemd stops each unit in order); the volumes keep the data."""
        for node in self.nodes:
            machine = self.machine_of(node)
            if machine.running():
                machine.poweroff()
                log(f"{node.member.name}: powered off")

    def down(self, *, log: Any = print) -> None:
        self.stop_database(log=log)
        if self.owns_s3 and self.s3.haproxy_cfg.exists():
            self.s3.stop()
        netns_mod.teardown(self.address_prefix, len(self.nodes))

    def destroy(self, *, log: Any = print) -> None:
        """Everything gone: machines, volumes, keys (``pulumi destroy`` of a test stack)."""
        self.down(log=log)
        for node in self.nodes:
            self.machine_of(node).destroy()
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)

    def node_paths(self, node: Node) -> tuple[str, str]:
        return EC2_LAYOUT.etc, EC2_LAYOUT.secrets

    def run_on(self, node: Node, argv: list[str], *, user: str | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
        return self.machine_of(node).run(argv, user=user, timeout=timeout)

    def _ensure_secrets(self) -> dict[str, Any]:
        values = super()._ensure_secrets()
        # The instance role carries S3 access (IMDS); the secret needs no keys for it.
        for key in ("s3_key", "s3_key_secret"):
            values.pop(key, None)
        _write_private(self.secrets_file, json.dumps(values, indent=1))
        return values
