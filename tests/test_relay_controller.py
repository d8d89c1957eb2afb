"""The path engine as the relays' controller, on the demo topology with a relay per router:
sites get ingress addresses, a critical CVE or a dead relay moves the traffic, the estimate of a
path's transfer time follows the same routes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from transport_support import TlsClient, TlsHashServer, federation

from interconnect.pce import NvdClient, SecurePathEngine, load_scenario
from interconnect.relay.client import RelayControlClient
from interconnect.relay.config import RelayConfig, write_token
from interconnect.relay.controller import (
    AggregatorEndpoint,
    ControllerError,
    RelayController,
    RelayEndpoint,
    relay_routes,
)
from interconnect.relay.runner import BackgroundRelay, stop_all

ROOT = Path(__file__).resolve().parent.parent
NVD = NvdClient()
SITES = {
    "cleveland": "hospital-cleveland",
    "hungary": "hospital-hungary",
    "switzerland": "hospital-switzerland",
    "va": "hospital-va",
}
RELAY_NODES = [f"router-{i}" for i in range(1, 7)] + [f"access-{i}" for i in range(1, 5)]


def wait_for(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


class Deployment:
    """The demo network: one relay per router/access node (router-5 as its own process)."""

    def __init__(self, tmp_path: Path, process_node: str = "router-5") -> None:
        token_file = tmp_path / "relay.token"
        self.token = write_token(token_file)
        self.threads: dict[str, BackgroundRelay] = {}
        self.endpoints: dict[str, RelayEndpoint] = {}
        for node in RELAY_NODES:
            if node == process_node:
                continue
            relay = BackgroundRelay(RelayConfig(node, "127.0.0.1", 0, "127.0.0.1", 0, self.token)).start()
            self.threads[node] = relay
            self.endpoints[node] = RelayEndpoint(
                node, "127.0.0.1", relay.relay.port, relay.service.control_url
            )
        port, control_port = free_port(), free_port()
        config = tmp_path / f"{process_node}.toml"
        config.write_text(
            f'[relay]\nname = "{process_node}"\nport = {port}\ncontrol_port = {control_port}\n'
            'token_file = "relay.token"\n'
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "interconnect.relay", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.endpoints[process_node] = RelayEndpoint(
            process_node, "127.0.0.1", port, f"http://127.0.0.1:{control_port}"
        )
        client = RelayControlClient(process_node, f"http://127.0.0.1:{control_port}", self.token)
        if not wait_for(client.healthy, 30):
            self.process.kill()
            raise RuntimeError(
                f"relay process did not start: {self.process.stdout.read() if self.process.stdout else ''}"
            )
        client.close()

    def close(self) -> None:
        stop_all(list(self.threads.values()))
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, TlsHashServer, object]]:
    """The relays and the aggregator's TLS endpoint, shared by the module (the test that kills a
    relay runs last)."""
    tmp_path = tmp_path_factory.mktemp("network")
    _, aggregator, site = federation(tmp_path)
    deployment = Deployment(tmp_path)
    try:
        with TlsHashServer(aggregator) as server:
            yield deployment, server, site
    finally:
        deployment.close()


@pytest.fixture
def world(
    network: tuple[Deployment, TlsHashServer, object],
) -> Iterator[tuple[Deployment, TlsHashServer, object, SecurePathEngine, RelayController]]:
    deployment, server, site = network
    engine = SecurePathEngine(*load_scenario("demo", NVD))
    controller = RelayController(
        engine,
        deployment.endpoints,
        sites=SITES,
        aggregator=AggregatorEndpoint("aggregator", "127.0.0.1", server.port),
        token=deployment.token,
        min_security=50,
        health_interval_s=0.2,
    )
    try:
        controller.start()
        yield deployment, server, site, engine, controller
    finally:
        controller.stop()


def test_every_site_reaches_the_aggregator_through_its_path(world: tuple) -> None:  # type: ignore[type-arg]
    deployment, _server, site, engine, controller = world
    for site_id, node in SITES.items():
        _host, port = controller.ingress_for(site_id)
        route = engine.path(f"site-{site_id}").route
        assert route is not None and route.nodes[0] == node and controller.route_of(site_id) == route.nodes
        with TlsClient(port, site) as client:  # type: ignore[arg-type]
            client.ping()
        # The ingress is the first relay of the path, and every relay of the path carried it.
        for hop in route.nodes[1:-1]:
            relay = deployment.threads.get(hop)
            if relay is not None:
                assert relay.relay.stats[f"site-{site_id}"].connections_total >= 1
    assert engine.path("site-cleveland").route.nodes == (  # type: ignore[union-attr]
        "hospital-cleveland",
        "access-1",
        "router-1",
        "router-5",
        "router-4",
        "access-4",
        "aggregator",
    )
    with pytest.raises(ControllerError, match="unknown site 'lyon'"):
        controller.ingress_for("lyon")


def test_critical_cve_on_an_active_relay_moves_the_traffic(world: tuple) -> None:  # type: ignore[type-arg]
    deployment, _server, site, engine, controller = world
    assert "router-5" in controller.route_of("cleveland")
    router5 = RelayControlClient("router-5", deployment.endpoints["router-5"].control_url, deployment.token)

    def carried() -> int:
        (path,) = [p for p in router5.routes()["paths"] if p["path_id"] == "site-cleveland"]
        return int(path["connections_total"])

    _, port = controller.ingress_for("cleveland")
    old = TlsClient(port, site)  # type: ignore[arg-type]
    old.ping()
    before = carried()
    # CVE-2022-36787 (CVSS 9.8), unremediated, on router-5 of Cleveland's active path.
    assert NVD.lookup("CVE-2022-36787").base_score == 9.8
    engine.add_vulnerability("router-5", NVD.lookup("CVE-2022-36787"))
    assert controller.wait_idle()
    route = controller.route_of("cleveland")
    assert route and "router-5" not in route
    with pytest.raises((ConnectionError, OSError)):
        old.ping()
    old.close()
    assert controller.ingress_for("cleveland")[1] == port  # same first relay: the site's address holds
    with TlsClient(port, site) as new:  # type: ignore[arg-type]
        new.ping()
    assert carried() == before
    (path,) = [p for p in router5.routes()["paths"] if p["path_id"] == "site-cleveland"]
    assert path["route"] is None and path["connections_open"] == 0
    router5.close()
    (record,) = [r for r in controller.reroutes if r.path == "site-cleveland"]
    assert "router-5" in record.old_nodes and record.closed_connections >= 1 and record.seconds >= 0


def test_relay_routes_emulate_every_link_once_each_way() -> None:
    engine = SecurePathEngine(*load_scenario("demo", NVD))
    endpoints = {
        n: RelayEndpoint(n, "127.0.0.1", 7000 + i, f"http://127.0.0.1:{7100 + i}")
        for i, n in enumerate(RELAY_NODES)
    }
    for site_id, node in SITES.items():
        from interconnect.pce import PathRequest

        path = engine.install(PathRequest(f"site-{site_id}", node, "aggregator", 100, 50_000, 50))
        assert path.route is not None
        entries = relay_routes(
            engine.topology, path.route, path.name, path.version, endpoints, ("127.0.0.1", 9092)
        )
        assert list(entries) == list(path.route.nodes[1:-1])
        assert sum(e.downstream.delay_us for e in entries.values()) == pytest.approx(path.route.delay_us)
        assert sum(e.upstream.delay_us for e in entries.values()) == pytest.approx(path.route.delay_us)
        links = [name for e in entries.values() for name in e.downstream.link.split("+")]
        assert len(links) == len(path.route.links)
        first, last = next(iter(entries.values())), list(entries.values())[-1]
        assert first.ingress_port == 0 and last.next_hop == ("127.0.0.1", 9092) and not last.next_is_relay
    with pytest.raises(ControllerError, match="no relay for router-6"):
        RelayController(
            engine,
            {n: e for n, e in endpoints.items() if n != "router-6"},
            sites=SITES,
            aggregator=AggregatorEndpoint("aggregator", "127.0.0.1", 9092),
            token="x" * 32,
        )


def test_the_engine_service_runs_the_controller(network: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    import json

    import httpx
    from conftest import LiveServer

    from interconnect.pce.service import create_app
    from interconnect.relay.controller_config import controller_from_config, load_controller_config

    deployment, server, site = network
    token = tmp_path / "relay.token"
    token.write_text(deployment.token)
    token.chmod(0o600)
    relays = "".join(
        f'[[relay]]\nnode = "{e.node}"\nhost = "{e.host}"\nport = {e.port}\ncontrol_url = "{e.control_url}"\n'
        for e in deployment.endpoints.values()
    )
    sites = "".join(f'[[site]]\nid = "{s}"\nnode = "{n}"\n' for s, n in SITES.items())
    config = tmp_path / "relays.toml"
    config.write_text(
        '[controller]\ntoken_file = "relay.token"\nmin_security = 50\ningress_file = "ingress.json"\n'
        f'[aggregator]\nnode = "aggregator"\nhost = "127.0.0.1"\nport = {server.port}\n{relays}{sites}'
    )
    engine = SecurePathEngine(*load_scenario("demo", NVD))
    controller = controller_from_config(engine, load_controller_config(config))
    with LiveServer(create_app(engine, NVD, controller=controller)) as live:
        state = httpx.get(f"{live.url}/api/transport").json()
        assert set(state["sites"]) == set(SITES)
        assert state["relays"]["router-5"]["healthy"] is True
        port = state["sites"]["cleveland"]["ingress"][1]
        assert json.loads((tmp_path / "ingress.json").read_text())["cleveland"]["ingress"][1] == port
        with TlsClient(port, site) as client:  # type: ignore[arg-type]
            client.ping()
        paths = httpx.get(f"{live.url}/api/paths").json()
        assert {p["name"] for p in paths} == {f"site-{s}" for s in SITES}
    # Stopping the service withdrew the routes from the relays.
    assert all("site-cleveland" not in r.relay.routes for r in deployment.threads.values())
    config.write_text(
        '[controller]\ntoken_file = "nothing"\nmin_security = 500\n[aggregator]\nnode = "aggregator"\n'
    )
    from typer.testing import CliRunner

    from paroma.cli import app

    result = CliRunner().invoke(app, ["pce", "serve", "--relays", str(config)])
    assert result.exit_code == 2
    for part in ("controller.token_file", "min_security: 500 is above 100", "aggregator.host", "[[relay]]"):
        assert part in result.stderr


def test_a_killed_relay_is_set_down_and_its_paths_rerouted(world: tuple) -> None:  # type: ignore[type-arg]
    deployment, _server, site, engine, controller = world
    assert "router-5" in controller.route_of("cleveland")
    with TlsClient(controller.ingress_for("cleveland")[1], site) as before:  # type: ignore[arg-type]
        before.ping()
    deployment.process.kill()
    deployment.process.wait(10)
    assert wait_for(lambda: not engine.node_status("router-5").up)
    assert controller.wait_idle()
    # Switzerland's only way out (access-3) is router-5: its path is withdrawn, not bent through it.
    assert engine.path("site-switzerland").status == "unroutable"
    assert controller.route_of("switzerland") == ()
    with pytest.raises(ControllerError, match=r"switzerland.*no route"):
        controller.ingress_for("switzerland")
    for site_id in ("cleveland", "hungary", "va"):
        route = controller.route_of(site_id)
        assert route and "router-5" not in route
        with TlsClient(controller.ingress_for(site_id)[1], site) as client:  # type: ignore[arg-type]
            client.ping()
    assert controller.status()["relays"]["router-5"]["healthy"] is False
