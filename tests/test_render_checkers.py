"""Rendered files accepted by each daemon's own checker, inside the node image (Debian 13's
haproxy, patroni, pgbouncer, pgbackrest, etcd and systemd: the versions EC2 members run)."""

import json
import re
import shlex

import pytest

from node_image import image_with, run_in
from pgha.local import netns
from pgha.local.tls import issue
from pgha.render import render_node
from render_fixtures import COMBINATIONS, _ca, ec2_context, local_context, make_spec

pytestmark = pytest.mark.image

PREFIX = "10.219.9."
# What the member's boot does before its daemons start (/run is new in every container run).
PREPARE = ("/opt/pgha/bin/pgha-prepare-dirs && chown postgres /etc/pgha/tls/node.key "
           "/etc/pgha/secrets/pgbouncer-userlist.txt && chown etcd /etc/pgha/tls/etcd.key && ")


@pytest.fixture(scope="module")
def member_root():
    """One member's files (the local cluster's rendering, EC2's layout) in an overlay of the image,
    its directories made by its own script, the keys its boot writes, in a namespace with its address."""
    spec = make_spec({"instanceType": "t4g.medium", "profile": "tiny"}, stack="chk")
    ctx = local_context(spec, PREFIX)
    member = spec.members[0]
    cert = issue(_ca(), common_name=member.name, ips=[ctx.member_ips[member.name]])
    files: dict = {f.path: (f.content, f.mode) for f in render_node(spec, member, ctx)}
    files["/etc/pgha/tls/node.crt"] = cert.cert_pem
    files["/etc/pgha/tls/node.key"] = (cert.key_pem, 0o600)
    files["/etc/pgha/tls/etcd.key"] = (cert.key_pem, 0o600)
    files["/etc/pgha/secrets/pgbouncer-userlist.txt"] = ('"pgbouncer_auth" "not-a-real-password"\n', 0o600)
    netns.setup(PREFIX, [1])
    ns = netns.namespace(PREFIX, 1)
    try:
        with image_with(files) as root:
            prepared = run_in(root, PREPARE + "echo PREPARED")
            assert "PREPARED" in prepared.stdout, prepared.stdout + prepared.stderr
            yield spec, ctx, member, root, ns
    finally:
        netns.teardown(PREFIX, [1])


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_haproxy_accepts_every_member_config(combo):
    spec = make_spec({**COMBINATIONS[combo], "replicas": 3})
    ctx = ec2_context(spec)
    files = {f"/check/{member.name}.cfg": next(f.content for f in render_node(spec, member, ctx)
                                               if f.path.endswith("haproxy.cfg")) for member in spec.members}
    # The checks to Patroni and PgBouncer verify against the cluster CA: haproxy -c loads it.
    files["/etc/pgha/tls/ca.crt"] = _ca().cert_pem
    with image_with(files) as root:
        result = run_in(root, "for cfg in /check/*.cfg; do haproxy -c -q -f $cfg || exit 1; echo VALID $cfg; done")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("VALID /check/") == len(spec.members)


def test_patroni_validates_its_config(member_root):
    spec, ctx, member, root, ns = member_root
    # Patroni's validator wants every etcd host reachable: the others' addresses on this
    # namespace's loopback, with a listener on each etcd client port.
    for ip in ctx.member_ips.values():
        netns.add_address(ns, f"{ip}/32", "lo")
    listen = "".join(f"python3 -c 'import socket,time; s=socket.create_server((\"{ip}\", 2379)); time.sleep(30)' & "
                     for ip in ctx.member_ips.values())
    result = run_in(root, PREPARE + listen + "sleep 1; patroni --validate-config /etc/pgha/patroni.yml; echo EXIT=$?",
                    netns=ns)
    assert result.stdout.rstrip().endswith("EXIT=0"), result.stdout + result.stderr


def test_pgbouncer_starts_with_its_config(member_root):
    spec, ctx, member, root, ns = member_root
    ip = ctx.member_ips[member.name]
    script = (PREPARE + "setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer -d /etc/pgha/pgbouncer/pgbouncer.ini"
              f" && for i in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"{ip}\", 6432), 1)' "
              "2>/dev/null && echo LISTENING && break; sleep 0.2; done; cat /var/log/pgha/pgbouncer/pgbouncer.log")
    result = run_in(root, script, netns=ns)
    assert "LISTENING" in result.stdout, result.stdout + result.stderr
    assert "max_prepared_statements" not in result.stdout  # 1.24 knows every setting it is given


