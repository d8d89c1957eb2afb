"""The path engine as the relays' controller.

For each site it installs a path site node -> aggregator node in the ``SecurePathEngine`` (the
configured bandwidth, delay bound and Minimum Security Threshold), pushes one routing entry to
every relay on it, and tells the site where to connect (``ingress_for``). It follows the
engine's events: when a path moves (a new CVE, a remediation, a relay or link down) the relays
of the new route get the new version first, from the aggregator's end back to the ingress, so
that a new connection finds its whole route in place; then the relays that left the route lose
the entry. Every relay that had the old version closes its connections on it, which is how
traffic leaves a node; the time from the engine's event to the last relay's answer is logged
and kept (``reroutes``). An unroutable path is withdrawn from every relay: fail closed, no
traffic rather than traffic over a node below the threshold.

Relays are watched through ``/healthz``; one that stops answering is set down in the engine
(``set_node_state``), which re-routes the paths crossing it. When it answers again it is set up
and gets its routes back.

Synchronisation is by state, not by replaying events: on every relevant event the controller
compares what each relay should hold for a path (computed from the engine's current route by
``relay_routes``, a pure function) with what it pushed, and sends the difference.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from interconnect.pce.engine import Event, InstalledPath, PathStatus, SecurePathEngine
from interconnect.pce.errors import PathExistsError
from interconnect.pce.routing import PathRequest, Route
from interconnect.pce.topology import NodeKind, Topology
from interconnect.relay.client import RelayControlClient, RelayControlError
from interconnect.relay.routes import LinkEmulation, RouteEntry, check_path_id

log = logging.getLogger("paroma.relay.controller")

_PATH_EVENTS = {"path-installed", "path-rerouted", "path-restored", "path-unroutable", "path-removed"}


class ControllerError(Exception):
    """The controller's configuration does not fit the topology, or a site is unknown."""


@dataclass(frozen=True)
class RelayEndpoint:
    """Where the relay standing for topology node ``node`` listens and is controlled."""

    node: str
    host: str
    port: int
    control_url: str


@dataclass(frozen=True)
class AggregatorEndpoint:
    """The aggregator's topology node and the address its traffic ends at (the SuperLink's Fleet API)."""

    node: str
    host: str
    port: int


@dataclass(frozen=True)
class RerouteRecord:
    """One move of a path's traffic: when the engine decided it (``event_time``), when the relays
    leaving the route had dropped it and closed its connections (``left_time``), and when every
    relay of the new route had it (``applied_time``)."""

    path: str
    cause: str
    old_nodes: tuple[str, ...]
    new_nodes: tuple[str, ...]
    event_time: float
    applied_time: float
    closed_connections: int
    left_time: float = 0.0

    @property
    def seconds(self) -> float:
        """How long the traffic took to leave the relays that are no longer on the route."""
        return (self.left_time or self.applied_time) - self.event_time

    @property
    def applied_seconds(self) -> float:
        return self.applied_time - self.event_time

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "cause": self.cause,
            "old_nodes": list(self.old_nodes),
            "new_nodes": list(self.new_nodes),
            "event_time": self.event_time,
            "applied_time": self.applied_time,
            "left_time": self.left_time,
            "seconds": self.seconds,
            "applied_seconds": self.applied_seconds,
            "closed_connections": self.closed_connections,
        }


def path_name(site_id: str) -> str:
    """The installed path's name (and relay path id) for a site."""
    return check_path_id(f"site-{site_id}")


def _hop(topology: Topology, route: Route, indices: range) -> LinkEmulation:
    """The emulation of consecutive links of the route as one pipe: delays add, the slowest link
    sets the capacity. ``link`` names the links and their direction, shared by every path that
    crosses them the same way."""
    delay = 0.0
    capacity: float | None = None
    names = []
    for i in indices:
        link = topology.link(route.links[i])
        a, b = route.nodes[i], route.nodes[i + 1]
        delay += link.delay_us
        capacity = link.capacity_mbps if capacity is None else min(capacity, link.capacity_mbps)
        names.append(f"{link.id}:{a}>{b}")
    return LinkEmulation(delay, capacity, "+".join(names))


def _reverse(topology: Topology, route: Route, indices: range) -> LinkEmulation:
    delay = 0.0
    capacity: float | None = None
    names = []
    for i in indices:
        link = topology.link(route.links[i])
        delay += link.delay_us
        capacity = link.capacity_mbps if capacity is None else min(capacity, link.capacity_mbps)
        names.append(f"{link.id}:{route.nodes[i + 1]}>{route.nodes[i]}")
    return LinkEmulation(delay, capacity, "+".join(names))


