"""Read a stack's pgha config from Pulumi.yaml and Pulumi.<stack>.yaml without the CLI.

The loopback cluster and ``pgha render`` use this so that they see the same values
``pulumi up`` would; the Pulumi program itself reads the CLI's config instead.
"""

from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "pgha:"


def read_stack_config(project_dir: Path, stack: str) -> tuple[dict[str, Any], str]:
    """The stack's ``pgha:`` values (prefix stripped) and its ``aws:region``.

    Project-level defaults declared in Pulumi.yaml apply first; the stack file wins.
    """
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    stack_file = project_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        raise FileNotFoundError(f"no stack file {stack_file}: create it with `pulumi stack init {stack}`")
    stack_config = (yaml.safe_load(stack_file.read_text()) or {}).get("config", {}) or {}

    values: dict[str, Any] = {}
    for key, declared in (project.get("config") or {}).items():
        name = key[len(NAMESPACE):] if key.startswith(NAMESPACE) else key
        if ":" in name:
            continue
        if isinstance(declared, dict):
            if "value" in declared:
                values[name] = declared["value"]
            elif "default" in declared:
                values[name] = declared["default"]
        elif declared is not None:
            values[name] = declared
    region = "us-east-1"
    for key, value in stack_config.items():
        if key.startswith(NAMESPACE):
            values[key[len(NAMESPACE):]] = value
        elif key == "aws:region":
            region = str(value)
    return values, region
