"""Tests for pgha.local.supervisor: unit parsing and running units as real processes."""

import os
import pwd
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgha.local.supervisor import (
    Supervisor,
    UnitError,
    UnitNotActiveError,
    UnitStartError,
    parse_time_span,
    parse_unit,
)

PY = "/usr/bin/python3"  # readable by `nobody`, unlike a venv under a 0700 tmp dir

FULL_UNIT = r"""
# rendered by pgha
[Unit]
Description=Patroni for node1
After=network-online.target etcd.service
Requires=etcd.service
Wants=network-online.target pgbouncer.service

[Service]
Type=notify
User=postgres
Group=postgres
Environment=PATRONI_NAME=node1 "PATRONI_SCOPE=pg ha"
Environment=EMPTY=
EnvironmentFile=-/etc/pgha/patroni.env
EnvironmentFile=/etc/pgha/secrets.env
WorkingDirectory=~
ExecStartPre=/usr/bin/install -d -o postgres /var/lib/pgha
ExecStartPre=-/usr/bin/false
ExecStartPre=+/usr/bin/chown postgres /etc/pgha
ExecStart=/usr/bin/patroni \
    /etc/patroni/${PATRONI_NAME}.yml
ExecStartPost=/bin/true
ExecReload=/bin/kill -HUP $MAINPID
ExecStop=/bin/kill -INT $MAINPID
Restart=on-failure
RestartSec=5s
TimeoutStopSec=1min 30s
KillSignal=SIGINT
LimitNOFILE=1024:65536
RuntimeDirectory=patroni
ProtectSystem=full

[Install]
WantedBy=multi-user.target
"""


def test_parse_unit_all_directives() -> None:
    unit = parse_unit(FULL_UNIT, name="patroni.service")
    assert unit.name == "patroni"
    assert unit.description == "Patroni for node1"
    assert unit.after == ("network-online.target", "etcd")
    assert unit.requires == ("etcd",)
    assert unit.wants == ("network-online.target", "pgbouncer")
    assert unit.type == "simple"  # notify is treated as simple
    assert (unit.user, unit.group) == ("postgres", "postgres")
    assert unit.environment == {"PATRONI_NAME": "node1", "PATRONI_SCOPE": "pg ha", "EMPTY": ""}
    assert [(str(e.path), e.optional) for e in unit.environment_files] == [
        ("/etc/pgha/patroni.env", True),
        ("/etc/pgha/secrets.env", False),
    ]
    assert unit.working_directory == "~"
    assert [c.line for c in unit.exec_start_pre] == [
        "/usr/bin/install -d -o postgres /var/lib/pgha", "/usr/bin/false",
        "/usr/bin/chown postgres /etc/pgha",
    ]
    assert [(c.ignore_failure, c.privileged) for c in unit.exec_start_pre] == [
        (False, False), (True, False), (False, True),
    ]
    assert unit.exec_start[0].argv(unit.environment) == [
        "/usr/bin/patroni", "/etc/patroni/node1.yml",
    ]
    assert unit.exec_stop[0].argv({"MAINPID": "42"}) == ["/bin/kill", "-INT", "42"]
    assert len(unit.exec_start_post) == 1 and len(unit.exec_reload) == 1
    assert unit.restart == "on-failure" and unit.restart_sec == 5.0
    assert unit.timeout_stop_sec == 90.0
    assert unit.kill_signal == signal.SIGINT
    assert unit.limit_nofile == (1024, 65536)
    assert unit.runtime_directory == ("patroni",)
    assert unit.wanted_by == ("multi-user.target",)
    assert unit.ignored == ("Service.ProtectSystem",)


def test_command_expansion_like_systemd() -> None:
    unit = parse_unit("[Service]\nExecStart=/bin/echo $OPTS ${ONE} x${ONE}y $$HOME 100%% $UNSET\n")
    env = {"OPTS": "-a  -b", "ONE": "two words"}
    assert unit.exec_start[0].argv(env) == [
        "/bin/echo", "-a", "-b", "two words", "xtwo wordsy", "$HOME", "100%",
    ]
    literal = parse_unit("[Service]\nExecStart=:/bin/echo $OPTS\n")
    assert literal.exec_start[0].argv(env) == ["/bin/echo", "$OPTS"]


