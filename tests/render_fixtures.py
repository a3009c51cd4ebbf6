"""Specs and contexts shared by the render tests: real certificates, fixed names."""

import functools

from pgha.local.tls import CertKey, issue, make_ca
from pgha.render import EC2_LAYOUT, NodeContext
from pgha.spec import ClusterSpec, build_spec, member_ip

AZS = ["us-east-1a", "us-east-1b", "us-east-1c"]
COMBINATIONS = {
    "arm64-ebs": {"arch": "arm64", "instanceType": "r8g.xlarge", "storage": {"kind": "ebs", "sizeGiB": 500}},
    "arm64-metal": {"arch": "arm64", "instanceType": "r7gd.4xlarge", "storage": {"kind": "metal"}},
    "x86_64-ebs": {"arch": "x86_64", "instanceType": "r7i.2xlarge",
                   "storage": {"kind": "ebs", "volumeType": "io2", "sizeGiB": 1000, "iops": 20000}},
    "x86_64-metal": {"arch": "x86_64", "instanceType": "i4i.16xlarge", "storage": {"kind": "metal"}},
}


def make_spec(values: dict, stack: str = "prod") -> ClusterSpec:
    return build_spec(values, stack=stack, region="us-east-1", region_azs=AZS)


@functools.cache
def _ca() -> CertKey:
    return make_ca("pgha test CA")


def ec2_context(spec: ClusterSpec) -> NodeContext:
    """What the Pulumi program hands the renderer, with real-sized certificates."""
    ips = {m.name: member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.members}
    certs = {name: issue(_ca(), common_name=name, ips=[ip], dns_names=[name]).cert_pem for name, ip in ips.items()}
    return NodeContext(
        member_ips=ips, bucket=f"{spec.cluster_name}-backups-0a1b2c3", s3_endpoint="s3.us-east-1.amazonaws.com",
        s3_region="us-east-1", secret_id=f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{spec.cluster_name}-x1Y2z3",
        layout=EC2_LAYOUT, ca_cert_pem=_ca().cert_pem, node_cert_pems=certs,
        data_volume_ids={name: f"vol-0{i:016x}" for i, name in enumerate(ips)},
        tls_secret_ids={name: f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-tls-x1Y2z3" for name in ips},
        peer_ips=tuple(member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.member_slots),
    )


def local_context(spec: ClusterSpec, prefix: str = "10.219.9.") -> NodeContext:
    """What the local cluster hands the renderer (EC2's layout, its addresses, its AWS stand-in),
    with keys under a throwaway root."""
    import tempfile
    from pathlib import Path

    from pgha.local.cluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix="pgha-ctx-"))
    return LocalCluster(project_dir=Path(__file__).resolve().parents[1], root=root, address_prefix=prefix,
                        spec=spec).context()
