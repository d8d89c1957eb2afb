"""The network as the path engine sees it: nodes and the links between them.

A ``Topology`` is immutable and validated when it is built; what changes at run time (links and
nodes going down, reservations, vulnerabilities) is the engine's state, not the topology's.
Links are undirected and full duplex: ``capacity_mbps`` is the capacity of each direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from interconnect.pce.errors import TopologyError, UnknownLinkError, UnknownNodeError

MAX_ID_LENGTH = 80
# 10 Tbit/s: above any single link in production today; a larger figure is a unit mistake.
MAX_CAPACITY_MBPS = 10_000_000.0
# 10 s one way: far beyond any terrestrial or satellite hop; a larger figure is a unit mistake.
MAX_LINK_DELAY_US = 10_000_000.0


class NodeKind(StrEnum):
    ROUTER = "router"
    ACCESS = "access"
    SITE = "site"
    AGGREGATOR = "aggregator"


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    kind: NodeKind = NodeKind.ROUTER
    latitude: float | None = None
    longitude: float | None = None
    # Position on the operator's map, both in [0, 1] (left to right, top to bottom).
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True)
class Link:
    id: str
    a: str
    b: str
    capacity_mbps: float
    delay_us: float
    # Bandwidth held by traffic the engine does not manage (the file's baseline).
    reserved_mbps: float = 0.0

    def other(self, node_id: str) -> str:
        return self.b if node_id == self.a else self.a


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    _nodes: dict[str, Node] = field(init=False, repr=False, compare=False)
    _links: dict[str, Link] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nodes: dict[str, Node] = {}
        for i, node in enumerate(self.nodes):
            _check_id(node.id, f"nodes[{i}].id")
            if node.id in nodes:
                raise TopologyError(f"nodes[{i}].id: duplicate node id {node.id!r}")
            nodes[node.id] = node
        links: dict[str, Link] = {}
        for i, link in enumerate(self.links):
            where = f"links[{i}]"
            _check_id(link.id, f"{where}.id")
            if link.id in links:
                raise TopologyError(f"{where}.id: duplicate link id {link.id!r}")
            for end in ("a", "b"):
                if getattr(link, end) not in nodes:
                    raise TopologyError(f"{where}.{end}: unknown node {getattr(link, end)!r}")
            if link.a == link.b:
                raise TopologyError(f"{where}: a link from {link.a!r} to itself carries no route")
            _check_number(link.capacity_mbps, f"{where}.capacity_mbps", 0.0, MAX_CAPACITY_MBPS, open_low=True)
            _check_number(link.delay_us, f"{where}.delay_us", 0.0, MAX_LINK_DELAY_US)
            _check_number(link.reserved_mbps, f"{where}.reserved_mbps", 0.0, link.capacity_mbps)
            links[link.id] = link
        object.__setattr__(self, "_nodes", nodes)
        object.__setattr__(self, "_links", links)

    def node(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise UnknownNodeError(f"unknown node {node_id!r} in topology {self.name!r}") from None

    def link(self, link_id: str) -> Link:
        try:
            return self._links[link_id]
        except KeyError:
            raise UnknownLinkError(f"unknown link {link_id!r} in topology {self.name!r}") from None

    def has_node(self, node_id: str) -> bool:
        return node_id in self._nodes

    def with_positions(self, positions: Mapping[str, tuple[float, float]]) -> Topology:
        nodes = tuple(_replace_position(n, *positions[n.id]) if n.id in positions else n for n in self.nodes)
        return Topology(self.name, nodes, self.links)


def _replace_position(node: Node, x: float, y: float) -> Node:
    return Node(node.id, node.name, node.kind, node.latitude, node.longitude, x, y)


def _check_id(value: object, where: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
        raise TopologyError(
            f"{where}: expected a non-empty id of at most {MAX_ID_LENGTH} characters, got {value!r}"
        )
    if value != value.strip() or any(not c.isprintable() for c in value):
        raise TopologyError(f"{where}: id {value!r} has leading/trailing spaces or control characters")
    if "/" in value:
        # Ids are REST path segments (/api/nodes/{id}).
        raise TopologyError(f"{where}: id {value!r} contains '/'")


def _check_number(value: object, where: str, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TopologyError(f"{where}: expected a finite number, got {value!r}")
    number = float(value)
    if number < low or (open_low and number == low) or number > high:
        bound = f"{'>' if open_low else '>='} {low:g} and <= {high:g}"
        raise TopologyError(f"{where}: {number:g} is out of range (expected {bound})")
    return number


def _optional_number(data: Mapping[str, Any], key: str, where: str, low: float, high: float) -> float | None:
    if data.get(key) is None:
        return None
    return _check_number(data[key], f"{where}.{key}", low, high)


# "vulnerabilities" belongs to the engine's scenario (see engine.load_scenario), not to the graph.
_TOPOLOGY_KEYS = {"name", "description", "defaults", "nodes", "links", "vulnerabilities"}
_NODE_KEYS = {"id", "name", "kind", "latitude", "longitude", "x", "y"}
_LINK_KEYS = {"id", "a", "b", "capacity_mbps", "delay_us", "reserved_mbps"}


def topology_from_mapping(
    data: object,
    *,
    source: str = "topology",
    default_capacity_mbps: float = 10_000.0,
    default_delay_us: float = 1_000.0,
) -> Topology:
    """Build a topology from the project's YAML/JSON shape (see ``data/topologies/demo.yaml``).

    Error messages start with ``source`` (the file name) and name the field, so that a bad file
    is fixed without guessing. Keys outside the schema are refused rather than ignored: a typo
    such as ``capacity_mbit`` would otherwise silently fall back to the default.
    """
    if not isinstance(data, Mapping):
        raise TopologyError(
            f"{source}: expected a mapping with 'nodes' and 'links', got {type(data).__name__}"
        )
    try:
        unknown = set(data) - _TOPOLOGY_KEYS
        if unknown:
            raise TopologyError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, Mapping):
            raise TopologyError("defaults: expected a mapping")
        capacity_default = _check_number(
            defaults.get("capacity_mbps", default_capacity_mbps),
            "defaults.capacity_mbps",
            0.0,
            MAX_CAPACITY_MBPS,
            open_low=True,
        )
        delay_default = _check_number(
            defaults.get("delay_us", default_delay_us), "defaults.delay_us", 0.0, MAX_LINK_DELAY_US
        )
        raw_nodes = data.get("nodes")
        raw_links = data.get("links", [])
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise TopologyError("nodes: expected a non-empty list")
        if not isinstance(raw_links, list):
            raise TopologyError("links: expected a list")
        nodes = [_node_from_mapping(item, f"nodes[{i}]") for i, item in enumerate(raw_nodes)]
        links = [
            _link_from_mapping(item, f"links[{i}]", capacity_default, delay_default)
            for i, item in enumerate(raw_links)
        ]
        name = data.get("name", source)
        if not isinstance(name, str):
            raise TopologyError(f"name: expected a string, got {name!r}")
        return Topology(name, tuple(nodes), tuple(_number_parallel_links(links)))
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def _node_from_mapping(item: object, where: str) -> Node:
    if not isinstance(item, Mapping):
        raise TopologyError(f"{where}: expected a mapping, got {item!r}")
    unknown = set(item) - _NODE_KEYS
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    node_id = item.get("id")
    _check_id(node_id, f"{where}.id")
    assert isinstance(node_id, str)
    name = item.get("name", node_id)
    if not isinstance(name, str) or not name.strip():
        raise TopologyError(f"{where}.name: expected a non-empty string, got {name!r}")
    kind_value = item.get("kind", NodeKind.ROUTER.value)
    try:
        kind = NodeKind(kind_value)
    except ValueError:
        allowed = ", ".join(k.value for k in NodeKind)
        raise TopologyError(f"{where}.kind: {kind_value!r} is not one of {allowed}") from None
    return Node(
        id=node_id,
        name=name,
        kind=kind,
        latitude=_optional_number(item, "latitude", where, -90.0, 90.0),
        longitude=_optional_number(item, "longitude", where, -180.0, 180.0),
        x=_optional_number(item, "x", where, 0.0, 1.0),
        y=_optional_number(item, "y", where, 0.0, 1.0),
    )


def _link_from_mapping(item: object, where: str, capacity: float, delay: float) -> Link:
    if not isinstance(item, Mapping):
        raise TopologyError(f"{where}: expected a mapping, got {item!r}")
    unknown = set(item) - _LINK_KEYS
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    a, b = item.get("a"), item.get("b")
    _check_id(a, f"{where}.a")
    _check_id(b, f"{where}.b")
    assert isinstance(a, str) and isinstance(b, str)
    link_id = item.get("id", "")
    if link_id != "":
        _check_id(link_id, f"{where}.id")
    return Link(
        id=str(link_id),
        a=a,
        b=b,
        capacity_mbps=_check_number(
            item.get("capacity_mbps", capacity),
            f"{where}.capacity_mbps",
            0.0,
            MAX_CAPACITY_MBPS,
            open_low=True,
        ),
        delay_us=_check_number(item.get("delay_us", delay), f"{where}.delay_us", 0.0, MAX_LINK_DELAY_US),
        reserved_mbps=_check_number(
            item.get("reserved_mbps", 0.0), f"{where}.reserved_mbps", 0.0, MAX_CAPACITY_MBPS
        ),
    )


def _number_parallel_links(links: list[Link]) -> list[Link]:
    """Give links without an id the id ``a--b``, and ``a--b#2``, ``#3``... to parallel ones."""
    seen: dict[str, int] = {}
    named = {link.id for link in links if link.id}
    out = []
    for link in links:
        if link.id:
            out.append(link)
            continue
        base = f"{link.a}--{link.b}"
        count = seen.get(base, 0) + 1
        seen[base] = count
        link_id = base if count == 1 else f"{base}#{count}"
        while link_id in named:
            count += 1
            seen[base] = count
            link_id = f"{base}#{count}"
        named.add(link_id)
        out.append(Link(link_id, link.a, link.b, link.capacity_mbps, link.delay_us, link.reserved_mbps))
    return out
