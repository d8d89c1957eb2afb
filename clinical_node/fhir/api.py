"""The site's FHIR R4 REST API (FastAPI): capabilities, read, search, and bundle ingest.

Only the site's staff (role ``site-admin``) use it; errors are OperationOutcome resources.
Search parameters: ``patient`` (or ``subject``), ``code`` (token; comma = OR), ``date``
(with the prefixes eq, ne, gt, lt, ge, le; repeatable = AND), ``_id``, ``_count`` (page size,
at most 500) and ``_offset``. Unknown parameters are refused rather than silently ignored, so
a client never mistakes an unfiltered answer for a filtered one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .errors import FhirError
from .store import DateQuery, FhirStore, TokenQuery

FHIR_JSON = "application/fhir+json"
SEARCH_PARAMS = ("patient", "subject", "code", "date", "_id", "_count", "_offset")
IGNORED_PARAMS = ("_format", "_pretty")
MAX_PAGE = 500


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def capability_statement(store: FhirStore) -> dict[str, Any]:
    types = sorted(set(store.counts()) | {"Patient", "Observation", "Condition", "Consent"})
    params = [
        {"name": "patient", "type": "reference"},
        {"name": "code", "type": "token"},
        {"name": "date", "type": "date"},
        {"name": "_id", "type": "token"},
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "PAROMA-MED clinical node FHIR API"},
        "fhirVersion": "4.0.1",
        "format": ["json", FHIR_JSON],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": t,
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": params,
                    }
                    for t in types
                ],
                "interaction": [{"code": "transaction"}],
            }
        ],
    }


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FhirError.single(f"{name}={raw!r} is not an integer", location=name) from None
    if not lo <= value <= hi:
        raise FhirError.single(f"{name}={value} is outside [{lo}, {hi}]", location=name)
    return value


def build_fhir_router(store_of: Callable[[], FhirStore], authorize: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/fhir", tags=["FHIR"])

    @router.get("/metadata")
    def metadata() -> JSONResponse:
        return fhir_response(capability_statement(store_of()))

    @router.post("", dependencies=[Depends(authorize)])
    async def post_bundle(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        # RecursionError: nesting deeper than the parser goes is not a FHIR resource either
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise FhirError.single(f"the body is not JSON: {exc}", location="Bundle") from exc
        refs = store_of().ingest_bundle(body)
        entries = [
            {
                "response": {
                    "status": "201 Created" if r.created else "200 OK",
                    "location": f"{r.resource_type}/{r.resource_id}/_history/{r.version}",
                }
            }
            for r in refs
        ]
        rtype = "transaction-response" if body.get("type") == "transaction" else "batch-response"
        return fhir_response({"resourceType": "Bundle", "type": rtype, "entry": entries})

    @router.get("/{rtype}/{rid}", dependencies=[Depends(authorize)])
    def read(rtype: str, rid: str) -> JSONResponse:
        resource = store_of().read(rtype, rid)
        return fhir_response(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})

    @router.get("/{rtype}", dependencies=[Depends(authorize)])
    def search(rtype: str, request: Request) -> JSONResponse:
        if not rtype[:1].isupper() or not rtype.isalpha():
            raise FhirError.single(f"{rtype!r} is not a FHIR resource type", location="type")
        unknown = sorted(
            k for k in request.query_params if k not in SEARCH_PARAMS and k not in IGNORED_PARAMS
        )
        if unknown:
            raise FhirError.single(
                f"unsupported search parameter(s): {', '.join(unknown)}; supported: {', '.join(SEARCH_PARAMS)}",
                location=unknown[0],
                code="not-supported",
            )
        qp = request.query_params
        patient = qp.get("patient") or qp.get("subject")
        if patient and "/" in patient:
            kind, _, pid = patient.partition("/")
            if kind != "Patient":
                raise FhirError.single(f"patient={patient!r} must reference a Patient", location="patient")
            patient = pid
        codes = [TokenQuery.parse(v) for value in qp.getlist("code") for v in value.split(",") if v]
        try:
            dates = [DateQuery.parse(v) for v in qp.getlist("date")]
        except ValueError as exc:
            raise FhirError.single(str(exc), location="date") from exc
        ids = [v for value in qp.getlist("_id") for v in value.split(",") if v]
        count = _int_param(request, "_count", 50, 0, MAX_PAGE)
        offset = _int_param(request, "_offset", 0, 0, 10**9)
        page = store_of().search(
            rtype,
            patient=patient,
            ids=ids or None,
            codes=codes,
            dates=dates,
            offset=offset,
            count=count,
        )
        base = str(request.url).split("?", 1)[0]
        kept = [(k, v) for k, v in qp.multi_items() if k not in ("_offset", "_count")]

        def link(relation: str, at: int) -> dict[str, str]:
            query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
            return {"relation": relation, "url": f"{base}?{query}"}

        links = [link("self", offset)]
        if count and offset + count < page.total:
            links.append(link("next", offset + count))
        if offset > 0:
            links.append(link("previous", max(0, offset - count)))
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": page.total,
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base.rsplit('/', 1)[0]}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page.resources
            ],
        }
        return fhir_response(bundle)

    return router
