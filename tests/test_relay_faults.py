"""A relay that cannot carry a stream resets it, so that a TLS client retries instead of
taking a broken path for a TLS failure.

Flower's SuperNode stops retrying a request whose error mentions SSL/TLS (it takes it for a
certificate problem) and then leaves the federation. A stream that a relay closes with a FIN
in the middle of the TLS handshake is exactly such an error ("EOF occurred in violation of
protocol"); a reset is a transport error the SuperNode retries, landing on the re-routed path.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from flwr.supercore.retry.http_retry import make_simple_http_retry_invoker
from transport_support import federation

from interconnect.pki import IssuedCert, ssl_server_context
from interconnect.relay.client import RelayControlClient
from interconnect.relay.config import RelayConfig
from interconnect.relay.routes import RouteEntry
from interconnect.relay.runner import BackgroundRelay, stop_all

TOKEN = "f" * 40


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class HttpsServer:
    """A real HTTPS server with the aggregator's federation certificate."""

    def __init__(self, issued: IssuedCert) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        context = ssl_server_context(issued, require_client_cert=False)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ClosingServer:
    """Accepts TCP connections, reads what comes and closes them with a FIN, answering nothing:
    what a hop that lost its way on looks like from before it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                conn.recv(4096)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[IssuedCert, Path]:
    _, aggregator, _ = federation(tmp_path)
    return aggregator, aggregator.ca_path


@pytest.fixture
def relays() -> Iterator[list[BackgroundRelay]]:
    started = [
        BackgroundRelay(RelayConfig(f"f{i}", "127.0.0.1", 0, "127.0.0.1", 0, TOKEN)).start() for i in range(3)
    ]
    yield started
    stop_all(started)


def control(relay: BackgroundRelay) -> RelayControlClient:
    return RelayControlClient(relay.relay.name, relay.service.control_url, TOKEN)


def install(relays: list[BackgroundRelay], target: int, version: int, ingress: int = 0) -> int:
    """Path ``p`` through ``relays`` to ``target``; returns the first relay's ingress port."""
    answer: dict[str, object] = {}
    for i in reversed(range(len(relays))):
        last = i == len(relays) - 1
        next_port = target if last else relays[i + 1].relay.port
        entry = RouteEntry(
            "p", version, "127.0.0.1", next_port, not last, ingress_port=ingress if i == 0 else None
        )
        answer = control(relays[i]).put_route(entry)
    port = answer["ingress_port"]
    assert isinstance(port, int)
    return port


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_error(port: int, ca: Path) -> httpx.TransportError:
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=context, timeout=10) as client, pytest.raises(httpx.TransportError) as caught:
        client.get(f"https://127.0.0.1:{port}/")
    return caught.value


def test_a_stream_a_relay_cannot_carry_is_reset_and_flower_retries_it(
    pki: tuple[IssuedCert, Path], relays: list[BackgroundRelay]
) -> None:
    _, ca = pki
    giveup = make_simple_http_retry_invoker().should_giveup
    assert giveup is not None
    closing = ClosingServer()
    try:
        # Without a relay a FIN during the handshake is a TLS error: Flower gives up at once.
        direct = _tls_error(closing.port, ca)
        assert "ssl" in str(direct).lower() and giveup(direct)
        # The same failure two hops behind the site's relay arrives as a reset: Flower retries.
        ingress = install(relays[:2], closing.port, 1)
        behind = _tls_error(ingress, ca)
        assert "reset" in str(behind).lower() and not giveup(behind), str(behind)
        # A next hop that is down (the relay cannot connect): a reset as well.
        control(relays[1]).put_route(RouteEntry("p", 2, "127.0.0.1", _dead_port(), False))
        control(relays[0]).put_route(
            RouteEntry("p", 2, "127.0.0.1", relays[1].relay.port, True, ingress_port=ingress)
        )
        refused = _tls_error(ingress, ca)
        assert "reset" in str(refused).lower() and not giveup(refused), str(refused)
        assert relays[1].relay.stats["p"].connect_failures >= 1
    finally:
        closing.close()


def test_a_request_retried_by_flower_lands_on_the_new_route(
    pki: tuple[IssuedCert, Path], relays: list[BackgroundRelay]
) -> None:
    aggregator, ca = pki
    server = HttpsServer(aggregator)
    try:
        first, dead_end, other = relays
        ingress = install([first, dead_end], _dead_port(), 1)
        invoker = make_simple_http_retry_invoker()
        invoker.max_time = 30.0

        def reroute() -> None:
            time.sleep(0.5)
            install([first, other], server.port, 2, ingress)

        mover = threading.Thread(target=reroute)
        mover.start()
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as client:
            response = invoker.invoke(client.get, f"https://127.0.0.1:{ingress}/")
        mover.join()
        assert response.status_code == 200 and response.text == "hello"
        assert dead_end.relay.stats["p"].connect_failures >= 1
        assert other.relay.stats["p"].connections_total >= 1
    finally:
        server.close()
