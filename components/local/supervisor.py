"""Run rendered systemd service units without systemd.

On EC2 the node bootstrap installs ``*.service`` files and systemd runs them. The
loopback cluster runs on machines where PID 1 is not systemd, so this module executes
the same unit files the way systemd would, for the subset of directives pgha renders:

* ``ExecStartPre=`` lines run in order as the unit's ``User=``/``Group=`` (a ``+`` prefix
  runs as root, a ``-`` prefix ignores failure), then ``ExecStart=`` runs in the
  background in its own session (process group), output appended to
  ``<state_dir>/<unit>.log``, its pid and kernel start time recorded in
  ``<state_dir>/<unit>.pid``.
* Processes start with a clean environment like systemd's (``PATH``, ``LANG``, the
  user's ``HOME``/``USER``/``LOGNAME``/``SHELL``) plus ``Environment=`` and
  ``EnvironmentFile=``; ``$VAR``/``${VAR}`` in command lines expand from it.
* Stopping runs ``ExecStop=`` if any, then sends ``KillSignal=`` (and ``SIGCONT``, so a
  process frozen by a drill can act on it) to the whole process group, and ``SIGKILL``
  after ``TimeoutStopSec=`` - systemd's ``KillMode=control-group`` with process groups
  standing in for cgroups.
* ``RuntimeDirectory=`` is created under ``run_root`` (``/run`` by default) owned by the
  unit's user, exported as ``$RUNTIME_DIRECTORY`` and removed on stop, as systemd does.

Deliberately not emulated: there is no resident manager, so ``Restart=`` is parsed but
nothing restarts a dead process by itself - ``start_all()`` starts whatever is not
running, which is what a re-run of the loopback cluster's ``up`` does. ``Type=notify``
is treated as ``simple`` (no ``NOTIFY_SOCKET``); ``Type=forking`` is rejected. Unit
specifiers other than ``%%`` are not expanded. Directives outside the subset (sandboxing
and the like) are recorded in ``Unit.ignored`` rather than failing, as systemd does with
unknown settings.

The supervisor never signals a process it did not start: a pid file is trusted only
while ``/proc/<pid>/stat`` shows the kernel start time recorded when the process was
spawned, so a recycled pid is left alone.
"""

import contextlib
import datetime
import grp
import json
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .netns import entered

