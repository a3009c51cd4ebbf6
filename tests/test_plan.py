"""`pgha plan`: a change of the stack's config judged offline, against a stack file or a git revision."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgha.cli import main
from pgha.plan.cost import monthly_cost, price_table

REPO = Path(__file__).resolve().parents[1]
DEV = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's stack files: Pulumi.dev.yaml is the head, base.yaml the base."""
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "base.yaml")
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    return tmp_path


def plan_of(project: Path, capsys: pytest.CaptureFixture[str], **changes: Any) -> dict[str, Any]:
    """The JSON plan of Pulumi.dev.yaml with ``changes`` (pgha: keys) against the dev stack as it is."""
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {**DEV, **{f"pgha:{k}": v for k, v in
                                                                                  changes.items()}}}))
    assert main(["--project-dir", str(project), "plan", "--base", str(project / "base.yaml"), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def actions(plan: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["action"] for m in plan["members"]}


def test_a_parameter_reloads_in_place(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, parameters={"work_mem": "64MB"})
    assert actions(plan) == {f"pg-dev-{i}": "in-place" for i in (1, 2, 3)}
    assert plan["replaced_in_order"] == [] and plan["switchovers"] == 0 and plan["write_pauses"] == []
    assert plan["parameters"]["reload"] == {"work_mem": ["10MB", "64MB"]} and plan["parameters"]["restart"] == {}
    # apply-config's own actions for patroni.yml: a Patroni reload and the DCS sync.
    assert all(m["actions"] == ["reload:pgha-patroni.service", "dcs-sync"] for m in plan["members"])
    assert plan["refused"] == [] and plan["loud"] == []


def test_a_restart_parameter_rolls_with_one_switchover(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, parameters={"max_connections": 200})
    assert plan["parameters"]["restart"] == {"max_connections": [100, 200]}
    assert plan["parameters"]["leader_restart"] == "last" and plan["switchovers"] == 1
    assert plan["write_pauses"][0]["median_s"] == 3.45
    # Lowering a primary-bounded parameter restarts the leader first, in place: no switchover.
    lowered = plan_of(project, capsys, parameters={"max_connections": 50})
    assert lowered["parameters"]["leader_restart"] == "first" and lowered["switchovers"] == 0


def test_backup_retention_changes_pgbackrest_only(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, backup={"retentionDays": 30})
    assert set(actions(plan).values()) == {"in-place"}
    assert all(m["files"] == ["/etc/pgha/pgbackrest/pgbackrest.conf"] for m in plan["members"])
    assert plan["replaced_in_order"] == [] and plan["parameters"]["reload"] == {} and plan["switchovers"] == 0
    # More fulls kept: the S3 estimate grows, nothing else in the bill.
    before = {li["item"]: li["monthly_usd"] for li in plan["cost"]["before"]["lines"]}
    after = {li["item"]: li["monthly_usd"] for li in plan["cost"]["after"]["lines"]}
    assert [k for k in before if before[k] != after[k]] == ["S3 Standard (backups, estimate)"]
    assert after["S3 Standard (backups, estimate)"] > before["S3 Standard (backups, estimate)"]


def test_a_third_replica_is_created_and_the_others_learn_of_it(project: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, replicas=3)
    assert actions(plan) == {"pg-dev-1": "in-place", "pg-dev-2": "in-place", "pg-dev-3": "in-place",
                             "pg-dev-4": "create"}
    assert plan["replaced_in_order"] == [] and plan["write_pauses"] == []
    assert all("/etc/pgha/haproxy/haproxy.cfg" in m["files"] for m in plan["members"][:3])
    ec2 = [li for li in plan["cost"]["after"]["lines"] if li["item"].startswith("EC2")][0]
    assert ec2["quantity"] == "4 x t4g.medium x 730 h"


def test_an_instance_type_change_stops_every_member_in_rolling_order(project: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, instanceType="t4g.large")
    assert plan["replaced_in_order"] == ["pg-dev-3", "pg-dev-2", "pg-dev-1"]
    assert set(actions(plan).values()) == {"stop-start"}
    assert plan["members"][0]["reasons"] == ["instance_type: t4g.medium -> t4g.large"]
    assert plan["parameters"]["restart"]["shared_buffers"] == ["1024MB", "2048MB"]
    assert plan["switchovers"] == 1 and plan["write_pauses"][0]["figure"] == "a roll of all three"
    assert any("waits for the member to report ready after the restart" in line for line in plan["loud"])
    costs = [li["monthly_usd"] for li in plan["cost"]["after"]["lines"] if li["item"].startswith("EC2")]
    assert costs == [round(0.0672 * 730 * 3, 2)]


def test_a_volume_grows_in_place_and_a_shrink_is_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grow = plan_of(project, capsys, storage={"kind": "ebs", "volumeType": "gp3", "sizeGiB": 40})
    assert grow["refused"] == [] and grow["replaced_in_order"] == []
    assert all(m["volume"] == "modify" and m["volume_changes"] == {"size": [20, 40]} for m in grow["members"])
    assert all("one modification per volume every 6 hours" in w for w in grow["warnings"])
    shrink = plan_of(project, capsys, storage={"kind": "ebs", "volumeType": "gp3", "sizeGiB": 10})
    assert len(shrink["refused"]) == 3
    assert all("EBS refuses a size decrease (20 GiB -> 10 GiB)" in r for r in shrink["refused"])


def test_an_az_change_replaces_everything_loudly(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, availabilityZones=["us-east-1d", "us-east-1e", "us-east-1f"])
    assert plan["replaced_in_order"] == ["pg-dev-3", "pg-dev-2", "pg-dev-1"]
    assert set(actions(plan).values()) == {"replace"}
    assert all(m["volume"] == "replace (empty)" for m in plan["members"])
    assert plan["loud"][0].startswith("EVERY MEMBER IS REPLACED ON A NEW, EMPTY DATA VOLUME")
    assert main(["--project-dir", str(project), "plan", "--base", str(project / "base.yaml")]) == 0
    text = capsys.readouterr().out
    assert "> **WARNING: EVERY MEMBER IS REPLACED" in text
    assert "**Members replaced or restarted, in this order:** pg-dev-3 (replace) -> pg-dev-2 (replace) -> pg-dev-1 (replace)" in text


def test_no_change_is_an_empty_plan(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys)
    assert set(actions(plan).values()) == {"none"}
    assert plan["cost"]["delta_usd"] == 0


def test_the_dev_stacks_cost_against_the_price_tables_date(capsys: pytest.CaptureFixture[str]) -> None:
    from pgha.spec import build_spec
    from pgha.spec.stackfile import read_stack_config
    from pgha.spec.validate import offline_region_azs

    values, region = read_stack_config(REPO, "dev")
    spec = build_spec(values, stack="dev", region=region, region_azs=offline_region_azs(region, None))
    cost = monthly_cost(spec)
    lines = {li.item: li.monthly_usd for li in cost.lines}
    table = price_table().regions["us-east-1"]
    assert lines["EC2 instances"] == round(table["instance_hour"]["t4g.medium"] * 730 * 3, 2)
    assert lines["EBS gp3"] == round(20 * table["ebs"]["gp3"]["gb_month"] * 3, 2)  # baseline IOPS/MiB/s are free
    assert lines["NAT gateway"] == round(table["nat_gateway_hour"] * 730, 2)  # natGateways: single
    assert lines["NLB"] == round(table["nlb_hour"] * 730, 2)
    # vpcEndpoints create (the default): three services in each of the three members' AZs.
    assert lines["VPC interface endpoints"] == round(table["interface_endpoint_hour"] * 730 * 9, 2)
    assert cost.complete and cost.total_usd == round(sum(v for v in lines.values() if v is not None), 2)
    # The Markdown names the table's date.
    assert main(["--project-dir", str(REPO), "plan", "--base", str(REPO / "Pulumi.dev.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"as of {price_table().as_of}" in out and f"**${cost.total_usd:,.2f}**" in out


def test_a_price_the_table_lacks_is_missing_not_guessed(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of(project, capsys, instanceType="t4g.2xlarge")
    after = plan["cost"]["after"]
    assert not after["complete"] and after["missing"] == ["instance type t4g.2xlarge in us-east-1"]
    assert [li["monthly_usd"] for li in after["lines"] if li["item"].startswith("EC2")] == [None]


def test_base_at_a_git_revision(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def git(*argv: str) -> None:
        subprocess.run(["git", "-C", str(project), *argv], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "Pulumi.yaml", "Pulumi.dev.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {**DEV, "pgha:replicas": 3}}))
    assert main(["--project-dir", str(project), "plan", "--base", "HEAD", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"][-1] == {
        "name": "pg-dev-4", "action": "create", "reasons": ["a new member: ENI, instance and an empty data volume; "
                                                             "it clones from a running member"],
        "files": [], "actions": [], "volume": "create (empty)", "volume_changes": {}}
    assert main(["--project-dir", str(project), "plan", "--base", "no-such-rev"]) == 2
    assert "--base no-such-rev: not a file, and git cannot show Pulumi.yaml there" in capsys.readouterr().err


def test_a_bad_base_is_one_error_naming_it(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "base.yaml").write_text("config:\n  aws:region: us-east-1\n  pgha:replicas: 9\n")
    assert main(["--project-dir", str(project), "plan", "--base", str(project / "base.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pgha: --base {project / 'base.yaml'}: ") and "pgha:replicas = 9" in err


@pytest.mark.parametrize("hours_ago, refused", [(1, True), (24 * 7, False)])
def test_a_second_volume_modification_inside_six_hours_is_refused(project: Path, capsys: pytest.CaptureFixture[str],
                                                                  hours_ago: int, refused: bool) -> None:
    # The base's last storage change is a commit (deployed on merge); its committer date says when.
    import datetime
    import os

    def commit(message: str, when: datetime.datetime) -> None:
        env = {**os.environ, "GIT_COMMITTER_DATE": when.isoformat(), "GIT_AUTHOR_DATE": when.isoformat()}
        for argv in (["add", "Pulumi.yaml", "Pulumi.dev.yaml"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message]):
            subprocess.run(["git", "-C", str(project), *argv], check=True, capture_output=True, env=env)

    now = datetime.datetime.now(datetime.timezone.utc)
    subprocess.run(["git", "-C", str(project), "init", "-q"], check=True)
    commit("dev stack", now - datetime.timedelta(days=30))
    grown = {**DEV, "pgha:storage": {"kind": "ebs", "volumeType": "gp3", "sizeGiB": 30}}
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": grown}))
    commit("grow the volumes", now - datetime.timedelta(hours=hours_ago))
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {**grown, "pgha:parameters": {"work_mem": "8MB"}}}))
    commit("a parameter (no storage change)", now)
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump(
        {"config": {**grown, "pgha:storage": {"kind": "ebs", "volumeType": "gp3", "sizeGiB": 40}}}))
    assert main(["--project-dir", str(project), "plan", "--base", "HEAD", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    if refused:
        assert len(plan["refused"]) == 3 and all("EBS allows one modification per volume every 6 hours, and commit"
                                                 in r for r in plan["refused"])
    else:
        assert plan["refused"] == []
        assert all("the storage last changed in commit" in w for w in plan["warnings"])
