"""The security audit's invariants that held without a test of their own (docs/security.md):
the AWS side under the mock runtime, the node side on rendered files."""

import json
import re
from typing import Any

import pytest
import yaml

from infra_mocks import Run, run_program
from pgha.agent.hooks import auth_function_sql
from pgha.contract import NodeUsers
from pgha.infra import PostgresCluster
from pgha.render import render_cluster, render_node
from pgha.render.files import USERS
from pgha.spec import PORTS, SpecError
from render_fixtures import COMBINATIONS, ec2_context, make_spec

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
NODES_SG = "db-sg-nodes"

# -- AWS (mock runtime) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run() -> Run:
    # Client and monitoring CIDRs and the direct ports too: the widest default-free ingress.
    return run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-sec", "network": {
        "allowed_cidrs": ["10.1.0.0/16"], "monitoring_cidrs": ["10.2.0.0/24"], "expose_direct_ports": True}}))


def test_instance_metadata_is_imdsv2_only_with_hop_limit_1_and_no_tags(run: Run) -> None:
    """#1: a container on the node (hop 2) gets no token; tags, which could carry data, stay out of IMDS."""
    instances = run.of_type("aws:ec2/instance:Instance")
    assert len(instances) == 3
    for inst in instances:
        assert inst.inputs["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                                  "httpPutResponseHopLimit": 1, "instanceMetadataTags": "disabled"}


def test_data_volumes_are_encrypted_with_the_key_and_keep_a_final_snapshot(run: Run) -> None:
    """#3: deleting a data volume (a replacement, a destroy) leaves a snapshot."""
    volumes = run.of_type("aws:ebs/volume:Volume")
    (key,) = run.of_type("aws:kms/key:Key")
    assert len(volumes) == 3
    for vol in volumes:
        assert vol.inputs["encrypted"] is True and vol.inputs["finalSnapshot"] is True
        assert vol.inputs["kmsKeyId"] == f"arn:aws:kms:us-east-1:123456789012:key/key-{key.name}"


def test_members_are_in_private_subnets_whose_default_route_is_a_nat_gateway(run: Run) -> None:
    """#4: no public address on a member, and no route from its subnet straight to the internet gateway."""
    member_subnets = {eni.inputs["subnetId"] for eni in run.of_type("aws:ec2/networkInterface:NetworkInterface")}
    assert len(member_subnets) == 3
    subnets = {f"{s.name}-id": s for s in run.of_type("aws:ec2/subnet:Subnet")}
    tables = {a.inputs["subnetId"]: a.inputs["routeTableId"]
              for a in run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")}
    routes = run.of_type("aws:ec2/route:Route")
    for subnet_id in member_subnets:
        assert subnets[subnet_id].inputs["mapPublicIpOnLaunch"] is False
        own = [r.inputs for r in routes if r.inputs["routeTableId"] == tables[subnet_id]]
        assert own and all("natGatewayId" in r and "gatewayId" not in r for r in own), own
    for eni in run.of_type("aws:ec2/networkInterface:NetworkInterface"):
        assert not eni.inputs.get("associatePublicIpAddress")


def test_buckets_have_acls_disabled(run: Run) -> None:
    """#7: BucketOwnerEnforced on the backup bucket and the log bucket: no ACL grants access."""
    controls = {c.name: c.inputs for c in run.of_type("aws:s3/bucketOwnershipControls:BucketOwnershipControls")}
    buckets = {b.inputs["bucket"] if "bucket" in b.inputs else b.name for b in run.of_type("aws:s3/bucket:Bucket")}
    assert len(buckets) == 2 and set(controls) == {"db-backup-ownership", "db-logs-ownership"}
    for inputs in controls.values():
        assert inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}


def test_a_cluster_s_role_names_no_other_cluster_s_secret_or_bucket() -> None:
    """#17: two clusters in one program: each role's policy names its own secrets and bucket only."""
    def program() -> None:
        PostgresCluster("a", {"cluster_name": "pg-a"})
        PostgresCluster("b", {"cluster_name": "pg-b", "network": {"vpc_cidr": "10.43.0.0/16"}})

    two = run_program(program)
    policies = {p.name.split("-")[0]: p.inputs["policy"] for p in two.of_type("aws:iam/rolePolicy:RolePolicy")}
    assert set(policies) == {"a", "b"}
    for own, other in (("a", "b"), ("b", "a")):
        text = policies[own]
        assert f"secret:{own}-secret-" in text and f"pg-{own}-backup-" in text
        assert f"secret:{other}-secret-" not in text and f"pg-{other}-backup-" not in text
        assert f"pg-{other}/" not in text and f'"pg-{other}"' not in text


def test_secrets_are_read_only_to_the_members(run: Run) -> None:
    """#21: the role reads its secrets; it may not write, list, rotate or delete any."""
    doc = json.loads(run.one("aws:iam/rolePolicy:RolePolicy", "db-role-access").inputs["policy"])
    actions: set[str] = set()
    for statement in doc["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        listed = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions |= {a for a in listed if a.startswith("secretsmanager:")}
    assert actions == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}


@pytest.mark.parametrize("port", ["patroni", "etcd_client", "etcd_peer", "pgbackrest_server"])
def test_member_only_ports_are_open_to_the_members_group_alone(run: Run, port: str) -> None:
    """#24-#27: Patroni's API, etcd and pgBackRest's TLS server: from the members' group, nobody else
    (not the client CIDRs, not the monitoring CIDRs, not the NLB)."""
    number = PORTS[port]
    rules = [r for r in run.of_type(INGRESS)
             if int(r.inputs["fromPort"]) <= number <= int(r.inputs["toPort"])]
    assert rules
    for rule in rules:
        assert rule.inputs.get("referencedSecurityGroupId") == f"{NODES_SG}-id", rule.inputs
        assert not {"cidrIpv4", "cidrIpv6", "prefixListId"} & set(rule.inputs)


def test_the_vpc_s_default_security_group_is_taken_over_with_no_rule(run: Run) -> None:
    """#29: the VPC pgha creates has its default group declared, with no ingress or egress."""
    (default,) = run.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    (vpc,) = run.of_type("aws:ec2/vpc:Vpc")
    assert default.inputs["vpcId"] == f"{vpc.name}-id"
    assert not default.inputs.get("ingress") and not default.inputs.get("egress")


# -- the node (rendered files) ----------------------------------------------------------------------

def node_files(values: dict[str, Any] | None = None, member: int = 0) -> dict[str, Any]:
    spec = make_spec(values or {})
    return {f.path: f.content for f in render_node(spec, spec.members[member], ec2_context(spec))}


def patroni_yml(values: dict[str, Any] | None = None) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(node_files(values)["/etc/pgha/patroni.yml"])
    return loaded


def test_pg_hba_uses_scram_cert_peer_or_reject_only() -> None:
    """N1: no trust, md5, password or ident rule, on the socket or the network."""
    rules = patroni_yml()["postgresql"]["pg_hba"]
    assert rules
    for rule in rules:
        fields = rule.split()
        method = fields[3] if fields[0] == "local" else fields[4]
        assert method in ("scram-sha-256", "cert", "peer", "reject"), rule
        assert not {"trust", "md5", "password", "ident"} & set(fields), rule


def test_tls_is_on_with_tls12_at_least_and_cannot_be_weakened() -> None:
    """N5: ssl on with pgha's certificates, TLSv1.2 at least; any ssl setting in pgha:parameters is refused."""
    params = patroni_yml()["postgresql"]["parameters"]
    assert params["ssl"] == "on" and params["ssl_min_protocol_version"] == "TLSv1.2"
    assert params["ssl_cert_file"] == "/etc/pgha/tls/node.crt" and params["ssl_key_file"] == "/etc/pgha/tls/node.key"
    for name, value in (("ssl", "off"), ("ssl_min_protocol_version", "TLSv1"), ("ssl_ciphers", "NULL")):
        with pytest.raises(SpecError, match="TLS is always on"):
            make_spec({"parameters": {name: value}})


def test_ddl_is_logged_by_default_and_the_level_is_the_user_s_to_change() -> None:
    """N8: log_statement = ddl (CIS), a tuned default that pgha:parameters may replace."""
    assert patroni_yml()["postgresql"]["parameters"]["log_statement"] == "ddl"
    assert patroni_yml({"parameters": {"log_statement": "mod"}})["postgresql"]["parameters"]["log_statement"] == "mod"
    with pytest.raises(SpecError, match="log_statement"):
        make_spec({"parameters": {"log_statement": "everything"}})


def test_replication_and_rewind_verify_the_primary_s_certificate() -> None:
    """N9: streaming replication and pg_rewind connect with verify-full against the cluster CA."""
    auth = patroni_yml()["postgresql"]["authentication"]
    for user in ("replication", "rewind"):
        assert auth[user]["sslmode"] == "verify-full" and auth[user]["sslrootcert"] == "/etc/pgha/tls/ca.crt", user
    hba = patroni_yml()["postgresql"]["pg_hba"]
    replication = [r for r in hba if r.split()[1] == "replication"]
    assert replication and all(r.startswith("hostssl replication replicator ") for r in replication)


def test_etcd_v2_api_is_off() -> None:
    """N15: only the v3 API (with client certificates) answers."""
    conf = yaml.safe_load(node_files()["/etc/pgha/etcd/etcd.conf.yml"])
    assert conf["enable-v2"] is False


def test_pgbouncer_clients_use_tls_and_scram_except_on_the_socket() -> None:
    """N17: network clients by hostssl + SCRAM only; peer only for the admin console on the socket."""
    lines = [line.split() for line in node_files()["/etc/pgha/pgbouncer/pgb_hba.conf"].splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines
    for fields in lines:
        if fields[0] == "local":
            assert fields[-1] in ("peer", "scram-sha-256"), fields
            assert fields[-1] != "peer" or fields[1:3] == ["pgbouncer", "postgres"], fields
        else:
            assert fields[0] == "hostssl" and fields[-1] == "scram-sha-256", fields
    ini = node_files()["/etc/pgha/pgbouncer/pgbouncer.ini"]
    assert re.search(r"^auth_type = hba$", ini, flags=re.M)


def test_auth_query_function_is_a_locked_down_security_definer() -> None:
    """N19: SECURITY DEFINER with a pinned search_path, no superuser served, nothing for PUBLIC."""
    sql = auth_function_sql(USERS)
    assert "SECURITY DEFINER" in sql and "SET search_path = pg_catalog, pg_temp" in sql
    assert "FROM pg_catalog.pg_shadow s" in sql and "AND NOT s.usesuper" in sql
    assert "REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;" in sql
    assert "REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;" in sql
    ini = node_files()["/etc/pgha/pgbouncer/pgbouncer.ini"]
    assert "auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)" in ini
    assert f"auth_user = {USERS['pgbouncer_auth']}" in ini


def test_auth_query_serves_application_roles_only() -> None:
    """N20: no verifier of a replication role or of pgha's service roles, by attribute and by name."""
    users: NodeUsers = {"superuser": "postgres", "replication": "repl'x", "pgbouncer_auth": "pgb_auth",
                        "monitor": "mon", "patroni_rest": "patroni", "app": "app_user"}
    sql = auth_function_sql(users)
    assert "AND NOT s.userepl" in sql
    (names,) = re.findall(r"s\.usename <> ALL \(ARRAY\[(.*)\]::name\[\]\)", sql)
    # Quoted as SQL literals; the application role and Patroni's REST user (no database role) are not listed.
    assert names == "'mon', 'pgb_auth', 'postgres', 'repl''x'"
    # The rendered node's names are the ones excluded on a real node.
    assert "'dbuser_monitor', 'pgbouncer_auth', 'postgres', 'replicator'" in auth_function_sql(USERS)


def test_haproxy_runtime_socket_is_for_its_own_user_only() -> None:
    """N22: the admin-level runtime socket is mode 600 (the haproxy user and root), under /run/pgha."""
    cfg = node_files()["/etc/pgha/haproxy/haproxy.cfg"]
    sockets = [line.strip() for line in cfg.splitlines() if line.strip().startswith("stats socket")]
    assert sockets == ["stats socket /run/pgha/haproxy/admin.sock mode 600 level admin"]


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_no_node_file_installs_python_packages_from_an_index(combo: str) -> None:
    """N30 (changed): nothing on a node runs pip; its Python libraries are Debian's, verified by apt."""
    spec = make_spec(COMBINATIONS[combo])
    for files in render_cluster(spec, ec2_context(spec)).values():
        for f in files:
            if isinstance(f.content, str):
                assert not re.search(r"\bpip3?\b|ensurepip|easy_install|get-pip", f.content), f.path


def test_sshd_takes_pushed_keys_only_for_admin_on_the_member_s_address() -> None:
    """#5 (changed, the node's side): no stored key, no password, no root; keys only from the
    EC2 Instance Connect check, run under its own account."""
    spec = make_spec({})
    ctx = ec2_context(spec)
    member = spec.members[0]
    files = {f.path: f.content for f in render_node(spec, member, ctx)}
    settings: dict[str, str] = {}
    for line in files["/etc/ssh/sshd_config.d/10-pgha.conf"].splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings.setdefault(key, value)  # sshd: the first value wins
    assert settings["ListenAddress"] == f"{ctx.member_ips[member.name]}:22"
    assert settings["AllowUsers"] == "admin" and settings["PermitRootLogin"] == "no"
    assert settings["PasswordAuthentication"] == "no" and settings["KbdInteractiveAuthentication"] == "no"
    assert settings["AuthenticationMethods"] == "publickey" and settings["AuthorizedKeysFile"] == "none"
    assert settings["AuthorizedKeysCommand"].endswith(" authorized-keys %u %f")
    assert settings["AuthorizedKeysCommandUser"] not in ("root", "admin", "postgres")
    assert settings["X11Forwarding"] == "no" and settings["AllowAgentForwarding"] == "no"
