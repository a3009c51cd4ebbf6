"""Host-side helper daemons of the rehearsal (moto, its TLS terminator, each member's IMDS and S3
relay): started in the background with a pid file, stopped by it.

A pid file is trusted only while ``/proc/<pid>/stat`` shows the kernel start time recorded when
the process was spawned, so a recycled pid is never signalled.
"""

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .procfs import start_time


@dataclass(frozen=True)
class Daemon:
    """One background process, known by ``<state_dir>/<name>.pid``, logging to ``<name>.log``."""

    name: str
    argv: Sequence[str]
    state_dir: Path
    env: Mapping[str, str] | None = None

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid, started = (int(word) for word in self.pid_file.read_text().split()[:2])
        except (OSError, ValueError):
            return None
        return pid if start_time(pid) == started else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> subprocess.Popen | None:
        """Start it unless it runs; the new process (None: it was running)."""
        if self.pid() is not None:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(list(self.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **(self.env or {})})
        self.pid_file.write_text(f"{proc.pid} {start_time(proc.pid)}\n")
        return proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal it, wait up to ``timeout``, then SIGKILL; forget its pid file."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while start_time(pid) is not None and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            if start_time(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
