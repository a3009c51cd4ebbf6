"""PostgreSQL parameters sized from the instance catalog, Pigsty-style profiles and overrides."""

from typing import Any

from ..spec import ClusterSpec

MIB = 1
GIB = 1024


def _mb(value: float) -> str:
    return f"{max(int(value), 1)}MB"


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


def data_disk_gib(spec: ClusterSpec) -> int:
    """Space PostgreSQL's volume offers: the EBS volume, or the NVMe RAID0 of a metal node."""
    if spec.storage.kind == "metal":
        return spec.instance.nvme_total_gib
    return spec.storage.size_gib


def sized_parameters(spec: ClusterSpec) -> dict[str, Any]:
    """Parameters for ``spec.profile`` on ``spec.instance_type``, then the user's overrides.

    oltp: many short transactions behind PgBouncer; olap: few large queries, more memory per
    query and parallelism; crit: oltp with tighter timeouts and more logging; tiny: small
    instances and development.
    """
    itype = spec.instance
    mem = itype.memory_gib * GIB
    vcpu = itype.vcpu
    profile = spec.profile
    disk = data_disk_gib(spec)

    max_connections = {"oltp": 500, "crit": 500, "olap": 200, "tiny": 100}[profile]
    shared_buffers = mem * 0.25
    work_mem = _clamp(mem / (max_connections * (1 if profile == "olap" else 4)), 4, 1024 if profile == "olap" else 64)
    maintenance = _clamp(shared_buffers * (0.5 if profile == "olap" else 0.25), 64, 8 * GIB)
    max_wal_size = _clamp(disk * GIB * 0.1, 1 * GIB, 64 * GIB) if profile != "tiny" else _clamp(disk * GIB * 0.05, 512, 2 * GIB)
    per_gather = {"oltp": min(2, vcpu // 4), "crit": 0, "olap": max(vcpu // 2, 1), "tiny": 0}[profile]

    params: dict[str, Any] = {
        "max_connections": max_connections,
        "superuser_reserved_connections": 10,
        "shared_buffers": _mb(shared_buffers),
        "effective_cache_size": _mb(mem - shared_buffers),
        "work_mem": _mb(work_mem),
        "maintenance_work_mem": _mb(maintenance),
        "huge_pages": "try",
        "max_worker_processes": max(8, vcpu + 4),
        "max_parallel_workers": max(2, vcpu),
        "max_parallel_workers_per_gather": per_gather,
        "max_parallel_maintenance_workers": max(1, min(4, vcpu // 4)),
        "wal_compression": "lz4",
        "wal_log_hints": "on",
        "max_wal_size": _mb(max_wal_size),
        "min_wal_size": _mb(max_wal_size / 4),
        # A replica that stays away must not fill the disk with retained WAL.
        "max_slot_wal_keep_size": _mb(_clamp(disk * GIB * 0.2, 1 * GIB, 256 * GIB)),
        "wal_keep_size": _mb(_clamp(disk * GIB * 0.02, 128, 4 * GIB)),
        # A silent peer (partition) frees its walsender after this, not PostgreSQL's 60 s (presets.py).
        "wal_sender_timeout": spec.rto_plan.replication_timeout,
        "wal_receiver_timeout": spec.rto_plan.replication_timeout,
        "max_wal_senders": 16,
        "max_replication_slots": 16,
        "hot_standby_feedback": "on" if profile != "olap" else "off",
        "checkpoint_timeout": {"oltp": "15min", "crit": "15min", "olap": "30min", "tiny": "5min"}[profile],
        "checkpoint_completion_target": 0.9,
        "random_page_cost": 1.1,
        "effective_io_concurrency": 500 if spec.storage.kind == "metal" else 200,
        "password_encryption": "scram-sha-256",
        # Query insights: statement statistics (the postgres exporter's stat_statements collector,
        # the top-queries dashboard) and the plan of each slow statement in the log.
        "shared_preload_libraries": "pg_stat_statements,auto_explain",
        "pg_stat_statements.max": 5000,
        "pg_stat_statements.track": "top",
        # Utility statements off: their text is not normalised (ALTER ROLE ... PASSWORD would be kept).
        "pg_stat_statements.track_utility": "off",
        # Ten times the slow-statement log's threshold: a plan for the outliers only.
        "auto_explain.log_min_duration": {"oltp": "1s", "crit": "1s", "olap": "10s", "tiny": "5s"}[profile],
        # Plans only, not EXPLAIN ANALYZE: analyze instruments every statement, slow or not.
        "auto_explain.log_analyze": "off",
        "auto_explain.log_format": "json",
        # No bind parameter values in the log: they may be an application's secrets.
        "auto_explain.log_parameter_max_length": 0,
        "track_io_timing": "on",
        "track_functions": "all",
        "log_min_duration_statement": {"oltp": 100, "crit": 100, "olap": 1000, "tiny": 500}[profile],
        "log_checkpoints": "on",
        "log_lock_waits": "on",
        # Who came from where (CIS); the prefix (patroni.yml.j2) names the client host and application.
        "log_connections": "on",
        "log_disconnections": "on",
        # Schema changes and role/grant commands are logged (CIS); not all statements: the volume
        # and the data in them. A user value replaces it (none, mod, all).
        "log_statement": "ddl",
        "log_autovacuum_min_duration": "1s",
        "idle_in_transaction_session_timeout": {"oltp": "10min", "crit": "1min", "olap": "0", "tiny": "10min"}[profile],
        "autovacuum_max_workers": max(3, min(8, vcpu // 2)),
        "autovacuum_vacuum_cost_limit": 2000 if profile != "tiny" else 200,
    }
    params.update(spec.parameters)
    return params