def test_pgbackrest_accepts_every_option(member_root):
    spec, ctx, member, root, ns = member_root
    base = (f"{PREPARE}setpriv --reuid=postgres --regid=postgres --init-groups pgbackrest --config=/etc/pgha/pgbackrest/"
            f"pgbackrest.conf --config-include-path=/etc/pgha/secrets/pgbackrest --stanza={spec.cluster_name} "
            "--io-timeout=1")
    # With nothing at the S3 endpoint the command fails, but on the network, never on an option:
    # pgBackRest reports option errors with codes 31-39 before it connects anywhere.
    result = run_in(root, f"{base} --repo1-storage-port=1 info; echo EXIT=$?", netns=ns, timeout=180)
    code = int(result.stdout.rsplit("EXIT=", 1)[1])
    assert code not in range(31, 40), result.stdout + result.stderr
    bogus = run_in(root, f"{base} --repo1-s3-bukket=x info; echo EXIT=$?", netns=ns)
    assert bogus.stdout.rstrip().endswith("EXIT=31") and "invalid option" in bogus.stdout + bogus.stderr


def test_etcd_accepts_its_config(member_root):
    spec, ctx, member, root, ns = member_root
    # A member of a three-member cluster waits for its peers; a bad config exits at once.
    script = (PREPARE + "setpriv --reuid=etcd --regid=etcd --init-groups etcd --config-file /etc/pgha/etcd/etcd.conf.yml "
              "> /tmp/etcd.out 2>&1 & sleep 3; kill -0 $! && echo ALIVE; kill $!; cat /tmp/etcd.out")
    result = run_in(root, script, netns=ns)
    assert "ALIVE" in result.stdout, result.stdout
    assert f"https://{ctx.member_ips[member.name]}:2379" in result.stdout


def test_every_unit_is_valid_and_runs_binaries_that_exist(member_root):
    spec, ctx, member, root, ns = member_root
    rendered = [f.path for f in render_node(spec, member, ctx) if f.path.startswith("/etc/systemd/system/")]
    units = [p for p in rendered if "/" not in p.removeprefix("/etc/systemd/system/")]
    assert len(units) >= 12
    # Drop-ins (Debian's nftables.service's and ssh.service's) are verified with the unit they extend.
    extended = sorted({"/usr/lib/systemd/system/" + p.split("/")[-2].removesuffix(".d")
                       for p in rendered if p not in units})
    assert extended == ["/usr/lib/systemd/system/nftables.service", "/usr/lib/systemd/system/ssh.service"]
    # systemd's own verdict, with the image's systemd: unknown directives, missing binaries.
    result = run_in(root, "systemd-analyze verify " + " ".join(shlex.quote(u) for u in [*units, *extended])
                    + "; echo EXIT=$?")
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith(("/etc/systemd/system/pgha", "/etc/systemd/system/ssh", "/etc/systemd/system/nft"))
                or "not executable" in line or "Unknown" in line]
    assert problems == [], result.stdout + result.stderr
    binaries = set()
    for path in units:
        for line in (root / path.lstrip("/")).read_text().splitlines():
            if re.match(r"^Exec(Start|StartPre|Stop|Reload)=", line):
                binaries.add(line.split("=", 1)[1].lstrip("+-:!@").split()[0])
    check = run_in(root, " ; ".join(f"test -x {b} || echo MISSING {b}" for b in sorted(binaries)))
    assert "MISSING" not in check.stdout, check.stdout
    assert json.loads((root / "etc/pgha/node.json").read_text())["paths"]["python"] == "/usr/bin/python3"


