"""The secure path engine: a stateful PCE (RFC 4655 §4.2, RFC 8231) that keeps the installed
paths right while vulnerabilities, remediations and the network change.

It is the in-process interface the rest of the platform uses (the GUI's REST API, the CLI and,
next, the relays and the controller that tells each site its ingress); nothing here does I/O.
Every change is validated before any state moves, so a refused change leaves the engine exactly
as it was. Every change that happens is published as an ``Event``.

Re-routing policy: after a change, an installed path is *affected* if it crosses a node or link
that is now down or a node whose security index went down. Only affected paths are recomputed
(with their own reservation released first, so they may keep their links); a path that can no
longer be routed is kept as ``unroutable``, with the reason, and without reservation. After every
change the unroutable paths are tried again, since something may have improved. Paths that are
merely no longer optimal because another node got better are not moved (no route flapping);
``reoptimize`` moves them on request.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from interconnect.pce.cve import Vulnerability, check_cve_id
from interconnect.pce.errors import (
    ExposureExistsError,
    PathExistsError,
    PceError,
    TopologyInUseError,
    UnknownExposureError,
    UnknownPathError,
)
from interconnect.pce.routing import NetworkState, NoPath, PathRequest, Route, compute_path
from interconnect.pce.security import Exposure, check_alpha, check_remediation, security_indices
from interconnect.pce.topology import Topology

log = logging.getLogger("paroma.pce")


class NoPathError(PceError):
    """An install found no path; ``no_path`` says which constraint failed."""

    def __init__(self, request: PathRequest, no_path: NoPath) -> None:
        super().__init__(f"no path for {request.name!r}: {no_path.reason}")
        self.request = request
        self.no_path = no_path


class PathStatus(StrEnum):
    ACTIVE = "active"
    UNROUTABLE = "unroutable"


@dataclass(frozen=True)
class InstalledPath:
    request: PathRequest
    status: PathStatus
    route: Route | None
    # Why the path is unroutable, and the constraint that cannot be met.
    reason: str | None = None
    constraint: str | None = None
    # Incremented every time the route changes (or the path becomes unroutable).
    version: int = 1

    @property
    def name(self) -> str:
        return self.request.name

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "request": self.request.as_dict(),
            "route": self.route.as_dict() if self.route else None,
            "reason": self.reason,
            "constraint": self.constraint,
            "version": self.version,
        }


@dataclass(frozen=True)
class Event:
    """One change, in the order the engine made it; ``seq`` grows by one per event."""

    seq: int
    kind: str
    time: float
    data: dict[str, Any]


@dataclass
class ChangeReport:
    """What one change did: SI moves and the paths that moved, failed or came back."""

    security_index_changes: dict[str, tuple[float, float]] = field(default_factory=dict)
    rerouted: list[InstalledPath] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unroutable: list[InstalledPath] = field(default_factory=list)
    restored: list[InstalledPath] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "security_index_changes": {
                node: {"old": old, "new": new} for node, (old, new) in self.security_index_changes.items()
            },
            "rerouted": [p.as_dict() for p in self.rerouted],
            "unchanged": self.unchanged,
            "unroutable": [p.as_dict() for p in self.unroutable],
            "restored": [p.as_dict() for p in self.restored],
        }


class Subscription:
    def __init__(self, engine: SecurePathEngine, callback: Callable[[Event], None]) -> None:
        self._engine = engine
        self.callback = callback

    def close(self) -> None:
        self._engine._unsubscribe(self)


@dataclass(frozen=True)
class NodeStatus:
    id: str
    name: str
    kind: str
    up: bool
    security_index: float
    exposures: tuple[Exposure, ...]


@dataclass(frozen=True)
class LinkStatus:
    id: str
    a: str
    b: str
    capacity_mbps: float
    delay_us: float
    reserved_mbps: float
    up: bool

    @property
    def available_mbps(self) -> float:
        return self.capacity_mbps - self.reserved_mbps


@dataclass(frozen=True)
class NetworkSnapshot:
    """The whole network state at one instant (one lock hold)."""

    topology: Topology
    nodes: list[NodeStatus]
    links: list[LinkStatus]
    last_event: int


class SecurePathEngine:
    """Topology, vulnerabilities, installed paths, and the events that tell what changed.

    Thread-safe: every public method holds the engine's lock. Subscribers are called under it,
    in event order, and must not block (the HTTP layer hands events to its event loop).
    """

    def __init__(
        self,
        topology: Topology,
        exposures: Iterable[Exposure] = (),
        *,
        history: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._seq = itertools.count(1)
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: list[Subscription] = []
        self._set_topology(topology, _index_exposures(topology, exposures))

    # ----------------------------------------------------------------- reading

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def state(self) -> NetworkState:
        """The indexed network; read-only outside the engine."""
        return self._state

    def security_index(self, node_id: str) -> float:
        with self._lock:
            return self._state.security_index[self._state.node(node_id)]

    def security_indices(self) -> dict[str, float]:
        with self._lock:
            return dict(zip(self._state.node_ids, self._state.security_index, strict=True))

    def node_status(self, node_id: str) -> NodeStatus:
        with self._lock:
            i = self._state.node(node_id)
            node = self._topology.node(node_id)
            return NodeStatus(
                node.id,
                node.name,
                node.kind.value,
                self._state.node_up[i],
                self._state.security_index[i],
                tuple(self._exposures.get(node_id, {}).values()),
            )

    def link_status(self, link_id: str) -> LinkStatus:
        with self._lock:
            li = self._state.link(link_id)
            link = self._topology.link(link_id)
            return LinkStatus(
                link.id,
                link.a,
                link.b,
                link.capacity_mbps,
                link.delay_us,
                self._state.reserved[li],
                self._state.link_up[li],
            )

    def links(self) -> list[LinkStatus]:
        with self._lock:
            return [self.link_status(link_id) for link_id in self._state.link_ids]

    def nodes(self) -> list[NodeStatus]:
        with self._lock:
            return [self.node_status(node_id) for node_id in self._state.node_ids]

    def snapshot(self) -> NetworkSnapshot:
        with self._lock:
            return NetworkSnapshot(self._topology, self.nodes(), self.links(), self.last_event_seq)

    def exposures(self, node_id: str | None = None) -> list[Exposure]:
        with self._lock:
            if node_id is not None:
                self._state.node(node_id)
                return list(self._exposures.get(node_id, {}).values())
            return [e for per_node in self._exposures.values() for e in per_node.values()]

    def paths(self) -> list[InstalledPath]:
        with self._lock:
            return list(self._paths.values())

    def path(self, name: str) -> InstalledPath:
        with self._lock:
            try:
                return self._paths[name]
            except KeyError:
                raise UnknownPathError(f"no installed path is named {name!r}") from None

    def events_since(self, seq: int) -> list[Event]:
        """Events after ``seq`` still in the history (for SSE's Last-Event-ID)."""
        with self._lock:
            return [e for e in self._history if e.seq > seq]

    @property
    def last_event_seq(self) -> int:
        with self._lock:
            return self._history[-1].seq if self._history else 0

    # ----------------------------------------------------------------- paths

    def compute(self, request: PathRequest) -> Route | NoPath:
        """Answer a request without installing anything (a PCEP PCReq/PCRep exchange)."""
        with self._lock:
            return compute_path(self._state, request)

    def install(self, request: PathRequest) -> InstalledPath:
        """Compute and install a path, reserving its bandwidth on every link it crosses."""
        with self._lock:
            if request.name in self._paths:
                raise PathExistsError(f"a path named {request.name!r} is already installed")
            outcome = compute_path(self._state, request)
            if isinstance(outcome, NoPath):
                raise NoPathError(request, outcome)
            path = InstalledPath(request, PathStatus.ACTIVE, outcome)
            self._reserve(path)
            self._paths[request.name] = path
            self._emit("path-installed", {"path": path.as_dict()})
            return path

    def remove(self, name: str) -> InstalledPath:
        """Tear a path down and free its bandwidth (paths waiting for it may come back)."""
        with self._lock:
            path = self.path(name)
            self._release(path)
            del self._paths[name]
            self._emit("path-removed", {"path": path.as_dict()})
            report = ChangeReport()
            self._retry_unroutable(report, cause=f"path {name!r} removed", skip=set())
            return path

    def reoptimize(self, names: Iterable[str] | None = None) -> ChangeReport:
        """Recompute installed paths (all by default) and move those that have a better route."""
        with self._lock:
            chosen = list(names) if names is not None else list(self._paths)
            for name in chosen:
                self.path(name)
            report = ChangeReport()
            failed = self._reroute(
                [self._paths[n] for n in chosen if self._paths[n].route], report, "reoptimize"
            )
            self._retry_unroutable(report, cause="reoptimize", skip=failed)
            return report

    # ----------------------------------------------------------------- vulnerabilities

    def add_vulnerability(
        self, node_id: str, vulnerability: Vulnerability, remediation: float = 1.0, alpha: float = 1.0
    ) -> ChangeReport:
        with self._lock:
            self._state.node(node_id)
            if vulnerability.cve_id in self._exposures.get(node_id, {}):
                raise ExposureExistsError(
                    f"node {node_id!r} already carries {vulnerability.cve_id}; change its remediation level instead"
                )
            exposure = Exposure(node_id, vulnerability, remediation, alpha)
            self._exposures.setdefault(node_id, {})[vulnerability.cve_id] = exposure
            self._emit("vulnerability-added", {"node": node_id, "exposure": exposure_dict(exposure)})
            return self._after_change(f"{vulnerability.cve_id} added on {node_id!r}")

    def remove_vulnerability(self, node_id: str, cve_id: str) -> ChangeReport:
        with self._lock:
            exposure = self._exposure(node_id, cve_id)
            del self._exposures[node_id][exposure.vulnerability.cve_id]
            self._emit("vulnerability-removed", {"node": node_id, "exposure": exposure_dict(exposure)})
            return self._after_change(f"{exposure.vulnerability.cve_id} removed from {node_id!r}")

    def set_remediation(
        self, node_id: str, cve_id: str, remediation: float | None = None, alpha: float | None = None
    ) -> ChangeReport:
        """Change RE_ij (and/or alpha_ij) of a CVE on a node."""
        with self._lock:
            exposure = self._exposure(node_id, cve_id)
            new_re = check_remediation(remediation) if remediation is not None else exposure.remediation
            new_alpha = check_alpha(alpha) if alpha is not None else exposure.alpha
            updated = replace(exposure, remediation=new_re, alpha=new_alpha)
            self._exposures[node_id][exposure.vulnerability.cve_id] = updated
            self._emit(
                "remediation-changed",
                {"node": node_id, "old": exposure_dict(exposure), "exposure": exposure_dict(updated)},
            )
            return self._after_change(
                f"remediation of {exposure.vulnerability.cve_id} on {node_id!r} changed"
            )

    # ----------------------------------------------------------------- network state

    def set_link_state(self, link_id: str, up: bool) -> ChangeReport:
        with self._lock:
            li = self._state.link(link_id)
            if self._state.link_up[li] == up:
                return ChangeReport()
            self._state.link_up[li] = up
            self._emit("link-state", {"link": link_id, "up": up})
            return self._after_change(f"link {link_id!r} {'up' if up else 'down'}")

    def set_node_state(self, node_id: str, up: bool) -> ChangeReport:
        with self._lock:
            i = self._state.node(node_id)
            if self._state.node_up[i] == up:
                return ChangeReport()
            self._state.node_up[i] = up
            self._emit("node-state", {"node": node_id, "up": up})
            return self._after_change(f"node {node_id!r} {'up' if up else 'down'}")

    def replace_topology(
        self, topology: Topology, exposures: Iterable[Exposure] = (), *, force: bool = False
    ) -> None:
        """Load another network. Installed paths are removed only when ``force`` is given."""
        with self._lock:
            by_node = _index_exposures(topology, exposures)
            if self._paths and not force:
                raise TopologyInUseError(
                    f"{len(self._paths)} path(s) are installed on {self._topology.name!r}; remove them or force"
                )
            for path in list(self._paths.values()):
                self._release(path)
                del self._paths[path.name]
                self._emit("path-removed", {"path": path.as_dict()})
            self._set_topology(topology, by_node)

    # ----------------------------------------------------------------- events

    def subscribe(self, callback: Callable[[Event], None]) -> Subscription:
        """Call ``callback`` with every future event; ``close()`` the subscription to stop."""
        with self._lock:
            subscription = Subscription(self, callback)
            self._subscribers.append(subscription)
            return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(next(self._seq), kind, self._clock(), data)
        self._history.append(event)
        for subscription in list(self._subscribers):
            try:
                subscription.callback(event)
            except Exception:  # a broken subscriber must not break the engine or the others
                log.exception("event subscriber failed on %s", kind)

    # ----------------------------------------------------------------- internals

    def _set_topology(self, topology: Topology, by_node: dict[str, dict[str, Exposure]]) -> None:
        self._topology = topology
        self._state = NetworkState(topology)
        self._exposures = by_node
        self._paths: dict[str, InstalledPath] = {}
        self._state.set_security_indices(self._indices())
        self._emit(
            "topology",
            {"name": topology.name, "nodes": len(topology.nodes), "links": len(topology.links)},
        )

    def _indices(self) -> dict[str, float]:
        return security_indices(
            (e for per_node in self._exposures.values() for e in per_node.values()), self._state.node_ids
        )

    def _exposure(self, node_id: str, cve_id: str) -> Exposure:
        self._state.node(node_id)
        cve_id = check_cve_id(cve_id)
        try:
            return self._exposures.get(node_id, {})[cve_id]
        except KeyError:
            raise UnknownExposureError(f"node {node_id!r} does not carry {cve_id}") from None

    def _reserve(self, path: InstalledPath) -> None:
        if path.route is None:
            return
        for link_id in path.route.links:
            self._state.reserved[self._state.link_index[link_id]] += path.request.bandwidth_mbps

    def _release(self, path: InstalledPath) -> None:
        if path.route is None:
            return
        for link_id in path.route.links:
            li = self._state.link_index[link_id]
            self._state.reserved[li] = max(0.0, self._state.reserved[li] - path.request.bandwidth_mbps)

    def _after_change(self, cause: str) -> ChangeReport:
        state = self._state
        old = list(state.security_index)
        state.set_security_indices(self._indices())
        report = ChangeReport()
        worse: set[str] = set()
        for i, node_id in enumerate(state.node_ids):
            if state.security_index[i] != old[i]:
                report.security_index_changes[node_id] = (old[i], state.security_index[i])
                if state.security_index[i] < old[i]:
                    worse.add(node_id)
        if report.security_index_changes:
            self._emit(
                "security-index",
                {
                    "cause": cause,
                    "changes": {
                        n: {"old": a, "new": b} for n, (a, b) in report.security_index_changes.items()
                    },
                },
            )
        affected = [
            p for p in self._paths.values() if p.route is not None and self._is_affected(p.route, worse)
        ]
        failed = self._reroute(affected, report, cause)
        self._retry_unroutable(report, cause, skip=failed)
        return report

    def _is_affected(self, route: Route, worse: set[str]) -> bool:
        state = self._state
        for node_id in route.nodes:
            if node_id in worse or not state.node_up[state.node_index[node_id]]:
                return True
        return any(not state.link_up[state.link_index[link_id]] for link_id in route.links)

    def _reroute(self, paths: list[InstalledPath], report: ChangeReport, cause: str) -> set[str]:
        failed: set[str] = set()
        for path in paths:
            self._release(path)
            outcome = compute_path(self._state, path.request)
            if isinstance(outcome, NoPath):
                moved = InstalledPath(
                    path.request,
                    PathStatus.UNROUTABLE,
                    None,
                    outcome.reason,
                    outcome.constraint,
                    path.version + 1,
                )
                self._paths[path.name] = moved
                report.unroutable.append(moved)
                failed.add(path.name)
                self._emit(
                    "path-unroutable",
                    {"path": moved.as_dict(), "previous": _route_dict(path.route), "cause": cause},
                )
                continue
            if (
                path.route is not None
                and outcome.nodes == path.route.nodes
                and outcome.links == path.route.links
            ):
                kept = replace(path, route=outcome)
                self._reserve(kept)
                self._paths[path.name] = kept
                report.unchanged.append(path.name)
                continue
            moved = InstalledPath(path.request, PathStatus.ACTIVE, outcome, version=path.version + 1)
            self._reserve(moved)
            self._paths[path.name] = moved
            report.rerouted.append(moved)
            self._emit(
                "path-rerouted",
                {"path": moved.as_dict(), "previous": _route_dict(path.route), "cause": cause},
            )
        return failed

    def _retry_unroutable(self, report: ChangeReport, cause: str, skip: set[str]) -> None:
        for path in list(self._paths.values()):
            if path.status is not PathStatus.UNROUTABLE or path.name in skip:
                continue
            outcome = compute_path(self._state, path.request)
            if isinstance(outcome, NoPath):
                if outcome.reason != path.reason:
                    self._paths[path.name] = replace(
                        path, reason=outcome.reason, constraint=outcome.constraint
                    )
                continue
            restored = InstalledPath(path.request, PathStatus.ACTIVE, outcome, version=path.version + 1)
            self._reserve(restored)
            self._paths[path.name] = restored
            report.restored.append(restored)
            self._emit("path-restored", {"path": restored.as_dict(), "cause": cause})


def _index_exposures(topology: Topology, exposures: Iterable[Exposure]) -> dict[str, dict[str, Exposure]]:
    by_node: dict[str, dict[str, Exposure]] = {}
    for e in exposures:
        topology.node(e.node)
        per_node = by_node.setdefault(e.node, {})
        if e.vulnerability.cve_id in per_node:
            raise ExposureExistsError(f"node {e.node!r} lists {e.vulnerability.cve_id} twice")
        per_node[e.vulnerability.cve_id] = e
    return by_node


def _route_dict(route: Route | None) -> dict[str, Any] | None:
    return route.as_dict() if route is not None else None


def exposure_dict(exposure: Exposure) -> dict[str, Any]:
    v = exposure.vulnerability
    return {
        "node": exposure.node,
        "cve_id": v.cve_id,
        "base_score": v.base_score,
        "vector": v.vector,
        "severity": v.severity,
        "description": v.description,
        "source": v.source,
        "metric": v.metric,
        "last_modified": v.last_modified,
        "remediation": exposure.remediation,
        "alpha": exposure.alpha,
    }
