"""The consent dashboard's pure parts and its command: consents explained in plain
language, the consents it writes (decided by the site's real policy), the consent store's
erasure, and ``paroma node patient-credential``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinical_node.site import Site
from paroma.cli import app
from protection_layer import ProtectionLayer
from protection_layer.consent_mix import nested_deny, research_consent
from protection_layer.dashboard import PatientSessions
from protection_layer.dashboard.explain import (
    ChoiceError,
    Exclusion,
    erasure_refusal,
    explain,
    parse_exclusions,
    purpose_consent,
    request_consent,
)
from protection_layer.dashboard.record import data_choices, jobs_that_used
from protection_layer.decisions import JobContext, decide

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_consents_are_explained_in_plain_language() -> None:
    permit = research_consent(
        "c1",
        "p1",
        signed=NOW,
        period=(NOW, NOW + timedelta(days=365)),
        nested=[
            nested_deny(classes=["MedicationStatement"]),
            nested_deny(labels=["http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"]),
            Exclusion("code", "http://loinc.org|2093-3", "Cholesterol").provision(),
        ],
    )
    said = explain(permit)
    assert said["decision"] == "permit" and said["purposes"] == [
        {"code": "HRESCH", "words": "Health research"}
    ]
    assert said["summary"] == (
        "You allow your data to be used for health research by any organisation the hospital works with. "
        "Except: medicines you take; mental health information; Cholesterol. "
        "Valid from 2026-06-01 until 2027-06-01."
    )
    opt_out = explain(research_consent("c2", "p1", decision="deny", signed=NOW, purposes=()))
    assert opt_out["summary"] == (
        "You do not allow your data to be used for any kind of research by any organisation the hospital works with."
    )
    trial = explain(request_consent("r1", "p1", "CLINTRCH", "Organization/valve", True, NOW))
    assert trial["origin"] == "request" and trial["organizations"] == [
        {"reference": "Organization/valve", "name": "Organization/valve"}
    ]
    assert "clinical trial research by Organization/valve" in trial["summary"]
    exception = research_consent(
        "c3",
        "p1",
        decision="deny",
        signed=NOW,
        purposes=(),
        nested=[{"type": "permit", "purpose": [{"code": "PUBHLTH"}], "class": [{"code": "Observation"}]}],
    )
    assert explain(exception)["summary"] == (
        "You do not allow your data to be used for any kind of research by any organisation the hospital "
        "works with. Except that you allow: measurements and test results (for public health)."
    )
    withdrawn = explain({**permit, "status": "inactive"})
    assert withdrawn["summary"].startswith("This consent is inactive")


def test_the_consents_the_dashboard_writes_mean_what_the_page_says(site: Site) -> None:
    """Decided by the site's real consent policy, not by the explanation."""
    layer = ProtectionLayer(site)
    try:
        site.fhir.ingest_bundle(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}}]}
        )  # fmt: skip

        def decided(purpose: str, organization: str = "Organization/any") -> str:
            terms = layer.decider.patient_terms("p1")
            return decide(layer.engine, JobContext(purpose, organization), {"p1": terms}, layer.now())[
                "p1"
            ].decision.value

        layer.consents.put(purpose_consent("p1", "HRESCH", "permit", [], NOW - timedelta(days=1)))
        assert decided("HRESCH") == "PERMIT" and decided("CLINTRCH") == "NO_CONSENT"
        layer.consents.put(request_consent("q1", "p1", "HRESCH", "Organization/x", False, NOW))
        assert decided("HRESCH", "Organization/x") == "DENY" and decided("HRESCH") == "PERMIT"
        layer.consents.put(purpose_consent("p1", "HRESCH", "deny", [], NOW + timedelta(seconds=1)))
        assert decided("HRESCH") == "DENY"
        assert decided("CLINTRCH") == "NO_CONSENT"
    finally:
        layer.close()


