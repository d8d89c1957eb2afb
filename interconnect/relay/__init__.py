"""Relays: one process per router of the topology, forwarding the federation's TLS streams hop
by hop along the paths the secure path engine installed, emulating each link's delay and
capacity, and the controller that keeps their routing tables in step with the engine.

    from interconnect.relay import RelayController, RelayEndpoint

    controller = RelayController(engine, relays, sites={"cleveland": "hospital-cleveland"},
                                 aggregator=("aggregator", "127.0.0.1", 9092), token=secret)
    controller.start()                       # installs the paths, pushes the routes
    host, port = controller.ingress_for("cleveland")   # where the site's SuperNode connects
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interconnect.relay.client import RelayControlClient, RelayControlError
    from interconnect.relay.config import RelayConfig, RelayConfigError, load_relay_config, write_token
    from interconnect.relay.controller import (
        ControllerError,
        RelayController,
        RelayEndpoint,
        RerouteRecord,
        relay_routes,
    )
    from interconnect.relay.relay import Relay
    from interconnect.relay.routes import LinkEmulation, RouteEntry, RouteError
    from interconnect.relay.runner import BackgroundRelay, RelayService, run_relay

_EXPORTS = {
    "RelayControlClient": "interconnect.relay.client",
    "RelayControlError": "interconnect.relay.client",
    "RelayConfig": "interconnect.relay.config",
    "RelayConfigError": "interconnect.relay.config",
    "load_relay_config": "interconnect.relay.config",
    "write_token": "interconnect.relay.config",
    "ControllerError": "interconnect.relay.controller",
    "RelayController": "interconnect.relay.controller",
    "RelayEndpoint": "interconnect.relay.controller",
    "RerouteRecord": "interconnect.relay.controller",
    "relay_routes": "interconnect.relay.controller",
    "Relay": "interconnect.relay.relay",
    "LinkEmulation": "interconnect.relay.routes",
    "RouteEntry": "interconnect.relay.routes",
    "RouteError": "interconnect.relay.routes",
    "BackgroundRelay": "interconnect.relay.runner",
    "RelayService": "interconnect.relay.runner",
    "run_relay": "interconnect.relay.runner",
}

__all__ = [
    "BackgroundRelay",
    "ControllerError",
    "LinkEmulation",
    "Relay",
    "RelayConfig",
    "RelayConfigError",
    "RelayControlClient",
    "RelayControlError",
    "RelayController",
    "RelayEndpoint",
    "RelayService",
    "RerouteRecord",
    "RouteEntry",
    "RouteError",
    "load_relay_config",
    "relay_routes",
    "run_relay",
    "write_token",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
