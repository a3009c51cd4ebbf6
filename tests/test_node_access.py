"""Access on a running member (issue 12, point 2): who may log in to PostgreSQL and from where,
what Patroni's REST API and HAProxy's stats answer to a stranger, which users the exporters
run as, the systemd sandbox of every unit, and who may reach IMDS (N31), checked on the booted
dev stack."""

import json
import shlex
import ssl
import urllib.error
import urllib.request

import psycopg
import pytest

from conftest import wait_for_archived
from pgha import contract
from pgha.local import backups
from pgha.render import EC2_LAYOUT, OS_USERS, USERS
from pgha.spec import PORTS

pytestmark = pytest.mark.cluster

TLS = EC2_LAYOUT.tls


def superuser_over_tcp(cluster, ip: str, port: int) -> str:
    """The superuser's DSN over TCP with its right password (the host's passfile has it)."""
    return cluster.dsn(ip, port, user=USERS["superuser"], dbname="postgres") + " connect_timeout=5"


def refusal(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn).close()
    return str(caught.value)


def test_the_host_knows_the_superuser_password(local_cluster):
    # Otherwise the refusals below would prove nothing.
    secret = json.loads(local_cluster.secrets_file.read_text())
    assert f":{USERS['superuser']}:{secret['superuser_password']}" in local_cluster.passfile.read_text()


@pytest.mark.parametrize("service", ["default", "offline"])
def test_the_superuser_is_refused_through_haproxy_s_direct_services(local_cluster, service):
    node = local_cluster.nodes[0]
    # The path itself works for an application role...
    with psycopg.connect(local_cluster.dsn(node.ip, PORTS[service]), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # ...but the superuser, coming from a member's address through HAProxy, needs a member's
    # certificate: its password is not enough.
    why = refusal(superuser_over_tcp(local_cluster, node.ip, PORTS[service]))
    assert "certificate" in why, why


def test_the_superuser_is_refused_on_5432_from_a_client_address(local_cluster):
    for node in local_cluster.nodes:
        why = refusal(superuser_over_tcp(local_cluster, node.ip, PORTS["postgres"]))
        assert "pg_hba.conf rejects connection" in why and f'user "{USERS["superuser"]}"' in why, why
    # An application role from the same address gets in (the rule is the superuser's only).
    with psycopg.connect(local_cluster.dsn(local_cluster.nodes[0].ip, PORTS["postgres"]), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (USERS["app"],)


def test_a_member_s_certificate_is_the_superuser_s_only_tcp_login(local_cluster):
    # What pg_rewind does: member 2 to member 1 as the superuser with its certificate, no password.
    source, target = local_cluster.nodes[1], local_cluster.nodes[0]
    dsn = (f"host={target.ip} port={PORTS['postgres']} user={USERS['superuser']} dbname=postgres "
           f"sslmode=verify-full sslrootcert={TLS}/ca.crt sslcert={TLS}/node.crt sslkey={TLS}/node.key "
           "connect_timeout=5")
    proc = source.machine.run(["psql", "-X", "-Atc", "SELECT current_user, ssl FROM pg_stat_ssl "
                               "WHERE pid = pg_backend_pid()", dsn], user=OS_USERS["postgres"],
                              env={"PGPASSFILE": "/dev/null"})
    assert proc.returncode == 0 and proc.stdout.strip() == f"{USERS['superuser']}|t", proc.stderr
    # Without the certificate, the same member is refused (a password is never asked for).
    plain = dsn.split(" sslcert=")[0] + " connect_timeout=5"
    proc = source.machine.run(["psql", "-X", "-w", "-Atc", "SELECT 1", plain], user=OS_USERS["postgres"],
                              env={"PGPASSFILE": "/dev/null"})
    assert proc.returncode != 0 and "certificate" in proc.stderr, proc.stderr


def test_connections_are_logged_with_client_host_and_application(local_cluster):
    node = backups.leader(local_cluster, running=False)
    with psycopg.connect(local_cluster.superuser_dsn(node)) as conn:
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                     "('log_connections', 'log_disconnections', 'log_line_prefix')").fetchall())
    assert settings["log_connections"] == "on" and settings["log_disconnections"] == "on"
    assert "%h" in settings["log_line_prefix"] and "%a" in settings["log_line_prefix"]


