"""The branch stack kind under Pulumi mocks: one small node restored (read only) from another
stack's repository, its own bucket for its own archive, promoted by raising replicas."""

import json
from typing import Any

import pulumi
import pytest
import yaml

from infra_mocks import (
    ACCOUNT,
    REGION,
    REGION_AZS,
    SECRET_MARK,
    Run,
    decode_user_data,
    member_files,
    resolve,
    run_program,
)
from pgha import stacks

INSTANCE = "aws:ec2/instance:Instance"
POLICY = "aws:iam/rolePolicy:RolePolicy"
BUCKET = "aws:s3/bucket:Bucket"


def deploy(values: dict[str, Any]) -> Run:
    return run_program(lambda: stacks.deploy(values, stack="feature", region=REGION, region_azs=REGION_AZS))


def policies(run: Run) -> dict[str, dict]:
    return {r.name: json.loads(resolve(r.inputs["policy"])[0]) for r in run.of_type(POLICY)}


def files_of(run: Run, instance) -> dict[str, str]:
    """The instance's files: its boot files (user-data) and its configuration (the bucket)."""
    document = yaml.safe_load(decode_user_data(resolve(instance.inputs["userDataBase64"])[0]))
    boot = {f["path"]: f["content"] for f in document["write_files"]}
    return {**boot, **member_files(run, instance.inputs["tags"]["pgha:member"])}


def facts_of(run: Run) -> list[dict]:
    return [json.loads(files_of(run, inst)["/etc/pgha/node.json"]) for inst in run.of_type(INSTANCE)]


BRANCH = {"stackKind": "branch", "clusterName": "pg-feature", "branch": {"sourceStack": "acme/pgha/prod",
                                                                         "targetTime": "2025-01-31T12:00:00Z"}}


