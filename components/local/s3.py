"""A real S3 API over real TLS on loopback, for pgBackRest in the loopback cluster.

pgBackRest 2.45 speaks only HTTPS to S3, checks the certificate's hostname (an IP SAN
for 127.0.0.1 is not accepted) and fails against ``moto_server``'s own TLS with
``unexpected eof while reading``. So ``moto_server`` runs as plain HTTP on 127.0.0.1
and an ``haproxy`` process terminates TLS in front of it with a certificate for
``DNS:localhost`` issued by the cluster CA; pgBackRest is given ``localhost``, the TLS
port and the CA file.

Both processes run as units under :class:`pgha.local.supervisor.Supervisor` (unit
files written to ``<state_dir>/units``), which gives pid files that survive pid reuse,
logs in ``<state_dir>/<unit>.log`` and stop escalation.

``moto_server`` keeps all state in memory: stopping it (or it dying) loses every bucket
and object. That is fine for the loopback cluster, whose ``up`` recreates the bucket
and stanza; do not treat it as durable storage.
"""

import contextlib
import http.client
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

from pgha.local.supervisor import Supervisor
from pgha.local.tls import CertKey, issue

__all__ = ["LocalS3", "LocalS3Error", "PortInUseError"]

MOTO_UNIT = "s3-moto"
HAPROXY_UNIT = "s3-haproxy"


class LocalS3Error(RuntimeError):
    """The local S3 endpoint could not be started."""


class PortInUseError(LocalS3Error):
    """A port LocalS3 needs is held by a process it did not start."""