def http(url: str, method: str = "GET", context: ssl.SSLContext | None = None) -> int:
    """The HTTP status a request gets (an error status is returned, not raised)."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_haproxy_s_network_port_serves_metrics_only(local_cluster):
    for node in local_cluster.nodes:
        base = f"http://{node.ip}:{PORTS['haproxy_stats']}"
        assert http(base + "/metrics") == 200
        assert http(base + "/patroni/metrics") == 200
        # The stats page, and anything else, refused to an anonymous client; no method but GET.
        assert http(base + "/") == 403
        assert http(base + "/;csv") == 403
        assert http(base + "/patroni") == 403
        assert http(base + "/metrics", method="POST") == 405


def test_the_stats_page_is_served_on_the_node_only(local_cluster):
    node = local_cluster.nodes[0]
    probe = ("import urllib.request as u; r = u.urlopen('http://127.0.0.1:%d/;csv', timeout=5); "
             "print(r.status, r.read().decode().splitlines()[0])" % PORTS["haproxy_stats"])
    proc = node.machine.run(["python3", "-c", probe])
    assert proc.returncode == 0 and proc.stdout.startswith("200 # pxname"), proc.stderr


def main_process_user(node, unit: str) -> str:
    pid = node.machine.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
    assert pid.isdigit() and int(pid) > 0, f"{unit} has no main process"
    return node.machine.run(["ps", "-o", "user=", "-p", pid]).stdout.strip()


@pytest.mark.parametrize("unit, user", [
    ("pgha-postgres-exporter.service", OS_USERS["exporter"]),
    ("pgha-pgbouncer-exporter.service", OS_USERS["exporter"]),
    ("pgha-node-exporter.service", "prometheus"),
    ("pgha-haproxy.service", OS_USERS["haproxy"]),
])
def test_exporters_and_haproxy_run_as_their_own_users(local_cluster, unit, user):
    for node in local_cluster.nodes:
        assert main_process_user(node, unit) == user


SANDBOXED = ("pgha-patroni.service", "pgha-etcd.service", "pgha-pgbouncer.service", "pgha-haproxy.service",
             "pgha-node-exporter.service", "pgha-postgres-exporter.service", "pgha-pgbouncer-exporter.service",
             "pgha-pgbackrest-exporter.service", "pgha-pgbackrest-server.service", "pgha-timeline-guard.service",
             "pgha-handover.service", "pgha-ready.service")


def test_every_daemon_runs_in_its_sandbox_as_a_user_without_capabilities(local_cluster):
    node = local_cluster.nodes[0]
    for unit in SANDBOXED:
        if unit == "pgha-etcd.service" and not node.member.runs_etcd:
            continue
        shown = dict(line.split("=", 1) for line in node.machine.systemctl(
            "show", "-p", "User,NoNewPrivileges,ProtectSystem,ProtectHome,PrivateTmp,CapabilityBoundingSet,"
            "RestrictAddressFamilies,SystemCallFilter,ActiveState", unit).stdout.splitlines() if "=" in line)
        assert shown["ActiveState"] == "active", (unit, shown)
        assert shown["User"] not in ("", "root"), (unit, shown)
        assert shown["NoNewPrivileges"] == "yes" and shown["ProtectSystem"] == "strict", (unit, shown)
        assert shown["ProtectHome"] == "yes" and shown["PrivateTmp"] == "yes", (unit, shown)
        assert shown["CapabilityBoundingSet"] == "", (unit, shown)
        assert shown["RestrictAddressFamilies"] and shown["SystemCallFilter"], (unit, shown)


def patroni_status(cluster, node, method: str, path: str, *, cert: bool, auth: bool = False,
                   body: dict | None = None) -> int:
    """The status Patroni answers over HTTPS (the cluster CA verifies it), with or without the
    host's client certificate and the REST user's Basic authentication."""
    if cert:
        context = cluster.operator_tls()
    else:
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Content-Type": "application/json"}
    if auth:
        import base64
        password = json.loads(cluster.secrets_file.read_text())["patroni_rest_password"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{USERS['patroni_rest']}:{password}".encode()).decode()
    data = json.dumps(body or {}).encode() if method != "GET" else None
    request = urllib.request.Request(f"https://{node.ip}:{PORTS['patroni']}{path}", data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_patroni_s_api_refuses_plain_http(local_cluster):
    import http.client

    for node in local_cluster.nodes:
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://{node.ip}:{PORTS['patroni']}/health", timeout=10).close()


def test_patroni_s_health_checks_need_no_certificate(local_cluster):
    statuses = {patroni_status(local_cluster, node, "GET", "/health", cert=False) for node in local_cluster.nodes}
    assert statuses == {200}
    roles = sorted(patroni_status(local_cluster, node, "GET", "/primary", cert=False) for node in local_cluster.nodes)
    assert roles == [200, 503, 503]


def test_patroni_s_unsafe_endpoints_need_a_ca_certificate_and_the_rest_user(local_cluster):
    node = local_cluster.nodes[0]
    # The current loop_wait, patched back: a change of nothing, if it got through.
    same = {"loop_wait": local_cluster.patroni(node, "/config")["loop_wait"]}
    # A stranger (no client certificate) gets 403, even with the REST user's password...
    assert patroni_status(local_cluster, node, "PATCH", "/config", cert=False, auth=True, body=same) == 403
    # ...a holder of a CA certificate without the REST user's password 401...
    assert patroni_status(local_cluster, node, "PATCH", "/config", cert=True, body=same) == 401
    assert patroni_status(local_cluster, node, "POST", "/restart", cert=True) == 401
    # ...and both together get in (what the agent and the drills do).
    assert patroni_status(local_cluster, node, "PATCH", "/config", cert=True, auth=True, body=same) == 200


def test_a_client_certificate_of_another_ca_is_refused_by_patroni(local_cluster, tmp_path):
    from pgha.local.tls import issue, make_ca

    stranger = issue(make_ca("not the cluster CA"), common_name=local_cluster.nodes[0].member.name, server=False)
    (tmp_path / "c.crt").write_text(stranger.cert_pem)
    (tmp_path / "c.key").write_text(stranger.key_pem)
    context = ssl.create_default_context(cafile=str(local_cluster.ca_file))
    context.load_cert_chain(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    node = local_cluster.nodes[0]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"https://{node.ip}:{PORTS['patroni']}/health", timeout=10, context=context).read()


# -- IMDS for the users that call AWS only (N31) ----------------------------------------------

# IMDSv2 as boto3 and pgBackRest ask it: a token, then the instance role's name.
IMDS_PROBE = """
import json, sys, time, urllib.request
began = time.monotonic()
try:
    put = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = urllib.request.urlopen(put, timeout=5).read().decode()
    get = urllib.request.Request("http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                 headers={"X-aws-ec2-metadata-token": token})
    print(json.dumps({"answer": urllib.request.urlopen(get, timeout=5).read().decode()}))
except OSError as exc:
    reason = getattr(exc, "reason", exc)
    print(json.dumps({"error": type(reason).__name__, "seconds": time.monotonic() - began}))
"""


def imds_as(node, user: str) -> dict:
    """What IMDS gives ``user`` on ``node`` (its own group only: nobody's is nogroup)."""
    argv = f"exec setpriv --reuid={user} --regid=$(id -g {user}) --clear-groups python3 -c {shlex.quote(IMDS_PROBE)}"
    proc = node.machine.run(["sh", "-c", argv])
    assert proc.returncode == 0 and proc.stdout.strip(), (user, proc.stderr)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("user", ["root", OS_USERS["postgres"], contract.SSH_KEYS_USER])
def test_imds_answers_the_users_that_call_aws(local_cluster, user):
    for node in local_cluster.nodes:
        assert imds_as(node, user) == {"answer": local_cluster.imds_facts(node.member)["role"]}, node.name


# Every daemon user that never calls AWS, and a stranger.
@pytest.mark.parametrize("user", [OS_USERS["exporter"], OS_USERS["haproxy"], OS_USERS["etcd"], "prometheus",
                                  "nobody"])
def test_imds_refuses_every_other_user_at_once(local_cluster, user):
    for node in local_cluster.nodes:
        got = imds_as(node, user)
        assert got.get("error") == "ConnectionRefusedError" and got["seconds"] < 1.0, (node.name, got)


def test_the_imds_filter_is_loaded_before_every_daemon_started(local_cluster):
    for node in local_cluster.nodes:
        listed = node.machine.run(["nft", "list", "table", "inet", "pgha_imds"])
        assert "ip daddr 169.254.169.254" in listed.stdout and "ip6 daddr fd00:ec2::254" in listed.stdout, listed
        assert node.units[0] == "pgha-imds-filter.service"

        def started(unit: str) -> int:
            shown = node.machine.systemctl("show", "-p", "ActiveEnterTimestampMonotonic,InactiveExitTimestampMonotonic",
                                           "--value", unit).stdout.split()
            return int(shown[0] if unit == node.units[0] else shown[1])
        loaded = started(node.units[0])
        assert loaded > 0
        late = [u for u in node.units[1:] if not started(u) > loaded]
        assert late == [], (node.name, late)


def test_pgbackrest_archives_on_the_role_s_credentials_from_imds(local_cluster):
    # As on EC2: pgBackRest (as postgres) takes the instance role's keys from IMDS itself.
    leader = backups.leader(local_cluster, running=False)
    conf = leader.machine.run(["cat", EC2_LAYOUT.pgbackrest_config]).stdout
    assert "repo1-s3-key-type=auto" in conf.splitlines()
    prefix = f"{local_cluster.spec.cluster_name}/pgbackrest/archive/{local_cluster.spec.cluster_name}/"
    with psycopg.connect(local_cluster.superuser_dsn(leader), autocommit=True) as conn:
        segment = backups.switch_wal(conn)
    wait_for_archived(local_cluster, segment, local_cluster.bucket, prefix)


def test_debian_s_nftables_service_does_not_take_the_imds_filter_with_it(local_cluster):
    # Its /etc/nftables.conf flushes the whole ruleset at start, and its stop flushes too.
    node = local_cluster.nodes[-1]
    try:
        for action in ("start", "reload", "restart", "stop"):
            done = node.machine.systemctl(action, "nftables.service")
            assert done.returncode == 0, (action, done.stderr)
            assert "chain imds" in node.machine.run(["nft", "list", "table", "inet", "pgha_imds"]).stdout, action
            assert imds_as(node, "nobody").get("error") == "ConnectionRefusedError", action
            assert imds_as(node, OS_USERS["postgres"]) == {"answer": local_cluster.imds_facts(node.member)["role"]}
    finally:
        node.machine.systemctl("stop", "nftables.service")
