"""The job spec's JSON Schema (public: it describes a format, not anyone's data)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..schema import job_spec_schema

router = APIRouter(tags=["job spec"])


@router.get("/api/job-spec.schema.json", response_class=JSONResponse)
def schema() -> JSONResponse:
    body: dict[str, Any] = job_spec_schema()
    return JSONResponse(body, media_type="application/schema+json")
