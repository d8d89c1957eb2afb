"""The patients' consent dashboard's HTTP API on a real node service (uvicorn on a free
port) over a real UCI site: sign-in, every endpoint's authentication, CSRF and patient
isolation (patient A can never read or change patient B's data), bad input answered with
problem details, and what each change does to the site's consents, store and audit log."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer
from dashboard_support import PatientClient, enrolment_code
from fastapi import FastAPI

from clinical_node.fhir.bundle import validate_resource
from clinical_node.fhir.errors import ResourceNotFound
from clinical_node.service import create_app
from clinical_node.site import Site
from paroma.demo import DEMO_ORGANIZATION, demo_job
from protection_layer import ProtectionLayer
from protection_layer.consent_mix import research_consent
from protection_layer.consent_requests import ConsentRequests
from protection_layer.dashboard import EnrolmentError, PatientSessions
from protection_layer.decisions import JobContext, decide

SITE = "switzerland"


@pytest.fixture(scope="module")
def node(uci_sites_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    """One node service over a private copy of a UCI site (every patient permits HRESCH)."""
    root = tmp_path_factory.mktemp("dashboard") / SITE
    shutil.copytree(uci_sites_template / SITE, root)
    for key_file in (root / "keys").iterdir():
        key_file.chmod(0o600)
    site = Site.open(root)
    app = create_app(site)
    with LiveServer(app) as live:
        yield app, live.url
    app.state.protection.close()
    site.close()


_patients = itertools.count(1)


@pytest.fixture
def pair(node: tuple[FastAPI, str]) -> Iterator[tuple[PatientClient, PatientClient]]:
    """Two patients of the site, signed in (fresh ones for every test)."""
    app, url = node
    root = app.state.protection.site.root
    a, b = (f"{SITE}-{next(_patients):04d}" for _ in range(2))
    clients = PatientClient.sign_in(url, root, a), PatientClient.sign_in(url, root, b)
    yield clients
    for client in clients:
        client.close()


def layer_of(node: tuple[FastAPI, str]) -> ProtectionLayer:
    layer: ProtectionLayer = node[0].state.protection
    return layer


def decision(
    layer: ProtectionLayer, patient: str, purpose: str = "HRESCH", org: str = DEMO_ORGANIZATION
) -> str:
    terms = layer.decider.patient_terms(patient)
    return decide(layer.engine, JobContext(purpose, org), {patient: terms}, layer.now())[
        patient
    ].decision.value


def is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"]
    return body


# -- signing in ------------------------------------------------------------------------------


def test_an_enrolment_code_signs_in_once_into_an_httponly_samesite_strict_session(
    node: tuple[FastAPI, str],
) -> None:
    app, url = node
    root = app.state.protection.site.root
    patient = f"{SITE}-0100"
    code = enrolment_code(root, patient)
    with httpx.Client(base_url=url) as http:
        # Codes are read out and typed: case, spaces and dashes do not matter.
        signed = http.post("/patient/api/session", json={"code": code.lower().replace("-", " ")})
        assert signed.status_code == 201, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/patient/" in cookie
        assert signed.json()["patient"] == patient and len(signed.json()["csrf_token"]) >= 32
        assert http.get("/patient/api/session").json()["patient"] == patient
        # The code is used up.
        with httpx.Client(base_url=url) as other:
            again = is_problem(other.post("/patient/api/session", json={"code": code}), 401)
            assert again["field"] == "code" and "already used" in again["detail"]
        # Signing out ends the session, and needs the CSRF token.
        is_problem(http.delete("/patient/api/session"), 403)
        out = http.delete("/patient/api/session", headers={"X-CSRF-Token": signed.json()["csrf_token"]})
        assert out.status_code == 204
        is_problem(http.get("/patient/api/overview"), 401)
    actions = [
        e["data"]["action"]
        for e in app.state.protection.audit.entries()
        if e["kind"] == "patient-action" and e["data"]["patient"] == patient
    ]
    assert actions == ["signed-in", "resumed-session", "signed-out"]


def test_bad_and_expired_codes_are_refused(node: tuple[FastAPI, str], tmp_path: Path) -> None:
    _, url = node
    with httpx.Client(base_url=url) as http:
        assert (
            is_problem(http.post("/patient/api/session", json={"code": "AAAA-BBBB"}), 401)["field"] == "code"
        )
        missing = is_problem(http.post("/patient/api/session", json={}), 422)
        assert "code" in missing["detail"]
        is_problem(
            http.post(
                "/patient/api/session", content=b"not json", headers={"Content-Type": "application/json"}
            ),
            422,
        )
        foreign = http.post(
            "/patient/api/session", json={"code": "AAAA"}, headers={"Origin": "https://evil.example"}
        )
        assert "Origin" in is_problem(foreign, 403)["detail"]
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    sessions = PatientSessions(tmp_path / "sessions.sqlite", clock=lambda: now[0])
    code = sessions.issue_code("p1", days=1).code
    now[0] += timedelta(days=1, seconds=1)
    with pytest.raises(EnrolmentError, match="expired"):
        sessions.sign_in(code)
    fresh = sessions.issue_code("p1").code
    session = sessions.sign_in(fresh)
    assert sessions.lookup(session.session_id) is not None
    now[0] += timedelta(hours=8, seconds=1)
    assert sessions.lookup(session.session_id) is None  # sessions end after their lifetime
    with pytest.raises(EnrolmentError, match="1 to 90"):
        sessions.issue_code("p1", days=0)
    assert (tmp_path / "sessions.sqlite").stat().st_mode & 0o077 == 0
    sessions.close()


# -- authentication and CSRF on every endpoint ------------------------------------------------

ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/session", None),
    ("DELETE", "/session", None),
    ("GET", "/overview", None),
    ("GET", "/consents/research-x", None),
    ("PUT", "/research/HRESCH", {"decision": "deny"}),
    ("GET", "/requests", None),
    ("POST", "/requests/" + "0" * 32, {"accept": True}),
    ("GET", "/activity", None),
    ("GET", "/export", None),
    ("POST", "/erasure", {"confirm": True}),
    ("GET", "/events", None),
]
CHANGES = [e for e in ENDPOINTS if e[0] != "GET"]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_every_endpoint_needs_a_session(node: tuple[FastAPI, str], method: str, path: str, body: Any) -> None:
    _, url = node
    with httpx.Client(base_url=url) as http:
        is_problem(http.request(method, f"/patient/api{path}", json=body), 401)
        http.cookies.set("paroma_patient", "forged-session-id", path="/patient/")
        is_problem(http.request(method, f"/patient/api{path}", json=body), 401)


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=[f"{m} {p}" for m, p, _ in CHANGES])
def test_every_change_needs_the_sessions_csrf_token_and_this_sites_origin(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient], method: str, path: str, body: Any
) -> None:
    a, b = pair
    layer = layer_of(node)
    before = layer.consents.patient_versions([a.patient])
    assert is_problem(a.change(method, path, body, csrf=""), 403)["field"] == "X-CSRF-Token"
    is_problem(a.change(method, path, body, csrf=b.csrf), 403)  # another session's token
    foreign = a.http.request(
        method,
        f"/patient/api{path}",
        json=body,
        headers={"X-CSRF-Token": a.csrf, "Origin": "https://evil.example"},
    )
    is_problem(foreign, 403)
    assert layer.consents.patient_versions([a.patient]) == before
    assert layer.site.fhir.search("Patient", ids=[a.patient]).total == 1
    assert a.get("/session").status_code == 200


# -- isolation: patient A vs patient B, endpoint by endpoint ---------------------------------


def _release_round(layer: ProtectionLayer, rounds: int = 2) -> None:
    """A job's rounds as the node records them: cohort and data-release audit entries."""
    job = demo_job(rounds)
    for server_round in range(1, rounds + 1):
        layer.view.decision_for_round(job, server_round)
        layer.view._pinned.clear()


