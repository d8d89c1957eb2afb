"""FHIR Consent ingest: R4 validation with element-precise errors, atomic and versioned
storage indexed by patient, encryption at rest, and the /fhir/Consent endpoints."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer
from hypothesis import given, settings
from hypothesis import strategies as st

from clinical_node.auth import TokenStore
from clinical_node.fhir.errors import FhirError
from clinical_node.service import create_app
from clinical_node.site import Site
from paroma.demo import demo_job
from protection_layer import ConsentDecision, ProtectionLayer
from protection_layer.consent import consent_terms
from protection_layer.consent_mix import nested_deny, research_consent

HL7 = Path(__file__).parent / "data" / "hl7-consent"
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def hl7_examples() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(HL7.glob("Consent-*.json"))]


def consent(cid: str = "c1", patient: str = "p1", **kw: Any) -> dict[str, Any]:
    kw.setdefault("signed", datetime(2024, 1, 1, tzinfo=UTC))
    return research_consent(cid, patient, **kw)


@pytest.fixture
def layer(site: Site) -> Any:
    made = ProtectionLayer(site)
    yield made
    made.close()


def test_all_twelve_hl7_examples_ingest(layer: ProtectionLayer) -> None:
    examples = hl7_examples()
    assert len(examples) == 12
    changes = layer.consents.ingest(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": e} for e in examples]}
    )
    assert sorted(c.consent_id for c in changes) == sorted(e["id"] for e in examples)
    assert layer.consents.count()["consents"] == 12
    basic = layer.consents.read("consent-example-basic")
    assert basic["meta"]["versionId"] == "1" and basic["provision"] == examples[2]["provision"]
    # They are privacy consents (scope patient-privacy): none of them permits research.
    terms = layer.consents.current_terms()
    assert set(terms) == {"f001", "example", "72", "xcda"}
    assert all(t["scope"] == ["patient-privacy"] for ts in terms.values() for t in ts)
    decision = layer.decide_patient(demo_job(1), "f001", "2016-01-01T00:00:00")
    assert decision.decision is ConsentDecision.NO_CONSENT


def test_hl7_example_terms_are_normalised(layer: ProtectionLayer) -> None:
    by_id = {e["id"]: consent_terms(e) for e in hl7_examples()}
    basic = by_id["consent-example-basic"]
    assert (basic["patient"], basic["rule"], basic["date"]) == ("f001", "OPTIN", "2016-05-11T00:00:00")
    # period end 2016-01-01 covers that whole day (FHIR dates cover their precision)
    assert (basic["root"]["start"], basic["root"]["end"]) == ("1964-01-01T00:00:00", "2016-01-02T00:00:00")
    smart = by_id["consent-example-smartonfhir"]
    assert smart["date"] == "2016-06-23T07:02:33"  # +10:00 normalised to UTC
    assert smart["root"]["provisions"][0]["classes"] == ["MedicationRequest"]
    pkb = by_id["consent-example-pkb"]
    assert pkb["rule"] == "OPTOUT" and len(pkb["root"]["provisions"]) == 11
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"} in pkb["root"][
        "provisions"
    ][0]["labels"]


@pytest.mark.parametrize(
    ("mutate", "element"),
    [
        (lambda c: c["provision"].__setitem__("type", "maybe"), "Consent.provision.type"),
        (lambda c: c.__setitem__("status", "signed"), "Consent.status"),
        (lambda c: c.pop("scope"), "Consent.scope"),
        (lambda c: c.pop("patient"), "Consent.patient"),
        (lambda c: c.__setitem__("patient", {"reference": "Group/7"}), "Consent.patient"),
        (lambda c: c.__setitem__("dateTime", "last tuesday"), "Consent.dateTime"),
        (lambda c: c["provision"]["purpose"][0].__setitem__("code", 5), "Consent.provision.purpose[0].code"),
        (
            lambda c: c["provision"].__setitem__(
                "provision", [{"type": "deny", "provision": [{"type": "permit"}]}]
            ),
            "Consent.provision.provision[0].provision",
        ),
        (
            lambda c: c["provision"].__setitem__("period", {"start": "2024-13-45"}),
            "Consent.provision.period.start",
        ),
    ],
    ids=[
        "provision-type",
        "status",
        "scope",
        "patient",
        "patient-not-a-patient",
        "dateTime",
        "purpose-code",
        "nesting",
        "period",
    ],
)
def test_a_malformed_consent_is_refused_naming_the_element_and_nothing_is_stored(
    layer: ProtectionLayer, mutate: Any, element: str
) -> None:
    layer.consents.put(consent("keep"))
    before = (layer.consents.count(), layer.consents.last_seq(), layer.audit.path.read_bytes())
    bad = consent("bad")
    mutate(bad)
    with pytest.raises(FhirError) as caught:
        layer.consents.put(bad)
    outcome = caught.value.operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(element in issue["expression"][0] for issue in outcome["issue"]), outcome
    assert (layer.consents.count(), layer.consents.last_seq(), layer.audit.path.read_bytes()) == before


def test_a_bundle_with_one_bad_consent_stores_nothing(layer: ProtectionLayer) -> None:
    bad = consent("c2", "p2")
    bad["provision"]["type"] = "perhaps"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": consent("c1")}, {"resource": bad}],
    }
    with pytest.raises(FhirError) as caught:
        layer.consents.ingest(bundle)
    assert "Bundle.entry[1]" in caught.value.issues[0].location  # type: ignore[operator]
    assert layer.consents.count() == {"consents": 0, "versions": 0, "patients": 0}


def test_every_change_is_kept_and_indexed_by_patient(layer: ProtectionLayer) -> None:
    first = layer.consents.put(consent("c1", "p1"))
    layer.consents.put(consent("c2", "p2"))
    seq = layer.consents.last_seq()
    second = layer.consents.put(consent("c1", "p1", status="inactive"))
    assert (first.version, second.version, second.change) == (1, 2, "updated")
    assert second.patient_version == first.patient_version + 1
    history = layer.consents.history("c1")
    assert [h["meta"]["versionId"] for h in history] == ["2", "1"]
    assert [h["status"] for h in history] == ["inactive", "active"]
    assert layer.consents.read("c1", 1)["status"] == "active"
    assert [c["id"] for c in layer.consents.for_patient("p1")] == ["c1"]
    latest, changed = layer.consents.changes_since(seq)
    assert latest == seq + 1 and changed == {"p1": 2}
    # A consent moved to another patient changes both patients' consents.
    moved = layer.consents.put(consent("c1", "p3"))
    assert moved.previous_patient == "p1"
    assert set(layer.consents.changes_since(latest)[1]) == {"p1", "p3"}
    assert layer.consents.current_terms(["p1"]) == {"p1": []}


def test_consent_bodies_are_encrypted_at_rest(layer: ProtectionLayer) -> None:
    example = next(e for e in hl7_examples() if e["id"] == "consent-example-basic")
    layer.consents.put(example)
    raw = (layer.site.root / "consents.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in layer.site.root.glob("consents.sqlite-*")
    )
    assert b"P. van de Heuvel" not in raw  # the patient's display name lives only in the body
    with sqlite3.connect(layer.site.root / "consents.sqlite") as db:
        body = db.execute("SELECT body FROM consent_version").fetchone()[0]
    assert b"Consent" not in body


def test_consent_changes_are_audited(layer: ProtectionLayer) -> None:
    layer.consents.put_many([consent("c1", "p1"), consent("c2", "p2")])
    entries = [e for e in layer.audit.entries() if e["kind"] == "consent-change"]
    assert [(e["data"]["patient"], e["data"]["consent"], e["data"]["version"]) for e in entries] == [
        ("p1", "c1", 1),
        ("p2", "c2", 1),
    ]
    assert layer.audit.verify().ok


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["status", "scope", "patient", "dateTime", "policyRule", "provision", "category"]),
    st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    ),
)
def test_any_malformed_element_gives_an_operation_outcome_never_a_crash(field: str, value: Any) -> None:
    broken = consent()
    broken[field] = value
    try:
        terms = consent_terms(broken)
    except FhirError as exc:
        assert exc.issues and all(i.location and i.location.startswith("Consent") for i in exc.issues)
    else:
        assert terms["patient"] == "p1"


# -- the FHIR endpoints ----------------------------------------------------------------------


@pytest.fixture
def client(site: Site) -> Any:
    app = create_app(site)
    token = TokenStore(site.root / "keys" / "api-tokens.json").issue("site-admin", "staff")
    with (
        LiveServer(app) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as made,
    ):
        yield made
    app.state.protection.close()


def test_fhir_consent_endpoints(client: httpx.Client) -> None:
    created = client.post("/fhir/Consent", json=consent("ignored", "p9"))
    assert created.status_code == 201
    cid = created.json()["id"]
    assert cid != "ignored" and created.headers["Location"] == f"Consent/{cid}/_history/1"
    updated = client.put(f"/fhir/Consent/{cid}", json={**consent(cid, "p9"), "status": "inactive"})
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    assert client.put("/fhir/Consent/new-one", json=consent("new-one", "p9")).status_code == 201
    history = client.get(f"/fhir/Consent/{cid}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]
    assert client.get(f"/fhir/Consent/{cid}/_history/1").json()["status"] == "active"
    search = client.get("/fhir/Consent", params={"patient": "Patient/p9"}).json()
    assert search["type"] == "searchset" and search["total"] == 2
    assert client.get("/fhir/Consent/nope").status_code == 404


def test_fhir_consent_endpoint_refuses_a_malformed_consent_with_an_operation_outcome(
    client: httpx.Client,
) -> None:
    bad = consent("c1")
    bad["provision"]["provision"] = [nested_deny(codes=["http://loinc.org|2093-3"])]
    bad["provision"]["provision"][0]["type"] = "block"
    response = client.put("/fhir/Consent/c1", json=bad)
    assert response.status_code == 400
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["Consent.provision.provision[0].type"]
    assert "'block' is not one of deny, permit" in body["issue"][0]["diagnostics"]
    assert client.get("/fhir/Consent/c1").status_code == 404
    mismatch = client.put("/fhir/Consent/c1", json=copy.deepcopy(consent("c2")))
    assert mismatch.status_code == 400 and mismatch.json()["issue"][0]["expression"] == ["Consent.id"]


def test_fhir_consent_endpoints_need_a_site_admin_token(client: httpx.Client) -> None:
    response = client.get("/fhir/Consent", params={"patient": "p1"}, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.json()["resourceType"] == "OperationOutcome"


def test_a_consent_in_a_clinical_bundle_is_refused_with_where_it_belongs(site: Site) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": consent("c1")}]}
    with pytest.raises(FhirError) as caught:
        site.fhir.ingest_bundle(bundle)
    issue = caught.value.issues[0]
    assert issue.location == "Bundle.entry[0].resource" and "paroma consent load" in issue.diagnostics
    with pytest.raises(FhirError, match="protection layer"):
        site.fhir.put_resource(consent("c2"))
    assert site.fhir.counts() == {}
