"""The loopback cluster: a stack's rendered node files run for real on 127.0.1.1-3.

Each member is a "host" of its own: its loopback address, its own file tree under
``<root>/<member>`` (the EC2 paths with a prefix), and its own systemd units, run by
:class:`~pgha.local.supervisor.Supervisor` because this machine has no systemd. A moto S3
server behind a TLS terminator stands in for the backup bucket.
"""

import contextlib
import glob
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection

from ..render import APP_DATABASE, USERS, Layout, NodeContext, NodeFile, render_node, unit_names
from ..spec import PORTS, SERVICES, ClusterSpec, Member, build_spec, certificate_ips
from ..spec.stackfile import read_stack_config
from . import netns as netns_mod
from .s3 import LocalS3
from .supervisor import Supervisor
from .tls import CertKey, issue, make_ca

DEFAULT_ROOT = Path("/srv/pgha-local")
LOOPBACK_NET = "127.0.1."
# Debian packages that provide what the nodes run; `pgha local up` names the missing ones.
REQUIRED_COMMANDS: dict[str, str] = {
    "/usr/bin/etcd": "etcd-server",
    "/usr/sbin/haproxy": "haproxy",
    "/usr/sbin/pgbouncer": "pgbouncer",
    "/usr/bin/pgbackrest": "pgbackrest",
    "/usr/bin/prometheus-node-exporter": "prometheus-node-exporter",
    "/usr/bin/prometheus-postgres-exporter": "prometheus-postgres-exporter",
    "/usr/bin/python3": "python3-venv",
}
OS_ACCOUNTS = ("postgres", "etcd", "haproxy", "prometheus")
SECRET_KEYS = ("superuser_password", "replication_password", "pgbouncer_auth_password", "patroni_rest_password",
               "monitor_password", "app_password")
CIPHER_PASS_KEY = "pgbackrest_cipher_pass"


class LocalClusterError(RuntimeError):
    """Something the loopback cluster needs is missing or did not come up."""


