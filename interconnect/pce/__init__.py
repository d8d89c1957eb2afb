"""The secure path engine: a Path Computation Element that routes the federation's traffic
around vulnerable nodes, using the PAROMA-MED security index (CVSS scores and remediation
levels), and its "Secure Traffic Engine" GUI.

In-process use (what the relays and the site controller build on)::

    from interconnect.pce import NvdClient, PathRequest, SecurePathEngine, load_scenario

    nvd = NvdClient()                                   # offline: the NVD records shipped here
    engine = SecurePathEngine(*load_scenario("demo", nvd))
    path = engine.install(PathRequest("h1", "hospital-cleveland", "aggregator", 100, 20_000, 50))
    engine.subscribe(print)                             # every change, as Event objects
    engine.add_vulnerability("router-5", nvd.lookup("CVE-2022-36786"))   # paths move
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interconnect.pce.cve import Vulnerability, vulnerability_from_nvd, vulnerability_from_vector
    from interconnect.pce.engine import (
        ChangeReport,
        Event,
        InstalledPath,
        LinkStatus,
        NetworkSnapshot,
        NodeStatus,
        NoPathError,
        PathStatus,
        SecurePathEngine,
        Subscription,
    )
    from interconnect.pce.errors import PceError
    from interconnect.pce.loaders import GraphmlOptions, load_topology, parse_topology
    from interconnect.pce.nvd import NVD_NOTICE, NvdClient
    from interconnect.pce.routing import NetworkState, NoPath, PathRequest, Route, compute_path
    from interconnect.pce.scenario import CveSource, load_scenario, parse_scenario
    from interconnect.pce.security import Exposure, attack_type_shares, security_indices
    from interconnect.pce.topology import Link, Node, NodeKind, Topology

# Imported on first use (PEP 562): the `paroma` CLI registers `paroma pce` from this package, and
# every other command would otherwise pay for networkx, httpx and cvss at start-up.
_EXPORTS = {
    "Vulnerability": "interconnect.pce.cve",
    "vulnerability_from_nvd": "interconnect.pce.cve",
    "vulnerability_from_vector": "interconnect.pce.cve",
    "ChangeReport": "interconnect.pce.engine",
    "Event": "interconnect.pce.engine",
    "InstalledPath": "interconnect.pce.engine",
    "LinkStatus": "interconnect.pce.engine",
    "NetworkSnapshot": "interconnect.pce.engine",
    "NodeStatus": "interconnect.pce.engine",
    "NoPathError": "interconnect.pce.engine",
    "PathStatus": "interconnect.pce.engine",
    "SecurePathEngine": "interconnect.pce.engine",
    "Subscription": "interconnect.pce.engine",
    "PceError": "interconnect.pce.errors",
    "GraphmlOptions": "interconnect.pce.loaders",
    "load_topology": "interconnect.pce.loaders",
    "parse_topology": "interconnect.pce.loaders",
    "NVD_NOTICE": "interconnect.pce.nvd",
    "NvdClient": "interconnect.pce.nvd",
    "NetworkState": "interconnect.pce.routing",
    "NoPath": "interconnect.pce.routing",
    "PathRequest": "interconnect.pce.routing",
    "Route": "interconnect.pce.routing",
    "compute_path": "interconnect.pce.routing",
    "CveSource": "interconnect.pce.scenario",
    "load_scenario": "interconnect.pce.scenario",
    "parse_scenario": "interconnect.pce.scenario",
    "Exposure": "interconnect.pce.security",
    "attack_type_shares": "interconnect.pce.security",
    "security_indices": "interconnect.pce.security",
    "Link": "interconnect.pce.topology",
    "Node": "interconnect.pce.topology",
    "NodeKind": "interconnect.pce.topology",
    "Topology": "interconnect.pce.topology",
}

__all__ = [
    "NVD_NOTICE",
    "ChangeReport",
    "CveSource",
    "Event",
    "Exposure",
    "GraphmlOptions",
    "InstalledPath",
    "Link",
    "LinkStatus",
    "NetworkSnapshot",
    "NetworkState",
    "NoPath",
    "NoPathError",
    "Node",
    "NodeKind",
    "NodeStatus",
    "NvdClient",
    "PathRequest",
    "PathStatus",
    "PceError",
    "Route",
    "SecurePathEngine",
    "Subscription",
    "Topology",
    "Vulnerability",
    "attack_type_shares",
    "compute_path",
    "load_scenario",
    "load_topology",
    "parse_scenario",
    "parse_topology",
    "security_indices",
    "vulnerability_from_nvd",
    "vulnerability_from_vector",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
