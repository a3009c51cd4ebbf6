"""The agent's command line: one module per command (or group), each with register(subparsers)."""

import argparse
import logging
import os
import sys

from . import (
    apply_config,
    authorized_keys,
    backup,
    bootstrap,
    dcs_sync,
    fetch,
    handover,
    hooks,
    restore,
    secrets,
    ship_logs,
    status,
    timeline_guard,
)
from .errors import DEFAULT_NODE_JSON, LOG, PROG, AgentError
from .etcd import leadership, membership
from .exporters import pgbackrest, pgbouncer
from .facts import load_node

# Help lists the commands in this order.
COMMAND_MODULES = (secrets, hooks, pgbouncer, pgbackrest, backup, bootstrap, restore, membership, dcs_sync,
                   leadership, timeline_guard, handover, status, apply_config, authorized_keys, ship_logs)
# A Patroni callback must never fail Patroni; a stop must never fail for the handover.
ALWAYS_ZERO = ("on-role-change", "handover")


class _CommandFormatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__(f"%(asctime)s {PROG} {command}[%(process)d] %(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # one line per record, always
        return super().format(record).replace("\n", " | ")


def setup_logging(command: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter(command))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node-json", default=argparse.SUPPRESS, metavar="PATH",
                        help=f"node facts file (default: $PGHA_NODE_JSON, else {DEFAULT_NODE_JSON})")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log at DEBUG level")

    parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                     description="pgha node agent: secrets, Patroni hooks and exporters.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.command, logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    node_json = getattr(args, "node_json", None) or os.environ.get("PGHA_NODE_JSON") or DEFAULT_NODE_JSON
    failed = 0 if args.command in ALWAYS_ZERO else 1
    try:
        node = load_node(node_json)
        node["node_json"] = os.path.abspath(node_json)
        code: int = args.func(node, args)
        return code
    except (AgentError, fetch.FetchError) as exc:
        LOG.error("%s", exc)
        return failed
    except Exception as exc:  # noqa: BLE001 - one line, no traceback that could carry values
        LOG.error("failed: %s: %s", type(exc).__name__, str(exc).strip())
        LOG.debug("traceback", exc_info=True)
        return failed
