"""Topologies: the project's YAML/JSON format, Topology Zoo GraphML (GEANT, Kdl), and the
errors a bad file gets."""

from __future__ import annotations

import json
import math

import pytest

from interconnect.pce.errors import TopologyError
from interconnect.pce.loaders import GraphmlOptions, builtin_path, load_topology, parse_topology
from interconnect.pce.nvd import NvdClient
from interconnect.pce.scenario import load_scenario, parse_scenario
from interconnect.pce.topology import NodeKind


def cosine_law_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance by the spherical law of cosines (independent of the haversine)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    return 6_371_008.8 * math.acos(math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl))


def test_demo_is_the_seed_network() -> None:
    topology, exposures = load_scenario("demo", NvdClient())
    kinds = [n.kind for n in topology.nodes]
    assert kinds.count(NodeKind.ROUTER) == 6
    assert kinds.count(NodeKind.ACCESS) == 4
    assert kinds.count(NodeKind.SITE) == 4
    assert kinds.count(NodeKind.AGGREGATOR) == 1
    # The seed's map: ACCESS 1 on ROUTER 1, 2 on 2, 3 on 5, 4 on 4; the aggregator behind ACCESS 4.
    ends = {frozenset((link.a, link.b)) for link in topology.links}
    for access, router in (
        ("access-1", "router-1"),
        ("access-2", "router-2"),
        ("access-3", "router-5"),
        ("access-4", "router-4"),
    ):
        assert frozenset((access, router)) in ends
    assert frozenset(("aggregator", "access-4")) in ends
    assert {e.vulnerability.cve_id for e in exposures} == {
        "CVE-2022-36785",
        "CVE-2022-44204",
        "CVE-2023-0001",
    }
    assert all(0 <= (n.x or -1) <= 1 and 0 <= (n.y or -1) <= 1 for n in topology.nodes)


def test_geant_capacities_and_delays() -> None:
    topology = load_topology("geant", GraphmlOptions(default_capacity_mbps=1234.0, default_delay_us=777.0))
    assert (topology.name, len(topology.nodes), len(topology.links)) == ("Geant2012", 40, 61)
    capacities = [link.capacity_mbps for link in topology.links]
    # 39 links carry LinkSpeedRaw (bit/s): 2.5, 10 or other Gbit/s; the others get the default.
    assert sum(1 for c in capacities if c != 1234.0) == 39
    assert 2_500.0 in capacities and 10_000.0 in capacities
    nl_be = topology.link("NL--BE")
    nl, be = topology.node("NL"), topology.node("BE")
    assert (
        nl.latitude is not None
        and nl.longitude is not None
        and be.latitude is not None
        and be.longitude is not None
    )
    distance = cosine_law_distance_m(nl.latitude, nl.longitude, be.latitude, be.longitude)
    assert 170_000 < distance < 177_000  # Amsterdam to Brussels
    assert nl_be.delay_us == pytest.approx(distance / 2e8 * 1e6, rel=1e-9)
    # UA, MD and BY have no coordinates: their links get the default delay, and they still get a place.
    for country in ("UA", "MD", "BY"):
        node = topology.node(country)
        assert node.latitude is None and node.x is not None and node.y is not None
        assert all(link.delay_us == 777.0 for link in topology.links if country in (link.a, link.b))


def test_kdl_keeps_parallel_links_and_duplicate_labels_apart() -> None:
    topology = load_topology("kdl")
    assert len(topology.nodes) == 754
    assert len(topology.links) == 899  # 895 node pairs, 4 of them joined twice
    assert len({frozenset((link.a, link.b)) for link in topology.links}) == 895
    assert any("#" in link.id for link in topology.links)
    athens = [n for n in topology.nodes if n.name == "Athens"]
    assert len(athens) == 4 and len({n.id for n in athens}) == 4
    assert (
        topology.has_node("Southfield-Detroit")
        and topology.node("Southfield-Detroit").name == "Southfield/Detroit"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"<graphml><graph><node id='a'/>",  # truncated
        b"not xml at all",
        b"<?xml version='1.0'?><graphml xmlns='http://graphml.graphdrawing.org/xmlns'></graphml>",  # no graph
    ],
)
def test_malformed_graphml_is_refused_with_the_file_named(raw: bytes) -> None:
    with pytest.raises(TopologyError, match=r"^bad\.graphml: "):
        parse_topology(raw, "bad.graphml")


