"""Real TLS endpoints for the PKI and relay tests: a federation, a TLS server on a free port that
hashes what it receives, and a client speaking its tiny protocol.

Protocol (inside TLS): ``H`` + 8-byte length + payload -> 32-byte SHA-256 of the payload;
``P`` -> ``p`` (a ping for round-trip times). Repeated until the client closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
from pathlib import Path

from interconnect.pki import FederationPKI, IssuedCert, ssl_client_context, ssl_server_context


def _recv_exact(conn: ssl.SSLSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = conn.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed")
        out += chunk
    return bytes(out)


class TlsHashServer:
    """A TLS server (mutual TLS by default) on 127.0.0.1; records each client's certificate CN."""

    def __init__(self, issued: IssuedCert, *, context: ssl.SSLContext | None = None) -> None:
        self.context = context or ssl_server_context(issued)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.peers: list[str] = []
        self.handshake_errors: list[str] = []
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TlsHashServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            raw.close()
            return
        self.connections += 1
        peer = conn.getpeercert()
        if peer:
            self.peers.append(dict(x[0] for x in peer["subject"]).get("commonName", ""))
        try:
            while True:
                command = conn.recv(1)
                if not command:
                    return
                if command == b"P":
                    conn.sendall(b"p")
                elif command == b"H":
                    n = int.from_bytes(_recv_exact(conn, 8), "big")
                    digest = hashlib.sha256()
                    left = n
                    while left:
                        chunk = conn.recv(min(left, 1 << 20))
                        if not chunk:
                            return
                        digest.update(chunk)
                        left -= len(chunk)
                    conn.sendall(digest.digest())
                else:
                    return
        except (OSError, ssl.SSLError, ConnectionError):
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()


class TlsClient:
    def __init__(
        self, port: int, issued: IssuedCert | None, *, ca: Path | None = None, timeout: float = 20
    ) -> None:
        context = ssl_client_context(issued, ca_path=ca, crl_path=issued.crl_path if issued else None)
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = context.wrap_socket(raw, server_hostname="127.0.0.1")

    def send_and_hash(self, payload: bytes) -> bytes:
        self.conn.sendall(b"H" + len(payload).to_bytes(8, "big"))
        view = memoryview(payload)
        for i in range(0, len(payload), 1 << 20):
            self.conn.sendall(view[i : i + (1 << 20)])
        return _recv_exact(self.conn, 32)

    def ping(self) -> float:
        start = time.perf_counter()
        self.conn.sendall(b"P")
        if _recv_exact(self.conn, 1) != b"p":
            raise ConnectionError("bad ping answer")
        return time.perf_counter() - start

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def federation(folder: Path) -> tuple[FederationPKI, IssuedCert, IssuedCert]:
    pki = FederationPKI.create(folder / "pki", name="test-federation")
    return pki, pki.issue("aggregator", "aggregator"), pki.issue("site", "cleveland")
