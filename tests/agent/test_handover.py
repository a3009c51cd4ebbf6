"""The handover before a stop: whom to hand leadership to (pure), and the command against a
Patroni REST API stand-in (no daemons): the switchover it asks for, what it skips, its bounds."""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from pgha.agent import handover
from pgha.render import render_node, unit_names
from render_fixtures import ec2_context, make_spec

from .agent_helpers import make_node, run_cli, write_json


def member(name: str, role: str, state: str, *, lag: int | str | None = 0, timeline: int = 4,
           api: str = "10.0.0.1:8008", **extra: Any) -> dict[str, Any]:
    """One entry of Patroni 4.0's /cluster (utils.cluster_as_json), as pgha's members answer it:
    no tags key (Patroni lists only tags that are set), no lag for the leader."""
    host = api.split(":")[0]
    m: dict[str, Any] = {"name": name, "role": role, "state": state, "api_url": f"http://{api}/patroni",
                         "host": host, "port": 5432, "timeline": timeline}
    if role != "leader":
        m["lag"] = lag
    m.update(extra)
    return m


def three(sync_state: str = "streaming", replica_state: str = "streaming", **kw: Any) -> dict[str, Any]:
    """A healthy rpo-0 cluster as pg-x-1's Patroni 4.0 answers /cluster."""
    return {"members": [member("pg-x-1", "leader", "running", api="10.0.0.1:8008"),
                        member("pg-x-2", "sync_standby", sync_state, api="10.0.0.2:8008"),
                        member("pg-x-3", "replica", replica_state, api="10.0.0.3:8008", lag=16)],
            "scope": "pg-x", **kw}


SYNC = {"ttl": 20, "loop_wait": 2, "maximum_lag_on_failover": 1048576, "synchronous_mode": True,
        "synchronous_mode_strict": True, "synchronous_node_count": 1}
ASYNC = {"ttl": 20, "loop_wait": 2, "maximum_lag_on_failover": 1048576, "synchronous_mode": False}


def test_the_leader_hands_over_to_its_synchronous_standby():
    name, why = handover.handover_candidate("pg-x-1", three(), SYNC)
    assert name == "pg-x-2" and "synchronous standby" in why
    # Never the asynchronous replica in synchronous mode, however caught up: Patroni refuses it.
    lagging_sync = three()
    lagging_sync["members"][1]["lag"] = 2048
    lagging_sync["members"][2]["lag"] = 0
    assert handover.handover_candidate("pg-x-1", lagging_sync, SYNC)[0] == "pg-x-2"
    # Patroni 4 may give synchronous_mode as a string; quorum mode names its standbys quorum_standby.
    assert handover.handover_candidate("pg-x-1", three(), {**SYNC, "synchronous_mode": "on"})[0] == "pg-x-2"
    quorum = three()
    for m in quorum["members"][1:]:
        m["role"] = "quorum_standby"
    assert handover.handover_candidate("pg-x-1", quorum, {**SYNC, "synchronous_mode": "quorum"})[0] == "pg-x-2"
    quorum["members"][1]["lag"] = 64  # pg-x-3 has 16: the least lag wins among quorum standbys
    assert handover.handover_candidate("pg-x-1", quorum, {**SYNC, "synchronous_mode": "quorum"})[0] == "pg-x-3"


def test_a_member_that_does_not_lead_does_nothing():
    for me in ("pg-x-2", "pg-x-3"):
        name, why = handover.handover_candidate(me, three(), SYNC)
        assert name is None and "not the leader (pg-x-1 is)" in why
    leaderless = three()
    leaderless["members"] = leaderless["members"][1:]
    assert handover.handover_candidate("pg-x-1", leaderless, SYNC) == (None, "the cluster has no leader")
    # The leader key is ours but PostgreSQL is not up: nothing to hand over.
    starting = three()
    starting["members"][0]["state"] = "starting"
    name, why = handover.handover_candidate("pg-x-1", starting, SYNC)
    assert name is None and "starting" in why