def test_graphml_with_a_bad_link_speed_is_refused() -> None:
    text = (
        builtin_path("geant")
        .read_text()
        .replace('<data key="d42">2500000000.0</data>', '<data key="d42">-5.0</data>', 1)
    )
    with pytest.raises(TopologyError, match=r"LinkSpeedRaw -5\.0 is not a positive bit rate"):
        parse_topology(text.encode(), "Geant2012.graphml")


YAML_OK = """
name: tiny
nodes:
  - {id: a, kind: access}
  - {id: b}
links:
  - {a: a, b: b, capacity_mbps: 100, delay_us: 10}
  - {a: a, b: b}
"""


def test_yaml_defaults_and_parallel_link_ids() -> None:
    topology = parse_topology(YAML_OK.encode(), "tiny.yaml")
    assert [link.id for link in topology.links] == ["a--b", "a--b#2"]
    assert topology.links[1].capacity_mbps == 10_000.0 and topology.links[1].delay_us == 1_000.0
    assert topology.node("b").kind is NodeKind.ROUTER


def test_json_topologies_load_too() -> None:
    document = {"nodes": [{"id": "a"}, {"id": "b"}], "links": [{"a": "a", "b": "b"}]}
    assert len(parse_topology(json.dumps(document).encode(), "t.json").links) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: [{id: a}]\nlinks: [{a: a, b: z}]", r"links\[0\]\.b: unknown node 'z'"),
        ("nodes: [{id: a}, {id: a}]", r"nodes\[1\]\.id: duplicate node id 'a'"),
        (
            "nodes: [{id: a}, {id: b}]\nlinks: [{a: a, b: b, capacity_mbps: -3}]",
            r"links\[0\]\.capacity_mbps: -3 is out of range",
        ),
        (
            "nodes: [{id: a}, {id: b}]\nlinks: [{a: a, b: b, delay_us: .nan}]",
            r"links\[0\]\.delay_us: expected a finite number",
        ),
        (
            "nodes: [{id: a}, {id: b}]\nlinks: [{a: a, b: b, capacity_mbit: 3}]",
            r"links\[0\]: unknown field\(s\) capacity_mbit",
        ),
        ("nodes: [{id: a, kind: switch}]", r"nodes\[0\]\.kind: 'switch' is not one of router, access"),
        ("nodes: [{id: a}]\nlinks: [{a: a, b: a}]", "a link from 'a' to itself"),
        ("nodes: [{id: 'a/b'}]", "contains '/'"),
        ("nodes: []", "nodes: expected a non-empty list"),
        ("nodes: [{id: a}\n", "not valid YAML"),
        ("colour: blue\nnodes: [{id: a}]", r"unknown field\(s\) colour"),
    ],
)
def test_bad_yaml_is_refused_with_file_field_and_value(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=r"^net\.yaml: .*" + message):
        parse_topology(text.encode(), "net.yaml")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(TopologyError, match=r"unknown topology format '\.txt'"):
        parse_topology(b"a b", "net.txt")


def test_scenario_vulnerabilities_resolve_offline_or_by_vector() -> None:
    text = YAML_OK + (
        "vulnerabilities:\n"
        "  - {node: a, cve: CVE-2022-44006, remediation: 2}\n"
        "  - {node: b, cve: CVE-2030-0001, vector: 'CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N', score: 7.5}\n"
    )
    _, exposures = parse_scenario(text.encode(), "tiny.yaml", NvdClient())
    assert [(e.node, e.vulnerability.base_score, e.remediation) for e in exposures] == [
        ("a", 9.8, 2),
        ("b", 7.5, 1.0),
    ]
    assert exposures[0].vulnerability.source == "NVD"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{node: z, cve: CVE-2022-44006}", "node: unknown node 'z'"),
        ("{node: a, cve: CVE-2099-0001}", "CVE-2099-0001 is not in the local NVD data"),
        ("{node: a, cve: CVE-2022-44006, remediation: 0.5}", "remediation level"),
        ("{node: a, cve: CVE-2030-0001, vector: 'CVSS:3.1/AV:N'}", "malformed CVSS vector"),
    ],
)
def test_bad_scenario_entries_are_refused(entry: str, message: str) -> None:
    text = YAML_OK + f"vulnerabilities:\n  - {entry}\n"
    with pytest.raises(TopologyError, match=message):
        parse_scenario(text.encode(), "tiny.yaml", NvdClient())
