"""`ship-logs`: follow the member's daemon logs and put them into the cluster's CloudWatch Logs group.

Debian 13 packages no log shipper (no fluent-bit, vector or CloudWatch agent), and every pgha
unit already appends its daemon's output to a file under /var/log/pgha (PostgreSQL, Patroni,
PgBouncer and pgBackRest write their own files there too), so this follows those files: boto3
(which the agent already uses) and the standard library, nothing more to install or trust.

* One stream per member and daemon, ``<member>/<daemon>`` (contract.log_stream): who wrote a
  line and which daemon, filterable per daemon, and each stream's events in the order read.
* Each line becomes an event stamped with the time it was read (never before the previous
  event's), so a batch is always chronological and spans seconds; the line keeps its own
  timestamp in its text. Lines are prefixed with their file's name.
* Offsets (inode, byte) are persisted after each accepted batch only: a restart or an outage
  resends at most the last unacknowledged batch and loses nothing still in the followed files.
  A file whose inode changed or that shrank (logrotate's copytruncate, PostgreSQL's weekday
  files) is read again from its start; what a daemon wrote just before renaming its file away
  (Patroni's own rotation) is not followed into the renamed file.
* CloudWatch unreachable or refusing: nothing is dropped and nothing is held in memory beyond
  one batch per stream; the shipper backs off (up to ``BACKOFF_MAX``) and retries from the
  persisted offsets. It runs as its own unit at idle priority and nothing depends on it.
* Lines that begin with whitespace belong to the line before (multi-line statements,
  tracebacks): one event.
* ``redact`` removes what must never leave the node: passwords in SQL (``PASSWORD '...'``,
  which log_statement=ddl logs), connection strings and URIs, ``key=value`` / JSON secrets,
  SCRAM and md5 verifiers, AWS access keys, PEM private keys.
"""

import argparse
import glob
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..contract import LogFacts, NodeFacts, log_stream
from .cli_types import Subparsers
from .errors import LOG
from .fsutil import write_atomic

# PutLogEvents' limits: a batch's size counts each message's UTF-8 bytes plus 26 per event.
EVENT_OVERHEAD = 26
MAX_BATCH_BYTES = 1_048_576
MAX_BATCH_EVENTS = 10_000
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
# A batch may also span 24 hours at most: read-time stamps span one cycle, seconds.
# Bytes read from one file per cycle: a burst is shipped over several cycles, never all in memory.
READ_LIMIT = 2 * MAX_BATCH_BYTES
POLL_SECONDS = 5.0
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 300.0
REDACTED = "[redacted]"

