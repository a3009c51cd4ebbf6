"""Golden files: every rendered file of a few specs, compared byte for byte.

A template change shows up here as a readable diff. After an intended change, regenerate
with `PGHA_UPDATE_GOLDEN=1 venv/bin/python -m pytest tests/test_golden.py` and review the
diff of tests/golden/ like any other code.
"""

import os
from pathlib import Path

import pytest

from pgha.render import EC2_LAYOUT, NodeContext, render_node
from pgha.spec import build_spec, member_ip

GOLDEN = Path(__file__).parent / "golden"
# Fixed stand-ins for certificates (real ones are random), so the files are reproducible.
CA_PEM = "-----BEGIN CERTIFICATE-----\nGOLDEN-CA\n-----END CERTIFICATE-----\n"
CASES = {
    # The dev stack: small arm64 EBS cluster, synchronous, fast failover.
    "dev-arm64-ebs": {"instanceType": "t4g.medium", "profile": "tiny", "rto": "fast",
                      "storage": {"sizeGiB": 20}},
    # Large x86 metal, analytics profile, asynchronous with a 16 MiB loss budget, six members.
    "olap-x86-metal-async": {"arch": "x86_64", "instanceType": "i4i.8xlarge", "storage": {"kind": "metal"},
                             "profile": "olap", "rto": "safe", "rpo": 16777216, "replicas": 5,
                             "parameters": {"jit": "off"}},
    # Critical OLTP on io2 with encrypted backups and an hourly incremental schedule.
    "crit-arm64-io2": {"instanceType": "r8g.4xlarge", "profile": "crit", "rto": "norm",
                       "storage": {"volumeType": "io2", "sizeGiB": 2000, "iops": 40000},
                       "backup": {"encryption": True, "incrSchedule": "0 * * * *"}},
}
# Shipped verbatim and tested on its own (tests/test_node_agent.py).
# Verbatim package code, not rendered: the agent zipapp and its fetcher (tests/agent cover them).
SKIP = ("/opt/pgha/bin/pgha-node.pyz", "/opt/pgha/bin/pgha-fetch")


def rendered(case: str) -> dict[str, str]:
    spec = build_spec(CASES[case], stack="golden", region="us-east-1",
                      region_azs=["us-east-1a", "us-east-1b", "us-east-1c"])
    ips = {m.name: member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.members}
    ctx = NodeContext(member_ips=ips, bucket="pg-golden-backup-0123", s3_endpoint="s3.us-east-1.amazonaws.com",
                      s3_region="us-east-1", secret_id="arn:aws:secretsmanager:us-east-1:123456789012:secret:pg-golden",
                      layout=EC2_LAYOUT, ca_cert_pem=CA_PEM,
                      node_cert_pems={n: CA_PEM.replace("GOLDEN-CA", f"GOLDEN-{n}") for n in ips},
                      data_volume_ids={n: f"vol-0{i:016d}" for i, n in enumerate(ips)},
                      tls_secret_ids={n: f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{n}-tls" for n in ips},
                      peer_ips=tuple(member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.member_slots))
    files = {}
    for member in (spec.members[0], spec.members[-1]):
        for f in render_node(spec, member, ctx):
            if not f.path.endswith(SKIP):
                files[f"{member.name}{f.path}"] = f.content
    return files


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_files_match_golden(case):
    files = rendered(case)
    root = GOLDEN / case
    if os.environ.get("PGHA_UPDATE_GOLDEN"):
        for old in sorted(root.rglob("*"), reverse=True) if root.exists() else []:
            old.unlink() if old.is_file() else old.rmdir()
        for path, content in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    on_disk = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}
    assert sorted(on_disk) == sorted(files), "files added or removed: regenerate the golden files"
    for path, content in files.items():
        assert content == on_disk[path], f"{case}/{path} differs from its golden file"
