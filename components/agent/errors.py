"""The agent's logger and its operator-facing error."""

from __future__ import annotations

import logging

from ..contract import AGENT_PROG

PROG = AGENT_PROG
DEFAULT_NODE_JSON = "/etc/pgha/node.json"
LOG = logging.getLogger(PROG)


class AgentError(Exception):
    """A failure with a message meant for the operator (no traceback, exit code 1)."""
