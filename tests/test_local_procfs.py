"""pgha.local.procfs against this test process and children it spawns (no root, no machines)."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgha.local import procfs

# A child that opens a file, reports ready and then waits: its command line names the file.
HOLDER = "import sys, time; f = open(sys.argv[1]); print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    held = tmp_path / "held file (x).txt"  # a blank and parentheses: nothing parses names loosely
    held.write_text("x")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield child, held
    finally:
        child.kill()
        child.wait()


def test_pids_lists_this_process_and_stat_reads_it() -> None:
    assert os.getpid() in set(procfs.pids())
    own = procfs.stat(os.getpid())
    assert own is not None
    assert own.pid == os.getpid() and own.ppid == os.getppid()
    assert own.state in ("R", "S")
    assert own.starttime > 0 and procfs.start_time(os.getpid()) == own.starttime


def test_a_gone_process_reads_as_absent() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procfs.stat(child.pid) is None
    assert procfs.start_time(child.pid) is None
    assert procfs.cmdline(child.pid) is None and procfs.comm(child.pid) == ""
    assert procfs.children(child.pid) == [] and procfs.tree(child.pid) == []
    assert procfs.ns_pids(child.pid) == []


def test_a_zombie_has_no_start_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while (s := procfs.stat(child.pid)) is not None and s.state != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert s is not None and s.state == "Z"  # exited, not yet reaped
        assert procfs.start_time(child.pid) is None
    finally:
        child.wait()


def test_a_child_is_seen_with_its_parent_command_line_and_open_file(
        holder: tuple[subprocess.Popen[str], Path]) -> None:
    child, held = holder
    assert child.pid in procfs.children(os.getpid())
    tree = procfs.tree(os.getpid())
    assert tree[0] == os.getpid() and child.pid in tree
    stat = procfs.stat(child.pid)
    assert stat is not None and stat.ppid == os.getpid() and stat.comm == procfs.comm(child.pid)
    assert procfs.cmdline(child.pid) == b"\0".join([sys.executable.encode(), b"-c", HOLDER.encode(),
                                                    str(held).encode()]) + b"\0"
    assert procfs.mentioning(str(held)) == [child.pid]
    assert procfs.mentioning(str(held), exclude=child.pid) == []
    assert procfs.holding(held) == [child.pid]
    assert procfs.holding(held.parent / "nothing-holds-this") == []


def test_grandchildren_are_in_the_tree_not_among_the_children() -> None:
    script = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(60)']); print(c.pid, flush=True); time.sleep(60)")
    middle = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert middle.stdout is not None
        grandchild = int(middle.stdout.readline())
        assert procfs.children(middle.pid) == [grandchild]
        assert grandchild not in procfs.children(os.getpid())
        assert procfs.tree(middle.pid) == [middle.pid, grandchild]
    finally:
        for pid in procfs.tree(middle.pid)[::-1]:
            os.kill(pid, 9)
        middle.wait()


def test_a_child_of_another_thread_counts() -> None:
    """A child forked by a thread other than the main one is a child too: /proc lists it under
    that thread's ``children`` while the thread lives (afterwards the kernel hands it to another)."""
    started: list[subprocess.Popen[bytes]] = []
    checked = threading.Event()

    def spawn() -> None:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        checked.wait(30)

    thread = threading.Thread(target=spawn)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            time.sleep(0.01)
        main_only = (Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())
        assert str(started[0].pid) not in main_only  # what reading the main thread's list alone missed
        assert started[0].pid in procfs.children(os.getpid())
    finally:
        checked.set()
        thread.join()
        started[0].kill()
        started[0].wait()


def test_ns_pids_of_a_process_in_the_host_namespace_is_its_pid() -> None:
    assert procfs.ns_pids(os.getpid())[-1] == os.getpid()


def test_mounts_include_proc() -> None:
    assert any(point == "/proc" and kind == "proc" for _, point, kind in procfs.mounts())
