"""How long a site's model exchange takes over its installed path, for runtimes that carry no
real traffic (Flower's simulation): the same path decisions as the relays, as arithmetic.

One direction of a path moves ``n`` bytes in ``8n / C + D``: serialisation at the path's
bottleneck C (the least capacity of its links, the rate the relays emulate) plus its one-way
delay D (the sum of its links' delays), the fluid model of a pipelined stream (see
``interconnect.relay.shaping``). A round moves the global model to the site and the site's
update back, the same size both ways, so a round's ``transfer_s`` is the two directions summed.
Transport overheads (TCP/TLS handshakes, framing, slow start) are not modelled.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from interconnect.pce.engine import PathStatus, SecurePathEngine
from interconnect.pce.errors import PathExistsError
from interconnect.pce.routing import PathRequest, Route
from interconnect.pce.topology import Topology


def estimate_transfer_s(delay_us: float, bottleneck_mbps: float, n_bytes: int) -> float:
    """Seconds to move ``n_bytes`` one way over a path of that delay and bottleneck."""
    if bottleneck_mbps <= 0:
        raise ValueError(f"bottleneck_mbps: expected a positive capacity, got {bottleneck_mbps!r}")
    if n_bytes < 0 or delay_us < 0:
        raise ValueError(f"n_bytes and delay_us must not be negative, got {n_bytes!r} and {delay_us!r}")
    return n_bytes * 8 / (bottleneck_mbps * 1e6) + delay_us / 1e6


def path_bottleneck_mbps(topology: Topology, route: Route) -> float:
    """The least capacity of the route's links (each direction of a link has its full capacity)."""
    return min(topology.link(link_id).capacity_mbps for link_id in route.links)


@dataclass(frozen=True)
class PathTransfer:
    """One site's exchange in one round over the path it had then (``nodes`` empty: no path)."""

    site_id: str
    path: str
    nodes: tuple[str, ...]
    n_bytes: int
    delay_us: float | None = None
    bottleneck_mbps: float | None = None
    download_s: float | None = None
    upload_s: float | None = None
    reason: str = ""

    @property
    def transfer_s(self) -> float | None:
        if self.download_s is None or self.upload_s is None:
            return None
        return self.download_s + self.upload_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "transfer_s": self.transfer_s,
            "download_s": self.download_s,
            "upload_s": self.upload_s,
            "path": list(self.nodes),
            "delay_us": self.delay_us,
            "bottleneck_mbps": self.bottleneck_mbps,
            "n_bytes": self.n_bytes,
            "reason": self.reason,
        }


@dataclass
class TransferPlanner:
    """Installs each site's path site node -> aggregator node in ``engine`` (what the relays'
    controller installs in a deployment) and records each round's estimated exchange."""

    engine: SecurePathEngine
    sites: Mapping[str, str]
    aggregator_node: str = "aggregator"
    bandwidth_mbps: float = 100.0
    max_delay_us: float = 50_000.0
    min_security: float = 50.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for site_id, node in self.sites.items():
            request = PathRequest(
                self.path_name(site_id),
                node,
                self.aggregator_node,
                self.bandwidth_mbps,
                self.max_delay_us,
                self.min_security,
            )
            with contextlib.suppress(PathExistsError):  # installed by an earlier planner on this engine
                self.engine.install(request)

    @staticmethod
    def path_name(site_id: str) -> str:
        return f"site-{site_id}"

    def estimate(self, site_id: str, n_bytes: int) -> PathTransfer:
        """The exchange of ``n_bytes`` each way over the site's path as installed now."""
        name = self.path_name(site_id)
        if site_id not in self.sites:
            return PathTransfer(
                site_id, name, (), n_bytes, reason=f"site {site_id!r} has no node in the topology"
            )
        path = self.engine.path(name)
        if path.status is not PathStatus.ACTIVE or path.route is None:
            return PathTransfer(site_id, name, (), n_bytes, reason=path.reason or "unroutable")
        route = path.route
        bottleneck = path_bottleneck_mbps(self.engine.topology, route)
        one_way = estimate_transfer_s(route.delay_us, bottleneck, n_bytes)
        return PathTransfer(site_id, name, route.nodes, n_bytes, route.delay_us, bottleneck, one_way, one_way)

    def record_round(self, server_round: int, site_ids: list[str], n_bytes: int) -> dict[str, PathTransfer]:
        estimates = {site_id: self.estimate(site_id, n_bytes) for site_id in site_ids}
        with self._lock:
            self.rounds.append(
                {"round": server_round, "sites": {s: e.as_dict() for s, e in estimates.items()}}
            )
        return estimates

    def as_dict(self) -> dict[str, Any]:
        return {
            "topology": self.engine.topology.name,
            "model": "per direction: n_bytes * 8 / bottleneck + one-way delay; transfer_s = download + upload",
            "min_security": self.min_security,
            "rounds": list(self.rounds),
        }