def _port_owner(port: int) -> str:
    """Best-effort description of who listens on 127.0.0.1:``port`` (via ``ss``)."""
    ss = shutil.which("ss")
    if ss is None:
        return "another process"
    out = subprocess.run(
        [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    owners = re.findall(r'\("([^"]+)",pid=(\d+)', out)
    return ", ".join(f"{name} (pid {pid})" for name, pid in owners) or "another process"


def _check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a socket in TIME_WAIT from our own last run is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise PortInUseError(
                f"127.0.0.1:{port} (needed for {what}) is already in use by "
                f"{_port_owner(port)}; stop it or give LocalS3 another port"
            ) from None


class LocalS3:
    """``moto_server`` (plain HTTP) behind an ``haproxy`` TLS terminator, on 127.0.0.1.

    ``start()`` is re-runnable: if both processes it started are alive and the
    endpoint answers, it does nothing. ``stop()`` stops only the processes it started
    (found by pid file) and removes nothing but their pid files.
    """

    host = "localhost"  # pgBackRest verifies the name; the certificate has DNS:localhost
    access_key = "pgha-local-access-key"
    secret_key = "pgha-local-secret-key"
    region = "us-east-1"

    def __init__(
        self,
        *,
        state_dir: Path,
        ca: CertKey,
        http_port: int = 9000,
        tls_port: int = 9443,
        moto_server: Path | None = None,
        haproxy: Path | None = None,
        start_timeout: float = 20.0,
        relay_namespaces: Sequence[str] = (),
    ) -> None:
        self.state_dir = Path(state_dir)
        # Members in network namespaces reach the endpoint through a relay listening on
        # 127.0.0.1:<tls port> inside each (pgha.local.netns): the TLS name stays localhost.
        self.relay_namespaces = tuple(relay_namespaces)
        self.ca = ca
        self.http_port = http_port
        self.tls_port = tls_port
        self.moto_server = moto_server or Path(sys.executable).parent / "moto_server"
        self.haproxy = haproxy or Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
        self.start_timeout = start_timeout
        self.supervisor = Supervisor(unit_dir=self.state_dir / "units", state_dir=self.state_dir)

    # -- where clients connect -----------------------------------------------------

    @property
    def port(self) -> int:
        """The TLS port (pgBackRest: ``repo1-storage-port``)."""
        return self.tls_port

    @property
    def url(self) -> str:
        """The HTTPS endpoint URL for boto3 and other SDKs."""
        return f"https://{self.host}:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients must trust (pgBackRest: ``repo1-storage-ca-file``)."""
        return self.state_dir / "ca.pem"

    @property
    def server_pem(self) -> Path:
        """HAProxy's certificate and key (one PEM, as ``bind ... ssl crt`` wants)."""
        return self.state_dir / "s3-localhost.pem"

    @property
    def haproxy_cfg(self) -> Path:
        """The generated HAProxy configuration."""
        return self.state_dir / "s3-haproxy.cfg"

    def pgbackrest_options(self, *, bucket: str, repo: int = 1) -> dict[str, str]:
        """pgBackRest ``repoN-*`` options that reach this endpoint with shared keys."""
        prefix = f"repo{repo}-"
        return {
            prefix + "type": "s3",
            prefix + "s3-bucket": bucket,
            prefix + "s3-endpoint": self.host,
            prefix + "storage-port": str(self.tls_port),
            prefix + "storage-ca-file": str(self.ca_file),
            prefix + "s3-region": self.region,
            prefix + "s3-uri-style": "path",  # no wildcard DNS for <bucket>.localhost
            prefix + "s3-key-type": "shared",  # "auto" would query 169.254.169.254
            prefix + "s3-key": self.access_key,
            prefix + "s3-key-secret": self.secret_key,
        }

    # -- lifecycle -------------------------------------------------------------------

    def _write_if_changed(self, path: Path, text: str, mode: int = 0o644) -> bool:
        if path.exists() and path.read_text() == text:
            return False
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)
        return True

    def _haproxy_config(self) -> str:
        # Mode http: HAProxy owns client keep-alive and request framing, so a
        # connection moto closes does not surface to pgBackRest as a TLS EOF.
        return (
            "# Generated by pgha.local.s3: TLS terminator in front of moto_server.\n"
            "global\n"
            "    log stderr format raw local0 info\n"
            "    maxconn 256\n"
            "    ssl-default-bind-options ssl-min-ver TLSv1.2\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    log global\n"
            "    option httplog\n"
            "    timeout connect 5s\n"
            "    timeout client 120s\n"
            "    timeout server 120s\n"
            "    timeout http-request 30s\n"
            "\n"
            "frontend s3_tls\n"
            f"    bind 127.0.0.1:{self.tls_port} ssl crt {self.server_pem}\n"
            "    default_backend moto\n"
            "\n"
            "backend moto\n"
            f"    server moto 127.0.0.1:{self.http_port}\n"
        )

    def _units(self) -> dict[str, str]:
        q = shlex.quote
        cfg = q(str(self.haproxy_cfg))
        moto = (
            "[Unit]\n"
            "Description=moto S3 API, plain HTTP on loopback (state in memory)\n"
            "\n[Service]\n"
            "Type=simple\n"
            f"ExecStart={q(str(self.moto_server))} -H 127.0.0.1 -p {self.http_port}\n"
            "TimeoutStopSec=10\n"
        )
        haproxy = (
            "[Unit]\n"
            "Description=HAProxy TLS terminator for the local S3 API\n"
            f"After={MOTO_UNIT}.service\n"
            f"Requires={MOTO_UNIT}.service\n"
            "\n[Service]\n"
            "Type=simple\n"
            f"ExecStartPre={q(str(self.haproxy))} -c -q -f {cfg}\n"
            # -db: stay in the foreground so the supervisor owns the pid.
            f"ExecStart={q(str(self.haproxy))} -db -f {cfg}\n"
            "KillSignal=SIGUSR1\n"  # HAProxy's soft stop: finish open requests
            "TimeoutStopSec=10\n"
        )
        units = {MOTO_UNIT: moto, HAPROXY_UNIT: haproxy}
        for ns in self.relay_namespaces:
            units[f"s3-relay-{ns}"] = (
                "[Unit]\n"
                f"Description=the S3 TLS endpoint on 127.0.0.1:{self.tls_port} inside network namespace {ns}\n"
                f"After={HAPROXY_UNIT}.service\n"
                "\n[Service]\n"
                "Type=simple\n"
                f"ExecStart={q(sys.executable)} -m pgha.local.netns relay --netns {q(ns)} --port {self.tls_port}\n"
                "TimeoutStopSec=5\n"
            )
        return units

    def _write_files(self) -> set[str]:
        """Write CA, certificate, config and units; return units whose inputs changed."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "units").mkdir(exist_ok=True)
        changed: set[str] = set()
        ca_changed = self._write_if_changed(self.ca_file, self.ca.cert_pem)
        if ca_changed or not self.server_pem.exists():
            leaf = issue(self.ca, common_name="localhost", dns_names=["localhost"], client=False)
            self._write_if_changed(self.server_pem, leaf.cert_pem + leaf.key_pem, mode=0o600)
            changed.add(HAPROXY_UNIT)
        if self._write_if_changed(self.haproxy_cfg, self._haproxy_config()):
            changed.add(HAPROXY_UNIT)
        for name, text in self._units().items():
            if self._write_if_changed(self.state_dir / "units" / f"{name}.service", text):
                changed.add(name)
        return changed

    def is_running(self) -> bool:
        """Both processes we started are alive and the endpoint answers over TLS."""
        return (
            self.supervisor.is_active(MOTO_UNIT)
            and self.supervisor.is_active(HAPROXY_UNIT)
            and self._probe() is None
        )

    def start(self) -> None:
        """Start moto and HAProxy (only what is not already running) and wait until
        the endpoint answers over TLS, or raise :class:`LocalS3Error` with log tails."""
        changed = self._write_files()
        for name in (HAPROXY_UNIT, MOTO_UNIT):
            if name in changed and self.supervisor.is_active(name):
                # New certificate/config/port: restart; a new moto loses its buckets.
                self.supervisor.stop(name)
        ports = {MOTO_UNIT: (self.http_port, "moto_server (plain HTTP)"),
                 HAPROXY_UNIT: (self.tls_port, "the HAProxy TLS endpoint")}
        for name, (port, what) in ports.items():
            if not self.supervisor.is_active(name):
                _check_port_free(port, what)
        try:
            self.supervisor.start_all()
        except Exception as exc:
            raise LocalS3Error(f"local S3 failed to start: {exc}") from exc
        deadline = time.monotonic() + self.start_timeout
        error = self._probe()
        while error is not None and time.monotonic() < deadline:
            time.sleep(0.2)
            error = self._probe()
        if error is not None:
            raise LocalS3Error(
                f"{self.url} did not answer over TLS within {self.start_timeout:.0f}s "
                f"(last error: {error})\n{self._log_tails()}"
            )

    def stop(self) -> None:
        """Stop the relays, HAProxy then moto if we started them; moto's buckets are lost."""
        for name in self.supervisor.units():
            if name.startswith("s3-relay-"):
                self.supervisor.stop(name)
        self.supervisor.stop(HAPROXY_UNIT)
        self.supervisor.stop(MOTO_UNIT)

    def pids(self) -> dict[str, int | None]:
        """Main pid of each process (None if not running)."""
        return {name: self.supervisor.pid(name) for name in (MOTO_UNIT, HAPROXY_UNIT)}

    def __enter__(self) -> "LocalS3":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log_tails(self) -> str:
        parts = []
        for name in (MOTO_UNIT, HAPROXY_UNIT):
            parts.append(f"--- {self.supervisor.log_path(name)} ---\n"
                         f"{self.supervisor.log_tail(name)}")
        return "\n".join(parts)

    def _probe(self) -> str | None:
        """None if an HTTPS request verified against the CA gets any HTTP answer."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection(self.host, self.tls_port, timeout=2, context=context)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return None
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    # -- S3 ------------------------------------------------------------------------

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint that verifies against the CA file."""
        import boto3  # a test/local extra, not needed to import this module
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=str(self.ca_file),
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``; an existing bucket of ours is fine (re-runnable up)."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