def test_parse_errors_and_time_spans() -> None:
    with pytest.raises(UnitError, match="no ExecStart"):
        parse_unit("[Service]\nType=simple\n")
    with pytest.raises(UnitError, match="Type=forking"):
        parse_unit("[Service]\nType=forking\nExecStart=/bin/true\n")
    with pytest.raises(UnitError, match="oneshot"):
        parse_unit("[Service]\nExecStart=/bin/true\nExecStart=/bin/true\n")
    # An empty assignment resets a list, as in systemd.
    reset = parse_unit("[Service]\nExecStartPre=/bin/a\nExecStartPre=\nExecStart=/bin/true\n")
    assert reset.exec_start_pre == ()
    assert parse_time_span("500ms") == 0.5
    assert parse_time_span("2min 5s") == 125.0
    assert parse_time_span("infinity") == float("inf")
    with pytest.raises(UnitError):
        parse_time_span("5 parsecs")


# ---------------------------------------------------------------------- running units


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    (tmp_path / "units").mkdir()
    supervisor = Supervisor(
        unit_dir=tmp_path / "units", state_dir=tmp_path / "state", run_root=tmp_path / "run"
    )
    yield supervisor
    # Never leave test processes behind, whatever the test did.
    for name in supervisor.units():
        try:
            supervisor.stop(name, timeout=2)
        except UnitError:
            pass  # a test may leave a deliberately broken unit


def write_unit(sup: Supervisor, name: str, body: str) -> None:
    (sup.unit_dir / f"{name}.service").write_text(textwrap.dedent(body))


def py_unit(code: str, *, unit: str = "", service: str = "") -> str:
    """A unit whose ExecStart runs ``code`` (single line, ';'-separated) with python3."""
    return f"[Unit]\n{unit}\n[Service]\n{service}\nExecStart={PY} -c \"{code}\"\n"


