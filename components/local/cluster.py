"""The rehearsal of EC2 on this machine: a stack's members booted from the node image.

Every member is a machine (``pgha.local.machine``) of the Debian 13 node image
(``pgha.local.image``), in a network namespace of its own with the address it would have on
EC2 (``pgha.local.netns``), booted by cloud-init from exactly the gzip'd user-data
``pgha.render.user_data_bytes`` produces for it with EC2's layout. Real systemd runs the real
units. Around the members, what AWS provides, stood in for the way AWS provides it:

* S3 and Secrets Manager: one moto server behind a TLS terminator (``pgha.local.s3``), reached
  from every namespace as ``https://localhost:<port>`` through a relay; the node agent's big
  files are uploaded to the bucket and the cluster secret is created, as ``pulumi up`` does;
* identity and instance-role credentials: IMDSv2 in each namespace (``pgha.local.imds``), so
  boto3 and pgBackRest's ``repo1-s3-key-type=auto`` work as on EC2;
* data volumes: loop-device files that outlive instances, under EBS's device names; metal's
  instance stores are discarded with the instance.

The rendered files differ from EC2's only in what the context carries (addresses, the bucket
and secret names, the endpoint and its CA); no template knows where it runs. A change of the
stack's files after boot (a parameter, a restore, a promotion) reaches running members as on
EC2: a new manifest in the bucket, applied by the member's own ``apply-config``.
"""

import contextlib
import hashlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from .. import contract
from ..agent.patroni_api import PatroniClient
from ..render import (
    APP_DATABASE,
    EC2_LAYOUT,
    USERS,
    Layout,
    NodeContext,
    NodeFile,
    bucket_files,
    config_manifest_bytes,
    render_node,
    unit_names,
    user_data_bytes,
)
from ..spec import PORTS, ClusterSpec, Member, build_spec, certificate_ips
from ..spec.stackfile import read_stack_config
from ..spec.validate import offline_region_azs
from . import DEFAULT_PREFIX, DEFAULT_ROOT, DEFAULT_S3_PORT, eic, procfs
from . import image as image_mod
from . import netns as netns_mod
from .machine import EBS_BY_ID, INSTANCE_STORE_BY_ID, Machine, MachineError, Volume
from .s3 import LocalS3
from .tls import CertKey, issue, make_ca

SECRET_KEYS = contract.PASSWORD_KEYS
CIPHER_PASS_KEY = contract.CIPHER_PASS_KEY
TLS_KEYS = contract.TLS_KEYS
ACCOUNT_ID = "123456789012"
# Per-member data volume (a sparse file: only what is written takes space on the host).
VOLUME_GIB = 8


class LocalClusterError(RuntimeError):
    """Something the local cluster needs is missing or did not come up."""


# One operator certificate per root, made once even when threads ask together.
_OPERATOR_TLS_LOCK = threading.Lock()

def missing_prerequisites() -> list[str]:
    """What this machine lacks for the local cluster, each with how to get it."""
    problems = image_mod.missing_host_tools()
    for tool, package in (("haproxy", "haproxy"), ("ip", "iproute2"), ("nsenter", "util-linux")):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)
                   + ["/usr/sbin", "/sbin"]):
            problems.append(f"{tool} (apt-get install {package})")
    if os.geteuid() != 0:
        problems.append("root: machines, network namespaces and loop devices need it")
    return problems


def volume_id(cluster: str, member: str) -> str:
    """A stable EBS-style volume id for a member's data volume (vol- and 17 hex digits)."""
    return "vol-" + hashlib.sha256(f"{cluster}/{member}".encode()).hexdigest()[:17]


@dataclass(frozen=True)
class Units:
    """A machine's systemd units, as drills, backups and ``up`` drive them."""

    machine: Machine

    def is_active(self, unit: str) -> bool:
        return self.machine.running() and self.machine.systemctl("is-active", "--quiet", unit).returncode == 0

    def start(self, unit: str) -> None:
        proc = self.machine.systemctl("start", unit, timeout=1800)
        if proc.returncode != 0:
            journal = self.machine.run(["journalctl", "-u", unit, "-n", "25", "--no-pager", "-o", "cat"]).stdout
            raise LocalClusterError(f"{self.machine.name}: {unit} failed: {proc.stderr.strip()}\n"
                                    f"--- its journal ---\n{journal}")

    def stop(self, unit: str) -> None:
        if self.machine.running():
            self.machine.systemctl("stop", unit)

    def pid(self, unit: str) -> int | None:
        """Host PID of the unit's main process (None when it is not running)."""
        if not self.machine.running():
            return None
        out = self.machine.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
        return self.machine.host_pid(int(out)) if out.isdigit() and int(out) > 0 else None

    def kill(self, unit: str, sig: int = signal.SIGKILL, group: bool = True) -> None:
        """Signal the unit's processes (every one, or its main process) as systemd does."""
        self.machine.systemctl("kill", f"--signal={int(sig)}", f"--kill-whom={'all' if group else 'main'}", unit)

    def restart_sec(self, unit: str) -> float:
        out = self.machine.systemctl("show", "-p", "RestartUSec", "--value", unit).stdout.strip()
        return _time_span(out)


