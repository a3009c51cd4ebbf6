"""report-status and await-ready: what "ready" means, the status document, IMDSv2, SSM (moto)."""

from __future__ import annotations

import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest

from pgha import contract
from pgha.agent import cli, status
from pgha.agent.errors import AgentError
from pgha.agent.etcd.client import etcd_health
from pgha.local.imds import ImdsServer

from .agent_helpers import make_node, write_json

ME = "pg-x-2"
# Patroni 4.0.7's shapes (patroni/api.py get_postgresql_status, patroni/utils.py cluster_as_json).
PRIMARY = {"state": "running", "postmaster_start_time": "2026-12-01 10:00:00.000000+00:00", "role": "primary",
           "server_version": 170007, "xlog": {"location": 50331968}, "timeline": 3,
           "replication": [{"usename": "replicator", "application_name": "pg-x-2", "client_addr": "10.0.0.2",
                            "state": "streaming", "sync_state": "sync", "sync_priority": 1}],
           "dcs_last_seen": 1764583200, "database_system_identifier": "7443025011928432658",
           "patroni": {"version": "4.0.7", "scope": "pg-x", "name": "pg-x-1"}}
REPLICA = {"state": "running", "postmaster_start_time": "2026-12-01 10:00:05.000000+00:00", "role": "replica",
           "server_version": 170007, "xlog": {"received_location": 50331968, "replayed_location": 50331968,
                                              "replayed_timestamp": None, "paused": False},
           "sync_standby": True, "timeline": 3, "replication_state": "streaming", "dcs_last_seen": 1764583200,
           "database_system_identifier": "7443025011928432658",
           "patroni": {"version": "4.0.7", "scope": "pg-x", "name": ME}}
CLUSTER = {"members": [
    {"name": "pg-x-1", "role": "leader", "state": "running", "api_url": "http://10.0.0.1:8008/patroni",
     "host": "10.0.0.1", "port": 5432, "timeline": 3},
    {"name": ME, "role": "sync_standby", "state": "streaming", "api_url": "http://10.0.0.2:8008/patroni",
     "host": "10.0.0.2", "port": 5432, "timeline": 3, "lag": 0},
    {"name": "pg-x-3", "role": "replica", "state": "streaming", "api_url": "http://10.0.0.3:8008/patroni",
     "host": "10.0.0.3", "port": 5432, "timeline": 3, "lag": 1024},
]}
MiB = 1 << 20


def with_member(name: str, **changes: Any) -> dict:
    return {"members": [{**m, **changes} if m["name"] == name else m for m in CLUSTER["members"]]}


def verdict(local: dict, cluster: dict = CLUSTER, me: str = ME, max_lag: int = 16 * MiB) -> status.Readiness:
    return status.member_readiness(me, local, cluster, max_lag)


# -- what "ready" means ----------------------------------------------------------------------------

def test_a_streaming_replica_on_the_leaders_timeline_within_the_bound_is_ready():
    assert verdict(REPLICA) == status.Readiness(None, 3, 0)
    assert verdict({**REPLICA, "patroni": {"name": "pg-x-3"}}, me="pg-x-3") == status.Readiness(None, 3, 1024)


def test_the_leader_is_ready_when_its_postgres_runs_as_primary():
    assert verdict(PRIMARY, me="pg-x-1") == status.Readiness(None, 3, 0)
    why = verdict({**PRIMARY, "role": "replica"}, me="pg-x-1").reason
    assert why is not None and "leader key" in why and "replica" in why


@pytest.mark.parametrize(("local", "cluster", "words"), [
    ({**REPLICA, "state": "starting"}, CLUSTER, ["not running", "state=starting"]),
    ({"state": "creating replica", "role": "uninitialized"}, CLUSTER, ["state=creating replica"]),
    ({**REPLICA, "replication_state": "in archive recovery"}, CLUSTER,
     ["not streaming", "pg-x-1", "in archive recovery"]),
    ({k: v for k, v in REPLICA.items() if k != "replication_state"}, CLUSTER, ["not streaming", "none"]),
    ({**REPLICA, "timeline": 2}, CLUSTER, ["timeline 2", "pg-x-1 on timeline 3"]),
    (REPLICA, with_member(ME, lag=17 * MiB), [f"{17 * MiB} bytes behind pg-x-1", str(16 * MiB)]),
    (REPLICA, with_member(ME, lag="unknown"), ["lag", "unknown"]),
    (REPLICA, {"members": [m for m in CLUSTER["members"] if m["name"] != ME]}, ["member list"]),
    (REPLICA, with_member("pg-x-1", role="replica"), ["no leader"]),
    (REPLICA, with_member("pg-x-1", state="stopping"), ["leader pg-x-1 not running", "stopping"]),
    ({**REPLICA, "role": "primary"}, CLUSTER, ["primary while pg-x-1 is the leader"]),
])
def test_a_member_not_ready_says_why(local, cluster, words):
    why = verdict(local, cluster).reason
    assert why is not None
    for word in words:
        assert word in why, (word, why)


