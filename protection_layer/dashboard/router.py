"""The patients' consent dashboard: its HTTP API and pages, mounted at ``/patient/``.

Every endpoint but sign-in needs a patient session (sessions.py) and acts only on the
session's own patient: no endpoint takes a patient id, and a consent or request id of
another patient is answered 404, as if it did not exist. Every change needs the
session's CSRF token in ``X-CSRF-Token`` (and, when the browser sends one, an ``Origin``
of this site). Errors are RFC 9457 problem details naming the field. What each endpoint does
is in actions.py (the ``Dashboard``); every action is audited there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from paroma.problems import Problem

from ..consent_requests import ConsentRequests
from ..layer import ProtectionLayer
from . import record
from .actions import Dashboard
from .explain import explain
from .sessions import EnrolmentError, PatientSession, PatientSessions

STATIC = Path(str(resources.files("protection_layer.dashboard") / "static"))
COOKIE = "paroma_patient"
PREFIX = "/patient"
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
        return dashboard.set_research(session.patient, purpose, choice.decision, choice.exclude)

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
