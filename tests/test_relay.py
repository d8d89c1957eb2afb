"""Relays forward TLS streams hop by hop without reading them, emulate their links' delay and
capacity, follow route changes, and guard their control API."""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transport_support import TlsClient, TlsHashServer, federation
from typer.testing import CliRunner

from interconnect.relay import forwarding
from interconnect.relay.client import RelayControlClient, RelayControlError
from interconnect.relay.config import RelayConfig, RelayConfigError, load_relay_config, write_token
from interconnect.relay.routes import LinkEmulation, RouteEntry, RouteError, format_header, parse_header
from interconnect.relay.runner import BackgroundRelay, stop_all
from interconnect.relay.shaping import LinkClock
from paroma.cli import app

TOKEN = "t" * 40


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[TlsHashServer, object]]:
    _, aggregator, site = federation(tmp_path)
    with TlsHashServer(aggregator) as server:
        yield server, site


@pytest.fixture
def relays() -> Iterator[list[BackgroundRelay]]:
    started = [
        BackgroundRelay(RelayConfig(f"r{i}", "127.0.0.1", 0, "127.0.0.1", 0, TOKEN)).start() for i in range(4)
    ]
    yield started
    stop_all(started)


def control(relay: BackgroundRelay) -> RelayControlClient:
    return RelayControlClient(relay.relay.name, relay.service.control_url, TOKEN)


def chain(
    relays: list[BackgroundRelay],
    target: int,
    version: int = 1,
    emulation: LinkEmulation | None = None,
    path: str = "p",
) -> int:
    """Install ``path`` through ``relays`` (in order) to ``target``; returns the ingress port."""
    emulation = emulation or LinkEmulation()
    answer: dict[str, object] = {}
    for i in reversed(range(len(relays))):
        last = i == len(relays) - 1
        next_port = target if last else relays[i + 1].relay.port
        entry = RouteEntry(
            path, version, "127.0.0.1", next_port, not last, emulation, emulation, 0 if i == 0 else None
        )
        answer = control(relays[i]).put_route(entry)
    port = answer["ingress_port"]
    assert isinstance(port, int)
    return port


