"""Read a stack's pgha config: from the Pulumi CLI's config, or from the stack files.

The loopback cluster and ``pgha render`` read Pulumi.yaml and Pulumi.<stack>.yaml so they see
the values ``pulumi up`` would; the Pulumi program reads the CLI's config. Both go through
:func:`pgha_values`, so they agree on what "not set" means.
"""

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

NAMESPACE = "pgha:"
# Pulumi's stack names: letters, digits, '-', '_' and '.' (so never a path such as ../../etc/passwd).
STACK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class StackFileError(ValueError):
    """The project or stack file cannot be read as Pulumi would: missing, not YAML, or not a map."""


def _load(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StackFileError(f"no {what} {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StackFileError(f"cannot read {what} {path}: {error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StackFileError(f"{what} {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise StackFileError(f"{what} {path} must be a map of keys (config:, ...); it is a {type(document).__name__}")
    return document


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

    Project-level defaults declared in Pulumi.yaml apply first; the stack file wins. A file that
    Pulumi could not read either raises StackFileError, with the file and what is wrong.
    """
    if not isinstance(stack, str) or not STACK_NAME_RE.fullmatch(stack):
        raise StackFileError(f"--stack {stack!r}: a stack name is letters, digits, '-', '_' and '.' (1 to 100)")
    if not project_dir.is_dir():
        raise StackFileError(f"--project-dir {project_dir}: no such directory")
    project = _load(project_dir / "Pulumi.yaml", "project file")
    stack_file = project_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        raise StackFileError(f"no stack file {stack_file}: create it with `pulumi stack init {stack}`")
    stack_config = _load(stack_file, "stack file").get("config") or {}
    if not isinstance(stack_config, dict):
        raise StackFileError(f"stack file {stack_file}: config: must be a map of keys (pgha:replicas: 2, ...); "
                             f"it is {stack_config!r:.60}")
    project_config = project.get("config") or {}
    if not isinstance(project_config, dict):
        raise StackFileError(f"project file {project_dir / 'Pulumi.yaml'}: config: must be a map of keys")

    merged: dict[str, Any] = {}
    for key, declared in project_config.items():
        name = key if ":" in key else NAMESPACE + key
        if isinstance(declared, dict) and ("value" in declared or "default" in declared):
            merged[name] = declared.get("value", declared.get("default"))
        elif not isinstance(declared, dict):
            merged[name] = declared
    merged.update({str(k): v for k, v in stack_config.items()})
    # Validated by build_spec (aws:region) like everything else; a non-string is reported there.
    region = str(merged.get("aws:region", "us-east-1"))
    return pgha_values(merged), region
