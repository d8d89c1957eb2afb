"""The Secure Traffic Engine's HTTP side: the REST API (OpenAPI at /docs), the event stream
(Server-Sent Events) and the hand-written GUI, all served by one FastAPI app.

Errors are RFC 9457 problem details naming what is wrong; a refused request changes nothing
(the engine validates before it changes state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from interconnect.pce.access import OperatorGate, OperatorTokens
from interconnect.pce.cve import Vulnerability, vulnerability_from_vector
from interconnect.pce.engine import (
    ChangeReport,
    Event,
    InstalledPath,
    NoPathError,
    SecurePathEngine,
    exposure_dict,
)
from interconnect.pce.errors import (
    ExposureExistsError,
    InvalidRequestError,
    NvdError,
    PathExistsError,
    PceError,
    TopologyError,
    TopologyInUseError,
    UnknownCveError,
    UnknownExposureError,
    UnknownLinkError,
    UnknownNodeError,
    UnknownPathError,
    VulnerabilityError,
)
from interconnect.pce.loaders import MAX_TOPOLOGY_BYTES
from interconnect.pce.nvd import NVD_NOTICE, NvdClient
from interconnect.pce.routing import NoPath, PathRequest
from interconnect.pce.scenario import parse_scenario
from interconnect.pce.security import attack_type_shares
from paroma.problems import install_problem_handlers, problem_response

STATIC = Path(str(resources.files("interconnect.pce") / "static"))
KEEP_ALIVE_SECONDS = 15.0
DISCONNECT_POLL_SECONDS = 0.5

_STATUS: list[tuple[type[PceError], int, str]] = [
    (UnknownNodeError, 404, "Unknown node"),
    (UnknownLinkError, 404, "Unknown link"),
    (UnknownPathError, 404, "Unknown path"),
    (UnknownExposureError, 404, "Unknown vulnerability on node"),
    (PathExistsError, 409, "Path exists"),
    (ExposureExistsError, 409, "Vulnerability already on node"),
    (TopologyInUseError, 409, "Topology in use"),
    (UnknownCveError, 422, "Unknown CVE"),
    (VulnerabilityError, 422, "Invalid vulnerability"),
    (TopologyError, 422, "Invalid topology"),
    (InvalidRequestError, 422, "Invalid request"),
    (NvdError, 502, "NVD API error"),
]


# ------------------------------------------------------------------ request bodies


class PathRequestBody(BaseModel):
    """The "Compute Secure Path" form (bandwidth in Mbit/s, delay in microseconds)."""

    name: str = Field(examples=["cleveland-to-aggregator"])
    source: str = Field(description="ingress node id", examples=["access-1"])
    destination: str = Field(description="egress node id", examples=["access-4"])
    bandwidth_mbps: float = Field(description="bandwidth the path must assure, Mbit/s", examples=[100])
    max_delay_us: float = Field(description="maximum end-to-end delay, microseconds", examples=[20000])
    min_security: float = Field(0.0, description="minimum security index of every node; 0 = classic CSPF")

    def to_request(self) -> PathRequest:
        return PathRequest(
            self.name,
            self.source,
            self.destination,
            self.bandwidth_mbps,
            self.max_delay_us,
            self.min_security,
        )


class VulnerabilityBody(BaseModel):
    cve_id: str = Field(examples=["CVE-2022-36786"])
    vector: str | None = Field(
        None, description="CVSS v3.x vector; without it the CVE is looked up in NVD data"
    )
    base_score: float | None = Field(None, description="checked against the vector when given")
    description: str = ""
    remediation: float = Field(1.0, description="RE >= 1 (1 = no remediation)")
    alpha: float = Field(1.0, description="optional tuning weight > 0")


class ExposurePatch(BaseModel):
    remediation: float | None = None
    alpha: float | None = None


class StateBody(BaseModel):
    up: bool


class ReoptimizeBody(BaseModel):
    names: list[str] | None = None


# ------------------------------------------------------------------ views


def route_view(path: InstalledPath) -> dict[str, Any]:
    return path.as_dict()


def topology_view(engine: SecurePathEngine) -> dict[str, Any]:
    snapshot = engine.snapshot()
    nodes = []
    for node, status in zip(snapshot.topology.nodes, snapshot.nodes, strict=True):
        scores = [e.vulnerability.base_score for e in status.exposures]
        nodes.append(
            {
                "id": node.id,
                "name": node.name,
                "kind": node.kind.value,
                "x": node.x,
                "y": node.y,
                "latitude": node.latitude,
                "longitude": node.longitude,
                "up": status.up,
                "security_index": status.security_index,
                "vulnerabilities": len(scores),
                "max_cvss": max(scores, default=None),
            }
        )
    links = [asdict(link) | {"available_mbps": link.available_mbps} for link in snapshot.links]
    return {"name": snapshot.topology.name, "nodes": nodes, "links": links, "last_event": snapshot.last_event}


def node_view(engine: SecurePathEngine, node_id: str) -> dict[str, Any]:
    status = engine.node_status(node_id)
    shares = attack_type_shares(status.exposures)
    exposures = [
        exposure_dict(e) | {"attack_share": shares[e.vulnerability.cve_id]} for e in status.exposures
    ]
    return {
        "id": status.id,
        "name": status.name,
        "kind": status.kind,
        "up": status.up,
        "security_index": status.security_index,
        "vulnerabilities": exposures,
        "paths": [p.name for p in engine.paths() if p.route is not None and node_id in p.route.nodes],
        "nvd_notice": NVD_NOTICE,
    }


def change_view(report: ChangeReport) -> dict[str, Any]:
    return report.as_dict()


def event_frame(event: Event) -> str:
    """One SSE message (WHATWG HTML, server-sent events): id, event type, JSON data."""
    payload = json.dumps({"seq": event.seq, "kind": event.kind, "time": event.time, "data": event.data})
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {payload}\n\n"


# ------------------------------------------------------------------ the app


class TransportController(Protocol):
    """What the engine's process runs beside the API when it also controls the relays
    (``interconnect.relay.RelayController``): started with the app, stopped with it."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


