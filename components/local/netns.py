"""Network namespaces: each member's machine a host of its own, with the address it has on EC2.

Each member's machine joins a network namespace with a veth pair to a bridge in the root
namespace:

    root namespace: bridge pb<X>x<Y> with <prefix>254/24 (clients, drills, the AWS stand-in)
    member n:       namespace pgha-<X>-<Y>-<n>, eth0 = <prefix><n>/24, lo up

Every connection between two members comes from the sender's own address, as on EC2. A
partition is a set of blackhole routes inside the namespaces (the member cut off cannot reach
the others, nor they it; the root namespace still reaches everyone, as clients in other AZs
would). Inside each namespace a relay listens on the AWS stand-in's TLS port of 127.0.0.1 and
forwards to the root namespace's, so pgBackRest's endpoint is ``localhost`` (pgBackRest checks
the name, and cannot check an IP address).

Processes enter a member's namespace through :func:`entered`, around ``fork``: ``setns``
switches only the calling thread, which the child inherits.
"""

import contextlib
import ctypes
import os
import re
import subprocess
import time
from typing import Iterator, Sequence

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_PREFIX_RE = re.compile(r"^10\.(\d{1,3})\.(\d{1,3})\.$")


class NetnsError(RuntimeError):
    """A namespace, link or route could not be set up."""


def check_prefix(prefix: str) -> tuple[int, int]:
    """Namespace mode uses a private /24: ``10.X.Y.`` (members .1-.9, the bridge .254)."""
    match = _PREFIX_RE.match(prefix)
    if not match or not all(0 <= int(g) <= 255 for g in match.groups()):
        raise NetnsError(f"address prefix {prefix!r}: namespace mode needs a private /24 such as 10.213.0.")
    return int(match.group(1)), int(match.group(2))


def namespace(prefix: str, index: int) -> str:
    x, y = check_prefix(prefix)
    return f"pgha-{x}-{y}-{index}"


def bridge(prefix: str) -> str:
    x, y = check_prefix(prefix)
    return f"pb{x}x{y}"  # interface names: at most 15 characters


def host_link(prefix: str, index: int) -> str:
    x, y = check_prefix(prefix)
    return f"pv{x}x{y}x{index}"


def bridge_ip(prefix: str) -> str:
    check_prefix(prefix)
    return f"{prefix}254"


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _exists(link: str, netns: str | None = None) -> bool:
    return _ip("link", "show", link, netns=netns, check=False).returncode == 0


def setup(prefix: str, hosts: Sequence[int]) -> None:
    """Make the bridge and a namespace for each host number (idempotent)."""
    br, gateway = bridge(prefix), bridge_ip(prefix)
    if not _exists(br):
        _ip("link", "add", br, "type", "bridge")
    if gateway not in _ip("-4", "addr", "show", "dev", br).stdout:
        _ip("addr", "add", f"{gateway}/24", "dev", br)
    _ip("link", "set", br, "up")
    for i in hosts:
        ns, veth = namespace(prefix, i), host_link(prefix, i)
        if not os.path.exists(os.path.join(NETNS_DIR, ns)):
            _ip("netns", "add", ns)
        if not _exists(veth):
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", br, "up")
        if f"{prefix}{i}/" not in _ip("-4", "addr", "show", "dev", "eth0", netns=ns).stdout:
            _ip("addr", "add", f"{prefix}{i}/24", "dev", "eth0", netns=ns)
        _ip("link", "set", "eth0", "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)


def add_address(netns: str | None, cidr: str, device: str) -> None:
    """Give ``device`` of ``netns`` (None: the host's) the address ``cidr`` (idempotent)."""
    if cidr.split("/")[0] + "/" not in _ip("-4", "addr", "show", "dev", device, netns=netns).stdout:
        _ip("addr", "add", cidr, "dev", device, netns=netns)


def remove_address(netns: str | None, cidr: str, device: str) -> None:
    """Take ``cidr`` off ``device`` again (idempotent)."""
    if cidr.split("/")[0] + "/" in _ip("-4", "addr", "show", "dev", device, netns=netns).stdout:
        _ip("addr", "del", cidr, "dev", device, netns=netns)


def teardown(prefix: str, hosts: Sequence[int], timeout: float = 10.0, keep_bridge: bool = False) -> None:
    """Remove the veth pairs, the namespaces and (unless another cluster still uses it, as a
    branch its source's) the bridge, and wait until the links are gone.

    The veth pairs are deleted first, by name: a namespace's links otherwise go away
    asynchronously after ``ip netns del``, and a ``setup`` right after could find a dying link,
    skip creating it, then fail on ``Cannot find device``."""
    links = [host_link(prefix, i) for i in hosts]
    for i, veth in zip(hosts, links):
        if _exists(veth):
            _ip("link", "del", veth, check=False)
        if os.path.exists(os.path.join(NETNS_DIR, namespace(prefix, i))):
            _ip("netns", "del", namespace(prefix, i), check=False)
    if not keep_bridge:
        links.append(bridge(prefix))
        if _exists(bridge(prefix)):
            _ip("link", "del", bridge(prefix), check=False)
    deadline = time.monotonic() + timeout
    while remaining := [link for link in links if _exists(link)]:
        if time.monotonic() > deadline:
            raise NetnsError(f"links still present {timeout:.0f} s after teardown: {', '.join(remaining)}")
        time.sleep(0.05)


def partition(prefix: str, isolated: int, others: Sequence[int]) -> None:
    """Cut member ``isolated`` off from ``others``, both ways; the root namespace still reaches all."""
    for other in others:
        _ip("route", "replace", "blackhole", f"{prefix}{other}/32", netns=namespace(prefix, isolated))
        _ip("route", "replace", "blackhole", f"{prefix}{isolated}/32", netns=namespace(prefix, other))


def heal(prefix: str, hosts: Sequence[int]) -> None:
    """Remove every blackhole route the partition added."""
    for i in hosts:
        ns = namespace(prefix, i)
        for line in _ip("route", "show", "type", "blackhole", netns=ns).stdout.splitlines():
            _ip("route", "del", "blackhole", line.split()[1], netns=ns, check=False)


def blackholes(prefix: str, index: int) -> list[str]:
    """The blackhole routes in member ``index``'s namespace."""
    out = _ip("route", "show", "type", "blackhole", netns=namespace(prefix, index)).stdout
    return [line.split()[1] for line in out.splitlines() if line.strip()]


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name`` (None: stay), then return.
    A child forked inside the block stays in the namespace."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def relay(netns: str, port: int) -> None:
    """Listen on 127.0.0.1:``port`` inside ``netns``; forward every connection to 127.0.0.1:``port``
    of the namespace this process started in (the root one, where the S3 TLS endpoint is)."""
    import socket
    import threading

    with entered(netns):
        server = socket.create_server(("127.0.0.1", port), backlog=64)

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pgha.local.netns")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("relay", help="a TCP port of this namespace, listening inside another")
    p.add_argument("--netns", required=True)
    p.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    relay(args.netns, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