def test_the_lag_bound_is_inclusive_and_configurable():
    at_bound = with_member(ME, lag=4096)
    assert verdict(REPLICA, at_bound, max_lag=4096).reason is None
    over = verdict(REPLICA, at_bound, max_lag=4095)
    assert over.reason is not None and over.lag_bytes == 4096


def test_etcd_health_verdicts():
    assert status.etcd_health_reason({"health": "true", "reason": ""}) is None
    assert status.etcd_health_reason({"health": "false", "reason": "RAFT NO LEADER"}) == (
        "etcd member unhealthy: RAFT NO LEADER")
    assert "health=None" in (status.etcd_health_reason({}) or "")


class _Json(BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (status, body)`` as JSON."""

    def do_GET(self) -> None:  # noqa: N802
        code, body = self.server.routes.get(self.path, (404, {"error": "no route"}))  # type: ignore[attr-defined]
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def http() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Json)
    server.routes = {}  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_etcd_health_reads_the_503_body_etcd_answers_when_unhealthy(http):
    endpoint = f"http://127.0.0.1:{http.server_address[1]}"
    http.routes["/health"] = (503, {"health": "false", "reason": "ALARM NOSPACE"})
    assert status.etcd_health_reason(etcd_health(endpoint, None)) == "etcd member unhealthy: ALARM NOSPACE"
    http.routes["/health"] = (200, {"health": "true", "reason": ""})
    assert status.etcd_health_reason(etcd_health(endpoint, None)) is None
    with pytest.raises(AgentError, match="/health"):
        etcd_health("http://127.0.0.1:9", None, timeout=1.0)


# -- the status document ---------------------------------------------------------------------------

def test_status_parameter_and_document_shape():
    assert contract.status_parameter("pg-x", "pg-x-2") == "/pgha/pg-x/pg-x-2/status"
    value = contract.status_value("i-0abc", "ready", "ok", "2026-12-01T10:00:00Z", timeline=3, lag_bytes=0)
    assert json.loads(value) == {"instance_id": "i-0abc", "state": "ready", "message": "ok",
                                 "at": "2026-12-01T10:00:00Z", "timeline": 3, "lag_bytes": 0}
    assert contract.parse_status(value) == json.loads(value)
    with pytest.raises(ValueError, match="booting, ready, failed"):
        contract.status_value("i-0abc", "done", "", "")
    assert contract.parse_status("not json") is None
    assert contract.parse_status(json.dumps({"instance_id": "i-0abc", "state": "odd"})) is None


def test_a_long_message_keeps_its_end_within_the_limits():
    log = "\n".join(f"line {i}: apt-get retry" for i in range(2000)) + "\nE: Unable to locate package etcd-server"
    value = contract.status_value("i-0abc", "failed", log, "2026-12-01T10:00:00Z")
    message = json.loads(value)["message"]
    assert len(message.encode()) <= contract.STATUS_MESSAGE_MAX < len(log)
    assert message.endswith("E: Unable to locate package etcd-server") and log.endswith(message)
    # JSON escaping (quotes, control characters) may double a message: the whole still fits.
    nasty = '"\x01' * 3000
    value = contract.status_value("i-0abc", "failed", nasty, "2026-12-01T10:00:00Z")
    assert contract.STATUS_VALUE_MAX - 8 < len(value.encode()) <= contract.STATUS_VALUE_MAX
    assert nasty.endswith(json.loads(value)["message"])
    # Multi-byte text cut mid-character stays valid.
    assert json.loads(contract.status_value("i-0abc", "failed", "é" * 3000, "x"))["message"].strip("é") == ""


def test_messages_are_printable_and_tails_are_the_last_lines(tmp_path: Path):
    assert status.clean_message("\x1b[31mred\x1b[0m\n\tok\n") == "?[31mred?[0m\n\tok"
    log = tmp_path / "bootstrap.log"
    log.write_text("".join(f"step {i}\n" for i in range(100_000)))
    assert status.tail_of(str(log), 2) == "step 99998\nstep 99999"
    missing = status.tail_of(str(tmp_path / "none.log"), 5)
    assert "cannot read" in missing and "none.log" in missing


# -- IMDSv2 ----------------------------------------------------------------------------------------

@pytest.fixture
def imds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The rehearsal's IMDS (IMDSv2 only) on a free port, named by the variable botocore honours."""
    facts = tmp_path / "imds.json"
    facts.write_text(json.dumps({
        "role": "pg-x-node", "access_key_id": "testing", "secret_access_key": "testing", "session_token": "testing",
        "instance_id": "i-0new", "region": "us-east-1", "availability_zone": "us-east-1b",
        "local_ipv4": "10.0.0.2", "instance_type": "t4g.medium", "account_id": "123456789012",
        "architecture": "arm64", "image_id": "ami-0test", "hostname": ME}))
    server = ImdsServer(("127.0.0.1", 0), facts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield facts
    finally:
        server.shutdown()
        server.server_close()


def test_instance_id_comes_from_imdsv2(imds: Path):
    assert status.imds_instance_id() == "i-0new"
    # A replaced instance: the new id at once (IMDS re-reads its facts).
    imds.write_text(json.dumps({**json.loads(imds.read_text()), "instance_id": "i-0newer"}))
    assert status.imds_instance_id() == "i-0newer"


def test_no_imds_is_an_error_naming_the_endpoint():
    with pytest.raises(AgentError, match="127.0.0.1:9"):
        status.imds_instance_id("http://127.0.0.1:9/", attempts=2, timeout=0.5, sleep=lambda s: None)


# -- the commands, against moto's SSM ----------------------------------------------------------------

def stored(name: str) -> dict:
    value = boto3.client("ssm", region_name="us-east-1").get_parameter(Name=name)["Parameter"]["Value"]
    return json.loads(value)


def test_report_status_publishes_the_tail_of_the_log(base: Path, imds: Path, mocked_aws, capfd):
    node = write_json(base / "node.json", make_node(base, member=ME))
    log = base / "bootstrap.log"
    log.write_text("pgha-bootstrap: start\napt-get install: retry 1\nE: Unable to fetch etcd-server\n")
    assert cli.main(["--node-json", str(node), "report-status", "--state", "failed",
                     "--message-file", str(log), "--tail", "2"]) == 0
    got = stored("/pgha/pg-x/pg-x-2/status")
    assert got["instance_id"] == "i-0new" and got["state"] == "failed"
    assert got["message"] == "apt-get install: retry 1\nE: Unable to fetch etcd-server"
    assert got["at"].endswith("Z") and got["timeline"] is None and got["lag_bytes"] is None
    # A later report overwrites it.
    assert cli.main(["--node-json", str(node), "report-status", "--state", "booting", "--message", "again"]) == 0
    assert stored("/pgha/pg-x/pg-x-2/status")["message"] == "again"


def test_report_status_refuses_an_unknown_state(base: Path):
    node = write_json(base / "node.json", make_node(base, member=ME))
    with pytest.raises(SystemExit) as exc:
        cli.main(["--node-json", str(node), "report-status", "--state", "done"])
    assert exc.value.code == 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reporter(base: Path) -> status.Reporter:
    node = make_node(base, member=ME)
    return status.Reporter(node, "i-0new", client=boto3.client("ssm", region_name="us-east-1"))


def test_await_ready_needs_two_passes_in_a_row_then_reports_ready(base: Path, mocked_aws):
    seen = iter([status.Readiness("replica not streaming from pg-x-1: replication_state=none"),
                 status.Readiness(None, 3, 0), status.Readiness("replica on timeline 2, leader on 3", 2),
                 status.Readiness(None, 3, 10), status.Readiness(None, 3, 8)])
    clock = Clock()
    ok = status.await_ready(lambda: next(seen), reporter(base), timeout=60, interval=2, clock=clock,
                            sleep=clock.sleep)
    got = stored("/pgha/pg-x/pg-x-2/status")
    assert ok and got["state"] == "ready" and got["timeline"] == 3 and got["lag_bytes"] == 8
    assert got["instance_id"] == "i-0new" and "timeline 3" in got["message"]


def test_await_ready_reports_progress_then_failed_with_the_last_reason(base: Path, mocked_aws):
    clock = Clock()
    history: list[dict] = []
    rep = reporter(base)
    report = rep.report

    def recording(state: str, message: str, **kw: Any) -> str:
        value = report(state, message, **kw)
        history.append(json.loads(value))
        return value

    rep.report = recording  # type: ignore[method-assign]

    def check() -> status.Readiness:
        return status.Readiness("PostgreSQL not running: state=starting" if clock.now < 100
                                else "etcd member unhealthy: RAFT NO LEADER")

    ok = status.await_ready(check, rep, timeout=300, interval=5, clock=clock, sleep=clock.sleep)
    assert not ok
    got = stored("/pgha/pg-x/pg-x-2/status")
    assert got["state"] == "failed" and got["message"] == "not ready after 300 s: etcd member unhealthy: RAFT NO LEADER"
    # booting with each new reason (throttled), then the one failure.
    assert [(h["state"], h["message"]) for h in history] == [
        ("booting", "waiting: PostgreSQL not running: state=starting"),
        ("booting", "waiting: etcd member unhealthy: RAFT NO LEADER"),
        ("failed", "not ready after 300 s: etcd member unhealthy: RAFT NO LEADER")]


def test_await_ready_command_against_a_patroni_api(base: Path, imds: Path, mocked_aws, http):
    port = http.server_address[1]
    http.routes.update({"/patroni": (200, REPLICA), "/cluster": (200, CLUSTER)})
    # No etcd on this member: Patroni's view alone decides.
    node = make_node(base, member=ME, ports={"patroni": port},
                     peers={ME: {"ip": "127.0.0.1", "pgdata": "/x", "socket": "/x", "etcd": False}})
    path = write_json(base / "node.json", node)
    assert cli.main(["--node-json", str(path), "await-ready", "--timeout", "10", "--interval", "0.05"]) == 0
    got = stored("/pgha/pg-x/pg-x-2/status")
    assert (got["state"], got["instance_id"], got["timeline"], got["lag_bytes"]) == ("ready", "i-0new", 3, 0)
    # Patroni gone: it times out and says so, exit 1.
    http.routes.clear()
    assert cli.main(["--node-json", str(path), "await-ready", "--timeout", "0.2", "--interval", "0.05"]) == 1
    got = stored("/pgha/pg-x/pg-x-2/status")
    assert got["state"] == "failed" and "Patroni not answering" in got["message"] and "HTTP 404" in got["message"]


def test_check_once_asks_the_members_own_etcd_when_it_runs_one(base: Path, http, monkeypatch):
    port = http.server_address[1]
    http.routes.update({"/patroni": (200, REPLICA), "/cluster": (200, CLUSTER),
                        "/health": (503, {"health": "false", "reason": "RAFT NO LEADER"})})
    node = make_node(base, member=ME, ports={"patroni": port, "etcd_client": port},
                     peers={ME: {"ip": "127.0.0.1", "pgdata": "/x", "socket": "/x", "etcd": True}})
    # The TLS context is etcd's business (tested with the daemons); plain HTTP stands in here.
    monkeypatch.setattr(status, "etcd_client_url", lambda n, name: f"http://{n['peers'][name]['ip']}:{port}")
    assert status.check_once(node, 16 * MiB, None).reason is None  # no context: no etcd to ask
    # Any context stands for "runs etcd" (urllib uses it for https only).
    why = status.check_once(node, 16 * MiB, object()).reason
    assert why == "etcd member unhealthy: RAFT NO LEADER"


def test_the_unit_runs_await_ready_after_patroni_and_never_requires_it():
    from pgha.render import files
    from render_fixtures import ec2_context, make_spec

    spec = make_spec({"clusterName": "pg-unit"})
    ctx = ec2_context(spec)
    for member in spec.members:
        view = files._view(spec, member, ctx)
        assert view["units"][-1] == contract.READY_UNIT  # started last, without waiting for it
        text = next(f.content for f in files.render_node(spec, member, ctx) if f.path.endswith(contract.READY_UNIT))
        pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
        lines = dict(pairs)
        assert lines["Type"] == "oneshot" and lines["RemainAfterExit"] == "yes"
        assert shlex.split(lines["ExecStart"]) == contract.agent_argv(view["paths"], "await-ready")
        # Not holding back multi-user.target (and cloud-init's final stage) at boot.
        assert lines["DefaultDependencies"] == "no" and "shutdown.target" in lines["Conflicts"]
        after = [unit for key, value in pairs if key == "After" for unit in value.split()]
        assert "pgha-patroni.service" in after and ("pgha-etcd.service" in after) == member.runs_etcd
        assert "Requires" not in lines and lines["User"] == "postgres"


def test_a_client_that_failed_is_made_again_for_the_next_attempt(base: Path, mocked_aws, monkeypatch):
    # A first boot can make the client before the instance role is served: it never gets
    # credentials, so each retry needs a new one (as the fetcher's bucket_getter does).
    import botocore.exceptions

    class NoCredentials:
        def put_parameter(self, **kwargs: Any) -> None:
            raise botocore.exceptions.NoCredentialsError()

    made: list[Any] = []

    def ssm_client(aws: Any) -> Any:
        made.append(NoCredentials() if not made else boto3.client("ssm", region_name="us-east-1"))
        return made[-1]

    monkeypatch.setattr(status, "ssm_client", ssm_client)
    node = make_node(base, member=ME)
    status.Reporter(node, "i-0new").report("booting", "starting", retry_for=30)
    assert len(made) == 2 and isinstance(made[0], NoCredentials)
    parameter = contract.status_parameter(node["cluster"], node["member"])
    value = boto3.client("ssm", region_name="us-east-1").get_parameter(Name=parameter)["Parameter"]["Value"]
    assert contract.parse_status(value)["state"] == "booting"


# -- a failed boot before the agent is there (pgha-fetch --report-failure) -----------------------

def test_the_fetchers_signature_is_aws_signature_version_4_as_botocore_computes_it():
    import datetime

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from pgha.agent import fetch

    now = datetime.datetime(2026, 12, 1, 19, 5, 7, tzinfo=datetime.timezone.utc)
    creds = {"AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
             "Token": "session-token"}
    url, body = "https://ssm.eu-west-1.amazonaws.com/", b'{"Name": "/pgha/pg-x/pg-x-1/status"}'
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "AmazonSSM.PutParameter"}
    mine = fetch.sigv4_headers(url, body, headers, service="ssm", region="eu-west-1", creds=creds, now=now)

    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    request.context["timestamp"] = now.strftime("%Y%m%dT%H%M%SZ")
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", creds["SecretAccessKey"], "session-token"), "ssm", "eu-west-1")
    signer._modify_request_before_signing(request)  # Host, X-Amz-Date, the token: what it signs
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    assert mine["authorization"].endswith(f"Signature={expected}")
    assert f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}" in mine["authorization"]


