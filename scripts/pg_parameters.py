#!/usr/bin/env python3
"""Write the PostgreSQL parameter list pgha validates ``parameters`` against, from the real server.

    venv/bin/python scripts/pg_parameters.py            # rewrite components/data/pg<major>-parameters.json
    venv/bin/python scripts/pg_parameters.py --check    # exit 1 if it differs

The source is ``pg_settings`` of a throwaway PostgreSQL of the node image (the Debian 13 packages
EC2 members run, ``pgha image build``): an overlay of the image, entered with systemd-nspawn,
runs initdb and a server on a Unix socket only (no TCP), and the query below dumps every
parameter with its type, unit, range, enum values and context. Provenance (server version,
image key, date) goes into the file; tests/test_pg_parameters.py compares the list with the
image's ``postgres --describe-config``.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pgha.local import image
from pgha.spec.image import POSTGRES_MAJORS

DATA = Path(__file__).resolve().parent.parent / "components" / "data"

# The extensions whose parameters pgha accepts: pg_stat_statements (pgha preloads it) and
# auto_explain (a user may load it per session); loaded here so pg_settings lists their parameters.
PRELOAD = "pg_stat_statements,auto_explain"
QUERY = ("SELECT json_agg(json_build_object('name', name, 'vartype', vartype, 'unit', unit, 'min', min_val, "
         "'max', max_val, 'enumvals', enumvals, 'context', context) ORDER BY name) FROM pg_settings")

SCRIPT = """set -e
D=$(mktemp -d /tmp/pgdata.XXXXXX); chown postgres "$D"
runuser -u postgres -- {bin}/initdb -D "$D/data" -A peer >/dev/null
runuser -u postgres -- {bin}/pg_ctl -D "$D/data" -w start \
    -o "-c listen_addresses='' -k $D -c shared_preload_libraries={preload}" >/dev/null
runuser -u postgres -- {bin}/psql -h "$D" -d postgres -XAtqc "SELECT version()"
runuser -u postgres -- {bin}/psql -h "$D" -d postgres -XAtqc "{query}"
runuser -u postgres -- {bin}/pg_ctl -D "$D/data" -m fast -w stop >/dev/null
"""


def from_server(major: int) -> dict:
    """Run the image's PostgreSQL ``major`` in a throwaway overlay and return the list document."""
    built = image.build(log=lambda line: print(line, file=sys.stderr))
    base = Path(tempfile.mkdtemp(prefix="pgha-params-", dir="/var/tmp"))
    upper, work, merged = base / "upper", base / "work", base / "root"
    for part in (upper, work, merged):
        part.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={built.root},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        script = SCRIPT.format(bin=f"/usr/lib/postgresql/{major}/bin", query=QUERY, preload=PRELOAD)
        done = subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
                               f"--machine=pgha-params-{os.getpid()}", "-D", str(merged), "--pipe",
                               "/bin/sh", "-c", script], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=True)
    version, listing = done.stdout.strip().split("\n", 1)
    settings = json.loads(listing)
    for s in settings:
        for key in ("min", "max"):  # pg_settings gives them as text
            if s[key] is not None:
                s[key] = float(s[key]) if s["vartype"] == "real" else int(s[key])
    return {
        "provenance": {"source": "pg_settings", "server": version, "image": built.key, "preloaded": PRELOAD,
                       "generated": datetime.date.today().isoformat(), "script": "scripts/pg_parameters.py"},
        "parameters": settings,
    }


def dump(document: dict) -> str:
    """The list with one parameter a line: readable diffs when a new minor changes one."""
    rows = ",\n".join("  " + json.dumps(p, sort_keys=True) for p in document["parameters"])
    return f'{{"provenance": {json.dumps(document["provenance"], indent=1)},\n "parameters": [\n{rows}\n]}}\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped list differs")
    args = parser.parse_args()
    status = 0
    for major in POSTGRES_MAJORS:
        target = DATA / f"pg{major}-parameters.json"
        fresh = from_server(major)
        if args.check:
            shipped = json.loads(target.read_text())
            if shipped["parameters"] != fresh["parameters"]:
                print(f"{target} differs from the image's PostgreSQL {major}", file=sys.stderr)
                status = 1
            continue
        target.write_text(dump(fresh))
        print(f"{target}: {len(fresh['parameters'])} parameters of {fresh['provenance']['server']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