def iso_session(node: Any, a: PatientClient, b: PatientClient) -> None:
    assert a.get("/session").json()["patient"] == a.patient
    assert b.get("/session").json()["patient"] == b.patient


def iso_sign_out(node: Any, a: PatientClient, b: PatientClient) -> None:
    assert a.change("DELETE", "/session").status_code == 204
    assert b.get("/session").json()["patient"] == b.patient  # B stays signed in


def iso_overview(node: Any, a: PatientClient, b: PatientClient) -> None:
    overview = a.get("/overview").json()
    assert overview["patient"] == a.patient
    ids = {c["id"] for c in overview["consents"]}
    assert ids == {f"research-{a.patient}"}
    assert f"research-{b.patient}" not in json.dumps(overview)


def iso_consent(node: Any, a: PatientClient, b: PatientClient) -> None:
    own = a.get(f"/consents/research-{a.patient}")
    assert own.status_code == 200 and own.json()["fhir"]["patient"]["reference"] == f"Patient/{a.patient}"
    assert own.json()["current"]["summary"].startswith("You allow your data to be used for health research")
    body = is_problem(a.get(f"/consents/research-{b.patient}"), 404)
    assert b.patient not in body.get("detail", "").replace(f"research-{b.patient}", "")
    is_problem(a.get("/consents/no-such-consent"), 404)  # the same answer as for B's
    # A consent recorded for B, then corrected to be A's: A sees only the versions about A.
    layer = layer_of(node)
    layer.consents.put(research_consent(f"moved-{b.patient}", b.patient, signed=datetime.now(UTC)))
    layer.consents.put(research_consent(f"moved-{b.patient}", a.patient, signed=datetime.now(UTC)))
    moved = a.get(f"/consents/moved-{b.patient}").json()
    assert [v["version"] for v in moved["versions"]] == ["2"]
    exported = [e["resource"] for e in a.get("/export").json()["entry"]]
    assert all(
        r["patient"]["reference"] == f"Patient/{a.patient}"
        for r in exported
        if r["resourceType"] == "Consent"
    )
    assert f"moved-{b.patient}" in {r["id"] for r in exported}


