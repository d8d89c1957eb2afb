"""The clinical node's HTTP service: the FHIR API (and, as the node grows, its other APIs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from paroma.problems import install_problem_handlers

from .auth import Principal, TokenStore
from .fhir.api import build_fhir_router, fhir_response
from .fhir.errors import FhirError, Issue
from .site import Site


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def create_app(site: Site) -> FastAPI:
    tokens = TokenStore(site.root / "keys" / "api-tokens.json")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the site's catalogue is published on its schedule while the service runs
        stop = app.state.catalogue.start()
        yield
        stop.set()

    app = FastAPI(title=f"PAROMA-MED clinical node {site.site_id}", version="0.1.0", lifespan=lifespan)
    install_problem_handlers(app)

    def require_site_admin(authorization: Annotated[str | None, Header()] = None) -> Principal:
        principal = tokens.authenticate(bearer(authorization))
        if principal is None:
            raise FhirError([Issue("a valid bearer token is required", code="login")], 401)
        if principal.role != "site-admin":
            raise FhirError([Issue(f"role {principal.role} may not use the FHIR API", code="forbidden")], 403)
        return principal

    # Consents go to the protection layer's store; its routes come before the generic ones.
    from protection_layer.fhir_api import build_consent_router
    from protection_layer.layer import ProtectionLayer

    protection = ProtectionLayer(site)
    app.state.protection = protection
    app.include_router(build_consent_router(lambda: protection.consents, require_site_admin))
    app.include_router(build_fhir_router(lambda: site.fhir, require_site_admin))
    from .catalogue import CataloguePublisher
    from .federation_api import build_federation_router

    publisher = CataloguePublisher(site)
    app.state.catalogue = publisher
    app.include_router(build_federation_router(protection, tokens, publisher.current))

    @app.exception_handler(FhirError)
    async def _fhir_error(request: Request, exc: FhirError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return fhir_response(exc.operation_outcome(), exc.status, headers)

    original = app.exception_handlers[RequestValidationError]

    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        if request.url.path.startswith("/fhir"):
            assert isinstance(exc, RequestValidationError)
            issues = [
                Issue(str(e.get("msg")), ".".join(str(p) for p in e.get("loc", ()))) for e in exc.errors()
            ]
            return fhir_response(FhirError(issues).operation_outcome(), 400)
        response: JSONResponse = await original(request, exc)  # type: ignore[misc]
        return response

    app.add_exception_handler(RequestValidationError, _invalid)

    # The patients' consent dashboard at /patient/ (its own sign-in: protection_layer/dashboard).
    from protection_layer.dashboard import mount_dashboard

    mount_dashboard(app, protection)

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok", "site": site.site_id}

    return app
