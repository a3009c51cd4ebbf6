"""A branch of a source whose pgBackRest repository is encrypted (``backup.encryption``), for real.

A one-member source cluster of its own (stack ``enc`` in a temporary project, encryption on,
its own moto S3 over TLS and addresses), a full backup, rows after it that only the archived
WAL holds, then ``pgha branch create``: the branch restores with the source's cipher pass (from
the source's cipher secret in Secrets Manager, handed to pgBackRest in the environment) while
encrypting its own repository with its own pass, and the source's pass shows up nowhere but
the branch's 0600 secret file. Its own root (PGHA_TEST_ROOT + "-enc"), addresses
(PGHA_TEST_ENC_ADDRESSES, default 10.218.0.) and moto port (PGHA_TEST_S3_PORT + 300).
"""

import json
import shutil
import stat
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from conftest import REPO, cluster_args, wipe_test_root
from pgha.local import backups, procfs
from pgha.local import branch as branches
from pgha.local.cluster import LocalCluster, _ids_of

pytestmark = pytest.mark.cluster

STACK = "enc"
SOURCE_CONFIG = {
    "aws:region": "us-east-1",
    "pgha:clusterName": "pg-enc",
    "pgha:instanceType": "t4g.medium",
    "pgha:profile": "tiny",
    "pgha:rto": "fast",
    # One member, asynchronous (rpo 0 would need a replica): the cheapest source with a repository.
    "pgha:replicas": 0,
    "pgha:rpo": 1048576,
    "pgha:storage": {"kind": "ebs", "volumeType": "gp3", "sizeGiB": 20},
    "pgha:backup": {"encryption": True},
}
BRANCH = "br-enc"
# pgBackRest's aes-256-cbc files start with OpenSSL's salt header.
ENCRYPTED_MAGIC = b"Salted__"


def log(line: str) -> None:
    print(line, file=sys.stderr)


@pytest.fixture(scope="module")
def encrypted_source(tmp_path_factory: pytest.TempPathFactory):
    """The ``enc`` stack's cluster, up for this module, with a full backup and rows after it."""
    project = tmp_path_factory.mktemp("enc-project")
    shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
    (project / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump({"config": SOURCE_CONFIG}))
    args = cluster_args("enc", "10.218.0.", port_offset=300)
    wipe_test_root(args["root"], stack=STACK, address_prefix=args["address_prefix"], s3_http_port=args["s3_http_port"])
    source = LocalCluster(project_dir=project, stack=STACK, log=log, **args)
    try:
        source.up(timeout=300, log=log)
        with superuser(source) as conn:
            conn.execute("CREATE TABLE enc_marks (id int PRIMARY KEY)")
            conn.execute("INSERT INTO enc_marks VALUES (1), (2)")
        backups.run_backup(source, "full", log=log)
        with superuser(source) as conn:
            # After the backup: only the (encrypted) archived WAL brings it to a branch.
            conn.execute("INSERT INTO enc_marks VALUES (3)")
        switch_and_wait_archived(source)
        yield source
    finally:
        source.destroy(log=log)


def facts_of(node) -> dict:
    return json.loads((Path(node.layout.etc) / "node.json").read_text())


def superuser(cluster: LocalCluster) -> psycopg.Connection:
    return psycopg.connect(backups.superuser_dsn(cluster, backups.leader(cluster, running=False)), autocommit=True,
                           connect_timeout=5)


def switch_and_wait_archived(cluster: LocalCluster, timeout: float = 90) -> str:
    """Close the current WAL segment and wait until the archiver has pushed it."""
    with superuser(cluster) as conn:
        segment = backups.switch_wal(conn)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last >= segment:
                return segment
            time.sleep(0.5)
    raise AssertionError(f"{segment} was not archived within {timeout:.0f}s")


def objects(cluster: LocalCluster, bucket: str, prefix: str = "") -> list[str]:
    pages = cluster.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def head_bytes(cluster: LocalCluster, bucket: str, key: str) -> bytes:
    return cluster.s3.client().get_object(Bucket=bucket, Key=key, Range="bytes=0-7")["Body"].read()


def files_holding(root: Path, text: str, skip: tuple[str, ...]) -> list[Path]:
    """Every regular file under ``root`` (but the ``skip`` directories) whose bytes contain ``text``."""
    found = []
    needle = text.encode()
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if any(part in skip for part in path.parts) or not path.is_file() or path.is_symlink():
            continue
        try:
            if needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


def process_lists_holding(text: str) -> list[int]:
    """Processes whose command line carries ``text`` (what ps would show anyone)."""
    return procfs.mentioning(text)