def iso_research(node: Any, a: PatientClient, b: PatientClient) -> None:
    layer = layer_of(node)
    before = layer.consents.patient_versions([b.patient])
    changed = a.change("PUT", "/research/HRESCH", {"decision": "deny"})
    assert changed.status_code == 200, changed.text
    assert decision(layer, a.patient) == "DENY" and decision(layer, b.patient) == "PERMIT"
    assert layer.consents.patient_versions([b.patient]) == before


def iso_requests(node: Any, a: PatientClient, b: PatientClient) -> None:
    queue = node[0].state.dashboard.requests
    mine = queue.add(a.patient, "Study for A", "CLINTRCH", "Organization/uni-a", "")
    queue.add(b.patient, "Study for B", "CLINTRCH", "Organization/uni-b", "")
    seen = a.get("/requests").json()
    assert [r["id"] for r in seen] == [mine]


def iso_answer(node: Any, a: PatientClient, b: PatientClient) -> None:
    queue: ConsentRequests = node[0].state.dashboard.requests
    theirs = queue.add(b.patient, "Study for B", "CLINTRCH", "Organization/uni-b", "")
    is_problem(a.change("POST", f"/requests/{theirs}", {"accept": True}), 404)
    assert queue.get(theirs).status == "pending"
    assert decision(layer_of(node), b.patient, "CLINTRCH", "Organization/uni-b") == "NO_CONSENT"
    assert decision(layer_of(node), a.patient, "CLINTRCH", "Organization/uni-b") == "NO_CONSENT"


def iso_activity(node: Any, a: PatientClient, b: PatientClient) -> None:
    _release_round(layer_of(node), rounds=1)
    activity = a.get("/activity").json()
    assert activity["jobs"] and all(e.get("patient", a.patient) == a.patient for e in activity["entries"])
    text = json.dumps(activity)
    assert b.patient not in text


