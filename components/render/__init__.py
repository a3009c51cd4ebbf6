"""Every file a node receives, rendered from ``config-templates/`` by pure functions."""

from .context import EC2_LAYOUT, Layout, NodeContext, NodeFile
from .files import (
    APP_DATABASE,
    CONFIG_POLL_SECONDS,
    OS_USERS,
    USERS,
    backup_schedules,
    postgres_version,
    render_cluster,
    render_node,
    timer_names,
    unit_names,
)
from .pgparams import sized_parameters
from .userdata import (
    EC2_USER_DATA_LIMIT,
    BucketFile,
    bucket_files,
    cloud_config,
    config_manifest,
    config_manifest_bytes,
    is_boot_file,
    user_data,
    user_data_bytes,
)

__all__ = [
    "APP_DATABASE", "BucketFile", "CONFIG_POLL_SECONDS", "EC2_LAYOUT", "EC2_USER_DATA_LIMIT", "bucket_files", "Layout", "NodeContext", "NodeFile", "OS_USERS", "USERS",
    "cloud_config", "config_manifest", "config_manifest_bytes", "is_boot_file", "postgres_version", "render_cluster", "render_node", "sized_parameters",
    "backup_schedules", "timer_names", "unit_names", "user_data", "user_data_bytes",
]
