"""A Pulumi program outside the pgha repository: it only installs and imports the package."""

import pgha

ARGS: "pgha.PostgresClusterArgs" = {
    "cluster_name": "pg-ext",
    "arch": "arm64",
    "instance_type": "t4g.medium",
    "replicas": 2,
    "storage": {"kind": "ebs", "size_gib": 20},
    "network": {"allowed_cidrs": ["10.0.0.0/8"], "nat_gateways": "single"},
}

cluster = pgha.PostgresCluster("db", ARGS)