def iso_export(node: Any, a: PatientClient, b: PatientClient) -> None:
    bundle = a.get("/export").json()
    patients = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        patients.add(
            resource["id"]
            if resource["resourceType"] == "Patient"
            else (resource.get("subject") or resource.get("patient"))["reference"]
        )
    assert patients == {a.patient, f"Patient/{a.patient}"}


def iso_erasure(node: Any, a: PatientClient, b: PatientClient) -> None:
    layer = layer_of(node)
    b_resources = layer.site.fhir.search(None, patient=b.patient, count=1000).total
    b_consents = layer.consents.for_patient(b.patient)
    assert a.change("POST", "/erasure", {"confirm": True}).status_code == 200
    assert layer.site.fhir.search(None, patient=a.patient, count=1000).total == 0
    assert layer.site.fhir.search(None, patient=b.patient, count=1000).total == b_resources > 0
    assert layer.consents.for_patient(b.patient) == b_consents
    assert b.get("/overview").json()["purposes"][0]["decision"] == "PERMIT"


def iso_events(node: Any, a: PatientClient, b: PatientClient) -> None:
    queue = node[0].state.dashboard.requests
    mine = queue.add(a.patient, "Live study for A", "HRESCH", "Organization/uni-a", "")
    queue.add(b.patient, "Live study for B", "HRESCH", "Organization/uni-b", "")
    with a.http.stream("GET", "/patient/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        event = next(line for line in lines if line.startswith("event:"))
        data = json.loads(next(lines).removeprefix("data:"))
    assert event == "event: requests" and [r["id"] for r in data] == [mine]


ISOLATION: dict[str, Callable[[Any, PatientClient, PatientClient], None]] = {
    "GET /session": iso_session,
    "DELETE /session": iso_sign_out,
    "GET /overview": iso_overview,
    "GET /consents/{id}": iso_consent,
    "PUT /research/{purpose}": iso_research,
    "GET /requests": iso_requests,
    "POST /requests/{id}": iso_answer,
    "GET /activity": iso_activity,
    "GET /export": iso_export,
    "POST /erasure": iso_erasure,
    "GET /events": iso_events,
}


def test_isolation_covers_every_endpoint() -> None:
    def route(method: str, path: str) -> str:
        parts = path.split("/")
        return f"{method} /{parts[1]}" + ("/{}" if len(parts) > 2 else "")

    assert {re.sub(r"\{\w+\}", "{}", name) for name in ISOLATION} == {route(m, p) for m, p, _ in ENDPOINTS}


@pytest.mark.parametrize("endpoint", list(ISOLATION))
def test_a_patient_never_reads_or_changes_another_patients_data(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient], endpoint: str
) -> None:
    a, b = pair
    ISOLATION[endpoint](node, a, b)


# -- what the changes do ---------------------------------------------------------------------


