"""``paroma node patient-credential``: the one-time enrolment code a patient signs in to
the consent dashboard with (protection_layer/dashboard/sessions.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def patient_credential(
    folder: Annotated[Path, typer.Argument(help="the site folder")],
    patient: Annotated[str, typer.Argument(help="the patient's id in the site's FHIR store")],
    days: Annotated[int, typer.Option(min=1, max=90, help="days the code stays valid")] = 7,
) -> None:
    """Issue a one-time enrolment code for a patient's consent dashboard (printed once; the
    site keeps only its hash). Give it to the patient after checking their identity."""
    from clinical_node.fhir.errors import ResourceNotFound
    from clinical_node.site import Site, SiteError
    from protection_layer.dashboard import EnrolmentError, PatientSessions

    try:
        site = Site.open(folder)
    except SiteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        site.fhir.read("Patient", patient)
    except ResourceNotFound:
        typer.echo(f"error: {folder}: no Patient/{patient} in the site's FHIR store", err=True)
        raise typer.Exit(2) from None
    sessions = PatientSessions.for_site(site.root)
    try:
        enrolment = sessions.issue_code(patient, days=days)
    except EnrolmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        sessions.close()
        site.close()
    typer.echo(enrolment.code)
    typer.echo(
        f"one-time enrolment code for Patient/{patient}, valid until {enrolment.expires_at:%Y-%m-%d %H:%M} UTC; "
        "sign in at /patient/ on the site's node service",
        err=True,
    )