_SECRET_WORD = r"[\w.-]*(?:password|passwd|pwd|secret|cipher[-_]pass|token|credential)[\w.-]*"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A PEM private key line (a key logged by mistake): nothing of the line survives.
    (re.compile(r"^.*-----BEGIN [A-Z ]*PRIVATE KEY-----.*$"), REDACTED),
    # SQL: CREATE/ALTER ROLE ... [ENCRYPTED] PASSWORD 'x' (quotes doubled inside), E'x' or $$x$$.
    (re.compile(r"(?i)(\bPASSWORD\s+)(?:E?'(?:[^']|'')*'?|\$([A-Za-z_]*)\$.*?(?:\$\2\$|$))"), rf"\1'{REDACTED}'"),
    # postgresql://user:secret@host
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@"), rf"\1{REDACTED}@"),
    # password=x, "password": "x", PGPASSWORD=x, repo1-cipher-pass=x, aws_secret_access_key = x
    (re.compile(rf"(?i)(\b{_SECRET_WORD}[\"']?\s*[:=]\s*)(\"(?:[^\"\\]|\\.)*\"?|'(?:[^'\\]|\\.)*'?|[^\s,;&}}]+)"),
     rf"\1{REDACTED}"),
    (re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"), REDACTED),
    (re.compile(r"\bmd5[0-9a-f]{32}\b"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
)


def redact(line: str) -> str:
    """``line`` without passwords, keys or verifiers (see the module's docstring)."""
    for pattern, replacement in _REDACTIONS:
        line = pattern.sub(replacement, line)
    return line


def clip(message: str, limit: int = MAX_EVENT_BYTES) -> str:
    """``message`` cut to ``limit`` UTF-8 bytes (an event's maximum), never inside a character."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    return data[:limit].decode("utf-8", errors="ignore")


def event_size(message: str) -> int:
    return len(message.encode("utf-8")) + EVENT_OVERHEAD


@dataclass(frozen=True)
class Position:
    """Where the shipper is in one file."""

    inode: int
    offset: int


@dataclass
class Batch:
    """Events for one stream and, per file, the offset just past the last line they hold."""

    stream: str
    events: list[dict[str, Any]] = field(default_factory=list)
    ends: dict[str, Position] = field(default_factory=dict)
    size: int = 0
    # Stopped at a limit: more lines are waiting.
    full: bool = False

    def fits(self, message: str) -> bool:
        return len(self.events) < MAX_BATCH_EVENTS and self.size + event_size(message) <= MAX_BATCH_BYTES

    def add(self, timestamp: int, message: str, path: str, end: Position) -> None:
        self.events.append({"timestamp": timestamp, "message": message})
        self.size += event_size(message)
        self.ends[path] = end


def load_state(path: str) -> dict[str, Position]:
    """The persisted positions; a missing or unreadable state starts every file from its start."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        return {p: Position(int(v["inode"]), int(v["offset"])) for p, v in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        LOG.warning("state %s unreadable (%s): reading every log from its start", path, exc)
        return {}


def save_state(path: str, state: Mapping[str, Position]) -> None:
    data = json.dumps({p: {"inode": v.inode, "offset": v.offset} for p, v in sorted(state.items())})
    write_atomic(path, data, os.getuid(), os.getgid(), 0o600)


def read_lines(path: str, start: Position | None, limit: int = READ_LIMIT) -> Iterable[tuple[str, Position]]:
    """Complete lines of ``path`` after ``start``, each with the position just past it. A file
    with another inode, or shorter than ``start`` (truncated), is read from its beginning; a
    partial last line waits for its newline, unless it alone fills ``limit`` (then it is one event)."""
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        offset = start.offset if start is not None and start.inode == info.st_ino and start.offset <= info.st_size else 0
        fh.seek(offset)
        chunk = fh.read(limit)
    cut = chunk.rfind(b"\n") + 1
    if cut == 0 and len(chunk) >= limit:
        cut = len(chunk)
    for raw in chunk[:cut].splitlines(keepends=True):
        offset += len(raw)
        text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if text.strip():
            yield text, Position(info.st_ino, offset)


def join_continuations(lines: Iterable[tuple[str, Position]]) -> Iterable[tuple[str, Position]]:
    """Lines that begin with whitespace joined to the line before them (PostgreSQL's multi-line
    statements and DETAIL/CONTEXT, Python tracebacks): one event, redacted as a whole, so a
    ``PASSWORD`` and its value on two lines are still found together."""
    pending: tuple[str, Position] | None = None
    for text, end in lines:
        if pending is not None and text[:1] in (" ", "\t"):
            pending = (pending[0] + "\n" + text, end)
            continue
        if pending is not None:
            yield pending
        pending = (text, end)
    if pending is not None:
        yield pending


class Clock:
    """Milliseconds since the epoch, never going back (an event's stamp is its read time)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.last = 0

    def __call__(self) -> int:
        self.last = max(self.last, int(self.now() * 1000))
        return self.last


class Shipper:
    """One cycle at a time (``cycle``): every source's new lines to its stream."""

    def __init__(self, member: str, facts: LogFacts, client: Callable[[], Any],
                 clock: Callable[[], int] | None = None) -> None:
        self.member = member
        self.facts = facts
        self.make_client = client
        self.client: Any = None
        self.clock = clock or Clock()
        self.state = load_state(facts["state"])
        self.streams: set[str] = set()
        self.failures = 0
        self.unreadable: set[str] = set()

    def files(self, patterns: Iterable[str]) -> list[str]:
        return sorted({p for pattern in patterns for p in glob.glob(pattern) if os.path.isfile(p)})

    def batch(self, source: str, files: list[str]) -> Batch:
        """The next batch of ``source``'s stream, from its files' persisted positions."""
        batch = Batch(log_stream(self.member, source))
        for path in files:
            try:
                for text, end in join_continuations(read_lines(path, self.state.get(path))):
                    message = clip(f"{os.path.basename(path)}: {redact(text)}")
                    if not batch.fits(message):
                        batch.full = True
                        return batch
                    batch.add(self.clock(), message, path, end)
                self.unreadable.discard(path)
            except OSError as exc:
                if path not in self.unreadable:  # once, not every cycle
                    LOG.warning("cannot read %s: %s", path, exc)
                    self.unreadable.add(path)
        return batch

    def put(self, batch: Batch) -> None:
        """PutLogEvents, creating the stream first if CloudWatch does not know it."""
        if self.client is None:
            self.client = self.make_client()
        group = self.facts["group"]
        if batch.stream not in self.streams:
            try:
                self.client.create_log_stream(logGroupName=group, logStreamName=batch.stream)
            except Exception as exc:  # noqa: BLE001 - boto3 raises per-service classes
                if _code(exc) != "ResourceAlreadyExistsException":
                    raise
            self.streams.add(batch.stream)
        answer = self.client.put_log_events(logGroupName=group, logStreamName=batch.stream, logEvents=batch.events)
        rejected = answer.get("rejectedLogEventsInfo") if isinstance(answer, Mapping) else None
        if rejected:
            LOG.warning("CloudWatch rejected events of %s: %s", batch.stream, rejected)

    def cycle(self) -> float:
        """Ship what is new; the seconds to wait before the next cycle (longer after failures)."""
        live: set[str] = set()
        for source, patterns in sorted(self.facts["sources"].items()):
            files = self.files(patterns)
            live.update(files)
            while True:
                batch = self.batch(source, files)
                if not batch.events:
                    break
                try:
                    self.put(batch)
                except Exception as exc:  # noqa: BLE001 - any failure: keep the offsets, back off
                    self.client = None  # credentials and endpoints are resolved again
                    self.streams.discard(batch.stream)
                    self.failures += 1
                    wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
                    LOG.warning("putting %d events to %s failed (%s: %s): retrying in %.0f s",
                                len(batch.events), batch.stream, type(exc).__name__, str(exc).strip()[:300], wait)
                    return wait
                if self.failures:
                    LOG.info("CloudWatch Logs reachable again after %d failed attempts", self.failures)
                    self.failures = 0
                self.state.update(batch.ends)
                save_state(self.facts["state"], self.state)
                if not batch.full:
                    break  # this source is drained for this cycle
        gone = set(self.state) - live
        if gone:
            for path in gone:
                del self.state[path]
            save_state(self.facts["state"], self.state)
        return POLL_SECONDS


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, Mapping) else ""


def logs_client(aws: Mapping[str, Any]) -> Any:
    import boto3  # lazily: the tests and --help need no boto3
    from botocore.config import Config

    # Short timeouts and no retries of its own: the shipper's backoff decides when to try again.
    return boto3.client("logs", region_name=aws["region"], endpoint_url=aws["endpoint_url"] or None,
                        config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 1}))


def cmd_ship_logs(node: NodeFacts, args: argparse.Namespace) -> int:
    shipper = Shipper(node["member"], node["logs"], lambda: logs_client(node["aws"]))
    LOG.info("shipping %s to %s", ", ".join(sorted(node["logs"]["sources"])), node["logs"]["group"])
    while True:
        wait = shipper.cycle()
        if args.once:
            return 0 if shipper.failures == 0 else 1
        time.sleep(wait)


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ship-logs", parents=[common], help="ship the daemons' logs to CloudWatch Logs",
                       description="Follow the member's daemon logs (node.json logs.sources) and put each "
                                   "daemon's new lines, secrets redacted, to the stream <member>/<daemon> of the "
                                   "cluster's log group; offsets persist in logs.state.")
    p.add_argument("--once", action="store_true", help="one cycle, then exit (1 if CloudWatch refused)")
    p.set_defaults(func=cmd_ship_logs)