def test_research_choices_are_new_consent_versions_per_purpose_and_data_class(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient]
) -> None:
    a, _ = pair
    layer = layer_of(node)
    overview = a.get("/overview").json()
    hresch = overview["purposes"][0]
    assert hresch["code"] == "HRESCH" and hresch["decision"] == "PERMIT"
    assert hresch["title"] == "Health research" and "health records" in hresch["explanation"]
    codes = {d["value"]: d["words"] for d in overview["data"] if d["kind"] == "code"}
    assert codes["http://loinc.org|2093-3"].startswith("Cholesterol")

    # Keep cholesterol out: still PERMIT, the cholesterol Observation redacted for the job.
    job = demo_job(1)
    kept = a.change(
        "PUT", "/research/HRESCH", {"decision": "permit", "exclude": [{"code": "http://loinc.org|2093-3"}]}
    )
    assert kept.status_code == 200, kept.text
    first = kept.json()
    cohort = layer.decide_cohort(job)
    released = {rid for rtype, rid in cohort.released[a.patient] if rtype == "Observation"}
    cholesterol = {
        r["id"]
        for r in layer.site.fhir.search("Observation", patient=a.patient, count=100).resources
        if r["code"]["coding"][0]["code"] == "2093-3"
    }
    assert cholesterol and not cholesterol & released and released
    shown = a.get("/overview").json()["purposes"][0]
    assert shown["decision"] == "PERMIT" and shown["consent"] == f"{first['consent']}/{first['version']}"
    assert [e["value"] for e in shown["exclusions"]] == ["http://loinc.org|2093-3"]
    assert (
        "Except: Cholesterol"
        in next(c for c in a.get("/overview").json()["consents"] if c["origin"] == "dashboard")["summary"]
    )

    # Withdraw: a new version of the same consent; DENY from the next decision on.
    withdrawn = a.change("PUT", "/research/HRESCH", {"decision": "deny"}).json()
    assert withdrawn == {"consent": first["consent"], "version": first["version"] + 1}
    assert a.patient not in layer.decide_cohort(job).released
    history = layer.consents.history(first["consent"])
    assert [h["meta"]["versionId"] for h in history] == [str(first["version"] + 1), str(first["version"])]

    # A data class, for another purpose.
    assert (
        a.change(
            "PUT", "/research/CLINTRCH", {"decision": "permit", "exclude": [{"class": "Observation"}]}
        ).status_code
        == 200
    )
    assert decision(layer, a.patient, "CLINTRCH") == "PERMIT" and decision(layer, a.patient) == "DENY"
    purposes = {p["code"]: p for p in a.get("/overview").json()["purposes"]}
    assert purposes["CLINTRCH"]["exclusions"][0]["words"] == "measurements and test results"
    changes = [
        e["data"]
        for e in layer.audit.entries()
        if e["kind"] == "consent-change" and e["data"]["patient"] == a.patient
    ]
    assert len(changes) >= 4  # the hospital's consent, then each dashboard version


def test_accepting_a_request_permits_that_study_and_declining_refuses_it(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient]
) -> None:
    a, _ = pair
    layer = layer_of(node)
    queue: ConsentRequests = node[0].state.dashboard.requests
    trial = queue.add(
        a.patient, "Heart valve trial", "CLINTRCH", "Organization/valve-trial", "A 2-year trial"
    )
    other = queue.add(a.patient, "Registry", "HRESCH", "Organization/registry", "")
    assert decision(layer, a.patient, "CLINTRCH", "Organization/valve-trial") == "NO_CONSENT"
    accepted = a.change("POST", f"/requests/{trial}", {"accept": True})
    assert accepted.status_code == 200, accepted.text
    assert decision(layer, a.patient, "CLINTRCH", "Organization/valve-trial") == "PERMIT"
    assert decision(layer, a.patient, "CLINTRCH", "Organization/someone-else") == "NO_CONSENT"
    assert a.change("POST", f"/requests/{other}", {"accept": False}).status_code == 200
    assert decision(layer, a.patient, "HRESCH", "Organization/registry") == "DENY"
    assert decision(layer, a.patient, "HRESCH", DEMO_ORGANIZATION) == "PERMIT"  # only that study refused
    assert a.get("/requests").json() == []
    assert queue.get(trial).status == "accepted" and queue.get(other).status == "declined"
    assert (
        "already answered"
        in is_problem(a.change("POST", f"/requests/{trial}", {"accept": False}), 409)["detail"]
    )
    overview = a.get("/overview").json()
    purposes = {p["code"]: p for p in overview["purposes"]}
    assert purposes["CLINTRCH"]["decision"] == "NO_CONSENT"  # for any other organisation
    assert [(o["organization"], o["decision"]) for o in purposes["CLINTRCH"]["organizations"]] == [
        ("Organization/valve-trial", "PERMIT")
    ]
    assert [(o["organization"], o["decision"]) for o in purposes["HRESCH"]["organizations"]] == [
        ("Organization/registry", "DENY")
    ]
    explained = {c["id"]: c for c in overview["consents"]}
    assert "Organization/valve-trial" in explained[f"request-{trial}"]["summary"]


