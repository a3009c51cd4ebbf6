"""The agent's logger and its operator-facing error."""

import logging

from ..contract import AGENT_PROG

PROG = AGENT_PROG
DEFAULT_NODE_JSON = "/etc/pgha/node.json"
LOG = logging.getLogger(PROG)


class AgentError(Exception):
    """A failure with a message meant for the operator (no traceback, exit code 1)."""
