"""``paroma pce``: serve the Secure Traffic Engine, compute paths, inspect the topology, add CVEs.

``compute``, ``topology`` and ``add-cve`` work in-process on a topology (``--topology``, the
demo by default) or against a running engine (``--server URL``). Heavy imports stay inside the
commands so that ``paroma --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from interconnect.pce.engine import SecurePathEngine
    from interconnect.pce.nvd import NvdClient

pce_app = typer.Typer(
    help="Secure path engine: the Secure Traffic Engine GUI/API, path computation, vulnerabilities.",
    no_args_is_help=True,
)

TopologyOption = Annotated[
    str, typer.Option("--topology", "-t", help="built-in (demo, geant, kdl) or a .yaml/.json/.graphml file")
]
ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="a running engine, e.g. http://127.0.0.1:8585 (instead of --topology)"),
]
NvdOnline = Annotated[
    bool, typer.Option("--nvd-online/--nvd-offline", help="query the NVD API for unknown CVEs")
]
NvdCacheDir = Annotated[Path | None, typer.Option("--nvd-cache", help="folder caching NVD records")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _nvd(online: bool = False, cache: Path | None = None) -> NvdClient:
    from interconnect.pce.nvd import NvdClient

    return NvdClient(online=online, cache_dir=cache, api_key=os.environ.get("NVD_API_KEY"))


def _engine(topology: str, nvd: NvdClient) -> SecurePathEngine:
    from interconnect.pce.engine import SecurePathEngine
    from interconnect.pce.errors import PceError
    from interconnect.pce.scenario import load_scenario

    try:
        graph, exposures = load_scenario(topology, nvd)
        return SecurePathEngine(graph, exposures)
    except PceError as exc:
        fail(str(exc))


def _call(server: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    try:
        response = httpx.request(method, server.rstrip("/") + path, json=body, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the engine at {server}: {exc}")
    try:
        data = response.json()
    except ValueError:
        fail(f"{server}{path} answered {response.status_code} without JSON")
    if response.status_code >= 400:
        detail = data.get("detail") or data.get("title") if isinstance(data, dict) else data
        constraint = data.get("constraint") if isinstance(data, dict) else None
        fail(f"{detail}{f' [{constraint}]' if constraint else ''}")
    return data


@pce_app.command()
def serve(
    topology: TopologyOption = "demo",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8585,
    nvd_online: NvdOnline = False,
    nvd_cache: NvdCacheDir = None,
    relays: Annotated[
        Path | None,
        typer.Option(
            "--relays", help="also control the relays described in this TOML file (interconnect.relay)"
        ),
    ] = None,
) -> None:
    """Serve the Secure Traffic Engine GUI and REST API (http://localhost:8585, OpenAPI at /docs).

    With --relays the engine is also the relays' controller: it installs each site's path, pushes
    the routes to the relays and moves them when paths move (state at /api/transport)."""
    import uvicorn

    from interconnect.pce.nvd import NVD_NOTICE
    from interconnect.pce.service import create_app

    nvd = _nvd(nvd_online, nvd_cache)
    engine = _engine(topology, nvd)
    controller = None
    if relays is not None:
        from interconnect.relay.controller import ControllerError
        from interconnect.relay.controller_config import (
            ControllerConfigError,
            controller_from_config,
            load_controller_config,
        )

        try:
            controller = controller_from_config(engine, load_controller_config(relays))
        except (ControllerConfigError, ControllerError) as exc:
            fail(str(exc))
        import logging

        # The controller's log: re-routes, how fast traffic left the old route, dead relays.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        relay_log = logging.getLogger("paroma.relay")
        relay_log.addHandler(handler)
        relay_log.setLevel(logging.INFO)
    typer.echo(
        f"Secure Traffic Engine on http://{host}:{port} — {engine.topology.name}: "
        f"{len(engine.topology.nodes)} nodes, {len(engine.topology.links)} links"
    )
    typer.echo(NVD_NOTICE)
    # Open GUIs hold an event stream each: do not wait for them on Ctrl-C.
    uvicorn.run(
        create_app(engine, nvd, controller=controller),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


@pce_app.command()
def compute(
    source: Annotated[str, typer.Argument(help="ingress node id")],
    destination: Annotated[str, typer.Argument(help="egress node id")],
    bandwidth: Annotated[float, typer.Option("--bandwidth", "-b", help="required bandwidth, Mbit/s")],
    max_delay: Annotated[float, typer.Option("--max-delay", "-d", help="maximum end-to-end delay, µs")],
    threshold: Annotated[
        float, typer.Option("--threshold", "-s", help="minimum security index; 0 = classic CSPF")
    ] = 0.0,
    name: Annotated[str, typer.Option(help="path name")] = "cli",
    install: Annotated[bool, typer.Option(help="install the path (with --server)")] = False,
    topology: TopologyOption = "demo",
    server: ServerOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Compute a secure path; exit status 1 when there is no path (the reason names the constraint)."""
    from dataclasses import asdict

    from interconnect.pce.errors import PceError
    from interconnect.pce.routing import NoPath, PathRequest

    body = {
        "name": name,
        "source": source,
        "destination": destination,
        "bandwidth_mbps": bandwidth,
        "max_delay_us": max_delay,
        "min_security": threshold,
    }
    if server:
        if install:
            answer = {"found": True, "route": _call(server, "POST", "/api/paths", body)["route"]}
        else:
            answer = _call(server, "POST", "/api/paths/compute", body)
    else:
        if install:
            fail("--install needs --server (an in-process engine ends with the command)")
        engine = _engine(topology, _nvd())
        try:
            outcome = engine.compute(PathRequest(**body))  # type: ignore[arg-type]
        except PceError as exc:
            fail(str(exc))
        answer = (
            {"found": False, **asdict(outcome)}
            if isinstance(outcome, NoPath)
            else {"found": True, "route": asdict(outcome)}
        )
    if as_json:
        typer.echo(json.dumps(answer, indent=1))
    elif answer["found"]:
        r = answer["route"]
        typer.echo(" -> ".join(r["nodes"]))
        typer.echo(
            f"delay {r['delay_us']:.1f} µs, lowest SI {r['min_security_index']:.2f}, "
            f"bottleneck {r['bottleneck_mbps']:g} Mbit/s, path security {r['path_security']:.2f} %"
        )
    else:
        typer.echo(f"no path [{answer['constraint']}]: {answer['reason']}")
    if not answer["found"]:
        raise typer.Exit(1)


@pce_app.command("topology")
def show_topology(
    topology: TopologyOption = "demo",
    server: ServerOption = None,
    links: Annotated[bool, typer.Option("--links", help="list the links too")] = False,
) -> None:
    """The nodes with their security index and CVEs (and the links with --links)."""
    from rich.console import Console
    from rich.table import Table

    from interconnect.pce.nvd import NVD_NOTICE

    if server:
        view = _call(server, "GET", "/api/topology")
    else:
        from interconnect.pce.service import topology_view

        view = topology_view(_engine(topology, _nvd()))
    console = Console()
    table = Table(title=f"{view['name']}: {len(view['nodes'])} nodes, {len(view['links'])} links")
    for column in ("node", "name", "kind", "up", "SI", "CVEs", "max CVSS"):
        table.add_column(column)
    for n in view["nodes"]:
        table.add_row(
            n["id"],
            n["name"],
            n["kind"],
            "yes" if n["up"] else "DOWN",
            f"{n['security_index']:.2f}",
            str(n["vulnerabilities"]),
            "" if n["max_cvss"] is None else f"{n['max_cvss']:.1f}",
        )
    console.print(table)
    if links:
        link_table = Table(title="links")
        for column in ("link", "capacity Mbit/s", "reserved", "delay µs", "up"):
            link_table.add_column(column)
        for link in view["links"]:
            link_table.add_row(
                link["id"],
                f"{link['capacity_mbps']:g}",
                f"{link['reserved_mbps']:g}",
                f"{link['delay_us']:.1f}",
                "yes" if link["up"] else "DOWN",
            )
        console.print(link_table)
    if any(n["vulnerabilities"] for n in view["nodes"]):
        typer.echo(NVD_NOTICE)


@pce_app.command("add-cve")
def add_cve(
    node: Annotated[str, typer.Argument(help="node id")],
    cve_id: Annotated[str, typer.Argument(help="CVE id, e.g. CVE-2022-36786")],
    remediation: Annotated[float, typer.Option(help="remediation level RE >= 1")] = 1.0,
    alpha: Annotated[float, typer.Option(help="tuning weight alpha > 0")] = 1.0,
    vector: Annotated[
        str | None, typer.Option(help="CVSS v3.x vector (otherwise looked up in NVD data)")
    ] = None,
    score: Annotated[float | None, typer.Option(help="base score, checked against the vector")] = None,
    topology: TopologyOption = "demo",
    server: ServerOption = None,
    nvd_online: NvdOnline = False,
) -> None:
    """Add a CVE to a node: on a running engine (--server), or in-process to see the SI change."""
    from interconnect.pce.cve import vulnerability_from_vector
    from interconnect.pce.errors import PceError
    from interconnect.pce.nvd import NVD_NOTICE

    if server:
        body: dict[str, Any] = {"cve_id": cve_id, "remediation": remediation, "alpha": alpha}
        if vector is not None:
            body.update(vector=vector, base_score=score)
        answer = _call(server, "POST", f"/api/nodes/{node}/vulnerabilities", body)
        change = answer["change"]
    else:
        nvd = _nvd(nvd_online)
        engine = _engine(topology, nvd)
        try:
            found = vulnerability_from_vector(cve_id, vector, score) if vector else nvd.lookup(cve_id)
            change = engine.add_vulnerability(node, found, remediation, alpha).as_dict()
        except PceError as exc:
            fail(str(exc))
    for node_id, values in change["security_index_changes"].items():
        typer.echo(f"SI {node_id}: {values['old']:.2f} -> {values['new']:.2f}")
    for path in change["rerouted"]:
        typer.echo(f"path {path['name']} moved: {' -> '.join(path['route']['nodes'])}")
    for path in change["unroutable"]:
        typer.echo(f"path {path['name']} unroutable: {path['reason']}")
    typer.echo(NVD_NOTICE)


@pce_app.command()
def cve(
    cve_id: Annotated[str, typer.Argument(help="CVE id")],
    nvd_online: NvdOnline = False,
    nvd_cache: NvdCacheDir = None,
) -> None:
    """Look a CVE up (local NVD data, cache, NVD API when online) and show how it is scored."""
    from interconnect.pce.errors import PceError
    from interconnect.pce.nvd import NVD_NOTICE

    try:
        found = _nvd(nvd_online, nvd_cache).lookup(cve_id)
    except PceError as exc:
        fail(str(exc))
    typer.echo(f"{found.cve_id}  CVSS {found.base_score:.1f} {found.severity}  {found.vector}")
    typer.echo(f"metric: {found.metric}; last modified {found.last_modified}")
    if found.description:
        typer.echo(found.description)
    typer.echo(NVD_NOTICE)


@pce_app.command()
def paths(server: Annotated[str, typer.Option(help="a running engine")] = "http://127.0.0.1:8585") -> None:
    """The paths installed on a running engine."""
    for p in _call(server, "GET", "/api/paths"):
        route = " -> ".join(p["route"]["nodes"]) if p["route"] else f"UNROUTABLE: {p['reason']}"
        typer.echo(f"{p['name']}  v{p['version']}  {p['status']}  {route}")
