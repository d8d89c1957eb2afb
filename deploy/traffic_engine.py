"""The deployment's Secure Traffic Engine: the path engine's GUI and REST API, served over
HTTPS with the federation's certificate, driving the relays as their controller.

``python -m deploy.traffic_engine --config FED.toml`` (``paroma up`` starts it) loads the
federation's topology and vulnerabilities, installs one path per site from the site's node to
the aggregator's (the config's bandwidth, delay bound and Minimum Security Threshold), pushes
the routes to the relays (interconnect.relay.RelayController), and follows every change: a new
CVE or a relay that stops answering moves the traffic. ``GET /api/transport`` shows the relays,
each site's route and ingress and the re-routes with how long each took. ``paroma pce serve
--relays FILE`` runs the same controller from a relay file, over plain HTTP; here everything
comes from the federation config and the API is HTTPS only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .federation_config import FederationConfig, FederationConfigError, load_federation_config
from .workdir import RELAY_CONTROL_FILE, Workdir

log = logging.getLogger("paroma.deploy.traffic_engine")


def relay_listen_host(config: FederationConfig, netns: bool) -> str:
    """Relays listen on the federation's host; with ``--netns`` on every interface, so that a
    SuperNode in its namespace reaches its ingress through its veth pair."""
    return "0.0.0.0" if netns else config.host  # noqa: S104 - the namespaces' veth addresses


def build_controller(config: FederationConfig, netns: bool) -> tuple[Any, Any, Any]:
    """The engine, its NVD client and the relay controller of the federation (not started)."""
    from interconnect.pce.engine import SecurePathEngine
    from interconnect.pce.nvd import NvdClient
    from interconnect.pce.scenario import load_scenario
    from interconnect.relay.controller import AggregatorEndpoint, RelayController, RelayEndpoint

    nvd = NvdClient(online=False)
    topology, exposures = load_scenario(config.topology, nvd)
    engine = SecurePathEngine(topology, exposures)
    host = relay_listen_host(config, netns)
    dial = config.host if host == "0.0.0.0" else host  # noqa: S104
    relays = {
        node: RelayEndpoint(
            node, dial, config.relay_port(node), f"https://{config.host}:{config.relay_control_port(node)}"
        )
        for node in config.relay_nodes
    }
    token = (Workdir(config.workdir).relays / RELAY_CONTROL_FILE).read_text().strip()
    controller = RelayController(
        engine,
        relays,
        sites={s.id: s.node for s in config.sites},
        aggregator=AggregatorEndpoint(config.aggregator.node, config.host, config.aggregator.superlink_port),
        token=token,
        bandwidth_mbps=config.relays.bandwidth_mbps,
        max_delay_us=config.relays.max_delay_us,
        min_security=config.min_security,
        ingress_ports={s.id: s.ingress_port for s in config.sites},
        emulate_links=config.relays.emulate_links,
        control_ca=Workdir(config.workdir).pki / "ca.pem",
        # A relay is set down after 3 missed health checks a second apart: a busy machine's slow
        # TLS handshake is not a dead relay.
        health_interval_s=1.0,
        health_failures=3,
    )
    return engine, nvd, controller


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.traffic_engine", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the federation config file")
    parser.add_argument("--netns", action="store_true", help="the SuperNodes run in network namespaces")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_federation_config(args.config)
    except FederationConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from interconnect.pce.service import create_app
    from interconnect.pki import CertKind, FederationPKI

    engine, nvd, controller = build_controller(config, args.netns)
    # The app starts the controller with it (paths installed, routes pushed) and stops it.
    app = create_app(engine, nvd, controller=controller)
    cert = FederationPKI.open(Workdir(config.workdir).pki).get(CertKind.SERVICE, "pce")
    uvicorn.run(
        app,
        host=config.host,
        port=config.pce_port,
        log_level="warning",
        ssl_certfile=str(cert.cert_path),
        ssl_keyfile=str(cert.key_path),
        timeout_graceful_shutdown=2,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
