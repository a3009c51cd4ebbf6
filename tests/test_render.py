"""Rendered node files: pure, secret-free, sized to the instance, and routing as documented."""

import base64
import gzip
import hashlib
import json
from dataclasses import replace

import pytest
import yaml

from pgha import contract
from pgha.render import (
    EC2_USER_DATA_LIMIT,
    bucket_files,
    config_manifest,
    config_manifest_bytes,
    is_boot_file,
    render_cluster,
    render_node,
    sized_parameters,
    user_data,
)
from pgha.spec import RTO_PLANS
from render_fixtures import COMBINATIONS, ec2_context, local_context, make_spec


def files_of(spec, ctx, member_index=0):
    return {f.path: f for f in render_node(spec, spec.members[member_index], ctx)}


def test_rendering_is_a_pure_function():
    spec = make_spec(COMBINATIONS["arm64-ebs"])
    ctx = ec2_context(spec)
    assert render_cluster(spec, ctx) == render_cluster(spec, ctx)
    assert user_data(spec, spec.members[0], ctx) == user_data(spec, spec.members[0], ctx)


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_user_data_fits_ec2_limit_for_every_combination(combo):
    spec = make_spec({**COMBINATIONS[combo], "replicas": 5})
    ctx = ec2_context(spec)
    for member in spec.members:
        raw = base64.b64decode(user_data(spec, member, ctx))
        assert len(raw) <= EC2_USER_DATA_LIMIT
        document = yaml.safe_load(gzip.decompress(raw).decode().removeprefix("#cloud-config\n"))
        paths = {f["path"] for f in document["write_files"]}
        # The boot files only: the configuration comes from the bucket.
        assert paths == {"/etc/pgha/boot.json", "/opt/pgha/bin/pgha-bootstrap", "/opt/pgha/bin/pgha-fetch",
                         "/etc/apt/preferences.d/pgha"}
        assert document["runcmd"] == [["/opt/pgha/bin/pgha-bootstrap"]]
        boot = json.loads(next(f["content"] for f in document["write_files"] if f["path"].endswith("boot.json")))
        assert boot["config"] == {"bucket": ctx.bucket, "key": f"{spec.cluster_name}/node-config/{member.name}.json"}


def test_the_manifest_holds_every_other_file_with_its_hash_and_binaries_by_key():
    spec = make_spec(COMBINATIONS["arm64-ebs"])
    ctx = ec2_context(spec)
    member = spec.members[0]
    fetched = bucket_files(spec, member, ctx)
    assert [b.path for b in fetched] == ["/opt/pgha/bin/pgha-node.pyz"]
    files = files_of(spec, ctx)
    agent = files["/opt/pgha/bin/pgha-node.pyz"].content
    assert isinstance(agent, bytes) and fetched[0].sha256 == hashlib.sha256(agent).hexdigest()
    assert fetched[0].key.startswith(f"{spec.cluster_name}/node-files/")
    manifest = config_manifest(spec, member, ctx)
    entries = {e["path"]: e for e in manifest["files"]}
    assert set(entries) == {p for p, f in files.items() if not is_boot_file(f)}
    assert entries["/opt/pgha/bin/pgha-node.pyz"]["key"] == fetched[0].key and "content" not in entries[
        "/opt/pgha/bin/pgha-node.pyz"]
    for path, entry in entries.items():
        body = files[path].content
        assert entry["sha256"] == hashlib.sha256(body if isinstance(body, bytes) else body.encode()).hexdigest()
        assert entry["on_change"] == list(files[path].on_change)
        for action in entry["on_change"]:
            contract.action_rank(action)  # the agent knows it
    assert json.loads(config_manifest_bytes(spec, member, ctx)) == manifest
    # The version moves with any file, and only then.
    assert config_manifest(spec, member, ctx)["version"] == manifest["version"]
    other = make_spec({**COMBINATIONS["arm64-ebs"], "parameters": {"work_mem": "32MB"}})
    assert config_manifest(other, other.members[0], ctx)["version"] != manifest["version"]


