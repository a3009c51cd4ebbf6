"""`ship-logs` in-process: redaction, CloudWatch's batch limits, offsets across restarts and
rotations, an unreachable CloudWatch (back off, lose nothing, send nothing twice), and the real
boto3 client against moto's CloudWatch Logs."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pgha.agent import ship_logs
from pgha.agent.ship_logs import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, Shipper, redact

MEMBER = "pg-x-1"
GROUP = "/pgha/pg-x"


class FakeLogs:
    """CloudWatch Logs' PutLogEvents as documented: it refuses a batch breaking a limit."""

    def __init__(self) -> None:
        self.streams: dict[str, list[dict[str, Any]]] = {}
        self.down = False
        self.puts = 0

    def create_log_stream(self, logGroupName: str, logStreamName: str) -> None:
        if self.down:
            raise ConnectionError("Could not connect to the endpoint URL")
        assert logGroupName == GROUP
        self.streams.setdefault(logStreamName, [])

    def put_log_events(self, logGroupName: str, logStreamName: str, logEvents: list[dict[str, Any]]) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("Could not connect to the endpoint URL")
        assert logGroupName == GROUP and logStreamName in self.streams
        assert 1 <= len(logEvents) <= MAX_BATCH_EVENTS
        assert sum(len(e["message"].encode()) + 26 for e in logEvents) <= MAX_BATCH_BYTES
        stamps = [e["timestamp"] for e in logEvents]
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] <= 24 * 3600 * 1000
        assert all(len(e["message"].encode()) + 26 <= 256 * 1024 for e in logEvents)
        self.puts += 1
        self.streams[logStreamName].extend(logEvents)
        return {}

    def lines(self, stream: str) -> list[str]:
        return [e["message"] for e in self.streams.get(stream, [])]


def facts(tmp_path: Path) -> dict[str, Any]:
    log = tmp_path / "log"
    (log / "postgresql").mkdir(parents=True, exist_ok=True)
    return {"group": GROUP, "state": str(tmp_path / "offsets.json"),
            "sources": {"postgresql": [f"{log}/postgresql/*.log"], "etcd": [f"{log}/etcd.log"]}}


def append(path: Path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)


def shipper(tmp_path: Path, client: Any) -> Shipper:
    return Shipper(MEMBER, facts(tmp_path), lambda: client)  # type: ignore[arg-type]


# -- what never leaves the node -----------------------------------------------------------------