def test_tls_goes_end_to_end_and_relays_see_only_ciphertext(
    tls: tuple[TlsHashServer, object], relays: list[BackgroundRelay], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, site = tls
    seen: list[bytes] = []
    feed = forwarding.Direction.feed

    def tap(self: forwarding.Direction, data: bytes) -> None:
        seen.append(bytes(data))
        feed(self, data)

    monkeypatch.setattr(forwarding.Direction, "feed", tap)
    # The copying path, so that the tap sees the bytes (spliced, they never reach user space).
    monkeypatch.setattr(forwarding, "ZERO_COPY", False)
    ingress = chain(relays[:3], server.port)
    secret = b"Patient/123 LOINC 2093-3 cholesterol 287 mg/dL " * 20_000
    with TlsClient(ingress, site) as client:  # type: ignore[arg-type]
        assert client.send_and_hash(secret) == hashlib.sha256(secret).digest()
    relayed = b"".join(seen)
    # Every hop carried the whole stream (3 hops x payload), and none of it was plaintext.
    assert len(relayed) > 3 * len(secret)
    assert b"Patient/123" not in relayed and b"cholesterol" not in relayed
    # The aggregator authenticated the site itself: TLS was not terminated on the way.
    assert server.peers == ["cleveland"]
    status = control(relays[1]).routes()["paths"][0]
    assert status["bytes_down"] > len(secret) and status["connections_total"] == 1


def _median_ping(port: int, site: object, n: int = 7) -> float:
    with TlsClient(port, site) as client:  # type: ignore[arg-type]
        client.ping()
        return statistics.median(client.ping() for _ in range(n))


def _transfer(port: int, site: object, payload: bytes) -> float:
    with TlsClient(port, site) as client:  # type: ignore[arg-type]
        client.ping()
        start = time.perf_counter()
        assert client.send_and_hash(payload) == hashlib.sha256(payload).digest()
        return time.perf_counter() - start


def test_delay_is_added_per_hop_and_pipelined(
    tls: tuple[TlsHashServer, object], relays: list[BackgroundRelay]
) -> None:
    server, site = tls
    hop_s = 0.010
    plain = _median_ping(chain(relays[:3], server.port, 1), site)
    delayed_port = chain(relays[:3], server.port, 2, LinkEmulation(hop_s * 1e6))
    delayed = _median_ping(delayed_port, site)
    # 3 hops each way: the round trip carries at least 6 emulated delays.
    assert delayed >= 6 * hop_s * 0.95
    assert delayed / plain > 5
    # A 4 MB stream is many chunks; pipelined, it pays the path delay about once, not per chunk.
    payload = os.urandom(4 * 2**20)
    base = _transfer(chain(relays[:3], server.port, 3), site, payload)
    slow = _transfer(chain(relays[:3], server.port, 4, LinkEmulation(hop_s * 1e6)), site, payload)
    assert slow - base < 20 * 3 * hop_s


def test_capacity_is_emulated(tls: tuple[TlsHashServer, object], relays: list[BackgroundRelay]) -> None:
    server, site = tls
    payload = os.urandom(2 * 2**20)
    free = _transfer(chain(relays[:3], server.port, 1), site, payload)
    mbps = 40.0
    limited = _transfer(chain(relays[:3], server.port, 2, LinkEmulation(0, mbps, "l")), site, payload)
    theory = len(payload) * 8 / (mbps * 1e6)
    assert limited >= 0.9 * theory
    assert limited / free > 3


def test_link_clock_is_a_fifo_link() -> None:
    clock = LinkClock.of(LinkEmulation(delay_us=1000, capacity_mbps=8))  # 1 MB/s, 1 ms
    assert clock.due(0.0, 1000) == pytest.approx(0.002)  # 1 ms sending + 1 ms propagation
    assert clock.due(0.0, 1000) == pytest.approx(0.003)  # queued behind the first
    assert clock.backlog_bytes(0.0) == pytest.approx(2000)
    assert clock.due(1.0, 1000) == pytest.approx(1.002)  # idle link: no queue
    free = LinkClock.of(LinkEmulation(delay_us=500))
    assert free.due(2.0, 10**9) == pytest.approx(2.0005)


def test_route_change_closes_old_connections_and_new_ones_take_the_new_route(
    tls: tuple[TlsHashServer, object], relays: list[BackgroundRelay]
) -> None:
    server, site = tls
    a, b, c, _ = relays
    ingress = chain([a, b], server.port, 1)
    old = TlsClient(ingress, site)  # type: ignore[arg-type]
    old.ping()
    assert b.relay.open_connections("p") == 1
    # The controller's order: the new route's relays first (downstream first), then the old one's.
    control(c).put_route(RouteEntry("p", 2, "127.0.0.1", server.port, False))
    answer = control(a).put_route(RouteEntry("p", 2, "127.0.0.1", c.relay.port, True, ingress_port=ingress))
    assert answer["ingress_port"] == ingress and answer["closed"] == 1
    # Closing the first hop tears the old chain down; b closes whatever is left of it.
    control(b).delete_route("p")
    assert b.relay.open_connections("p") == 0
    with pytest.raises((ConnectionError, OSError)):
        old.ping()
    old.close()
    with TlsClient(ingress, site) as new:  # type: ignore[arg-type]
        new.ping()
    assert c.relay.stats["p"].connections_total == 1
    assert b.relay.stats["p"].connections_total == 1
    # A connection still set up on the old version is refused by a relay of the new route.
    import socket

    with socket.create_connection(("127.0.0.1", c.relay.port), timeout=5) as raw:
        raw.sendall(format_header("p", 1))
        with pytest.raises(ConnectionResetError):
            raw.recv(10)
    assert c.relay.stats["p"].connections_refused == 1
    with pytest.raises(RelayControlError, match="older than the installed 2"):
        control(a).put_route(RouteEntry("p", 1, "127.0.0.1", c.relay.port, True))


def test_control_api_needs_the_secret_and_checks_routes(relays: list[BackgroundRelay]) -> None:
    url = relays[0].service.control_url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "relay": "r0"}
    anonymous = httpx.get(f"{url}/routes")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{url}/routes", headers={"Authorization": "Bearer wrong"}).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = httpx.put(
        f"{url}/routes/p",
        headers=auth,
        json={"path_id": "p", "version": 1, "next_host": "h", "next_port": 99999, "next_is_relay": False},
    )
    assert bad.status_code == 422 and "next_port" in bad.json()["detail"]
    bad = httpx.put(
        f"{url}/routes/p",
        headers=auth,
        json={"path_id": "q", "version": 1, "next_host": "h", "next_port": 1, "next_is_relay": False},
    )
    assert bad.status_code == 422 and "does not match" in bad.json()["detail"]
    bad = httpx.put(
        f"{url}/routes/p",
        headers=auth,
        json={
            "path_id": "p",
            "version": 1,
            "next_host": "h",
            "next_port": 1,
            "next_is_relay": False,
            "downstream": {"delay_us": -1},
        },
    )
    assert bad.status_code == 422 and "downstream.delay_us" in bad.json()["detail"]
    missing = httpx.delete(f"{url}/routes/nothing", headers=auth)
    assert missing.status_code == 404 and "nothing" in missing.json()["detail"]
    assert httpx.get(f"{url}/routes", headers=auth).json()["paths"] == []


def test_relay_header() -> None:
    assert parse_header(format_header("site-cleveland", 7)) == ("site-cleveland", 7)
    for bad in (b"GET / HTTP/1.1\r\n", b"PAROMA-RELAY/1 a b c\r\n", b"PAROMA-RELAY/1 a x\r\n"):
        with pytest.raises(RouteError):
            parse_header(bad)
    with pytest.raises(RouteError, match="path id 'a b'"):
        format_header("a b", 1)


