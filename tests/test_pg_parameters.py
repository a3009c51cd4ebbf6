"""The shipped PostgreSQL parameter list (pgha/data/pg17-parameters.json) against the node image's server.

scripts/pg_parameters.py writes the list from a running server's pg_settings; here the image's
own ``postgres --describe-config`` (no server needed) must agree on every parameter it lists:
name, type, context and range. A new minor that adds, drops or changes a parameter fails this
until the list is regenerated.
"""

import pytest

from node_image import image_with, run_in
from pgha.spec import pgsettings

pytestmark = pytest.mark.image

VARTYPES = {"BOOLEAN": "bool", "INTEGER": "integer", "REAL": "real", "STRING": "string", "ENUM": "enum"}


@pytest.mark.parametrize("major", [17])
def test_shipped_list_matches_the_image_server(major: int) -> None:
    binary = f"/usr/lib/postgresql/{major}/bin/postgres"
    with image_with({}) as root:
        described = run_in(root, f"{binary} --describe-config")
        version = run_in(root, f"{binary} --version")
    assert described.returncode == 0 and version.returncode == 0, described.stderr + version.stderr
    # "postgres (PostgreSQL) 17.12 (Debian ...)" against pg_settings' "PostgreSQL 17.12 (Debian ...) on ...".
    number = version.stdout.split()[2]
    assert pgsettings.provenance(major)["server"].startswith(f"PostgreSQL {number} ")
    shipped = pgsettings.settings(major)
    rows = [line.split("\t") for line in described.stdout.splitlines() if line]
    assert len(rows) > 300
    for name, context, _group, vartype, _reset, low, high, *_ in rows:
        s = shipped.get(name.lower())
        assert s is not None, f"{name} is missing from the shipped list"
        assert (s.name, s.context, s.vartype) == (name, context, VARTYPES[vartype]), name
        if s.vartype in ("integer", "real"):
            assert (float(low), float(high)) == (s.min, s.max), name
