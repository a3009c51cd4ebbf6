"""The rehearsal's AWS: moto's S3 and Secrets Manager APIs over real TLS, on the host's loopback.

pgBackRest checks the certificate's hostname (an IP SAN for 127.0.0.1 is not accepted) and
fails against ``moto_server``'s own TLS with ``unexpected eof while reading``. So
``moto_server`` runs as plain HTTP on 127.0.0.1 and an ``haproxy`` process terminates TLS in
front of it with a certificate for ``DNS:localhost`` issued by the cluster CA. Members reach
it as ``https://localhost:<tls port>`` through a relay inside their namespace
(``pgha.local.machine``); every AWS client (boto3, pgBackRest) is given that endpoint and the CA.

Both run as :class:`pgha.local.process.Daemon` processes (pid files that survive pid reuse,
logs in ``<state_dir>/<name>.log``).

``moto_server`` keeps all state in memory: stopping it (or it dying) loses every bucket,
object and secret. The rehearsal's ``up`` recreates the bucket, the node files and the
secret; do not treat it as durable storage.
"""

import contextlib
import http.client
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pgha.local.process import Daemon
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
    ) -> None:
        self.state_dir = Path(state_dir)
        self.ca = ca
        self.http_port = http_port
        self.tls_port = tls_port
        self.moto_server = moto_server or Path(sys.executable).parent / "moto_server"
        self.haproxy = haproxy or Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
        self.start_timeout = start_timeout
        self.moto = Daemon(MOTO_UNIT, [str(self.moto_server), "-H", "127.0.0.1", "-p", str(self.http_port)],
                           self.state_dir)
        # -db: HAProxy in the foreground, so the pid file is its own.
        self.terminator = Daemon(HAPROXY_UNIT, [str(self.haproxy), "-db", "-f", str(self.haproxy_cfg)], self.state_dir)

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

    def _write_files(self) -> set[str]:
        """Write CA, certificate, config and units; return units whose inputs changed."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        changed: set[str] = set()
        ca_changed = self._write_if_changed(self.ca_file, self.ca.cert_pem)
        if ca_changed or not self.server_pem.exists():
            leaf = issue(self.ca, common_name="localhost", dns_names=["localhost"], client=False)
            self._write_if_changed(self.server_pem, leaf.cert_pem + leaf.key_pem, mode=0o600)
            changed.add(HAPROXY_UNIT)
        if self._write_if_changed(self.haproxy_cfg, self._haproxy_config()):
            changed.add(HAPROXY_UNIT)
        return changed

    def is_running(self) -> bool:
        """Both processes we started are alive and the endpoint answers over TLS."""
        return self.moto.running() and self.terminator.running() and self._probe() is None

    def start(self) -> None:
        """Start moto and HAProxy (only what is not already running) and wait until
        the endpoint answers over TLS, or raise :class:`LocalS3Error` with log tails."""
        changed = self._write_files()
        if HAPROXY_UNIT in changed:
            self.terminator.stop(signal.SIGUSR1)  # new certificate or config; SIGUSR1: HAProxy's soft stop
        wanted = [(d, port, what) for d, port, what in ((self.moto, self.http_port, "moto_server (plain HTTP)"),
                                                         (self.terminator, self.tls_port, "the HAProxy TLS endpoint"))
                  if not d.running()]
        for _, port, what in wanted:  # every port checked before anything starts: nothing half-started
            _check_port_free(port, what)
        if any(d is self.terminator for d, _, _ in wanted):
            check = subprocess.run([str(self.haproxy), "-c", "-q", "-f", str(self.haproxy_cfg)],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise LocalS3Error(f"haproxy refuses {self.haproxy_cfg}: {check.stderr.strip()}")
        started = [(d, d.start()) for d, _, _ in wanted]
        deadline = time.monotonic() + self.start_timeout
        error = self._probe()
        while error is not None and time.monotonic() < deadline:
            for daemon, proc in started:
                if proc is not None and proc.poll() is not None:
                    self.stop()
                    raise LocalS3Error(f"{daemon.name} exited with status {proc.returncode}:\n{self._log_tails()}")
            time.sleep(0.2)
            error = self._probe()
        if error is not None:
            tails = self._log_tails()
            self.stop()
            raise LocalS3Error(
                f"{self.url} did not answer over TLS within {self.start_timeout:.0f}s "
                f"(last error: {error})\n{tails}"
            )

    def stop(self) -> None:
        """Stop HAProxy then moto if we started them; moto's buckets and secrets are lost."""
        self.terminator.stop(signal.SIGUSR1)
        self.moto.stop()

    def pids(self) -> dict[str, int | None]:
        """Main pid of each process (None if not running)."""
        return {MOTO_UNIT: self.moto.pid(), HAPROXY_UNIT: self.terminator.pid()}

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
        return "\n".join(f"--- {d.log_file} ---\n{d.log_tail()}" for d in (self.moto, self.terminator))

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
