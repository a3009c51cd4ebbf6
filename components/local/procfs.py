"""The host's processes as /proc shows them: the one reader the local runner and its tests use.

Every call reads /proc afresh and treats a process that exits mid-read as absent (a vanished
pid is the normal case when scanning), so none of them raises for a process that is gone.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat the runner uses."""

    pid: int
    comm: str
    state: str  # R, S, D, T, Z, X ...
    ppid: int
    starttime: int  # clock ticks since boot: with the pid, a process's identity across pid reuse


def pids() -> Iterator[int]:
    """Every process's pid (thread group leaders only, as /proc lists them)."""
    for entry in os.listdir(PROC):
        if entry.isdigit():
            yield int(entry)


def stat(pid: int) -> Stat | None:
    """/proc/<pid>/stat parsed (None: no such process). The command name sits in parentheses
    and may itself hold ``)`` or spaces, so the fields are split after its last ``)``."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return Stat(pid=pid, comm=head.split("(", 1)[1], state=fields[0], ppid=int(fields[1]),
                starttime=int(fields[19]))


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); None
    when it is gone or a zombie (nothing left to signal)."""
    found = stat(pid)
    return None if found is None or found.state == "Z" else found.starttime


def cmdline(pid: int) -> bytes | None:
    """The raw command line, arguments separated by NUL (None: gone; empty for kernel threads)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None


def comm(pid: int) -> str:
    """The process's name (``comm``), "" when it is gone."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, forked by any of its threads. Read from each thread's
    ``children`` file; a kernel without CONFIG_PROC_CHILDREN gets a scan of every ppid."""
    tasks = PROC / str(pid) / "task"
    try:
        threads = os.listdir(tasks)
    except OSError:
        return []
    if not (tasks / str(pid) / "children").exists():
        return sorted(p for p in pids() if p != pid and (s := stat(p)) is not None and s.ppid == pid)
    found: set[int] = set()
    for thread in threads:
        try:
            found.update(int(p) for p in (tasks / thread / "children").read_text().split())
        except OSError:
            continue
    return sorted(found)


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant of it, parents before their children ([] when it is gone)."""
    if stat(pid) is None:
        return []
    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        found.append(current)
        todo += children(current)
    return found


def ns_pids(pid: int) -> list[int]:
    """The pid in each pid namespace the process is in, outermost first (``NSpid`` of its status):
    the last is the pid a machine's own tools know it by."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return []
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return []


def mentioning(text: str, *, exclude: int | None = None) -> list[int]:
    """Processes whose command line carries ``text`` (what ``ps`` would show anyone), but
    ``exclude`` (say the caller itself)."""
    needle = text.encode()
    return [p for p in pids() if p != exclude and needle in (cmdline(p) or b"")]


def holding(path: Path | str) -> list[int]:
    """Processes with a file descriptor open on ``path`` (its resolved name); processes whose
    descriptors this user may not read are not seen."""
    target = os.path.realpath(path)
    found = []
    for p in pids():
        fd_dir = PROC / str(p) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd_dir / fd) == target:
                    found.append(p)
                    break
            except OSError:
                continue
    return found


def mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, file system type) of every mount this process sees, as
    /proc/mounts spells them (blanks in a path stay escaped as ``\\040``)."""
    found = []
    for line in (PROC / "mounts").read_text().splitlines():
        fields = line.split()
        found.append((fields[0], fields[1], fields[2]))
    return found
