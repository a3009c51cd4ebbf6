"""The config a plan starts from: a stack file, or the stack's files at a git revision."""

import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ..spec.stackfile import StackFileError, read_stack_config


def _git_show(project_dir: Path, revision: str, name: str) -> str:
    """``name`` (relative to the project) at ``revision``; StackFileError naming git's words."""
    top = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "--show-prefix"], capture_output=True,
                         text=True, check=False)
    if top.returncode != 0:
        raise StackFileError(f"--base {revision}: not a file, and {project_dir} is not in a git repository")
    res = subprocess.run(["git", "-C", str(project_dir), "show", f"{revision}:{top.stdout.strip()}{name}"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise StackFileError(f"--base {revision}: not a file, and git cannot show {name} there: "
                             f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return res.stdout


def read_base_config(project_dir: Path, stack: str, base: str) -> tuple[dict[str, Any], str]:
    """(pgha values, region) of the stack at ``base``: a path to a stack file (read with the
    project's Pulumi.yaml of today) or a git revision (both files as they were there)."""
    with tempfile.TemporaryDirectory(prefix="pgha-plan-") as tmp:
        where = Path(tmp)
        if Path(base).is_file():
            (where / "Pulumi.yaml").write_text((project_dir / "Pulumi.yaml").read_text())
            (where / f"Pulumi.{stack}.yaml").write_text(Path(base).read_text())
        else:
            (where / "Pulumi.yaml").write_text(_git_show(project_dir, base, "Pulumi.yaml"))
            (where / f"Pulumi.{stack}.yaml").write_text(_git_show(project_dir, base, f"Pulumi.{stack}.yaml"))
        return read_stack_config(where, stack)


def storage_changed_at(project_dir: Path, stack: str, base: str, *, depth: int = 50) -> tuple[str, datetime] | None:
    """(commit, committer time) of the newest commit at or before ``base`` whose stack file
    changed ``pgha:storage``: when the data volumes were last modified, if that commit was
    deployed. None when ``base`` is no git revision or no such commit is within ``depth``."""
    if Path(base).is_file():
        return None
    name = f"Pulumi.{stack}.yaml"
    log = subprocess.run(["git", "-C", str(project_dir), "log", f"-{depth}", "--format=%H %cI", base, "--", name],
                         capture_output=True, text=True, check=False)
    if log.returncode != 0:
        return None

    def storage(revision: str) -> Any:
        try:
            text = _git_show(project_dir, revision, name)
        except StackFileError:
            return None  # the file did not exist there
        document = yaml.safe_load(text) or {}
        return ((document.get("config") or {}) if isinstance(document, dict) else {}).get("pgha:storage")

    for line in log.stdout.splitlines():
        commit, when = line.split(" ", 1)
        if storage(commit) != storage(f"{commit}^"):
            return commit, datetime.fromisoformat(when)
    return None
