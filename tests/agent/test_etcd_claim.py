"""The etcd claim that makes a timer's work exclusive, against a real etcd on loopback, and the
backup command taking it: two members whose views both name themselves take one backup."""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from pgha.agent import backup
from pgha.agent.errors import AgentError
from pgha.agent.etcd.claim import Claim, ClaimHeld

from .agent_helpers import free_port, make_node, wait_for


@pytest.fixture
def etcd_server(base: Path) -> Iterator[str]:
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(["etcd", "--name=claim-test", f"--data-dir={base / 'etcd'}",
                             f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                             f"--listen-peer-urls=http://127.0.0.1:{peer}",
                             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                             f"--initial-cluster=claim-test=http://127.0.0.1:{peer}"],
                            stdout=subprocess.DEVNULL, stderr=(base / "etcd.log").open("w"))
    try:
        def answers() -> bool:
            try:
                Claim([url], None, "/probe", "probe").__enter__().__exit__()
                return True
            except AgentError:
                return False
        wait_for(answers, timeout=30, what="etcd")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_only_one_of_two_simultaneous_claims_holds_and_the_other_names_the_holder(etcd_server):
    start, entered, outcomes = threading.Barrier(2), threading.Event(), {}

    def contend(owner: str) -> None:
        start.wait()
        try:
            with Claim([etcd_server], None, "/pgha/pg-x/claims/backup-full", owner):
                entered.set()
                outcomes[owner] = "held"
                time.sleep(1.0)  # the loser asks while this one holds it
        except ClaimHeld as held:
            outcomes[owner] = held.holder

    threads = [threading.Thread(target=contend, args=(o,)) for o in ("pg-x-1", "pg-x-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == sorted(["held", next(o for o, v in outcomes.items() if v == "held")])
    # Released on exit: the next claim holds at once.
    with Claim([etcd_server], None, "/pgha/pg-x/claims/backup-full", "pg-x-3"):
        pass


def test_a_claim_is_kept_past_its_ttl_while_held_and_freed_by_its_ttl_when_its_holder_dies(etcd_server):
    key = "/pgha/pg-x/claims/backup-incr"
    with Claim([etcd_server], None, key, "pg-x-1", ttl=2):
        time.sleep(5)  # more than twice the TTL: only the renewals keep it
        with pytest.raises(ClaimHeld, match="pg-x-1 holds"):
            Claim([etcd_server], None, key, "pg-x-2").__enter__()
    dying = Claim([etcd_server], None, key, "pg-x-1", ttl=2).__enter__()
    dying._stop.set()  # a holder that stops renewing and never revokes: killed mid-backup
    with pytest.raises(ClaimHeld):
        Claim([etcd_server], None, key, "pg-x-2").__enter__()

    def free() -> bool:
        try:
            with Claim([etcd_server], None, key, "pg-x-2"):
                return True
        except ClaimHeld:
            return False
    wait_for(free, timeout=10, what="the dead holder's lease to expire")


def test_a_second_endpoint_serves_when_the_first_does_not_answer_and_none_is_an_error(etcd_server):
    dead = f"http://127.0.0.1:{free_port()}"
    with Claim([dead, etcd_server], None, "/k", "pg-x-1") as claim:
        assert claim.endpoint == etcd_server
    with pytest.raises(AgentError, match=f"no etcd member answered: etcd {dead}"):
        Claim([dead], None, "/k", "pg-x-1").__enter__()


def test_two_members_that_both_see_themselves_chosen_take_one_backup(etcd_server, base, monkeypatch):
    calls = base / "calls"
    fake = base / "pgbackrest"
    fake.write_text(f"#!/bin/sh\nfor last; do :; done\necho \"$last\" >> {calls}\n"
                    "[ \"$last\" = backup ] && sleep 1\nexit 0\n")
    fake.chmod(0o755)
    peers = {f"pg-x-{i}": {"ip": "127.0.0.1", "pgdata": "/nonexistent", "socket": "/nonexistent", "etcd": True}
             for i in (1, 2)}
    ports = {"postgres": 5432, "pgbackrest_server": free_port()}
    nodes = [make_node(base, member=m, peers=peers, ports=ports) for m in peers]
    # Views a moment apart: pg-x-1 sees no healthy replica (it backs up as the primary), pg-x-2
    # has just become the synchronous standby (it backs up from the standby).
    views = {"pg-x-1": [("pg-x-1", "leader", "running", 0), ("pg-x-2", "replica", "starting", None)],
             "pg-x-2": [("pg-x-1", "leader", "running", 0), ("pg-x-2", "sync_standby", "streaming", 0)]}

    def patroni_get(node: dict, path: str) -> dict:
        assert path == "/cluster"
        return {"members": [{"name": n, "role": r, "state": s, "lag": lag} for n, r, s, lag in views[node["member"]]]}
    monkeypatch.setattr(backup, "patroni_get", patroni_get)
    monkeypatch.setattr(backup, "backup_claim", lambda node, backup_type: Claim(
        [etcd_server], None, backup.claim_key(node, backup_type), node["member"]))
    assert all(backup.choose_backup_member(patroni_get(n, "/cluster"))[0] == n["member"] for n in nodes)

    start, codes = threading.Barrier(2), []

    def fire(node: dict) -> None:
        start.wait()
        codes.append(backup.cmd_backup(node, argparse.Namespace(type="full", here=False, pgbackrest=str(fake))))
    threads = [threading.Thread(target=fire, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0]
    assert calls.read_text().split() == ["backup", "expire"]
