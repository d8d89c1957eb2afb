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
