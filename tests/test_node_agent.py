"""Tests for config-templates/bin/pgha-node, the node agent.

The Patroni hooks and both exporters run against real daemons started here: a throwaway
PostgreSQL 15 and a PgBouncer 1.18, both as the OS user postgres, plus pgBackRest on a local
posix repository. Every process started is stopped in the fixture teardown.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import types
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "config-templates" / "bin" / "pgha-node"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PYTHON = sys.executable


def _load_agent():
    loader = importlib.machinery.SourceFileLoader("pgha_node_agent", str(SCRIPT))
    spec = importlib.util.spec_from_loader("pgha_node_agent", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


agent = _load_agent()

@pytest.fixture
def _root():
    # chown and daemons run as postgres: these tests need root (CI runs as root).
    assert os.geteuid() == 0, "needs root (chown, daemons as postgres)"


needs_root = pytest.mark.usefixtures("_root")


@pytest.fixture
def fake_aws(monkeypatch):
    """Credentials for moto's in-process AWS (boto3 refuses to sign without some)."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)

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
            "bin": str(SCRIPT.parent), "data": str(base / "data"), "pgdata": str(base / "data" / "pg" / "data"),
            "etcd_data": str(base / "data" / "etcd"), "log": str(base / "log"), "run": str(base / "run"),
            "python": PYTHON, "pg_bin": str(PG_BIN),
            "pgbackrest_config": str(base / "etc" / "pgbackrest.conf"),
        },
        "users": {"superuser": "postgres", "replication": "replicator", "pgbouncer_auth": "pgbouncer_auth",
                  "monitor": "dbuser_monitor", "patroni_rest": "patroni", "app": "dbuser_app"},
        "os_users": {"postgres": "postgres", "etcd": "etcd"},
        "ports": {"postgres": 5432, "pgbouncer": 6432, "patroni": 8008, "pgbouncer_exporter": 9631,
                  "pgbackrest_exporter": 9854},
        "secret": {"source": "file", "id": "", "region": "us-east-1", "file": str(base / "secret.json")},
        "stanza": "pg-x",
        "backup_encryption": False,
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
    return subprocess.run([PYTHON, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
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


# --------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------

def test_env_quote_round_trips_through_sh():
    value = PASSWORDS["superuser_password"] + " $HOME `id` 'q'"
    text = agent.env_file([("X", value)])
    assert agent.env_unquote(text)["X"] == value
    got = subprocess.run(["sh", "-c", f'{text.splitlines()[1]}; printf %s "$X"'], capture_output=True, text=True)
    assert got.stdout == value


def test_scram_verifier_matches_known_vector():
    # Format and determinism here; that PostgreSQL accepts these verifiers is proven by the SCRAM
    # logins in the post-bootstrap test (the roles get only client-computed verifiers).
    v1 = agent.scram_sha256_verifier("pw", salt=b"0123456789abcdef")
    v2 = agent.scram_sha256_verifier("pw", salt=b"0123456789abcdef")
    assert v1 == v2 and v1.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert agent.scram_sha256_verifier("pw") != agent.scram_sha256_verifier("pw")


# --------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------

def _assert_secret_files(node: dict, secret: dict, *, s3: bool, cipher: bool):
    p, u = node["paths"], node["users"]
    sec, tls = Path(p["secrets"]), Path(p["tls"])
    assert mode_owner(sec) == (0o700, "postgres")
    assert mode_owner(sec / "pgbackrest") == (0o700, "postgres")
    assert mode_owner(tls) == (0o755, "root")
    expected = {sec / "patroni.env": "postgres", sec / "roles.json": "postgres",
                sec / "pgbouncer-userlist.txt": "postgres", sec / "pgbackrest" / "secrets.conf": "postgres",
                sec / "exporter.env": "postgres", tls / "node.key": "postgres", tls / "etcd.key": "etcd"}
    for path, owner in expected.items():
        assert mode_owner(path) == (0o600, owner), path
    # no temporary files left behind
    assert sorted(x.name for x in sec.iterdir()) == sorted(
        ["patroni.env", "roles.json", "pgbouncer-userlist.txt", "pgbackrest", "exporter.env"])

    env = agent.env_unquote((sec / "patroni.env").read_text())
    assert env == {
        "PATRONI_SUPERUSER_USERNAME": "postgres", "PATRONI_SUPERUSER_PASSWORD": secret["superuser_password"],
        "PATRONI_REPLICATION_USERNAME": "replicator", "PATRONI_REPLICATION_PASSWORD": secret["replication_password"],
        "PATRONI_REWIND_USERNAME": "postgres", "PATRONI_REWIND_PASSWORD": secret["superuser_password"],
        "PATRONI_RESTAPI_USERNAME": "patroni", "PATRONI_RESTAPI_PASSWORD": secret["patroni_rest_password"],
    }
    assert json.loads((sec / "roles.json").read_text()) == {
        "pgbouncer_auth_password": secret["pgbouncer_auth_password"], "monitor_password": secret["monitor_password"],
        "app_password": secret["app_password"]}
    userlist = (sec / "pgbouncer-userlist.txt").read_text().splitlines()
    assert userlist[:2] == [f'"pgbouncer_auth" "{secret["pgbouncer_auth_password"]}"',
                            f'"dbuser_monitor" "{secret["monitor_password"]}"']
    # the admin user is named for peer auth on the admin console, with an unusable verifier
    assert len(userlist) == 3 and userlist[2].startswith('"postgres" "SCRAM-SHA-256$4096:')

    conf = (sec / "pgbackrest" / "secrets.conf").read_text().splitlines()
    assert "[global]" in conf
    assert (f"repo1-s3-key={secret.get('s3_key')}" in conf) == s3
    assert (f"repo1-s3-key-secret={secret.get('s3_key_secret')}" in conf) == s3
    assert (f"repo1-cipher-pass={secret.get('pgbackrest_cipher_pass')}" in conf) == cipher

    exp = agent.env_unquote((sec / "exporter.env").read_text())
    pg = psycopg.conninfo.conninfo_to_dict(exp["DATA_SOURCE_NAME"])
    assert pg == {"host": f"{p['run']}/postgres", "port": "5432", "dbname": "postgres", "user": u["monitor"],
                  "password": secret["monitor_password"], "sslmode": "disable"}
    pgb = psycopg.conninfo.conninfo_to_dict(exp["PGHA_PGBOUNCER_DSN"])
    assert pgb == {"host": f"{p['run']}/pgbouncer", "port": "6432", "dbname": "pgbouncer", "user": u["monitor"],
                   "password": secret["monitor_password"], "sslmode": "disable"}
    assert (tls / "node.key").read_text() == TLS_KEY
    assert (tls / "etcd.key").read_text() == TLS_KEY


def _assert_nothing_secret(text: str):
    for value in SECRET_VALUES:
        assert value not in text, "a secret value was printed"


@needs_root
def test_secrets_from_file(capfd):
    base = mkbase("pgha-agent-secrets-")
    try:
        secret = make_secret()
        node = make_node(base, backup_encryption=True)
        write_json(base / "secret.json", secret)
        nj = write_json(base / "etc" / "node.json", node)
        assert agent.main(["--node-json", str(nj), "secrets"]) == 0
        _assert_secret_files(node, secret, s3=True, cipher=True)
        # second run rewrites in place (atomic replace), same result; option after the command works too
        (Path(node["paths"]["secrets"]) / "roles.json").write_text("stale")
        assert agent.main(["secrets", "--node-json", str(nj)]) == 0
        _assert_secret_files(node, secret, s3=True, cipher=True)
        out, err = capfd.readouterr()
        assert "wrote " in err and "patroni.env" in err and "etcd.key" in err
        _assert_nothing_secret(out + err)
    finally:
        shutil.rmtree(base)


@needs_root
def test_secrets_without_optional_keys_cli(tmp_path):
    base = mkbase("pgha-agent-secrets-")
    try:
        secret = make_secret()
        for key in ("s3_key", "s3_key_secret", "pgbackrest_cipher_pass"):
            del secret[key]
        node = make_node(base)
        write_json(base / "secret.json", secret)
        nj = write_json(base / "etc" / "node.json", node)
        res = run_cli("secrets", env={"PGHA_NODE_JSON": str(nj)})  # node file from the environment
        assert res.returncode == 0, res.stderr
        _assert_secret_files(node, secret, s3=False, cipher=False)
        assert res.stdout == ""
        assert " secrets[" in res.stderr and "INFO" in res.stderr
        _assert_nothing_secret(res.stdout + res.stderr)
    finally:
        shutil.rmtree(base)


@needs_root
def test_secrets_missing_member_key_fails_clearly(capfd):
    base = mkbase("pgha-agent-secrets-")
    try:
        write_json(base / "secret.json", make_secret(member="pg-other-1"))
        node = make_node(base)
        nj = write_json(base / "etc" / "node.json", node)
        assert agent.main(["--node-json", str(nj), "secrets"]) == 1
        out, err = capfd.readouterr()
        assert "the secret has no tls_keys entry for member 'pg-x-1'" in err
        _assert_nothing_secret(out + err)
        assert not (base / "etc" / "tls" / "node.key").exists()
    finally:
        shutil.rmtree(base)


@needs_root
def test_secrets_missing_os_user_and_encryption_pass(capfd):
    base = mkbase("pgha-agent-secrets-")
    try:
        write_json(base / "secret.json", make_secret())
        nj = write_json(base / "etc" / "node.json",
                        make_node(base, os_users={"etcd": "no-such-user-pgha"}))
        assert agent.main(["--node-json", str(nj), "secrets"]) == 1
        assert "OS user 'no-such-user-pgha' (os_users.etcd) does not exist" in capfd.readouterr().err

        secret = make_secret()
        del secret["pgbackrest_cipher_pass"]
        write_json(base / "secret.json", secret)
        write_json(nj, make_node(base, backup_encryption=True))
        assert agent.main(["--node-json", str(nj), "secrets"]) == 1
        out, err = capfd.readouterr()
        assert "no usable 'pgbackrest_cipher_pass'" in err
        _assert_nothing_secret(out + err)
    finally:
        shutil.rmtree(base)


@needs_root
def test_secrets_from_secrets_manager(fake_aws, capfd):
    from moto import mock_aws
    import boto3

    base = mkbase("pgha-agent-secrets-")
    try:
        with mock_aws():
            sm = boto3.client("secretsmanager", region_name="us-east-1")
            secret = make_secret()
            del secret["s3_key"], secret["s3_key_secret"]  # EC2: the instance role reaches S3
            arn = sm.create_secret(Name="pgha/pg-x", SecretString=json.dumps(secret))["ARN"]
            node = make_node(base, backup_encryption=True,
                             secret={"source": "aws", "id": arn, "region": "us-east-1", "file": ""})
            nj = write_json(base / "etc" / "node.json", node)
            assert agent.main(["--node-json", str(nj), "secrets"]) == 0
            _assert_secret_files(node, secret, s3=False, cipher=True)

            # a secret that does not exist: retried until the deadline, then a clear error
            write_json(nj, make_node(base, secret={"source": "aws", "id": arn + "-gone", "region": "us-east-1"}))
            t0 = time.monotonic()
            assert agent.main(["--node-json", str(nj), "secrets", "--timeout", "3"]) == 1
            assert time.monotonic() - t0 >= 2
        out, err = capfd.readouterr()
        assert "retrying" in err and "cannot read secret" in err and "ResourceNotFoundException" in err
        _assert_nothing_secret(out + err)
    finally:
        shutil.rmtree(base)


# --------------------------------------------------------------------------------------
# a branch of an encrypted source: the source's cipher pass
# --------------------------------------------------------------------------------------

SOURCE_PASS = "Source-cipher-pw-71c2d3"
SOURCE_RESTORE = {"stanza": "pg-src", "bucket": "src-bucket", "path": "/pg-src/pgbackrest", "target": "latest",
                  "type": "default", "cipher": "aes-256-cbc"}


def branch_node(base: Path, ref: dict) -> dict:
    """A branch member that encrypts its own repository and restores from an encrypted source."""
    return make_node(base, backup_encryption=True, restore={**SOURCE_RESTORE, "cipher_secret": ref})


@needs_root
def test_secrets_fetches_the_source_cipher_pass_of_a_branch(capfd):
    base = mkbase("pgha-agent-secrets-")
    try:
        secret = make_secret()
        write_json(base / "secret.json", secret)
        # Loopback: the source cluster's own secret file (every key of it; only the pass is kept).
        write_json(base / "source-secret.json", make_secret(pgbackrest_cipher_pass=SOURCE_PASS))
        node = branch_node(base, {"source": "file", "file": str(base / "source-secret.json")})
        nj = write_json(base / "etc" / "node.json", node)
        assert agent.main(["--node-json", str(nj), "secrets"]) == 0
        sec = Path(node["paths"]["secrets"])
        assert mode_owner(sec / "source-cipher-pass") == (0o600, "postgres")
        assert (sec / "source-cipher-pass").read_text() == SOURCE_PASS + "\n"
        # The branch's own repository keeps its own pass; the source's is nowhere else.
        conf = (sec / "pgbackrest" / "secrets.conf").read_text()
        assert f"repo1-cipher-pass={secret['pgbackrest_cipher_pass']}" in conf and SOURCE_PASS not in conf
        assert sorted(x.name for x in sec.iterdir()) == sorted(
            ["patroni.env", "roles.json", "pgbouncer-userlist.txt", "pgbackrest", "exporter.env", "source-cipher-pass"])
        out, err = capfd.readouterr()
        assert "source-cipher-pass" in err
        _assert_nothing_secret(out + err)
        assert SOURCE_PASS not in out + err
    finally:
        shutil.rmtree(base)


@needs_root
def test_secrets_fetches_the_source_cipher_secret_from_secrets_manager(fake_aws, capfd):
    from moto import mock_aws
    import boto3

    base = mkbase("pgha-agent-secrets-")
    try:
        with mock_aws():
            write_json(base / "secret.json", make_secret())
            # The source's cipher secret lives in the source's region, as its ARN says.
            sm = boto3.client("secretsmanager", region_name="eu-west-1")
            arn = sm.create_secret(Name="pg-src-cipher",
                                   SecretString=json.dumps({"pgbackrest_cipher_pass": SOURCE_PASS}))["ARN"]
            node = branch_node(base, {"source": "aws", "id": arn, "region": "eu-west-1"})
            nj = write_json(base / "etc" / "node.json", node)
            assert agent.main(["--node-json", str(nj), "secrets"]) == 0
            assert (Path(node["paths"]["secrets"]) / "source-cipher-pass").read_text() == SOURCE_PASS + "\n"
        out, err = capfd.readouterr()
        assert SOURCE_PASS not in out + err
        _assert_nothing_secret(out + err)
    finally:
        shutil.rmtree(base)


@needs_root
def test_an_unreadable_source_cipher_secret_is_a_warning_and_the_restore_fails_clearly(capfd):
    base = mkbase("pgha-agent-secrets-")
    try:
        write_json(base / "secret.json", make_secret())
        node = branch_node(base, {"source": "file", "file": str(base / "gone.json")})
        nj = write_json(base / "etc" / "node.json", node)
        # A member that never restores (added to a branch long promoted) must still boot.
        assert agent.main(["--node-json", str(nj), "secrets"]) == 0
        sec = Path(node["paths"]["secrets"])
        assert (sec / "patroni.env").exists() and not (sec / "source-cipher-pass").exists()
        err = capfd.readouterr().err
        assert "WARNING" in err and "cipher pass was not fetched" in err and "gone.json" in err
        # The restore stops before pgBackRest runs, naming the file.
        assert agent.main(["--node-json", str(nj), "restore-bootstrap", "--pgbackrest", "/bin/false"]) == 1
        err = capfd.readouterr().err
        assert "source-cipher-pass cannot be read" in err and "running" not in err
        # As restore_command: an exit status PostgreSQL takes as fatal, not as the end of the archive.
        rc = agent.main(["--node-json", str(nj), "archive-get-source", "000000010000000000000001", "/tmp/x"])
        assert rc == agent.ARCHIVE_GET_ABORT > 125
    finally:
        shutil.rmtree(base)


FAKE_PGBACKREST = """#!/bin/sh
# Records what pgBackRest would get: its command line and the cipher pass in its environment.
printf '%s\\n' "$@" > "$FAKE_OUT.argv"
printf '%s' "${PGBACKREST_REPO1_CIPHER_PASS-unset}" > "$FAKE_OUT.env"
exit "${FAKE_RC:-0}"
"""


@needs_root
def test_restore_bootstrap_and_archive_get_source_give_pgbackrest_the_pass_in_its_environment_only(monkeypatch):
    monkeypatch.delenv("PGBACKREST_REPO1_CIPHER_PASS", raising=False)  # only the agent may set it
    base = mkbase("pgha-agent-restore-")
    try:
        fake = base / "pgbackrest"
        fake.write_text(FAKE_PGBACKREST)
        fake.chmod(0o755)
        node = branch_node(base, {"source": "file", "file": str(base / "unused.json")})
        nj = write_json(base / "etc" / "node.json", node)
        sec = Path(node["paths"]["secrets"])
        sec.mkdir(parents=True)
        (sec / "source-cipher-pass").write_text(SOURCE_PASS + "\n")
        out = base / "call"
        env = {"FAKE_OUT": str(out)}
        res = run_cli("--node-json", str(nj), "restore-bootstrap", "--pgbackrest", str(fake), env=env)
        assert res.returncode == 0, res.stderr
        argv = Path(f"{out}.argv").read_text().splitlines()
        assert Path(f"{out}.env").read_text() == SOURCE_PASS
        assert "--repo1-cipher-type=aes-256-cbc" in argv and argv[-1] == "restore"
        assert any(a.startswith("--recovery-option=restore_command=") and "archive-get-source" in a for a in argv)
        assert not any(SOURCE_PASS in a for a in argv) and SOURCE_PASS not in res.stdout + res.stderr

        # The restore_command: pgBackRest's exit status is PostgreSQL's answer (1: no such WAL).
        res = run_cli("--node-json", str(nj), "archive-get-source", "--pgbackrest", str(fake),
                      "000000010000000000000003", "pg_wal/RECOVERYXLOG", env={**env, "FAKE_RC": "1"})
        assert res.returncode == 1, res.stderr
        argv = Path(f"{out}.argv").read_text().splitlines()
        assert argv[-3:] == ["archive-get", "000000010000000000000003", "pg_wal/RECOVERYXLOG"]
        assert "--stanza=pg-src" in argv and "--repo1-cipher-type=aes-256-cbc" in argv
        assert Path(f"{out}.env").read_text() == SOURCE_PASS
        assert not any(SOURCE_PASS in a for a in argv) and SOURCE_PASS not in res.stdout + res.stderr
    finally:
        shutil.rmtree(base)


# --------------------------------------------------------------------------------------
# real daemons: PostgreSQL 15, PgBouncer 1.18, pgBackRest on a posix repository
# --------------------------------------------------------------------------------------

class Stack:
    pass


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


@pytest.fixture(scope="module")
def stack():
    assert os.geteuid() == 0, "needs root"
    assert PG_BIN.joinpath("initdb").exists() and shutil.which("pgbouncer") and shutil.which("pgbackrest"), \
        "needs postgresql-15, pgbouncer and pgbackrest (scripts/setup.sh installs them)"
    pg_uid = pwd.getpwnam("postgres")
    base = mkbase("pgha-agent-stack-")
    s = Stack()
    s.base, s.procs = base, []
    s.pg = s.pgb = None
    try:
        pgport, pgbport = free_port(), free_port()
        node = make_node(base, ports={"postgres": pgport, "pgbouncer": pgbport})
        p = node["paths"]
        s.node, s.pgport, s.pgbport = node, pgport, pgbport
        secret = make_secret()
        del secret["s3_key"], secret["s3_key_secret"]  # posix repository here
        s.secret = secret
        write_json(base / "secret.json", secret)
        s.node_json = write_json(base / "etc" / "node.json", node)
        for d in ("run/postgres", "run/pgbouncer", "run/pgbackrest", "log", "data/pg", "repo"):
            (base / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "postgres:postgres", str(base)], check=True)
        # the secrets command writes the files the daemons below use
        assert agent.main(["--node-json", str(s.node_json), "secrets"]) == 0

        Path(p["pgbackrest_config"]).write_text(f"""[global]
repo1-type=posix
repo1-path={base}/repo
repo1-retention-full=1
lock-path={p['run']}/pgbackrest
log-path={p['log']}
log-level-console=warn
start-fast=y

[pg-x]
pg1-path={p['pgdata']}
pg1-port={pgport}
pg1-socket-path={p['run']}/postgres
pg1-user=postgres
""")
        os.chmod(p["pgbackrest_config"], 0o644)
        s.pgbackrest_cmd = " ".join(agent.pgbackrest_argv(node))

        subprocess.run([str(PG_BIN / "initdb"), "-D", p["pgdata"], "-U", "postgres", "-A", "peer",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, user="postgres", group="postgres", cwd="/")
        with open(Path(p["pgdata"]) / "postgresql.conf", "a") as fh:
            fh.write(f"""
listen_addresses = '127.0.0.1'
port = {pgport}
unix_socket_directories = '{p['run']}/postgres'
archive_mode = on
archive_command = '{s.pgbackrest_cmd} --stanza=pg-x archive-push %p'
log_statement = 'all'
logging_collector = off
""")
        (Path(p["pgdata"]) / "pg_hba.conf").write_text(
            "local all postgres peer\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
        s.pg = _start([str(PG_BIN / "postgres"), "-D", p["pgdata"]], base / "log" / "postgres.log")
        s.procs.append(s.pg)
        wait_for(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", f"{p['run']}/postgres",
                                         "-p", str(pgport)]).returncode == 0, what="PostgreSQL")

        (base / "etc" / "pgb_hba.conf").write_text(
            "local pgbouncer postgres peer\n"
            "local all dbuser_monitor scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        s.pgb_ini = base / "etc" / "pgbouncer.ini"
        s.pgb_ini.write_text(f"""[databases]
* = host={p['run']}/postgres port={pgport}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {pgbport}
unix_socket_dir = {p['run']}/pgbouncer
pidfile = {p['run']}/pgbouncer/pgbouncer.pid
logfile = {p['log']}/pgbouncer.log
auth_type = hba
auth_hba_file = {base}/etc/pgb_hba.conf
auth_file = {p['secrets']}/pgbouncer-userlist.txt
auth_user = pgbouncer_auth
auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)
admin_users = postgres
stats_users = dbuser_monitor
pool_mode = transaction
ignore_startup_parameters = extra_float_digits,options
server_idle_timeout = 600
""")
        for f in ("pgb_hba.conf", "pgbouncer.ini"):
            os.chmod(base / "etc" / f, 0o644)
        s.start_pgbouncer = lambda: _start_pgbouncer(s)
        s.stop_pgbouncer = lambda: _stop(s.pgb)
        s.start_pgbouncer()
        env = agent.env_unquote((Path(p["secrets"]) / "exporter.env").read_text())
        s.pgb_admin_dsn = env["PGHA_PGBOUNCER_DSN"].replace("port=6432", f"port={pgbport}")
        s.pg_dsn_postgres = f"host={p['run']}/postgres port={pgport} dbname=postgres user=postgres"
        s.bootstrapped = False
        yield s
    finally:
        for proc in reversed(s.procs):
            _stop(proc)
        if not os.environ.get("PGHA_TEST_KEEP"):  # keep logs for debugging when set
            shutil.rmtree(base, ignore_errors=True)


def _start_pgbouncer(s):
    p = s.node["paths"]
    s.pgb = _start(["pgbouncer", str(s.pgb_ini)], s.base / "log" / "pgbouncer.stdout")
    s.procs.append(s.pgb)
    wait_for(lambda: os.path.exists(f"{p['run']}/pgbouncer/.s.PGSQL.{s.pgbport}"), what="PgBouncer socket")


def post_bootstrap(s) -> tuple[int, str]:
    return run_as("postgres", lambda: agent.main(
        ["--node-json", str(s.node_json), "post-bootstrap", s.pg_dsn_postgres]))


@pytest.fixture(scope="module")
def bootstrapped(stack):
    rc, out = post_bootstrap(stack)
    assert rc == 0, out
    stack.first_bootstrap_output = out
    return stack


def tcp_dsn(s, port, user, password, dbname="postgres"):
    return psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, dbname=dbname, user=user,
                                          password=password, sslmode="disable", connect_timeout=5)


def test_post_bootstrap_roles_and_auth_function(bootstrapped):
    s = bootstrapped
    log_text = s.first_bootstrap_output
    assert "role pgbouncer_auth created" in log_text and "role dbuser_monitor created" in log_text
    assert "database app created, owned by dbuser_app" in log_text
    # idempotent: a second run alters instead of failing
    rc, out = post_bootstrap(s)
    assert rc == 0, out
    assert "role dbuser_monitor altered" in out and "pgbouncer.get_auth present in template1" in out
    _assert_nothing_secret(log_text + out)

    # the monitor logs in over TCP with SCRAM and is a pg_monitor member; a wrong password fails
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", PASSWORDS["monitor_password"])) as conn:
        row = conn.execute("SELECT pg_has_role('pg_monitor', 'MEMBER'), "
                           "current_setting('password_encryption')").fetchone()
        assert row == (True, "scram-sha-256")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", "wrong"))

    with psycopg.connect(tcp_dsn(s, s.pgport, "pgbouncer_auth", PASSWORDS["pgbouncer_auth_password"])) as conn:
        rows = conn.execute("SELECT usename, passwd FROM pgbouncer.get_auth('dbuser_monitor')").fetchall()
        assert len(rows) == 1 and rows[0][0] == "dbuser_monitor" and rows[0][1].startswith("SCRAM-SHA-256$4096:")
        assert conn.execute("SELECT count(*) FROM pgbouncer.get_auth('postgres')").fetchone()[0] == 0
    # the application role owns its database and is no superuser (PgBouncer pools it)
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_app", PASSWORDS["app_password"], dbname="app")) as conn:
        assert conn.execute("SELECT current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == ("app", False)
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", PASSWORDS["monitor_password"])) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgbouncer.get_auth('pgbouncer_auth')")

    # as a superuser over the socket (peer needs uid postgres: check in a forked child)
    def check_catalog():
        with psycopg.connect(s.pg_dsn_postgres) as conn:
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
                                ).fetchone()[0] == 1
            assert conn.execute("SELECT prosecdef FROM pg_proc WHERE oid = 'pgbouncer.get_auth(text)'::regprocedure"
                                ).fetchone()[0] is True
        with psycopg.connect(s.pg_dsn_postgres.replace("dbname=postgres", "dbname=template1")) as conn:
            assert conn.execute("SELECT 'pgbouncer.get_auth(text)'::regprocedure IS NOT NULL").fetchone()[0]
        return 0
    rc, out = run_as("postgres", check_catalog)
    assert rc == 0, out
    # log_statement=all on this server: the clear passwords never reached its log
    _assert_nothing_secret((s.base / "log" / "postgres.log").read_text())


