"""bootstrap of a branch (its source path) and archive-get-source: the source's cipher pass, in pgBackRest's environment only."""

from __future__ import annotations

from pathlib import Path

import pytest

from .agent_helpers import SOURCE_PASS, branch_node, run_cli, write_json
from .test_bootstrap import MISSING

FAKE_PGBACKREST = """#!/bin/sh
# `info` (the branch's own repository, asked first): $FAKE_INFO. Anything else: records what
# pgBackRest would get, its command line and the cipher pass in its environment.
for last; do :; done
if [ "$last" = info ]; then cat "$FAKE_INFO"; exit 0; fi
printf '%s\\n' "$@" > "$FAKE_OUT.argv"
printf '%s' "${PGBACKREST_REPO1_CIPHER_PASS-unset}" > "$FAKE_OUT.env"
exit "${FAKE_RC:-0}"
"""


@pytest.mark.usefixtures("_root")
def test_bootstrap_of_a_branch_and_archive_get_source_give_pgbackrest_the_pass_in_its_environment_only(base, monkeypatch):
    monkeypatch.delenv("PGBACKREST_REPO1_CIPHER_PASS", raising=False)  # only the agent may set it
    fake = base / "pgbackrest"
    fake.write_text(FAKE_PGBACKREST)
    fake.chmod(0o755)
    node = branch_node(base, {"source": "file", "file": str(base / "unused.json")})
    nj = write_json(base / "etc" / "node.json", node)
    sec = Path(node["paths"]["secrets"])
    sec.mkdir(parents=True)
    (sec / "source-cipher-pass").write_text(SOURCE_PASS + "\n")
    out = base / "call"
    (base / "info.json").write_text(MISSING.replace("\n", ""))
    env = {"FAKE_OUT": str(out), "FAKE_INFO": str(base / "info.json")}
    res = run_cli("--node-json", str(nj), "bootstrap", "--pgbackrest", str(fake), env=env)
    assert res.returncode == 0, res.stderr
    assert "bootstrap path source" in res.stderr  # its own repository is new: it restores its source
    argv = Path(f"{out}.argv").read_text().splitlines()
    assert Path(f"{out}.env").read_text() == SOURCE_PASS
    assert "--repo1-cipher-type=aes-256-cbc" in argv and argv[-1] == "restore"
    assert any(a.startswith("--recovery-option=restore_command=") and "archive-get-source" in a for a in argv)
    assert not any(SOURCE_PASS in a for a in argv) and SOURCE_PASS not in res.stdout + res.stderr

    # The restore_command: pgBackRest's exit status is PostgreSQL's answer (1: no such WAL).
    res = run_cli("--node-json", str(nj), "archive-get-source", "--pgbackrest", str(fake),
                  "000000010000000000000003", "pg_wal/RECOVERYXLOG", env={**env, "FAKE_RC": "1"})
    assert res.returncode == 1, res.stderr
    argv = Path(f"{out}.argv").read_text().splitlines()
    assert argv[-3:] == ["archive-get", "000000010000000000000003", "pg_wal/RECOVERYXLOG"]
    assert "--stanza=pg-src" in argv and "--repo1-cipher-type=aes-256-cbc" in argv
    assert Path(f"{out}.env").read_text() == SOURCE_PASS
    assert not any(SOURCE_PASS in a for a in argv) and SOURCE_PASS not in res.stdout + res.stderr


# --------------------------------------------------------------------------------------
# real daemons: PostgreSQL 15, PgBouncer 1.18, pgBackRest on a posix repository
# --------------------------------------------------------------------------------------

