"""The clinical node's API for the federation's services (role ``aggregator``): feasibility
queries (``POST /federation/feasibility``) and the site's data catalogue
(``GET /federation/catalog``). Errors are RFC 9457 problem details.

Annotations are evaluated at definition (no ``from __future__ import annotations``): the
routes' ``Depends`` refer to dependencies made inside :func:`build_federation_router`."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from paroma.problems import Problem

from .auth import Principal, TokenStore


class Code(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system: str | None = Field(None, description="code system URI; none: any system")
    code: str = Field(min_length=1)


class ConsentRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: str = Field(min_length=1, max_length=200, description="the study patients are asked to join")
    message: str = Field("", max_length=4000, description="what the patient is shown")


class FeasibilityBody(BaseModel):
    """A cohort definition (a built-in feature spec, or a resource type with codes) and
    the purpose of use with the requesting organisation."""

    model_config = ConfigDict(extra="forbid")
    purpose: str = Field(description="v3-ActReason purpose of use, e.g. HRESCH")
    organization: str = Field(min_length=1, description="the requesting organisation")
    spec: str | None = Field(None, description="a built-in feature spec, e.g. flamby-heart-disease")
    resource_type: str | None = None
    codes: list[Code] | None = None
    consent_request: ConsentRequestBody | None = Field(
        None, description="queue a consent request for the patients whose consent is missing"
    )


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def require_role(tokens: TokenStore, role: str) -> Callable[..., Principal]:
    def dependency(authorization: Annotated[str | None, Header()] = None) -> Principal:
        principal = tokens.authenticate(bearer(authorization))
        if principal is None:
            raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        if principal.role != role:
            raise HTTPException(403, f"role {principal.role} may not use this endpoint (role {role} needed)")
        return principal

    return dependency


def build_federation_router(
    protection: Any, tokens: TokenStore, catalogue: Callable[[], dict[str, Any]] | None = None
) -> APIRouter:
    """``protection``: the site's ProtectionLayer; ``catalogue``: the site's published
    catalogue (rebuilt by its publisher on its schedule, not per request)."""
    from protection_layer.engine import PolicyError
    from protection_layer.feasibility import FeasibilityError, answer_feasibility, parse_query

    router = APIRouter(prefix="/federation", tags=["federation"])
    aggregator = require_role(tokens, "aggregator")

    @router.post("/feasibility")
    def feasibility(
        body: FeasibilityBody, principal: Annotated[Principal, Depends(aggregator)]
    ) -> dict[str, Any]:
        """Counts of patients usable / needing consent / unknown / refused; small counts as "<k"."""
        try:
            query = parse_query(body.model_dump())
        except FeasibilityError as exc:
            raise Problem(
                422,
                "Invalid feasibility query",
                str(exc),
                errors=[{"field": f, "message": m} for f, m in exc.problems],
            ) from exc
        try:
            answer = answer_feasibility(protection, query, requester=principal.subject)
        except PolicyError as exc:
            raise Problem(503, "No consent decision could be made", str(exc)) from exc
        return answer.to_dict()

    if catalogue is not None:
        source = catalogue

        @router.get("/catalog")
        def catalog(principal: Annotated[Principal, Depends(aggregator)]) -> dict[str, Any]:
            """The site's DCAT-style catalogue as last published (small counts as "<k")."""
            return source()

    return router