def test_branch_from_a_stack_reference_is_one_small_node_restoring_read_only():
    run = deploy(BRANCH)
    # The StackReference is read, not registered: its outputs (bucket, stanza, key) show below.
    instances = run.of_type(INSTANCE)
    assert len(instances) == 1 and instances[0].inputs["instanceType"] == "t4g.medium"
    # Its own bucket for its own archive (and its log bucket).
    assert sorted(b.name for b in run.of_type(BUCKET)) == ["pg-feature-backup-bucket", "pg-feature-logs-bucket"]
    docs = policies(run)
    source = docs["pg-feature-role-restore-source"]
    actions = {a for st in source["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:GetObjectVersion", "kms:Decrypt"}
    resources = {st["Resource"] for st in source["Statement"]}
    assert "arn:aws:s3:::prod-backup-src/pg-source/*" in resources
    assert "arn:aws:kms:us-east-1:123456789012:key/key-source" in resources
    # The node restores from the source's bucket and stanza, archives into its own.
    (facts,) = facts_of(run)
    # An unencrypted source (no backupCipherSecretArn output): the restore says so explicitly.
    assert facts["restore"] == {"stanza": "pg-source", "bucket": "prod-backup-src", "path": "/pg-source/pgbackrest",
                                "target": "2025-01-31T12:00:00Z", "type": "time", "cipher": "none"}
    assert facts["stanza"] == "pg-feature"


def test_branch_user_data_never_names_the_source_in_its_archive_or_config():
    run = deploy(BRANCH)
    files = files_of(run, run.of_type(INSTANCE)[0])
    conf = files["/etc/pgha/pgbackrest/pgbackrest.conf"]
    assert "prod-backup-src" not in conf and "pg-source" not in conf
    patroni = files["/etc/pgha/patroni.yml"]
    assert "method: pgha_bootstrap" in patroni and "pgha-node.pyz --node-json /etc/pgha/node.json bootstrap" in patroni
    assert json.loads(files["/etc/pgha/node.json"])["restore"]["stanza"] == "pg-source"
    assert "--stanza=pg-feature archive-push" in patroni
    # Asynchronous: a single node never waits for a synchronous standby.
    assert "synchronous_mode: false" in patroni


def test_branch_with_given_bucket_and_stanza_needs_no_stack_reference():
    run = deploy({"stackKind": "branch", "clusterName": "pg-copy",
                  "branch": {"sourceBucket": "pg-prod-backup-1a2b", "sourceStanza": "pg-prod"}})
    (facts,) = facts_of(run)
    assert facts["restore"]["bucket"] == "pg-prod-backup-1a2b" and facts["restore"]["type"] == "default"


def test_raising_replicas_promotes_the_branch_to_three_azs():
    small = deploy(BRANCH)
    big = deploy({**BRANCH, "replicas": 2, "instanceType": "r8g.large"})
    azs = {r.inputs["availabilityZone"] for r in big.of_type("aws:ebs/volume:Volume")}
    assert len(big.of_type(INSTANCE)) == 3 and len(azs) == 3
    # Same bucket, same key, same first member: promotion keeps the branch's data and archive.
    names = lambda run, t: sorted(r.name for r in run.of_type(t))  # noqa: E731
    assert names(small, BUCKET) == names(big, BUCKET)
    assert "pg-feature-1" in [r.name for r in big.of_type("pgha:infra:Node")]
    assert all(f["restore"]["stanza"] == "pg-source" for f in facts_of(big))


ENCRYPTED_SOURCE = {**BRANCH, "branch": {"sourceStack": "acme/pgha/prod-encrypted"}}
SOURCE_CIPHER_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-source-cipher-AbCdEf"
SOURCE_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-source"


def statements_on(doc: dict, service: str) -> list[dict]:
    """The statements of ``doc`` with an action of ``service`` (s3, kms, secretsmanager)."""
    def actions(st: dict) -> list[str]:
        return [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
    return [st for st in doc["Statement"] if any(a.startswith(f"{service}:") for a in actions(st))]


def test_branch_of_an_encrypted_stack_may_read_its_cipher_secret_and_nothing_else_of_its_secrets():
    run = deploy(ENCRYPTED_SOURCE)
    docs = policies(run)
    source = docs["pg-feature-role-restore-source"]
    (read,) = statements_on(source, "secretsmanager")
    assert read["Action"] == "secretsmanager:GetSecretValue" and read["Resource"] == SOURCE_CIPHER_ARN
    (decrypt,) = statements_on(source, "kms")
    assert "kms:Decrypt" in decrypt["Action"] and decrypt["Resource"] == SOURCE_KEY_ARN
    # The branch's own access policy names its own secrets only (its passwords, its member's TLS key).
    own = docs["pg-feature-role-access"]
    assert [st["Resource"] for st in statements_on(own, "secretsmanager")] == [
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-feature-secret-secret-AbCdEf",
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-feature-secret-tls-1-AbCdEf"]
    # The node is told where the pass is (a reference) and that the source's cipher applies.
    (facts,) = facts_of(run)
    assert facts["restore"]["cipher"] == "aes-256-cbc"
    assert facts["restore"]["cipher_secret"] == {"source": "aws", "id": SOURCE_CIPHER_ARN, "region": REGION}
    files = files_of(run, run.of_type(INSTANCE)[0])
    assert SECRET_MARK not in json.dumps(files)
    # The source's cipher never reaches the branch's own pgBackRest config (it is the restore's
    # alone), nor does the secret's ARN reach any file but node.json.
    assert "repo1-cipher-type" not in files["/etc/pgha/pgbackrest/pgbackrest.conf"]
    assert [path for path, text in files.items() if SOURCE_CIPHER_ARN in text] == ["/etc/pgha/node.json"]


def test_branch_of_an_unencrypted_stack_gets_no_secret_access():
    docs = policies(deploy(BRANCH))
    assert statements_on(docs["pg-feature-role-restore-source"], "secretsmanager") == []


def test_branch_given_bucket_and_cipher_secret_reads_that_secret_in_its_region():
    secret_arn = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:pg-prod-cipher-x1Y2z3"
    key_arn = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/0a1b2c3d-1111-2222-3333-444455556666"
    run = deploy({"stackKind": "branch", "clusterName": "pg-copy", "backup": {"encryption": True},
                  "branch": {"sourceBucket": "pg-prod-backup-1a2b", "sourceStanza": "pg-prod",
                             "sourceCipherSecretArn": secret_arn, "sourceKeyArn": key_arn}})
    source = policies(run)["pg-copy-role-restore-source"]
    assert [st["Resource"] for st in statements_on(source, "secretsmanager")] == [secret_arn]
    assert [st["Resource"] for st in statements_on(source, "kms")] == [key_arn]
    (facts,) = facts_of(run)
    assert facts["restore"]["cipher_secret"] == {"source": "aws", "id": secret_arn, "region": "eu-west-1"}
    # The branch encrypts its own repository with its own pass, from its own cluster secret.
    assert facts["backup_encryption"] is True and facts["secret"]["id"] != secret_arn


def exported_by(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Run, dict[str, Any]]:
    """Deploy ``values`` as stack ``prod`` and return the run with its resolved stack outputs."""
    outputs: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: outputs.__setitem__(name, value))
    run = run_program(lambda: stacks.deploy(values, stack="prod", region=REGION, region_azs=REGION_AZS))
    return run, {name: resolve(value) for name, value in outputs.items()}


def test_an_encrypted_cluster_keeps_its_cipher_pass_in_a_secret_of_its_own_and_exports_its_arn(monkeypatch):
    run, outputs = exported_by({"clusterName": "pg-prod", "backup": {"encryption": True}}, monkeypatch)
    secrets = {r.name: r for r in run.of_type("aws:secretsmanager/secret:Secret") if "-tls-" not in r.name}
    assert set(secrets) == {"pg-prod-secret-secret", "pg-prod-secret-cipher"}
    # Encrypted with the cluster key (the one exported as backupKeyArn).
    assert secrets["pg-prod-secret-cipher"].inputs["kmsKeyId"] == outputs["backupKeyArn"][0] == (
        f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-pg-prod-kms-key")
    cluster = json.loads(run.one("aws:secretsmanager/secretVersion:SecretVersion",
                                 "pg-prod-secret-secret-value").inputs["secretString"])
    cipher = run.one("aws:secretsmanager/secretVersion:SecretVersion", "pg-prod-secret-cipher-value")
    assert "secretString" in cipher.secret_inputs
    # The pass alone, the very one the cluster's nodes use: nothing else of the cluster secret.
    assert json.loads(cipher.inputs["secretString"]) == {"pgbackrest_cipher_pass": cluster["pgbackrest_cipher_pass"]}
    # Its ARN is a plain (not secret) stack output, the one a branch's StackReference reads.
    assert outputs["backupCipherSecretArn"] == (
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-prod-secret-cipher-AbCdEf", False)
    assert not any(SECRET_MARK in json.dumps(value) for value, secret in outputs.values() if not secret)
    # The cluster's own nodes read the cluster secret and their TLS key secrets, not the cipher secret.
    access = json.loads(run.one("aws:iam/rolePolicy:RolePolicy", "pg-prod-role-access").inputs["policy"])
    assert [st["Resource"] for st in statements_on(access, "secretsmanager")] == [
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-prod-secret-secret-AbCdEf",
        *(f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-prod-secret-tls-{i}-AbCdEf" for i in (1, 2, 3))]


def test_an_unencrypted_cluster_has_no_cipher_secret_and_exports_none(monkeypatch):
    run, outputs = exported_by({"clusterName": "pg-prod"}, monkeypatch)
    assert sorted(r.name for r in run.of_type("aws:secretsmanager/secret:Secret")) == [
        "pg-prod-secret-secret", "pg-prod-secret-tls-1", "pg-prod-secret-tls-2", "pg-prod-secret-tls-3"]
    assert "backupCipherSecretArn" not in outputs and "backupKeyArn" in outputs


@pytest.mark.parametrize("values, key, fragment", [
    ({"stackKind": "branch", "clusterName": "pg-b"}, "pgha:branch", "sourceStack"),
    ({"stackKind": "branch", "clusterName": "pg-b", "branch": {"sourceBucket": "b-1234"}}, "pgha:branch.sourceStack",
     "both sourceBucket and sourceStanza"),
    ({"stackKind": "branch", "clusterName": "pg-b", "branch": {"sourceStack": "prod", "targetTime": "yesterday"}},
     "pgha:branch.targetTime", "ISO-8601"),
    ({"stackKind": "branch", "clusterName": "pg-prod", "branch": {"sourceBucket": "b-1234", "sourceStanza": "pg-prod"}},
     "pgha:clusterName", "name of its own"),
    ({"branch": {"sourceStack": "prod"}}, "pgha:branch", "stackKind branch only"),
    ({"stackKind": "branch", "clusterName": "pg-b",
      "branch": {"sourceBucket": "b-1234", "sourceStanza": "pg-a",
                 "sourceCipherSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pg-a-cipher-Ab12"}},
     "pgha:branch.sourceKeyArn", "KMS key ARN too"),
    ({"stackKind": "branch", "clusterName": "pg-b",
      "branch": {"sourceBucket": "b-1234", "sourceStanza": "pg-a", "sourceCipherSecretArn": "my-cipher-pass",
                 "sourceKeyArn": "arn:aws:kms:us-east-1:123456789012:key/abc"}},
     "pgha:branch.sourceCipherSecretArn", "Secrets Manager secret ARN"),
    ({"stackKind": "branch", "clusterName": "pg-b",
      "branch": {"sourceStack": "prod",
                 "sourceCipherSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:pg-a-cipher-Ab12"}},
     "pgha:branch.sourceCipherSecretArn", "sourceBucket/sourceStanza only"),
])
def test_branch_config_problems_are_reported(values, key, fragment):
    from pgha.spec import SpecError, build_spec

    with pytest.raises(SpecError) as caught:
        build_spec(values, stack="feature", region=REGION, region_azs=REGION_AZS)
    found = {p.key: p for p in caught.value.problems}
    assert key in found and fragment in found[key].allowed, caught.value