def relay_routes(
    topology: Topology,
    route: Route,
    path_id: str,
    version: int,
    relays: Mapping[str, RelayEndpoint],
    target: tuple[str, int],
    *,
    ingress_port: int = 0,
    emulate: bool = True,
) -> dict[str, RouteEntry]:
    """The entry each relay of ``route`` needs (keyed by node), pure.

    The route is site, relay_1 ... relay_k, aggregator. Relay i sends towards the aggregator over
    link i (relay_1 also carries the site's own access link) and back towards the site over link
    i-1 (relay_k also carries the aggregator's link back), so every link of the path is emulated
    once in each direction.
    """
    hops = route.nodes[1:-1]
    if not hops:
        raise ControllerError(
            f"path {path_id!r} has no relay: {route.nodes[0]!r} is next to {route.nodes[-1]!r}"
        )
    missing = [n for n in hops if n not in relays]
    if missing:
        raise ControllerError(f"path {path_id!r} crosses {', '.join(missing)} where no relay runs")
    entries: dict[str, RouteEntry] = {}
    k = len(hops)
    for position, node in enumerate(hops, start=1):
        last = position == k
        if last:
            next_host, next_port, next_is_relay = target[0], target[1], False
        else:
            nxt = relays[route.nodes[position + 1]]
            next_host, next_port, next_is_relay = nxt.host, nxt.port, True
        down = range(0 if position == 1 else position, position + 1)
        up = range(position - 1, position + 1 if last else position)
        entries[node] = RouteEntry(
            path_id=path_id,
            version=version,
            next_host=next_host,
            next_port=next_port,
            next_is_relay=next_is_relay,
            downstream=_hop(topology, route, down) if emulate else LinkEmulation(),
            upstream=_reverse(topology, route, up) if emulate else LinkEmulation(),
            ingress_port=ingress_port if position == 1 else None,
        )
    return entries


@dataclass
class _PathState:
    site_id: str
    name: str
    pushed: dict[str, RouteEntry] = field(default_factory=dict)
    ingress: tuple[str, int] | None = None
    nodes: tuple[str, ...] = ()