def test_bad_choices_name_the_field() -> None:
    with pytest.raises(ChoiceError) as caught:
        parse_exclusions([{"class": "Observation"}, {"code": "nope"}], {})
    assert caught.value.field == "exclude[1].code"
    assert parse_exclusions([{"class": "Condition"}, {"class": "Condition"}], {}) == [
        Exclusion("class", "Condition")
    ]
    with pytest.raises(ChoiceError, match="permit, deny"):
        purpose_consent("p", "HRESCH", "perhaps", [], NOW)
    with pytest.raises(ChoiceError, match="is not one of"):
        purpose_consent("p", "TREAT", "permit", [], NOW)


def test_erasure_replaces_every_consent_version_by_one_refusal(site: Site) -> None:
    layer = ProtectionLayer(site)
    try:
        layer.consents.put(research_consent("c1", "p1", signed=NOW))
        layer.consents.put(research_consent("c1", "p1", signed=NOW, purposes=("CLINTRCH",)))
        layer.consents.put(research_consent("c2", "p1", signed=NOW))
        layer.consents.put(research_consent("k1", "p2", signed=NOW))
        seen = layer.consents.last_seq()
        deleted, change = layer.consents.erase_patient("p1", erasure_refusal("p1", NOW))
        assert deleted == 3 and change.patient == "p1"
        assert [c["id"] for c in layer.consents.for_patient("p1")] == [change.consent_id]
        assert [c["id"] for c in layer.consents.for_patient("p2")] == ["k1"]
        assert layer.consents.changes_since(seen)[1] == {"p1": 4}  # deciders see the change
        with pytest.raises(Exception, match="Patient/p1"):
            layer.consents.erase_patient("p2", erasure_refusal("p1", NOW))
        assert [c["id"] for c in layer.consents.for_patient("p2")] == ["k1"]
    finally:
        layer.close()


def test_data_choices_and_jobs_from_the_record_and_audit_entries() -> None:
    resources = [
        {"resourceType": "Patient", "id": "p1"},
        {
            "resourceType": "Observation",
            "id": "o1",
            "code": {"coding": [{"system": "s", "code": "a", "display": "A"}]},
        },
        {"resourceType": "Observation", "id": "o2", "code": {"coding": [{"system": "s", "code": "a"}]}},
        {"resourceType": "Condition", "id": "c1", "code": {"text": "no coding"}},
    ]
    choices = data_choices(resources)
    assert [(c["kind"], c["value"], c["records"]) for c in choices] == [
        ("class", "Condition", 1),
        ("class", "Observation", 2),
        ("code", "s|a", 2),
    ]
    entries = [
        {"kind": "data-release", "job": "j1", "job_name": "n", "round": 1, "time": "2026-01-01T00:00:00Z", "consent": "c/1", "seq": 5},
        {"kind": "consent-change", "consent": "c", "seq": 6},
        {"kind": "data-release", "job": "j1", "job_name": "n", "round": 2, "time": "2026-01-02T00:00:00Z", "consent": "c/2", "seq": 7},
    ]  # fmt: skip
    [job] = jobs_that_used(entries)
    assert job["rounds"] == [1, 2] and job["consents"] == ["c/1", "c/2"]
    assert (job["first_used"], job["last_used"]) == ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")


def test_patient_credential_prints_a_one_time_code(site: Site, tmp_path: Path) -> None:
    site.fhir.ingest_bundle(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}}]}
    )  # fmt: skip
    issued = CliRunner().invoke(app, ["node", "patient-credential", str(site.root), "p1", "--days", "3"])
    assert issued.exit_code == 0, issued.output
    code = issued.stdout.strip().splitlines()[0]
    sessions = PatientSessions.for_site(site.root)
    assert sessions.sign_in(code).patient == "p1"
    sessions.close()
    unknown = CliRunner().invoke(app, ["node", "patient-credential", str(site.root), "p9"])
    assert (
        unknown.exit_code == 2
        and unknown.stderr.strip() == f"error: {site.root}: no Patient/p9 in the site's FHIR store"
    )
    no_site = CliRunner().invoke(app, ["node", "patient-credential", str(tmp_path / "nowhere"), "p1"])
    assert (
        no_site.exit_code == 2
        and no_site.stderr.startswith("error: ")
        and len(no_site.stderr.strip().splitlines()) == 1
    )
    too_long = CliRunner().invoke(app, ["node", "patient-credential", str(site.root), "p1", "--days", "365"])
    assert too_long.exit_code != 0