def create_app(
    engine: SecurePathEngine,
    nvd: NvdClient,
    *,
    controller: TransportController | None = None,
    operator_tokens: OperatorTokens | None = None,
) -> FastAPI:
    """The GUI and REST API; with ``operator_tokens``, changes need an operator (``access.py``);
    with ``controller``, the relay controller runs with the app."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if controller is not None:
            await asyncio.to_thread(controller.start)
        try:
            yield
        finally:
            if controller is not None:
                await asyncio.to_thread(controller.stop)

    app = FastAPI(
        title="PAROMA-MED Secure Traffic Engine",
        description=(
            "Path Computation Element with a CVSS-based security index of the nodes (PAROMA-MED). "
            + NVD_NOTICE
        ),
        version="1.0",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    if operator_tokens is not None:
        app.add_middleware(OperatorGate, tokens=operator_tokens)

    @app.exception_handler(PceError)
    async def _pce_error(request: Request, exc: PceError) -> JSONResponse:
        if isinstance(exc, NoPathError):
            return problem_response(
                422, "No path", str(exc), constraint=exc.no_path.constraint, path=exc.request.name
            )
        for kind, status, title in _STATUS:
            if isinstance(exc, kind):
                return problem_response(status, title, str(exc))
        return problem_response(400, "Refused", str(exc))

    app.include_router(_topology_router(engine, nvd))
    app.include_router(_node_router(engine, nvd))
    app.include_router(_link_router(engine))
    app.include_router(_path_router(engine))
    app.include_router(_cve_router(nvd))
    app.include_router(_event_router(engine))
    if controller is not None:
        app.include_router(_transport_router(controller))

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _topology_router(engine: SecurePathEngine, nvd: NvdClient) -> APIRouter:
    router = APIRouter(prefix="/api/topology", tags=["topology"])

    @router.get("")
    def get_topology() -> dict[str, Any]:
        """Nodes (with their security index) and links (with reservations)."""
        return topology_view(engine)

    @router.put("")
    async def load_topology(
        request: Request,
        format: Annotated[Literal["yaml", "json", "graphml"], Query(description="the body's format")],
        force: Annotated[bool, Query(description="remove installed paths if there are any")] = False,
    ) -> dict[str, Any]:
        """Replace the network by a project YAML/JSON scenario or a Topology Zoo GraphML file."""
        body = await request.body()
        if len(body) > MAX_TOPOLOGY_BYTES:
            raise InvalidRequestError(f"topology body larger than {MAX_TOPOLOGY_BYTES} bytes")
        # Parsing may look CVEs up: off the event loop.
        topology, exposures = await asyncio.to_thread(parse_scenario, body, f"upload.{format}", nvd)
        engine.replace_topology(topology, exposures, force=force)
        return topology_view(engine)

    return router


def _node_router(engine: SecurePathEngine, nvd: NvdClient) -> APIRouter:
    router = APIRouter(prefix="/api/nodes", tags=["nodes and vulnerabilities"])

    @router.get("/{node_id}")
    def get_node(node_id: str) -> dict[str, Any]:
        """A node's security index, its CVEs (CVSS, remediation, alpha) and the paths crossing it."""
        return node_view(engine, node_id)

    @router.put("/{node_id}/state")
    def set_node_state(node_id: str, body: StateBody) -> dict[str, Any]:
        """Take a node down (its paths are re-routed) or bring it back."""
        return change_view(engine.set_node_state(node_id, body.up))

    @router.post("/{node_id}/vulnerabilities", status_code=201)
    def add_vulnerability(node_id: str, body: VulnerabilityBody) -> dict[str, Any]:
        """Add a CVE to a node: by id (NVD data) or with its CVSS v3.x vector."""
        engine.node_status(node_id)
        vulnerability: Vulnerability
        if body.vector is not None:
            vulnerability = vulnerability_from_vector(
                body.cve_id, body.vector, body.base_score, description=body.description
            )
        else:
            vulnerability = nvd.lookup(body.cve_id)
            if body.base_score is not None and abs(body.base_score - vulnerability.base_score) > 1e-6:
                raise VulnerabilityError(
                    f"{vulnerability.cve_id}: base score {body.base_score:g} disagrees with NVD's "
                    f"{vulnerability.base_score:g} ({vulnerability.vector})"
                )
        report = engine.add_vulnerability(node_id, vulnerability, body.remediation, body.alpha)
        return {"node": node_view(engine, node_id), "change": change_view(report)}

    @router.patch("/{node_id}/vulnerabilities/{cve_id}")
    def change_remediation(node_id: str, cve_id: str, body: ExposurePatch) -> dict[str, Any]:
        """Set the remediation level RE (and/or alpha) of a CVE on a node."""
        if body.remediation is None and body.alpha is None:
            raise InvalidRequestError("give a remediation level, an alpha, or both")
        report = engine.set_remediation(node_id, cve_id, body.remediation, body.alpha)
        return {"node": node_view(engine, node_id), "change": change_view(report)}

    @router.delete("/{node_id}/vulnerabilities/{cve_id}")
    def remove_vulnerability(node_id: str, cve_id: str) -> dict[str, Any]:
        report = engine.remove_vulnerability(node_id, cve_id)
        return {"node": node_view(engine, node_id), "change": change_view(report)}

    return router


