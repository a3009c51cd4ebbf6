"""Rendered files accepted by each daemon's own checker (the Debian packages .ci/run installs)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pgha.local.supervisor import parse_unit
from pgha.local.tls import issue
from pgha.render import render_node
from render_fixtures import COMBINATIONS, _ca, ec2_context, loopback_context, make_spec

# The test extras install the nodes' Patroni pin next to this interpreter.
PATRONI = Path(sys.executable).parent / "patroni"


@pytest.fixture(scope="module")
def loopback_node():
    """One member's loopback files written to disk, its directories made by its own script."""
    root = Path(tempfile.mkdtemp(prefix="pgha-check-", dir="/tmp"))
    os.chmod(root, 0o755)
    spec = make_spec({"instanceType": "t4g.medium", "profile": "tiny"}, stack="chk")
    ctx = loopback_context(spec, str(root))
    member = spec.members[0]
    for f in render_node(spec, member, ctx):
        path = Path(f.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.content)
        path.chmod(f.mode)
    subprocess.run([ctx.layout.bin + "/pgha-prepare-dirs"], check=True)
    # What `pgha-node secrets` writes at boot: the member's key, for PostgreSQL/PgBouncer and etcd.
    cert = issue(_ca(), common_name=member.name, ips=[ctx.member_ips[member.name]])
    tls = Path(ctx.layout.tls)
    (tls / "node.crt").write_text(cert.cert_pem)
    for name, owner in (("node.key", "postgres"), ("etcd.key", "etcd")):
        (tls / name).write_text(cert.key_pem)
        shutil.chown(tls / name, owner, owner)
        os.chmod(tls / name, 0o600)
    yield spec, ctx, member, root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_haproxy_accepts_every_member_config(combo, tmp_path):
    spec = make_spec({**COMBINATIONS[combo], "replicas": 3})
    ctx = ec2_context(spec)
    for member in spec.members:
        cfg = next(f for f in render_node(spec, member, ctx) if f.path.endswith("haproxy.cfg"))
        (tmp_path / "haproxy.cfg").write_text(cfg.content)
        result = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_patroni_validates_its_config(loopback_node):
    spec, ctx, member, root = loopback_node
    # Patroni's validator wants the etcd hosts reachable; stand-in listeners on their ports.
    listeners = []
    for ip in ctx.member_ips.values():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, 2379))
        sock.listen()
        listeners.append(sock)
    try:
        result = subprocess.run([str(PATRONI), "--validate-config", ctx.layout.etc + "/patroni.yml"],
                                capture_output=True, text=True)
    finally:
        for sock in listeners:
            sock.close()
    assert result.returncode == 0, result.stdout + result.stderr


def test_pgbouncer_starts_with_its_config(loopback_node):
    spec, ctx, member, root = loopback_node
    secrets = Path(ctx.layout.secrets)
    (secrets / "pgbouncer-userlist.txt").write_text('"pgbouncer_auth" "not-a-real-password"\n')
    shutil.chown(secrets / "pgbouncer-userlist.txt", "postgres", "postgres")
    ini = ctx.layout.etc + "/pgbouncer/pgbouncer.ini"
    proc = subprocess.Popen(["/usr/sbin/pgbouncer", ini], user="postgres", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        listening = False
        while time.monotonic() < deadline and proc.poll() is None and not listening:
            try:
                socket.create_connection((ctx.member_ips[member.name], 6432), timeout=0.5).close()
                listening = True
            except OSError:
                time.sleep(0.2)
        log = Path(ctx.layout.log + "/pgbouncer/pgbouncer.log")
        assert listening, (proc.stdout.read() if proc.poll() is not None else "") + (
            log.read_text() if log.exists() else "")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_pgbackrest_accepts_every_option(loopback_node):
    spec, ctx, member, root = loopback_node
    include = Path(ctx.layout.secrets) / "pgbackrest"
    (include / "secrets.conf").write_text("[global]\nrepo1-s3-key=k\nrepo1-s3-key-secret=s\n")
    conf = ctx.layout.etc + "/pgbackrest/pgbackrest.conf"
    base = ["pgbackrest", f"--config={conf}", f"--config-include-path={include}", f"--stanza={spec.cluster_name}",
            "--io-timeout=1"]
    # With nothing listening at the S3 endpoint the command fails, but on the network, never on an
    # option: pgBackRest reports option errors with codes 31-39 before it connects anywhere.
    result = subprocess.run([*base, "--repo1-storage-port=1", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode not in range(31, 40), result.stderr
    bogus = subprocess.run([*base, "--repo1-s3-bukket=x", "info"], capture_output=True, text=True, timeout=60)
    assert bogus.returncode == 31 and "invalid option" in bogus.stderr


def test_etcd_accepts_its_config(loopback_node):
    spec, ctx, member, root = loopback_node
    proc = subprocess.Popen(["/usr/bin/etcd", "--config-file", ctx.layout.etc + "/etcd/etcd.conf.yml"], user="etcd",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # A member of a three-member cluster waits for its peers; a bad config exits at once.
        time.sleep(3)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert alive, out
    assert f"https://{ctx.member_ips[member.name]}:2379" in out


def test_every_unit_runs_binaries_that_exist(loopback_node):
    spec, ctx, member, root = loopback_node
    unit_dir = Path(ctx.layout.units)
    units = sorted(unit_dir.glob("*.service"))
    assert len(units) >= 9
    for path in units:
        unit = parse_unit(path.read_text(), name=path.name)
        for command in (*unit.exec_start_pre, *unit.exec_start):
            binary = command.argv({})[0]
            assert os.access(binary, os.X_OK) or binary.startswith(ctx.layout.venv), f"{path.name}: {binary}"
