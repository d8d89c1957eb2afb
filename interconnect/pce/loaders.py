"""Reading topologies from files: the project's YAML/JSON format and Topology Zoo GraphML.

The built-in topologies live in ``data/topologies``: ``demo`` (the seed's six routers and four
access nodes, with hospitals and the aggregator behind them), ``geant`` (GEANT 2012) and ``kdl``
(Kentucky Datalink, 754 nodes), both from the Internet Topology Zoo (CC BY 4.0, see SOURCE.md).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from interconnect.pce.errors import TopologyError
from interconnect.pce.topology import MAX_CAPACITY_MBPS, Link, Node, NodeKind, Topology, topology_from_mapping

# Mean Earth radius (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8
# Light in silica fibre travels at about c / 1.47, close to 2e8 m/s.
FIBRE_SPEED_M_PER_S = 2.0e8

BUILTIN_TOPOLOGIES = {"demo": "demo.yaml", "geant": "Geant2012.graphml", "kdl": "Kdl.graphml"}
MAX_TOPOLOGY_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class GraphmlOptions:
    """Defaults for what a Topology Zoo file does not say."""

    default_capacity_mbps: float = 10_000.0
    default_delay_us: float = 1_000.0
    fibre_speed_m_per_s: float = FIBRE_SPEED_M_PER_S


def great_circle_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in metres on a spherical Earth."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def fibre_delay_us(distance_m: float, speed_m_per_s: float = FIBRE_SPEED_M_PER_S) -> float:
    return distance_m / speed_m_per_s * 1e6


def builtin_path(name: str) -> Path:
    try:
        filename = BUILTIN_TOPOLOGIES[name]
    except KeyError:
        known = ", ".join(BUILTIN_TOPOLOGIES)
        raise TopologyError(f"no built-in topology {name!r} (built-in: {known})") from None
    return Path(str(resources.files("interconnect.pce") / "data" / "topologies" / filename))


def load_topology(ref: str | Path, options: GraphmlOptions | None = None) -> Topology:
    """Load a built-in topology by name, or a ``.yaml``/``.yml``/``.json``/``.graphml`` file."""
    path = builtin_path(str(ref)) if str(ref) in BUILTIN_TOPOLOGIES else Path(ref)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_topology(raw, path.name, options)


def parse_topology(raw: bytes, filename: str, options: GraphmlOptions | None = None) -> Topology:
    """Parse topology bytes; the format follows the file name's suffix."""
    if len(raw) > MAX_TOPOLOGY_BYTES:
        raise TopologyError(f"{filename}: {len(raw)} bytes, more than the {MAX_TOPOLOGY_BYTES} accepted")
    suffix = Path(filename).suffix.lower()
    if suffix == ".graphml":
        return with_layout(parse_graphml(raw, filename, options or GraphmlOptions()))
    if suffix in (".yaml", ".yml", ".json"):
        return with_layout(topology_from_mapping(parse_document(raw, filename), source=filename))
    raise TopologyError(
        f"{filename}: unknown topology format {suffix!r} (expected .yaml, .yml, .json or .graphml)"
    )


