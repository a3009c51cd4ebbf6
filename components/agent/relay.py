"""A local TCP relay to the primary's pgBackRest TLS server."""

import socket
import threading

from .errors import LOG


class TcpRelay:
    """127.0.0.1:<ephemeral> -> (host, port), for pgBackRest's TLS connection to the primary's
    TLS server. pgBackRest 2.45 cannot verify an IP in a certificate (IP SANs arrive in 2.46),
    so it connects to `localhost` here and checks that name, which every member certificate
    carries; the relay only moves bytes, the TLS session (and the client certificate) is
    end to end."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    sock.shutdown(how)
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError as exc:
                LOG.error("cannot reach the primary's pgBackRest TLS server %s:%d: %s", *self.target, exc)
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.server.close()

