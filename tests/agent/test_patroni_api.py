"""The agent's client of Patroni's TLS REST API: the cluster CA, and the member's certificate."""

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from pgha.agent import patroni_api
from pgha.local.tls import issue, make_ca

from .agent_helpers import make_node


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # Which client certificate came (Patroni's verify_client: optional asks for one).
        cert = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in cert["subject"]) if cert else {}
        data = json.dumps({"client": subject.get("commonName")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def tls_patroni(tmp_path: Path) -> Iterator[tuple[dict, int]]:
    """A TLS server with the member's certificate on 127.0.0.1, asking for an optional client
    certificate of the same CA, and the node facts whose tls directory holds CA, cert and key."""
    ca = make_ca("pg-x CA")
    member = issue(ca, common_name="pg-x-1", ips=["127.0.0.1"])
    tls = tmp_path / "etc" / "tls"
    tls.mkdir(parents=True)
    (tls / "ca.crt").write_text(ca.cert_pem)
    (tls / "node.crt").write_text(member.cert_pem)
    (tls / "node.key").write_text(member.key_pem)
    (tls / "node.key").chmod(0o600)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls / "node.crt", tls / "node.key")
    server_ctx.load_verify_locations(tls / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    node = make_node(tmp_path, patroni_tls=True, ports={"patroni": server.server_address[1]})
    try:
        yield node, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_client_speaks_https_with_the_ca_and_the_member_certificate(tls_patroni):
    node, port = tls_patroni
    client = patroni_api.local_client(node)
    assert client.base == f"https://127.0.0.1:{port}"
    assert client.get("/patroni") == {"client": "pg-x-1"}


def test_a_member_s_https_api_url_gets_the_node_s_tls(tls_patroni):
    node, port = tls_patroni
    member = {"name": "pg-x-2", "api_url": f"https://127.0.0.1:{port}/patroni"}
    client = patroni_api.member_client(member, node=node)
    assert client is not None and client.get("/primary") == {"client": "pg-x-1"}
    # Without the node's TLS there is nothing to verify the member with.
    assert patroni_api.member_client(member) is None
    assert patroni_api.member_client({"api_url": "ftp://127.0.0.1/"}, node=node) is None


def test_plain_http_is_not_tried_against_a_tls_api(tls_patroni):
    node, port = tls_patroni
    plain = patroni_api.PatroniClient("127.0.0.1", port)
    with pytest.raises(OSError):
        plain.get("/patroni", timeout=3)


def test_a_server_certificate_of_another_ca_is_refused(tls_patroni):
    node, port = tls_patroni
    Path(node["paths"]["tls"], "ca.crt").write_text(make_ca("another CA").cert_pem)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        patroni_api.local_client(node).get("/patroni", timeout=3)
