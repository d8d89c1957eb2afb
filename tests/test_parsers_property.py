"""Hypothesis against every parser of outside input that had no property test yet: FHIR
bundles, job specs (mapping, JSON and TOML file), topology files (JSON, YAML, GraphML), CVSS
vectors and scenario files (topology plus vulnerabilities). Each parser, given a valid
document with any one element replaced by junk, or bytes that are not a document at all,
either accepts it or raises its own error naming where the problem is; nothing else escapes
(no KeyError, TypeError, AttributeError or RecursionError from deep inside).

(Consents have theirs in test_consent_store.py.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinical_node.fhir.bundle import prepare_bundle
from clinical_node.fhir.errors import FhirError
from interconnect.pce.cve import vulnerability_from_vector
from interconnect.pce.errors import PceError, TopologyError, VulnerabilityError
from interconnect.pce.loaders import builtin_path, parse_topology
from interconnect.pce.nvd import NvdClient
from interconnect.pce.scenario import parse_scenario
from paroma.demo import demo_job
from paroma.jobspec import JobSpec, JobSpecError, parse_job_spec

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON-like document where a value can be replaced."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def mutations(doc: Any) -> st.SearchStrategy[Any]:
    """``doc`` with one element replaced by junk, or deleted."""
    paths = _paths(doc)

    def mutate(path: tuple[Any, ...], value: Any, delete: bool) -> Any:
        if delete and isinstance(path[-1], str):
            out = copy.deepcopy(doc)
            target = out
            for step in path[:-1]:
                target = target[step]
            del target[path[-1]]
            return out
        return _replace(doc, path, value)

    return st.builds(mutate, st.sampled_from(paths), junk, st.booleans())


# -- FHIR bundles --------------------------------------------------------------------------

BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:4c1e9a8e-0000-4000-8000-000000000001",
            "resource": {
                "resourceType": "Patient",
                "gender": "female",
                "birthDate": "1960-04-01",
            },
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "fullUrl": "urn:uuid:4c1e9a8e-0000-4000-8000-000000000002",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2093-3"}]},
                "subject": {"reference": "urn:uuid:4c1e9a8e-0000-4000-8000-000000000001"},
                "effectiveDateTime": "2020-01-02",
                "valueQuantity": {"value": 233, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    ],
}


def test_the_seed_bundle_is_valid() -> None:
    assert len(prepare_bundle(copy.deepcopy(BUNDLE))) == 2


@PROPERTY
@given(mutations(BUNDLE))
def test_a_broken_bundle_is_an_operation_outcome_naming_the_place(bundle: Any) -> None:
    try:
        prepare_bundle(bundle)
    except FhirError as exc:
        assert exc.issues
        outcome = exc.operation_outcome()
        assert outcome["resourceType"] == "OperationOutcome"
        assert all(issue.get("diagnostics") for issue in outcome["issue"])


@PROPERTY
@given(junk)
def test_anything_that_is_not_a_bundle_is_refused(data: Any) -> None:
    try:
        prepare_bundle(data)
    except FhirError as exc:
        assert exc.issues


# -- job specs -----------------------------------------------------------------------------

JOB = demo_job(3).to_dict()


@PROPERTY
@given(mutations(JOB))
def test_a_broken_job_spec_names_its_fields(doc: Any) -> None:
    try:
        spec = parse_job_spec(doc)
    except JobSpecError as exc:
        assert exc.problems and all(field and message for field, message in exc.problems)
    else:
        # what parses survives its own canonical JSON (the form sites receive)
        assert JobSpec.from_json(spec.to_json()) == spec


@PROPERTY
@given(st.text(max_size=200))
def test_job_spec_json_that_is_not_a_job_is_refused(text: str) -> None:
    try:
        JobSpec.from_json(text)
    except JobSpecError as exc:
        assert exc.problems


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_job_spec_files_that_are_not_toml_are_refused(tmp_path_factory: Any, raw: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("job")) / "job.toml"
    path.write_bytes(raw)
    try:
        JobSpec.from_toml(path)
    except JobSpecError as exc:
        assert exc.problems


# -- topology files and scenario files -------------------------------------------------------

DEMO_SCENARIO = yaml.safe_load(builtin_path("demo").read_text())
NVD = NvdClient()


@PROPERTY
@given(mutations(DEMO_SCENARIO), st.sampled_from(["scenario.json", "scenario.yaml"]))
def test_a_broken_scenario_file_names_its_file_and_field(doc: Any, filename: str) -> None:
    raw = (json.dumps(doc) if filename.endswith(".json") else yaml.safe_dump(doc)).encode()
    try:
        parse_scenario(raw, filename, NVD)
    except PceError as exc:
        assert str(exc).startswith(filename), str(exc)


@PROPERTY
@given(st.binary(max_size=300), st.sampled_from(["t.json", "t.yaml", "t.graphml", "t.txt"]))
def test_bytes_that_are_not_a_topology_are_refused(raw: bytes, filename: str) -> None:
    try:
        parse_topology(raw, filename)
    except TopologyError as exc:
        assert filename in str(exc)


GRAPHML_NODE = '<node id="{id}"><data key="label">{label}</data></node>'


@PROPERTY
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=5),
    st.sampled_from(["", "1e9", "-5", "abc", "inf"]),
)
def test_graphml_with_odd_nodes_and_links_is_parsed_or_refused(
    labels: list[str], edges: list[tuple[int, int]], capacity: str
) -> None:
    from xml.sax.saxutils import escape

    nodes = "".join(GRAPHML_NODE.format(id=f"n{i}", label=escape(label)) for i, label in enumerate(labels))
    links = "".join(
        f'<edge source="n{a}" target="n{b}"><data key="cap">{capacity}</data></edge>' for a, b in edges
    )
    raw = (
        '<?xml version="1.0"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
        '<key id="label" for="node" attr.name="label" attr.type="string"/>'
        '<key id="cap" for="edge" attr.name="LinkSpeedRaw" attr.type="string"/>'
        f'<graph edgedefault="undirected">{nodes}{links}</graph></graphml>'
    ).encode()
    try:
        topology = parse_topology(raw, "zoo.graphml")
    except TopologyError as exc:
        assert "zoo.graphml" in str(exc)
    else:
        assert topology.nodes


# -- CVSS vectors --------------------------------------------------------------------------

METRICS = {
    "AV": "NALP",
    "AC": "LH",
    "PR": "NLH",
    "UI": "NR",
    "S": "UC",
    "C": "NLH",
    "I": "NLH",
    "A": "NLH",
}


@st.composite
def cvss_vectors(draw: st.DrawFn) -> str:
    """Well-formed v3 vectors most of the time, and every way of getting one wrong."""
    version = draw(st.sampled_from(["CVSS:3.1", "CVSS:3.0", "CVSS:2.0", "CVSS:3.1", ""]))
    parts = [f"{m}:{draw(st.sampled_from([*values, 'X', 'Q', '']))}" for m, values in METRICS.items()]
    parts = draw(st.permutations(parts)) if draw(st.booleans()) else parts
    if draw(st.booleans()):
        parts = parts[: draw(st.integers(0, len(parts)))]
    text = "/".join([version, *parts]) if version else "/".join(parts)
    return text + draw(st.sampled_from(["", "/", "/E:H", "/AV:N", " ", "\x00"]))


@PROPERTY
@given(cvss_vectors(), st.one_of(st.none(), st.floats(min_value=-1, max_value=11)))
def test_cvss_vectors_are_scored_or_refused_by_name(vector: str, score: float | None) -> None:
    try:
        v = vulnerability_from_vector("CVE-2024-12345", vector, score)
    except VulnerabilityError as exc:
        assert str(exc).startswith("CVE-2024-12345"), str(exc)
    else:
        assert 0.0 <= v.base_score <= 10.0 and v.vector.startswith("CVSS:3.")
        if score is not None:
            assert abs(v.base_score - score) <= 0.1
