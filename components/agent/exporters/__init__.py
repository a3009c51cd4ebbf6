"""Prometheus exporters for PgBouncer and pgBackRest."""