def test_no_handover_without_a_healthy_synchronous_standby():
    for state in ("stopped", "in archive recovery", "starting", "crashed"):
        name, why = handover.handover_candidate("pg-x-1", three(sync_state=state), SYNC)
        assert name is None and f"pg-x-2: {state}, not streaming" in why
        assert "pg-x-3: not a synchronous standby (replica)" in why
    no_sync = three()
    no_sync["members"][1]["role"] = "replica"  # strict mode, the standby just lost: no sync_standby
    assert handover.handover_candidate("pg-x-1", no_sync, SYNC)[0] is None
    alone = {"members": [member("pg-x-1", "leader", "running")], "scope": "pg-x"}
    assert handover.handover_candidate("pg-x-1", alone, SYNC) == (None, "no member can take over: no other member")


def test_tags_timeline_and_unknown_lag_rule_a_standby_out():
    for change, words in (({"tags": {"nofailover": True}}, "may not be promoted"),
                          ({"tags": {"failover_priority": 0}}, "may not be promoted"),
                          ({"timeline": 3}, "on timeline 3, the leader on 4"),
                          ({"lag": "unknown"}, "lag unknown")):
        view = three()
        view["members"][1].update(change)
        name, why = handover.handover_candidate("pg-x-1", view, SYNC)
        assert name is None and f"pg-x-2: {words}" in why, (change, why)
    # A positive failover_priority is fine.
    view = three()
    view["members"][1]["tags"] = {"failover_priority": 2}
    assert handover.handover_candidate("pg-x-1", view, SYNC)[0] == "pg-x-2"


def test_paused_cluster_or_a_scheduled_switchover_is_left_alone():
    name, why = handover.handover_candidate("pg-x-1", three(pause=True), SYNC)
    assert name is None and "maintenance mode" in why
    scheduled = three(scheduled_switchover={"at": "2026-12-02T01:00:00+00:00", "from": "pg-x-1"})
    name, why = handover.handover_candidate("pg-x-1", scheduled, SYNC)
    assert name is None and "already scheduled" in why


def test_asynchronous_the_least_lag_within_the_failover_bound_wins():
    view = {"members": [member("pg-x-1", "leader", "running"),
                        member("pg-x-2", "replica", "streaming", lag=5000),
                        member("pg-x-3", "replica", "streaming", lag=200),
                        member("pg-x-4", "replica", "streaming", lag=0, tags={"nofailover": True})],
            "scope": "pg-x"}
    name, why = handover.handover_candidate("pg-x-1", view, ASYNC)
    assert name == "pg-x-3" and "least lag" in why and "200 B" in why
    # Equal lag: by name, so every run picks the same one.
    view["members"][1]["lag"] = 200
    assert handover.handover_candidate("pg-x-1", view, ASYNC)[0] == "pg-x-2"
    # Past maximum_lag_on_failover (rpo): Patroni would not fail over to it, nor do we.
    bound = {**ASYNC, "maximum_lag_on_failover": 100}
    name, why = handover.handover_candidate("pg-x-1", view, bound)
    assert name is None and "pg-x-3: lag 200 B above maximum_lag_on_failover 100 B" in why
    # No bound in the DCS: Patroni's default, 1 MiB.
    far = copy.deepcopy(view)
    for m in far["members"][1:3]:
        m["lag"] = 2 * 1048576
    assert handover.handover_candidate("pg-x-1", far, {"synchronous_mode": False})[0] is None


# -- the command, against a stand-in of Patroni's REST API ----------------------------------------