def _time_span(text: str) -> float:
    """systemd's time span as shown (``5s``, ``500ms``, ``1min 30s``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for word in text.split():
        number = word.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number or 0) * units.get(word[len(number):] or "s", 1.0)
    return total


@dataclass(frozen=True)
class Node:
    """One member: its spec member, address, machine and units; ``layout`` is the host's view
    of its files (its root, mounts included, while it runs)."""

    member: Member
    ip: str
    layout: Layout
    machine: Machine
    units: list[str]

    @property
    def systemd(self) -> Units:
        return Units(self.machine)


class LocalCluster:
    """Render, boot, inspect and stop a stack's cluster as machines on this host."""

    def __init__(self, *, project_dir: Path, stack: str = "dev", root: Path = DEFAULT_ROOT,
                 s3_http_port: int = DEFAULT_S3_PORT, address_prefix: str = DEFAULT_PREFIX, host_offset: int = 0,
                 spec: ClusterSpec | None = None, s3: LocalS3 | None = None, source_cipher_secret: str = "",
                 image_cache: Path = image_mod.DEFAULT_CACHE, log: Callable[[str], None] = print):
        self.project_dir = Path(project_dir)
        self.stack = stack
        self.root = Path(root)
        self._pki_state: tuple[CertKey, dict[str, CertKey]] | None = None
        self._operator_tls: ssl.SSLContext | None = None
        netns_mod.check_prefix(address_prefix)
        # Members live on <prefix><offset + index>: a branch shares its source's /24 and bridge.
        self.address_prefix = address_prefix
        self.host_offset = host_offset
        # A branch or a restore passes its own spec; a branch also shares its source's S3.
        self.spec = spec or self._load_spec()
        self.owns_s3 = s3 is None
        self.s3 = s3 or LocalS3(state_dir=self.root / "s3", ca=self.ca, http_port=s3_http_port,
                                tls_port=s3_http_port + 1)
        self.bucket = f"pgha-{self.spec.cluster_name}"
        # A branch of an encrypted source: the source's cipher secret, as on EC2.
        self.source_cipher_secret = source_cipher_secret
        self.image_cache = Path(image_cache)
        self._log = log
        self._image: image_mod.Image | None = image_mod.cached(self.image_cache)
        self.nodes = [self._node(m) for m in self.spec.members]

    # -- spec and context ---------------------------------------------------------------------
    def _load_spec(self) -> ClusterSpec:
        values, region = read_stack_config(self.project_dir, self.stack)
        return build_spec(values, stack=self.stack, region=region,
                          region_azs=offline_region_azs(region, values.get("availabilityZones")))

    @property
    def secrets_file(self) -> Path:
        """The cluster secret's values, kept 0600 for the host's tools (the nodes read Secrets Manager)."""
        return self.root / "cluster-secrets.json"

    @property
    def passfile(self) -> Path:
        return self.root / "pgpass"

    @property
    def ca_file(self) -> Path:
        return self.root / "pki" / "ca.crt"

    @property
    def ca(self) -> CertKey:
        return self._pki()[0]

    def _pki(self) -> tuple[CertKey, dict[str, CertKey]]:
        """The cluster CA and member certificates, kept under <root>/pki. The CA is made once;
        a member's certificate is (re)issued when it is new or no longer names every member's
        address (a grown cluster), as pulumi-tls replaces it on AWS. Read once per instance
        (every rendered node asks for it)."""
        if self._pki_state is not None:
            return self._pki_state
        pki = self.root / "pki"
        state = pki / "pki.json"
        if state.exists():
            raw = json.loads(state.read_text())
            ca, members = CertKey(**raw["ca"]), {k: CertKey(**v) for k, v in raw["members"].items()}
        else:
            pki.mkdir(parents=True, exist_ok=True)
            os.chmod(pki, 0o700)
            ca, members = make_ca(f"{self.spec.cluster_name} local CA"), {}
        ips = {m.name: self.member_ip(m) for m in self.spec.members}
        stale = [m for m in self.spec.members
                 if m.name not in members or _cert_ips(members[m.name]) != set(certificate_ips(m, ips))]
        for m in stale:
            members[m.name] = issue(ca, common_name=m.name, ips=certificate_ips(m, ips),
                                    dns_names=self.spec.certificate_dns_names(m))
        if stale or not state.exists():
            _write_private(state, json.dumps({"ca": vars(ca), "members": {k: vars(v) for k, v in members.items()}}))
            self.ca_file.write_text(ca.cert_pem)
            os.chmod(self.ca_file, 0o644)
        self._pki_state = (ca, members)
        return self._pki_state

    def host_number(self, member: Member) -> int:
        return self.host_offset + member.index

    def member_ip(self, member: Member) -> str:
        return f"{self.address_prefix}{self.host_number(member)}"

    # -- the members ---------------------------------------------------------------------------
    @property
    def image(self) -> image_mod.Image:
        """The node image, built on first use (a few minutes, with progress)."""
        if self._image is None:
            self._image = image_mod.build(self.image_cache, log=self._log)
        return self._image

    def machine(self, member: Member) -> Machine:
        ns = netns_mod.namespace(self.address_prefix, self.host_number(member))
        if self.spec.storage.kind == "ebs":
            volumes = [Volume(self.root / "volumes" / f"{member.name}.img", VOLUME_GIB,
                              EBS_BY_ID + volume_id(self.spec.cluster_name, member.name).replace("-", ""))]
        else:
            volumes = [Volume(self.root / "volumes" / f"{member.name}-nvme{i}.img", VOLUME_GIB,
                              f"{INSTANCE_STORE_BY_ID}{volume_id(self.spec.cluster_name, member.name)[4:]}{i}",
                              persistent=False)
                       for i in range(self.spec.instance.nvme_count)]
        image_root = self._image.root if self._image else self.image_cache / "unbuilt"
        return Machine(member.name, self.root / "machines" / member.name, image_root=image_root, netns=ns,
                       volumes=volumes, relay_ports=[self.s3.port], log=self._log)

    def _node(self, member: Member) -> Node:
        machine = self.machine(member)
        return Node(member, self.member_ip(member), Layout(root=str(machine.fs)), machine,
                    unit_names(self.spec, member, self.context()))

    def context(self) -> NodeContext:
        """The context EC2 gets (its layout, Secrets Manager, role credentials), with this
        cluster's addresses and the rehearsal's AWS endpoint."""
        ca, members = self._pki()
        endpoint = f"{self.s3.host}:{self.s3.port}"
        return NodeContext(
            member_ips={m.name: self.member_ip(m) for m in self.spec.members},
            bucket=self.bucket, s3_endpoint=endpoint, s3_region=self.s3.region,
            secret_id=self.secret_name, s3_uri_style="path", aws_endpoint_url=f"https://{endpoint}",
            layout=EC2_LAYOUT, peer_ips=tuple(self.member_ip(m) for m in self.spec.member_slots),
            ca_cert_pem=ca.cert_pem, node_cert_pems={name: ck.cert_pem for name, ck in members.items()},
            tls_secret_ids={m.name: self.tls_secret_name(m.name) for m in self.spec.members},
            data_volume_ids={m.name: volume_id(self.spec.cluster_name, m.name) for m in self.spec.members},
            restore_cipher_secret=({"source": "aws", "id": self.source_cipher_secret, "region": self.s3.region}
                                   if self.source_cipher_secret else {}))

    def with_spec(self, spec: ClusterSpec) -> "LocalCluster":
        """The same members, volumes and AWS under another spec (a restore's, a promotion's)."""
        return LocalCluster(project_dir=self.project_dir, stack=self.stack, root=self.root,
                            address_prefix=self.address_prefix, host_offset=self.host_offset, spec=spec,
                            s3=self.s3, source_cipher_secret=self.source_cipher_secret,
                            image_cache=self.image_cache, log=self._log)

    @property
    def secret_name(self) -> str:
        """How nodes name the cluster secret. EC2 gets its ARN from Pulumi; here it is the name,
        which Secrets Manager accepts as well and which, unlike moto's ARN (a random suffix per
        creation), survives a restart of the in-memory moto."""
        return f"{self.spec.cluster_name}-secret"

    def tls_secret_name(self, member: str) -> str:
        """The secret holding ``member``'s TLS key alone (as each EC2 member's own secret)."""
        return f"{member}-tls"

    @property
    def cipher_secret_name(self) -> str:
        """With backup.encryption: the secret holding the cipher pass alone (branches read it)."""
        return f"{self.spec.cluster_name}-backup-cipher"

    def rendered(self, node: Node) -> list[NodeFile]:
        return render_node(self.spec, node.member, self.context())

    def user_data(self, member: Member) -> bytes:
        """The gzip'd user-data of ``member``: what EC2 receives for it."""
        return user_data_bytes(self.spec, member, self.context())

    # -- secrets ----------------------------------------------------------------------------------
    def _ensure_secrets(self) -> dict[str, Any]:
        """Random passwords made once (what pulumi-random makes on AWS), kept 0600 by root."""
        _, members = self._pki()
        values: dict[str, Any]
        if self.secrets_file.exists():
            values = json.loads(self.secrets_file.read_text())
            keys = {name: ck.key_pem for name, ck in members.items()}
            changed = values.get("tls_keys") != keys  # a member certificate was (re)issued
            values["tls_keys"] = keys
            if self.spec.backup.encryption and CIPHER_PASS_KEY not in values:
                values[CIPHER_PASS_KEY] = secrets.token_urlsafe(30)
                changed = True
            if changed:
                _write_private(self.secrets_file, json.dumps(values, indent=1))
            return values
        values = {k: secrets.token_urlsafe(24) for k in SECRET_KEYS}
        if self.spec.backup.encryption:
            # backup.encryption: the repository cipher pass, only in this file (as in the secret on EC2).
            values[CIPHER_PASS_KEY] = secrets.token_urlsafe(30)
        values["tls_keys"] = {name: ck.key_pem for name, ck in members.items()}
        _write_private(self.secrets_file, json.dumps(values, indent=1))
        return values

    def _write_passfile(self, values: dict[str, Any]) -> None:
        """A libpq passfile, so DSNs printed by `status --json` carry no password."""
        lines = [f"*:*:*:{USERS[user]}:{values[f'{key}_password']}"
                 for user, key in (("superuser", "superuser"), ("monitor", "monitor"), ("app", "app"))]
        _write_private(self.passfile, "\n".join(lines) + "\n")

    # -- what AWS holds ------------------------------------------------------------------------
    def aws_client(self, service: str) -> Any:
        """A boto3 client of the rehearsal's AWS (moto), as the deployer (pulumi) uses it."""
        import boto3

        return boto3.client(service, endpoint_url=self.s3.url, region_name=self.s3.region,
                            aws_access_key_id=self.s3.access_key, aws_secret_access_key=self.s3.secret_key,
                            verify=str(self.s3.ca_file))

    def _put_secret(self, name: str, values: dict[str, Any]) -> None:
        client = self.aws_client("secretsmanager")
        try:
            client.put_secret_value(SecretId=name, SecretString=json.dumps(values))
        except client.exceptions.ResourceNotFoundException:
            client.create_secret(Name=name, SecretString=json.dumps(values))

    def _ensure_log_group(self) -> None:
        """pulumi up's part (infra.node_logs): the cluster's log group with the spec's retention.
        Without the cluster key: the rehearsal has no KMS key, and moto does not encrypt anyway."""
        logs = self.aws_client("logs")
        try:
            logs.create_log_group(logGroupName=self.spec.log_group, tags={"pgha:cluster": self.spec.cluster_name})
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        logs.put_retention_policy(logGroupName=self.spec.log_group, retentionInDays=self.spec.logs.retention_days)

    def _publish(self, values: dict[str, Any], hold: Collection[str] = ()) -> None:
        """pulumi up's part: the bucket, the log group, the cluster secret (and the cipher secret),
        the node files (but the held members': their configuration stays as it is until they are
        replaced)."""
        self.s3.create_bucket(self.bucket)
        self._ensure_log_group()
        # As on EC2: the passwords in the cluster secret, each member's TLS key in its own.
        keys = values.get(TLS_KEYS, {})
        self._put_secret(self.secret_name, {k: v for k, v in values.items() if k != TLS_KEYS})
        for member in self.spec.members:
            self._put_secret(self.tls_secret_name(member.name), {TLS_KEYS: {member.name: keys[member.name]}})
        if CIPHER_PASS_KEY in values:
            self._put_secret(self.cipher_secret_name, {CIPHER_PASS_KEY: values[CIPHER_PASS_KEY]})
        for member in self.spec.members:
            if member.name not in hold:
                self.publish_config(member)

    def publish_config(self, member: Member) -> str:
        """``pulumi up``'s part for one member's configuration: the binary files it names, then
        its manifest at its fixed key. Returns the manifest's version."""
        s3, ctx = self.s3.client(), self.context()
        for f in bucket_files(self.spec, member, ctx):
            s3.put_object(Bucket=self.bucket, Key=f.key, Body=f.content)
        body = config_manifest_bytes(self.spec, member, ctx)
        s3.put_object(Bucket=self.bucket, Key=contract.config_key(self.spec.cluster_name, member.name), Body=body)
        return str(json.loads(body)["version"])

    # -- lifecycle --------------------------------------------------------------------------------
    def up(self, *, timeout: float = 300.0, log: Any = print, hold: Collection[str] = ()) -> float:
        """Bring the cluster up; returns seconds. A member that never ran boots as a new instance
        of the image, a stopped one boots again on its volume; a running one gets the stack's
        current files and whatever unit is not running.

        ``hold`` names running members whose files stay as they are, like an EC2 node that a
        rolling change has not reached yet."""
        began = time.monotonic()
        missing = missing_prerequisites()
        if missing:
            raise LocalClusterError("missing on this machine:\n  - " + "\n  - ".join(missing))
        try:
            built = self.image
        except image_mod.ImageError as error:
            raise LocalClusterError(f"the node image: {error}") from None
        self.nodes = [self._node(m) for m in self.spec.members]  # on the image just built
        log(f"image {built.key}: {built.manifest['release']}, PostgreSQL {built.versions['postgresql-17']}")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        values = self._ensure_secrets()
        self._write_passfile(values)
        netns_mod.setup(self.address_prefix, [self.host_number(n.member) for n in self.nodes])
        log(f"AWS (moto: S3, Secrets Manager, SSM, CloudWatch Logs) over TLS at {self.s3.url}")
        self.s3.start()
        self._publish(values, hold)
        booting = []
        for node in self.nodes:
            if node.machine.running():
                if node.member.name not in hold:
                    self.apply_config(node)
                    self._start(node, log=log)
                continue
            instance_id = node.machine.instance.get("instance_id") or self.new_instance_id(node.member)
            log(f"{node.member.name}: booting {instance_id} at {node.ip}")
            self.boot(node, instance_id)
            booting.append(node.machine)
        if booting:
            with ThreadPoolExecutor(max_workers=len(booting)) as pool:
                try:
                    for machine, status in zip(booting, pool.map(lambda m: m.wait_booted(timeout), booting)):
                        log(f"{machine.name}: cloud-init {status['status']}")
                except MachineError as error:  # names the member, with cloud-init's and the bootstrap's words
                    raise LocalClusterError(str(error)) from None
        self.wait_healthy(timeout=timeout)
        from .backups import wait_for_stanza  # backups builds on this module

        wait_for_stanza(self, timeout=timeout)  # what `pgha backup` and a restore need first
        log(f"healthy, backup stanza ready, after {time.monotonic() - began:.1f}s")
        return time.monotonic() - began

    def boot(self, node: Node, instance_id: str) -> None:
        """Start the member's machine as ``instance_id`` (its own again: a reboot; new: a new instance)."""
        try:
            eic.clear(node.machine.home)  # a new instance's metadata has no pushed key
            # The roots an AMI trusts for AWS: those of AWS's endpoints (moto's TLS) and of EC2
            # Instance Connect's signer.
            node.machine.boot(user_data=self.user_data(node.member), instance_id=instance_id,
                              hostname=node.member.name, imds_facts=self.imds_facts(node.member),
                              trusted_ca_pem=self.s3.ca.cert_pem + self.instance_connect.root.cert_pem)
        except MachineError as error:
            raise LocalClusterError(str(error)) from None

    @property
    def instance_connect(self) -> eic.Signer:
        """AWS's EC2 Instance Connect signer for this rehearsal (kept under <root>/eic)."""
        return eic.Signer.load(self.root / "eic" / "signer.json", self.s3.region)

    def push_ssh_key(self, member_name: str, public_key: str, *, user: str = contract.SSH_LOGIN_USER,
                     expires_in: int = eic.KEY_LIFETIME, block: str | None = None) -> None:
        """``aws ec2-instance-connect send-ssh-public-key`` for ``member_name``'s current instance:
        the key in its metadata for 60 s, signed to expire in ``expires_in`` seconds."""
        node = next(n for n in self.nodes if n.member.name == member_name)
        instance_id = node.machine.instance.get("instance_id")
        if not instance_id:
            raise LocalClusterError(f"{member_name} has never booted: no instance to push a key to")
        eic.push(node.machine.home, self.instance_connect, instance_id=instance_id, user=user,
                 public_key=public_key, expires_in=expires_in, block=block)

    def ssh_argv(self, member_name: str, workdir: Path, command: Sequence[str] = ()) -> list[str]:
        """What ``aws ec2-instance-connect ssh`` does, for the rehearsal: a fresh key (in
        ``workdir``) pushed for 60 s, the host keys the member's console vouches for, then ssh
        as ``admin`` to the member's address."""
        node = next((n for n in self.nodes if n.member.name == member_name), None)
        if node is None or not node.machine.running():
            raise LocalClusterError(f"{member_name} is not a running member")
        key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgha-local", "-f", str(key)],
                       check=True)
        known = eic.verified_known_hosts(node.ip, node.machine.console_log.read_text(errors="replace"), workdir)
        if not known:
            raise LocalClusterError(f"{member_name}: no host key of {node.ip} matches its console's fingerprints")
        (workdir / "known_hosts").write_text(known)
        self.push_ssh_key(member_name, (workdir / "id_ed25519.pub").read_text())
        return ["ssh", "-F", "none", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={workdir / 'known_hosts'}", f"{contract.SSH_LOGIN_USER}@{node.ip}",
                *command]

    def new_instance_id(self, member: Member) -> str:
        return "i-" + hashlib.sha256(f"{member.name}/{time.time_ns()}".encode()).hexdigest()[:17]

    def imds_facts(self, member: Member) -> dict[str, Any]:
        """What the member's IMDS answers: its identity and its instance role's credentials."""
        return {"role": f"{self.spec.cluster_name}-node", "access_key_id": self.s3.access_key,
                "secret_access_key": self.s3.secret_key, "session_token": "pgha-local-session",
                "region": self.s3.region, "availability_zone": self.spec.availability_zones[member.az_index],
                "local_ipv4": self.member_ip(member), "instance_type": self.spec.instance_type,
                "account_id": ACCOUNT_ID, "architecture": self.spec.arch, "image_id": f"pgha-image-{self.image.key}"}

    def _start(self, node: Node, *, until: str | None = None, only: list[str] | None = None,
               log: Any = print) -> None:
        names = node.units
        if until is not None:
            names = names[: names.index(until)]
        if only is not None:
            names = [n for n in names if n in only]
        if until is None and only is None:
            # Every unit: the timers too (stop_database stops them; apply-config's timer is how
            # a changed configuration reaches the member at all).
            names = [*names, *self._timers(node)]
        for name in names:
            if not node.systemd.is_active(name):
                log(f"{node.member.name}: starting {name}")
                node.systemd.start(name)

    def apply_config(self, node: Node) -> None:
        """Publish the member's configuration of this cluster's spec and apply it now: what the
        member's pgha-config.timer does within its period on EC2 after ``pulumi up``."""
        self.publish_config(node.member)
        res = node.machine.systemctl("start", "pgha-config.service", timeout=3600)
        if res.returncode != 0:
            tail = node.machine.run(["tail", "-n", "5", f"{EC2_LAYOUT.log}/config.log"], timeout=30).stdout
            raise LocalClusterError(f"{node.member.name}: apply-config failed: {res.stderr.strip()}\n{tail}")

    def stop_database(self, *, log: Any = print) -> None:
        """Stop every unit but etcd's, every Patroni at once (stopping replicas first makes the
        synchronous standby wait); the DCS stays up. The handover unit stays active: stopping it
        would switch over, and this stops the database, not the member."""
        keep = ("pgha-patroni.service", "pgha-etcd.service", "pgha-prepare.service", "pgha-host.service",
                "pgha-handover.service")
        running = [n for n in self.nodes if n.machine.running()]
        for node in running:
            node.machine.systemctl("stop", *[u for u in node.units if u not in keep], *self._timers(node))
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            list(pool.map(lambda n: n.systemd.stop("pgha-patroni.service"), running))
        for node in running:
            log(f"{node.member.name}: database stopped")

    def _timers(self, node: Node) -> list[str]:
        return [f.path.rsplit("/", 1)[1] for f in self.rendered(node) if f.path.endswith(".timer")]

    def down(self, *, log: Any = print) -> None:
        """Power every member off (systemd stops each unit in order) and stop the AWS stand-in;
        the volumes keep the data, and ``up`` boots the same instances again."""
        running = [n for n in self.nodes if n.machine.running()]
        for node in running:  # every member stops: no one could take the primary's leadership over
            node.machine.run(["touch", f"{EC2_LAYOUT.run}/no-handover"], timeout=30)
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            list(pool.map(lambda n: n.machine.poweroff(), running))
        log(f"{self.spec.cluster_name}: members powered off")
        if self.owns_s3 and self.s3.haproxy_cfg.exists():
            self.s3.stop()
        netns_mod.teardown(self.address_prefix, [self.host_number(n.member) for n in self.nodes],
                           keep_bridge=not self.owns_s3)  # a branch: its source's bridge and S3 stay

    def destroy(self, *, log: Any = print) -> None:
        """Everything gone: machines, volumes, keys (``pulumi destroy`` of a test stack)."""
        self.down(log=log)
        for node in self.nodes:
            node.machine.destroy()
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)

    def replace(self, node: Node, *, wipe_data: bool = False, log: Any = print, timeout: float = 900.0) -> str:
        """What ``pulumi up`` does to one member's instance: a graceful stop (the member hands
        leadership over first if it leads: pgha-handover), a new instance with a new id and the
        stack's current user-data, on the same data volume, or on a blank one with
        ``wipe_data`` (metal, or a lost volume); then the wait for the member's own readiness
        signal, the SSM status parameter EC2 members publish (``infra.readiness``). Returns the
        new instance's id; raises with the member's own reason if it never gets ready."""
        from ..infra.readiness import MemberNotReady, wait_for_member

        if node.machine.running():
            log(f"{node.member.name}: stopping {node.machine.instance.get('instance_id')}")
            node.machine.poweroff()
        if wipe_data:
            node.machine.discard_volumes()
            log(f"{node.member.name}: its data volume is blank now")
        instance_id = self.new_instance_id(node.member)
        self.publish_config(node.member)  # what the new instance fetches: the stack's current files
        self.boot(node, instance_id)
        try:
            node.machine.wait_booted(timeout)
        except MachineError as error:
            raise LocalClusterError(str(error)) from None
        parameter = contract.status_parameter(self.spec.cluster_name, node.member.name)
        try:
            status = wait_for_member(self.aws_client("ssm"), parameter, instance_id, timeout=timeout, poll=1.0)
        except MemberNotReady as error:
            raise LocalClusterError(str(error)) from None
        log(f"{node.member.name}: replaced by {instance_id}, ready: {status['message']}")
        return instance_id

    def node_paths(self, node: Node) -> dict[str, str]:
        """The node's paths pgBackRest needs (its config, the secrets include) as commands run by
        :meth:`run_on` see them: EC2's, inside the machine."""
        return {"pgbackrest_config": EC2_LAYOUT.pgbackrest_config, "secrets": EC2_LAYOUT.secrets}

    def run_on(self, node: Node, argv: list[str], *, user: str | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a command inside the member, as ``user``."""
        return node.machine.run(argv, user=user, timeout=timeout)

    def etcdctl(self, *args: str, endpoints: list[Node] | None = None) -> subprocess.CompletedProcess:
        """etcdctl from a member whose etcd runs, with its client certificate, against
        ``endpoints`` (default: every etcd member)."""
        node = next((n for n in self.nodes if n.member.runs_etcd and n.systemd.is_active("pgha-etcd.service")), None)
        if node is None:
            raise LocalClusterError("no member's etcd is running")
        tls = EC2_LAYOUT.tls
        urls = ",".join(f"https://{n.ip}:{PORTS['etcd_client']}" for n in endpoints or self.nodes if n.member.runs_etcd)
        return node.machine.run(["etcdctl", f"--endpoints={urls}", f"--cacert={tls}/ca.crt", f"--cert={tls}/node.crt",
                                 f"--key={tls}/etcd.key", "--command-timeout=3s", *args], timeout=15)

    def postmaster_pid(self, node: Node) -> int | None:
        """Host PID of the member's postmaster, from its postmaster.pid (None when not running)."""
        try:
            inside = int((Path(node.layout.pgdata) / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return node.machine.host_pid(inside)

    def signal_postgres(self, node: Node, sig: int) -> int:
        """Signal the member's postmaster and every child of it (each PostgreSQL child calls
        setsid(), so no process-group signal reaches them all)."""
        pid = self.postmaster_pid(node)
        if pid is None:
            raise LocalClusterError(f"{node.member.name}: PostgreSQL is not running")
        for target in [pid, *procfs.children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        return pid

    # -- health -----------------------------------------------------------------------------------
    def operator_tls(self) -> ssl.SSLContext:
        """The host's TLS to the members' Patroni REST API: the cluster CA, and a client
        certificate of that CA (CN <cluster>-operator: no member's name, so never the
        superuser's) for the unsafe endpoints, as an operator's machine would hold one."""
        with _OPERATOR_TLS_LOCK:
            if self._operator_tls is None:
                # Key and certificate in one file, replaced whole: the drills' threads (and other
                # processes on the same root) ask at once, and a key and a certificate written
                # apart were once a mismatched pair (CI, 2026-12-01: "no Patroni answers").
                bundle = self.root / "pki" / "operator.pem"
                if not bundle.exists():
                    issued = issue(self.ca, common_name=f"{self.spec.cluster_name}-operator", server=False)
                    _write_private(bundle, issued.key_pem + issued.cert_pem)
                context = ssl.create_default_context(cafile=str(self.ca_file))
                context.load_cert_chain(str(bundle))
                self._operator_tls = context
            return self._operator_tls

    def patroni_client(self, node: Node, auth: tuple[str, str] | None = None) -> PatroniClient:
        """The agent's client of ``node``'s Patroni (HTTPS), with the host's certificate."""
        return PatroniClient(node.ip, PORTS["patroni"], auth=auth, context=self.operator_tls())

    def patroni(self, node: Node, path: str = "/cluster", timeout: float = 2.0) -> Any:
        # The agent's client; an error status stays an OSError here, as urlopen's HTTPError was.
        status, raw = self.patroni_client(node).request("GET", path, timeout=timeout)
        if status >= 400:
            raise OSError(f"Patroni {node.ip} {path}: HTTP {status}")
        return json.loads(raw)

    def cluster_view(self) -> dict[str, Any] | None:
        """Patroni's /cluster as most members see it (``health.cluster_view``)."""
        from . import health

        return health.cluster_view(self)

    def wait_for_leader(self, *, timeout: float) -> str:
        from . import health

        return health.wait_for_leader(self, timeout=timeout)

    def wait_healthy(self, *, timeout: float) -> None:
        """A leader, every replica streaming, a synchronous standby when rpo is 0, every port up."""
        from . import health

        health.wait_healthy(self, timeout=timeout)

    def health_problems(self) -> list[str]:
        from . import health

        return health.health_problems(self)

    def superuser_dsn(self, node: Node, *, dbname: str = "postgres") -> str:
        """The superuser on ``node``'s PostgreSQL socket, as root on the node gets it (peer, pg_ident
        pgha_local): over TCP pg_hba refuses the superuser to everyone but a member's certificate.
        The host reaches the socket through the machine's root (/proc/PID/root), as its root."""
        leader = node.machine.leader()
        if leader is None:
            raise LocalClusterError(f"{node.member.name} is not running: no superuser socket")
        return (f"host=/proc/{leader}/root{EC2_LAYOUT.run}/postgres port={PORTS['postgres']} "
                f"user={USERS['superuser']} dbname={dbname}")

    def dsn(self, ip: str, port: int, *, user: str = USERS["app"], dbname: str = APP_DATABASE) -> str:
        return (f"host={ip} port={port} user={user} dbname={dbname} sslmode=verify-full "
                f"sslrootcert={self.ca_file} passfile={self.passfile}")

    def status(self) -> dict[str, Any]:
        """Members, roles, lag and endpoints (``health.status``)."""
        from . import health

        return health.status(self)

    def multi_host_dsn(self, port: int) -> str:
        """One DSN over every node's HAProxy: libpq tries the next host when one is down."""
        hosts = ",".join(f"{n.ip}:{port}" for n in self.nodes)
        return (f"postgresql://{USERS['app']}@{hosts}/{APP_DATABASE}?sslmode=verify-full"
                f"&sslrootcert={self.ca_file}&passfile={self.passfile}&connect_timeout=3")


def _ids_of(machine: Machine, user: str) -> tuple[int, int]:
    """uid and gid of ``user`` inside the machine (its own /etc/passwd, not the host's)."""
    for line in (machine.fs / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LocalClusterError(f"{machine.name}: no user {user}")


def _cert_ips(cert: CertKey) -> set[str]:
    """The IP SANs of a certificate, as strings."""
    from cryptography import x509

    sans = cert.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
