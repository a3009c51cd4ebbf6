"""Tests for pgha.local.s3: moto behind an HAProxy TLS terminator, used by boto3 and
by the real pgBackRest 2.45 binary."""

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from pgha.local.s3 import LocalS3, LocalS3Error, PortInUseError
from pgha.local.tls import CertKey, make_ca

BUCKET = "pgha-test-repo"
INITDB = Path("/usr/lib/postgresql/15/bin/initdb")



def free_port() -> int:
    """A port nothing listens on now (not the defaults, so a running cluster is safe)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def ca() -> CertKey:
    return make_ca("pgha loopback test CA")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, ca: CertKey) -> Iterator[LocalS3]:
    local = LocalS3(
        state_dir=tmp_path_factory.mktemp("s3"), ca=ca,
        http_port=free_port(), tls_port=free_port(),
    )
    with local:
        local.create_bucket(BUCKET)
        yield local
    pids = [p for p in local.pids().values() if p]
    assert not pids, f"LocalS3.stop() left processes running: {pids}"


def test_endpoint_properties(s3: LocalS3) -> None:
    assert s3.host == "localhost"
    assert s3.url == f"https://localhost:{s3.tls_port}"
    assert s3.port == s3.tls_port != s3.http_port
    assert s3.region == "us-east-1"
    assert s3.ca_file.read_text() == s3.ca.cert_pem


def test_put_and_get_over_verified_tls(s3: LocalS3) -> None:
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="probe/hello.txt", Body=b"hello over TLS")
    body = client.get_object(Bucket=BUCKET, Key="probe/hello.txt")["Body"].read()
    assert body == b"hello over TLS"
    s3.create_bucket(BUCKET)  # idempotent for a re-run `up`
    names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert names.count(BUCKET) == 1


def test_client_without_the_ca_fails_verification(s3: LocalS3) -> None:
    client = boto3.client(
        "s3", endpoint_url=s3.url, region_name=s3.region,
        aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client.list_buckets()


def test_plain_http_port_is_loopback_only(s3: LocalS3) -> None:
    # moto is only reachable on 127.0.0.1, never on the wildcard address.
    out = subprocess.run(["ss", "-Hltn", f"sport = :{s3.http_port}"],
                         capture_output=True, text=True, check=True).stdout
    local_addresses = [line.split()[3] for line in out.splitlines()]
    assert local_addresses == [f"127.0.0.1:{s3.http_port}"]


def test_start_again_is_a_noop(s3: LocalS3) -> None:
    before = s3.pids()
    assert all(before.values())
    again = LocalS3(state_dir=s3.state_dir, ca=s3.ca, http_port=s3.http_port,
                    tls_port=s3.tls_port)
    again.start()
    assert again.pids() == before
    assert again.is_running()


def test_port_in_use_by_someone_else_is_reported(
    tmp_path: Path, ca: CertKey
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        busy = squatter.getsockname()[1]
        local = LocalS3(state_dir=tmp_path, ca=ca, http_port=free_port(), tls_port=busy)
        expected = rf"127\.0\.0\.1:{busy} .*already in use by .*pid {os.getpid()}"
        with pytest.raises(PortInUseError, match=expected):
            local.start()
    assert local.pids() == {"s3-moto": None, "s3-haproxy": None}  # nothing half-started


def test_start_failure_reports_the_log(tmp_path: Path, ca: CertKey) -> None:
    fake = tmp_path / "fake-moto"
    fake.write_text("#!/bin/sh\necho 'moto: cannot start, simulated' >&2\nexit 4\n")
    fake.chmod(0o755)
    local = LocalS3(state_dir=tmp_path / "state", ca=ca, moto_server=fake,
                    http_port=free_port(), tls_port=free_port())
    with pytest.raises(LocalS3Error, match="exited with status 4") as err:
        local.start()
    assert "moto: cannot start, simulated" in str(err.value)
    assert local.pids() == {"s3-moto": None, "s3-haproxy": None}


@pytest.fixture(scope="module")
def pg_data_dir() -> Iterator[Path]:
    """A stopped PostgreSQL data directory, so stanza-create (a repository write)
    can run offline. It lives outside pytest's 0700 tmp tree so `postgres` can use it."""
    assert INITDB.exists(), "needs postgresql-15 (scripts/setup.sh installs it)"
    base = Path(tempfile.mkdtemp(prefix="pgha-s3-test-"))
    shutil.chown(base, "postgres")
    try:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(INITDB), "-D", str(base / "pg"),
             "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True,
        )
        yield base / "pg"
    finally:
        shutil.rmtree(base)