class FakePatroni:
    """Patroni's REST API as this member's (``me``) and the candidate's answer it: /cluster and
    /config from the DCS, /primary of the candidate, POST /switchover moving the leader key
    after ``switch_delay`` seconds (``switch_status``: its reply)."""

    def __init__(self, view: dict[str, Any], config: dict[str, Any]) -> None:
        self.view, self.config = view, config
        self.switch_status, self.switch_delay, self.promote = 200, 0.2, True
        # How long the new leader's PostgreSQL stays in recovery after it takes the key: Patroni's
        # /primary answers 200 meanwhile, with the body's role "replica".
        self.promotion_takes = 0.0
        self.posts: list[tuple[str, dict[str, Any], str | None]] = []
        self.leader_since: float | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any) -> None:
                raw = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                if self.path == "/cluster":
                    self.reply(200, fake.view)
                elif self.path == "/config":
                    self.reply(200, fake.config)
                elif self.path == "/primary":
                    leads = fake.leader_since is not None and self.server is fake.servers[1]
                    promoted = leads and time.monotonic() - fake.leader_since >= fake.promotion_takes
                    self.reply(200 if leads else 503, {"role": "primary" if promoted else "replica"})
                else:
                    self.reply(404, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.posts.append((self.path, body, self.headers.get("Authorization")))
                time.sleep(fake.switch_delay)
                if fake.switch_status == 200 and fake.promote:
                    fake.move_leader(body["candidate"])
                self.reply(fake.switch_status, "Successfully switched over" if fake.switch_status == 200
                           else "switchover is not possible")

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self.servers]
        for t in self.threads:
            t.start()
        # The candidate's api_url points at the second server.
        for m in self.view["members"]:
            if m["name"] == "pg-x-2":
                m["api_url"] = f"http://127.0.0.1:{self.servers[1].server_address[1]}/patroni"

    @property
    def port(self) -> int:
        return self.servers[0].server_address[1]

    def move_leader(self, candidate: str) -> None:
        for m in self.view["members"]:
            if m["name"] == candidate:
                m["role"], m["state"] = "leader", "running"
                m.pop("lag", None)
            elif m["role"] == "leader":
                m["role"], m["state"], m["lag"] = "replica", "stopped", "unknown"
        self.leader_since = time.monotonic()

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def fake_patroni() -> Iterator[FakePatroni]:
    fake = FakePatroni(three(), dict(SYNC))
    try:
        yield fake
    finally:
        fake.close()


def node_for(base: Path, fake: FakePatroni) -> dict[str, Any]:
    node = make_node(base, ports={"postgres": 5432, "pgbouncer": 6432, "patroni": fake.port,
                                  "pgbouncer_exporter": 9631, "pgbackrest_exporter": 9854})
    secrets = Path(node["paths"]["secrets"])
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "patroni.env").write_text("PATRONI_RESTAPI_USERNAME='patroni'\nPATRONI_RESTAPI_PASSWORD='Rest-pw'\n")
    Path(node["paths"]["run"], "pgbouncer").mkdir(parents=True, exist_ok=True)  # no PgBouncer listens there
    return node


def test_the_leader_switches_over_and_waits_until_the_standby_takes_writes(base, fake_patroni, caplog):
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    began = time.monotonic()
    assert handover.handover(node, timeout=10) == "pg-x-2"
    took = time.monotonic() - began
    assert [(p, b) for p, b, _ in fake_patroni.posts] == [("/switchover", {"leader": "pg-x-1", "candidate": "pg-x-2"})]
    assert fake_patroni.posts[0][2] is not None and fake_patroni.posts[0][2].startswith("Basic ")
    assert fake_patroni.leader_since is not None and took < 5
    text = caplog.text
    assert "handing leadership to pg-x-2 (synchronous standby, lag 0 B)" in text
    # No PgBouncer here: said, and the switchover went ahead without it.
    assert "PgBouncer not paused" in text and "handed leadership to pg-x-2" in text


def test_the_pooler_waits_for_the_end_of_the_promotion_not_for_the_leader_key(base, fake_patroni, caplog):
    # Clients let go while the new leader's PostgreSQL is still in recovery would reach it
    # through HAProxy (which routes by /primary's status) and fail as read-only (2026-12-01).
    fake_patroni.promotion_takes = 1.0
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    assert handover.handover(node, timeout=10) == "pg-x-2"
    assert fake_patroni.leader_since is not None
    assert time.monotonic() - fake_patroni.leader_since >= 1.0
    assert "pg-x-2 takes writes" in caplog.text


def test_a_machine_going_down_lets_patronis_shutdown_hand_over_not_a_switchover(base, fake_patroni, caplog,
                                                                                 monkeypatch):
    # Patroni's shutdown releases the key with no failover key set, so the other replicas do
    # not sleep 2 s in the race as they do during a switchover.
    stopped: list[float] = []

    def stop() -> None:
        stopped.append(time.monotonic())
        fake_patroni.move_leader("pg-x-2")  # the synchronous standby wins the race

    monkeypatch.setattr(handover, "system_stopping", lambda run=None: True)
    monkeypatch.setattr(handover, "stop_patroni", lambda pgdata: stop())
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    assert handover.handover(node, timeout=10) == "pg-x-2"
    assert stopped and fake_patroni.posts == []  # no POST /switchover
    assert "pg-x-2 takes writes" in caplog.text and "handed leadership to pg-x-2" in caplog.text


