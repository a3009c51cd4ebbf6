"""Read a stack's pgha config: from the Pulumi CLI's config, or from the stack files.

The loopback cluster and ``pgha render`` read Pulumi.yaml and Pulumi.<stack>.yaml so they see
the values ``pulumi up`` would; the Pulumi program reads the CLI's config. Both go through
:func:`pgha_values`, so they agree on what "not set" means.
"""

from pathlib import Path
from typing import Any, Mapping

import yaml

NAMESPACE = "pgha:"


def _unset(value: Any) -> bool:
    """Pulumi.yaml declares every key with a default; "" / [] / {} there mean "derive it"."""
    if isinstance(value, str) and value.strip() in ("", "[]", "{}"):
        return True
    return value in ([], {})


def pgha_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``pgha:`` keys of ``config`` without the prefix, unset ones dropped.

    Unknown keys are kept, so validation reports them.
    """
    return {key[len(NAMESPACE):]: value for key, value in config.items()
            if key.startswith(NAMESPACE) and not _unset(value)}


def read_stack_config(project_dir: Path, stack: str) -> tuple[dict[str, Any], str]:
    """The stack's ``pgha:`` values and its ``aws:region``, as ``pulumi up`` would see them.

    Project-level defaults declared in Pulumi.yaml apply first; the stack file wins.
    """
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    stack_file = project_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        raise FileNotFoundError(f"no stack file {stack_file}: create it with `pulumi stack init {stack}`")
    stack_config = (yaml.safe_load(stack_file.read_text()) or {}).get("config", {}) or {}

    merged: dict[str, Any] = {}
    for key, declared in (project.get("config") or {}).items():
        name = key if ":" in key else NAMESPACE + key
        if isinstance(declared, dict) and ("value" in declared or "default" in declared):
            merged[name] = declared.get("value", declared.get("default"))
        elif not isinstance(declared, dict):
            merged[name] = declared
    merged.update(stack_config)
    region = str(merged.get("aws:region", "us-east-1"))
    return pgha_values(merged), region
