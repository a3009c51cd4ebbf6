"""Query insights on the running members: pg_stat_statements and auto_explain preloaded with the
profile's settings, the extension in the bootstrap and app databases, and the postgres exporter
serving a statement the application ran as pg_stat_statements series (by queryid)."""

import re
import time
import urllib.request

import psycopg
import pytest

from pgha.local import backups
from pgha.render.pgparams import sized_parameters
from pgha.spec import PORTS

pytestmark = pytest.mark.cluster


def test_statements_are_tracked_and_exported(local_cluster):
    expected = sized_parameters(local_cluster.spec)
    for node in local_cluster.nodes:
        dsn = local_cluster.superuser_dsn(node)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            assert conn.execute("SHOW shared_preload_libraries").fetchone()[0] == "pg_stat_statements,auto_explain"
            # Defined only with auto_explain loaded; the profile's threshold.
            assert conn.execute("SHOW auto_explain.log_min_duration").fetchone()[0] == \
                expected["auto_explain.log_min_duration"]
        for db in ("postgres", "app"):
            with psycopg.connect(local_cluster.superuser_dsn(node, dbname=db), autocommit=True, connect_timeout=5) as conn:
                assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
                                    ).fetchone()[0] == 1, (node.member.name, db)

    leader = backups.leader(local_cluster, running=False)
    with psycopg.connect(local_cluster.dsn(leader.ip, PORTS["primary"]), autocommit=True, connect_timeout=5,
                         prepare_threshold=None) as conn:
        conn.execute("SELECT pg_sleep(0.1) AS pgha_insights_probe")
    with psycopg.connect(local_cluster.superuser_dsn(leader, dbname="app"), autocommit=True,
                         connect_timeout=5) as conn:
        (queryid,), = conn.execute("SELECT queryid FROM pg_stat_statements WHERE query LIKE %s",
                                   ("%pgha_insights_probe%",)).fetchall()
    sample = re.compile(rf'^pg_stat_statements_seconds_total\{{datname="app",queryid="{queryid}",'
                        rf'user="dbuser_app"\}} ([0-9.e+-]+)$', re.MULTILINE)
    url = f"http://{leader.ip}:{PORTS['postgres_exporter']}/metrics"
    found = None
    for _ in range(30):  # the exporter reads pg_stat_statements at each scrape
        with urllib.request.urlopen(url, timeout=10) as reply:
            found = sample.search(reply.read().decode())
        if found:
            break
        time.sleep(1)
    assert found, f"no pg_stat_statements series for queryid {queryid} on {url}"
    assert float(found.group(1)) >= 0.1
