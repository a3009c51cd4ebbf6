"""The zipapp: built byte-identically, every command in its help, node.json checked at load."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pgha import contract
from pgha.agent import cli
from pgha.render import agentzip

from .agent_helpers import ZIPAPP, make_node, run_cli, write_json

COMMANDS = ("secrets", "post-bootstrap", "on-role-change", "pgbouncer-exporter", "pgbackrest-exporter", "backup",
            "bootstrap", "archive-get-source", "etcd", "dcs-ready", "dcs-sync", "etcd-leadership",
            "timeline-guard", "report-status", "await-ready", "handover", "apply-config", "start-node",
            "authorized-keys", "ship-logs")


def test_zipapp_builds_byte_identically():
    agentzip.agent_zipapp.cache_clear()
    first = agentzip.agent_zipapp()
    agentzip.agent_zipapp.cache_clear()
    assert agentzip.agent_zipapp() == first
    names = zipfile.ZipFile(ZIPAPP).namelist()
    assert names == sorted(names) and "__main__.py" in names and "pgha/contract.py" in names
    assert zipfile.ZipFile(ZIPAPP).read("pgha/__init__.py") == b""  # not the Pulumi-side package
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_zipapp_imports_nothing_a_node_lacks():
    # Debian's python3 with only the node image's libraries: no pulumi, jinja2 (cryptography is
    # there: python3-cryptography, for authorized-keys).
    code = ("import sys, runpy; sys.modules.update({m: None for m in ('pulumi', 'jinja2', 'yaml')});"
            f"sys.argv = ['pgha-node', '--help']; sys.path.insert(0, {str(ZIPAPP)!r}); import pgha.agent.cli as c;"
            "[__import__(m.__name__) for m in c.COMMAND_MODULES]")
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_help_lists_every_command():
    res = subprocess.run([sys.executable, str(ZIPAPP), "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in COMMANDS:
        assert f"    {cmd}" in res.stdout, cmd
    registered = set(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert registered == set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_every_command(cmd):
    res = run_cli(cmd, "--help")
    assert res.returncode == 0 and f"usage: pgha-node {cmd}" in res.stdout


def test_node_json_off_contract_is_refused_naming_every_key(base: Path, capfd):
    node = make_node(base)
    del node["peers"], node["paths"]["pgdata"]
    node["surprise"] = 1
    nj = write_json(base / "node.json", node)
    assert cli.main(["--node-json", str(nj), "timeline-guard"]) == 1
    err = capfd.readouterr().err
    assert "missing peers" in err and "unknown surprise" in err and "missing paths.pgdata" in err


def test_rendered_node_json_matches_the_contract():
    from pgha.render import render_node
    from render_fixtures import ec2_context, make_spec

    spec = make_spec({})
    files = {f.path: f.content for f in render_node(spec, spec.members[0], ec2_context(spec))}
    node = json.loads(files["/etc/pgha/node.json"])
    assert contract.node_facts_problems(node) == []
    assert files["/opt/pgha/bin/pgha-node.pyz"] == agentzip.agent_zipapp()
