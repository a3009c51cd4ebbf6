"""The load of a drill: an application's writer and reader sessions, and a monitor sampling
every member directly. Each records timestamped samples (``analysis.Attempt``, ``analysis.Sample``)
for the analysis; none of them judges anything."""

import contextlib
import threading
import time
from typing import Any

import psycopg

from ...spec import PORTS
from ..cluster import LocalCluster, Node
from .analysis import SAMPLE_INTERVAL, Attempt, Sample, View

WRITE_INTERVAL = 0.02  # seconds between a writer's commits: ~40-50/s, 20-25 ms RTO resolution
READ_INTERVAL = 0.05
CLIENT_TIMEOUT = 5.0  # an application gives up on a statement that has not answered in this time


class Client:
    """An application session loop: connect through a multi-host DSN, run one statement over
    and over, reconnect on any error. Each connection runs in its own thread, so a statement
    stuck on a frozen node can be abandoned after CLIENT_TIMEOUT like an application would."""

    def __init__(self, name: str, dsn: str, statement: str, interval: float, numbered: bool, epoch: float) -> None:
        self.name, self.dsn, self.statement, self.interval = name, dsn, statement, interval
        self.numbered = numbered
        self.epoch = epoch
        self.attempts: list[Attempt] = []
        self.connect_errors: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._next_id = 0
        self._session: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, name=f"drill-{name}", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(CLIENT_TIMEOUT + 5)

    def _new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def _run(self) -> None:
        while not self.stop.is_set():
            state: dict[str, Any] = {"busy_since": None, "dead": False, "abandoned": False}
            worker = threading.Thread(target=self._session_loop, args=(state,), daemon=True)
            worker.start()
            while worker.is_alive() and not self.stop.is_set():
                busy = state["busy_since"]
                if busy is not None and self.now() - busy > CLIENT_TIMEOUT:
                    state["abandoned"] = True  # give up on this connection; its thread may linger
                    attempt = state.get("attempt")
                    if attempt is not None and attempt.acked is None and attempt.error is None:
                        attempt.error, attempt.errored = "client timeout", self.now()
                    break
                time.sleep(0.05)
            if self.stop.is_set():
                state["abandoned"] = True
                break

    def _session_loop(self, state: dict[str, Any]) -> None:
        conn = None
        try:
            # Connecting is bounded by libpq's connect_timeout per host (the multi-host DSN).
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)
            except Exception as exc:  # noqa: BLE001 - every failure is a client-visible error
                if not state["abandoned"]:
                    self.connect_errors.append((self.now(), short_error(exc)))
                state["busy_since"] = None
                time.sleep(0.2)
                return
            state["busy_since"] = None
            while not state["abandoned"] and not self.stop.is_set():
                attempt = Attempt(self._new_id() if self.numbered else 0, self.now())
                with self.lock:
                    self.attempts.append(attempt)
                state["attempt"] = attempt
                state["busy_since"] = attempt.sent
                try:
                    params = (attempt.id,) if self.numbered else None
                    row = conn.execute(self.statement, params).fetchone()
                    if attempt.error is None:
                        attempt.acked = self.now()
                    else:  # the client had already given up: a late answer
                        attempt.acked, attempt.late = self.now(), True
                    attempt.server = str(row[0]) if row else None
                except Exception as exc:  # noqa: BLE001
                    if attempt.error is None:
                        attempt.error, attempt.errored = short_error(exc), self.now()
                    state["busy_since"] = None
                    time.sleep(0.1)
                    return
                state["busy_since"] = None
                time.sleep(self.interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def short_error(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def in_recovery(conn: "psycopg.Connection[Any]") -> bool:
    """pg_is_in_recovery() of the server ``conn`` is connected to."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is None:  # a SELECT of a function always has a row; psycopg types it optional
        raise psycopg.InterfaceError("pg_is_in_recovery() returned no row")
    return bool(row[0])


class Monitor:
    """Samples every member's PostgreSQL (pg_is_in_recovery() on its own 5432), its Patroni
    /primary check, and Patroni's /cluster, each in its own thread so a frozen member stalls
    only its own sampler."""

    def __init__(self, cluster: LocalCluster, epoch: float) -> None:
        self.cluster = cluster
        self.epoch = epoch
        self.stop = threading.Event()
        # (time, member, writable) / (time, member, primary_check_ok) / (time, {member: (role, state)})
        self.pg: list[Sample] = []
        self.checks: list[Sample] = []
        self.views: list[View] = []
        self.threads = [threading.Thread(target=self._pg, args=(n,), daemon=True) for n in cluster.nodes]
        self.threads += [threading.Thread(target=self._check, args=(n,), daemon=True) for n in cluster.nodes]
        self.threads.append(threading.Thread(target=self._views, daemon=True))

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()

    def _pg(self, node: Node) -> None:
        dsn = self.cluster.dsn(node.ip, PORTS["postgres"]) + " connect_timeout=1"
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
                self.pg.append((self.now(), node.member.name, not in_recovery(conn)))
            except Exception:  # noqa: BLE001 - down is a sample too (not writable)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self.stop.wait(SAMPLE_INTERVAL)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _check(self, node: Node) -> None:
        client = self.cluster.patroni_client(node)
        while not self.stop.is_set():
            try:  # 200 from the member that holds the leader key and runs as primary
                ok = client.request("GET", "/primary", timeout=1)[0] == 200
            except OSError:
                ok = False
            self.checks.append((self.now(), node.member.name, ok))
            self.stop.wait(SAMPLE_INTERVAL)

    def _views(self) -> None:
        order = list(self.cluster.nodes)
        while not self.stop.is_set():
            for node in order:
                try:
                    view = self.cluster.patroni(node, timeout=1)
                except (OSError, ValueError):
                    continue
                self.views.append((self.now(), {m["name"]: (m.get("role", ""), m.get("state", ""))
                                                for m in view.get("members", [])}))
                order.remove(node)
                order.insert(0, node)
                break
            self.stop.wait(0.5)