def test_a_patroni_that_cannot_be_signalled_ends_the_handover_with_the_reason(base, fake_patroni, caplog,
                                                                               monkeypatch):
    monkeypatch.setattr(handover, "system_stopping", lambda run=None: True)
    monkeypatch.setattr(handover, "stop_patroni", lambda pgdata: "pgha-patroni.service has no running process")
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    assert handover.handover(node, timeout=10) is None
    assert "no handover: pgha-patroni.service has no running process" in caplog.text


class Shown:
    """`systemctl show --property=MainPID --value pgha-patroni.service`'s answer."""

    def __init__(self, stdout: str) -> None:
        self.returncode, self.stdout, self.stderr = 0, stdout, ""


def test_the_leader_restarting_for_its_parameters_switches_over_even_as_the_machine_stops(base, fake_patroni,
                                                                                        caplog, monkeypatch):
    # apply-config's rolling restart: always a switchover (the node stays up), whatever the
    # machine's state or the whole-cluster stop flag, and never to a member needing a restart.
    monkeypatch.setattr(handover, "system_stopping", lambda run=None: True)
    monkeypatch.setattr(handover, "stop_patroni", lambda pgdata: pytest.fail("a restart must not stop Patroni"))
    node = node_for(base, fake_patroni)
    Path(node["paths"]["run"]).mkdir(parents=True, exist_ok=True)
    (Path(node["paths"]["run"]) / handover.NO_HANDOVER_FLAG).touch()
    caplog.set_level("INFO", logger="pgha-node")
    assert handover.handover(node, timeout=10, for_restart=True) == "pg-x-2"
    assert [(p, b) for p, b, _ in fake_patroni.posts] == [("/switchover", {"leader": "pg-x-1", "candidate": "pg-x-2"})]
    assert "this member leads and is restarting: handing leadership to pg-x-2" in caplog.text


def test_the_no_pooler_pause_flag_hands_over_without_pausing(base, fake_patroni, caplog):
    node = node_for(base, fake_patroni)
    Path(node["paths"]["run"]).mkdir(parents=True, exist_ok=True)
    (Path(node["paths"]["run"]) / handover.NO_POOLER_PAUSE_FLAG).touch()
    caplog.set_level("INFO", logger="pgha-node")
    assert handover.handover(node, timeout=10) == "pg-x-2"
    assert "PgBouncer not paused (no-pooler-pause)" in caplog.text
    assert "PgBouncer not paused: " not in caplog.text and "PgBouncer resumed" not in caplog.text  # never tried


def test_a_restarts_handover_runs_as_the_postgres_user_and_answers_through_the_pipe(_root, base, monkeypatch):
    import os
    import pwd

    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(handover, "handover", lambda node, timeout, for_restart=False: f"{os.getuid()}:{for_restart}")
    assert handover.handover_as({}, "nobody", 5, for_restart=True) == f"{nobody.pw_uid}:True"
    assert os.getuid() == 0  # only the child dropped its privileges
    monkeypatch.setattr(handover, "handover", lambda node, timeout, for_restart=False: None)
    assert handover.handover_as({}, "nobody", 5) is None


def test_without_a_postmaster_patroni_is_only_told_to_stop(tmp_path: Path):
    import signal

    calls: list[list[str]] = []
    killed: list[tuple[int, int]] = []

    def run(argv: list[str], **kwargs: Any) -> Shown:
        calls.append(argv)
        return Shown(answer)

    answer = "4242\n"
    assert handover.stop_patroni(str(tmp_path), run, lambda pid, sig: killed.append((pid, sig))) is None
    assert calls == [["systemctl", "show", "--property=MainPID", "--value", "pgha-patroni.service"]]
    assert killed == [(4242, signal.SIGTERM)]  # no postmaster.pid: nothing frozen, nothing else sent
    answer = "0\n"  # not running: nothing signalled, and said
    assert handover.stop_patroni(str(tmp_path), run, lambda pid, sig: killed.append((pid, sig))) == \
        "pgha-patroni.service has no running process"
    assert len(killed) == 1