__all__ = [
    "Command",
    "EnvironmentFile",
    "Supervisor",
    "Unit",
    "UnitError",
    "UnitNotActiveError",
    "UnitStartError",
    "UnitState",
    "parse_time_span",
    "parse_unit",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SERVICE_TYPES = ("simple", "exec", "oneshot")
# systemd's status for "could not execute the command" (EXIT_EXEC).
EXIT_EXEC = 203


class UnitError(ValueError):
    """A unit file uses syntax or a directive value this supervisor cannot honour."""


class UnitStartError(RuntimeError):
    """A unit failed to start; the message ends with the tail of its log."""

    def __init__(self, unit: str, reason: str, log_tail: str) -> None:
        super().__init__(f"{unit}: {reason}\n--- last lines of the log ---\n{log_tail}")
        self.unit = unit
        self.reason = reason
        self.log_tail = log_tail


class UnitNotActiveError(RuntimeError):
    """The operation needs a running unit started by this supervisor."""


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Command:
    """One ``Exec*=`` line with its systemd prefixes decoded."""

    line: str
    ignore_failure: bool = False  # '-' prefix
    privileged: bool = False  # '+' prefix: run as root whatever User= says
    expand: bool = True  # ':' prefix turns off $VAR expansion

    def argv(self, env: Mapping[str, str]) -> list[str]:
        """Split the line like systemd and expand ``${VAR}`` (one word) / ``$VAR`` (split)."""
        try:
            words = shlex.split(self.line)
        except ValueError as exc:
            raise UnitError(f"cannot split command line {self.line!r}: {exc}") from None
        if not self.expand:
            return words
        out: list[str] = []
        for word in words:
            bare = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if bare:
                # systemd: a bare $VAR word becomes zero or more words split at whitespace.
                out.extend(env.get(bare.group(1), "").split())
                continue
            out.append(_expand_word(word, env))
        return out


def _expand_word(word: str, env: Mapping[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(0) == "%%":
            return "%"
        return env.get(match.group(1) or match.group(2), "")

    return re.sub(r"\$\$|%%|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, word)


@dataclass(frozen=True)
class EnvironmentFile:
    """An ``EnvironmentFile=`` entry; ``optional`` is the ``-`` prefix (missing is fine)."""

    path: Path
    optional: bool = False


@dataclass(frozen=True)
class Unit:
    """The parsed subset of a ``.service`` file."""

    name: str = ""
    description: str = ""
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    type: str = "simple"
    user: str | None = None
    group: str | None = None
    supplementary_groups: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    environment_files: tuple[EnvironmentFile, ...] = ()
    working_directory: str | None = None
    exec_start_pre: tuple[Command, ...] = ()
    exec_start: tuple[Command, ...] = ()
    exec_start_post: tuple[Command, ...] = ()
    exec_reload: tuple[Command, ...] = ()
    exec_stop: tuple[Command, ...] = ()
    restart: str = "no"
    restart_sec: float = 0.1
    remain_after_exit: bool = False
    timeout_start_sec: float = 90.0
    timeout_stop_sec: float = 30.0
    kill_signal: signal.Signals = signal.SIGTERM
    # control-group: signal every process; process: only the main one (it stops its children,
    # as Patroni stops PostgreSQL); mixed: main first, SIGKILL for the rest at the timeout.
    kill_mode: str = "control-group"
    # StandardOutput=append:PATH / file:PATH: where the unit's output goes instead of state_dir.
    standard_output: Path | None = None
    limit_nofile: tuple[int, int] | None = None
    runtime_directory: tuple[str, ...] = ()
    runtime_directory_mode: int = 0o755
    wanted_by: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # "Section.Key" of directives accepted but not enforced


_TIME_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}


def parse_time_span(value: str) -> float:
    """Parse a systemd time span ("30", "500ms", "1min 30s", "infinity") into seconds."""
    text = value.strip()
    if text == "infinity":
        return float("inf")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([a-z]+)|\s+", "", text):
        raise UnitError(f"invalid time span {value!r}")
    total = 0.0
    for number, unit in parts:
        if unit not in _TIME_UNITS:
            raise UnitError(f"invalid time unit {unit!r} in {value!r}")
        total += float(number) * _TIME_UNITS[unit]
    return total


def _parse_signal(value: str) -> signal.Signals:
    text = value.strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return signal.Signals[text]
    except KeyError:
        raise UnitError(f"unknown signal {value!r}") from None


def _parse_limit(value: str) -> tuple[int, int]:
    def one(text: str) -> int:
        return resource.RLIM_INFINITY if text == "infinity" else int(text)

    soft, _, hard = value.strip().partition(":")
    try:
        return (one(soft), one(hard or soft))
    except ValueError:
        raise UnitError(f"invalid limit {value!r}") from None


def _parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise UnitError(f"invalid boolean {value!r}")


def _parse_command(value: str) -> Command:
    ignore = privileged = False
    expand = True
    rest = value.strip()
    while rest and rest[0] in "-+:!@":
        prefix, rest = rest[0], rest[1:]
        if prefix == "-":
            ignore = True
        elif prefix == "+":
            privileged = True
        elif prefix == ":":
            expand = False
        elif prefix == "@":
            raise UnitError(f"the '@' command prefix is not supported: {value!r}")
        # '!' / '!!' only change ambient capability handling; nothing to emulate.
    if not rest:
        raise UnitError(f"empty command line {value!r}")
    return Command(rest, ignore_failure=ignore, privileged=privileged, expand=expand)


def _service_name(name: str) -> str:
    return name[: -len(".service")] if name.endswith(".service") else name


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) with backslash continuations joined and comments dropped."""
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if pending and line and line[0] in "#;":
            continue  # systemd allows comment lines inside a continuation
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending.rstrip()


# Directives reset to empty by an empty assignment ("ExecStartPre=") as in systemd.
_LIST_KEYS = {
    "After": "after", "Before": "before", "Requires": "requires", "Wants": "wants",
    "WantedBy": "wanted_by", "RuntimeDirectory": "runtime_directory",
    "SupplementaryGroups": "supplementary_groups",
}
_COMMAND_KEYS = {
    "ExecStartPre": "exec_start_pre", "ExecStart": "exec_start",
    "ExecStartPost": "exec_start_post", "ExecReload": "exec_reload", "ExecStop": "exec_stop",
}


def parse_unit(text: str, *, name: str = "") -> Unit:
    """Parse a ``.service`` file's text into a :class:`Unit`.

    ``name`` (without ``.service``) is recorded on the unit; dependency names are kept
    without the ``.service`` suffix so they compare with supervisor unit names.
    """
    values: dict[str, object] = {"name": _service_name(name)}
    lists: dict[str, list[object]] = {}
    environment: dict[str, str] = {}
    ignored: list[str] = []
    section = ""
    for number, line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UnitError(f"line {number}: expected Key=Value, got {line!r}")
        key, value = key.strip(), value.strip()
        where = f"{section}.{key}"
        if where in ("Unit.Description",):
            values["description"] = value
        elif section in ("Unit", "Install") and key in _LIST_KEYS:
            attr = _LIST_KEYS[key]
            if not value:
                lists[attr] = []
            else:
                lists.setdefault(attr, []).extend(_service_name(v) for v in value.split())
        elif section != "Service":
            ignored.append(where)
        elif key == "Type":
            kind = "simple" if value == "notify" else value
            if kind not in SERVICE_TYPES:
                raise UnitError(f"line {number}: Type={value} is not supported")
            values["type"] = kind
        elif key in ("User", "Group", "WorkingDirectory"):
            attr = "working_directory" if key == "WorkingDirectory" else key.lower()
            values[attr] = value or None
        elif key in _LIST_KEYS:
            attr = _LIST_KEYS[key]
            lists[attr] = [] if not value else lists.get(attr, []) + value.split()
        elif key == "Environment":
            if not value:
                environment.clear()
            for assignment in shlex.split(value):
                var, eq, val = assignment.partition("=")
                if not eq:
                    raise UnitError(f"line {number}: invalid Environment entry {assignment!r}")
                environment[var] = val
        elif key == "EnvironmentFile":
            if not value:
                lists["environment_files"] = []
            else:
                optional = value.startswith("-")
                entry = EnvironmentFile(Path(value.lstrip("-")), optional=optional)
                lists.setdefault("environment_files", []).append(entry)
        elif key in _COMMAND_KEYS:
            attr = _COMMAND_KEYS[key]
            if not value:
                lists[attr] = []
            else:
                lists.setdefault(attr, []).append(_parse_command(value))
        elif key == "Restart":
            values["restart"] = value
        elif key == "RestartSec":
            values["restart_sec"] = parse_time_span(value)
        elif key == "RemainAfterExit":
            values["remain_after_exit"] = _parse_bool(value)
        elif key == "TimeoutStartSec":
            values["timeout_start_sec"] = parse_time_span(value)
        elif key == "TimeoutStopSec":
            values["timeout_stop_sec"] = parse_time_span(value)
        elif key == "TimeoutSec":
            values["timeout_start_sec"] = values["timeout_stop_sec"] = parse_time_span(value)
        elif key == "KillSignal":
            values["kill_signal"] = _parse_signal(value)
        elif key == "KillMode":
            if value not in ("control-group", "process", "mixed"):
                raise UnitError(f"line {number}: KillMode={value} is not supported")
            values["kill_mode"] = value
        elif key == "StandardOutput":
            kind, _, target = value.partition(":")
            if kind in ("append", "file") and target:
                values["standard_output"] = Path(target)
            else:
                ignored.append(where)
        elif key == "LimitNOFILE":
            values["limit_nofile"] = _parse_limit(value)
        elif key == "RuntimeDirectoryMode":
            values["runtime_directory_mode"] = int(value, 8)
        else:
            ignored.append(where)
    for attr, items in lists.items():
        values[attr] = tuple(items)
    values["environment"] = environment
    values["ignored"] = tuple(ignored)
    unit = Unit(**values)  # type: ignore[arg-type]
    if not unit.exec_start:
        raise UnitError(f"unit {unit.name or '<text>'} has no ExecStart=")
    if unit.type != "oneshot" and len(unit.exec_start) > 1:
        raise UnitError(
            f"unit {unit.name or '<text>'}: only Type=oneshot may have several ExecStart="
        )
    return unit


def _read_environment_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines as systemd does (comments, optional quotes, no 'export')."""
    env: dict[str, str] = {}
    for _, line in _logical_lines(path.read_text()):
        key, eq, value = line.partition("=")
        if not eq:
            continue  # systemd ignores lines that are not assignments
        value = value.strip()
        if value[:1] in ("'", '"'):
            words = shlex.split(value)
            value = words[0] if words else ""
        env[key.strip()] = value
    return env


# -------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _ProcStat:
    state: str
    pgrp: int
    start_time: int  # clock ticks after boot: with the pid, identifies one process


def _proc_stat(pid: int) -> _ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces or ')': fields follow the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return _ProcStat(state=rest[0], pgrp=int(rest[2]), start_time=int(rest[19]))


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry))
    return members


