"""FHIR R4 REST endpoints for Consent: a site's patients' consents go to the protection
layer's consent store, not to the clinical FHIR store.

``POST /fhir/Consent`` (create; the server assigns the id), ``PUT /fhir/Consent/{id}``
(create or new version), ``GET /fhir/Consent/{id}``, ``GET /fhir/Consent/{id}/_history``
and ``/_history/{vid}``, ``GET /fhir/Consent?patient=``. A malformed Consent is refused
with an OperationOutcome naming each element at fault, and nothing is stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from clinical_node.fhir.api import fhir_response
from clinical_node.fhir.errors import FhirError

from .consent_store import ConsentStore


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    # RecursionError: nesting deeper than the parser goes is not a FHIR resource either
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FhirError.single(f"the body is not JSON: {exc}", location="Consent") from exc
    if not isinstance(body, dict):
        raise FhirError.single("the body must be a FHIR Consent (a JSON object)", location="Consent")
    return body


def _bundle(kind: str, resources: list[dict[str, Any]], base: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "total": len(resources),
        "entry": [
            {"fullUrl": f"{base}/Consent/{r['id']}", "resource": r}
            | ({"search": {"mode": "match"}} if kind == "searchset" else {})
            for r in resources
        ],
    }


def build_consent_router(consents_of: Callable[[], ConsentStore], authorize: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/fhir/Consent", tags=["FHIR Consent"], dependencies=[Depends(authorize)])

    def stored(consent_id: str, status: int) -> JSONResponse:
        resource = consents_of().read(consent_id)
        version = resource["meta"]["versionId"]
        return fhir_response(
            resource,
            status,
            headers={"Location": f"Consent/{consent_id}/_history/{version}", "ETag": f'W/"{version}"'},
        )

    @router.post("")
    async def create(request: Request) -> JSONResponse:
        body = await _body(request)
        body["id"] = str(uuid.uuid4())  # FHIR create: the server assigns the id
        change = consents_of().put(body)
        return stored(change.consent_id, 201)

    @router.put("/{consent_id}")
    async def update(consent_id: str, request: Request) -> JSONResponse:
        body = await _body(request)
        if body.get("id") not in (None, consent_id):
            raise FhirError.single(
                f"Consent.id {body.get('id')!r} does not match the URL's id {consent_id!r}",
                location="Consent.id",
            )
        body["id"] = consent_id
        change = consents_of().put(body)
        return stored(consent_id, 201 if change.change == "created" else 200)

    @router.get("/{consent_id}/_history")
    def history(consent_id: str, request: Request) -> JSONResponse:
        base = str(request.base_url).rstrip("/") + "/fhir"
        return fhir_response(_bundle("history", consents_of().history(consent_id), base))

    @router.get("/{consent_id}/_history/{version}")
    def version(consent_id: str, version: int) -> JSONResponse:
        return fhir_response(consents_of().read(consent_id, version))

    @router.get("/{consent_id}")
    def read(consent_id: str) -> JSONResponse:
        resource = consents_of().read(consent_id)
        return fhir_response(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})

    @router.get("")
    def search(request: Request) -> JSONResponse:
        unknown = sorted(k for k in request.query_params if k not in ("patient", "_format"))
        if unknown:
            raise FhirError.single(
                f"unsupported search parameter(s): {', '.join(unknown)}; supported: patient",
                location=unknown[0],
                code="not-supported",
            )
        patient = request.query_params.get("patient")
        if not patient:
            raise FhirError.single(
                "search Consent by patient: ?patient=<id>", location="patient", code="required"
            )
        patient = patient.split("/", 1)[1] if patient.startswith("Patient/") else patient
        base = str(request.base_url).rstrip("/") + "/fhir"
        return fhir_response(_bundle("searchset", consents_of().for_patient(patient), base))

    return router
