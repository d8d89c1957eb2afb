"""The relay's control API: the controller pushes routes here (HTTP, JSON, bearer secret).

    GET    /healthz               liveness, no secret needed (says nothing about the routes)
    GET    /routes                the routing table with per-path counters
    PUT    /routes/{path_id}      install or replace a path's entry (body: a RouteEntry)
    DELETE /routes/{path_id}      remove a path; its connections are closed

Errors are RFC 9457 problem details. The handlers are coroutines, so they run on the relay's
own event loop and change its state without locks.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header

from interconnect.relay.relay import Relay
from interconnect.relay.routes import RouteError, check_path_id, route_from_mapping
from paroma.problems import Problem, install_problem_handlers

MIN_TOKEN_LENGTH = 16


def create_control_app(relay: Relay, token: str) -> FastAPI:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the relay's control secret must be at least {MIN_TOKEN_LENGTH} characters")
    app = FastAPI(title=f"PAROMA-MED relay {relay.name}", version="1.0", docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    expected = f"Bearer {token}".encode()

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization is None:
            raise Problem(401, "Unauthorized", "the control API needs 'Authorization: Bearer <secret>'")
        if not hmac.compare_digest(authorization.encode(), expected):
            raise Problem(403, "Forbidden", "wrong control secret")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "relay": relay.name}

    @app.get("/routes", dependencies=[Depends(authorised)])
    async def routes() -> dict[str, Any]:
        return relay.status()

    @app.put("/routes/{path_id}", dependencies=[Depends(authorised)])
    async def put_route(path_id: str, body: Annotated[Any, Body()]) -> dict[str, Any]:
        try:
            check_path_id(path_id)
            entry = route_from_mapping(body)
        except RouteError as exc:
            raise Problem(422, "Invalid route", str(exc)) from None
        if entry.path_id != path_id:
            raise Problem(
                422, "Invalid route", f"path_id {entry.path_id!r} does not match the URL's {path_id!r}"
            )
        try:
            return await relay.set_route(entry)
        except RouteError as exc:
            raise Problem(409, "Route refused", str(exc)) from None

    @app.delete("/routes/{path_id}", dependencies=[Depends(authorised)])
    async def delete_route(path_id: str) -> dict[str, Any]:
        try:
            return await relay.remove_route(path_id)
        except KeyError:
            raise Problem(404, "Unknown path", f"relay {relay.name} has no route for {path_id!r}") from None

    return app
