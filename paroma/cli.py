"""The ``paroma`` command line: one entry point, a command group per part of the platform."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from interconnect.pce.cli import pce_app
from paroma.cli_consent import audit_app, consent_app
from paroma.cli_deploy import deploy_app
from paroma.cli_discovery import catalog, feasibility
from paroma.cli_federation import down, fed_app, status, up
from paroma.cli_job import job_app
from paroma.cli_node_ops import join, keys, policy_app
from paroma.cli_pki import pki_app
from paroma.cli_registry import model_app
from paroma.cli_relay import relay_app
from paroma.cli_scenario import data_synthetic, scenario_app

app = typer.Typer(help="PAROMA-MED: federated learning with per-patient consent.", no_args_is_help=True)
node_app = typer.Typer(help="Run and administer a clinical node (a hospital's site).", no_args_is_help=True)
data_app = typer.Typer(help="Data sets and converters.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(data_app, name="data")
app.add_typer(consent_app, name="consent")
app.add_typer(audit_app, name="audit")
app.add_typer(pce_app, name="pce")
app.add_typer(pki_app, name="pki")
app.add_typer(relay_app, name="relay")
app.command("up")(up)
app.command("down")(down)
app.command("status")(status)
app.add_typer(fed_app, name="fed")
app.add_typer(scenario_app, name="scenario")
app.add_typer(deploy_app, name="deploy")
node_app.add_typer(policy_app, name="policy")
node_app.command("keys")(keys)
node_app.command("join")(join)
data_app.command("synthetic")(data_synthetic)
app.add_typer(job_app, name="job")
app.add_typer(model_app, name="model")
app.command("feasibility")(feasibility)
app.command("catalog")(catalog)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: ./paroma-output/demo-<time>)")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, max=200, help="federated rounds")] = 15,
) -> None:
    """Four hospitals' real heart-disease data as FHIR, one federated job, results and plot."""
    from paroma.demo import run_demo

    folder = out or Path("paroma-output") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    run_demo(folder, rounds=rounds)


@node_app.command("init")
def node_init(
    folder: Path,
    site_id: Annotated[str, typer.Option("--id", help="site id: lowercase letters, digits, '-'")],
    name: Annotated[str, typer.Option(help="the hospital's name")],
    organization: Annotated[str | None, typer.Option(help="FHIR reference of the organisation")] = None,
) -> None:
    """Create a site folder with its store key (0600)."""
    from clinical_node.site import Site, SiteError

    try:
        site = Site.create(folder, site_id, name, organization)
    except (SiteError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"site {site.site_id} initialised in {folder}")


@node_app.command("load")
def node_load(
    folder: Path, bundles: Annotated[list[Path], typer.Argument(help="FHIR Bundle JSON files")]
) -> None:
    """Load FHIR R4 Bundles into the site's store (each bundle whole or not at all)."""
    from clinical_node.fhir.errors import FhirError
    from clinical_node.site import Site, SiteError

    try:
        site = Site.open(folder)
    except SiteError as exc:
        fail(str(exc))
    for path in bundles:
        try:
            data = json.loads(path.read_text())
            refs = site.fhir.ingest_bundle(data)
        except OSError as exc:
            fail(f"{path}: {exc.strerror}")
        except json.JSONDecodeError as exc:
            fail(f"{path}: not JSON: {exc}")
        except FhirError as exc:
            fail(f"{path}: refused, nothing stored: {exc}")
        typer.echo(f"{path}: {len(refs)} resources stored")


@node_app.command("token")
def node_token(
    folder: Path,
    role: Annotated[str, typer.Option(help="site-admin, patient or aggregator")],
    subject: Annotated[str, typer.Option(help="patient id for a patient, a name otherwise")],
) -> None:
    """Issue an API bearer token (printed once; the site keeps only its hash)."""
    from clinical_node.auth import TokenError, TokenStore
    from clinical_node.site import Site, SiteError

    try:
        site = Site.open(folder)
        token = TokenStore(site.root / "keys" / "api-tokens.json").issue(role, subject)
    except (SiteError, TokenError) as exc:
        fail(str(exc))
    typer.echo(token)