def test_a_boot_that_fails_before_the_agent_reports_through_the_fetcher(tmp_path: Path, imds: Path):
    from moto.server import ThreadedMotoServer

    from pgha.agent import fetch

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boot = write_json(tmp_path / "boot.json", {
            "cluster": "pg-x", "member": ME, "etc": str(tmp_path),
            "aws": {"region": "us-east-1", "endpoint_url": endpoint, "s3_addressing": "path"},
            "config": {"bucket": "b", "key": "k"}})
        log = tmp_path / "bootstrap.log"
        log.write_text("pgha-bootstrap: start\n" + "x" * 9000 + "\nE: Unable to locate package postgresql-17\n"
                       "pgha-bootstrap: failed at line 44\n")
        assert fetch.main(["--report-failure", str(log), str(boot)]) == 0
        ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        value = ssm.get_parameter(Name=contract.status_parameter("pg-x", ME))["Parameter"]["Value"]
    finally:
        server.stop()
    reported = contract.parse_status(value)
    assert reported is not None and reported["state"] == "failed" and reported["instance_id"] == "i-0new"
    assert reported["message"].endswith("E: Unable to locate package postgresql-17\npgha-bootstrap: failed at line 44")
    assert len(reported["message"].encode()) <= contract.STATUS_MESSAGE_MAX
    assert len(value.encode()) <= contract.STATUS_VALUE_MAX
    # The same status the agent writes (pgha.contract.status_value), only spelled without pgha.
    assert value == contract.status_value("i-0new", "failed", reported["message"], reported["at"])
    assert fetch.STATUS_MESSAGE_MAX == contract.STATUS_MESSAGE_MAX
