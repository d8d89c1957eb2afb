"""Constrained path computation: the PCE's algorithm, pure (no I/O, no locks, no clock).

A request (RFC 5440's END-POINTS, BANDWIDTH and METRIC objects; RFC 8233's delay bound; the
seed's minimum security threshold) is answered on a ``NetworkState``:

* Pruning (CSPF, as in OpenDaylight BGPCEP): a link is usable if it is up and its available
  bandwidth (capacity minus reservations) is at least the requested bandwidth; a node is usable if
  it is up and, when the threshold T > 0, its security index is at least T. The source and the
  destination must be usable too.
* Objective when T > 0, the most secure path: minimise the path's security cost, the sum over the
  nodes it crosses of ``-ln(SI_j / 100)``, that is maximise ``prod_j SI_j / 100``, the probability
  that no node of the path falls victim of an attack if nodes fall independently (the seed's P_j).
  Entering node j costs ``-ln(SI_j/100)``, so the cost lies on the links and adds up, as the seed
  asks. Among equally secure paths the one with least delay wins. The total delay must not exceed
  the bound.
* Objective when T = 0 (the seed: "a classical bandwidth + latency path calculation"): the least
  delay path among those with the bandwidth, and within the delay bound.

Security costs are integers (nano-nats) so that sums are exact and ties are ties; delays are
floats summed in path order, the same order the exhaustive-search oracle of the tests uses.

Delay-constrained least-cost paths are NP-hard in general. The search here is exact and fast in
practice: first a lexicographic Dijkstra on (cost, delay), whose answer is optimal whenever it
meets the delay bound (the common case); otherwise reverse Dijkstras give, for every node, the
least delay and the least cost to the destination, and a label-setting search (labels (cost,
delay), Pareto dominance per node, A* order on cost + bound) drops every label that cannot reach
the destination in time. With non-negative costs and delays the first label popped at the
destination is optimal, and weak dominance keeps every label's path simple.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from interconnect.pce.errors import InvalidRequestError, UnknownLinkError, UnknownNodeError
from interconnect.pce.topology import MAX_CAPACITY_MBPS, MAX_ID_LENGTH, Topology

# Nano-nats: -ln(SI/100) scaled to an integer. One unit is an SI difference of ~1e-7.
SECURITY_COST_SCALE = 1_000_000_000
# 60 s end to end: a larger bound is a unit mistake (the form asks for microseconds).
MAX_PATH_DELAY_US = 60_000_000.0
# Reservations are float sums: a link whose free bandwidth is within 1 bit/s of the request fits.
BANDWIDTH_TOLERANCE_MBPS = 1e-6
_UNREACHED = 2**63

Constraint = Literal["node-down", "connectivity", "bandwidth", "security", "delay"]


@dataclass(frozen=True)
class PathRequest:
    """The seed's "Compute Secure Path" form."""

    name: str
    source: str
    destination: str
    bandwidth_mbps: float
    max_delay_us: float
    min_security: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > MAX_ID_LENGTH:
            raise InvalidRequestError(
                f"path name: expected 1 to {MAX_ID_LENGTH} characters, got {self.name!r}"
            )
        if self.name != self.name.strip() or any(not c.isprintable() for c in self.name):
            raise InvalidRequestError(
                f"path name {self.name!r}: no leading/trailing spaces or control characters"
            )
        for field_name in ("source", "destination"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"{field_name}: a node id is required")
        if self.source == self.destination:
            raise InvalidRequestError(f"source and destination are the same node {self.source!r}")
        _check_range("bandwidth_mbps", self.bandwidth_mbps, 0.0, MAX_CAPACITY_MBPS, "Mbit/s", open_low=True)
        _check_range("max_delay_us", self.max_delay_us, 0.0, MAX_PATH_DELAY_US, "µs", open_low=True)
        _check_range("min_security", self.min_security, 0.0, 100.0, "(security index)")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_range(
    name: str, value: object, low: float, high: float, unit: str, *, open_low: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{name}: expected a finite number, got {value!r}")
    if value < low or (open_low and value == low) or value > high:
        low_text = f"> {low:g}" if open_low else f">= {low:g}"
        raise InvalidRequestError(
            f"{name}: {value:g} is out of range (expected {low_text} and <= {high:g} {unit})"
        )


@dataclass(frozen=True)
class Route:
    """A computed path and what the operator needs to judge it."""

    nodes: tuple[str, ...]
    links: tuple[str, ...]
    delay_us: float
    # Lowest SI of the nodes on the path, source and destination included.
    min_security_index: float
    # Least available bandwidth over the path's links when it was computed.
    bottleneck_mbps: float
    # Sum of -ln(SI_j/100) over the path's nodes (the objective when T > 0).
    security_cost: float
    # prod_j SI_j/100, as a percentage: chance that no node of the path is compromised.
    path_security: float

    def as_dict(self) -> dict[str, Any]:
        # Shallow on purpose (dataclasses.asdict deep-copies): events carry one per moved path.
        return {**self.__dict__, "nodes": list(self.nodes), "links": list(self.links)}


@dataclass(frozen=True)
class NoPath:
    """No path meets the request; ``constraint`` names the first one that cannot be met."""

    constraint: Constraint
    reason: str


def security_cost(si: float) -> int:
    """Cost of entering a node of security index ``si`` (0 for SI 100)."""
    if si >= 100.0:
        return 0
    if si <= 0.0:
        # P_j = 1: the node is certainly compromised; only a threshold-0 request crosses it,
        # and that one ignores costs.
        return 2**62
    return round(-math.log(si / 100.0) * SECURITY_COST_SCALE)


class NetworkState:
    """The topology indexed for path computation, with its run-time state.

    Arrays indexed by node and link number; the engine mutates ``reserved``, ``link_up``,
    ``node_up`` and (through ``set_security_indices``) the SI and cost arrays, under its lock.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.node_ids = [n.id for n in topology.nodes]
        self.node_index = {node_id: i for i, node_id in enumerate(self.node_ids)}
        self.link_ids = [link.id for link in topology.links]
        self.link_index = {link_id: i for i, link_id in enumerate(self.link_ids)}
        self.link_ends = [(self.node_index[link.a], self.node_index[link.b]) for link in topology.links]
        self.adjacency: list[list[tuple[int, int]]] = [[] for _ in self.node_ids]
        for li, (a, b) in enumerate(self.link_ends):
            self.adjacency[a].append((b, li))
            self.adjacency[b].append((a, li))
        self.capacity = [link.capacity_mbps for link in topology.links]
        self.delay = [link.delay_us for link in topology.links]
        self.reserved = [link.reserved_mbps for link in topology.links]
        self.link_up = [True] * len(self.link_ids)
        self.node_up = [True] * len(self.node_ids)
        self.security_index = [100.0] * len(self.node_ids)
        self.cost = [0] * len(self.node_ids)
        self.zeros = [0] * len(self.node_ids)

    def node(self, node_id: str) -> int:
        try:
            return self.node_index[node_id]
        except KeyError:
            raise UnknownNodeError(f"unknown node {node_id!r} in topology {self.topology.name!r}") from None

    def link(self, link_id: str) -> int:
        try:
            return self.link_index[link_id]
        except KeyError:
            raise UnknownLinkError(f"unknown link {link_id!r} in topology {self.topology.name!r}") from None

    def available(self, li: int) -> float:
        return self.capacity[li] - self.reserved[li]

    def set_security_indices(self, indices: dict[str, float]) -> None:
        for node_id, si in indices.items():
            i = self.node_index[node_id]
            self.security_index[i] = si
            self.cost[i] = security_cost(si)


def compute_path(state: NetworkState, request: PathRequest) -> Route | NoPath:
    """The optimal path for ``request`` on ``state`` (see the module's docstring), or why none."""
    s, d = state.node(request.source), state.node(request.destination)
    threshold = float(request.min_security)
    secure = threshold > 0.0
    ends = (("source", s), ("destination", d))
    for end, i in ends:
        if not state.node_up[i]:
            return NoPath("node-down", f"{end} node {state.node_ids[i]!r} is down")
    for end, i in ends:
        if secure and state.security_index[i] < threshold:
            return NoPath(
                "security",
                f"{end} node {state.node_ids[i]!r} has security index {state.security_index[i]:.2f}, "
                f"below the minimum security threshold {threshold:g}",
            )

    found = _lexicographic_dijkstra(state, s, d, request.bandwidth_mbps, threshold)
    if found is None:
        return _diagnose(state, request, s, d)
    nodes, links, delay = found
    if delay <= request.max_delay_us:
        return _route(state, nodes, links)
    if not secure:
        return _too_slow(request, delay)
    link_ok = _link_filter(state, request.bandwidth_mbps)
    node_ok = _node_filter(state, threshold)
    to_dest_delay = _reverse_dijkstra(state, d, link_ok, node_ok, state.delay, None)
    fastest = to_dest_delay.get(s, math.inf)
    if fastest > request.max_delay_us:
        return _too_slow(request, fastest)
    to_dest_cost = _reverse_dijkstra(state, d, link_ok, node_ok, None, state.cost)
    best = _label_setting(state, s, d, request.max_delay_us, link_ok, node_ok, to_dest_delay, to_dest_cost)
    if best is None:  # cannot happen: the fastest path is feasible; kept as a fail-closed answer
        return _too_slow(request, fastest)
    return _route(state, *best)


def _link_filter(state: NetworkState, bandwidth: float) -> list[bool]:
    need = bandwidth - BANDWIDTH_TOLERANCE_MBPS
    cap, res, up = state.capacity, state.reserved, state.link_up
    return [up[i] and cap[i] - res[i] >= need for i in range(len(cap))]


def _node_filter(state: NetworkState, threshold: float) -> list[bool]:
    if threshold <= 0.0:
        return state.node_up
    si, up = state.security_index, state.node_up
    return [up[i] and si[i] >= threshold for i in range(len(si))]


def _lexicographic_dijkstra(
    state: NetworkState, s: int, d: int, bandwidth: float, threshold: float
) -> tuple[list[int], list[int], float] | None:
    """Lexicographically least (cost, delay) path from s to d over the usable elements (least
    delay when threshold is 0). The pruning is checked inline, not built as lists first: this
    search answers most requests, and on large networks it stops long before it has seen every
    link."""
    adjacency, delay = state.adjacency, state.delay
    capacity, reserved, link_up, node_up = state.capacity, state.reserved, state.link_up, state.node_up
    si = state.security_index
    secure = threshold > 0.0
    need = bandwidth - BANDWIDTH_TOLERANCE_MBPS
    costs = state.cost if secure else state.zeros
    n = len(adjacency)
    best_cost = [_UNREACHED] * n
    best_delay = [math.inf] * n
    parent: dict[int, tuple[int, int]] = {}
    done = bytearray(n)
    best_cost[s], best_delay[s] = costs[s], 0.0
    heap: list[tuple[int, float, int]] = [(costs[s], 0.0, s)]
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        c, dl, u = pop(heap)
        if done[u]:
            continue
        if u == d:
            return (*_unwind(parent, s, d), dl)
        done[u] = 1
        for v, li in adjacency[u]:
            if done[v] or not link_up[li] or capacity[li] - reserved[li] < need or not node_up[v]:
                continue
            if secure and si[v] < threshold:
                continue
            nc = c + costs[v]
            nd = dl + delay[li]
            old = best_cost[v]
            if nc < old or (nc == old and nd < best_delay[v]):
                best_cost[v] = nc
                best_delay[v] = nd
                parent[v] = (u, li)
                push(heap, (nc, nd, v))
    return None


def _unwind(parent: dict[int, tuple[int, int]], s: int, d: int) -> tuple[list[int], list[int]]:
    nodes, links = [d], []
    v = d
    while v != s:
        u, li = parent[v]
        links.append(li)
        nodes.append(u)
        v = u
    nodes.reverse()
    links.reverse()
    return nodes, links


def _reverse_dijkstra(
    state: NetworkState,
    d: int,
    link_ok: list[bool],
    node_ok: list[bool],
    link_weight: list[float] | None,
    node_weight: list[int] | None,
) -> dict[int, float]:
    """Least weight from every node to d over usable elements (links are undirected).

    With ``node_weight`` the weight of a hop u -> v is the weight of v (the cost of entering
    it), so the value at u excludes u's own cost, as the label search adds it on entering.
    """
    adjacency = state.adjacency
    dist: dict[int, float] = {d: 0}
    heap: list[tuple[float, int]] = [(0, d)]
    done: set[int] = set()
    while heap:
        w, v = heapq.heappop(heap)
        if v in done:
            continue
        done.add(v)
        step_node = node_weight[v] if node_weight is not None else 0
        for u, li in adjacency[v]:
            if u in done or not link_ok[li] or not node_ok[u]:
                continue
            nw = w + (link_weight[li] if link_weight is not None else step_node)
            if nw < dist.get(u, math.inf):
                dist[u] = nw
                heapq.heappush(heap, (nw, u))
    return dist


def _label_setting(
    state: NetworkState,
    s: int,
    d: int,
    max_delay: float,
    link_ok: list[bool],
    node_ok: list[bool],
    to_dest_delay: dict[int, float],
    to_dest_cost: dict[int, float],
) -> tuple[list[int], list[int]] | None:
    adjacency, delay, cost = state.adjacency, state.delay, state.cost
    # The bounds are sums in another order than the path's own: allow for rounding when pruning,
    # and check the exact bound only at the destination.
    slack = max_delay * 1e-12 + 1e-9
    label_cost: list[int] = [cost[s]]
    label_delay: list[float] = [0.0]
    label_node: list[int] = [s]
    label_parent: list[int] = [-1]
    label_link: list[int] = [-1]
    alive: list[bool] = [True]
    front: dict[int, list[int]] = {s: [0]}
    heap: list[tuple[float, float, int]] = [(cost[s] + to_dest_cost[s], to_dest_delay[s], 0)]
    while heap:
        _, _, li_label = heapq.heappop(heap)
        if not alive[li_label]:
            continue
        u = label_node[li_label]
        if u == d:
            nodes, links = [], []
            k = li_label
            while k != -1:
                nodes.append(label_node[k])
                if label_link[k] != -1:
                    links.append(label_link[k])
                k = label_parent[k]
            nodes.reverse()
            links.reverse()
            return nodes, links
        c, dl = label_cost[li_label], label_delay[li_label]
        for v, li in adjacency[u]:
            if not link_ok[li] or not node_ok[v]:
                continue
            bound = to_dest_delay.get(v)
            if bound is None:
                continue
            nd = dl + delay[li]
            if (nd > max_delay) if v == d else (nd + bound > max_delay + slack):
                continue
            nc = c + cost[v]
            labels_here = front.get(v)
            if labels_here is None:
                labels_here = front[v] = []
            elif any(label_cost[k] <= nc and label_delay[k] <= nd for k in labels_here):
                continue
            else:
                kept = []
                for k in labels_here:
                    if nc <= label_cost[k] and nd <= label_delay[k]:
                        alive[k] = False
                    else:
                        kept.append(k)
                labels_here[:] = kept
            new = len(label_cost)
            label_cost.append(nc)
            label_delay.append(nd)
            label_node.append(v)
            label_parent.append(li_label)
            label_link.append(li)
            alive.append(True)
            labels_here.append(new)
            heapq.heappush(heap, (nc + to_dest_cost[v], nd + bound, new))
    return None


def _route(state: NetworkState, nodes: list[int], links: list[int]) -> Route:
    si = [state.security_index[i] for i in nodes]
    delay = 0.0
    for li in links:
        delay += state.delay[li]
    survival = 1.0
    for value in si:
        survival *= value / 100.0
    return Route(
        nodes=tuple(state.node_ids[i] for i in nodes),
        links=tuple(state.link_ids[li] for li in links),
        delay_us=delay,
        min_security_index=min(si),
        bottleneck_mbps=min(state.available(li) for li in links),
        security_cost=sum(state.cost[i] for i in nodes) / SECURITY_COST_SCALE,
        path_security=survival * 100.0,
    )


def _too_slow(request: PathRequest, fastest: float) -> NoPath:
    return NoPath(
        "delay",
        f"max delay: the fastest path meeting the other constraints takes {fastest:.1f} µs, "
        f"more than the {request.max_delay_us:g} µs allowed",
    )


def _diagnose(state: NetworkState, request: PathRequest, s: int, d: int) -> NoPath:
    """Name the first constraint, in the order connectivity, bandwidth, security, that fails."""
    up_links, up_nodes = state.link_up, state.node_up
    src, dst = request.source, request.destination
    widest = _best_bottleneck(state, s, d, up_links, up_nodes, lambda li, v: state.available(li))
    if widest is None:
        return NoPath("connectivity", f"no working route joins {src!r} and {dst!r} (links or nodes down)")
    if widest < request.bandwidth_mbps - BANDWIDTH_TOLERANCE_MBPS:
        return NoPath(
            "bandwidth",
            f"required bandwidth: no path from {src!r} to {dst!r} has {request.bandwidth_mbps:g} Mbit/s "
            f"available on every link (the widest offers {max(widest, 0.0):g} Mbit/s)",
        )
    link_ok = _link_filter(state, request.bandwidth_mbps)
    safest = _best_bottleneck(state, s, d, link_ok, up_nodes, lambda li, v: state.security_index[v])
    best_si = min(safest if safest is not None else 0.0, state.security_index[s])
    return NoPath(
        "security",
        f"minimum security threshold: every path from {src!r} to {dst!r} with the bandwidth crosses a node "
        f"below {request.min_security:g} (the best path's lowest security index is {best_si:.2f})",
    )


def _best_bottleneck(
    state: NetworkState,
    s: int,
    d: int,
    link_ok: list[bool],
    node_ok: list[bool],
    value: Callable[[int, int], float],
) -> float | None:
    """Max over paths of the min of ``value(link, entered node)`` (a widest-path Dijkstra)."""
    best: dict[int, float] = {s: math.inf}
    heap: list[tuple[float, int]] = [(-math.inf, s)]
    done: set[int] = set()
    while heap:
        neg, u = heapq.heappop(heap)
        if u in done:
            continue
        if u == d:
            return -neg
        done.add(u)
        for v, li in state.adjacency[u]:
            if v in done or not link_ok[li] or not node_ok[v]:
                continue
            width = min(-neg, value(li, v))
            if width > best.get(v, -math.inf):
                best[v] = width
                heapq.heappush(heap, (-width, v))
    return None