def test_sshd_takes_its_drop_in(member_root):
    """Debian's sshd reads 10-pgha.conf before its own sshd_config (and cloud-init's 50-): the
    settings in effect for admin and for root are pgha's."""
    spec, ctx, member, root, ns = member_root
    ip = ctx.member_ips[member.name]
    script = ("mkdir -p /run/sshd && ssh-keygen -q -t ed25519 -N '' -f /tmp/hostkey && "
              "printf 'PasswordAuthentication yes\\nPermitRootLogin yes\\n' > /etc/ssh/sshd_config.d/50-cloud-init.conf && "
              "sshd -t -h /tmp/hostkey && echo VALID && "
              "sshd -T -h /tmp/hostkey -C user=admin,host=op,addr=10.0.0.9 && echo ---- && "
              "sshd -T -h /tmp/hostkey -C user=root,host=op,addr=10.0.0.9")
    result = run_in(root, script)
    assert "VALID" in result.stdout, result.stdout + result.stderr
    admin, as_root = result.stdout.split("VALID", 1)[1].split("----")
    for effective in (admin, as_root):
        settings = {tuple(line.split(" ", 1)) for line in effective.splitlines() if " " in line}
        for expected in [("listenaddress", f"{ip}:22"), ("allowusers", "admin"), ("permitrootlogin", "no"),
                         ("passwordauthentication", "no"), ("kbdinteractiveauthentication", "no"),
                         ("authorizedkeysfile", "none"), ("authorizedkeyscommanduser", "pgha-eic"),
                         ("x11forwarding", "no"), ("allowagentforwarding", "no"),
                         ("authorizedkeyscommand", "/usr/bin/python3 /opt/pgha/bin/pgha-node.pyz --node-json "
                                                   "/etc/pgha/node.json authorized-keys %u %f")]:
            assert expected in settings, (expected, effective)


IMDS_PROBE = r"""
import socket, sys, time
began = time.monotonic()
try:
    socket.create_connection(("169.254.169.254", 80), timeout=5).close()
    print("ANSWERED", sys.argv[1])
except OSError as exc:
    print("REFUSED" if isinstance(exc, ConnectionRefusedError) else "FAILED", sys.argv[1],
          f"{time.monotonic() - began:.2f}")
"""


def test_nft_loads_the_imds_filter_which_lets_only_its_users_connect(member_root):
    """nft checks and loads the ruleset in the image's own network namespace (with its users: root,
    postgres from the packages, pgha-eic as the bootstrap makes it, pgha-logs as pgha-prepare-dirs
    does too), then a listener on IMDS's
    address takes connections from those users and the rest are refused at once."""
    spec, ctx, member, root, ns = member_root
    (root / "opt/imds-probe.py").write_text(IMDS_PROBE)
    allowed, denied = ["root", "postgres", "pgha-eic", "pgha-logs"], ["nobody", "etcd", "haproxy", "prometheus"]
    probes = " ; ".join(f"setpriv --reuid={u} --regid=$(id -g {u}) --clear-groups python3 /opt/imds-probe.py {u}"
                        for u in allowed + denied)
    script = ("useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgha-eic && "
              "nft -c -f /etc/pgha/imds-filter.nft && echo CHECKED && "
              "nft -f /etc/pgha/imds-filter.nft && nft -f /etc/pgha/imds-filter.nft && echo LOADED-TWICE && "
              "nft list table inet pgha_imds && "
              "ip link set lo up && ip addr add 169.254.169.254/32 dev lo && "
              "python3 -c 'import socket,time; s=socket.create_server((\"169.254.169.254\", 80)); time.sleep(60)' & "
              "sleep 1; " + probes + "; "
              "echo UIDS $(id -u root) $(id -u postgres) $(id -u pgha-eic) $(id -u pgha-logs)")
    result = run_in(root, script)
    out = result.stdout
    assert "CHECKED" in out and "LOADED-TWICE" in out, out + result.stderr
    # The names resolved to this system's uids, each accepted once.
    uids = out.split("UIDS ", 1)[1].split()
    listed = [line.strip() for line in out.split("chain imds {", 1)[1].splitlines() if "skuid" in line]
    assert listed == [f"meta skuid {uid} accept" for uid in uids], out
    answers = {words[1]: words for words in map(str.split, out.splitlines())
               if words[:1] in (["ANSWERED"], ["REFUSED"], ["FAILED"])}
    assert sorted(answers) == sorted(allowed + denied), out
    for user in allowed:
        assert answers[user][0] == "ANSWERED", out
    for user in denied:  # a reset: refused at once, not a timeout
        assert answers[user][0] == "REFUSED" and float(answers[user][2]) < 1.0, out
