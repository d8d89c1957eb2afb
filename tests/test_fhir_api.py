"""The FHIR REST API, driven by a real FHIR client (fhirpy) against a live server."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import SYNTHEA, LiveServer
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from clinical_node.auth import TokenStore
from clinical_node.service import create_app
from clinical_node.site import Site


@pytest.fixture
def server(site: Site):
    with LiveServer(create_app(site)) as live:
        yield live


@pytest.fixture
def admin_token(site: Site) -> str:
    return TokenStore(site.root / "keys" / "api-tokens.json").issue("site-admin", "staff")


def bundles() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(SYNTHEA.glob("*_*.json"))]


def test_capability_statement_is_public(server: LiveServer) -> None:
    answer = httpx.get(f"{server.url}/fhir/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    body = answer.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"


def test_data_needs_a_site_admin_token(server: LiveServer, site: Site) -> None:
    answer = httpx.get(f"{server.url}/fhir/Patient")
    assert answer.status_code == 401
    assert answer.json()["resourceType"] == "OperationOutcome"
    patient_token = TokenStore(site.root / "keys" / "api-tokens.json").issue("patient", "p1")
    answer = httpx.get(f"{server.url}/fhir/Patient", headers={"Authorization": f"Bearer {patient_token}"})
    assert answer.status_code == 403
    assert answer.json()["issue"][0]["code"] == "forbidden"


def test_fhirpy_posts_bundles_then_searches_reads_and_pages(server: LiveServer, admin_token: str) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    for bundle in bundles():
        answer = httpx.post(f"{server.url}/fhir", json=bundle, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["type"] == "transaction-response"
        assert len(answer.json()["entry"]) == len(bundle["entry"])

    client = SyncFHIRClient(f"{server.url}/fhir", authorization=f"Bearer {admin_token}")
    patients = client.resources("Patient").fetch_all()
    assert len(patients) == 4
    patient = patients[0]
    again = client.reference("Patient", patient.id).to_resource()
    assert again["name"] == patient["name"]

    per_patient = {}
    for b in bundles():
        entry = next(e for e in b["entry"] if e["resource"]["resourceType"] == "Patient")
        pid = entry["resource"].get("id") or entry["fullUrl"].removeprefix("urn:uuid:")
        per_patient[pid] = sum(1 for e in b["entry"] if e["resource"]["resourceType"] == "Observation")
    expected = per_patient[patient.id]
    observations = client.resources("Observation").search(patient=patient.id).limit(7).fetch_all()
    assert len(observations) == expected > 7  # fetched through several pages
    assert all(o["subject"]["reference"] == f"Patient/{patient.id}" for o in observations)

    code = observations[0]["code"]["coding"][0]
    by_code = client.resources("Observation").search(code=f"{code['system']}|{code['code']}").fetch_all()
    assert by_code and all(any(c["code"] == code["code"] for c in o["code"]["coding"]) for o in by_code)
    recent = client.resources("Observation").search(patient=patient.id, date="ge2015-01-01").fetch_all()
    assert all(o.get("effectiveDateTime", "9999")[:10] >= "2015-01-01" for o in recent)


def test_errors_are_operation_outcomes(server: LiveServer, admin_token: str) -> None:
    client = SyncFHIRClient(f"{server.url}/fhir", authorization=f"Bearer {admin_token}")
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", "nobody").to_resource()
    with pytest.raises(OperationOutcome) as caught:
        client.resources("Observation").search(colour="blue").fetch()
    assert "colour" in str(caught.value)
    auth = {"Authorization": f"Bearer {admin_token}"}
    bad = bundles()[0]
    bad["entry"][1]["resource"]["bogus"] = True
    answer = httpx.post(f"{server.url}/fhir", json=bad, headers=auth)
    assert answer.status_code == 400
    issue = answer.json()["issue"][0]
    assert "entry[1]" in issue["expression"][0] and "bogus" in issue["diagnostics"]
    answer = httpx.post(f"{server.url}/fhir", content=b"{not json", headers=auth)
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome"
    answer = httpx.get(f"{server.url}/fhir/Observation?_count=abc", headers=auth)
    assert answer.status_code == 400 and "_count" in answer.json()["issue"][0]["diagnostics"]
    answer = httpx.get(f"{server.url}/fhir/Observation?date=yesterday", headers=auth)
    assert answer.status_code == 400
    assert httpx.get(f"{server.url}/fhir/Patient", headers=auth).json()["total"] == 0  # nothing half-written