def test_pgbouncer_auth_query_login(bootstrapped):
    s = bootstrapped
    with psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"]),
                         prepare_threshold=None) as conn:
        for _ in range(7):  # beyond psycopg's default prepare threshold (field note 11)
            assert conn.execute("SELECT current_user, %s::int", (1,)).fetchone() == ("dbuser_monitor", 1)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", "wrong"))


def _server_pids(s) -> set[int]:
    cols, rows = agent.admin_query(s.pgb_admin_dsn, "SHOW SERVERS")
    return {dict(zip(cols, r))["remote_pid"] for r in rows}


def _backend_alive(s, pid) -> bool:
    with psycopg.connect(tcp_dsn(s, s.pgport, "dbuser_monitor", PASSWORDS["monitor_password"])) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 1


def test_on_role_change_reconnects_pgbouncer(bootstrapped):
    s = bootstrapped
    with psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"]),
                         prepare_threshold=None, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    # the server connection stays pooled after the client left
    assert backend in _server_pids(s)
    time.sleep(0.5)
    assert backend in _server_pids(s) and _backend_alive(s, backend)

    rc, out = run_as("postgres", lambda: agent.main(
        ["--node-json", str(s.node_json), "on-role-change", "on_role_change", "replica", "pg-x"]))
    assert rc == 0, out
    assert "PgBouncer RECONNECT sent" in out and "stanza-create" not in out
    wait_for(lambda: backend not in _server_pids(s) and not _backend_alive(s, backend), timeout=10,
             what="the pooled server connection to be closed by RECONNECT")