SECRETS = [
    ("ALTER ROLE dbuser_app PASSWORD 'hunter2''s'", "hunter2"),
    ("statement: CREATE ROLE x LOGIN ENCRYPTED PASSWORD 'Zq9sEcret' VALID UNTIL 'infinity'", "Zq9sEcret"),
    ("create user y with password $pw$dollar-Secret$pw$;", "dollar-Secret"),
    ("ALTER USER z PASSWORD E'esc\\'aped'", "esc"),
    ("host=10.0.0.1 user=replicator password=Repl1cat0r sslmode=verify-full", "Repl1cat0r"),
    ("conninfo 'host=a password = \"quoted secret\" port=5432'", "quoted secret"),
    ("connecting to postgresql://postgres:Sup3rS3cret@10.0.0.1:5432/postgres", "Sup3rS3cret"),
    ('{"superuser_password": "Abc123Def456", "member": "pg-x-1"}', "Abc123Def456"),
    ("PGPASSWORD=Env1ronment pg_basebackup -h 10.0.0.2", "Env1ronment"),
    ("repo1-cipher-pass=Ciph3rPass", "Ciph3rPass"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
    ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ("rolpassword SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy", "c2VydmVy"),
    ("old verifier md5d41d8cd98f00b204e9800998ecf8427e", "d41d8cd98f00b204e9800998ecf8427e"),
    ("-----BEGIN PRIVATE KEY-----MIIEvQIBADANBg", "MIIEvQIBADANBg"),
]


@pytest.mark.parametrize(("line", "secret"), SECRETS, ids=[s[1] for s in SECRETS])
def test_redact_removes_every_kind_of_secret_daemons_print(line: str, secret: str) -> None:
    cleaned = redact(line)
    assert secret not in cleaned and "[redacted]" in cleaned, cleaned


def test_a_statement_over_several_lines_is_one_event_redacted_as_a_whole(tmp_path: Path) -> None:
    cw = FakeLogs()
    pg = tmp_path / "log/postgresql/postgresql-Wed.log"
    shipper_ = shipper(tmp_path, cw)
    append(pg, "LOG:  statement: CREATE ROLE app2 LOGIN", "\tPASSWORD", "\t'Spl1tAcross'", "LOG:  next")
    shipper_.cycle()
    assert cw.lines(f"{MEMBER}/postgresql") == [
        "postgresql-Wed.log: LOG:  statement: CREATE ROLE app2 LOGIN\n\tPASSWORD\n\t'[redacted]'",
        "postgresql-Wed.log: LOG:  next"]


def test_redact_keeps_ordinary_lines_whole() -> None:
    for line in ["2026-12-02 01:00:00.000 UTC [42] LOG:  checkpoint complete: wrote 3 buffers",
                 "2026-12-02 01:00:00,123 INFO: no action. I am (pg-x-1), the leader with the lock",
                 '{"level":"info","msg":"raft.node: elected leader","term":3}',
                 "LOG:  connection authorized: user=dbuser_app database=app host=10.0.0.5 app=psql"]:
        assert redact(line) == line


# -- shipping ---------------------------------------------------------------------------------------

def test_each_daemon_s_lines_reach_its_member_stream_once_and_redacted(tmp_path: Path) -> None:
    cw = FakeLogs()
    s = shipper(tmp_path, cw)
    pg, etcd = tmp_path / "log/postgresql/postgresql-Wed.log", tmp_path / "log/etcd.log"
    append(pg, "LOG:  database system is ready", "LOG:  statement: ALTER ROLE a PASSWORD 'Leak3d'")
    append(etcd, '{"msg":"serving client traffic"}')
    assert s.cycle() == ship_logs.POLL_SECONDS
    assert cw.lines(f"{MEMBER}/postgresql") == [
        "postgresql-Wed.log: LOG:  database system is ready",
        "postgresql-Wed.log: LOG:  statement: ALTER ROLE a PASSWORD '[redacted]'"]
    assert cw.lines(f"{MEMBER}/etcd") == ['etcd.log: {"msg":"serving client traffic"}']
    # Only what is new is sent again; a partial line waits for its newline.
    append(pg, "LOG:  checkpoint starting")
    with open(etcd, "a") as fh:
        fh.write("half a li")
    s.cycle()
    assert cw.lines(f"{MEMBER}/postgresql")[2:] == ["postgresql-Wed.log: LOG:  checkpoint starting"]
    assert len(cw.lines(f"{MEMBER}/etcd")) == 1
    with open(etcd, "a") as fh:
        fh.write("ne\n")
    s.cycle()
    assert cw.lines(f"{MEMBER}/etcd")[1:] == ["etcd.log: half a line"]
    # The offsets are persisted: a restarted shipper sends nothing twice.
    again = shipper(tmp_path, cw)
    append(pg, "LOG:  after the restart")
    again.cycle()
    assert cw.lines(f"{MEMBER}/postgresql")[3:] == ["postgresql-Wed.log: LOG:  after the restart"]
    assert "Leak3d" not in json.dumps(cw.streams) and "Leak3d" not in Path(facts(tmp_path)["state"]).read_text()


def test_a_truncated_or_replaced_file_is_read_from_its_start(tmp_path: Path) -> None:
    cw = FakeLogs()
    s = shipper(tmp_path, cw)
    etcd = tmp_path / "log/etcd.log"
    append(etcd, "one", "two", "three")
    s.cycle()
    etcd.write_text("")  # logrotate's copytruncate
    append(etcd, "four")
    s.cycle()
    os.replace(etcd, tmp_path / "log/etcd.log.1")  # rotated away, a new file in its place
    append(etcd, "five", "six", "seven", "eight")
    s.cycle()
    assert [m.split(": ", 1)[1] for m in cw.lines(f"{MEMBER}/etcd")] == [
        "one", "two", "three", "four", "five", "six", "seven", "eight"]


def test_an_unreachable_cloudwatch_backs_off_keeps_every_line_and_sends_none_twice(tmp_path: Path) -> None:
    cw = FakeLogs()
    s = shipper(tmp_path, cw)
    pg = tmp_path / "log/postgresql/postgresql-Wed.log"
    append(pg, "first")
    s.cycle()
    cw.down = True
    append(pg, "during the outage 1", "during the outage 2")
    waits = [s.cycle() for _ in range(9)]
    assert waits[:4] == [5, 10, 20, 40] and waits[-1] == ship_logs.BACKOFF_MAX
    state = json.loads(Path(facts(tmp_path)["state"]).read_text())
    assert state[str(pg)]["offset"] == len("first\n")  # nothing acknowledged, nothing moved on
    cw.down = False
    append(pg, "after it")
    assert s.cycle() == ship_logs.POLL_SECONDS
    assert [m.split(": ", 1)[1] for m in cw.lines(f"{MEMBER}/postgresql")] == [
        "first", "during the outage 1", "during the outage 2", "after it"]
    assert s.failures == 0


def test_batches_respect_cloudwatch_s_limits(tmp_path: Path) -> None:
    cw = FakeLogs()
    s = shipper(tmp_path, cw)
    pg = tmp_path / "log/postgresql/postgresql-Wed.log"
    # 25,000 short lines (more events than a batch holds), then lines that fill a batch's bytes.
    append(pg, *[f"LOG:  line {i}" for i in range(25_000)])
    append(pg, *["x" * 200_000 for _ in range(12)])
    append(pg, "y" * (MAX_EVENT_BYTES + 5000))  # longer than an event may be: clipped
    for _ in range(10):
        s.cycle()
    shipped = cw.lines(f"{MEMBER}/postgresql")
    assert len(shipped) == 25_000 + 12 + 1 and cw.puts >= 6  # FakeLogs refused any batch over a limit
    assert shipped[24_999].endswith("line 24999") and len(shipped[-1].encode()) == MAX_EVENT_BYTES


def test_a_file_it_may_not_read_is_skipped_and_the_rest_still_shipped(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cw = FakeLogs()
    s = shipper(tmp_path, cw)
    denied = tmp_path / "log/postgresql/postgresql-Tue.log"
    append(denied, "left by an older owner")
    append(tmp_path / "log/etcd.log", "readable")
    real = ship_logs.read_lines

    def read_lines(path: str, start: Any, limit: int = ship_logs.READ_LIMIT) -> Any:
        if path == str(denied):
            raise PermissionError(13, "Permission denied", path)
        return real(path, start, limit)

    monkeypatch.setattr(ship_logs, "read_lines", read_lines)
    s.cycle()
    s.cycle()
    assert s.unreadable == {str(denied)} and not cw.lines(f"{MEMBER}/postgresql")
    assert cw.lines(f"{MEMBER}/etcd") == ["etcd.log: readable"]


def test_the_real_client_ships_to_moto_s_cloudwatch_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        admin = boto3.client("logs", region_name="us-east-1")
        admin.create_log_group(logGroupName=GROUP)
        aws = {"region": "us-east-1", "endpoint_url": None, "s3_addressing": "path"}
        s = Shipper(MEMBER, facts(tmp_path), lambda: ship_logs.logs_client(aws))  # type: ignore[arg-type]
        append(tmp_path / "log/etcd.log", "elected leader", "ALTER ROLE x PASSWORD 'M0toLeak'")
        assert s.cycle() == ship_logs.POLL_SECONDS
        # A second shipper (the stream exists already) goes on in the same stream.
        append(tmp_path / "log/etcd.log", "after a restart")
        Shipper(MEMBER, facts(tmp_path), lambda: ship_logs.logs_client(aws)).cycle()  # type: ignore[arg-type]
        events = admin.get_log_events(logGroupName=GROUP, logStreamName=f"{MEMBER}/etcd",
                                      startFromHead=True)["events"]
    assert [e["message"] for e in events] == ["etcd.log: elected leader",
                                              "etcd.log: ALTER ROLE x PASSWORD '[redacted]'",
                                              "etcd.log: after a restart"]


def test_the_agent_s_own_logs_stay_readable_under_patroni_s_umask(tmp_path: Path) -> None:
    from pgha.agent.fsutil import open_log

    # Patroni runs its callbacks (dcs-sync, the PgBouncer role settle) under umask 0077.
    old = os.umask(0o077)
    try:
        fd = open_log(str(tmp_path / "dcs-sync.log"))
        os.write(fd, b"synced\n")
        os.close(fd)
    finally:
        os.umask(old)
    assert (tmp_path / "dcs-sync.log").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "dcs-sync.log").read_text() == "synced\n"