def test_each_changed_file_asks_for_what_applies_it_without_a_replacement():
    spec = make_spec(COMBINATIONS["arm64-ebs"])
    files = files_of(spec, ec2_context(spec))
    on = {p: set(f.on_change) for p, f in files.items()}
    assert on["/etc/pgha/patroni.yml"] == {"reload:pgha-patroni.service", "dcs-sync"}
    assert on["/etc/pgha/pgbouncer/pgbouncer.ini"] == {"reload:pgha-pgbouncer.service"}
    assert on["/etc/pgha/haproxy/haproxy.cfg"] == {"reload:pgha-haproxy.service"}
    assert "restart:pgha-timeline-guard.service" in on["/etc/pgha/node.json"]
    assert on["/etc/systemd/system/pgha-backup-full.timer"] == {"daemon-reload", "restart:pgha-backup-full.timer"}
    # Restarting these would interrupt the database, its clients or etcd: the unit file waits.
    for unit in ("pgha-patroni", "pgha-etcd", "pgha-pgbouncer", "pgha-haproxy", "pgha-prepare", "pgha-backup-full",
                 "pgha-handover"):  # (its stop is a switchover)
        assert on[f"/etc/systemd/system/{unit}.service"] == {"daemon-reload"}, unit
    assert not {"restart:pgha-patroni.service", "restart:pgha-etcd.service"} & set().union(*on.values())


def test_no_private_key_or_password_reaches_rendered_files():
    import re

    spec = make_spec(COMBINATIONS["x86_64-metal"])
    ctx = ec2_context(spec)
    text = "".join(f.content for files in render_cluster(spec, ctx).values() for f in files
                   if isinstance(f.content, str))
    pem_kinds = set(re.findall(r"-----BEGIN ([A-Z ]+)-----", text))
    assert pem_kinds == {"CERTIFICATE"}
    patroni = yaml.safe_load(files_of(spec, ctx)["/etc/pgha/patroni.yml"].content)
    auth = patroni["postgresql"]["authentication"]
    assert all("password" not in entry for entry in auth.values())
    assert "authentication" not in patroni["restapi"]