def pgbackrest(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pgbackrest", f"--config={conf}", "--stanza=x", *args],
                          capture_output=True, text=True, timeout=120)


def test_pgbackrest_round_trip(s3: LocalS3, tmp_path: Path, pg_data_dir: Path) -> None:
    options = {
        "repo1-type": "s3",
        "repo1-s3-bucket": BUCKET,
        "repo1-s3-endpoint": "localhost",
        "repo1-storage-port": str(s3.port),
        "repo1-s3-region": s3.region,
        "repo1-s3-key": s3.access_key,
        "repo1-s3-key-secret": s3.secret_key,
        "repo1-s3-uri-style": "path",
        "repo1-storage-ca-file": str(s3.ca_file),
        "repo1-path": "/test",
    }
    # The helper yields the same settings the test spells out by hand.
    assert {k: v for k, v in s3.pgbackrest_options(bucket=BUCKET).items()
            if k != "repo1-s3-key-type"} == {k: v for k, v in options.items() if k != "repo1-path"}
    conf = tmp_path / "pgbackrest.conf"
    lines = ["[global]", *(f"{k}={v}" for k, v in options.items()),
             f"log-path={tmp_path}", f"lock-path={tmp_path}", "log-level-file=off",
             "", "[x]", f"pg1-path={pg_data_dir}"]
    conf.write_text("\n".join(lines) + "\n")

    s3.client().put_object(Bucket=BUCKET, Key="test/from-boto3.txt", Body=b"written by boto3")
    # Write through pgBackRest: PUTs are what broke with moto's own TLS.
    created = pgbackrest(conf, "--no-online", "stanza-create")
    assert created.returncode == 0, created.stdout + created.stderr

    listing = pgbackrest(conf, "repo-ls", "--recurse")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    entries = listing.stdout.split()
    assert "from-boto3.txt" in entries
    assert "archive/x/archive.info" in entries and "backup/x/backup.info" in entries

    got = pgbackrest(conf, "repo-get", "from-boto3.txt")
    assert got.returncode == 0 and got.stdout == "written by boto3", got.stderr
    # And what pgBackRest wrote is really in the bucket.
    info = s3.client().get_object(Bucket=BUCKET, Key="test/archive/x/archive.info")
    assert b"[db]" in info["Body"].read()


def test_pgbackrest_rejects_the_endpoint_without_the_ca(s3: LocalS3, tmp_path: Path) -> None:
    conf = tmp_path / "pgbackrest.conf"
    options = s3.pgbackrest_options(bucket=BUCKET)
    del options["repo1-storage-ca-file"]
    conf.write_text("[global]\n" + "".join(f"{k}={v}\n" for k, v in options.items())
                    + f"log-path={tmp_path}\nlock-path={tmp_path}\nlog-level-file=off\n"
                    + "repo1-path=/test\n")
    # pgBackRest retries TLS errors until io-timeout (default 60 s): keep it short.
    listing = pgbackrest(conf, "--io-timeout=1", "repo-ls")
    assert listing.returncode != 0
    assert "unable to verify certificate presented by 'localhost:" in listing.stderr


def test_stop_leaves_no_process(tmp_path: Path, ca: CertKey) -> None:
    local = LocalS3(state_dir=tmp_path, ca=ca, http_port=free_port(), tls_port=free_port())
    local.start()
    pids = local.pids()
    assert all(pid and alive(pid) for pid in pids.values())
    kept = sorted(p.name for p in tmp_path.iterdir())
    local.stop()
    assert not any(alive(pid) for pid in pids.values() if pid)
    assert local.pids() == {"s3-moto": None, "s3-haproxy": None}
    # Only the pid files were removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n in kept if not n.endswith(".pid")
    )
    assert not local.is_running()
    assert os.path.exists(local.ca_file)
