"""`pgbackrest-exporter`: metrics from `pgbackrest info`."""

import argparse
import json
import subprocess
import threading
import time
from typing import Callable

from ...contract import BACKUP_TYPES, NodeFacts
from ..cli_types import Subparsers
from ..errors import LOG
from ..facts import pgbackrest_argv
from .certificates import certificate_families
from .common import Families, label_text, number, parse_listen, serve


def pgbackrest_families(info: list | None, up: bool) -> list:
    """Pure: metric families from the parsed JSON of `pgbackrest --output=json info`."""
    f = Families()
    f.add("pgbackrest_up", "gauge", "1 if the last `pgbackrest info` succeeded", {}, 1.0 if up else 0.0)
    for st in info or []:
        stanza = label_text(st.get("name"))
        status = st.get("status") or {}
        f.add("pgbackrest_stanza_status", "gauge",
              "pgBackRest stanza status code (0 ok, 1 missing stanza path, 2 no valid backups, ...)",
              {"stanza": stanza}, number(status.get("code")))
        held = ((status.get("lock") or {}).get("backup") or {}).get("held")
        if held is not None:
            f.add("pgbackrest_stanza_backup_lock_held", "gauge", "1 while a backup holds the stanza lock",
                  {"stanza": stanza}, number(bool(held)))
        for repo in st.get("repo") or []:
            f.add("pgbackrest_repo_status", "gauge", "pgBackRest repository status code (0 ok)",
                  {"stanza": stanza, "repo_key": label_text(repo.get("key"))},
                  number((repo.get("status") or {}).get("code")))
        backups = st.get("backup") or []
        for btype in BACKUP_TYPES:
            of_type = [b for b in backups if b.get("type") == btype]
            labels = {"stanza": stanza, "type": btype}
            f.add("pgbackrest_backup_count", "gauge", "Number of backups of this type in the repository",
                  labels, float(len(of_type)))
            if not of_type:
                continue
            newest = max(of_type, key=lambda b: ((b.get("timestamp") or {}).get("stop") or 0))
            ts, inf = newest.get("timestamp") or {}, newest.get("info") or {}
            # The oldest full backup's stop is the earliest point PITR can reach (the PITR window's start).
            oldest = min(of_type, key=lambda b: ((b.get("timestamp") or {}).get("stop") or 0))
            f.add("pgbackrest_backup_oldest_time_seconds", "gauge",
                  "Unix time the oldest backup of this type stopped", labels,
                  number((oldest.get("timestamp") or {}).get("stop")))
            f.add("pgbackrest_backup_last_time_seconds", "gauge",
                  "Unix time the newest backup of this type stopped", labels, number(ts.get("stop")))
            if ts.get("start") is not None and ts.get("stop") is not None:
                f.add("pgbackrest_backup_last_duration_seconds", "gauge",
                      "Duration of the newest backup of this type", labels, float(ts["stop"] - ts["start"]))
            f.add("pgbackrest_backup_last_size_bytes", "gauge",
                  "Database size of the newest backup of this type", labels, number(inf.get("size")))
            f.add("pgbackrest_backup_last_delta_bytes", "gauge",
                  "Bytes the newest backup of this type copied", labels, number(inf.get("delta")))
            f.add("pgbackrest_backup_last_repo_size_bytes", "gauge",
                  "Repository size of the newest backup of this type", labels,
                  number((inf.get("repository") or {}).get("size")))
            if "error" in newest:
                f.add("pgbackrest_backup_last_error", "gauge",
                      "1 if the newest backup of this type recorded errors (e.g. page checksums)", labels,
                      number(bool(newest.get("error"))))
        for arch in st.get("archive") or []:
            if arch.get("max"):
                # Numbers, not a label per segment: one series per archive id, however much WAL.
                labels = {"stanza": stanza, "archive_id": label_text(arch.get("id"))}
                f.add("pgbackrest_archive_max_wal_segment", "gauge",
                      "Position of the newest archived WAL segment (log * 256 + segment)", labels,
                      float(_wal_position(arch["max"])))
                f.add("pgbackrest_archive_max_wal_timeline", "gauge",
                      "Timeline of the newest archived WAL segment", labels, float(int(arch["max"][:8], 16)))
    return f.list()


def _wal_position(segment: str) -> int:
    """24-hex-digit WAL file name -> a number that grows with every segment (16 MiB segments)."""
    return int(segment[8:16], 16) * 0x100 + int(segment[16:24], 16)


class PgBackRestInfo:
    """Runs `pgbackrest --output=json info`, caching the outcome (success or failure)."""

    def __init__(self, argv: list[str], ttl: float = 60.0, timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.argv, self.ttl, self.timeout, self.clock = argv, ttl, timeout, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value: tuple[list | None, bool] = (None, False)

    def run(self) -> tuple[list | None, bool]:
        try:
            proc = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            LOG.warning("pgbackrest info failed: %s", exc)
            return None, False
        if proc.returncode != 0:
            LOG.warning("pgbackrest info exited %d: %s", proc.returncode,
                        (proc.stderr or proc.stdout).strip().splitlines()[-1:] or "")
            return None, False
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            LOG.warning("pgbackrest info printed no valid JSON")
            return None, False
        if not isinstance(data, list):
            LOG.warning("pgbackrest info JSON is not a list")
            return None, False
        return data, True

    def get(self) -> tuple[list | None, bool]:
        with self._lock:
            now = self.clock()
            if self._at is None or now - self._at >= self.ttl:
                self._value = self.run()
                self._at = now
            return self._value


class PgBackRestCollector:
    def __init__(self, info: PgBackRestInfo, tls_dir: str | None = None):
        self.info = info
        self.tls_dir = tls_dir

    def collect(self):
        data, up = self.info.get()
        yield from pgbackrest_families(data, up)
        if self.tls_dir:
            yield from certificate_families(self.tls_dir)


def cmd_pgbackrest_exporter(node: NodeFacts, args: argparse.Namespace) -> int:
    listen = parse_listen(args.listen) if args.listen else (node["ip"], int(node["ports"]["pgbackrest_exporter"]))
    argv = pgbackrest_argv(node, f"--stanza={node['stanza']}", "--output=json", "info", binary=args.pgbackrest)
    serve(PgBackRestCollector(PgBackRestInfo(argv, ttl=args.cache_seconds), tls_dir=node["paths"]["tls"]), listen)
    return 0



def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pgbackrest-exporter", parents=[common], help="Prometheus exporter for pgBackRest",
                       description="Serve metrics from `pgbackrest --output=json info`, cached.")
    p.add_argument("--listen", metavar="HOST:PORT", help="default <ip>:<ports.pgbackrest_exporter>")
    p.add_argument("--cache-seconds", type=float, default=60.0, help="cache `info` output this long (default 60)")
    p.add_argument("--pgbackrest", default="pgbackrest", metavar="PATH", help="pgbackrest binary (default: from PATH)")
    p.set_defaults(func=cmd_pgbackrest_exporter)
