"""pgha: highly available PostgreSQL on AWS as code (installed as the ``pgha`` package).

``PostgresCluster`` is the Pulumi component; ``pgha.spec`` validates its input,
``pgha.render`` renders every node file, ``pgha.local`` runs them on loopback.
"""

from .infra import PostgresCluster, PostgresClusterArgs
from .spec import ClusterSpec, SpecError, build_spec

__all__ = ["ClusterSpec", "PostgresCluster", "PostgresClusterArgs", "SpecError", "build_spec"]
