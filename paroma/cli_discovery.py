"""``paroma feasibility`` and ``paroma catalog``: what data the sites hold and how much of
it a study could use, asked of the sites' services (``--sites sites.toml``) or of site
folders directly (``--site-dir DIR``, for a site's own staff or a local federation)."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

SitesOption = Annotated[
    Path | None, typer.Option("--sites", help="sites.toml: the nodes' URLs and aggregator tokens")
]
SiteDirOption = Annotated[
    list[Path] | None, typer.Option("--site-dir", help="a site folder, asked directly (repeatable)")
]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _endpoints(sites: Path | None, site_dirs: list[Path] | None) -> Any:
    from aggregator.sites import SitesError, load_sites

    if (sites is None) == (not site_dirs):
        fail("give either --sites FILE or one or more --site-dir DIR")
    if sites is None:
        for folder in site_dirs or []:
            if not (folder / "site.toml").is_file():
                fail(f"--site-dir {folder}: not a site folder (no site.toml)")
        return None
    try:
        return load_sites(sites)
    except SitesError as exc:
        fail(f"--sites {sites}: {exc}")


def _code(text: str) -> dict[str, Any]:
    system, bar, code = text.rpartition("|")
    if not code:
        fail(f"--code {text!r}: expected CODE or SYSTEM|CODE")
    return {"system": system if bar else None, "code": code}


def feasibility(
    purpose: Annotated[str, typer.Option(help="v3-ActReason purpose of use, e.g. HRESCH")],
    organization: Annotated[str, typer.Option(help="the requesting organisation")],
    sites: SitesOption = None,
    site_dir: SiteDirOption = None,
    spec: Annotated[
        str | None, typer.Option(help="a built-in feature spec (default flamby-heart-disease)")
    ] = None,
    resource_type: Annotated[
        str | None, typer.Option("--resource-type", help="instead of --spec: the resource type")
    ] = None,
    code: Annotated[
        list[str] | None, typer.Option("--code", help="with --resource-type: SYSTEM|CODE")
    ] = None,
    request_consent: Annotated[
        str | None, typer.Option("--request-consent", help="queue a consent request for this study")
    ] = None,
    message: Annotated[str, typer.Option(help="the consent request's text for the patient")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    timeout: Annotated[float, typer.Option(min=1, max=600, help="seconds to wait for each site")] = 30.0,
) -> None:
    """Per site: patients usable / needing consent / unknown / refused for a cohort; small counts as "<k"."""
    from aggregator.feasibility import combine, query_feasibility

    endpoints = _endpoints(sites, site_dir)
    if resource_type is not None and spec is not None:
        fail("give either --spec or --resource-type with --code, not both")
    query: dict[str, Any] = {"purpose": purpose, "organization": organization}
    if resource_type is not None:
        query.update(resource_type=resource_type, codes=[_code(c) for c in code or []])
    else:
        if code:
            fail("--code needs --resource-type")
        query["spec"] = spec or "flamby-heart-disease"
    if request_consent is not None:
        query["consent_request"] = {"study": request_consent, "message": message}
    if endpoints is not None:
        report = query_feasibility(endpoints, query, timeout=timeout)
    else:
        answers, failed = _local_feasibility(site_dir or [], query)
        report = combine(answers, failed)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_feasibility(report)
    if report.failed and not report.sites:
        raise typer.Exit(1)


def _local_feasibility(folders: list[Path], query: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    from clinical_node.site import Site, SiteError
    from protection_layer.engine import PolicyError
    from protection_layer.feasibility import FeasibilityError, answer_feasibility, parse_query
    from protection_layer.layer import ProtectionLayer

    try:
        parsed = parse_query(query)
    except FeasibilityError as exc:
        fail(str(exc))
    answers: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for folder in folders:
        try:
            site = Site.open(folder)
        except SiteError as exc:
            fail(str(exc))
        try:
            layer = ProtectionLayer(site)
            try:
                answers[site.site_id] = answer_feasibility(
                    layer, parsed, requester=f"local:{getpass.getuser()}"
                ).to_dict()
            finally:
                layer.close()
        except PolicyError as exc:
            failed[site.site_id] = f"no consent decision could be made: {exc}"
        finally:
            site.close()
    return answers, failed


def _print_feasibility(report: Any) -> None:
    from rich.table import Table

    from aggregator.feasibility import CLASSES

    table = Table("site", "k", *[c.replace("_", " ") for c in CLASSES], "consent requests queued")
    for site, answer in report.sites.items():
        queued = answer.get("consent_requests")
        table.add_row(
            site,
            str(answer.get("k")),
            *[str(answer["counts"][c]) for c in CLASSES],
            "-" if queued is None else str(queued),
        )
    for site in report.failed:
        table.add_row(site, "-", *["-"] * len(CLASSES), "-")
    table.add_section()
    table.add_row("total", "", *[report.totals[c].display for c in CLASSES], "")
    console = _console()
    console.print(table)
    for site, error in report.failed.items():
        console.print(f"{site}: did not answer: {error}")


def catalog(
    sites: SitesOption = None,
    site_dir: SiteDirOption = None,
    resource_type: Annotated[
        str | None, typer.Option("--resource-type", help="only this resource type's rows")
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="with --site-dir: publish the site's catalogue now")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the DCAT catalogue as JSON-LD")] = False,
    timeout: Annotated[float, typer.Option(min=1, max=600, help="seconds to wait for each site")] = 30.0,
) -> None:
    """What each site holds: resource types and codes with counts and years (small counts as "<k")."""
    from aggregator.catalogue import FederationCatalogue, gather_catalogues

    endpoints = _endpoints(sites, site_dir)
    if rebuild and endpoints is not None:
        fail("--rebuild works on site folders (--site-dir); sites publish on their own schedule")
    if endpoints is not None:
        gathered = gather_catalogues(endpoints, timeout=timeout)
    else:
        gathered = FederationCatalogue(_local_catalogues(site_dir or [], rebuild), {})
    if as_json:
        typer.echo(json.dumps(gathered.to_dict(), indent=2, sort_keys=True))
    else:
        _print_catalogue(gathered, resource_type)
    if gathered.failed and not gathered.catalogues:
        raise typer.Exit(1)


def _local_catalogues(folders: list[Path], rebuild: bool) -> dict[str, dict[str, Any]]:
    from clinical_node.catalogue import CatalogueError, CataloguePublisher
    from clinical_node.site import Site, SiteError

    out: dict[str, dict[str, Any]] = {}
    for folder in folders:
        try:
            site = Site.open(folder)
        except SiteError as exc:
            fail(str(exc))
        try:
            publisher = CataloguePublisher(site)
            if rebuild:
                publisher.publish()
            out[site.site_id] = publisher.current()
        except CatalogueError as exc:
            fail(str(exc))
        finally:
            site.close()
    return out


def _print_catalogue(gathered: Any, resource_type: str | None) -> None:
    from rich.table import Table

    table = Table("site", "resource type", "code", "display", "patients", "resources", "years", "published")
    # the code without its system (in the JSON form) keeps the table readable
    for row in gathered.rows():
        if resource_type and row["resource_type"] != resource_type:
            continue
        code = row["code"] or "(all)"
        table.add_row(
            row["site"],
            row["resource_type"],
            code,
            row["display"],
            str(row["patients"]),
            str(row["resources"]),
            row["years"],
            row["published"],
        )
    console = _console()
    console.print(table)
    for site, error in gathered.failed.items():
        console.print(f"{site}: did not answer: {error}")