def test_rpo_zero_is_strict_synchronous_and_rpo_bytes_bound_failover():
    sync = yaml.safe_load(files_of(make_spec({}), ec2_context(make_spec({})))["/etc/pgha/patroni.yml"].content)
    dcs = sync["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
    spec = make_spec({"rpo": 4194304})
    lossy = yaml.safe_load(files_of(spec, ec2_context(spec))["/etc/pgha/patroni.yml"].content)["bootstrap"]["dcs"]
    assert lossy["synchronous_mode"] is False and lossy["maximum_lag_on_failover"] == 4194304


@pytest.mark.parametrize("rto", sorted(RTO_PLANS))
def test_rto_presets_reach_patroni_and_haproxy(rto):
    spec = make_spec({"rto": rto})
    files = files_of(spec, ec2_context(spec))
    dcs = yaml.safe_load(files["/etc/pgha/patroni.yml"].content)["bootstrap"]["dcs"]
    plan = RTO_PLANS[rto]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (plan.ttl, plan.loop_wait, plan.retry_timeout)
    # Current Patroni refuses anything else.
    assert dcs["ttl"] >= 20 and dcs["loop_wait"] >= 1 and dcs["retry_timeout"] >= 3
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert f"inter {plan.check_inter} fastinter {plan.check_fastinter}" in files["/etc/pgha/haproxy/haproxy.cfg"].content


def haproxy_sections(text):
    sections, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            current = line.strip()
            sections[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            sections[current].append(line.strip())
    return sections


def test_haproxy_services_follow_pigsty_ports_and_checks():
    spec = make_spec({"clusterName": "pg-orders"})
    ctx = ec2_context(spec)
    cfg = haproxy_sections(files_of(spec, ctx)["/etc/pgha/haproxy/haproxy.cfg"].content)
    ip = ctx.member_ips["pg-orders-1"]
    expect = {"pg-orders-primary": (5433, "be-primary-pooled", None),
              "pg-orders-replica": (5434, "be-replica-pooled", "be-primary-pooled"),
              "pg-orders-default": (5436, "be-primary-direct", None),
              "pg-orders-offline": (5438, "be-offline-direct", "be-primary-direct")}
    for name, (port, backend, fallback) in expect.items():
        lines = cfg[f"frontend {name}"]
        assert f"bind {ip}:{port}" in lines and f"default_backend {backend}" in lines
        assert any(line.startswith(f"use_backend {fallback}") for line in lines) == bool(fallback)
    pooled = cfg["backend be-primary-pooled"]
    # The pooled primary must fail its check when PgBouncer is down, not just when Patroni is.
    assert pooled.index("tcp-check connect port 6432") < pooled.index("tcp-check connect port 8008 ssl")
    assert 'tcp-check send "GET /primary HTTP/1.0\\r\\n\\r\\n"' in pooled
    assert sum(line.startswith("server ") and ":6432 check " in line for line in pooled) == 3
    assert "tcp-check connect port 6432" not in cfg["backend be-primary-direct"]
    assert any("/replica?lag=" in line for line in cfg["backend be-replica-pooled"])
    # The member's address serves metrics only; the stats page is bound to the node itself.
    assert f"bind {ip}:9101" in cfg["frontend metrics"]
    assert cfg["frontend stats"][1] == "bind 127.0.0.1:9101"


def test_every_client_path_requires_tls():
    spec = make_spec({})
    files = files_of(spec, ec2_context(spec))
    hba = yaml.safe_load(files["/etc/pgha/patroni.yml"].content)["postgresql"]["pg_hba"]
    network_rules = [r for r in hba if not r.startswith("local")]
    assert network_rules[-1] == "host all all 0.0.0.0/0 reject"
    accepting = [r for r in network_rules if not r.endswith(" reject")]
    assert all(r.startswith("hostssl") for r in accepting)
    assert all(r.endswith(("scram-sha-256", "cert map=pgha_member")) for r in accepting)
    ini = files["/etc/pgha/pgbouncer/pgbouncer.ini"].content
    assert "client_tls_sslmode = require" in ini and "server_tls_sslmode = verify-full" in ini
    assert "server_login_retry = 1" in ini
    assert all(line.startswith(("local", "hostssl")) for line in
               files["/etc/pgha/pgbouncer/pgb_hba.conf"].content.splitlines() if line and not line.startswith("#"))


def test_etcd_cluster_is_three_members_with_mutual_tls():
    spec = make_spec({"replicas": 4})
    ctx = ec2_context(spec)
    conf = yaml.safe_load(files_of(spec, ctx)["/etc/pgha/etcd/etcd.conf.yml"].content)
    assert conf["initial-cluster"].count("=https://") == 3
    assert conf["client-transport-security"]["client-cert-auth"] is True
    assert conf["peer-transport-security"]["client-cert-auth"] is True
    patroni = yaml.safe_load(files_of(spec, ctx, 4)["/etc/pgha/patroni.yml"].content)
    assert patroni["etcd3"]["protocol"] == "https" and len(patroni["etcd3"]["hosts"].split(",")) == 3


def test_each_patroni_asks_its_own_nodes_etcd_first_and_keeps_to_that_order():
    spec = make_spec({"replicas": 4})
    ctx = ec2_context(spec)
    etcd = [f"{ctx.member_ips[m.name]}:2379" for m in spec.members[:3]]
    for index, member in enumerate(spec.members):
        conf = yaml.safe_load(files_of(spec, ctx, index)["/etc/pgha/patroni.yml"].content)["etcd3"]
        hosts = conf["hosts"].split(",")
        assert sorted(hosts) == sorted(etcd) and conf["use_proxies"] is True
        own = f"{ctx.member_ips[member.name]}:2379"
        # Members 4-5 run no etcd: the etcd members in their order.
        assert hosts[0] == own if own in etcd else hosts == etcd


@pytest.mark.parametrize("instance, profile, shared_buffers, max_connections", [
    ("r8g.xlarge", "oltp", "8192MB", 500),
    ("r7i.2xlarge", "olap", "16384MB", 200),
    ("t4g.medium", "tiny", "1024MB", 100),
])
def test_postgres_sized_from_the_catalog(instance, profile, shared_buffers, max_connections):
    arch = "x86_64" if instance.startswith("r7i") else "arm64"
    params = sized_parameters(make_spec({"instanceType": instance, "arch": arch, "profile": profile}))
    assert params["shared_buffers"] == shared_buffers and params["max_connections"] == max_connections
    assert "pg_stat_statements" in params["shared_preload_libraries"]


@pytest.mark.parametrize("profile, slow_ms, plan_after", [
    ("oltp", 100, "1s"), ("crit", 100, "1s"), ("olap", 1000, "10s"), ("tiny", 500, "5s")])
def test_query_insights_in_every_profile(profile, slow_ms, plan_after):
    spec = make_spec({"profile": profile})
    params = sized_parameters(spec)
    assert params["shared_preload_libraries"].split(",") == ["pg_stat_statements", "auto_explain"]
    # auto_explain logs a plan for statements ten times slower than the slow-statement log's.
    assert params["log_min_duration_statement"] == slow_ms and params["auto_explain.log_min_duration"] == plan_after
    assert int(plan_after.removesuffix("s")) * 1000 == 10 * slow_ms
    # No bind values in the log; no utility statement text (ALTER ROLE ... PASSWORD) kept.
    assert params["auto_explain.log_parameter_max_length"] == 0
    assert params["pg_stat_statements.track_utility"] == "off" and params["auto_explain.log_analyze"] == "off"
    files = files_of(spec, ec2_context(spec))
    patroni = yaml.safe_load(files["/etc/pgha/patroni.yml"].content)
    assert patroni["postgresql"]["parameters"]["shared_preload_libraries"] == "pg_stat_statements,auto_explain"
    unit = files["/etc/systemd/system/pgha-postgres-exporter.service"].content
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert "--collector.stat_statements" in exec_start.split() and "--collector.database_wraparound" in exec_start


def test_parameter_overrides_win():
    params = sized_parameters(make_spec({"parameters": {"work_mem": "256MB", "jit": "off"}}))
    assert params["work_mem"] == "256MB" and params["jit"] == "off"


def test_metal_and_ebs_prepare_their_own_storage():
    ebs = make_spec(COMBINATIONS["arm64-ebs"])
    ctx = ec2_context(ebs)
    host = files_of(ebs, ctx)["/opt/pgha/bin/pgha-host"].content
    assert ctx.data_volume_ids[ebs.members[0].name] in host
    assert "mdadm" not in host and "mkfs.xfs" in host and "noatime" in host
    metal = make_spec(COMBINATIONS["x86_64-metal"])
    host = files_of(metal, ec2_context(metal))["/opt/pgha/bin/pgha-host"].content
    assert "mdadm --create" in host and "-ne 4 ]" in host


def test_the_local_rendering_differs_from_ec2_s_only_in_the_context_s_values():
    """No template knows where it runs: put EC2's values in place of the local cluster's in every
    local file and it is EC2's file, byte for byte."""
    spec = make_spec({"instanceType": "t4g.medium", "profile": "tiny"})
    ec2 = ec2_context(spec)
    local = replace(local_context(spec), ca_cert_pem=ec2.ca_cert_pem, node_cert_pems=ec2.node_cert_pems)
    ec2_files = {path: f.content for path, f in files_of(spec, ec2).items()}
    local_files = {path: f.content for path, f in files_of(spec, local).items()}
    assert set(local_files) == set(ec2_files)
    # Longest first: 10.219.9.1 must not be swapped inside 10.219.9.11.
    swaps = sorted(zip(local.peer_ips, ec2.peer_ips), key=lambda pair: -len(pair[0]))
    swaps += [(local.data_volume_ids[m.name], ec2.data_volume_ids[m.name]) for m in spec.members]
    swaps += [(local.data_volume_ids[m.name].replace("-", ""), ec2.data_volume_ids[m.name].replace("-", ""))
              for m in spec.members]
    swaps += [(local.bucket, ec2.bucket), (local.secret_id, ec2.secret_id), (local.s3_endpoint, ec2.s3_endpoint)]
    differing = []
    for path, text in local_files.items():
        if isinstance(text, bytes):  # the agent zipapp: the same bytes everywhere
            assert text == ec2_files[path]
            continue
        for old, new in swaps:
            text = text.replace(old, new)
        if text != ec2_files[path]:
            differing.append(path)
    # Beyond the swapped values, only how boto3 and pgBackRest reach the AWS stand-in (its
    # endpoint URL, its CA, path-style addressing) differs: node and boot facts, pgBackRest's config.
    assert sorted(differing) == ["/etc/pgha/boot.json", "/etc/pgha/node.json", "/etc/pgha/pgbackrest/pgbackrest.conf"]
    assert json.loads(local_files["/etc/pgha/boot.json"])["aws"] == json.loads(local_files["/etc/pgha/node.json"])["aws"]
    facts = {k: json.loads(v) for k, v in (("ec2", ec2_files["/etc/pgha/node.json"]),
                                           ("local", local_files["/etc/pgha/node.json"]))}
    assert facts["ec2"]["aws"] == {"region": "us-east-1", "endpoint_url": "", "s3_addressing": "virtual"}
    assert facts["local"]["aws"]["endpoint_url"].startswith("https://localhost:")


def test_cluster_wide_parameters_go_to_the_dcs_and_the_rest_stay_local():
    # bootstrap.dcs is applied once; a spec change must reach a running cluster through the
    # local configuration of the (rolling) replaced nodes.
    spec = make_spec({"parameters": {"work_mem": "96MB"}})
    patroni = yaml.safe_load(files_of(spec, ec2_context(spec))["/etc/pgha/patroni.yml"].content)
    dcs = patroni["bootstrap"]["dcs"]["postgresql"]["parameters"]
    local = patroni["postgresql"]["parameters"]
    assert local["work_mem"] == "96MB" and "work_mem" not in dcs
    assert dcs["max_connections"] == 500 and "max_connections" not in local
    assert "shared_buffers" in local and "shared_preload_libraries" in local


def test_scrape_targets_carry_pigsty_identity_labels():
    spec = make_spec({"replicas": 2})
    ctx = ec2_context(spec)
    targets = yaml.safe_load(files_of(spec, ctx)["/etc/pgha/prometheus/targets.yml"].content)
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == {"node", "pgsql", "pgbouncer", "pgbackrest", "patroni", "haproxy", "etcd"}
    assert len(targets) == 7 * 3  # three members, each running etcd
    for target in targets:
        labels = target["labels"]
        assert labels["cls"] == spec.cluster_name and labels["ip"] == ctx.member_ips[labels["ins"]]
        assert target["targets"] == [f"{labels['ip']}:{target['targets'][0].split(':')[1]}"]


# -- access on the node (issue 12, point 2) -----------------------------------------------------

def hba_rules(files):
    patroni = yaml.safe_load(files["/etc/pgha/patroni.yml"].content)
    return [r.split() for r in patroni["postgresql"]["pg_hba"]], patroni["postgresql"]["pg_ident"]


def first_match(rules, kind, database, user, address=None):
    """The pg_hba line PostgreSQL would use (first match): local/host only, /32 and 0.0.0.0/0."""
    for rule in rules:
        conn, db, who = rule[:3]
        if kind == "local" and conn != "local" or kind != "local" and conn == "local":
            continue
        if db not in ("all", database) or who not in ("all", user):
            continue
        if kind != "local" and rule[3] not in ("0.0.0.0/0", f"{address}/32"):
            continue
        return rule
    return None


def test_the_superuser_logs_in_over_tcp_only_with_a_member_certificate():
    spec = make_spec({})
    ctx = ec2_context(spec)
    rules, ident = hba_rules(files_of(spec, ctx))
    member_ip = ctx.member_ips[spec.members[1].name]
    # From a member's address (also HAProxy's 5436/5438, which hide the client): the certificate only.
    assert first_match(rules, "hostssl", "postgres", "postgres", member_ip)[4:] == ["cert", "map=pgha_member"]
    assert first_match(rules, "hostssl", "app", "postgres", member_ip)[4:] == ["cert", "map=pgha_member"]
    # From anywhere else: refused, whatever the password.
    assert first_match(rules, "hostssl", "postgres", "postgres", "10.99.0.7")[4:] == ["reject"]
    # The certificate must be a member's (CN = member name), mapped to the superuser only.
    assert f"pgha_member /^{spec.cluster_name}-[0-9]+$ postgres" in ident
    assert [line for line in ident if line.startswith("pgha_member")] == [f"pgha_member /^{spec.cluster_name}-[0-9]+$ postgres"]
    # Application roles and the replication role keep TLS + SCRAM.
    assert first_match(rules, "hostssl", "app", "dbuser_app", "10.99.0.7")[4:] == ["scram-sha-256"]
    assert first_match(rules, "hostssl", "replication", "replicator", member_ip)[4:] == ["scram-sha-256"]
    # On the socket: the postgres OS user and root by peer, through pgha_local only.
    assert first_match(rules, "local", "postgres", "postgres")[3:] == ["peer", "map=pgha_local"]
    assert sorted(line for line in ident if line.startswith("pgha_local")) == [
        "pgha_local postgres postgres", "pgha_local root postgres"]
    # pg_rewind (the rewind user is the superuser) presents the member's certificate.
    rewind = yaml.safe_load(files_of(spec, ctx)["/etc/pgha/patroni.yml"].content)["postgresql"]["authentication"]["rewind"]
    assert rewind["username"] == "postgres" and rewind["sslcert"].endswith("/node.crt")
    assert rewind["sslkey"].endswith("/node.key") and rewind["sslmode"] == "verify-full"


def test_connections_are_logged_with_client_host_and_application():
    spec = make_spec({})
    params = yaml.safe_load(files_of(spec, ec2_context(spec))["/etc/pgha/patroni.yml"].content)["postgresql"]["parameters"]
    assert params["log_connections"] == "on" and params["log_disconnections"] == "on"
    assert "%h" in params["log_line_prefix"] and "%a" in params["log_line_prefix"]


def test_haproxy_serves_only_metrics_to_the_network_and_runs_unprivileged():
    spec = make_spec({})
    ctx = ec2_context(spec)
    files = files_of(spec, ctx)
    cfg = haproxy_sections(files["/etc/pgha/haproxy/haproxy.cfg"].content)
    ip = ctx.member_ips[spec.members[0].name]
    network = cfg["frontend metrics"]
    assert f"bind {ip}:9101" in network and not any(line.startswith("stats") for line in network)
    # GET /metrics (HAProxy's), GET /patroni/metrics (Patroni's), 403 for anything else.
    assert network[-4:] == ["http-request deny deny_status 405 unless METH_GET",
                            "http-request use-service prometheus-exporter if { path /metrics }",
                            "http-request deny deny_status 403 unless { path /patroni/metrics }",
                            "default_backend be-patroni-metrics"]
    # Every other frontend binding 9101 is on the loopback.
    binds = [line for section in cfg.values() for line in section if line.startswith("bind ") and line.endswith(":9101")]
    assert sorted(binds) == sorted([f"bind {ip}:9101", "bind 127.0.0.1:9101"])
    assert "stats enable" in cfg["frontend stats"] and "bind 127.0.0.1:9101" in cfg["frontend stats"]
    assert not any("stats admin" in line for section in cfg.values() for line in section)
    # Patroni's metrics, as /metrics on its own member only.
    assert "http-request set-path /metrics" in cfg["backend be-patroni-metrics"]
    servers = [line for line in cfg["backend be-patroni-metrics"] if line.startswith("server ")]
    assert len(servers) == 1 and servers[0].startswith(f"server {spec.members[0].name} {ip}:8008")
    # The haproxy user from the start: no user/group switch in the global section.
    assert not any(line.startswith(("user ", "group ")) for line in cfg["global"])
    unit = files["/etc/systemd/system/pgha-haproxy.service"].content
    assert "User=haproxy" in unit and "\nCapabilityBoundingSet=\n" in unit
    targets = yaml.safe_load(files["/etc/pgha/prometheus/targets.yml"].content)
    patroni = [t for t in targets if t["labels"]["job"] == "patroni"]
    assert patroni and all(t["targets"][0].endswith(":9101") and t["labels"]["__metrics_path__"] == "/patroni/metrics"
                           for t in patroni)


def test_exporters_run_as_their_own_user_with_the_monitor_role():
    from pgha.agent.secrets import render_secret_files
    from pgha.render import OS_USERS

    spec = make_spec({})
    files = files_of(spec, ec2_context(spec))
    for unit in ("pgha-postgres-exporter", "pgha-pgbouncer-exporter"):
        text = files[f"/etc/systemd/system/{unit}.service"].content
        assert f"User={OS_USERS['exporter']}\n" in text and "User=postgres" not in text
    assert "User=prometheus" in files["/etc/systemd/system/pgha-node-exporter.service"].content
    # A unit restarted on a member whose boot predates its user makes it first (as root, "+").
    for unit in ("pgha-postgres-exporter", "pgha-pgbouncer-exporter", "pgha-haproxy"):
        assert "\nExecStartPre=+/opt/pgha/bin/pgha-prepare-dirs\n" in files[f"/etc/systemd/system/{unit}.service"].content
    assert OS_USERS["exporter"] not in ("postgres", "root")
    prepare = files["/opt/pgha/bin/pgha-prepare-dirs"].content
    assert f"useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {OS_USERS['exporter']}" in prepare
    node = json.loads(files["/etc/pgha/node.json"].content)
    secret = {k: "pw-" + k for k in contract.PASSWORD_KEYS}
    secret[contract.TLS_KEYS] = {spec.members[0].name: "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"}
    owners = {path.rsplit("/", 1)[1]: owner for path, (_, owner) in render_secret_files(node, secret).items()}
    # The exporter reads the monitor's password only: not the superuser's files.
    assert owners["exporter.env"] == "exporter" and owners["patroni.env"] == "postgres"
    assert "dbuser_monitor" in render_secret_files(node, secret)[node["paths"]["secrets"] + "/exporter.env"][0]


SANDBOXED_UNITS = ("pgha-patroni", "pgha-etcd", "pgha-pgbouncer", "pgha-haproxy", "pgha-node-exporter",
                   "pgha-postgres-exporter", "pgha-pgbouncer-exporter", "pgha-pgbackrest-exporter",
                   "pgha-pgbackrest-server", "pgha-timeline-guard", "pgha-etcd-leadership", "pgha-handover",
                   "pgha-ready", "pgha-backup-full", "pgha-ship-logs")
# Root by necessity: they format disks, write /etc and /opt, make users, drive systemctl.
ROOT_UNITS = ("pgha-host", "pgha-prepare", "pgha-config", "pgha-imds-filter")


def unit_settings(text):
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, value)
    return settings


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_every_daemon_unit_is_sandboxed_and_unprivileged(combo):
    spec = make_spec(COMBINATIONS[combo])
    files = files_of(spec, ec2_context(spec))
    units = {path.rsplit("/", 1)[1].removesuffix(".service"): f.content for path, f in files.items()
             if path.startswith("/etc/systemd/system/") and path.endswith(".service")}
    assert set(units) == set(SANDBOXED_UNITS) | set(ROOT_UNITS) | {"pgha-backup-diff", "pgha-backup-incr"}
    for name, text in units.items():
        s = unit_settings(text)
        if name in ROOT_UNITS:
            assert "User" not in s, name
            if name == "pgha-imds-filter":  # nft: the one capability it needs, a read-only system
                assert (s["NoNewPrivileges"], s["CapabilityBoundingSet"], s["ProtectSystem"]) == (
                    "yes", "CAP_NET_ADMIN", "strict"), s
                continue
            assert name == "pgha-host" or s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes", name
            continue
        assert s.get("User") not in (None, "root"), name
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                           "PrivateTmp": "yes", "CapabilityBoundingSet": "", "ProtectKernelTunables": "yes",
                           "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes",
                           "SystemCallFilter": "@system-service", "SystemCallArchitectures": "native"}.items():
            assert s.get(key) == value, (name, key, s.get(key))
        assert s["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"], name
        # Written paths: pgha's own data, log and run directories only.
        for path in s.get("ReadWritePaths", "").split():
            assert path.lstrip("-").startswith(("/var/lib/pgha", "/var/log/pgha", "/run/pgha")), (name, path)
    # Patroni opens /dev/watchdog and runs PostgreSQL (LLVM JIT): its devices and W^X stay.
    patroni = unit_settings(units["pgha-patroni"])
    assert "PrivateDevices" not in patroni and "MemoryDenyWriteExecute" not in patroni
    assert unit_settings(units["pgha-postgres-exporter"])["MemoryDenyWriteExecute"] == "yes"


