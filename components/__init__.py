"""pgha: highly available PostgreSQL on AWS as code (installed as the ``pgha`` package).

``PostgresCluster`` is the Pulumi component; ``pgha.spec`` validates its input,
``pgha.render`` renders every node file, ``pgha.local`` boots them as machines of the node image.
"""

from typing import Any

from .spec import ClusterSpec, SpecError, build_spec

__all__ = ["ClusterSpec", "Observability", "PostgresCluster", "PostgresClusterArgs", "SpecError", "build_spec"]


def __getattr__(name: str) -> Any:
    # The Pulumi providers take seconds to import; the node tools and `pgha local` never need them.
    if name in ("PostgresCluster", "PostgresClusterArgs"):
        from . import infra

        return getattr(infra, name)
    if name == "Observability":
        from .infra import kubernetes

        return kubernetes.Observability
    raise AttributeError(f"module 'pgha' has no attribute {name!r}")
