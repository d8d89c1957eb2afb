"""Dependencies of the job service's routes: the service, the caller, the caller's job."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from paroma.problems import Problem

from .auth import Principal, TokenError, sees_every_job
from .service import JobService
from .store import Job, JobStoreError

_bearer = HTTPBearer(auto_error=False)


def service(request: Request) -> JobService:
    svc: JobService = request.app.state.service
    return svc


def principal(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    svc: JobService = Depends(service),
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "Authentication required: send 'Authorization: Bearer <token>' (from 'paroma job token')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        who = svc.tokens.authenticate(credentials.credentials)
    except TokenError as exc:  # an unreadable token file refuses everyone
        raise Problem(503, "Authentication unavailable", str(exc)) from exc
    if who is None:
        raise HTTPException(
            401,
            "Invalid token: unknown or revoked",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return who


def visible_job(job_id: str, who: Principal = Depends(principal), svc: JobService = Depends(service)) -> Job:
    """The job, if the caller may see it; a data scientist gets 404 for another's job (its
    existence is not disclosed)."""
    try:
        job = svc.store.get(job_id)
    except JobStoreError:
        job = None
    if job is None or not (sees_every_job(who) or job.owner == who.subject):
        raise Problem(404, "Unknown job", f"no job {job_id!r} that you can see")
    return job


def require_role(who: Principal, roles: tuple[str, ...], action: str) -> None:
    if who.role not in roles:
        raise Problem(
            403, "Not allowed", f"the role {who.role!r} cannot {action} (roles: {', '.join(roles)})"
        )