def test_patroni_s_rest_api_is_tls_with_client_certificates_for_unsafe_endpoints():
    spec = make_spec({})
    ctx = ec2_context(spec)
    files = files_of(spec, ctx)
    patroni = yaml.safe_load(files["/etc/pgha/patroni.yml"].content)
    tls = "/etc/pgha/tls"
    assert patroni["restapi"] | {"listen": None, "connect_address": None} == {
        "listen": None, "connect_address": None, "certfile": f"{tls}/node.crt", "keyfile": f"{tls}/node.key",
        "cafile": f"{tls}/ca.crt", "verify_client": "optional"}
    # Patroni's own calls to other members (failsafe POSTs) and patronictl present the member's certificate.
    assert patroni["ctl"] == {"insecure": False, "cacert": f"{tls}/ca.crt", "certfile": f"{tls}/node.crt",
                              "keyfile": f"{tls}/node.key"}
    # The agent is told to use https (patroni_api.local_client).
    assert json.loads(files["/etc/pgha/node.json"].content)["patroni_tls"] is True
    # Every HAProxy check of Patroni is TLS, verified against the cluster CA.
    cfg = haproxy_sections(files["/etc/pgha/haproxy/haproxy.cfg"].content)
    for name, lines in cfg.items():
        if not name.startswith("backend be-") or name == "backend be-patroni-metrics":
            continue
        assert "tcp-check connect port 8008 ssl" in lines and "tcp-check connect port 8008" not in lines, name
        servers = [line for line in lines if line.startswith("server ")]
        assert servers and all(line.endswith(f" check ca-file {tls}/ca.crt verify required") for line in servers), name
    metrics = [line for line in cfg["backend be-patroni-metrics"] if line.startswith("server ")]
    assert metrics[0].endswith(f":8008 ssl ca-file {tls}/ca.crt verify required")