def test_activity_lists_the_jobs_that_used_my_data_with_rounds_dates_and_consent_versions(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient]
) -> None:
    a, _ = pair
    layer = layer_of(node)
    _release_round(layer, rounds=2)
    jobs = a.get("/activity").json()["jobs"]
    job = next(j for j in jobs if j["job"] == demo_job(2).sha256)
    assert job["rounds"] == [1, 2] and job["purpose"] == "HRESCH" and job["organization"] == DEMO_ORGANIZATION
    assert job["consents"] == [f"research-{a.patient}/1"] and job["first_used"] <= job["last_used"]


def test_export_is_a_valid_fhir_bundle_of_my_records_and_every_consent_version(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient]
) -> None:
    a, _ = pair
    layer = layer_of(node)
    a.change("PUT", "/research/HRESCH", {"decision": "deny"})
    response = a.get("/export")
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert "attachment" in response.headers["content-disposition"]
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    clinical = [r for r in resources if r["resourceType"] != "Consent"]
    assert len(clinical) == layer.site.fhir.search(None, patient=a.patient, count=1000).total
    consents = [(r["id"], r["meta"]["versionId"]) for r in resources if r["resourceType"] == "Consent"]
    assert sorted(consents) == sorted(
        [(f"research-{a.patient}", "1"), (next(c for c, _ in consents if c.startswith("patient-")), "1")]
    )
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])
    for resource in resources:
        assert validate_resource(resource) == [], resource["resourceType"]


def test_erasure_excludes_deletes_records_and_lists_the_models_already_trained(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient]
) -> None:
    a, _ = pair
    layer = layer_of(node)
    job = demo_job(2)
    _release_round(layer, rounds=2)
    exported = a.get("/export").json()
    pending = node[0].state.dashboard.requests.add(a.patient, "Late study", "HRESCH", "Organization/late", "")
    assert a.patient in layer.decide_cohort(job).released

    elsewhere = PatientClient.sign_in(str(a.http.base_url), layer.site.root, a.patient)
    unused = enrolment_code(layer.site.root, a.patient)

    def in_store_files() -> bool:
        files = [p for p in layer.site.root.glob("fhir.sqlite*") if p.is_file()]
        return any(a.patient.encode() in p.read_bytes() for p in files)

    assert in_store_files()
    is_problem(a.change("POST", "/erasure", {"confirm": False}), 422)
    answer = a.change("POST", "/erasure", {"confirm": True})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["fhir_resources_deleted"] == len(
        [e for e in exported["entry"] if e["resource"]["resourceType"] != "Consent"]
    )
    assert report["consent_versions_deleted"] == 1
    trained = {m["job"]: m for m in report["models_trained"]}
    # This session shows the answer; the patient's other sessions and unused codes end.
    assert a.get("/session").status_code == 200
    is_problem(elsewhere.get("/session"), 401)
    elsewhere.close()
    is_problem(a.http.post("/patient/api/session", json={"code": unused}), 401)
    assert trained[job.sha256]["rounds"] == [1, 2] and trained[job.sha256]["job_name"] == job.name
    assert trained[job.sha256]["consents"] == [f"research-{a.patient}/1"]

    # Deleted from the store and out of every future round; the bodies of the old consents are gone.
    assert layer.site.fhir.search(None, patient=a.patient, count=1000).total == 0
    assert a.patient not in layer.decide_cohort(job).decisions
    remaining = layer.consents.for_patient(a.patient)
    assert [c["id"].split("-")[0] for c in remaining] == ["erasure"]
    with pytest.raises(ResourceNotFound):
        layer.consents.read(f"research-{a.patient}")
    assert node[0].state.dashboard.requests.get(pending).status == "declined"
    # Nothing of the records stays in the store's files (the index is in clear).
    assert not in_store_files()
    # Should the records be loaded again, the refusal keeps them out.
    layer.site.fhir.ingest_bundle(
        {"resourceType": "Bundle", "type": "collection",
         "entry": [e for e in exported["entry"] if e["resource"]["resourceType"] != "Consent"]}
    )  # fmt: skip
    assert layer.decide_cohort(job).decisions[a.patient].decision.value == "DENY"
    # Recorded, and the log still verifies.
    erasures = [
        e["data"]
        for e in layer.audit.entries()
        if e["kind"] == "erasure" and e["data"]["patient"] == a.patient
    ]
    assert [e["event"] for e in erasures] == ["requested", "done"]
    assert erasures[-1]["models_trained"] == list(trained)
    assert report["recorded"]["audit_seq"] > 0
    assert layer.audit.verify().ok


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/research/HRESCH", {"decision": "maybe"}, 422, "decision"),
        (
            "/research/HRESCH",
            {"decision": "permit", "exclude": [{"class": "patient"}]},
            422,
            "exclude[0].class",
        ),
        (
            "/research/HRESCH",
            {"decision": "permit", "exclude": [{"class": "Patient"}]},
            422,
            "exclude[0].class",
        ),
        ("/research/HRESCH", {"decision": "permit", "exclude": [{"code": "2093-3"}]}, 422, "exclude[0].code"),
        (
            "/research/HRESCH",
            {"decision": "permit", "exclude": [{"class": "Observation", "code": "a|b"}]},
            422,
            "exclude[0]",
        ),
        ("/research/HRESCH", {"decision": "deny", "exclude": [{"class": "Observation"}]}, 422, "exclude"),
        ("/research/TREAT", {"decision": "deny"}, 404, "purpose"),
    ],
)
def test_bad_choices_are_problem_details_naming_the_field(
    node: tuple[FastAPI, str],
    pair: tuple[PatientClient, PatientClient],
    path: str,
    body: Any,
    status: int,
    field: str,
) -> None:
    a, _ = pair
    before = layer_of(node).consents.patient_versions([a.patient])
    problem = is_problem(a.change("PUT", path, body), status)
    assert problem["field"] == field, problem
    assert layer_of(node).consents.patient_versions([a.patient]) == before


