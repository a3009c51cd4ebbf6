"""The scrape model: every member's targets with Pigsty's identity labels, the node's file_sd file
and the plain prometheus.yml (``promtool check config``) built from the same list."""

import shutil
import subprocess
from pathlib import Path

import yaml

from pgha.observability import JOBS, file_sd, prometheus_config, scrape_targets
from pgha.render import render_node
from pgha.spec import METRICS_PORTS, PORTS, member_ip
from render_fixtures import ec2_context, make_spec

SPEC = make_spec({"replicas": 4}, stack="dev")  # five members, etcd on the first three
IPS = {m.name: member_ip(SPEC.private_subnet_cidrs[m.az_index], m) for m in SPEC.members}


def test_every_member_every_job():
    targets = scrape_targets(SPEC, IPS)
    by_member: dict[str, set[str]] = {}
    for t in targets:
        by_member.setdefault(t.member, set()).add(t.job)
        assert t.ip == IPS[t.member] and t.address == f"{IPS[t.member]}:{t.port}"
        assert t.labels(SPEC.cluster_name) == {"job": t.job, "cls": "pg-dev", "ins": t.member, "ip": IPS[t.member]}
        assert t.port in METRICS_PORTS and t.port != PORTS["patroni"]
    all_jobs = {j.job for j in JOBS}
    for m in SPEC.members:
        expected = all_jobs if m.runs_etcd else all_jobs - {"etcd"}
        assert by_member[m.name] == expected, m.name
    assert sum(m.runs_etcd for m in SPEC.members) == 3 and len(SPEC.members) == 5
    # Patroni through HAProxy's metrics frontend, never its REST API.
    patroni = [t for t in targets if t.job == "patroni"]
    assert {(t.port, t.path) for t in patroni} == {(PORTS["haproxy_stats"], "/patroni/metrics")}
    assert len(targets) == len(set((t.address, t.path) for t in targets))


def test_node_file_sd_is_the_model():
    member = SPEC.members[0]
    ctx = ec2_context(SPEC)
    files = {f.path: f for f in render_node(SPEC, member, ctx)}
    rendered = yaml.safe_load(files["/etc/pgha/prometheus/targets.yml"].content)
    assert rendered == file_sd(SPEC, ctx.member_ips)
    assert {e["labels"]["job"] for e in rendered} == {j.job for j in JOBS}


def test_prometheus_yml(tmp_path: Path):
    text = prometheus_config(SPEC, IPS, rule_files=("pgha-rules.yml",))
    config = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {f"pg-dev-{j.job}" for j in JOBS}
    for job in JOBS:
        scrape = jobs[f"pg-dev-{job.job}"]
        assert scrape["metrics_path"] == job.path
        expected = {(t.address, t.member, t.ip) for t in scrape_targets(SPEC, IPS) if t.job == job.job}
        got = {(sc["targets"][0], sc["labels"]["ins"], sc["labels"]["ip"]) for sc in scrape["static_configs"]}
        assert got == expected and all(sc["labels"]["cls"] == "pg-dev" for sc in scrape["static_configs"])
    (tmp_path / "prometheus.yml").write_text(text)
    (tmp_path / "pgha-rules.yml").write_text("groups: []\n")
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_job_label_is_the_exporter_kind(tmp_path: Path):
    """Alerts select on job="etcd" etc.: the per-cluster job name is relabelled to the kind."""
    config = yaml.safe_load(prometheus_config(SPEC, IPS))
    for scrape in config["scrape_configs"]:
        kind = scrape["job_name"].removeprefix("pg-dev-")
        assert scrape["relabel_configs"] == [{"target_label": "job", "replacement": kind}]