def _link_router(engine: SecurePathEngine) -> APIRouter:
    router = APIRouter(prefix="/api/links", tags=["links"])

    @router.put("/{link_id}/state")
    def set_link_state(link_id: str, body: StateBody) -> dict[str, Any]:
        """Take a link down (its paths are re-routed) or bring it back."""
        return change_view(engine.set_link_state(link_id, body.up))

    return router


def _path_router(engine: SecurePathEngine) -> APIRouter:
    router = APIRouter(prefix="/api/paths", tags=["paths"])

    @router.get("")
    def list_paths() -> list[dict[str, Any]]:
        return [route_view(p) for p in engine.paths()]

    @router.post("", status_code=201)
    def install_path(body: PathRequestBody) -> dict[str, Any]:
        """Compute the path and install it, reserving its bandwidth (422 "No path" names the
        constraint that cannot be met)."""
        return route_view(engine.install(body.to_request()))

    @router.post("/compute")
    def compute_path(body: PathRequestBody) -> dict[str, Any]:
        """Compute without installing; ``found`` is false with the failing constraint when there
        is no path (a PCEP NO-PATH answer, RFC 5440 §7.5)."""
        request = body.to_request()
        outcome = engine.compute(request)
        if isinstance(outcome, NoPath):
            return {"found": False, "request": asdict(request), **asdict(outcome)}
        return {"found": True, "request": asdict(request), "route": asdict(outcome)}

    @router.post("/reoptimize")
    def reoptimize(body: ReoptimizeBody) -> dict[str, Any]:
        """Move installed paths (all, or the named ones) to their best route now."""
        return change_view(engine.reoptimize(body.names))

    @router.get("/{name}")
    def get_path(name: str) -> dict[str, Any]:
        return route_view(engine.path(name))

    @router.delete("/{name}")
    def delete_path(name: str) -> dict[str, Any]:
        """Tear the path down and free its bandwidth."""
        return route_view(engine.remove(name))

    return router