@dataclass(frozen=True)
class UnitState:
    """A unit's state as ``status()`` reports it.

    ``sub`` is ``running`` (main process alive), ``exited`` (oneshot with
    RemainAfterExit that succeeded), ``failed`` (the last start failed, or the main
    process died without ``stop()``), or ``dead`` (stopped / never started).
    """

    name: str
    active: bool
    sub: str
    pid: int | None
    result: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class _Credentials:
    user: str | None
    uid: int | None
    gid: int | None
    extra_groups: tuple[int, ...] | None
    home: str


class Supervisor:
    """Start, stop and inspect the units in ``unit_dir`` as processes.

    ``state_dir`` receives ``<unit>.pid`` (pid and kernel start time), ``<unit>.log``
    (stdout and stderr of every step, appended) and ``<unit>.result`` (last outcome).
    ``run_root`` is where ``RuntimeDirectory=`` directories are created. A simple unit
    whose main process exits within ``startup_grace`` seconds counts as failed to start.
    """

    def __init__(
        self,
        *,
        unit_dir: Path,
        state_dir: Path,
        run_root: Path = Path("/run"),
        startup_grace: float = 1.0,
        log_tail_lines: int = 20,
        netns: str | None = None,
    ) -> None:
        self.unit_dir = Path(unit_dir)
        # Network namespace the units' processes run in (see pgha.local.netns); None: this one.
        self.netns = netns
        self.state_dir = Path(state_dir)
        self.run_root = Path(run_root)
        self.startup_grace = startup_grace
        self.log_tail_lines = log_tail_lines
        # Children of this Python process: polled so they are reaped, not left as zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- discovery ---------------------------------------------------------------

    def units(self) -> list[str]:
        """Names (without ``.service``) of the unit files in ``unit_dir``, sorted."""
        return sorted(p.stem for p in self.unit_dir.glob("*.service"))

    def unit(self, name: str) -> Unit:
        """Parse the unit file for ``name`` (read afresh: files change between runs)."""
        name = _service_name(name)
        path = self.unit_dir / f"{name}.service"
        if not path.is_file():
            raise UnitError(f"no unit file {path}")
        return parse_unit(path.read_text(), name=name)

    def log_path(self, name: str) -> Path:
        """Where the unit's output is appended: its StandardOutput= file, else the state dir."""
        unit = self.unit(name)
        return unit.standard_output or self.state_dir / f"{_service_name(name)}.log"

    def log_tail(self, name: str, lines: int | None = None) -> str:
        """The last ``lines`` lines of the unit's log ("" if there is none)."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-(lines or self.log_tail_lines) :])

    # -- pid bookkeeping ---------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / f"{_service_name(name)}.pid"

    def _result_file(self, name: str) -> Path:
        return self.state_dir / f"{_service_name(name)}.result"

    def _recorded(self, name: str) -> tuple[int, int] | None:
        """(pid, start time) from the pid file; None if absent or not written by us."""
        try:
            fields = self._pid_file(name).read_text().split()
            return int(fields[0]), int(fields[1])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def _record(self, name: str, pid: int) -> None:
        stat = _proc_stat(pid)
        start = stat.start_time if stat else -1
        tmp = self._pid_file(name).with_suffix(".pid.tmp")
        tmp.write_text(f"{pid}\n{start}\n")
        tmp.replace(self._pid_file(name))

    def _write_result(self, name: str, result: str, exit_code: int | None = None) -> None:
        payload = {
            "result": result,
            "exit_code": exit_code,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        self._result_file(name).write_text(json.dumps(payload) + "\n")

    def _read_result(self, name: str) -> dict[str, object]:
        try:
            return dict(json.loads(self._result_file(name).read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _reap(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]

    def _alive_and_ours(self, pid: int, start_time: int) -> bool:
        self._reap(pid)
        stat = _proc_stat(pid)
        return stat is not None and stat.start_time == start_time and stat.state not in ("Z", "X")

    def pid(self, name: str) -> int | None:
        """The main pid if the unit's process is running and is the one we started."""
        recorded = self._recorded(name)
        if recorded and self._alive_and_ours(*recorded):
            return recorded[0]
        return None

    def is_active(self, name: str) -> bool:
        """True if the main process runs (even if SIGSTOPped), or a RemainAfterExit
        oneshot last succeeded."""
        if self.pid(name) is not None:
            return True
        unit = self.unit(name)
        return (
            unit.type == "oneshot"
            and unit.remain_after_exit
            and self._read_result(name).get("result") == "success"
        )

    def _group_is_ours(self, pid: int, start_time: int) -> bool:
        """May we signal process group ``pid``?

        Yes while the leader is the process we started. If the pid no longer exists
        the remaining group members are ours: Linux does not hand out a pid still in
        use as a process group id. If the pid now names a different process, no.
        """
        self._reap(pid)
        stat = _proc_stat(pid)
        return stat is None or stat.start_time == start_time

    # -- starting ----------------------------------------------------------------

    def _credentials(self, unit: Unit) -> _Credentials:
        if unit.user is None:
            home = pwd.getpwuid(os.getuid()).pw_dir
            if unit.group is None:
                return _Credentials(None, None, None, None, home)
            return _Credentials(None, None, _gid(unit.group), None, home)
        try:
            pw = pwd.getpwuid(int(unit.user)) if unit.user.isdigit() else pwd.getpwnam(unit.user)
        except KeyError:
            raise UnitError(f"unit {unit.name}: no such user {unit.user!r}") from None
        gid = _gid(unit.group) if unit.group else pw.pw_gid
        groups = set(os.getgrouplist(pw.pw_name, gid))
        groups.update(_gid(g) for g in unit.supplementary_groups)
        return _Credentials(pw.pw_name, pw.pw_uid, gid, tuple(sorted(groups)), pw.pw_dir)

    def _environment(self, unit: Unit, creds: _Credentials) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
        if creds.user is not None:
            pw = pwd.getpwnam(creds.user)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell)
        env.update(unit.environment)
        # EnvironmentFile= overrides Environment= (systemd.exec), read at start time.
        for entry in unit.environment_files:
            try:
                env.update(_read_environment_file(entry.path))
            except FileNotFoundError:
                if not entry.optional:
                    raise UnitStartError(
                        unit.name, f"EnvironmentFile {entry.path} does not exist",
                        self.log_tail(unit.name),
                    ) from None
        if unit.runtime_directory:
            env["RUNTIME_DIRECTORY"] = ":".join(
                str(self.run_root / d) for d in unit.runtime_directory
            )
        return env

    def _make_runtime_directories(self, unit: Unit, creds: _Credentials) -> None:
        for directory in unit.runtime_directory:
            path = self.run_root / directory
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(unit.runtime_directory_mode)
            if creds.uid is not None or creds.gid is not None:
                os.chown(path, -1 if creds.uid is None else creds.uid,
                         -1 if creds.gid is None else creds.gid)

    def _cwd(self, unit: Unit, creds: _Credentials) -> str:
        if unit.working_directory is None:
            return "/"  # systemd's default for system units
        optional = unit.working_directory.startswith("-")
        path = unit.working_directory.lstrip("-")
        if path == "~":
            path = creds.home
        if optional and not os.path.isdir(path):
            return "/"
        return path

    @staticmethod
    def _limits(unit: Unit) -> Callable[[], None] | None:
        """A preexec function applying LimitNOFILE= in the child, or None.

        Raising the hard limit needs CAP_SYS_RESOURCE, which root in a container may
        lack (and the child has dropped to User= by then); in that case the limit is
        clamped to the current hard limit and a warning goes to the unit's log.
        """
        if unit.limit_nofile is None:
            return None
        soft, hard = unit.limit_nofile

        def apply() -> None:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            except (ValueError, OSError):
                current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                clamped = (min(soft, current_hard), min(hard, current_hard))
                resource.setrlimit(resource.RLIMIT_NOFILE, clamped)
                os.write(2, f"pgha.supervisor: LimitNOFILE={soft}:{hard} not permitted, "
                            f"using {clamped[0]}:{clamped[1]}\n".encode())

        return apply

    def _spawn(
        self,
        unit: Unit,
        command: Command,
        *,
        env: Mapping[str, str],
        creds: _Credentials,
        log: int,
    ) -> subprocess.Popen[bytes]:
        argv = command.argv(env)
        if not argv:
            raise UnitError(f"unit {unit.name}: command {command.line!r} expands to nothing")
        if not os.path.isabs(argv[0]):
            found = shutil.which(argv[0], path=env.get("PATH", DEFAULT_PATH))
            if found is None:
                raise FileNotFoundError(f"{argv[0]} not found in PATH={env.get('PATH')}")
            argv[0] = found
        as_root = command.privileged
        with entered(self.netns):  # the child is forked in the unit's network namespace
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(unit, creds),
                env=dict(env),
                start_new_session=True,  # own process group: stop() signals the whole group
                user=None if as_root else creds.uid,
                group=None if as_root else creds.gid,
                extra_groups=None if as_root else creds.extra_groups,
                preexec_fn=self._limits(unit),
            )
        self._children[proc.pid] = proc
        return proc

    def _run_step(
        self,
        unit: Unit,
        command: Command,
        *,
        env: Mapping[str, str],
        creds: _Credentials,
        log: int,
        timeout: float,
    ) -> int:
        """Run a command to completion; return its exit status (negative: signal)."""
        try:
            proc = self._spawn(unit, command, env=env, creds=creds, log=log)
        except OSError as exc:
            os.write(log, f"pgha.supervisor: cannot execute {command.line!r}: {exc}\n".encode())
            return EXIT_EXEC
        try:
            code = proc.wait(timeout=None if timeout == float("inf") else timeout)
        except subprocess.TimeoutExpired:
            message = f"pgha.supervisor: {command.line!r} timed out after {timeout}s\n"
            os.write(log, message.encode())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        self._children.pop(proc.pid, None)
        return code

    def start(self, name: str) -> None:
        """Start ``name`` as systemd would; a no-op if it is already active.

        Raises :class:`UnitStartError` (with the log tail) if a pre/post step fails, a
        oneshot fails, or a simple unit's main process exits within ``startup_grace``.
        """
        name = _service_name(name)
        unit = self.unit(name)
        if self.is_active(name):
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        creds = self._credentials(unit)
        env = self._environment(unit, creds)
        self._make_runtime_directories(unit, creds)
        timeout = unit.timeout_start_sec
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        log = os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            stamp = datetime.datetime.now().isoformat(timespec="seconds")
            os.write(log, f"-- {stamp} pgha.supervisor: starting {name} --\n".encode())
            self._result_file(name).unlink(missing_ok=True)
            for step in unit.exec_start_pre:
                self._run_checked(unit, step, "ExecStartPre", env=env, creds=creds, log=log,
                                  timeout=timeout)
            if unit.type == "oneshot":
                for step in unit.exec_start:
                    self._run_checked(unit, step, "ExecStart", env=env, creds=creds, log=log,
                                      timeout=timeout)
            else:
                self._start_main(unit, env=env, creds=creds, log=log)
            for step in unit.exec_start_post:
                try:
                    self._run_checked(unit, step, "ExecStartPost", env=env, creds=creds,
                                      log=log, timeout=timeout)
                except UnitStartError:
                    # systemd stops a unit whose start-post step fails.
                    self.stop(name)
                    self._write_result(name, "failed")
                    raise
            self._write_result(name, "success", 0 if unit.type == "oneshot" else None)
        finally:
            os.close(log)

    def _run_checked(
        self,
        unit: Unit,
        step: Command,
        what: str,
        *,
        env: Mapping[str, str],
        creds: _Credentials,
        log: int,
        timeout: float,
    ) -> None:
        code = self._run_step(unit, step, env=env, creds=creds, log=log, timeout=timeout)
        if code != 0 and not step.ignore_failure:
            self._write_result(unit.name, "failed", code)
            raise UnitStartError(
                unit.name, f"{what}={step.line!r} failed with status {code}",
                self.log_tail(unit.name),
            )

    def _start_main(
        self, unit: Unit, *, env: Mapping[str, str], creds: _Credentials, log: int
    ) -> None:
        try:
            proc = self._spawn(unit, unit.exec_start[0], env=env, creds=creds, log=log)
        except OSError as exc:
            os.write(log, f"pgha.supervisor: cannot execute ExecStart: {exc}\n".encode())
            self._write_result(unit.name, "failed", EXIT_EXEC)
            raise UnitStartError(unit.name, f"cannot execute ExecStart: {exc}",
                                 self.log_tail(unit.name)) from None
        self._record(unit.name, proc.pid)
        deadline = time.monotonic() + self.startup_grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._children.pop(proc.pid, None)
                self._pid_file(unit.name).unlink(missing_ok=True)
                self._write_result(unit.name, "failed", proc.returncode)
                raise UnitStartError(
                    unit.name,
                    f"main process {proc.pid} exited with status {proc.returncode} "
                    f"within {self.startup_grace}s of starting",
                    self.log_tail(unit.name),
                )
            time.sleep(0.05)

    # -- stopping and signalling -------------------------------------------------

    def _wait_group_gone(self, pgid: int, deadline: float) -> bool:
        while True:
            self._reap(pgid)
            if not _group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self, name: str, timeout: float | None = None) -> bool:
        """Stop the unit; return True if a process of ours was stopped.

        Runs ExecStop= (with $MAINPID) if given, then sends KillSignal= and SIGCONT to
        the process group, and SIGKILL once ``timeout`` (default TimeoutStopSec=)
        expires. A pid file naming a process we did not start is discarded unsignalled.
        """
        name = _service_name(name)
        unit = self.unit(name)
        limit = unit.timeout_stop_sec if timeout is None else timeout
        recorded = self._recorded(name)
        stopped = False
        if recorded is not None and self._group_is_ours(*recorded):
            pid, _ = recorded
            deadline = time.monotonic() + limit
            if unit.exec_stop and self.pid(name) is not None:
                self._run_stop_commands(unit, pid, deadline)
            if _group_members(pid):
                stopped = True
                if unit.kill_mode == "control-group":
                    self._signal_group(pid, unit.kill_signal)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, unit.kill_signal)
                        os.kill(pid, signal.SIGCONT)
                if not self._wait_group_gone(pid, deadline):
                    with self._open_log(name) as log:
                        os.write(log, f"pgha.supervisor: {name} did not stop within "
                                      f"{limit}s, sending SIGKILL\n".encode())
                    self._signal_group(pid, signal.SIGKILL)
                    self._wait_group_gone(pid, time.monotonic() + 10)
            self._reap(pid)
        elif unit.type == "oneshot" and self.is_active(name):
            # As systemctl stop: a RemainAfterExit oneshot becomes inactive, so the next
            # start runs it again (a node's restart re-runs its preparation).
            if unit.exec_stop:
                creds = self._credentials(unit)
                env = self._environment(unit, creds)
                with self._open_log(name) as log:
                    for step in unit.exec_stop:
                        self._run_step(unit, step, env=env, creds=creds, log=log,
                                       timeout=limit)
                stopped = True
            self._write_result(name, "stopped")
        if recorded is not None or stopped:
            self._write_result(name, "stopped")
        self._pid_file(name).unlink(missing_ok=True)
        for directory in unit.runtime_directory:
            shutil.rmtree(self.run_root / directory, ignore_errors=True)
        return stopped

    @contextlib.contextmanager
    def _open_log(self, name: str) -> Iterator[int]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            yield fd
        finally:
            os.close(fd)

    def _run_stop_commands(self, unit: Unit, pid: int, deadline: float) -> None:
        creds = self._credentials(unit)
        env = self._environment(unit, creds)
        env["MAINPID"] = str(pid)
        with self._open_log(unit.name) as log:
            for step in unit.exec_stop:
                remaining = max(0.1, deadline - time.monotonic())
                # Failure is only logged: systemd goes on to kill the remaining processes.
                self._run_step(unit, step, env=env, creds=creds, log=log, timeout=remaining)

    def reload(self, name: str) -> None:
        """Run ExecReload= (with $MAINPID); raise if the unit is not running or a step fails."""
        unit = self.unit(name)
        pid = self.pid(name)
        if pid is None:
            raise UnitNotActiveError(
                f"{unit.name} has no running process started by this supervisor"
            )
        if not unit.exec_reload:
            raise UnitError(f"unit {unit.name} has no ExecReload=")
        creds = self._credentials(unit)
        env = self._environment(unit, creds)
        env["MAINPID"] = str(pid)
        with self._open_log(unit.name) as log:
            for step in unit.exec_reload:
                code = self._run_step(unit, step, env=env, creds=creds, log=log,
                                      timeout=unit.timeout_start_sec)
                if code != 0 and not step.ignore_failure:
                    raise UnitStartError(unit.name, f"ExecReload={step.line!r} failed with "
                                         f"status {code}", self.log_tail(unit.name))

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        if sig not in (signal.SIGKILL, signal.SIGCONT, signal.SIGSTOP):
            # A frozen (SIGSTOPped) process only acts on the signal once continued.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)

    def kill(self, name: str, sig: int | str = signal.SIGKILL, *, group: bool = True) -> int:
        """Send ``sig`` to the unit's main process group (or only the main process).

        For failover drills: SIGKILL, SIGSTOP/SIGCONT. Returns the main pid. Raises
        :class:`UnitNotActiveError` if no process of ours is running for the unit.
        """
        signum = _parse_signal(sig) if isinstance(sig, str) else signal.Signals(sig)
        pid = self.pid(name)
        if pid is None:
            raise UnitNotActiveError(f"{name} has no running process started by this supervisor")
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
        return pid

    # -- many units --------------------------------------------------------------

    def start_order(self, names: Sequence[str] | None = None) -> list[str]:
        """``names`` (default: all units) plus the units they Require=/Want=, sorted so
        each comes after the units it is ordered After= or Requires=; ties keep the
        given order. Dependencies without a unit file (targets etc.) are ignored."""
        known = set(self.units())
        wanted = [_service_name(n) for n in (names if names is not None else sorted(known))]
        for n in wanted:
            if n not in known:
                raise UnitError(f"no unit file {self.unit_dir / (n + '.service')}")
        units: dict[str, Unit] = {}
        queue = list(wanted)
        while queue:  # pull in Requires=/Wants= closure
            n = queue.pop(0)
            if n in units:
                continue
            units[n] = self.unit(n)
            queue += [d for d in (*units[n].requires, *units[n].wants) if d in known]
        rank = {n: i for i, n in enumerate(list(dict.fromkeys(wanted + sorted(units))))}
        predecessors: dict[str, set[str]] = {n: set() for n in units}
        for n, u in units.items():
            predecessors[n].update(d for d in (*u.after, *u.requires) if d in units and d != n)
            for later in u.before:
                if later in units and later != n:
                    predecessors[later].add(n)
        order: list[str] = []
        while predecessors:
            ready = sorted((n for n, p in predecessors.items() if not p), key=rank.__getitem__)
            if not ready:
                raise UnitError(f"ordering cycle among units: {sorted(predecessors)}")
            order.append(ready[0])
            del predecessors[ready[0]]
            for p in predecessors.values():
                p.discard(ready[0])
        return order

    def start_all(self, order: Sequence[str] | None = None) -> list[str]:
        """Start ``order`` (default: all units) in dependency order, skipping active
        units; return the names actually started. Stops at the first failure."""
        started = []
        for name in self.start_order(order):
            if not self.is_active(name):
                self.start(name)
                started.append(name)
        return started

    def stop_all(self) -> list[str]:
        """Stop every unit in reverse dependency order; return those that were stopped."""
        return [name for name in reversed(self.start_order()) if self.stop(name)]

    def status(self) -> dict[str, UnitState]:
        """State of every unit in ``unit_dir``."""
        states = {}
        for name in self.units():
            pid = self.pid(name)
            result = self._read_result(name)
            res = result.get("result")
            code = result.get("exit_code")
            exit_code = code if isinstance(code, int) else None
            if pid is not None:
                sub = "running"
            elif self.is_active(name):
                sub = "exited"
            elif res == "failed" or self._recorded(name) is not None:
                # A pid file left behind means the process died without stop().
                sub = "failed"
            else:
                sub = "dead"
            states[name] = UnitState(
                name=name, active=sub in ("running", "exited"), sub=sub, pid=pid,
                result=res if isinstance(res, str) else None, exit_code=exit_code,
            )
        return states


def _gid(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise UnitError(f"no such group {group!r}") from None
