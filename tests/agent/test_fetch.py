"""fetch-files (and the bootstrap's pgha-fetch, the same module) against moto's in-process S3."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from pgha.agent import cli, fetch
from pgha.render.agentzip import fetcher_source

from .agent_helpers import make_node, write_json


def entry(base: Path, key: str, body: bytes, mode: int = 0o644) -> dict[str, object]:
    return {"path": str(base / "bin" / key.rsplit("/", 1)[-1]), "bucket": "nodes", "key": key,
            "sha256": hashlib.sha256(body).hexdigest(), "mode": mode}


@pytest.fixture
def bucket(mocked_aws: None) -> object:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="nodes")
    return s3


def test_fetch_files_installs_checked_files_atomically(base, bucket, capfd):
    body = b"PK\x03\x04 zipapp bytes"
    bucket.put_object(Bucket="nodes", Key="pg-x/node-files/abc/pgha-node.pyz", Body=body)
    item = entry(base, "pg-x/node-files/abc/pgha-node.pyz", body, 0o640)
    manifest = write_json(base / "etc" / "bucket-files.json", [item])
    nj = write_json(base / "etc" / "node.json", make_node(base))
    assert cli.main(["--node-json", str(nj), "fetch-files", "--manifest", str(manifest)]) == 0
    target = Path(str(item["path"]))
    assert target.read_bytes() == body and (target.stat().st_mode & 0o777) == 0o640
    assert not target.with_name(target.name + ".tmp").exists()
    # Again: already current, not fetched.
    assert cli.main(["--node-json", str(nj), "fetch-files", "--manifest", str(manifest)]) == 0
    assert "is current" in capfd.readouterr().err


def test_a_mismatching_object_is_never_installed(base, bucket):
    bucket.put_object(Bucket="nodes", Key="k/pgha-node.pyz", Body=b"tampered")
    item = entry(base, "k/pgha-node.pyz", b"expected")
    get = lambda b, k: bucket.get_object(Bucket=b, Key=k)["Body"].read()  # noqa: E731
    with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
        fetch.fetch_files([item], get)
    assert not os.path.exists(str(item["path"]))


def test_fetch_retries_then_gives_up_in_one_line(base):
    calls, sleeps = [], []

    def flaky(bucket: str, key: str) -> bytes:
        calls.append(key)
        if len(calls) < 3:
            raise OSError("connection reset")
        return b"ok"

    item = entry(base, "k/f", b"ok")
    assert fetch.fetch_files([item], flaky, sleep=sleeps.append) == [item["path"]]
    assert sleeps == [fetch.BACKOFF, 2 * fetch.BACKOFF]

    def down(bucket: str, key: str) -> bytes:
        raise OSError("no route to host")

    item = entry(base, "k/g", b"never")
    with pytest.raises(fetch.FetchError, match="after 2 attempts: no route to host"):
        fetch.fetch_files([item], down, attempts=2, sleep=sleeps.append)


def test_the_bootstrap_fetcher_is_the_same_module_run_as_a_script(base):
    # What user-data carries as <bin>/pgha-fetch: this module's text, runnable without pgha.
    script = base / "pgha-fetch"
    script.write_text(fetcher_source())
    manifest = write_json(base / "m.json", [])
    nj = write_json(base / "node.json", make_node(base))
    res = subprocess.run([sys.executable, "-I", str(script), str(manifest), str(nj)], capture_output=True,
                         text=True, cwd="/")
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-I", str(script), str(base / "missing.json"), str(nj)],
                         capture_output=True, text=True, cwd="/")
    assert res.returncode == 1 and "cannot read the manifest" in res.stderr
    assert json.loads(nj.read_text())["aws"]["region"] == "us-east-1"
