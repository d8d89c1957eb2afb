"""The relay layout of a topology on one machine: a relay per router and access node, on
consecutive ports, and the controller file that names them (what ``paroma relay layout`` writes
and ``paroma pce serve --relays`` reads). Pure: text in, text out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from interconnect.pce.topology import NodeKind, Topology


class LayoutError(ValueError):
    """The layout does not fit the topology; the message names the site, node or port."""


@dataclass(frozen=True)
class RelayPlacement:
    node: str
    port: int
    control_port: int


def relay_nodes(topology: Topology) -> list[str]:
    """The nodes that run a relay, in topology order: every router and access node."""
    return [n.id for n in topology.nodes if n.kind in (NodeKind.ROUTER, NodeKind.ACCESS)]


def place_relays(
    topology: Topology, base_port: int, control_base_port: int, host: str = "127.0.0.1"
) -> list[RelayPlacement]:
    """The i-th relay node listens on ``base_port + i`` and is controlled on ``control_base_port + i``."""
    nodes = relay_nodes(topology)
    if not nodes:
        raise LayoutError(f"topology {topology.name!r} has no router or access node to run a relay on")
    placements = [RelayPlacement(n, base_port + i, control_base_port + i) for i, n in enumerate(nodes)]
    ports = [p.port for p in placements] + [p.control_port for p in placements]
    if max(ports) > 65535 or min(ports) < 1:
        raise LayoutError(f"ports {min(ports)}..{max(ports)} do not fit in 1..65535")
    if len(set(ports)) != len(ports):
        raise LayoutError(
            f"relay ports {base_port}+ and control ports {control_base_port}+ overlap for {len(nodes)} relays"
        )
    return placements


def relay_config_text(
    placement: RelayPlacement, host: str, token_file: str, tls: tuple[str, str] | None = None
) -> str:
    """``tls``: (certificate, key) files for an HTTPS control API."""
    text = (
        "[relay]\n"
        f'name = "{placement.node}"\n'
        f'host = "{host}"\n'
        f"port = {placement.port}\n"
        f'control_host = "{host}"\n'
        f"control_port = {placement.control_port}\n"
        f'token_file = "{token_file}"\n'
    )
    if tls is not None:
        text += f'tls_cert_file = "{tls[0]}"\ntls_key_file = "{tls[1]}"\n'
    return text


def controller_config_text(
    topology: Topology,
    placements: list[RelayPlacement],
    sites: Mapping[str, str],
    *,
    host: str,
    aggregator_node: str,
    aggregator_port: int,
    token_file: str,
    min_security: float = 50.0,
    bandwidth_mbps: float = 100.0,
    max_delay_us: float = 50_000.0,
    ca_file: str | None = None,
) -> str:
    """With ``ca_file`` the relays' control APIs are HTTPS, verified against that CA."""
    scheme = "https" if ca_file else "http"
    for site_id, node in sites.items():
        if not topology.has_node(node):
            raise LayoutError(f"site {site_id!r}: node {node!r} is not in topology {topology.name!r}")
    if not topology.has_node(aggregator_node):
        raise LayoutError(f"aggregator node {aggregator_node!r} is not in topology {topology.name!r}")
    lines = [
        "[controller]",
        f'token_file = "{token_file}"',
        f"bandwidth_mbps = {bandwidth_mbps:g}",
        f"max_delay_us = {max_delay_us:g}",
        f"min_security = {min_security:g}",
        'ingress_file = "ingress.json"',
        *([f'ca_file = "{ca_file}"'] if ca_file else []),
        "",
        "[aggregator]",
        f'node = "{aggregator_node}"',
        f'host = "{host}"',
        f"port = {aggregator_port}",
    ]
    for p in placements:
        lines += [
            "",
            "[[relay]]",
            f'node = "{p.node}"',
            f'host = "{host}"',
            f"port = {p.port}",
            f'control_url = "{scheme}://{host}:{p.control_port}"',
        ]
    for site_id, node in sites.items():
        lines += ["", "[[site]]", f'id = "{site_id}"', f'node = "{node}"']
    return "\n".join(lines) + "\n"