def test_relay_config_file(tmp_path: Path) -> None:
    token = tmp_path / "relay.token"
    write_token(token)
    config = tmp_path / "relay.toml"
    config.write_text(
        '[relay]\nname = "router-1"\nport = 7101\ncontrol_port = 7201\ntoken_file = "relay.token"\n'
    )
    loaded = load_relay_config(config)
    assert (loaded.name, loaded.port, loaded.control_port, loaded.host) == (
        "router-1",
        7101,
        7201,
        "127.0.0.1",
    )
    config.write_text(
        '[relay]\nname = "router-1"\nport = 70000\ncontrol_port = 7201\ntoken_file = "relay.token"\n'
    )
    with pytest.raises(
        RelayConfigError, match=r"relay\.port: expected a TCP port from 0 to 65535, got 70000"
    ):
        load_relay_config(config)
    token.chmod(0o644)
    config.write_text(
        '[relay]\nname = "router-1"\nport = 7101\ncontrol_port = 7201\ntoken_file = "relay.token"\n'
    )
    with pytest.raises(RelayConfigError, match="readable by others"):
        load_relay_config(config)
    config.write_text('[relay]\nname = "router-1"\nprot = 1\n')
    with pytest.raises(RelayConfigError, match="unknown field"):
        load_relay_config(config)
    result = CliRunner().invoke(app, ["relay", "run", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "none.toml" in result.stderr


def test_layout_writes_relay_and_controller_files(tmp_path: Path) -> None:
    from interconnect.relay.controller_config import load_controller_config

    runner = CliRunner()
    folder = tmp_path / "fed"
    args = [
        "relay",
        "layout",
        str(folder),
        "--site",
        "cleveland=hospital-cleveland",
        "--aggregator-port",
        "9092",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    router1 = load_relay_config(folder / "relays" / "router-1.toml")
    access4 = load_relay_config(folder / "relays" / "access-4.toml")
    # Routers and access nodes in topology order: router-1 first, access-4 tenth.
    assert (router1.port, router1.control_port, access4.port) == (7100, 7200, 7109)
    controller = load_controller_config(folder / "controller.toml")
    assert controller.sites == {"cleveland": "hospital-cleveland"}
    assert controller.relays["access-4"].control_url == "http://127.0.0.1:7209"
    assert controller.token == router1.token and controller.aggregator.port == 9092
    bad = runner.invoke(
        app, ["relay", "layout", str(folder), "--site", "x=nowhere", "--aggregator-port", "1"]
    )
    assert bad.exit_code == 2 and "node 'nowhere' is not in topology" in bad.stderr
    clash = runner.invoke(app, [*args, "--base-port", "7100", "--control-base-port", "7105"])
    assert clash.exit_code == 2 and "overlap" in clash.stderr
    token = runner.invoke(app, ["relay", "token", str(tmp_path / "secret")])
    assert token.exit_code == 0 and (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_control_api_over_https_with_a_federation_certificate(tmp_path: Path) -> None:
    import httpx

    from interconnect.pki import FederationPKI
    from interconnect.pki.tls import ssl_client_context
    from interconnect.relay.controller_config import load_controller_config

    pki = FederationPKI.create(tmp_path / "pki", name="f")
    issued = pki.issue("relay", "router-1", ["127.0.0.1"])
    config = RelayConfig("router-1", "127.0.0.1", 0, "127.0.0.1", 0, TOKEN, issued.cert_path, issued.key_path)
    with BackgroundRelay(config) as relay:
        url = relay.service.control_url
        assert url.startswith("https://")
        with httpx.Client(verify=ssl_client_context(ca_path=pki.ca_path)) as http:
            client = RelayControlClient("router-1", url, TOKEN, http=http)
            assert client.healthy() and client.routes()["paths"] == []
        # A client that does not trust the federation CA does not talk to the relay.
        other = FederationPKI.create(tmp_path / "other", name="o")
        with httpx.Client(verify=ssl_client_context(ca_path=other.ca_path)) as http:
            assert not RelayControlClient("router-1", url, TOKEN, http=http).healthy()
    runner = CliRunner()
    folder = tmp_path / "fed"
    args = ["relay", "layout", str(folder), "--site", "va=hospital-va", "--aggregator-port", "9092"]
    result = runner.invoke(app, [*args, "--pki", str(tmp_path / "pki")])
    assert result.exit_code == 0, result.stderr
    loaded = load_relay_config(folder / "relays" / "router-1.toml")
    assert loaded.tls_cert == pki.get("relay", "router-1").cert_path.resolve()
    controller = load_controller_config(folder / "controller.toml")
    assert controller.ca_file == pki.ca_path.resolve()
    assert controller.relays["router-2"].control_url == "https://127.0.0.1:7201"
    assert pki.get("relay", "access-4").hosts == ("127.0.0.1",)