def installed_postgres_major() -> int | None:
    """The newest PostgreSQL major whose server binaries Debian installed."""
    majors = [int(Path(p).parts[-3]) for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    return max(majors) if majors else None


def missing_prerequisites() -> list[str]:
    """What this machine lacks for the loopback cluster, each with how to get it."""
    problems = [f"{path} (apt-get install {package})" for path, package in REQUIRED_COMMANDS.items()
                if not os.path.exists(path)]
    if installed_postgres_major() is None:
        problems.append("a PostgreSQL server (apt-get install postgresql-15)")
    if not shutil.which("moto_server", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")):
        problems.append("moto_server (pip install 'moto[server]', see README)")
    for account in OS_ACCOUNTS:
        try:
            pwd.getpwnam(account)
        except KeyError:
            problems.append(f"OS user {account} (created by its Debian package)")
    if os.geteuid() != 0:
        problems.append("root: the daemons run as their own OS users, which needs root to arrange")
    return problems


@dataclass(frozen=True)
class Node:
    """One loopback member: its spec member, address, layout and supervisor."""

    member: Member
    ip: str
    layout: Layout
    supervisor: Supervisor
    units: list[str]


class LocalCluster:
    """Render, start, inspect and stop a stack's cluster on loopback addresses."""

    def __init__(self, *, project_dir: Path, stack: str = "dev", root: Path = DEFAULT_ROOT,
                 s3_http_port: int = 9000, s3_tls_port: int | None = None, address_prefix: str = LOOPBACK_NET,
                 spec: ClusterSpec | None = None, s3: LocalS3 | None = None, venv: Path | None = None,
                 source_secrets_file: Path | None = None, netns: bool = False):
        self.project_dir = Path(project_dir)
        self._pki_state: tuple[CertKey, dict[str, CertKey]] | None = None
        # Each member in a network namespace of its own (pgha.local.netns): partitions become possible.
        self.netns = netns
        if netns:
            netns_mod.check_prefix(address_prefix)
        self.stack = stack
        self.root = Path(root)
        # Members live on <prefix>1, <prefix>2, ...: another prefix runs a second cluster side by side.
        self.address_prefix = address_prefix
        # A branch or a restore passes its own spec; a branch also shares its source's S3 and venv.
        self.spec = spec or self._load_spec()
        self._venv = venv
        self.owns_s3 = s3 is None
        self.s3 = s3 or LocalS3(state_dir=self.root / "s3", ca=self.ca, http_port=s3_http_port,
                                tls_port=s3_tls_port or s3_http_port + 1,  # as the CLI: TLS on the next port
                                relay_namespaces=[netns_mod.namespace(address_prefix, m.index)
                                                  for m in self.spec.members] if netns else ())
        self.bucket = f"pgha-{self.spec.cluster_name}"
        # A branch of an encrypted source: the source's secret file, where the branch's agent
        # reads the source's cipher pass (as it reads a Secrets Manager secret on EC2).
        self.source_secrets_file = source_secrets_file
        self.nodes = [self._node(m) for m in self.spec.members]

    # -- spec and context ---------------------------------------------------------------------
    def _load_spec(self) -> ClusterSpec:
        values, region = read_stack_config(self.project_dir, self.stack)
        azs = values.get("availabilityZones") or [f"{region}a", f"{region}b", f"{region}c"]
        if isinstance(azs, str):
            azs = json.loads(azs)
        return build_spec(values, stack=self.stack, region=region, region_azs=list(azs))

    @property
    def venv(self) -> Path:
        return self._venv or self.root / "venv"

    @property
    def secrets_file(self) -> Path:
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
            ca, members = make_ca(f"{self.spec.cluster_name} loopback CA"), {}
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

    def member_ip(self, member: Member) -> str:
        return f"{self.address_prefix}{member.index}"

    def _node(self, member: Member) -> Node:
        layout = Layout(root=str(self.root / member.name), venv=str(self.venv), systemd_dir="/etc/systemd/system")
        supervisor = Supervisor(unit_dir=Path(layout.units), state_dir=self.root / member.name / "state",
                                run_root=Path(layout.run),
                                netns=netns_mod.namespace(self.address_prefix, member.index) if self.netns else None)
        ctx = self.context(layout)
        return Node(member, self.member_ip(member), layout, supervisor, unit_names(self.spec, member, ctx))

    def context(self, layout: Layout) -> NodeContext:
        """The same NodeContext EC2 gets, with loopback addresses and local S3."""
        ca, members = self._pki()
        return NodeContext(
            member_ips={m.name: self.member_ip(m) for m in self.spec.members},
            bucket=self.bucket,
            s3_endpoint=f"{self.s3.host}:{self.s3.port}",
            s3_region=self.s3.region,
            secret_id="",
            secret_source="file",
            secret_file=str(self.secrets_file),
            s3_ca_file=str(self.s3.ca_file),
            s3_key_type="shared",
            s3_uri_style="path",
            layout=layout,
            ca_cert_pem=ca.cert_pem,
            node_cert_pems={name: ck.cert_pem for name, ck in members.items()},
            postgres_version_override=installed_postgres_major(),
            member_roots={m.name: str(self.root / m.name) for m in self.spec.members},
            restore_cipher_secret=({"source": "file", "file": str(self.source_secrets_file)}
                                   if self.source_secrets_file else {}),
        )

    def rendered(self, node: Node) -> list[NodeFile]:
        return render_node(self.spec, node.member, self.context(node.layout))

    # -- secrets ----------------------------------------------------------------------------------
    def _ensure_secrets(self) -> dict[str, Any]:
        """Random passwords made once (what pulumi-random makes on AWS), kept 0600 by root."""
        _, members = self._pki()
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
        values: dict[str, Any] = {k: secrets.token_urlsafe(24) for k in SECRET_KEYS}
        if self.spec.backup.encryption:
            # backup.encryption: the repository cipher pass, only in this file (as in the secret on EC2).
            values[CIPHER_PASS_KEY] = secrets.token_urlsafe(30)
        values["tls_keys"] = {name: ck.key_pem for name, ck in members.items()}
        values["s3_key"] = self.s3.access_key
        values["s3_key_secret"] = self.s3.secret_key
        _write_private(self.secrets_file, json.dumps(values, indent=1))
        return values

    def _write_passfile(self, values: dict[str, Any]) -> None:
        """A libpq passfile, so DSNs printed by `status --json` carry no password."""
        lines = [f"*:*:*:{USERS[user]}:{values[f'{key}_password']}"
                 for user, key in (("superuser", "superuser"), ("monitor", "monitor"), ("app", "app"))]
        _write_private(self.passfile, "\n".join(lines) + "\n")

    # -- lifecycle --------------------------------------------------------------------------------
    def up(self, *, timeout: float = 180.0, log: Any = print, hold: Collection[str] = ()) -> float:
        """Bring the cluster up, starting only what is not already running; returns seconds.

        ``hold`` names running members whose files stay as they are, like an EC2 node that a
        rolling change has not reached yet."""
        began = time.monotonic()
        missing = missing_prerequisites()
        if missing:
            raise LocalClusterError("missing on this machine:\n  - " + "\n  - ".join(missing))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        values = self._ensure_secrets()
        self._write_passfile(values)
        self._ensure_venv(log)
        if self.netns:
            netns_mod.setup(self.address_prefix, len(self.nodes))
            log(f"members in network namespaces {netns_mod.namespace(self.address_prefix, 1)}.. "
                f"on bridge {netns_mod.bridge(self.address_prefix)}")
        log(f"S3 over TLS at https://{self.s3.host}:{self.s3.port} (moto)")
        self.s3.start()
        self.s3.create_bucket(self.bucket)
        for node in self.nodes:
            if node.member.name not in hold:
                self._install_files(node)
        # etcd everywhere first (quorum). A new cluster: the first member's Patroni alone, so it
        # bootstraps and is the initial primary (as on EC2), then the rest. An existing one: every
        # Patroni at once, since the last leader (the only one allowed to lead in strict
        # synchronous mode, with its sync standby) may be any member.
        for node in self.nodes:
            self._start(node, until="pgha-patroni.service", log=log)
        existing = any((Path(node.layout.pgdata) / "PG_VERSION").exists() for node in self.nodes)
        first, *others = self.nodes
        self._start(first, only=["pgha-patroni.service"], log=log)
        if not existing:
            leader = self.wait_for_leader(timeout=timeout)
            log(f"{leader} bootstrapped the cluster after {time.monotonic() - began:.1f}s")
        for node in others:
            self._start(node, only=["pgha-patroni.service"], log=log)
        for node in self.nodes:
            self._start(node, log=log)
        self.wait_healthy(timeout=timeout)
        log(f"healthy after {time.monotonic() - began:.1f}s")
        return time.monotonic() - began

    def _start(self, node: Node, *, until: str | None = None, only: list[str] | None = None,
               log: Any = print) -> None:
        names = node.units
        if until is not None:
            names = names[: names.index(until)]
        if only is not None:
            names = [n for n in names if n in only]
        for name in names:
            if not node.supervisor.is_active(name):
                log(f"{node.member.name}: starting {name}")
                node.supervisor.start(name)

    def _install_files(self, node: Node) -> None:
        for f in self.rendered(node):
            path = Path(f.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f.content)
            os.chmod(tmp, f.mode)
            os.chown(tmp, pwd.getpwnam(f.owner).pw_uid, grp.getgrnam(f.owner).gr_gid)
            os.replace(tmp, path)
        # Make the per-node root traversable for the daemons' OS users.
        os.chmod(self.root / node.member.name, 0o755)

    def _ensure_venv(self, log: Any) -> None:
        """The nodes' Python environment from Debian's python3, as on EC2, pinned the same."""
        requirements = next(f for f in self.rendered(self.nodes[0]) if f.path.endswith("requirements-node.txt"))
        marker = self.venv / ".pgha-requirements"
        if marker.exists() and marker.read_text() == requirements.content:
            return
        log(f"creating the nodes' Python environment in {self.venv}")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(self.venv)], check=True)
        req = self.root / "requirements-node.txt"
        req.write_text(requirements.content)
        subprocess.run([str(self.venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r",
                        str(req)], check=True)
        marker.write_text(requirements.content)

    def stop_database(self, *, log: Any = print) -> None:
        """Stop every unit but etcd's, every Patroni at once (stopping replicas first makes the
        synchronous standby wait); the DCS stays up."""
        for node in self.nodes:
            for name in reversed(node.units):
                if name in ("pgha-patroni.service", "pgha-etcd.service", "pgha-prepare.service"):
                    continue
                node.supervisor.stop(name)
        for node in self.nodes:
            pid = node.supervisor.pid("pgha-patroni.service")
            if pid:
                os.kill(pid, signal.SIGTERM)
        for node in self.nodes:
            node.supervisor.stop("pgha-patroni.service")
            log(f"{node.member.name}: stopped")

    def down(self, *, log: Any = print) -> None:
        """Stop everything `up` started, the members' network namespaces included; remove no data."""
        self.stop_database(log=log)
        for node in self.nodes:
            if "pgha-etcd.service" in node.units:
                node.supervisor.stop("pgha-etcd.service")
            node.supervisor.stop("pgha-prepare.service")
        if self.owns_s3:
            self.s3.stop()
        if self.netns:
            netns_mod.teardown(self.address_prefix, len(self.nodes))
            log(f"removed the network namespaces {netns_mod.namespace(self.address_prefix, 1)}.. "
                f"and bridge {netns_mod.bridge(self.address_prefix)}")

    def node_paths(self, node: Node) -> tuple[str, str]:
        """The node's config and secrets directories as commands run by :meth:`run_on` see them."""
        return node.layout.etc, node.layout.secrets

    def run_on(self, node: Node, argv: list[str], *, user: str | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a command as the node would, as ``user`` (the host-run nodes share this machine)."""
        switch = None
        if user is not None:
            account = pwd.getpwnam(user)

            def switch() -> None:
                os.setgid(account.pw_gid)
                os.initgroups(user, account.pw_gid)
                os.setuid(account.pw_uid)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=switch, cwd="/tmp",
                              stdin=subprocess.DEVNULL)

    def postmaster_pid(self, node: Node) -> int | None:
        """The member's PostgreSQL postmaster, from its postmaster.pid (None when not running)."""
        try:
            pid = int((Path(node.layout.pgdata) / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def signal_postgres(self, node: Node, sig: int) -> int:
        """Signal the member's postmaster and every child of it (each PostgreSQL child calls
        setsid(), so no process-group signal reaches them all)."""
        pid = self.postmaster_pid(node)
        if pid is None:
            raise LocalClusterError(f"{node.member.name}: PostgreSQL is not running")
        for target in [pid, *_children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        return pid

    # -- health -----------------------------------------------------------------------------------
    def patroni(self, node: Node, path: str = "/cluster", timeout: float = 2.0) -> Any:
        with urllib.request.urlopen(f"http://{node.ip}:{PORTS['patroni']}{path}", timeout=timeout) as reply:
            return json.loads(reply.read())

    def cluster_view(self) -> dict[str, Any] | None:
        """Patroni's /cluster as most members see it.

        A member cut off from the DCS answers from its cache (itself still the leader, say),
        so one member's word is not enough: every member is asked at once and the view
        whose leader most of them name wins (ties: the earliest member's)."""
        from concurrent.futures import ThreadPoolExecutor

        def ask(node: Node) -> dict[str, Any] | None:
            try:
                return self.patroni(node)
            except (OSError, ValueError):
                return None

        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            views = [v for v in pool.map(ask, self.nodes) if v is not None]
        if not views:
            return None

        def leader_of(view: dict[str, Any]) -> str | None:
            return next((m["name"] for m in view.get("members", []) if m.get("role") == "leader"), None)

        votes = [leader_of(v) for v in views]
        return max(views, key=lambda v: votes.count(leader_of(v)))

    def wait_for_leader(self, *, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.cluster_view() or {}
            for m in view.get("members", []):
                if m.get("role") == "leader" and m.get("state") == "running":
                    return m["name"]
            time.sleep(0.5)
        raise LocalClusterError(f"no leader after {timeout:.0f}s; see {self.root}/<member>/state/*.log")

    def wait_healthy(self, *, timeout: float) -> None:
        """A leader, every replica streaming, a synchronous standby when rpo is 0, every port up."""
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            problems = self.health_problems()
            if not problems:
                return
            time.sleep(0.5)
        raise LocalClusterError("cluster not healthy after {:.0f}s: {}".format(timeout, "; ".join(problems)))

    def health_problems(self) -> list[str]:
        view = self.cluster_view()
        if view is None:
            return ["no Patroni answers"]
        members = {m["name"]: m for m in view.get("members", [])}
        problems = []
        leaders = [m for m in members.values() if m.get("role") == "leader"]
        if len(leaders) != 1:
            problems.append(f"{len(leaders)} leaders")
        for node in self.nodes:
            m = members.get(node.member.name)
            if m is None or m.get("state") not in ("running", "streaming"):
                problems.append(f"{node.member.name} is {m.get('state') if m else 'absent'}")
        if self.spec.synchronous and not any(m.get("role") == "sync_standby" for m in members.values()):
            problems.append("no synchronous standby yet")
        for node in self.nodes:
            for port in (PORTS["pgbouncer"], *[PORTS[s] for s in SERVICES]):
                if not _port_open(node.ip, port):
                    problems.append(f"{node.ip}:{port} closed")
        return problems

    def dsn(self, ip: str, port: int, *, user: str = USERS["app"], dbname: str = APP_DATABASE) -> str:
        return (f"host={ip} port={port} user={user} dbname={dbname} sslmode=verify-full "
                f"sslrootcert={self.ca_file} passfile={self.passfile}")

    def status(self) -> dict[str, Any]:
        """Members, roles, lag and endpoints (DSNs without passwords: they use the passfile)."""
        view = self.cluster_view() or {"members": []}
        by_name = {m["name"]: m for m in view.get("members", [])}
        members = []
        for node in self.nodes:
            m = by_name.get(node.member.name, {})
            members.append({
                "name": node.member.name,
                "ip": node.ip,
                "role": m.get("role", "down"),
                "state": m.get("state", "down"),
                "timeline": m.get("timeline"),
                "lag_bytes": m.get("lag", 0) if m.get("role") != "leader" else 0,
                "units": {name: node.supervisor.is_active(name) for name in node.units},
            })
        services = {
            self.spec.service_name(s): {
                "port": PORTS[s],
                "dsn": [self.dsn(node.ip, PORTS[s]) for node in self.nodes],
                "multi_host_dsn": self.multi_host_dsn(PORTS[s]),
            }
            for s in SERVICES
        }
        return {
            "cluster": self.spec.cluster_name,
            "stack": self.stack,
            "root": str(self.root),
            "members": members,
            "services": services,
            "ca_file": str(self.ca_file),
            "passfile": str(self.passfile),
            "s3": {"endpoint": f"https://{self.s3.host}:{self.s3.port}", "bucket": self.bucket},
            "health": self.health_problems() if view.get("members") else ["cluster is down"],
        }

    def multi_host_dsn(self, port: int) -> str:
        """One DSN over every node's HAProxy: libpq tries the next host when one is down."""
        hosts = ",".join(f"{n.ip}:{port}" for n in self.nodes)
        return (f"postgresql://{USERS['app']}@{hosts}/{APP_DATABASE}?sslmode=verify-full"
                f"&sslrootcert={self.ca_file}&passfile={self.passfile}&connect_timeout=3")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cert_ips(cert: CertKey) -> set[str]:
    """The IP SANs of a certificate, as strings."""
    from cryptography import x509

    sans = cert.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