@needs_root
def test_on_role_change_exits_0_when_pgbouncer_down():
    base = mkbase("pgha-agent-down-")
    try:
        (base / "run" / "pgbouncer").mkdir(parents=True)
        nj = write_json(base / "etc" / "node.json", make_node(base, ports={"pgbouncer": free_port()}))
        res = run_cli("--node-json", str(nj), "on-role-change", "on_start", "replica", "pg-x", timeout=30)
        assert res.returncode == 0
        assert "PgBouncer RECONNECT not sent" in res.stderr and "No such file or directory" in res.stderr
        # even a broken node file never fails Patroni
        res = run_cli("--node-json", str(base / "nope.json"), "on-role-change", "on_start", "replica", "pg-x")
        assert res.returncode == 0 and "does not exist" in res.stderr
    finally:
        shutil.rmtree(base)


def test_on_role_change_primary_creates_stanza_and_exporter_sees_it(bootstrapped):
    s = bootstrapped
    log = Path(s.node["paths"]["log"]) / "pgbackrest" / "stanza-create.log"
    rc, out = run_as("postgres", lambda: agent.main(
        ["--node-json", str(s.node_json), "on-role-change", "on_role_change", "primary", "pg-x"]))
    assert rc == 0, out
    assert "PgBouncer RECONNECT sent" in out and "started pgbackrest stanza-create + check" in out
    wait_for(lambda: log.exists() and "finished rc=" in log.read_text(), timeout=120, interval=0.5,
             what="stanza-create + check")
    assert "finished rc=0" in log.read_text(), log.read_text()

    # the exporter's command line, run for real (as postgres, like the service)
    argv = agent.pgbackrest_argv(s.node, "--stanza=pg-x", "--output=json", "info")
    res = subprocess.run(argv, capture_output=True, text=True, user="postgres", group="postgres", cwd="/")
    assert res.returncode == 0, res.stderr
    fams = {f.name: f for f in agent.pgbackrest_families(json.loads(res.stdout), True)}
    status = {tuple(x.labels.values()): x.value for x in fams["pgbackrest_stanza_status"].samples}
    # stanza exists and WAL is archived (check passed), but no backup yet: code 2 "no valid backups"
    assert status == {("pg-x",): 2.0}
    assert [x.value for x in fams["pgbackrest_repo_status"].samples] == [2.0]
    assert {x.labels["type"]: x.value for x in fams["pgbackrest_backup_count"].samples} == \
        {"full": 0.0, "diff": 0.0, "incr": 0.0}
    assert "pgbackrest_archive_max_wal_segment" in fams


