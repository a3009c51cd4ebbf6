"""Network namespaces for the local members, for real: ip netns, veth, a bridge, blackhole
routes, setns around fork, and the relay that carries the S3 port into a namespace."""

import contextlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from pgha.local import netns

PREFIX = "10.214.7."


def test_prefix_and_names():
    assert netns.namespace(PREFIX, 2) == "pgha-214-7-2"
    assert len(netns.host_link("10.255.255.", 9)) <= 15 and len(netns.bridge("10.255.255.")) <= 15
    assert netns.bridge_ip(PREFIX) == "10.214.7.254"
    for bad in ("127.0.1.", "10.214.7", "192.168.1.", "10.300.1."):
        with pytest.raises(netns.NetnsError, match="private /24"):
            netns.check_prefix(bad)


def _serve(ns: str, ip: str, port: int) -> subprocess.Popen:
    code = ("import socket; s = socket.create_server((%r, %d)); "
            "[c.sendall(b'hello') or c.close() for c in iter(lambda: s.accept()[0], None)]") % (ip, port)
    with netns.entered(ns):
        return subprocess.Popen([sys.executable, "-c", code])


def _reach(ip: str, port: int, ns: str | None = None) -> bool:
    with netns.entered(ns):
        try:
            with socket.create_connection((ip, port), timeout=1) as conn:
                return conn.recv(5) == b"hello"
        except OSError:
            return False


@pytest.fixture
def two_hosts():
    netns.teardown(PREFIX, [1, 2])
    netns.setup(PREFIX, [1, 2])
    netns.setup(PREFIX, [1, 2])  # idempotent
    yield
    netns.teardown(PREFIX, [1, 2])


def test_members_reach_each_other_until_partitioned_and_clients_reach_both(two_hosts):
    one, two = netns.namespace(PREFIX, 1), netns.namespace(PREFIX, 2)
    servers = [_serve(one, f"{PREFIX}1", 7001), _serve(two, f"{PREFIX}2", 7002)]
    try:
        deadline = time.monotonic() + 5
        while not (_reach(f"{PREFIX}1", 7001) and _reach(f"{PREFIX}2", 7002)):
            assert time.monotonic() < deadline, "servers in the namespaces never answered from the root namespace"
            time.sleep(0.1)
        assert _reach(f"{PREFIX}2", 7002, ns=one) and _reach(f"{PREFIX}1", 7001, ns=two)
        # Inside a namespace, 127.0.0.1 is its own: the root namespace's listeners are not there.
        assert not _reach("127.0.0.1", 7001, ns=two)
        netns.partition(PREFIX, 1, [2])
        assert netns.blackholes(PREFIX, 1) == [f"{PREFIX}2"] and netns.blackholes(PREFIX, 2) == [f"{PREFIX}1"]
        assert not _reach(f"{PREFIX}2", 7002, ns=one) and not _reach(f"{PREFIX}1", 7001, ns=two)
        assert _reach(f"{PREFIX}1", 7001) and _reach(f"{PREFIX}2", 7002)  # clients still reach both sides
        netns.heal(PREFIX, [1, 2])
        assert netns.blackholes(PREFIX, 1) == [] and _reach(f"{PREFIX}2", 7002, ns=one)
    finally:
        for server in servers:
            server.kill()
            server.wait()


def test_relay_carries_a_root_namespace_port_into_a_member(two_hosts):
    ns = netns.namespace(PREFIX, 1)
    root_server = socket.create_server(("127.0.0.1", 7010))

    def answer_until_closed() -> None:
        with contextlib.suppress(OSError):  # accept() fails once the test closes the socket
            while True:
                conn, _ = root_server.accept()
                conn.sendall(b"hello")
                conn.close()

    threading.Thread(target=answer_until_closed, daemon=True).start()
    relay = subprocess.Popen([sys.executable, "-m", "pgha.local.netns", "relay", "--netns", ns, "--port", "7010"])
    try:
        deadline = time.monotonic() + 5
        while not _reach("127.0.0.1", 7010, ns=ns):
            assert time.monotonic() < deadline, "the relay never answered inside the namespace"
            time.sleep(0.1)
    finally:
        relay.kill()
        relay.wait()
        root_server.close()


def test_setup_right_after_teardown_finds_no_dying_links():
    # A namespace's veth disappears asynchronously after `ip netns del`; teardown must wait for
    # it, or the next setup sees the dying link, skips creating it and fails.
    try:
        for _ in range(5):
            netns.setup(PREFIX, [1, 2])
            netns.teardown(PREFIX, [1, 2])
            assert not any(netns._exists(link) for link in (netns.host_link(PREFIX, 1), netns.host_link(PREFIX, 2),
                                                            netns.bridge(PREFIX)))
        netns.setup(PREFIX, [1, 2])
        for i in (1, 2):
            out = netns._ip("-4", "addr", "show", "dev", "eth0", netns=netns.namespace(PREFIX, i)).stdout
            assert f"{PREFIX}{i}/24" in out
    finally:
        netns.teardown(PREFIX, [1, 2])
