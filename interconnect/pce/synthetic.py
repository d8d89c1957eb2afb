"""Synthetic topologies of any size, for benchmarks and scale tests.

A jittered square lattice over a 3,000 km wide area (a continental backbone's extent): every
node linked to its right and lower neighbours, plus a share of diagonal shortcuts. Delays follow
the distance at the speed of light in fibre; capacities are drawn from the usual line rates. The
same seed gives the same network.
"""

from __future__ import annotations

import math
import random

from interconnect.pce.loaders import FIBRE_SPEED_M_PER_S
from interconnect.pce.topology import Link, Node, NodeKind, Topology

LINE_RATES_MBPS = (1_000.0, 10_000.0, 40_000.0, 100_000.0)
AREA_M = 3_000_000.0


def synthetic_topology(n_nodes: int, *, seed: int = 1, shortcut_share: float = 0.1) -> Topology:
    if n_nodes < 2:
        raise ValueError("a synthetic topology needs at least 2 nodes")
    rng = random.Random(seed)
    side = math.ceil(math.sqrt(n_nodes))
    cell = 1.0 / side
    nodes: list[Node] = []
    position: dict[int, tuple[float, float]] = {}
    for k in range(n_nodes):
        row, col = divmod(k, side)
        x = (col + 0.5 + rng.uniform(-0.3, 0.3)) * cell
        y = (row + 0.5 + rng.uniform(-0.3, 0.3)) * cell
        position[k] = (x, y)
        nodes.append(Node(f"n{k}", f"n{k}", NodeKind.ROUTER, x=x, y=y))

    def link(a: int, b: int) -> Link:
        (xa, ya), (xb, yb) = position[a], position[b]
        distance = math.hypot(xa - xb, ya - yb) * AREA_M
        return Link(
            f"n{a}--n{b}",
            f"n{a}",
            f"n{b}",
            rng.choice(LINE_RATES_MBPS),
            distance / FIBRE_SPEED_M_PER_S * 1e6,
        )

    links = []
    for k in range(n_nodes):
        row, col = divmod(k, side)
        right, down, diagonal = k + 1, k + side, k + side + 1
        if col + 1 < side and right < n_nodes:
            links.append(link(k, right))
        if down < n_nodes:
            links.append(link(k, down))
        if col + 1 < side and diagonal < n_nodes and rng.random() < shortcut_share:
            links.append(link(k, diagonal))
    return Topology(f"synthetic-{n_nodes}-seed{seed}", tuple(nodes), tuple(links))
