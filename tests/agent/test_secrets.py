"""secrets: the cluster secret to the node's files (env quoting, SCRAM, owners, modes)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pgha.agent import cli, envfile, restore, secrets

from .agent_helpers import (
    PASSWORDS,
    SOURCE_PASS,
    TLS_KEY,
    _assert_nothing_secret,
    branch_node,
    make_node,
    make_secret,
    mode_owner,
    run_cli,
    write_json,
)
from .test_bootstrap import MISSING


def test_env_quote_round_trips_through_sh():
    value = PASSWORDS["superuser_password"] + " $HOME `id` 'q'"
    text = envfile.env_file([("X", value)])
    assert envfile.env_unquote(text)["X"] == value
    got = subprocess.run(["sh", "-c", f'{text.splitlines()[1]}; printf %s "$X"'], capture_output=True, text=True)
    assert got.stdout == value


def test_scram_verifier_matches_known_vector():
    # Format and determinism here; that PostgreSQL accepts these verifiers is proven by the SCRAM
    # logins in the post-bootstrap test (the roles get only client-computed verifiers).
    v1 = secrets.scram_sha256_verifier("pw", salt=b"0123456789abcdef")
    v2 = secrets.scram_sha256_verifier("pw", salt=b"0123456789abcdef")
    assert v1 == v2 and v1.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert secrets.scram_sha256_verifier("pw") != secrets.scram_sha256_verifier("pw")


# --------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------

def _assert_secret_files(node: dict, secret: dict, *, s3: bool, cipher: bool):
    p, u = node["paths"], node["users"]
    sec, tls = Path(p["secrets"]), Path(p["tls"])
    assert mode_owner(sec) == (0o700, "postgres")
    assert mode_owner(sec / "pgbackrest") == (0o700, "postgres")
    assert mode_owner(tls) == (0o755, "root")
    expected = {sec / "patroni.env": "postgres",
                sec / "pgbouncer-userlist.txt": "postgres", sec / "pgbackrest" / "secrets.conf": "postgres",
                sec / "exporter.env": "postgres", tls / "node.key": "postgres", tls / "etcd.key": "etcd"}
    for path, owner in expected.items():
        assert mode_owner(path) == (0o600, owner), path
    # no temporary files left behind
    assert sorted(x.name for x in sec.iterdir()) == sorted(
        ["patroni.env", "pgbouncer-userlist.txt", "pgbackrest", "exporter.env"])

    env = envfile.env_unquote((sec / "patroni.env").read_text())
    assert env == {
        "PATRONI_SUPERUSER_USERNAME": "postgres", "PATRONI_SUPERUSER_PASSWORD": secret["superuser_password"],
        "PATRONI_REPLICATION_USERNAME": "replicator", "PATRONI_REPLICATION_PASSWORD": secret["replication_password"],
        "PATRONI_REWIND_USERNAME": "postgres", "PATRONI_REWIND_PASSWORD": secret["superuser_password"],
        "PATRONI_RESTAPI_USERNAME": "patroni", "PATRONI_RESTAPI_PASSWORD": secret["patroni_rest_password"],
    }
    # The app's password is in no file (post-bootstrap fetches it when it runs: N27).
    assert not any(secret["app_password"] in f.read_text() for f in sec.rglob("*") if f.is_file())
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

    exp = envfile.env_unquote((sec / "exporter.env").read_text())
    pg = psycopg.conninfo.conninfo_to_dict(exp["DATA_SOURCE_NAME"])
    assert pg == {"host": f"{p['run']}/postgres", "port": "5432", "dbname": "postgres", "user": u["monitor"],
                  "password": secret["monitor_password"], "sslmode": "disable"}
    pgb = psycopg.conninfo.conninfo_to_dict(exp["PGHA_PGBOUNCER_DSN"])
    assert pgb == {"host": f"{p['run']}/pgbouncer", "port": "6432", "dbname": "pgbouncer", "user": u["monitor"],
                   "password": secret["monitor_password"], "sslmode": "disable"}
    assert (tls / "node.key").read_text() == TLS_KEY
    assert (tls / "etcd.key").read_text() == TLS_KEY




@pytest.mark.usefixtures("_root")
def test_secrets_from_file(base, capfd):
    secret = make_secret()
    node = make_node(base, backup_encryption=True)
    write_json(base / "secret.json", secret)
    nj = write_json(base / "etc" / "node.json", node)
    assert cli.main(["--node-json", str(nj), "secrets"]) == 0
    _assert_secret_files(node, secret, s3=True, cipher=True)
    # second run rewrites in place (atomic replace), same result; option after the command works too;
    # the roles.json of an older agent is removed
    (Path(node["paths"]["secrets"]) / "roles.json").write_text("stale")
    assert cli.main(["secrets", "--node-json", str(nj)]) == 0
    _assert_secret_files(node, secret, s3=True, cipher=True)
    out, err = capfd.readouterr()
    assert "wrote " in err and "patroni.env" in err and "etcd.key" in err
    _assert_nothing_secret(out + err)


@pytest.mark.usefixtures("_root")
def test_secrets_without_optional_keys_cli(base, tmp_path):
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


@pytest.mark.usefixtures("_root")
def test_secrets_missing_member_key_fails_clearly(base, capfd):
    write_json(base / "secret.json", make_secret(member="pg-other-1"))
    node = make_node(base)
    nj = write_json(base / "etc" / "node.json", node)
    assert cli.main(["--node-json", str(nj), "secrets"]) == 1
    out, err = capfd.readouterr()
    assert "the secret has no tls_keys entry for member 'pg-x-1'" in err
    _assert_nothing_secret(out + err)
    assert not (base / "etc" / "tls" / "node.key").exists()


@pytest.mark.usefixtures("_root")
def test_secrets_take_the_tls_key_from_the_member_s_own_secret(base, capfd):
    """EC2's layout: the cluster secret has the passwords only, the member's own secret its key."""
    secret = make_secret()
    del secret["tls_keys"]
    write_json(base / "secret.json", secret)
    write_json(base / "tls.json", {"tls_keys": {"pg-x-1": TLS_KEY}})
    node = make_node(base, tls_secret={"source": "file", "file": str(base / "tls.json")})
    nj = write_json(base / "etc" / "node.json", node)
    assert cli.main(["--node-json", str(nj), "secrets"]) == 0
    _assert_secret_files(node, secret, s3=True, cipher=False)
    out, err = capfd.readouterr()
    _assert_nothing_secret(out + err)


@pytest.mark.usefixtures("_root")
def test_a_tls_secret_holding_another_member_s_key_is_refused(base, capfd):
    secret = make_secret()
    write_json(base / "secret.json", secret)
    other = "-----BEGIN PRIVATE KEY-----\nb3RoZXI=\n-----END PRIVATE KEY-----\n"
    for keys in ({"pg-x-2": other}, {"pg-x-1": TLS_KEY, "pg-x-2": other}):
        write_json(base / "tls.json", {"tls_keys": keys})
        nj = write_json(base / "etc" / "node.json",
                        make_node(base, tls_secret={"source": "file", "file": str(base / "tls.json")}))
        assert cli.main(["--node-json", str(nj), "secrets"]) == 1
        out, err = capfd.readouterr()
        assert "must hold tls_keys for 'pg-x-1' alone" in err and "pg-x-2" in err
        assert "b3RoZXI" not in out + err
        _assert_nothing_secret(out + err)
    assert not (base / "etc" / "tls" / "node.key").exists()


@pytest.mark.usefixtures("_root")
def test_secrets_missing_os_user_and_encryption_pass(base, capfd):
    write_json(base / "secret.json", make_secret())
    nj = write_json(base / "etc" / "node.json",
                    make_node(base, os_users={"etcd": "no-such-user-pgha"}))
    assert cli.main(["--node-json", str(nj), "secrets"]) == 1
    assert "OS user 'no-such-user-pgha' (os_users.etcd) does not exist" in capfd.readouterr().err

    secret = make_secret()
    del secret["pgbackrest_cipher_pass"]
    write_json(base / "secret.json", secret)
    write_json(nj, make_node(base, backup_encryption=True))
    assert cli.main(["--node-json", str(nj), "secrets"]) == 1
    out, err = capfd.readouterr()
    assert "no usable 'pgbackrest_cipher_pass'" in err
    _assert_nothing_secret(out + err)


@pytest.mark.usefixtures("_root")
def test_secrets_from_secrets_manager(base, mocked_aws, capfd):
    import boto3

    sm = boto3.client("secretsmanager", region_name="us-east-1")
    secret = make_secret()
    del secret["s3_key"], secret["s3_key_secret"]  # EC2: the instance role reaches S3
    arn = sm.create_secret(Name="pgha/pg-x", SecretString=json.dumps(secret))["ARN"]
    node = make_node(base, backup_encryption=True,
                     secret={"source": "aws", "id": arn, "region": "us-east-1", "file": ""})
    nj = write_json(base / "etc" / "node.json", node)
    assert cli.main(["--node-json", str(nj), "secrets"]) == 0
    _assert_secret_files(node, secret, s3=False, cipher=True)

    # a secret that does not exist: retried until the deadline, then a clear error
    write_json(nj, make_node(base, secret={"source": "aws", "id": arn + "-gone", "region": "us-east-1"}))
    t0 = time.monotonic()
    assert cli.main(["--node-json", str(nj), "secrets", "--timeout", "3"]) == 1
    assert time.monotonic() - t0 >= 2
    out, err = capfd.readouterr()
    assert "retrying" in err and "cannot read secret" in err and "ResourceNotFoundException" in err
    _assert_nothing_secret(out + err)


# --------------------------------------------------------------------------------------
# a branch of an encrypted source: the source's cipher pass
# --------------------------------------------------------------------------------------





@pytest.mark.usefixtures("_root")
def test_secrets_fetches_the_source_cipher_pass_of_a_branch(base, capfd):
    secret = make_secret()
    write_json(base / "secret.json", secret)
    # Loopback: the source cluster's own secret file (every key of it; only the pass is kept).
    write_json(base / "source-secret.json", make_secret(pgbackrest_cipher_pass=SOURCE_PASS))
    node = branch_node(base, {"source": "file", "file": str(base / "source-secret.json")})
    nj = write_json(base / "etc" / "node.json", node)
    assert cli.main(["--node-json", str(nj), "secrets"]) == 0
    sec = Path(node["paths"]["secrets"])
    assert mode_owner(sec / "source-cipher-pass") == (0o600, "postgres")
    assert (sec / "source-cipher-pass").read_text() == SOURCE_PASS + "\n"
    # The branch's own repository keeps its own pass; the source's is nowhere else.
    conf = (sec / "pgbackrest" / "secrets.conf").read_text()
    assert f"repo1-cipher-pass={secret['pgbackrest_cipher_pass']}" in conf and SOURCE_PASS not in conf
    assert sorted(x.name for x in sec.iterdir()) == sorted(
        ["patroni.env", "pgbouncer-userlist.txt", "pgbackrest", "exporter.env", "source-cipher-pass"])
    out, err = capfd.readouterr()
    assert "source-cipher-pass" in err
    _assert_nothing_secret(out + err)
    assert SOURCE_PASS not in out + err


@pytest.mark.usefixtures("_root")
def test_secrets_fetches_the_source_cipher_secret_from_secrets_manager(base, mocked_aws, capfd):
    import boto3

    write_json(base / "secret.json", make_secret())
    # The source's cipher secret lives in the source's region, as its ARN says.
    sm = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = sm.create_secret(Name="pg-src-cipher",
                           SecretString=json.dumps({"pgbackrest_cipher_pass": SOURCE_PASS}))["ARN"]
    node = branch_node(base, {"source": "aws", "id": arn, "region": "eu-west-1"})
    nj = write_json(base / "etc" / "node.json", node)
    assert cli.main(["--node-json", str(nj), "secrets"]) == 0
    assert (Path(node["paths"]["secrets"]) / "source-cipher-pass").read_text() == SOURCE_PASS + "\n"
    out, err = capfd.readouterr()
    assert SOURCE_PASS not in out + err
    _assert_nothing_secret(out + err)


@pytest.mark.usefixtures("_root")
def test_an_unreadable_source_cipher_secret_is_a_warning_and_the_restore_fails_clearly(base, capfd):
    write_json(base / "secret.json", make_secret())
    node = branch_node(base, {"source": "file", "file": str(base / "gone.json")})
    nj = write_json(base / "etc" / "node.json", node)
    # A member that never restores (added to a branch long promoted) must still boot.
    assert cli.main(["--node-json", str(nj), "secrets"]) == 0
    sec = Path(node["paths"]["secrets"])
    assert (sec / "patroni.env").exists() and not (sec / "source-cipher-pass").exists()
    err = capfd.readouterr().err
    assert "WARNING" in err and "cipher pass was not fetched" in err and "gone.json" in err
    # Its own repository is new (asked first), so the source is restored: that stops before
    # pgBackRest runs, naming the file.
    fake = base / "pgbackrest"
    fake.write_text(f"#!/bin/sh\nfor last; do :; done\n[ \"$last\" = info ] || exit 1\n"
                    f"echo '{MISSING.replace(chr(10), '')}'\n")
    fake.chmod(0o755)
    assert cli.main(["--node-json", str(nj), "bootstrap", "--pgbackrest", str(fake)]) == 1
    err = capfd.readouterr().err
    assert "bootstrap path source" in err
    assert "source-cipher-pass cannot be read" in err and "running" not in err
    # As restore_command: an exit status PostgreSQL takes as fatal, not as the end of the archive.
    rc = cli.main(["--node-json", str(nj), "archive-get-source", "000000010000000000000001", "/tmp/x"])
    assert rc == restore.ARCHIVE_GET_ABORT > 125