@pytest.fixture
def exporter_proc(bootstrapped):
    s = bootstrapped
    port = free_port()
    env_file = Path(s.node["paths"]["secrets"]) / "exporter.env"
    tmp_env = s.base / "etc" / "exporter-test.env"
    tmp_env.write_text(env_file.read_text().replace("port=6432", f"port={s.pgbport}"))
    tmp_env.chmod(0o600)
    proc = subprocess.Popen([PYTHON, str(SCRIPT), "--node-json", str(s.node_json), "pgbouncer-exporter",
                             "--listen", f"127.0.0.1:{port}", "--env-file", str(tmp_env)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            try:
                return scrape(port)
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                return None
        wait_for(ready, timeout=20, what="pgbouncer exporter")
        yield port, proc
    finally:
        _stop(proc, signal.SIGTERM)
        assert proc.returncode == 0  # clean exit on SIGTERM
        logs = proc.stdout.read()
        _assert_nothing_secret(logs)


def test_pgbouncer_exporter_then_pgbouncer_down(bootstrapped, exporter_proc):
    """Last test using the stack: it stops PgBouncer."""
    s = bootstrapped
    port, proc = exporter_proc
    with psycopg.connect(tcp_dsn(s, s.pgbport, "dbuser_monitor", PASSWORDS["monitor_password"]),
                         prepare_threshold=None, autocommit=True) as client:
        for _ in range(3):
            client.execute("SELECT 1").fetchone()
        status, m = scrape(port)
        assert status == 200
        assert sample(m, "pgbouncer_up") == 1.0
        assert sample(m, "pgbouncer_pools_client_active_connections", database="postgres", user="dbuser_monitor") >= 1
        assert sample(m, "pgbouncer_pools_client_waiting_connections", database="postgres", user="dbuser_monitor") == 0
        assert sample(m, "pgbouncer_pools_server_idle_connections", database="postgres", user="dbuser_monitor") is not None
        assert sample(m, "pgbouncer_databases_current_connections", name="postgres", host=f"{s.node['paths']['run']}/postgres",
                      port=str(s.pgport), database="postgres", force_user="", pool_mode="") is not None
        assert sample(m, "pgbouncer_used_clients") >= 1
        assert sample(m, "pgbouncer_pools") >= 1

    # SHOW STATS totals are refreshed every stats_period (60 s by default): poll for them
    def stats():
        _, mm = scrape(port)
        q = sample(mm, "pgbouncer_stats_queries_pooled_total", database="postgres")
        return mm if q and q >= 3 else None
    m = wait_for(stats, timeout=75, interval=2, what="SHOW STATS totals")
    assert sample(m, "pgbouncer_stats_sql_transactions_pooled_total", database="postgres") >= 3
    assert sample(m, "pgbouncer_stats_received_bytes_total", database="postgres") > 0
    assert sample(m, "pgbouncer_stats_sent_bytes_total", database="postgres") > 0
    assert sample(m, "pgbouncer_stats_queries_duration_seconds_total", database="postgres") > 0

    s.stop_pgbouncer()
    status, m = scrape(port)
    assert status == 200 and sample(m, "pgbouncer_up") == 0.0
    assert sample(m, "pgbouncer_pools_client_active_connections", database="postgres", user="dbuser_monitor") is None
    assert proc.poll() is None

    # and the callback copes with the stopped PgBouncer
    rc, out = run_as("postgres", lambda: agent.main(
        ["--node-json", str(s.node_json), "on-role-change", "on_restart", "replica", "pg-x"]))
    assert rc == 0 and "PgBouncer RECONNECT not sent" in out


# --------------------------------------------------------------------------------------
# pure parsing: PgBouncer column sets of other versions, pgBackRest info sample
# --------------------------------------------------------------------------------------

def _fams(families) -> dict:
    out = {}
    for fam in families:
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def test_pgbouncer_families_by_column_name():
    # a newer PgBouncer: extra and reordered columns; values as the admin console returns them
    pools = (["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
              "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
              "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"],
             [("app", "alice", 4, 2, 0, 0, 3, 0, 0, 1, 0, 0, 0, 1, 500000, "transaction", None)])
    stats = (["database", "total_server_assignment_count", "total_xact_count", "total_query_count",
              "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
              "total_client_parse_count", "avg_xact_count"],
             [("app", 9, 10, 20, 300, 400, 5_000_000, 2_500_000, 1_000_000, 7, 1)])
    lists = (["list", "items"], [("databases", 2), ("free_clients", 49), ("used_clients", 5), ("bogus", 1)])
    dbs = (["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool_size",
            "server_lifetime", "pool_mode", "max_connections", "current_connections", "paused", "disabled"],
           [("app", "10.0.0.1", 5432, "app", None, 20, 0, 5, 3600, None, 0, 3, 0, 0),
            ("pgbouncer", None, 6432, "pgbouncer", "pgbouncer", 2, 0, 0, 0, "statement", 0, 0, 0, 0)])
    m = _fams(agent.pgbouncer_families({"POOLS": pools, "STATS": stats, "LISTS": lists, "DATABASES": dbs}, True))
    lab = (("database", "app"), ("user", "alice"))
    assert m[("pgbouncer_up", ())] == 1
    assert m[("pgbouncer_pools_client_active_connections", lab)] == 4
    assert m[("pgbouncer_pools_client_waiting_connections", lab)] == 2
    assert m[("pgbouncer_pools_server_active_connections", lab)] == 3
    assert m[("pgbouncer_pools_server_idle_connections", lab)] == 1
    assert m[("pgbouncer_pools_client_maxwait_seconds", lab)] == 1.5
    db = (("database", "app"),)
    assert m[("pgbouncer_stats_queries_pooled_total", db)] == 20
    assert m[("pgbouncer_stats_sql_transactions_pooled_total", db)] == 10
    assert m[("pgbouncer_stats_queries_duration_seconds_total", db)] == 2.5
    assert m[("pgbouncer_stats_server_in_transaction_seconds_total", db)] == 5
    assert m[("pgbouncer_stats_client_wait_seconds_total", db)] == 1
    assert m[("pgbouncer_stats_received_bytes_total", db)] == 300
    assert m[("pgbouncer_stats_sent_bytes_total", db)] == 400
    assert m[("pgbouncer_stats_server_assignments_total", db)] == 9
    assert m[("pgbouncer_free_clients", ())] == 49 and m[("pgbouncer_databases", ())] == 2
    dlab = (("database", "app"), ("force_user", ""), ("host", "10.0.0.1"), ("name", "app"),
            ("pool_mode", ""), ("port", "5432"))
    assert m[("pgbouncer_databases_current_connections", dlab)] == 3
    assert m[("pgbouncer_databases_reserve_pool", dlab)] == 5
    assert not any("avg" in k[0] or "bogus" in k[0] for k in m)

    # PgBouncer 1.18's SHOW STATS has no total_server_assignment_count: skipped, the rest is there
    old = (["database", "total_xact_count", "total_query_count", "total_received", "total_sent",
            "total_xact_time", "total_query_time", "total_wait_time"], [("app", 1, 2, 3, 4, 5, 6, 7)])
    m = _fams(agent.pgbouncer_families({"STATS": old}, True))
    assert m[("pgbouncer_stats_queries_pooled_total", db)] == 2
    assert ("pgbouncer_stats_server_assignments_total", db) not in m
    assert _fams(agent.pgbouncer_families({}, False)) == {("pgbouncer_up", ()): 0.0}


# Captured from pgBackRest 2.45 (`pgbackrest --output=json info`, posix repo, PostgreSQL 15):
# full, diff, incr, then a second full.
PGBACKREST_INFO_SAMPLE = r'''[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000009","min":"000000010000000000000002"}],"backup":[{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":23213863,"repository":{"delta":4549003,"size":4549003},"size":23213863},"label":"20261121-012620F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1795224380,"stop":1795224382},"type":"full"},{"archive":{"start":"000000010000000000000005","stop":"000000010000000000000005"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":5112074,"repository":{"delta":1127108,"size":5401348},"size":26842919},"label":"20261121-012620F_20261121-012623D","lsn":{"start":"0/5000028","stop":"0/5000100"},"prior":"20261121-012620F","reference":["20261121-012620F"],"timestamp":{"start":1795224383,"stop":1795224384},"type":"diff"},{"archive":{"start":"000000010000000000000007","stop":"000000010000000000000007"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":4350218,"repository":{"delta":947655,"size":5410250},"size":26900263},"label":"20261121-012620F_20261121-012625I","lsn":{"start":"0/7000028","stop":"0/7000100"},"prior":"20261121-012620F_20261121-012623D","reference":["20261121-012620F","20261121-012620F_20261121-012623D"],"timestamp":{"start":1795224385,"stop":1795224387},"type":"incr"},{"archive":{"start":"000000010000000000000008","stop":"000000010000000000000009"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":26900263,"repository":{"delta":5410250,"size":5410250},"size":26900263},"label":"20261121-012630F","lsn":{"start":"0/8000028","stop":"0/9000088"},"prior":null,"reference":null,"timestamp":{"start":1795224390,"stop":1795224393},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7710429989182559883,"version":"15"}],"name":"demo","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]'''
# and for a stanza that was never created (exit code 0, status code 1)
PGBACKREST_INFO_MISSING = r'''[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"nosuch","repo":[{"cipher":"none","key":1,"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":1,"lock":{"backup":{"held":false}},"message":"missing stanza path"}}]'''


def test_pgbackrest_families_from_sample():
    m = _fams(agent.pgbackrest_families(json.loads(PGBACKREST_INFO_SAMPLE), True))
    st = (("stanza", "demo"),)
    lab = lambda t: (("stanza", "demo"), ("type", t))  # noqa: E731
    assert m[("pgbackrest_up", ())] == 1
    assert m[("pgbackrest_stanza_status", st)] == 0
    assert m[("pgbackrest_stanza_backup_lock_held", st)] == 0
    assert m[("pgbackrest_repo_status", (("repo_key", "1"), ("stanza", "demo")))] == 0
    assert m[("pgbackrest_backup_count", lab("full"))] == 2
    assert m[("pgbackrest_backup_count", lab("diff"))] == 1
    assert m[("pgbackrest_backup_count", lab("incr"))] == 1
    # the newest full is the second one
    assert m[("pgbackrest_backup_last_time_seconds", lab("full"))] == 1795224393
    assert m[("pgbackrest_backup_last_duration_seconds", lab("full"))] == 3
    assert m[("pgbackrest_backup_last_size_bytes", lab("full"))] == 26900263
    assert m[("pgbackrest_backup_last_repo_size_bytes", lab("full"))] == 5410250
    assert m[("pgbackrest_backup_last_time_seconds", lab("diff"))] == 1795224384
    assert m[("pgbackrest_backup_last_size_bytes", lab("diff"))] == 26842919
    assert m[("pgbackrest_backup_last_repo_size_bytes", lab("diff"))] == 5401348
    assert m[("pgbackrest_backup_last_time_seconds", lab("incr"))] == 1795224387
    assert m[("pgbackrest_backup_last_delta_bytes", lab("incr"))] == 4350218
    assert m[("pgbackrest_backup_last_error", lab("incr"))] == 0
    archive = (("archive_id", "15-1"), ("stanza", "demo"))
    assert m[("pgbackrest_archive_max_wal_segment", archive)] == 9  # 000000010000000000000009
    assert m[("pgbackrest_archive_max_wal_timeline", archive)] == 1

    m = _fams(agent.pgbackrest_families(json.loads(PGBACKREST_INFO_MISSING), True))
    assert m[("pgbackrest_stanza_status", (("stanza", "nosuch"),))] == 1
    assert m[("pgbackrest_backup_count", (("stanza", "nosuch"), ("type", "full")))] == 0
    assert not any(k[0] == "pgbackrest_backup_last_time_seconds" for k in m)


def test_pgbackrest_info_cache_and_failure(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-pgbackrest"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\ncat <<'EOF'\n{PGBACKREST_INFO_SAMPLE}\nEOF\n")
    fake.chmod(0o755)
    now = [1000.0]
    info = agent.PgBackRestInfo([str(fake), "info"], ttl=60, clock=lambda: now[0])
    assert info.get()[1] is True and info.get()[1] is True
    now[0] += 59
    info.get()
    assert len(calls.read_text().splitlines()) == 1
    now[0] += 2
    data, up = info.get()
    assert up and data[0]["name"] == "demo" and len(calls.read_text().splitlines()) == 2

    for argv in (["false"], [str(tmp_path / "missing-binary")], ["echo", "not json"]):
        data, up = agent.PgBackRestInfo(argv).get()
        assert (data, up) == (None, False)
        assert _fams(agent.pgbackrest_families(data, up)) == {("pgbackrest_up", ()): 0.0}


def test_pgbackrest_exporter_serves_up_0_when_pgbackrest_fails():
    base = mkbase("pgha-agent-brx-")
    port = free_port()
    nj = write_json(base / "node.json", make_node(base))  # config file that does not exist: pgbackrest exits 55
    proc = subprocess.Popen([PYTHON, str(SCRIPT), "--node-json", str(nj), "pgbackrest-exporter",
                             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            try:
                return scrape(port)
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                return None
        status, m = wait_for(ready, timeout=30, what="pgbackrest exporter")
        assert status == 200 and sample(m, "pgbackrest_up") == 0.0
        assert not any(k[0] == "pgbackrest_stanza_status" for k in m)
    finally:
        _stop(proc, signal.SIGTERM)
        out = proc.stdout.read()
        shutil.rmtree(base)
    assert "pgbackrest info exited 55" in out


def test_help_for_every_command():
    for cmd in ("secrets", "post-bootstrap", "on-role-change", "pgbouncer-exporter", "pgbackrest-exporter",
                "restore-bootstrap", "archive-get-source", "etcd", "dcs-sync"):
        res = run_cli(cmd, "--help")
        assert res.returncode == 0 and f"usage: pgha-node {cmd}" in res.stdout


# --- etcd membership -------------------------------------------------------------------------------

URL = {i: f"https://10.0.0.{i}:2380" for i in (1, 2, 3)}


def _member(i: int, started: bool = True, name: str | None = None) -> dict:
    return {"ID": str(1000 + i), "name": f"pg-x-{i}" if name is None else name, "peerURLs": [URL[i]],
            "clientURLs": [f"https://10.0.0.{i}:2379"] if started else []}


def _answer(i: int, leader: bool, members: list[dict]) -> dict:
    return {"name": f"pg-x-{i}", "endpoint": f"https://10.0.0.{i}:2379", "leader": leader, "members": members}


def _plan(me: int, answers: list[dict], has_data: bool = False) -> dict:
    return agent.plan_etcd_start(f"pg-x-{me}", URL[me], "pg-x-1", has_data, answers)


def test_etcd_restart_with_data_starts_whatever_the_others_say():
    assert _plan(2, [], has_data=True)["action"] == "start"


def test_etcd_fresh_cluster_first_member_bootstraps_and_the_rest_follow_it():
    assert _plan(1, [])["action"] == "new"
    # member 1 is up without quorum: its peer port lists the whole initial cluster, nobody started
    bootstrapping = [_answer(1, False, [_member(i, started=False) for i in (1, 2, 3)])]
    assert _plan(2, bootstrapping)["action"] == "new"
    assert _plan(3, bootstrapping)["action"] == "new"


def test_etcd_new_member_never_bootstraps_alone():
    # member 1 down (being replaced) and nobody else answers: a new member 2 must not form a second DCS
    assert _plan(2, [])["action"] == "wait"
    # member 1 answers but with a cluster that does not include member 2 and has no leader
    assert _plan(2, [_answer(1, False, [_member(1)])])["action"] == "wait"


def test_etcd_growing_a_one_member_cluster_joins_it():
    plan = _plan(2, [_answer(1, True, [_member(1)])])
    assert plan == {"action": "join", "via": "https://10.0.0.1:2379", "remove": None, "why": plan["why"]}


def test_etcd_member_listed_but_never_started_joins_as_existing():
    # added by an earlier attempt (no name yet) or part of the initial cluster while the others run
    for entry in (_member(3, started=False, name=""), _member(3, started=False)):
        plan = _plan(3, [_answer(1, True, [_member(1), _member(2), entry])])
        assert plan["action"] == "existing" and plan["via"] == "https://10.0.0.1:2379"


def test_etcd_replaced_member_without_data_removes_its_stale_entry_and_rejoins():
    plan = _plan(3, [_answer(2, False, []), _answer(1, True, [_member(1), _member(2), _member(3)])])
    assert plan["action"] == "join" and plan["remove"] == "1003" and plan["via"] == "https://10.0.0.1:2379"
    # the first member too, when members 2 and 3 kept quorum without it
    plan = _plan(1, [_answer(2, True, [_member(1), _member(2), _member(3)])])
    assert plan["action"] == "join" and plan["remove"] == "1001"


def test_etcd_lost_quorum_and_lost_data_waits_for_an_operator():
    plan = _plan(1, [_answer(2, False, [_member(1), _member(2), _member(3)])])
    assert plan["action"] == "wait" and "quorum" in plan["why"]


def test_etcd_initial_cluster_names_members_that_never_started():
    node = {"ports": {"etcd_peer": 2380}, "peers": {f"pg-x-{i}": {"ip": f"10.0.0.{i}", "etcd": True} for i in (1, 2, 3)}}
    members = [_member(1), _member(3, started=False, name="")]
    assert agent.etcd_initial_cluster(node, members) == f"pg-x-1={URL[1]},pg-x-3={URL[3]}"
    with pytest.raises(agent.AgentError, match="not a member of this cluster's spec"):
        agent.etcd_initial_cluster(node, [{"ID": "9", "name": "", "peerURLs": ["https://10.9.9.9:2380"]}])


def test_effective_etcd_config_replaces_only_the_initial_cluster_lines():
    rendered = ("name: pg-x-2\ninitial-cluster: pg-x-1=a,pg-x-2=b,pg-x-3=c\ninitial-cluster-token: pg-x\n"
                "initial-cluster-state: new\nenable-v2: false\n")
    out = agent.effective_etcd_config(rendered, "pg-x-1=a,pg-x-2=b", "existing")
    assert out == ("name: pg-x-2\ninitial-cluster: pg-x-1=a,pg-x-2=b\ninitial-cluster-token: pg-x\n"
                   "initial-cluster-state: existing\nenable-v2: false\n")


# --- DCS settings ------------------------------------------------------------------------------------

def test_dcs_changes_patches_only_what_differs():
    current = {"ttl": 30, "loop_wait": "10", "synchronous_mode": False, "failsafe_mode": True,
               "check_timeline": True,  # an operator's own key: left alone
               "postgresql": {"use_slots": True, "parameters": {"max_connections": "100", "wal_log_hints": "on"}}}
    desired = {"ttl": 30, "loop_wait": 10, "synchronous_mode": True, "synchronous_mode_strict": True,
               "failsafe_mode": "on",
               "postgresql": {"use_slots": True, "parameters": {"max_connections": 200, "wal_log_hints": True}}}
    assert agent.dcs_changes(current, desired) == {
        "synchronous_mode": True, "synchronous_mode_strict": True,
        "postgresql": {"parameters": {"max_connections": 200}}}
    assert agent.dcs_changes(current, {"ttl": 30, "postgresql": {"use_slots": True}}) == {}


def test_sync_candidate_needs_a_streaming_replica_that_may_be_synchronous():
    leader = {"name": "a", "role": "leader", "state": "running"}
    restoring = {"name": "b", "role": "replica", "state": "creating replica"}
    nosync = {"name": "c", "role": "replica", "state": "streaming", "tags": {"nosync": True}}
    streaming = {"name": "d", "role": "replica", "state": "streaming"}
    assert not agent.sync_candidate_ready({"members": [leader, restoring, nosync]})
    assert agent.sync_candidate_ready({"members": [leader, restoring, streaming]})


def test_dcs_sync_runs_once_per_spec(tmp_path, monkeypatch):
    etc, data = tmp_path / "etc", tmp_path / "data"
    (data / "pg").mkdir(parents=True)
    etc.mkdir()
    (etc / "patroni.yml").write_text("bootstrap:\n  dcs:\n    ttl: 20\n    synchronous_mode: true\n")
    node = {"ip": "127.0.0.1", "ports": {"patroni": 1}, "paths": {"etc": str(etc), "data": str(data)}}
    config = {"ttl": 30, "synchronous_mode": False}
    cluster = {"members": [{"name": "a", "role": "leader", "state": "running"},
                           {"name": "b", "role": "replica", "state": "streaming"}]}
    patches = []
    monkeypatch.setattr(agent, "patroni_get", lambda node, path: cluster if path == "/cluster" else config)
    monkeypatch.setattr(agent, "patroni_patch_config", lambda node, body: patches.append(body) or {})
    args = types.SimpleNamespace(timeout=5.0, force=False)
    assert agent.cmd_dcs_sync(node, args) == 0
    assert patches == [{"ttl": 20, "synchronous_mode": True}]
    assert agent.cmd_dcs_sync(node, args) == 0  # same spec: not applied again, whatever the DCS says
    assert len(patches) == 1
    (etc / "patroni.yml").write_text("bootstrap:\n  dcs:\n    ttl: 25\n")
    assert agent.cmd_dcs_sync(node, args) == 0  # a new spec (a replaced node) applies
    assert patches[-1] == {"ttl": 25}


def test_dcs_sync_waits_for_a_replica_before_strict_synchronous_mode(tmp_path, monkeypatch):
    etc, data = tmp_path / "etc", tmp_path / "data"
    (data / "pg").mkdir(parents=True)
    etc.mkdir()
    (etc / "patroni.yml").write_text("bootstrap:\n  dcs:\n    synchronous_mode: true\n")
    node = {"ip": "127.0.0.1", "ports": {"patroni": 1}, "paths": {"etc": str(etc), "data": str(data)}}
    cluster = {"members": [{"name": "a", "role": "leader", "state": "running"}]}
    monkeypatch.setattr(agent, "patroni_get", lambda node, path: cluster if path == "/cluster" else {})
    monkeypatch.setattr(agent, "patroni_patch_config", lambda node, body: pytest.fail("patched with no replica"))
    monkeypatch.setattr(agent, "DCS_SYNC_POLL", 0.05)
    with pytest.raises(agent.AgentError, match="streaming replica"):
        agent.cmd_dcs_sync(node, types.SimpleNamespace(timeout=0.3, force=False))
    assert not (data / "pg" / "dcs-applied.sha256").exists()


# --- etcd leadership -----------------------------------------------------------------------

def _status(member_id: str, leader: str, raft_index: int = 100) -> dict:
    return {"id": member_id, "leader": leader, "raft_index": raft_index}


def _cluster(**roles: str) -> dict:
    """Patroni's /cluster: name=role, a replica streaming unless its role ends in '-stopped'."""
    members = []
    for name, role in roles.items():
        role, _, stopped = role.partition("-")
        state = "running" if role == "leader" else ("stopped" if stopped else "streaming")
        members.append({"name": name.replace("_", "-"), "role": role, "state": state})
    return {"members": members}


def test_leadership_leaves_the_primarys_node_for_the_asynchronous_replicas():
    pick = agent.leadership_transferee
    cluster = _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica")
    others = {"pg-x-2": _status("22", "11", 100), "pg-x-3": _status("33", "11", 100)}
    assert pick(_status("11", "11"), "pg-x-1", cluster, others) == ("pg-x-3", "33")
    # Patroni 3.x says master
    assert pick(_status("11", "11"), "pg-x-1", _cluster(pg_x_1="master", pg_x_2="sync_standby", pg_x_3="replica"),
                others) == ("pg-x-3", "33")
    assert pick(_status("11", "22"), "pg-x-1", cluster, others) is None  # not the raft leader: nothing to do
    assert pick(_status("", ""), "pg-x-1", cluster, others) is None


def test_leadership_leaves_the_synchronous_standby_only_for_a_streaming_asynchronous_replica():
    pick = agent.leadership_transferee
    me = _status("22", "22")
    others = {"pg-x-1": _status("11", "22"), "pg-x-3": _status("33", "22")}
    assert pick(me, "pg-x-2", _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica"), others) == ("pg-x-3", "33")
    # the asynchronous replica is not streaming: staying on the sync standby beats the primary
    assert pick(me, "pg-x-2", _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica-stopped"), others) is None
    # already on the asynchronous replica: stay
    assert pick(_status("33", "33"), "pg-x-3", _cluster(pg_x_1="leader", pg_x_2="sync_standby", pg_x_3="replica"),
                {"pg-x-1": _status("11", "33"), "pg-x-2": _status("22", "33")}) is None


def test_leadership_goes_only_to_a_follower_in_contact_the_most_caught_up_first():
    pick = agent.leadership_transferee
    me = _status("11", "11")
    two_async = _cluster(pg_x_1="leader", pg_x_2="replica", pg_x_3="replica")
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": _status("22", "11", 90), "pg-x-3": _status("33", "11", 120)}) == ("pg-x-3", "33")
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": _status("22", "11", 120), "pg-x-3": _status("33", "11", 120)}) == ("pg-x-2", "22")
    # down, following no one (electing), or following another leader: no target
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": None, "pg-x-3": _status("33", "", 500)}) is None
    assert pick(me, "pg-x-1", two_async, {"pg-x-2": _status("22", "44"), "pg-x-3": _status("33", "11")}) == ("pg-x-3", "33")
    assert pick(me, "pg-x-1", _cluster(pg_x_1="leader"), {}) is None  # a one-member branch
    # Patroni's view unavailable (empty): every node ranks the same, nothing moves
    assert pick(me, "pg-x-1", {}, {"pg-x-2": _status("22", "11")}) is None


def test_timeline_guard_acts_only_on_a_replica_stuck_behind_the_leader_s_timeline():
    cluster = {"members": [{"name": "pg-x-3", "role": "leader", "state": "running", "timeline": 3},
                           {"name": "pg-x-2", "role": "replica", "state": "in archive recovery", "timeline": 2}]}
    stuck = {"role": "replica", "state": "running", "timeline": 2, "replication_state": "in archive recovery"}
    why = agent.stuck_on_old_timeline(stuck, cluster)
    assert why is not None and "timeline 2" in why and "pg-x-3 is on 3" in why
    # Streaming (it is catching up), on the leader's timeline, not a replica, or no running leader: nothing.
    assert agent.stuck_on_old_timeline({**stuck, "replication_state": "streaming"}, cluster) is None
    assert agent.stuck_on_old_timeline({**stuck, "timeline": 3}, cluster) is None
    assert agent.stuck_on_old_timeline({**stuck, "role": "primary"}, cluster) is None
    assert agent.stuck_on_old_timeline({**stuck, "state": "starting"}, cluster) is None
    leaderless = {"members": [{**cluster["members"][0], "state": "stopped"}, cluster["members"][1]]}
    assert agent.stuck_on_old_timeline(stuck, leaderless) is None


def test_stanza_create_waits_while_an_archive_push_holds_the_lock(monkeypatch):
    """Right after a promotion: the archive lock held by the async archive-push of its first WAL
    (exit 50), PostgreSQL still in recovery (exit 56). The agent retries on those, then checks."""
    monkeypatch.setattr(agent, "STANZA_WAIT", 0.1)
    base = mkbase("pgha-agent-stanza-")
    try:
        calls = base / "calls"
        fake = base / "pgbackrest"
        fake.write_text("#!/bin/sh\n"
                        f'for a in "$@"; do case "$a" in stanza-create|check) echo "$a" >> {calls};; esac; done\n'
                        f'case "$*" in *stanza-create*) n=$(grep -c stanza-create {calls}); '
                        '[ "$n" -ge 3 ] || exit $((44 + 6 * n));; esac\n'
                        "exit 0\n")
        fake.chmod(0o755)
        node = make_node(base)
        Path(node["paths"]["log"]).mkdir(parents=True, exist_ok=True)
        assert agent.start_stanza_create(node, binary=str(fake)).wait(timeout=30) == 0
        assert calls.read_text().split() == ["stanza-create"] * 3 + ["check"]
        log = (Path(node["paths"]["log"]) / "pgbackrest" / "stanza-create.log").read_text()
        assert "not yet (exit 50" in log and "not yet (exit 56" in log and "finished rc=0" in log
        # Any other failure is final: no retry, no check.
        calls.unlink()
        fake.write_text(f"#!/bin/sh\necho stanza-create >> {calls}\nexit 47\n")
        assert agent.start_stanza_create(node, binary=str(fake)).wait(timeout=30) == 47
        assert calls.read_text().split() == ["stanza-create"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