# -- IMDS for the users that call AWS only (audit invariant N31) --------------------------------

IMDS_RULESET = "/etc/pgha/imds-filter.nft"
IMDS_UNIT = "/etc/systemd/system/pgha-imds-filter.service"
# The units whose processes reach AWS (boto3, pgBackRest's repo1-s3-key-type=auto) under their User=,
# and those that never do.
CALLS_AWS = ("pgha-patroni", "pgha-backup-full", "pgha-backup-diff", "pgha-backup-incr", "pgha-pgbackrest-exporter",
             "pgha-ready", "pgha-prepare", "pgha-config", "pgha-ship-logs")
NEVER_CALLS_AWS = ("pgha-etcd", "pgha-haproxy", "pgha-node-exporter", "pgha-postgres-exporter",
                   "pgha-pgbouncer-exporter")


def imds_chain(ruleset: str, name: str) -> list[str]:
    """The rules of one chain of the ruleset, comments left out."""
    lines = ruleset.split(f"chain {name} {{", 1)[1].split("}", 1)[0].splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_imds_admits_only_the_users_that_call_aws_and_resets_the_rest(combo):
    from pgha.agent import authorized_keys, fetch
    from pgha.local import imds

    spec = make_spec(COMBINATIONS[combo])
    for index in range(len(spec.members)):
        ruleset = files_of(spec, ec2_context(spec), index)[IMDS_RULESET].content
        # pgha's own table, replaced whole by each load (no other ruleset touched, none left behind).
        assert ruleset.splitlines()[4:7] == ["table inet pgha_imds", "delete table inet pgha_imds",
                                             "table inet pgha_imds {"]
        # Both of IMDS's addresses, the ones the agent and the rehearsal's stand-in use; new connections only.
        assert imds_chain(ruleset, "output") == [
            "type filter hook output priority filter; policy accept;",
            "ct state new ip daddr 169.254.169.254 jump imds", "ct state new ip6 daddr fd00:ec2::254 jump imds"]
        assert fetch.IMDS_ENDPOINT == authorized_keys.IMDS_ENDPOINT + "/" == f"http://{imds.ADDRESS}/"
        # root, postgres, sshd's key user and the log shipper, each with its reason; then a reset, never a drop.
        chain = imds_chain(ruleset, "imds")
        assert chain == ['meta skuid "root" accept', 'meta skuid "postgres" accept', 'meta skuid "pgha-eic" accept',
                         'meta skuid "pgha-logs" accept',
                         "meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited"]
        comments = [line.strip() for line in ruleset.split("chain imds {", 1)[1].splitlines()
                    if line.strip().startswith("#")]
        assert len(comments) == 4 and "repo1-s3-key-type=auto" in comments[1] and "key command" in comments[2]
        assert "CloudWatch Logs" in comments[3]
        assert "drop" not in ruleset


