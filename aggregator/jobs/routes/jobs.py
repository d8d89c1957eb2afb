"""Jobs: submit, list, status, logs, cancel."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from paroma.jobspec import JobSpecError, parse_job_spec
from paroma.problems import Problem

from ..auth import CANCELLERS, SUBMITTERS, Principal, sees_every_job
from ..deps import principal, require_role, service, visible_job
from ..http_models import JobOut, JobSummary, LogLine, Whoami
from ..service import JobService, job_deadline
from ..store import Job, JobStoreError

router = APIRouter(prefix="/api", tags=["jobs"])

_MAX_SPEC_BYTES = 1 << 20


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job.to_dict())


def _summary(job: Job) -> JobSummary:
    return JobSummary.model_validate(job.to_dict())


async def _spec_document(request: Request) -> Any:
    body = await request.body()
    if len(body) > _MAX_SPEC_BYTES:
        raise Problem(413, "Job spec too large", f"{len(body)} bytes; at most {_MAX_SPEC_BYTES}")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, "Invalid job spec", f"the body is not UTF-8 text: {exc}") from exc
    if kind in ("application/toml", "text/toml"):
        try:
            return tomllib.loads(text)
        # RecursionError: nesting deeper than the parser goes is no job spec either
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise Problem(
                422,
                "Invalid job spec",
                f"not valid TOML: {exc}",
                errors=[{"field": "(document)", "message": str(exc)}],
            ) from exc
    if kind != "application/json":
        raise Problem(415, "Unsupported media type", f"{kind!r}: send application/json or application/toml")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise Problem(
            422,
            "Invalid job spec",
            f"not valid JSON: {exc}",
            errors=[{"field": "(document)", "message": str(exc)}],
        ) from exc


@router.get("/whoami", response_model=Whoami)
def whoami(who: Principal = Depends(principal)) -> Whoami:
    return Whoami(role=who.role, subject=who.subject)


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "a job spec (see /api/job-spec.schema.json), as JSON or TOML",
            "content": {
                "application/json": {"schema": {"$ref": "/api/job-spec.schema.json"}},
                "application/toml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def submit(
    request: Request,
    response: Response,
    who: Principal = Depends(principal),
    svc: JobService = Depends(service),
) -> JobOut:
    """Queue a job. An invalid spec is answered 422 with every problem and its field."""
    require_role(who, SUBMITTERS, "submit jobs")
    document = await _spec_document(request)
    try:
        spec = parse_job_spec(document)
    except JobSpecError as exc:
        raise Problem(
            422,
            "Invalid job spec",
            str(exc),
            errors=[{"field": f, "message": m} for f, m in exc.problems],
        ) from exc
    end = job_deadline(spec)
    if end is not None and end <= datetime.now(UTC):
        detail = f"deadline.at: {spec.deadline} is in the past"
        raise Problem(
            422, "Invalid job spec", detail, errors=[{"field": "deadline.at", "message": "in the past"}]
        )
    job = svc.submit(who.subject, spec)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job_out(job)


@router.get("/jobs", response_model=list[JobSummary])
def list_jobs(who: Principal = Depends(principal), svc: JobService = Depends(service)) -> list[JobSummary]:
    """Every job the caller can see, newest first (a data scientist sees their own)."""
    owner = None if sees_every_job(who) else who.subject
    return [_summary(j) for j in svc.store.list(owner)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def status(job: Job = Depends(visible_job)) -> JobOut:
    return job_out(job)


@router.get("/jobs/{job_id}/logs", response_model=list[LogLine])
def logs(
    after: int = Query(0, ge=0, description="only lines after this sequence number"),
    job: Job = Depends(visible_job),
    svc: JobService = Depends(service),
) -> list[LogLine]:
    return [LogLine(seq=s, at=a, message=m) for s, a, m in svc.store.logs(job.id, after)]


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel(
    job: Job = Depends(visible_job), who: Principal = Depends(principal), svc: JobService = Depends(service)
) -> JobOut:
    """Cancel a queued job at once, a running one before its next round."""
    require_role(who, CANCELLERS, "cancel jobs")
    try:
        return job_out(svc.cancel(job.id, who.subject))
    except JobStoreError as exc:
        raise Problem(409, "Cannot cancel", str(exc)) from exc
