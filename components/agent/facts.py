"""Node facts: node.json, validated against pgha.contract at load."""

import json
import pwd
from typing import cast

from .. import contract
from ..contract import NodeFacts
from .errors import PROG, AgentError


def load_node(path: str) -> NodeFacts:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise AgentError(f"node facts file {path} does not exist (use --node-json or PGHA_NODE_JSON)")
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read node facts file {path}: {exc}")
    problems = contract.node_facts_problems(data)
    if problems:
        # One error naming every key: a renderer/agent mismatch is fixed in one go.
        raise AgentError(f"node facts file {path} does not match this agent: {'; '.join(problems)}")
    return cast(NodeFacts, data)


def os_user(node: NodeFacts, which: str) -> pwd.struct_passwd:
    name = str(dict(node["os_users"]).get(which) or "")
    if not name:
        raise AgentError(f"node facts have no os_users.{which}")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise AgentError(
            f"OS user '{name}' (os_users.{which}) does not exist on this host; "
            f"install the packages that create it before running '{PROG} secrets'")


def pgbackrest_argv(node: NodeFacts, *args: str, binary: str = "pgbackrest") -> list[str]:
    return contract.pgbackrest_argv(node["paths"], *args, binary=binary)