class RelayController:
    """Keeps the relays' routing tables equal to the engine's installed site paths."""

    def __init__(
        self,
        engine: SecurePathEngine,
        relays: Mapping[str, RelayEndpoint],
        *,
        sites: Mapping[str, str],
        aggregator: AggregatorEndpoint,
        token: str,
        bandwidth_mbps: float = 100.0,
        max_delay_us: float = 50_000.0,
        min_security: float = 50.0,
        ingress_ports: Mapping[str, int] | None = None,
        emulate_links: bool = True,
        health_interval_s: float = 0.5,
        health_failures: int = 2,
        control_ca: Path | None = None,
    ) -> None:
        """``control_ca``: the federation's CA certificate, to verify relays whose control API is
        HTTPS (with the CRL beside it); plain-HTTP control URLs need none."""
        topology = engine.topology
        problems = []
        for node in [*relays, aggregator.node, *sites.values()]:
            if not topology.has_node(node):
                problems.append(f"node {node!r} is not in topology {topology.name!r}")
        for node_id, endpoint in relays.items():
            if endpoint.node != node_id:
                problems.append(f"relay {node_id!r} is registered as node {endpoint.node!r}")
        without = [
            n.id
            for n in topology.nodes
            if n.kind in (NodeKind.ROUTER, NodeKind.ACCESS) and n.id not in relays
        ]
        if without:
            problems.append(f"no relay for {', '.join(without)}")
        for site_id in sites:
            try:
                path_name(site_id)
            except ValueError as exc:
                problems.append(f"site {site_id!r}: {exc}")
        if problems:
            raise ControllerError("; ".join(problems))
        self.engine = engine
        self.relays = dict(relays)
        self.sites = dict(sites)
        self.aggregator = aggregator
        self.bandwidth_mbps = bandwidth_mbps
        self.max_delay_us = max_delay_us
        self.min_security = min_security
        self.emulate_links = emulate_links
        self.health_interval_s = health_interval_s
        self.health_failures = health_failures
        self._ingress_ports = dict(ingress_ports or {})
        verify: ssl.SSLContext | bool = True
        if control_ca is not None:
            from interconnect.pki.tls import ssl_client_context

            verify = ssl_client_context(ca_path=control_ca)
        self._http = httpx.Client(timeout=3.0, verify=verify)
        self._clients = {
            node: RelayControlClient(node, r.control_url, token, http=self._http)
            for node, r in relays.items()
        }
        self._paths = {site_id: _PathState(site_id, path_name(site_id)) for site_id in sites}
        self._by_name = {state.name: state for state in self._paths.values()}
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subscription: Any = None
        self._health: dict[str, bool] = dict.fromkeys(relays, True)
        self._misses: dict[str, int] = dict.fromkeys(relays, 0)
        self._set_down: set[str] = set()
        self.reroutes: list[RerouteRecord] = []
        # Called (site id, new ingress or None) when a site's ingress address changes, and
        # (site id) whenever its route or ingress changes; outside the controller's lock.
        self.on_ingress_change: list[Callable[[str, tuple[str, int] | None], None]] = []
        self.on_route_change: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> dict[str, tuple[str, int] | None]:
        """Install every site's path, push the routes, then follow the engine and the relays' health."""
        self._subscription = self.engine.subscribe(self._on_event)
        for state in self._paths.values():
            request = PathRequest(
                state.name,
                self.sites[state.site_id],
                self.aggregator.node,
                self.bandwidth_mbps,
                self.max_delay_us,
                self.min_security,
            )
            with contextlib.suppress(PathExistsError):  # kept from an earlier run of the controller
                self.engine.install(request)
            self._sync(state, cause="installed", event_time=time.time())
        self._threads = [
            threading.Thread(target=self._work, name="relay-controller", daemon=True),
            threading.Thread(target=self._watch, name="relay-health", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return {site_id: s.ingress for site_id, s in self._paths.items()}

    def stop(self, *, withdraw: bool = True) -> None:
        """Stop following; with ``withdraw`` remove the routes from the relays and the paths from the engine."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        self._stop.set()
        self._events.put(None)
        for thread in self._threads:
            thread.join(5)
        if withdraw:
            for state in self._paths.values():
                for node in list(state.pushed):
                    self._delete(node, state.name)
                state.pushed.clear()
                try:
                    self.engine.remove(state.name)
                except Exception:  # already gone
                    log.debug("path %s was not installed", state.name)
        self._http.close()

    # ------------------------------------------------------------------ reading

    def ingress_for(self, site_id: str) -> tuple[str, int]:
        """The address the site's node connects to (the first relay's listener for its path)."""
        state = self._paths.get(site_id)
        if state is None:
            raise ControllerError(f"unknown site {site_id!r} (sites: {', '.join(sorted(self._paths))})")
        if state.ingress is None:
            path = self.engine.path(state.name)
            raise ControllerError(
                f"site {site_id!r} has no route to the aggregator: {path.reason or path.status}"
            )
        return state.ingress

    def route_of(self, site_id: str) -> tuple[str, ...]:
        return self._paths[site_id].nodes

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every event received so far has been applied to the relays."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._events.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "aggregator": {
                    "node": self.aggregator.node,
                    "host": self.aggregator.host,
                    "port": self.aggregator.port,
                },
                "relays": {
                    node: {
                        "host": r.host,
                        "port": r.port,
                        "control_url": r.control_url,
                        "healthy": self._health[node],
                        "set_down": node in self._set_down,
                    }
                    for node, r in self.relays.items()
                },
                "sites": {
                    site_id: {
                        "path": s.name,
                        "nodes": list(s.nodes),
                        "ingress": list(s.ingress) if s.ingress else None,
                    }
                    for site_id, s in self._paths.items()
                },
                "reroutes": [r.as_dict() for r in self.reroutes[-50:]],
            }

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        # Called under the engine's lock: hand over, never block.
        if event.kind in _PATH_EVENTS and event.data.get("path", {}).get("name") in self._by_name:
            self._events.put(event)

    def _work(self) -> None:
        while True:
            event = self._events.get()
            try:
                if event is None:
                    return
                state = self._by_name[event.data["path"]["name"]]
                self._sync(state, cause=str(event.data.get("cause", event.kind)), event_time=event.time)
            except Exception:
                log.exception("applying %s to the relays failed", event.kind if event else "stop")
            finally:
                self._events.task_done()

    def _sync(self, state: _PathState, *, cause: str, event_time: float) -> None:
        with self._lock:
            try:
                path: InstalledPath | None = self.engine.path(state.name)
            except Exception:
                path = None
            desired: dict[str, RouteEntry] = {}
            nodes: tuple[str, ...] = ()
            if path is not None and path.status is PathStatus.ACTIVE and path.route is not None:
                nodes = path.route.nodes
                port = self._ingress_ports.get(state.site_id, 0)
                if state.ingress is not None and state.nodes[1:2] == nodes[1:2]:
                    port = state.ingress[1]  # same first relay: keep the site's address
                desired = relay_routes(
                    self.engine.topology,
                    path.route,
                    state.name,
                    path.version,
                    self.relays,
                    (self.aggregator.host, self.aggregator.port),
                    ingress_port=port,
                    emulate=self.emulate_links,
                )
            old_nodes = state.nodes
            closed = 0
            ingress: tuple[str, int] | None = None
            # First the relays that leave the route drop it, closing its connections there: the
            # traffic leaves them before anything else is done (and the old first relay frees
            # its listener before a new one may bind the same port). A site that reconnects in
            # between is refused and retries.
            for node in [n for n in state.pushed if n not in desired]:
                closed += self._delete(node, state.name)
                del state.pushed[node]
            left = time.time()
            first = nodes[1] if nodes else None
            for node in reversed(nodes[1:-1]):
                entry = desired[node]
                if state.pushed.get(node) == entry and node != first:
                    continue
                answer = self._put(node, entry)
                if answer is None:
                    state.pushed.pop(node, None)
                    continue
                state.pushed[node] = entry
                closed += int(answer.get("closed", 0))
                if node == first and answer.get("ingress_port"):
                    ingress = (self.relays[node].host, int(answer["ingress_port"]))
                    state.pushed[node] = RouteEntry(**{**entry.__dict__, "ingress_port": ingress[1]})
            changed_ingress = ingress != state.ingress
            changed_route = nodes != state.nodes
            state.nodes = nodes
            state.ingress = ingress
            now = time.time()
            if old_nodes and (old_nodes != nodes or closed):
                record = RerouteRecord(state.name, cause, old_nodes, nodes, event_time, now, closed, left)
                self.reroutes.append(record)
                log.info(
                    "path %s: %s -> %s after %s: traffic left the old route's relays in %.0f ms, "
                    "new route in place in %.0f ms (%d connection(s) closed)",
                    state.name,
                    " > ".join(old_nodes),
                    " > ".join(nodes) or "none (withdrawn)",
                    cause,
                    record.seconds * 1000,
                    record.applied_seconds * 1000,
                    closed,
                )
        if changed_ingress:
            for callback in list(self.on_ingress_change):
                try:
                    callback(state.site_id, ingress)
                except Exception:
                    log.exception("ingress-change callback failed")
        if changed_ingress or changed_route:
            for route_callback in list(self.on_route_change):
                try:
                    route_callback(state.site_id)
                except Exception:
                    log.exception("route-change callback failed")

    def _put(self, node: str, entry: RouteEntry) -> dict[str, Any] | None:
        try:
            return self._clients[node].put_route(entry)
        except RelayControlError as exc:
            log.warning("%s", exc)
            return None

    def _delete(self, node: str, path_id: str) -> int:
        try:
            return int(self._clients[node].delete_route(path_id).get("closed", 0))
        except RelayControlError as exc:
            log.warning("%s", exc)
            return 0

    # ------------------------------------------------------------------ health

    def _watch(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            for node, client in self._clients.items():
                if self._stop.is_set():
                    return
                healthy = client.healthy(timeout=max(0.2, self.health_interval_s))
                self._health_result(node, healthy)

    def _health_result(self, node: str, healthy: bool) -> None:
        if healthy:
            self._misses[node] = 0
            if not self._health[node]:
                self._health[node] = True
                log.info("relay %s answers again: set up", node)
                with self._lock:
                    # A restarted relay has an empty table: push its entries again.
                    for state in self._paths.values():
                        state.pushed.pop(node, None)
                if node in self._set_down:
                    self._set_down.discard(node)
                    self.engine.set_node_state(node, True)
                for state in self._paths.values():
                    self._sync(state, cause=f"relay {node} up", event_time=time.time())
            return
        self._misses[node] += 1
        if self._health[node] and self._misses[node] >= self.health_failures:
            self._health[node] = False
            log.warning("relay %s does not answer /healthz: set down in the engine", node)
            if self.engine.node_status(node).up:
                self._set_down.add(node)
                self.engine.set_node_state(node, False)