def source_info(node, options: list[str], env: dict[str, str]) -> dict:
    """``pgbackrest info`` of the source repository with the branch node's own config, as postgres,
    inside the branch's member."""
    argv = ["/usr/bin/pgbackrest", "--config=/etc/pgha/pgbackrest/pgbackrest.conf",
            "--config-include-path=/etc/pgha/secrets/pgbackrest", *options]
    # A wrong pass makes pgBackRest echo undecryptable bytes: run() decodes with errors="replace".
    proc = node.machine.run(argv, user="postgres", env=env, timeout=120)
    try:
        return json.loads(proc.stdout)[0]
    except (ValueError, IndexError):  # an error before any JSON: report it as a failed status
        return {"status": {"code": proc.returncode or 99, "message": proc.stderr.strip()}}


def test_the_source_repository_is_encrypted_with_the_source_pass(encrypted_source):
    stanza = backups.info(encrypted_source)
    assert stanza["cipher"] == "aes-256-cbc" and [b["type"] for b in stanza["backup"]] == ["full"]
    info_key = "pg-enc/pgbackrest/archive/pg-enc/archive.info"
    assert head_bytes(encrypted_source, encrypted_source.bucket, info_key) == ENCRYPTED_MAGIC


def test_a_branch_of_an_encrypted_source_holds_its_rows_and_encrypts_with_its_own_pass(encrypted_source):
    source = encrypted_source
    source_pass = json.loads(source.secrets_file.read_text())["pgbackrest_cipher_pass"]
    source_keys = set(objects(source, source.bucket))
    entry = branches.create(source, BRANCH, "latest", log=log, timeout=300)
    try:
        branch = branches.open_branch(source, BRANCH, entry)
        node = branch.nodes[0]
        assert node.ip == source.address_prefix + "11"
        assert facts_of(node)["aws"]["endpoint_url"] == source.s3.url
        with psycopg.connect(backups.superuser_dsn(branch, node), autocommit=True, connect_timeout=5) as conn:
            # Row 3 is in no backup: it came from the source's encrypted WAL (archive-get-source).
            assert conn.execute("SELECT id FROM enc_marks ORDER BY id").fetchall() == [(1,), (2,), (3,)]
            # Promoted: the source's restore_command (and the agent reading the pass) is gone.
            assert conn.execute("SHOW restore_command").fetchone()[0] == ""
            conn.execute("INSERT INTO enc_marks VALUES (100)")
        segment = switch_and_wait_archived(branch)

        # The branch's own repository: encrypted, with the branch's own pass (not the source's).
        own_pass = json.loads(branch.secrets_file.read_text())["pgbackrest_cipher_pass"]
        assert own_pass != source_pass
        assert backups.info(branch)["cipher"] == "aes-256-cbc"
        own = objects(source, branch.bucket)
        wal = [k for k in own if segment in k]
        assert wal and all(k.startswith(f"{BRANCH}/") for k in own)
        assert head_bytes(source, branch.bucket, wal[0]) == ENCRYPTED_MAGIC
        # Read only: nothing new in the source's repository from the branch.
        added = set(objects(source, source.bucket)) - source_keys
        assert not [k for k in added if BRANCH in k]

        # The source's pass: one 0600 file of postgres in the branch's secrets, nowhere else on
        # disk (configs, node facts, logs, postgresql.auto.conf) and in no process's command line.
        secret_file = Path(node.layout.secrets) / "source-cipher-pass"
        st = secret_file.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == _ids_of(node.machine, "postgres")[0]
        # What the instance wrote (its overlay's upper layer) and what its data volume holds.
        upper = node.machine.home / "upper"
        holders = files_holding(upper, source_pass, skip=()) + files_holding(
            Path(node.layout.data), source_pass, skip=())
        assert holders == [upper / "etc/pgha/secrets/source-cipher-pass"]
        assert source_pass not in (Path(node.layout.pgdata) / "postgresql.auto.conf").read_text()
        assert process_lists_holding(source_pass) == []
        facts = json.loads((Path(node.layout.etc) / "node.json").read_text())
        assert facts["restore"]["cipher"] == "aes-256-cbc"
        assert facts["restore"]["cipher_secret"] == {"source": "aws", "id": source.cipher_secret_name,
                                                     "region": source.s3.region}
        # Recovery fetched WAL through restore_command (archive-get-source, the only one it had).
        postgres_log = "".join(p.read_text(errors="replace") for p in Path(node.layout.log, "postgresql").glob("*.log"))
        assert 'restored log file "' in postgres_log

        # Why the environment: the branch's config (its own pass in the include) cannot read the
        # source; the same command with the source's pass in the environment can (2.45: env > config).
        source_repo = ["--stanza=pg-enc", f"--repo1-s3-bucket={source.bucket}", "--repo1-path=/pg-enc/pgbackrest",
                       "--repo1-cipher-type=aes-256-cbc", "--output=json", "info"]
        assert source_info(node, source_repo, {})["status"]["code"] != 0
        with_pass = source_info(node, source_repo, {"PGBACKREST_REPO1_CIPHER_PASS": source_pass})
        assert with_pass["status"]["code"] == 0 and with_pass["cipher"] == "aes-256-cbc"
    finally:
        branches.delete(source, BRANCH, log=log)
    assert branches.list_branches(source) == []
