"""The `pgha` command line: offline rendering and how bad stack config is reported."""

import shutil
from pathlib import Path

import yaml

from pgha.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_render_writes_every_members_files(tmp_path, capsys):
    assert main(["--project-dir", str(REPO), "--stack", "dev", "render", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for member in ("pg-dev-1", "pg-dev-2", "pg-dev-3"):
        assert f"{member}: {tmp_path / member} (user-data " in out
        patroni = yaml.safe_load((tmp_path / member / "etc/pgha/patroni.yml").read_text())
        assert patroni["name"] == member
        assert (tmp_path / member / "etc/systemd/system/pgha-patroni.service").exists()
    assert (tmp_path / "pg-dev-1/opt/pgha/bin/pgha-bootstrap").stat().st_mode & 0o111


def test_bad_stack_config_is_one_clear_error(tmp_path, capsys):
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "Pulumi.bad.yaml").write_text(
        "config:\n  aws:region: us-east-1\n  pgha:arch: sparc\n  pgha:replicaz: 2\n"
        "  pgha:storage:\n    sizeGiB: 0\n")
    assert main(["--project-dir", str(tmp_path), "--stack", "bad", "render", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "invalid pgha configuration (3 problems)" in err
    assert 'pgha:arch = "sparc": must be one of arm64, x86_64' in err
    assert "pgha:replicaz" in err and "did you mean replicas?" in err
    assert "pgha:storage.sizeGiB = 0" in err
    assert not (tmp_path / "out").exists()


def test_render_uses_the_regions_s3_endpoint(tmp_path, capsys):
    # The same ec2_context() as infra: China regions have their own DNS suffix.
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "Pulumi.cn.yaml").write_text("config:\n  aws:region: cn-north-1\n  pgha:replicas: 1\n")
    assert main(["--project-dir", str(tmp_path), "--stack", "cn", "render", "--out", str(tmp_path / "out")]) == 0
    conf = (tmp_path / "out/pg-cn-1/etc/pgha/pgbackrest/pgbackrest.conf").read_text()
    assert "repo1-s3-endpoint=s3.cn-north-1.amazonaws.com.cn" in conf
