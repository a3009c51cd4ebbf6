"""pgha-fetch (the bootstrap's copy of agent/fetch.py) against moto's in-process S3: a member's
configuration manifest installed, checked, retried."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from pgha import contract
from pgha.agent import fetch
from pgha.render.agentzip import fetcher_source

from .agent_helpers import write_json

KEY = "pg-x/node-config/pg-x-1.json"


def text_entry(path: Path, text: str, mode: int = 0o644, on_change: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"path": str(path), "mode": mode, "owner": "root", "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "on_change": list(on_change), "content": text}


def manifest(*entries: dict[str, Any], member: str = "pg-x-1") -> dict[str, Any]:
    body = {"format": contract.CONFIG_FORMAT, "cluster": "pg-x", "member": member, "files": list(entries)}
    return {**body, "version": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def boot(base: Path) -> dict[str, Any]:
    return {"cluster": "pg-x", "member": "pg-x-1", "etc": str(base / "etc"), "config": {"bucket": "nodes", "key": KEY},
            "aws": {"region": "us-east-1", "endpoint_url": "", "s3_addressing": "path"}}


@pytest.fixture
def s3(mocked_aws: None) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="nodes")
    return client


def put(s3: Any, m: dict[str, Any]) -> None:
    s3.put_object(Bucket="nodes", Key=KEY, Body=json.dumps(m).encode())


def test_the_fetcher_spells_the_contract_as_pgha_does():
    # fetch.py runs without pgha on the node's first boot: its copies of the names must agree.
    assert fetch.CONFIG_FORMAT == contract.CONFIG_FORMAT
    assert fetch.APPLIED_CONFIG_FILE == contract.APPLIED_CONFIG_FILE


def test_first_boot_installs_text_and_binary_files_and_records_the_manifest(base, s3):
    zipapp = b"PK\x03\x04 zipapp bytes"
    s3.put_object(Bucket="nodes", Key="pg-x/node-files/abc/pgha-node.pyz", Body=zipapp)
    binary = {"path": str(base / "bin" / "pgha-node.pyz"), "mode": 0o640, "owner": "root", "on_change": [],
              "sha256": hashlib.sha256(zipapp).hexdigest(), "bucket": "nodes",
              "key": "pg-x/node-files/abc/pgha-node.pyz"}
    m = manifest(text_entry(base / "etc" / "patroni.yml", "scope: pg-x\n"), binary)
    put(s3, m)
    result = fetch.first_boot(boot(base), fetch.bucket_getter(boot(base)["aws"]))
    assert sorted(result.written) == sorted([str(base / "etc" / "patroni.yml"), binary["path"]])
    assert (base / "etc" / "patroni.yml").read_text() == "scope: pg-x\n"
    target = Path(binary["path"])
    assert target.read_bytes() == zipapp and (target.stat().st_mode & 0o777) == 0o640
    assert not target.with_name(target.name + ".tmp").exists()
    assert fetch.read_applied(str(base / "etc")) == m


def test_a_manifest_of_another_member_or_format_is_refused(base, s3):
    get = fetch.bucket_getter(boot(base)["aws"])
    put(s3, manifest(member="pg-x-2"))
    with pytest.raises(fetch.FetchError, match="configuration of 'pg-x-2'"):
        fetch.load_manifest(boot(base), get)
    put(s3, {**manifest(), "format": 99})
    with pytest.raises(fetch.FetchError, match="format 99"):
        fetch.load_manifest(boot(base), get)


def test_a_mismatching_file_is_never_installed(base, s3):
    entry = {**text_entry(base / "etc" / "x.conf", "expected"), "content": "tampered"}
    with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
        fetch.sync_files(manifest(entry), None, fetch.bucket_getter(boot(base)["aws"]))
    assert not (base / "etc" / "x.conf").exists()


def test_sync_reports_changes_against_the_applied_record_and_removes_dropped_files(base):
    def no_get(bucket: str, key: str) -> bytes:
        raise AssertionError("inline files need no GET")

    a, b = base / "etc" / "a.conf", base / "etc" / "b.timer"
    old = manifest(text_entry(a, "one"), text_entry(b, "[Timer]\n"))
    fetch.sync_files(old, None, no_get)
    new = manifest(text_entry(a, "two", on_change=("reload:x.service",)))
    result = fetch.sync_files(new, old, no_get)
    assert [e["path"] for e in result.changed] == [str(a)] and [e["path"] for e in result.removed] == [str(b)]
    assert a.read_text() == "two" and not b.exists()
    # Installed but never recorded (its actions failed): still a change on the next run.
    again = fetch.sync_files(new, old, no_get)
    assert [e["path"] for e in again.changed] == [str(a)] and again.written == []
    assert fetch.sync_files(new, new, no_get).changed == []


def test_fetch_retries_then_gives_up_in_one_line():
    calls, sleeps = [], []

    def flaky(bucket: str, key: str) -> bytes:
        calls.append(key)
        if len(calls) < 3:
            raise OSError("connection reset")
        return b"ok"

    assert fetch.get_object(flaky, "b", "k", sleep=sleeps.append) == b"ok"
    assert sleeps == [fetch.BACKOFF, 2 * fetch.BACKOFF]

    def down(bucket: str, key: str) -> bytes:
        raise OSError("no route to host")

    with pytest.raises(fetch.FetchError, match="after 2 attempts: no route to host"):
        fetch.get_object(down, "b", "k", attempts=2, sleep=sleeps.append)


def test_the_bootstrap_fetcher_is_the_same_module_run_as_a_script(base):
    # What user-data carries as <bin>/pgha-fetch: this module's text, runnable without pgha.
    script = base / "pgha-fetch"
    script.write_text(fetcher_source())
    res = subprocess.run([sys.executable, "-I", str(script), str(base / "missing.json")], capture_output=True,
                         text=True, cwd="/")
    assert res.returncode == 1 and "cannot read" in res.stderr and "missing.json" in res.stderr
    incomplete = write_json(base / "boot.json", {"cluster": "pg-x"})
    res = subprocess.run([sys.executable, "-I", str(script), str(incomplete)], capture_output=True, text=True,
                         cwd="/", env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})
    assert res.returncode == 1 and "missing aws, config, etc, member" in res.stderr


def test_a_failed_get_makes_a_new_client(monkeypatch):
    # boto3 resolves credentials once per client: one made before the instance role was served
    # would fail forever, so each retry after a failure gets a fresh client.
    made = []

    class Client:
        def __init__(self, works: bool) -> None:
            self.works = works

        def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 (boto3's names)
            if not self.works:
                raise RuntimeError("Unable to locate credentials")
            return {"Body": type("B", (), {"read": lambda self: b"body"})()}

    def factory(aws: Any) -> Client:
        made.append(aws)
        return Client(works=len(made) > 1)

    monkeypatch.setattr(fetch, "s3_client", factory)
    get = fetch.bucket_getter({"region": "us-east-1", "endpoint_url": "", "s3_addressing": "path"})
    assert fetch.get_object(get, "b", "k", sleep=lambda s: None) == b"body"
    assert len(made) == 2
    assert get("b", "k") == b"body" and len(made) == 2  # a working client is kept
