"""The patients' consent dashboard: its HTTP API and pages, mounted at ``/patient/``.

Every endpoint but sign-in needs a patient session (sessions.py) and acts only on the
session's own patient: no endpoint takes a patient id, and a consent or request id of
another patient is answered 404, as if it did not exist. Every change needs the
session's CSRF token in ``X-CSRF-Token`` (and, when the browser sends one, an ``Origin``
of this site). Errors are RFC 9457 problem details naming the field. Every action is
recorded in the site's audit log (kind ``patient-action``; erasure also ``erasure``).

Consent changes go through the protection layer's ConsentStore as new FHIR Consent
versions, so running jobs count them from their next round.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from clinical_node.fhir.errors import FhirError, ResourceNotFound
from clinical_node.site import Site
from paroma.problems import Problem

from ..consent_requests import ConsentRequestError, ConsentRequests
from ..decisions import JobContext, decide
from ..engine import PolicyError
from ..layer import ProtectionLayer
from . import record
from .explain import (
    RESEARCH_PURPOSES,
    ChoiceError,
    erasure_refusal,
    exclusions_of,
    explain,
    parse_exclusions,
    purpose_consent,
    request_consent,
)
from .sessions import EnrolmentError, PatientSession, PatientSessions

STATIC = Path(str(resources.files("protection_layer.dashboard") / "static"))
COOKIE = "paroma_patient"
PREFIX = "/patient"
PATIENT_ACTION = "patient-action"
ERASURE = "erasure"
EVENT_POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
# The pages load nothing from elsewhere and cannot be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=200, description="the enrolment code the hospital gave you")


class ResearchChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: str = Field(description="permit or deny")
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        description='data kept out of a permit: {"class": type} or {"code": "system|code"}',
    )


class RequestAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept: bool


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confirm: bool = Field(description="true: I understand my data will be deleted")


@dataclass
class Dashboard:
    """What the dashboard's endpoints share: the site's protection layer (its consent
    store, policies, audit log), the patients' sessions and the consent-request queue."""

    protection: ProtectionLayer
    sessions: PatientSessions
    requests: ConsentRequests
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _erasing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def site(self) -> Site:
        return self.protection.site

    def audit(self, patient: str, action: str, **data: Any) -> None:
        self.protection.record(PATIENT_ACTION, {"patient": patient, "action": action, **data})

    def close(self) -> None:
        self.sessions.close()
        self.requests.close()

    # -- reading the patient's side ---------------------------------------------------------

    def resources_of(self, patient: str) -> list[dict[str, Any]]:
        return list(self.site.fhir.iter_resources(patients=[patient]))

    def own_consent(self, patient: str, consent_id: str) -> dict[str, Any]:
        """The current version of one of the patient's consents; 404 for anyone else's."""
        try:
            resource = self.protection.consents.read(consent_id)
        except (ResourceNotFound, FhirError):
            resource = None
        reference = ((resource or {}).get("patient") or {}).get("reference", "")
        if resource is None or reference.split("/")[-1] != patient:
            raise Problem(404, "No such consent", f"you have no consent {consent_id!r}")
        return resource

    def own_versions(self, patient: str, consent_id: str) -> list[dict[str, Any]]:
        """The versions of a consent that are about the patient: a consent moved from
        another patient keeps that patient's earlier versions, which are not theirs to see."""
        return [
            v
            for v in self.protection.consents.history(consent_id)
            if str((v.get("patient") or {}).get("reference", "")).split("/")[-1] == patient
        ]

    def purposes(self, patient: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """What the site decides now for each research purpose, for a study of any
        organisation not named in a consent: decided by the site's own consent policy."""
        layer = self.protection
        try:
            layer.reload_policies()
            terms = layer.decider.patient_terms(patient)
            now = layer.now()
            decided = {
                purpose: decide(layer.engine, JobContext(purpose, ""), {patient: terms}, now)[patient]
                for purpose in RESEARCH_PURPOSES
            }
            # Consents naming organisations (answers to studies' requests) decide for those
            # organisations only: each is decided on its own.
            named: dict[str, set[str]] = {purpose: set() for purpose in RESEARCH_PURPOSES}
            for consent in terms:
                root = consent["root"]
                for purpose in root["purposes"] or list(RESEARCH_PURPOSES):
                    if purpose in named:
                        named[purpose].update(root["actors"])
            for_organizations = {
                purpose: [
                    (org, decide(layer.engine, JobContext(purpose, org), {patient: terms}, now)[patient])
                    for org in sorted(orgs)
                ]
                for purpose, orgs in named.items()
            }
        except PolicyError as exc:
            raise Problem(503, "Consent decision unavailable", f"the site cannot decide now: {exc}") from exc
        out = []
        for purpose, (title, words) in RESEARCH_PURPOSES.items():
            d = decided[purpose]
            deciding = None
            if d.consent_id:
                try:
                    deciding = layer.consents.read(d.consent_id)
                except (ResourceNotFound, FhirError):
                    deciding = None
            out.append(
                {
                    "code": purpose,
                    "title": title,
                    "explanation": f"{words[0].upper()}{words[1:]}.",
                    "decision": d.decision.value,
                    "reason": d.reason,
                    "consent": f"{d.consent_id}/{d.consent_version}" if d.consent_id else None,
                    "exclusions": [
                        e.to_json() for e in (exclusions_of(deciding, labels) if d.permitted else [])
                    ],
                    "organizations": [
                        {
                            "organization": org,
                            "decision": od.decision.value,
                            "consent": f"{od.consent_id}/{od.consent_version}",
                        }
                        for org, od in for_organizations[purpose]
                        if od.decision != d.decision
                    ],
                }
            )
        return out

    def overview(self, patient: str) -> dict[str, Any]:
        records = self.resources_of(patient)
        labels = record.code_labels(records)
        consents = self.protection.consents.for_patient(patient)
        return {
            "patient": patient,
            "site": {"id": self.site.site_id, "name": self.site.identity.name},
            "purposes": self.purposes(patient, labels),
            "consents": [
                explain(c) for c in sorted(consents, key=lambda c: str(c.get("dateTime")), reverse=True)
            ],
            "data": record.data_choices(records),
        }

    def activity(self, patient: str) -> dict[str, Any]:
        entries = self.protection.audit.for_patient(patient)
        actions = [
            {"seq": e["seq"], "time": e["time"], "kind": e["kind"], **{k: v for k, v in e["data"].items()}}
            for e in self.protection.audit.entries()
            if e.get("kind") in (PATIENT_ACTION, ERASURE) and (e.get("data") or {}).get("patient") == patient
        ]
        return {
            "jobs": record.jobs_that_used(entries),
            "entries": sorted(entries + actions, key=lambda e: e["seq"]),
        }

    def pending(self, patient: str) -> list[dict[str, Any]]:
        return [
            {
                "id": r.request_id,
                "study": r.study,
                "purpose": r.purpose,
                "purpose_words": RESEARCH_PURPOSES.get(r.purpose, (r.purpose, ""))[0],
                "organization": r.organization,
                "message": r.message,
                "created_at": r.created,
            }
            for r in self.requests.pending(patient)
        ]

    # -- changes ----------------------------------------------------------------------------

    def set_research(self, patient: str, purpose: str, choice: ResearchChoice) -> dict[str, Any]:
        if purpose not in RESEARCH_PURPOSES:
            raise Problem(
                404,
                "No such research purpose",
                f"{purpose!r} is not one of {', '.join(RESEARCH_PURPOSES)}",
                field="purpose",
            )
        labels = record.code_labels(self.resources_of(patient))
        try:
            exclusions = parse_exclusions(choice.exclude, labels)
            consent = purpose_consent(patient, purpose, choice.decision, exclusions, self.clock())
        except ChoiceError as exc:
            raise Problem(422, "Invalid choice", f"{exc.field}: {exc}", field=exc.field) from exc
        change = self.protection.consents.put(consent)
        self.audit(
            patient,
            "research-consent",
            purpose=purpose,
            decision=choice.decision,
            excluded=[e.value for e in exclusions],
            consent=f"{change.consent_id}/{change.version}",
        )
        return {"consent": change.consent_id, "version": change.version}

    def answer(self, patient: str, request_id: str, accept: bool) -> dict[str, Any]:
        try:
            request = self.requests.get(request_id)
        except ConsentRequestError:
            request = None
        if request is None or request.patient != patient:
            raise Problem(404, "No such consent request", f"you have no consent request {request_id!r}")
        try:
            self.requests.answer(request_id, accept)
        except ConsentRequestError as exc:
            raise Problem(409, "Already answered", str(exc)) from exc
        consent = request_consent(
            request.request_id, patient, request.purpose, request.organization, accept, self.clock()
        )
        change = self.protection.consents.put(consent)
        self.audit(
            patient,
            "consent-request-answered",
            request=request.request_id,
            study=request.study,
            accepted=accept,
            consent=f"{change.consent_id}/{change.version}",
        )
        return {
            "request": request.request_id,
            "accepted": accept,
            "consent": change.consent_id,
            "version": change.version,
        }

    def erase(self, patient: str, session: PatientSession) -> dict[str, Any]:
        """Erasure (GDPR Art. 17): out of every future round first (a refusal replaces all
        the patient's consents, in one transaction), then the records deleted from the FHIR
        store. The audit log keeps its entries (Art. 17(3)(b)/(e): the site must be able to
        show which data it released under which consent); they hold ids and digests, no
        clinical content. The answer lists the models already trained with the patient's
        data, from those entries."""
        with self._erasing:
            self.protection.record(ERASURE, {"patient": patient, "event": "requested"})
            trained = record.jobs_that_used(self.protection.audit.for_patient(patient))
            deleted_versions, change = self.protection.consents.erase_patient(
                patient, erasure_refusal(patient, self.clock())
            )
            deleted_resources = self.site.fhir.erase_patient(patient)
            for pending in self.requests.pending(patient):
                self.requests.answer(pending.request_id, False)
            # This session stays to show the answer; other sessions and unused codes end.
            self.sessions.end_all(patient, keep=session.session_id)
            entry = self.protection.audit.append(
                ERASURE,
                {
                    "patient": patient,
                    "event": "done",
                    "fhir_resources_deleted": deleted_resources,
                    "consent_versions_deleted": deleted_versions,
                    "refusal": f"{change.consent_id}/{change.version}",
                    "models_trained": [j["job"] for j in trained],
                },
                site=self.site.site_id,
            )
        return {
            "patient": patient,
            "recorded": {"audit_seq": entry["seq"], "audit_hash": entry["hash"]},
            "fhir_resources_deleted": deleted_resources,
            "consent_versions_deleted": deleted_versions,
            "excluded_from_future_rounds": True,
            "kept": (
                "a refusal of all research (so your data stays out should it ever be loaded again) and the "
                "audit log's entries, which name your patient id, jobs and consent versions but hold no "
                "clinical data"
            ),
            "models_trained": trained,
        }


def _origin_ok(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def build_dashboard_router(dashboard: Dashboard) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["patient dashboard"])

    def session_of(request: Request) -> PatientSession:
        session = dashboard.sessions.lookup(request.cookies.get(COOKIE))
        if session is None:
            raise Problem(401, "Sign-in required", "sign in with the enrolment code the hospital gave you")
        return session

    def change_of(
        request: Request,
        x_csrf_token: Annotated[str | None, Header()] = None,
    ) -> PatientSession:
        session = session_of(request)
        if not _origin_ok(request):
            raise Problem(403, "Cross-site request refused", "the request's Origin is not this site")
        if not session.csrf_matches(x_csrf_token):
            raise Problem(
                403,
                "CSRF token missing or wrong",
                "send the session's csrf_token in the X-CSRF-Token header",
                field="X-CSRF-Token",
            )
        return session

    @router.get("", include_in_schema=False)
    def to_page() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @router.post("/api/session", status_code=201)
    def sign_in(body: SignIn, request: Request) -> JSONResponse:
        """Exchange a one-time enrolment code for a session cookie and a CSRF token."""
        if not _origin_ok(request):
            raise Problem(403, "Cross-site request refused", "the request's Origin is not this site")
        try:
            session = dashboard.sessions.sign_in(body.code)
        except EnrolmentError as exc:
            raise Problem(401, "Sign-in refused", str(exc), field="code") from exc
        dashboard.audit(session.patient, "signed-in")
        response = JSONResponse(
            {
                "patient": session.patient,
                "csrf_token": session.csrf_token,
                "expires": session.expires_at.isoformat(),
            },
            status_code=201,
        )
        response.set_cookie(
            COOKIE,
            session.session_id,
            max_age=int((session.expires_at - dashboard.clock()).total_seconds()),
            path=f"{PREFIX}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.get("/api/session")
    def who(session: PatientSession = Depends(session_of)) -> dict[str, str]:
        dashboard.audit(session.patient, "resumed-session")
        return {
            "patient": session.patient,
            "csrf_token": session.csrf_token,
            "expires": session.expires_at.isoformat(),
        }

    @router.delete("/api/session", status_code=204)
    def sign_out(session: PatientSession = Depends(change_of)) -> Response:
        dashboard.sessions.end(session.session_id)
        dashboard.audit(session.patient, "signed-out")
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path=f"{PREFIX}/", httponly=True, samesite="strict")
        return response

    @router.get("/api/overview")
    def overview(session: PatientSession = Depends(session_of)) -> dict[str, Any]:
        """My consents in plain language, what the site decides for each research purpose,
        and the data in my record that I can keep out of research."""
        dashboard.audit(session.patient, "viewed-consents")
        return dashboard.overview(session.patient)

    @router.get("/api/consents/{consent_id}")
    def consent(consent_id: str, session: PatientSession = Depends(session_of)) -> dict[str, Any]:
        """One of my consents: every version explained, and the current FHIR resource."""
        current = dashboard.own_consent(session.patient, consent_id)
        versions = dashboard.own_versions(session.patient, consent_id)
        dashboard.audit(session.patient, "viewed-consent", consent=consent_id)
        return {"current": explain(current), "versions": [explain(v) for v in versions], "fhir": current}

    @router.put("/api/research/{purpose}")
    def research(
        purpose: str, choice: Annotated[ResearchChoice, Body()], session: PatientSession = Depends(change_of)
    ) -> dict[str, Any]:
        """Grant (permit, optionally keeping data out) or refuse/withdraw (deny) research
        for one purpose: a new version of my consent for that purpose."""
        return dashboard.set_research(session.patient, purpose, choice)

    @router.get("/api/requests")
    def requests(session: PatientSession = Depends(session_of)) -> list[dict[str, Any]]:
        dashboard.audit(session.patient, "viewed-requests")
        return dashboard.pending(session.patient)

    @router.post("/api/requests/{request_id}")
    def answer(
        request_id: str, body: RequestAnswer, session: PatientSession = Depends(change_of)
    ) -> dict[str, Any]:
        """Accept (a permit for the study's purpose and organisation) or decline (a refusal)."""
        return dashboard.answer(session.patient, request_id, body.accept)

    @router.get("/api/activity")
    def activity(session: PatientSession = Depends(session_of)) -> dict[str, Any]:
        """Which jobs used my data, when, under which consent version; and my consent history."""
        dashboard.audit(session.patient, "viewed-activity")
        return dashboard.activity(session.patient)

    @router.get("/api/export")
    def export(request: Request, session: PatientSession = Depends(session_of)) -> Response:
        """My data as a FHIR R4 Bundle: my records and every version of my consents."""
        patient = session.patient
        versions: list[dict[str, Any]] = []
        for current in dashboard.protection.consents.for_patient(patient):
            versions += dashboard.own_versions(patient, str(current["id"]))
        resources_ = dashboard.resources_of(patient)
        bundle = record.export_bundle(
            patient,
            resources_,
            versions,
            site_id=dashboard.site.site_id,
            base=str(request.base_url).rstrip("/") + "/fhir",
            timestamp=dashboard.clock().isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        dashboard.audit(patient, "exported", resources=len(resources_), consent_versions=len(versions))
        return Response(
            json.dumps(bundle, indent=1),
            media_type="application/fhir+json",
            headers={
                "Content-Disposition": 'attachment; filename="my-data.fhir.json"',
                "Cache-Control": "no-store",
            },
        )

    @router.post("/api/erasure")
    def erasure(body: ErasureRequest, session: PatientSession = Depends(change_of)) -> dict[str, Any]:
        """Erase my data: out of every future round, deleted from the store; the answer lists
        the models already trained with it."""
        if not body.confirm:
            raise Problem(422, "Not confirmed", "confirm: must be true to erase your data", field="confirm")
        return dashboard.erase(session.patient, session)

    @router.get("/api/events")
    async def events(request: Request, session: PatientSession = Depends(session_of)) -> StreamingResponse:
        """Server-Sent Events: ``requests`` (my pending consent requests, on connect and on
        every change) and ``consents`` (my consents changed, by me or by the hospital)."""
        patient = session.patient
        await asyncio.to_thread(dashboard.audit, patient, "opened-notifications")

        def state() -> tuple[list[dict[str, Any]], int]:
            versions = dashboard.protection.consents.patient_versions([patient])
            return dashboard.pending(patient), versions.get(patient, 0)

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            sent_requests: list[dict[str, Any]] | None = None
            sent_version: int | None = None
            quiet = 0.0
            while True:
                if await asyncio.to_thread(dashboard.sessions.lookup, session.session_id) is None:
                    yield "event: signed-out\ndata: {}\n\n"
                    return
                pending, version = await asyncio.to_thread(state)
                if pending != sent_requests:
                    sent_requests = pending
                    quiet = 0.0
                    yield f"event: requests\ndata: {json.dumps(pending)}\n\n"
                if version != sent_version:
                    if sent_version is not None:
                        quiet = 0.0
                        yield f"event: consents\ndata: {json.dumps({'version': version})}\n\n"
                    sent_version = version
                await asyncio.sleep(EVENT_POLL_SECONDS)
                if await request.is_disconnected():
                    return
                quiet += EVENT_POLL_SECONDS
                if quiet >= KEEP_ALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


def mount_dashboard(app: FastAPI, protection: ProtectionLayer) -> Dashboard:
    """Serve the dashboard of ``protection``'s site on ``app`` at /patient/."""
    site_root = protection.site.root
    dashboard = Dashboard(
        protection, PatientSessions.for_site(site_root), ConsentRequests.for_site(site_root)
    )
    app.include_router(build_dashboard_router(dashboard))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="patient-static")
    app.state.dashboard = dashboard
    return dashboard