LOOP = "import time; exec('while True: time.sleep(0.1)')"


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as exited)."""
    try:
        return proc_status(pid)["State"].startswith(("Z", "X"))
    except FileNotFoundError:
        return True


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_start_as_nobody_with_environment_file_and_log(sup: Supervisor, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text('# comment\nGREETING="hello there"\nTARGET=world\n')
    code = (
        "import os, sys, time; print('uid', os.getuid(), os.environ['GREETING'], "
        "os.environ['TARGET'], os.environ['FROM_UNIT'], os.environ['HOME'], flush=True); "
        "print('to stderr', file=sys.stderr, flush=True); exec('while True: time.sleep(0.1)')"
    )
    write_unit(sup, "app", py_unit(code, service=(
        "User=nobody\nEnvironment=FROM_UNIT=unit-value\n"
        f"EnvironmentFile={env_file}\nEnvironmentFile=-/nonexistent/optional.env\n"
        "RuntimeDirectory=app-rt\n"
    )))
    sup.start("app")
    pid = sup.pid("app")
    assert pid is not None and sup.is_active("app")
    nobody = pwd.getpwnam("nobody")
    status = proc_status(pid)
    assert status["Uid"].split()[0] == str(nobody.pw_uid)
    assert status["Gid"].split()[0] == str(nobody.pw_gid)
    assert os.getpgid(pid) == pid  # own process group
    deadline = time.monotonic() + 5
    while "to stderr" not in sup.log_tail("app") and time.monotonic() < deadline:
        time.sleep(0.05)
    log = sup.log_tail("app")
    assert f"uid {nobody.pw_uid} hello there world unit-value {nobody.pw_dir}" in log
    assert "to stderr" in log
    runtime = tmp_path / "run" / "app-rt"
    assert runtime.is_dir() and runtime.stat().st_uid == nobody.pw_uid
    assert sup.status()["app"].sub == "running"

    assert sup.stop("app") is True
    assert gone(pid)
    assert not sup.is_active("app") and sup.pid("app") is None
    assert not runtime.exists()
    assert sup.status()["app"].sub == "dead"


def test_missing_required_environment_file_fails(sup: Supervisor) -> None:
    write_unit(sup, "app", py_unit(LOOP, service="EnvironmentFile=/nonexistent/x.env"))
    with pytest.raises(UnitStartError, match="EnvironmentFile /nonexistent/x.env"):
        sup.start("app")


def test_stop_escalates_to_sigkill(sup: Supervisor) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); exec('while True: time.sleep(0.1)')"
    )
    write_unit(sup, "stubborn", py_unit(code, service="TimeoutStopSec=1"))
    sup.start("stubborn")
    pid = sup.pid("stubborn")
    assert pid is not None
    began = time.monotonic()
    assert sup.stop("stubborn") is True
    took = time.monotonic() - began
    assert 0.9 <= took < 5, took
    assert gone(pid)
    assert "sending SIGKILL" in sup.log_tail("stubborn")


def test_stop_kills_the_whole_group_and_unfreezes(sup: Supervisor) -> None:
    code = (
        "import subprocess, time; "
        "subprocess.Popen(['sleep', '300']); exec('while True: time.sleep(0.1)')"
    )
    write_unit(sup, "parent", py_unit(code))
    sup.start("parent")
    pid = sup.pid("parent")
    assert pid is not None
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(children) == 1
    sup.kill("parent", signal.SIGSTOP)
    deadline = time.monotonic() + 5  # delivery is asynchronous
    while not proc_status(pid)["State"].startswith("T") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc_status(pid)["State"].startswith("T")
    assert sup.is_active("parent")  # frozen is still active, as for systemd
    began = time.monotonic()
    sup.stop("parent", timeout=5)
    assert time.monotonic() - began < 3  # SIGCONT after SIGTERM: no wait for SIGKILL
    assert gone(children[0])
    assert gone(pid)


def test_kill_for_drills(sup: Supervisor) -> None:
    write_unit(sup, "victim", py_unit(LOOP))
    sup.start("victim")
    pid = sup.kill("victim", "SIGKILL")
    deadline = time.monotonic() + 5
    while sup.is_active("victim") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sup.is_active("victim")
    assert sup.status()["victim"].sub == "failed"  # died without stop()
    with pytest.raises(UnitNotActiveError):
        sup.kill("victim")
    sup.start("victim")  # comes back
    assert sup.pid("victim") not in (None, pid)


def test_exec_stop_gets_mainpid(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "stopped-by-execstop"
    code = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGUSR1, "
        f"lambda *a: (open('{marker}', 'w').write('ok'), sys.exit(0))); "
        "exec('while True: time.sleep(0.1)')"
    )
    write_unit(sup, "graceful", py_unit(code, service="ExecStop=/bin/kill -USR1 $MAINPID\n"))
    sup.start("graceful")
    sup.stop("graceful")
    assert marker.read_text() == "ok"


def test_reload_runs_exec_reload_with_mainpid(sup: Supervisor) -> None:
    code = (
        "import signal, time; "
        "signal.signal(signal.SIGHUP, lambda *a: print('reloaded', flush=True)); "
        "exec('while True: time.sleep(0.1)')"
    )
    write_unit(sup, "hup", py_unit(code, service="ExecReload=/bin/kill -HUP $MAINPID\n"))
    sup.start("hup")
    pid = sup.pid("hup")
    sup.reload("hup")
    deadline = time.monotonic() + 5
    while "reloaded" not in sup.log_tail("hup") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reloaded" in sup.log_tail("hup")
    assert sup.pid("hup") == pid  # reloaded in place, not restarted


def test_oneshot_success_and_failure(sup: Supervisor, tmp_path: Path) -> None:
    out = tmp_path / "oneshot-ran"
    write_unit(sup, "init", (
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"ExecStart=/bin/sh -c 'echo first >> {out}'\n"
        f"ExecStart=/bin/sh -c 'echo second >> {out}'\n"
    ))
    sup.start("init")
    assert out.read_text() == "first\nsecond\n"
    state = sup.status()["init"]
    assert (state.active, state.sub, state.result) == (True, "exited", "success")
    assert state.exit_code == 0
    sup.start("init")  # active (RemainAfterExit): not run again
    assert out.read_text() == "first\nsecond\n"
    sup.stop("init")  # as systemctl stop: inactive, so the next start runs it again
    assert not sup.is_active("init")
    sup.start("init")
    assert out.read_text() == "first\nsecond\nfirst\nsecond\n"

    write_unit(sup, "broken", (
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo doomed; exit 3'\n"
    ))
    with pytest.raises(UnitStartError, match="status 3") as err:
        sup.start("broken")
    assert "doomed" in err.value.log_tail
    state = sup.status()["broken"]
    assert (state.active, state.sub, state.result) == (False, "failed", "failed")
    assert state.exit_code == 3


def test_failing_exec_start_pre_raises_with_log_tail(sup: Supervisor) -> None:
    write_unit(sup, "app", py_unit(LOOP, service=(
        "ExecStartPre=-/bin/false\n"
        "ExecStartPre=/bin/sh -c 'echo config check failed: bad port >&2; exit 1'\n"
    )))
    with pytest.raises(UnitStartError) as err:
        sup.start("app")
    message = str(err.value)
    assert "ExecStartPre=" in message and "status 1" in message
    assert "config check failed: bad port" in message
    assert not sup.is_active("app")  # ExecStart never ran


def test_main_process_exiting_at_once_raises(sup: Supervisor) -> None:
    write_unit(sup, "crashy", py_unit("import sys; print('cannot bind'); sys.exit(2)"))
    with pytest.raises(UnitStartError, match="exited with status 2") as err:
        sup.start("crashy")
    assert "cannot bind" in err.value.log_tail
    assert sup.status()["crashy"].sub == "failed"


def test_dependency_order_and_start_all_skips_active(sup: Supervisor, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    for name, deps in (
        ("etcd", ""),
        ("patroni", "After=etcd.service\nRequires=etcd.service"),
        ("pgbouncer", "After=patroni.service"),
        ("haproxy", "Requires=pgbouncer.service"),
    ):
        write_unit(sup, name, py_unit(
            f"open('{trace}', 'a').write('{name}\\\\n'); import time; "
            "exec('while True: time.sleep(0.1)')",
            unit=deps + "\nAfter=network-online.target",
            service="User=root",
        ))
    assert sup.start_order() == ["etcd", "patroni", "pgbouncer", "haproxy"]
    # Asking for haproxy alone pulls in what it requires, in order.
    assert sup.start_order(["haproxy"]) == ["pgbouncer", "haproxy"]

    assert sup.start_all() == ["etcd", "patroni", "pgbouncer", "haproxy"]
    assert trace.read_text().split() == ["etcd", "patroni", "pgbouncer", "haproxy"]
    first_pids = {n: sup.pid(n) for n in sup.units()}

    sup.kill("patroni", signal.SIGKILL)
    deadline = time.monotonic() + 5
    while sup.is_active("patroni") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sup.start_all() == ["patroni"]  # only the missing member
    assert {n: sup.pid(n) for n in ("etcd", "pgbouncer", "haproxy")} == {
        n: first_pids[n] for n in ("etcd", "pgbouncer", "haproxy")
    }
    assert sup.stop_all() == ["haproxy", "pgbouncer", "patroni", "etcd"]
    assert not any(s.active for s in sup.status().values())


def test_ordering_cycle_is_reported(sup: Supervisor) -> None:
    write_unit(sup, "a", py_unit(LOOP, unit="After=b.service"))
    write_unit(sup, "b", py_unit(LOOP, unit="After=a.service"))
    with pytest.raises(UnitError, match="cycle"):
        sup.start_order()


def test_stale_pid_file_of_another_process_is_not_killed(sup: Supervisor) -> None:
    write_unit(sup, "app", py_unit(LOOP))
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        sup.state_dir.mkdir(parents=True)
        # Recycled pid: the recorded start time is not the stranger's.
        (sup.state_dir / "app.pid").write_text(f"{stranger.pid}\n12345\n")
        assert not sup.is_active("app") and sup.pid("app") is None
        assert sup.stop("app") is False
        with pytest.raises(UnitNotActiveError):
            sup.kill("app", signal.SIGKILL)
        # A bare pid (no start time) is not trusted either.
        (sup.state_dir / "app.pid").write_text(f"{stranger.pid}\n")
        assert sup.stop("app") is False
        assert stranger.poll() is None, "the supervisor signalled a process it did not start"
        assert not (sup.state_dir / "app.pid").exists()
        # start() works despite the stale file and gets a new pid.
        sup.start("app")
        assert sup.pid("app") not in (None, stranger.pid)
        sup.stop("app")
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_limit_nofile_applies_to_the_process(sup: Supervisor) -> None:
    write_unit(sup, "limited", py_unit(LOOP, service="User=nobody\nLimitNOFILE=512:4096"))
    sup.start("limited")
    pid = sup.pid("limited")
    assert pid is not None
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(li for li in limits.splitlines() if li.startswith("Max open files"))
    assert line.split()[3:5] == ["512", "4096"]


def test_start_is_idempotent(sup: Supervisor) -> None:
    write_unit(sup, "app", py_unit(LOOP))
    sup.start("app")
    pid = sup.pid("app")
    sup.start("app")
    assert sup.pid("app") == pid
    # A fresh Supervisor (a later `up` run) recognises the running process.
    again = Supervisor(unit_dir=sup.unit_dir, state_dir=sup.state_dir, run_root=sup.run_root)
    assert again.is_active("app") and again.pid("app") == pid
    assert again.start_all() == []


def test_kill_mode_process_lets_the_main_process_stop_its_children(sup: Supervisor, tmp_path: Path) -> None:
    # Like Patroni: on SIGTERM the main process shuts its child down itself, then exits.
    marker = tmp_path / "child-got"
    code = (
        "import signal, subprocess, sys, time; "
        f"child = subprocess.Popen(['{PY}', '-c', "
        f"'import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (open(\\\"{marker}\\\", \\\"w\\\").write(\\\"from-parent\\\"), sys.exit(0))); "
        "exec(\\\"while True: time.sleep(0.1)\\\")']); "
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), child.send_signal(signal.SIGTERM), child.wait(), sys.exit(0))); "
        "exec('while True: time.sleep(0.1)')"
    )
    write_unit(sup, "manager", py_unit(code, service="KillMode=process\nTimeoutStopSec=10"))
    assert sup.unit("manager").kill_mode == "process"
    sup.start("manager")
    time.sleep(0.5)
    pid = sup.pid("manager")
    assert pid is not None
    sup.stop("manager")
    assert gone(pid)
    # With control-group the child would have had SIGTERM straight away; here only its parent's.
    assert marker.read_text() == "from-parent"


def test_standard_output_append_goes_to_the_named_file(sup: Supervisor, tmp_path: Path) -> None:
    target = tmp_path / "logs" / "app.log"
    write_unit(sup, "talker", py_unit("print('hello from the unit', flush=True); import time; exec('while True: time.sleep(0.1)')",
                                      service=f"StandardOutput=append:{target}"))
    sup.start("talker")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "hello from the unit" not in (target.read_text() if target.exists() else ""):
        time.sleep(0.05)
    assert "hello from the unit" in target.read_text()
    assert sup.log_path("talker") == target
    assert not (sup.state_dir / "talker.log").exists()