def parse_document(raw: bytes, filename: str) -> Any:
    """A YAML or JSON document (JSON is YAML, but its own parser gives better messages)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{filename}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        if filename.lower().endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise TopologyError(f"{filename}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{filename}: not valid YAML: {exc}") from None
    except RecursionError:
        raise TopologyError(f"{filename}: nested deeper than a topology can be") from None


def parse_graphml(raw: bytes, filename: str, options: GraphmlOptions) -> Topology:
    """A Topology Zoo GraphML file: every node a router, every edge a link.

    Capacity comes from ``LinkSpeedRaw`` (bit/s) where the file has it; delay from the
    great-circle distance between the ends' ``Latitude``/``Longitude`` at the speed of light in
    fibre; the defaults in ``options`` fill what is missing. Parallel edges (Topology Zoo
    multigraphs) stay separate links; self-loops carry no route and are left out.
    """
    try:
        graph = nx.read_graphml(io.BytesIO(raw))
    except Exception as exc:  # expat, networkx and int/float conversions all raise their own types
        raise TopologyError(f"{filename}: not valid GraphML: {type(exc).__name__}: {exc}") from None
    if graph.number_of_nodes() == 0:
        raise TopologyError(f"{filename}: the graph has no nodes")
    if graph.is_directed():
        graph = graph.to_undirected(as_view=False)

    labels = {n: _label(n, data) for n, data in graph.nodes(data=True)}
    counts = Counter(labels.values())
    # Ids are REST path segments: a "/" in a label (Kdl's Southfield/Detroit) becomes "-".
    ids = {
        n: (label if counts[label] == 1 else f"{label}#{n}").replace("/", "-") for n, label in labels.items()
    }
    nodes = []
    for n, data in graph.nodes(data=True):
        lat, lon = _coordinate(data, "Latitude", 90.0), _coordinate(data, "Longitude", 180.0)
        if lat is None or lon is None:
            lat = lon = None
        nodes.append(Node(ids[n], labels[n], NodeKind.ROUTER, lat, lon))
    by_id = {node.id: node for node in nodes}

    links = []
    seen: Counter[str] = Counter()
    for u, v, data in graph.edges(data=True):
        if u == v:
            continue
        a, b = ids[u], ids[v]
        base = f"{a}--{b}"
        seen[base] += 1
        link_id = base if seen[base] == 1 else f"{base}#{seen[base]}"
        links.append(
            Link(
                link_id,
                a,
                b,
                _capacity(data, options.default_capacity_mbps, filename, link_id),
                _delay(by_id[a], by_id[b], options),
            )
        )
    name = str(graph.graph.get("label") or graph.graph.get("Network") or Path(filename).stem)
    try:
        return Topology(name, tuple(nodes), tuple(links))
    except TopologyError as exc:
        raise TopologyError(f"{filename}: {exc}") from None


def _label(n: str, data: dict[str, Any]) -> str:
    label = data.get("label")
    text = str(label).strip() if label is not None else ""
    return text or str(n)


def _coordinate(data: dict[str, Any], key: str, bound: float) -> float | None:
    value = data.get(key)
    if isinstance(value, int | float) and math.isfinite(value) and -bound <= value <= bound:
        return float(value)
    return None


def _capacity(data: dict[str, Any], default: float, filename: str, link_id: str) -> float:
    raw = data.get("LinkSpeedRaw")
    if raw is None or raw == "":
        return default
    if not isinstance(raw, int | float) or not math.isfinite(raw) or raw <= 0:
        raise TopologyError(f"{filename}: link {link_id}: LinkSpeedRaw {raw!r} is not a positive bit rate")
    mbps = float(raw) / 1e6
    if mbps > MAX_CAPACITY_MBPS:
        raise TopologyError(f"{filename}: link {link_id}: LinkSpeedRaw {raw!r} bit/s is beyond 10 Tbit/s")
    return mbps


def _delay(a: Node, b: Node, options: GraphmlOptions) -> float:
    if a.latitude is None or a.longitude is None or b.latitude is None or b.longitude is None:
        return options.default_delay_us
    distance = great_circle_m(a.latitude, a.longitude, b.latitude, b.longitude)
    return fibre_delay_us(distance, options.fibre_speed_m_per_s)


def with_layout(topology: Topology) -> Topology:
    """Give every node a map position in [0, 1]².

    Nodes placed by the file keep their place; nodes with coordinates are projected
    (equirectangular, shrunk by cos(latitude) so that Europe does not look stretched); the rest
    are placed beside their placed neighbours, or by a seeded spring layout when nothing near
    them has a place, so the map is the same every run.
    """
    if all(n.x is not None and n.y is not None for n in topology.nodes):
        return topology
    positions: dict[str, tuple[float, float]] = {}
    geo = [n for n in topology.nodes if n.x is None and n.latitude is not None and n.longitude is not None]
    if geo:
        mean_lat = math.radians(sum(n.latitude or 0.0 for n in geo) / len(geo))
        raw = {n.id: ((n.longitude or 0.0) * math.cos(mean_lat), -(n.latitude or 0.0)) for n in geo}
        xs = [p[0] for p in raw.values()]
        ys = [p[1] for p in raw.values()]
        span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
        for node_id, (px, py) in raw.items():
            positions[node_id] = (0.05 + 0.9 * (px - min(xs)) / span, 0.05 + 0.9 * (py - min(ys)) / span)
    for n in topology.nodes:
        if n.x is not None and n.y is not None:
            positions[n.id] = (n.x, n.y)
    missing = [n.id for n in topology.nodes if n.id not in positions]
    if missing:
        neighbours: dict[str, list[str]] = {n.id: [] for n in topology.nodes}
        for link in topology.links:
            neighbours[link.a].append(link.b)
            neighbours[link.b].append(link.a)
        # Beside the placed neighbours, ring after ring, each node turned by the golden angle so
        # that siblings do not land on one spot.
        for _ in range(len(missing)):
            placed_now = {}
            for k, node_id in enumerate(missing):
                near = [positions[m] for m in neighbours[node_id] if m in positions]
                if near:
                    angle = 2.399963 * (k + 1)
                    mx = sum(p[0] for p in near) / len(near) + 0.02 * math.cos(angle)
                    my = sum(p[1] for p in near) / len(near) + 0.02 * math.sin(angle)
                    placed_now[node_id] = (min(1.0, max(0.0, mx)), min(1.0, max(0.0, my)))
            if not placed_now:
                break
            positions.update(placed_now)
            missing = [m for m in missing if m not in placed_now]
    if missing:
        # Nothing placed near them (no coordinates anywhere, or a component without any).
        graph: nx.MultiGraph = nx.MultiGraph()
        graph.add_nodes_from(missing)
        graph.add_edges_from(
            (link.a, link.b) for link in topology.links if link.a in graph and link.b in graph
        )
        placed = nx.spring_layout(graph, seed=1, center=(0.5, 0.5), scale=0.45)
        for node_id in missing:
            px, py = (float(c) for c in placed[node_id])
            positions[node_id] = (min(1.0, max(0.0, px)), min(1.0, max(0.0, py)))
    return topology.with_positions(positions)