def test_malformed_bodies_and_ids_are_problem_details(pair: tuple[PatientClient, PatientClient]) -> None:
    a, _ = pair
    extra = is_problem(a.change("PUT", "/research/HRESCH", {"decision": "deny", "who": "B"}), 422)
    assert "who" in extra["detail"]
    not_json = a.http.put(
        "/patient/api/research/HRESCH",
        content=b"{",
        headers={"X-CSRF-Token": a.csrf, "Content-Type": "application/json"},
    )
    is_problem(not_json, 422)
    assert (
        "accept"
        in is_problem(a.change("POST", "/requests/" + "0" * 32, {"accept": "yes please"}), 422)["detail"]
    )
    is_problem(a.change("POST", "/requests/../../x", {"accept": True}), 404)
    is_problem(a.change("POST", "/requests/not-an-id", {"accept": True}), 404)
    is_problem(a.get("/nothing-here"), 404)


def test_the_event_stream_pushes_consent_changes_and_ends_at_sign_out(
    node: tuple[FastAPI, str], pair: tuple[PatientClient, PatientClient]
) -> None:
    a, b = pair
    layer = layer_of(node)
    with a.http.stream("GET", "/patient/api/events") as stream:
        events = (line for line in stream.iter_lines() if line.startswith("event:"))
        assert next(events) == "event: requests"
        # The hospital records a consent for A (not through the dashboard): the page hears of it.
        layer.consents.put(research_consent(f"paper-{a.patient}", a.patient, signed=datetime.now(UTC)))
        assert next(events) == "event: consents"
        layer.consents.put(research_consent(f"paper-{b.patient}", b.patient, signed=datetime.now(UTC)))
        assert a.change("DELETE", "/session").status_code == 204
        assert next(events) == "event: signed-out"  # and nothing about B's change before it
