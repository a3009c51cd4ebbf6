"""hooks.settle_pgbouncer: what a role change sends to the local PgBouncer, and when (PgBouncer's
admin console recorded, PostgreSQL's recovery state scripted; the real console is exercised by
test_hooks.py and the drills)."""

import time
from pathlib import Path
from typing import Any

import pytest

from pgha.agent import hooks

from .agent_helpers import make_node


class Console:
    """PgBouncer's admin console as settle_pgbouncer sees it: every command, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []

    def __call__(self, dsn: str, query: str) -> tuple[list[str], list[tuple]]:
        self.sent.append((time.monotonic(), query))
        return [], []

    @property
    def commands(self) -> list[str]:
        return [q for _, q in self.sent]


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Console:
    recorder = Console()
    monkeypatch.setattr(hooks, "admin_query", recorder)
    return recorder


def recovery_ends_after(seconds: float) -> Any:
    began = time.monotonic()
    return lambda: time.monotonic() - began < seconds


def test_a_new_primary_holds_new_transactions_until_its_recovery_ends(tmp_path: Path, console: Console):
    began = time.monotonic()
    assert hooks.settle_pgbouncer(make_node(tmp_path), "primary", recovery_ends_after(0.6), hold_max=5)
    assert console.commands == ["PAUSE", "RECONNECT", "RESUME"]
    paused, reconnected, resumed = (t - began for t, _ in console.sent)
    # Held from the start, let go within a poll or two of the promotion's end, not before it.
    assert paused < 0.2 and 0.6 <= reconnected < 0.6 + 3 * hooks.SETTLE_POLL and resumed >= reconnected


def test_a_promotion_longer_than_the_hold_lets_clients_go_and_still_reconnects_at_its_end(tmp_path: Path,
                                                                                         console: Console):
    began = time.monotonic()
    assert hooks.settle_pgbouncer(make_node(tmp_path), "primary", recovery_ends_after(1.0), hold_max=0.4)
    assert console.commands == ["PAUSE", "RESUME", "RECONNECT"]
    resumed, reconnected = console.sent[1][0] - began, console.sent[2][0] - began
    assert 0.4 <= resumed < 0.8 and reconnected >= 1.0


def test_a_new_replica_is_never_paused(tmp_path: Path, console: Console):
    states = iter([False, False, True])  # still a primary twice, then in recovery
    assert hooks.settle_pgbouncer(make_node(tmp_path), "replica", lambda: next(states), hold_max=5)
    assert console.commands == ["RECONNECT"]


def test_an_unreachable_postgres_resumes_the_pooler_at_the_deadline(tmp_path: Path, console: Console):
    def down() -> bool:
        raise OSError("connection refused")

    assert not hooks.settle_pgbouncer(make_node(tmp_path), "primary", down, timeout=0.5, hold_max=5)
    assert console.commands == ["PAUSE", "RESUME"]
