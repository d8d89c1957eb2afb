"""A scenario: a topology and the vulnerabilities of its nodes, as one project YAML/JSON file.

The ``vulnerabilities`` section lists ``{node, cve, remediation, alpha}`` entries; a CVE is
resolved through a ``CveSource`` (the NVD client, offline by default), or given by hand with
``vector`` (and optionally ``score``, checked against the vector).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from interconnect.pce.cve import Vulnerability, vulnerability_from_vector
from interconnect.pce.errors import PceError, TopologyError
from interconnect.pce.loaders import (
    BUILTIN_TOPOLOGIES,
    GraphmlOptions,
    builtin_path,
    parse_document,
    parse_topology,
)
from interconnect.pce.security import Exposure
from interconnect.pce.topology import Topology

_EXPOSURE_KEYS = {"node", "cve", "remediation", "alpha", "vector", "score", "description"}


class CveSource(Protocol):
    def lookup(self, cve_id: str) -> Vulnerability: ...


def load_scenario(
    ref: str | Path, cves: CveSource, options: GraphmlOptions | None = None
) -> tuple[Topology, list[Exposure]]:
    """A built-in name (demo, geant, kdl) or a file; GraphML files carry no vulnerabilities."""
    path = builtin_path(str(ref)) if str(ref) in BUILTIN_TOPOLOGIES else Path(ref)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_scenario(raw, path.name, cves, options)


def parse_scenario(
    raw: bytes, filename: str, cves: CveSource, options: GraphmlOptions | None = None
) -> tuple[Topology, list[Exposure]]:
    topology = parse_topology(raw, filename, options)
    if filename.lower().endswith(".graphml"):
        return topology, []
    document = parse_document(raw, filename)
    entries = (document.get("vulnerabilities") or []) if isinstance(document, Mapping) else []
    if not isinstance(entries, list):
        raise TopologyError(f"{filename}: vulnerabilities: expected a list")
    exposures = []
    for i, entry in enumerate(entries):
        where = f"{filename}: vulnerabilities[{i}]"
        if not isinstance(entry, Mapping):
            raise TopologyError(f"{where}: expected a mapping, got {entry!r}")
        unknown = set(entry) - _EXPOSURE_KEYS
        if unknown:
            raise TopologyError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        node = entry.get("node")
        if not isinstance(node, str) or not topology.has_node(node):
            raise TopologyError(f"{where}.node: unknown node {node!r}")
        try:
            if entry.get("vector") is not None:
                vulnerability = vulnerability_from_vector(
                    str(entry.get("cve")),
                    str(entry["vector"]),
                    entry.get("score"),
                    description=str(entry.get("description", "")),
                )
            else:
                vulnerability = cves.lookup(str(entry.get("cve")))
            exposures.append(
                Exposure(node, vulnerability, entry.get("remediation", 1.0), entry.get("alpha", 1.0))
            )
        except PceError as exc:
            raise TopologyError(f"{where}: {exc}") from None
    return topology, exposures