def _cve_router(nvd: NvdClient) -> APIRouter:
    router = APIRouter(prefix="/api/cves", tags=["NVD"])

    @router.get("/{cve_id}")
    def lookup(cve_id: str) -> JSONResponse:
        """A CVE as the engine scores it (preferred metric: NVD's Primary CVSS v3.1)."""
        try:
            vulnerability = nvd.lookup(cve_id)
        except UnknownCveError as exc:
            return problem_response(404, "Unknown CVE", str(exc))
        return JSONResponse(asdict(vulnerability) | {"nvd_notice": NVD_NOTICE})

    return router


def _event_router(engine: SecurePathEngine) -> APIRouter:
    router = APIRouter(prefix="/api/events", tags=["events"])

    @router.get("", response_class=StreamingResponse)
    async def events(
        request: Request,
        last_event_id: Annotated[str | None, Header()] = None,
        since: Annotated[int | None, Query(ge=0, description="replay the kept events after this seq")] = None,
    ) -> StreamingResponse:
        """Every change as Server-Sent Events (``event:`` is the kind, ``data:`` JSON). A reconnecting
        client's ``Last-Event-ID`` (or ``since``) replays the events it missed that are still kept."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)

        def put(event: Event) -> None:
            # A client 10,000 events behind loses the excess; it reloads the whole state on
            # every message it does get, so it still ends up right.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

        def deliver(event: Event) -> None:
            loop.call_soon_threadsafe(put, event)

        subscription = engine.subscribe(deliver)
        if last_event_id and last_event_id.isdigit():
            since = int(last_event_id)
        backlog = engine.events_since(since) if since is not None else []

        async def stream() -> AsyncIterator[str]:
            sent = since or 0
            try:
                yield f"retry: 2000\n: connected, last event {engine.last_event_seq}\n\n"
                for old in backlog:
                    sent = old.seq
                    yield event_frame(old)
                quiet = 0.0
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_SECONDS)
                    except TimeoutError:
                        # A closed page is only noticed on the next write, or by asking.
                        if await request.is_disconnected():
                            return
                        quiet += DISCONNECT_POLL_SECONDS
                        if quiet >= KEEP_ALIVE_SECONDS:
                            quiet = 0.0
                            yield ": keep-alive\n\n"
                        continue
                    if event.seq <= sent:
                        continue
                    sent = event.seq
                    yield event_frame(event)
            finally:
                subscription.close()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


def _transport_router(controller: TransportController) -> APIRouter:
    router = APIRouter(prefix="/api/transport", tags=["relays"])

    @router.get("")
    def transport() -> dict[str, Any]:
        """The relays the engine controls: their health, each site's path and ingress, the re-routes."""
        return controller.status()

    return router