# A patient's credential for the consent dashboard (protection_layer/dashboard).
from paroma.cli_dashboard import patient_credential  # noqa: E402

node_app.command("patient-credential")(patient_credential)


@node_app.command("approve-plan")
def approve_plan(
    folder: Path,
    plan: Annotated[str, typer.Argument(help="a plan file, or the name of a built-in plan with --builtin")],
    builtin: Annotated[bool, typer.Option(help="approve the built-in plan of that name")] = False,
    by: Annotated[str, typer.Option(help="who approves (recorded)")] = "site-admin",
) -> None:
    """Add a training plan to the site's allow-list (by its sha256)."""
    from clinical_node.plans import TrainingPlan, TrainingPlanError
    from clinical_node.site import Site, SiteError

    try:
        site = Site.open(folder)
        resolved = TrainingPlan.builtin(plan) if builtin else TrainingPlan.from_file(Path(plan))
        approval = site.plans.approve(resolved, by)
    except (SiteError, TrainingPlanError) as exc:
        fail(str(exc))
    except Exception as exc:  # the plan's own code failed to import
        fail(f"{plan}: the plan does not load: {type(exc).__name__}: {exc}")
    typer.echo(f"approved {approval.name} sha256 {approval.sha256}")


@node_app.command("revoke-plan")
def revoke_plan(folder: Path, sha256: str) -> None:
    """Remove a training plan from the site's allow-list."""
    from clinical_node.site import Site, SiteError

    try:
        revoked = Site.open(folder).plans.revoke(sha256)
    except SiteError as exc:
        fail(str(exc))
    if not revoked:
        fail(f"no approved plan has sha256 {sha256}")
    typer.echo(f"revoked {sha256}")


@node_app.command("list-plans")
def list_plans(folder: Path) -> None:
    """The site's approved training plans."""
    from clinical_node.site import Site, SiteError

    try:
        approvals = Site.open(folder).plans.approved()
    except SiteError as exc:
        fail(str(exc))
    for a in approvals:
        typer.echo(f"{a.sha256}  {a.name}  approved {a.approved_at} by {a.approved_by}")


@node_app.command("serve")
def node_serve(
    folder: Path,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    ssl_certfile: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="the certificate's private key (PEM)")] = None,
) -> None:
    """Serve the site's FHIR API (HTTPS with --ssl-certfile and --ssl-keyfile)."""
    import uvicorn

    from clinical_node.service import create_app
    from clinical_node.site import Site, SiteError

    if (ssl_certfile is None) != (ssl_keyfile is None):
        fail("--ssl-certfile and --ssl-keyfile go together")
    for option, path in (("--ssl-certfile", ssl_certfile), ("--ssl-keyfile", ssl_keyfile)):
        if path is not None and not path.is_file():
            fail(f"{option} {path}: no such file")
    try:
        site = Site.open(folder)
    except SiteError as exc:
        fail(str(exc))
    uvicorn.run(
        create_app(site),
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )


@data_app.command("uci-to-fhir")
def uci_to_fhir(
    hospital: Annotated[str, typer.Argument(help="cleveland, hungarian, switzerland or va")],
    out: Annotated[Path, typer.Option(help="where to write the Bundle JSON")],
) -> None:
    """Convert one UCI heart-disease hospital file to a FHIR R4 transaction Bundle."""
    from clinical_node.datasets.uci_heart import HOSPITALS, hospital_bundle

    if hospital not in HOSPITALS:
        fail(f"unknown hospital {hospital!r}; expected one of {', '.join(HOSPITALS)}")
    out.write_text(json.dumps(hospital_bundle(hospital), indent=1))
    typer.echo(f"wrote {out}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