def test_the_imds_users_are_exactly_those_of_the_units_that_call_aws():
    spec = make_spec(COMBINATIONS["arm64-ebs"])
    files = files_of(spec, ec2_context(spec))
    allowed = {line.split('"')[1] for line in imds_chain(files[IMDS_RULESET].content, "imds") if "skuid" in line}

    def user(unit):
        return unit_settings(files[f"/etc/systemd/system/{unit}.service"].content).get("User", "root")
    assert {user(u) for u in CALLS_AWS} | {"root"} | {contract.SSH_KEYS_USER} == allowed
    # sshd runs its key command (IMDS's managed-ssh-keys) as that user.
    assert f"AuthorizedKeysCommandUser {contract.SSH_KEYS_USER}" in files["/etc/ssh/sshd_config.d/10-pgha.conf"].content
    denied = {user(u) for u in NEVER_CALLS_AWS}
    assert denied == {"etcd", "haproxy", "prometheus", "pgha-exporter"} and not denied & allowed


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_the_imds_filter_loads_before_every_daemon(combo):
    spec = make_spec(COMBINATIONS[combo])
    files = files_of(spec, ec2_context(spec))
    units = json.loads(files["/etc/pgha/node.json"].content)["units"]
    # First of the units start-node starts in order at first boot.
    assert units[0] == "pgha-imds-filter.service"
    s = unit_settings(files[IMDS_UNIT].content)
    # At every later boot: before sysinit.target (so every unit of default dependencies) and the network,
    # and before each pgha unit by name (pgha-host and pgha-ready have no default dependencies).
    assert s["DefaultDependencies"] == "no" and s["WantedBy"] == "sysinit.target"
    assert set(s["Before"].split()) == {"network-pre.target", "sysinit.target", *units[1:]}
    assert "After" not in s and "Requires" not in s
    assert (s["Type"], s["RemainAfterExit"]) == ("oneshot", "yes")
    assert s["ExecStart"] == s["ExecReload"] == f"/usr/sbin/nft -f {IMDS_RULESET}"
    assert "ExecStop" not in s  # stopping it leaves the filter in place
    # Debian's nftables.service flushes the whole ruleset when it starts, reloads or stops: the
    # filter is loaded again after each.
    dropin = unit_settings(files["/etc/systemd/system/nftables.service.d/pgha.conf"].content)
    for key in ("ExecStartPost", "ExecReload", "ExecStopPost"):
        assert dropin[key] == f"/usr/sbin/nft -f {IMDS_RULESET}", key
    # A changed ruleset is loaded on the running member; it travels in the manifest, not the user-data.
    assert files[IMDS_RULESET].on_change == ("reload:pgha-imds-filter.service",)
    assert not is_boot_file(files[IMDS_RULESET]) and not is_boot_file(files[IMDS_UNIT])
    assert "nftables" in files["/opt/pgha/bin/pgha-bootstrap"].content.split("PACKAGES=(", 1)[1].split(")")[0].split()
