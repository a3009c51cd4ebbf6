"""Shared by the agent's tests: node facts and secrets to test with, the built zipapp, and
helpers to run the agent as a user and scrape its exporters. (Fixtures: conftest.py.)"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pgha.render.agentzip import agent_zipapp

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PYTHON = sys.executable
# The zipapp the nodes run, built once per test run; node facts point paths.bin here, so what
# the agent starts itself (dcs-sync, archive-get-source) runs this same build.
AGENT_BIN = Path(tempfile.mkdtemp(prefix="pgha-agent-bin-", dir="/tmp"))
os.chmod(AGENT_BIN, 0o755)
ZIPAPP = AGENT_BIN / "pgha-node.pyz"
ZIPAPP.write_bytes(agent_zipapp())
ZIPAPP.chmod(0o644)

PASSWORDS = {
    "superuser_password": "Su-pw-3f9a$`\"x\\y",  # shell/env-file metacharacters on purpose
    "replication_password": "Repl-pw-77c1d2",
    "pgbouncer_auth_password": "Pgb-auth-pw-b41e 9",
    "patroni_rest_password": "Rest-pw-0a6c5e",
    "monitor_password": "Mon-pw-'quote'-5d2e",
    "app_password": "App-pw-c0ffee-42",
    "pgbackrest_cipher_pass": "Cipher-pw-9e8d7c",
    "s3_key": "AKIAFAKEKEY0123",
    "s3_key_secret": "S3-secret-pw-aa11bb22",
}
TLS_KEY = "-----BEGIN PRIVATE KEY-----\nTUlJRmFrZUtleUZvclRlc3Rz\n-----END PRIVATE KEY-----\n"
SECRET_VALUES = [v for v in PASSWORDS.values()] + ["TUlJRmFrZUtleUZvclRlc3Rz"]


def make_secret(member="pg-x-1", **overrides):
    secret = dict(PASSWORDS)
    secret["tls_keys"] = {member: TLS_KEY, "pg-x-2": "-----BEGIN PRIVATE KEY-----\nb3RoZXI=\n-----END PRIVATE KEY-----\n"}
    secret.update(overrides)
    return secret


def make_node(base: Path, **overrides) -> dict:
    node = {
        "cluster": "pg-x", "member": "pg-x-1", "index": 1, "ip": "127.0.0.1", "postgres_version": 15,
        "paths": {
            "etc": str(base / "etc"), "secrets": str(base / "etc" / "secrets"), "tls": str(base / "etc" / "tls"),
            "bin": str(AGENT_BIN), "data": str(base / "data"), "pgdata": str(base / "data" / "pg" / "data"),
            "etcd_data": str(base / "data" / "etcd"), "log": str(base / "log"), "run": str(base / "run"),
            "python": PYTHON, "patroni": "/usr/bin/patroni", "pg_bin": str(PG_BIN),
            "pgbackrest_config": str(base / "etc" / "pgbackrest.conf"),
            "logs_state": str(base / "logs-state"),
        },
        "users": {"superuser": "postgres", "replication": "replicator", "pgbouncer_auth": "pgbouncer_auth",
                  "monitor": "dbuser_monitor", "patroni_rest": "patroni", "app": "dbuser_app"},
        "os_users": {"postgres": "postgres", "etcd": "etcd", "exporter": "postgres", "haproxy": "postgres",
                     "logs": "postgres"},
        "ports": {"postgres": 5432, "pgbouncer": 6432, "patroni": 8008, "pgbouncer_exporter": 9631,
                  "pgbackrest_exporter": 9854},
        "aws": {"region": "us-east-1", "endpoint_url": "", "s3_addressing": "path"},
        "secret": {"source": "file", "id": "", "region": "us-east-1", "file": str(base / "secret.json")},
        "tls_secret": None,
        "stanza": "pg-x",
        "backup_encryption": False,
        "backup_types": ["full"],
        "peers": {"pg-x-1": {"ip": "127.0.0.1", "pgdata": str(base / "data" / "pg" / "data"),
                             "socket": str(base / "run" / "postgres"), "etcd": True}},
        "restore": None,
        # The fake Patronis of these tests serve plain HTTP (test_patroni_api has a TLS one).
        "patroni_tls": False,
        "units": ["pgha-patroni.service", "pgha-pgbouncer.service"],
        "timers": ["pgha-config.timer", "pgha-backup-full.timer"],
        "logs": {"group": "/pgha/pg-x", "state": str(base / "logs-state" / "offsets.json"),
                 "sources": {"postgresql": [str(base / "log" / "postgresql" / "*.log")]}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(node.get(key), dict):
            node[key] = {**node[key], **value}
        else:
            node[key] = value
    return node


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def mkbase(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o755)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, env=None, user=None, timeout=60):
    return subprocess.run([PYTHON, str(ZIPAPP), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})



def run_as(user: str, fn) -> tuple[int, str]:
    """Run fn() in a forked child with the uid/gid of `user`; return (exit code, stdout+stderr).
    (The venv's interpreter lives under /root here, so postgres cannot exec it: fork instead.)"""
    pw = pwd.getpwnam(user)
    out = tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.environ.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
            os.chdir("/")
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 98)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    return os.waitstatus_to_exitcode(status), out.read().decode(errors="replace")


def mode_owner(path) -> tuple[int, str]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name


def scrape(port: int) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as resp:
        status, text = resp.status, resp.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return status, samples


def sample(samples: dict, name: str, /, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_for_scrape(proc: subprocess.Popen, port: int, what: str, timeout: float = 30.0) -> tuple[int, dict]:
    """The first scrape of an exporter ``proc`` serves on ``port``; fails with its output if it exits."""
    def ready():
        try:
            return scrape(port)
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else f"{what} exited"
            return None
    return wait_for(ready, timeout=timeout, what=what)


# --------------------------------------------------------------------------------------


def _start(argv, log: Path, **kw) -> subprocess.Popen:
    fh = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                user="postgres", group="postgres", extra_groups=[], cwd="/", **kw)
    finally:
        fh.close()


def _stop(proc: subprocess.Popen | None, sig=signal.SIGINT, timeout=30):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _assert_nothing_secret(text: str):
    for value in SECRET_VALUES:
        assert value not in text, "a secret value was printed"


SOURCE_PASS = "Source-cipher-pw-71c2d3"
SOURCE_RESTORE = {"stanza": "pg-src", "bucket": "src-bucket", "path": "/pg-src/pgbackrest", "target": "latest",
                  "type": "default", "cipher": "aes-256-cbc"}


def branch_node(base: Path, ref: dict) -> dict:
    """A branch member that encrypts its own repository and restores from an encrypted source."""
    return make_node(base, backup_encryption=True, restore={**SOURCE_RESTORE, "cipher_secret": ref})