def test_postgres_stops_under_a_frozen_patroni_which_is_then_told_and_resumed(tmp_path: Path):
    import signal

    (tmp_path / "postmaster.pid").write_text("5151\n/var/lib/pgha/pg/data\n")
    sent: list[tuple[int, int]] = []
    polls = iter([True, True, False])
    assert handover.stop_patroni(str(tmp_path), lambda argv, **kw: Shown("4242\n"),
                                 lambda pid, sig: sent.append((pid, sig)), running=lambda pid: next(polls)) is None
    assert sent == [(4242, signal.SIGSTOP), (5151, signal.SIGINT), (4242, signal.SIGTERM), (4242, signal.SIGCONT)]

    # A shutdown checkpoint longer than the bound is left to Patroni's own stop; a postmaster
    # that cannot be signalled too. Either way Patroni is told, and always resumed.
    sent.clear()
    assert handover.stop_patroni(str(tmp_path), lambda argv, **kw: Shown("4242\n"),
                                 lambda pid, sig: sent.append((pid, sig)), running=lambda pid: True, bound=0.1) is None
    assert sent == [(4242, signal.SIGSTOP), (5151, signal.SIGINT), (4242, signal.SIGTERM), (4242, signal.SIGCONT)]

    def refuse_postmaster(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        if pid == 5151:
            raise PermissionError(1, "Operation not permitted")

    sent.clear()
    assert handover.stop_patroni(str(tmp_path), lambda argv, **kw: Shown("4242\n"), refuse_postmaster,
                                 running=lambda pid: True) is None
    assert sent == [(4242, signal.SIGSTOP), (5151, signal.SIGINT), (4242, signal.SIGTERM), (4242, signal.SIGCONT)]

    def refuse_term(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        if sig == signal.SIGTERM:
            raise ProcessLookupError(3, "No such process")

    sent.clear()
    assert handover.stop_patroni(str(tmp_path), lambda argv, **kw: Shown("4242\n"), refuse_term,
                                 running=lambda pid: False) == \
        "cannot signal pgha-patroni.service's process 4242: No such process"
    assert sent[-1] == (4242, signal.SIGCONT)  # resumed even so


# A Patroni stand-in: records, at SIGTERM, the state of the postmaster its postmaster.pid names.
FAKE_PATRONI = """
import signal, sys, time
pgdata, out = sys.argv[1], sys.argv[2]
def term(*_):
    postmaster = int(open(pgdata + "/postmaster.pid").readline())
    try:
        state = open(f"/proc/{postmaster}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    open(out, "w").write(state)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(out + ".ready", "w").close()
while True:
    time.sleep(0.01)
"""
# A postmaster stand-in: its fast shutdown takes 0.3 s and notes Patroni's state meanwhile.
FAKE_POSTMASTER = """
import signal, sys, time
patroni, out = int(sys.argv[1]), sys.argv[2]
def fast_shutdown(*_):
    time.sleep(0.3)
    open(out, "w").write(open(f"/proc/{patroni}/stat").read().rsplit(")", 1)[1].split()[0])
    sys.exit(0)
signal.signal(signal.SIGINT, fast_shutdown)
open(out + ".ready", "w").close()
while True:
    time.sleep(0.01)
"""


def test_real_processes_patroni_frozen_while_postgres_stops_and_told_once_it_is_down(tmp_path: Path):
    import subprocess
    import sys

    patroni_saw, postmaster_saw = tmp_path / "postmaster-state", tmp_path / "patroni-state"
    patroni = subprocess.Popen([sys.executable, "-c", FAKE_PATRONI, str(tmp_path), str(patroni_saw)])
    # The postmaster stand-in is this test's child and stays a zombie until reaped, as the
    # postmaster does under a frozen Patroni: a zombie counts as stopped.
    postmaster = subprocess.Popen([sys.executable, "-c", FAKE_POSTMASTER, str(patroni.pid), str(postmaster_saw)])
    try:
        (tmp_path / "postmaster.pid").write_text(f"{postmaster.pid}\n{tmp_path}\n")
        deadline = time.monotonic() + 10
        while not (Path(f"{patroni_saw}.ready").exists() and Path(f"{postmaster_saw}.ready").exists()):
            assert time.monotonic() < deadline, "the stand-ins did not start"
            time.sleep(0.02)
        began = time.monotonic()
        assert handover.stop_patroni(str(tmp_path), lambda argv, **kw: Shown(f"{patroni.pid}\n")) is None
        assert time.monotonic() - began >= 0.3  # it waited for the postmaster's shutdown
        assert patroni.wait(timeout=10) == 0
        assert postmaster_saw.read_text() == "T"  # Patroni was frozen during the shutdown
        assert patroni_saw.read_text() in ("Z", "gone")  # and told only once PostgreSQL was down
        assert postmaster.wait(timeout=10) == 0
    finally:
        for proc in (patroni, postmaster):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_replica_returns_at_once_without_asking_for_anything(base, fake_patroni, caplog):
    fake_patroni.move_leader("pg-x-2")  # this member (pg-x-1) no longer leads
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    began = time.monotonic()
    assert handover.handover(node, timeout=10) is None
    assert time.monotonic() - began < 2 and fake_patroni.posts == []
    assert "no handover: this member is not the leader (pg-x-2 is)" in caplog.text


def test_a_refused_switchover_ends_the_handover_at_once(base, fake_patroni, caplog):
    fake_patroni.switch_status = 412
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    began = time.monotonic()
    assert handover.handover(node, timeout=10) is None
    assert time.monotonic() - began < 3 and len(fake_patroni.posts) == 1
    assert "no handover: Patroni refused: POST /switchover: 412 switchover is not possible" in caplog.text
    assert "stopping anyway" in caplog.text


def test_a_standby_that_never_takes_over_costs_at_most_the_timeout(base, fake_patroni, caplog):
    fake_patroni.promote = False  # Patroni says 200 but the DCS never names the candidate
    node = node_for(base, fake_patroni)
    caplog.set_level("INFO", logger="pgha-node")
    began = time.monotonic()
    assert handover.handover(node, timeout=2) is None
    took = time.monotonic() - began
    assert 1.9 <= took < 3.5, took
    assert "no handover: pg-x-2 did not take writes within the handover's bound" in caplog.text


def test_the_command_exits_0_when_patroni_is_not_there(base):
    # The stop of a member whose Patroni is down (or not yet up) must not fail or wait.
    node = make_node(base, ports={"postgres": 5432, "pgbouncer": 6432, "patroni": 1,
                                  "pgbouncer_exporter": 9631, "pgbackrest_exporter": 9854})
    node_json = write_json(base / "node.json", node)
    began = time.monotonic()
    res = run_cli("--node-json", str(node_json), "handover", "--timeout", "5")
    assert res.returncode == 0 and time.monotonic() - began < 5
    assert "no handover: cannot ask the local Patroni" in res.stderr


def test_the_unit_stops_before_what_the_handover_needs_and_outlasts_its_bound():
    spec = make_spec({"replicas": 3})  # member 4 runs no etcd
    ctx = ec2_context(spec)
    for m in (spec.members[0], spec.members[-1]):
        files = {f.path: f.content for f in render_node(spec, m, ctx)}
        lines = files["/etc/systemd/system/pgha-handover.service"].splitlines()

        def value(key: str) -> str:
            return next(line for line in lines if line.startswith(f"{key}=")).split("=", 1)[1]

        after = value("After").split()
        assert {"pgha-patroni.service", "pgha-pgbouncer.service", "pgha-haproxy.service",
                "network-online.target"} <= set(after)
        assert ("pgha-etcd.service" in after) == m.runs_etcd
        assert value("ExecStop").endswith(" handover") and value("ExecStart") == "/bin/true"
        assert value("Type") == "oneshot" and value("RemainAfterExit") == "yes"
        # Above the agent's bound, with room for its own start on a busy node.
        assert int(value("TimeoutStopSec")) >= handover.HANDOVER_TIMEOUT + 10
        # Started after what it is ordered after (the bootstrap starts them in this order).
        units = unit_names(spec, m, ctx)
        assert all(units.index(u) < units.index("pgha-handover.service") for u in after if u in units)


def test_only_a_machine_shutting_down_closes_its_pooler_after_the_handover():
    import subprocess as sp

    from pgha.agent import handover as mod

    def answering(state: str):
        return lambda argv, **kw: sp.CompletedProcess(argv, 0 if state == "running" else 1, state + "\n", "")

    assert mod.system_stopping(answering("stopping")) is True
    # The unit stopped alone (a drill, an operator): the pooler resumes and keeps serving.
    assert mod.system_stopping(answering("running")) is False
    assert mod.system_stopping(answering("degraded")) is False

    def missing(argv, **kw):
        raise FileNotFoundError("systemctl")

    assert mod.system_stopping(missing) is False
