"""The AWS side of a cluster: ``PostgresCluster`` and the pieces it is made of."""

from .cluster import PostgresCluster, PostgresClusterArgs, resolve_offerings, resolve_region

__all__ = ["PostgresCluster", "PostgresClusterArgs", "resolve_offerings", "resolve_region"]
