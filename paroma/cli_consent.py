"""``paroma consent …`` and ``paroma audit …``: a site's consents and its audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

consent_app = typer.Typer(
    help="Patients' consents at a site, and the decisions made on them.", no_args_is_help=True
)
audit_app = typer.Typer(help="A site's tamper-evident audit log.", no_args_is_help=True)

JobOption = Annotated[
    Path | None, typer.Option("--job", help="a job spec (TOML); default: the demo's heart-disease job")
]
NowOption = Annotated[
    str | None, typer.Option("--now", help="decide at this instant (ISO 8601, UTC); default: now")
]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _layer(folder: Path) -> Any:
    from clinical_node.site import Site, SiteError
    from protection_layer import PolicyError, ProtectionLayer

    try:
        return ProtectionLayer(Site.open(folder))
    except (SiteError, PolicyError, OSError) as exc:
        fail(str(exc))


def _job(path: Path | None) -> Any:
    from paroma.demo import demo_job
    from paroma.jobspec import JobSpec, JobSpecError

    if path is None:
        return demo_job()
    try:
        return JobSpec.from_toml(path)
    except JobSpecError as exc:
        fail(f"{path}: {exc}")


def _now(text: str | None) -> str | None:
    from clinical_node.fhir.index import date_range, iso

    if text is None:
        return None
    try:
        return iso(date_range(text)[0])
    except ValueError:
        fail(f"--now {text!r} is not an ISO 8601 date or date-time")
    return None


@consent_app.command("load")
def load(
    folder: Path,
    files: Annotated[list[Path], typer.Argument(help="FHIR Consent or Bundle-of-Consent JSON files")],
) -> None:
    """Load FHIR R4 Consents into the site's consent store (each file whole or not at all)."""
    from clinical_node.fhir.errors import FhirError

    layer = _layer(folder)
    try:
        for path in files:
            try:
                document = json.loads(path.read_text())
                changes = layer.consents.ingest(document)
            except OSError as exc:
                fail(f"{path}: {exc.strerror}")
            except json.JSONDecodeError as exc:
                fail(f"{path}: not JSON: {exc}")
            except FhirError as exc:
                fail(f"{path}: refused, nothing stored: {exc}")
            created = sum(1 for c in changes if c.change == "created")
            typer.echo(
                f"{path}: {len(changes)} consents stored ({created} new, {len(changes) - created} new versions)"
            )
    finally:
        layer.close()


@consent_app.command("generate")
def generate(
    folder: Path,
    mix: Annotated[
        str | None,
        typer.Option(
            help="shares per kind, e.g. 'permit=0.8,opt_out=0.1,no_consent=0.1' (default: the realistic mix)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    now: NowOption = None,
    out: Annotated[Path | None, typer.Option(help="write the Bundle here instead of loading it")] = None,
) -> None:
    """Give the site's patients research consents in a realistic (or given) mix."""
    from collections import Counter

    from protection_layer import ConsentMix, ConsentMixError, generate_consents

    try:
        chosen = ConsentMix.parse(mix) if mix else ConsentMix()
    except ConsentMixError as exc:
        fail(str(exc))
    layer = _layer(folder)
    try:
        moment = datetime.fromisoformat(_now(now) or datetime.now(UTC).isoformat()).replace(tzinfo=UTC)
        drawn = generate_consents(
            layer.site.fhir.patients(),
            chosen,
            now=moment,
            seed=seed,
            custodian=layer.site.identity.organization or None,
        )
        resources = [g.resource for g in drawn if g.resource]
        kinds = Counter(g.kind for g in drawn)
        if out is not None:
            bundle = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in resources],
            }
            out.write_text(json.dumps(bundle, indent=1))
            typer.echo(f"wrote {len(resources)} consents to {out}")
        elif resources:
            layer.consents.put_many(resources)
            typer.echo(f"stored {len(resources)} consents")
        typer.echo("  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    finally:
        layer.close()


@consent_app.command("show")
def show(folder: Path, patient: str) -> None:
    """A patient's consents: every version of each, newest first."""
    layer = _layer(folder)
    try:
        current = layer.consents.for_patient(patient)
        if not current:
            typer.echo(f"patient {patient} has no consent at site {layer.site.site_id}")
        for consent in current:
            for version in layer.consents.history(consent["id"]):
                provision = version.get("provision") or {}
                purposes = ",".join(p.get("code", "") for p in provision.get("purpose", [])) or "any"
                rule = ",".join(
                    c.get("code", "") for c in (version.get("policyRule") or {}).get("coding", [])
                )
                typer.echo(
                    f"Consent/{version['id']} v{version['meta']['versionId']}  {version['status']:9s} "
                    f"{rule or '-':7s} type={provision.get('type', '-'):6s} purposes={purposes} "
                    f"dated {version.get('dateTime', '-')} nested={len(provision.get('provision', []))}"
                )
    finally:
        layer.close()


@consent_app.command("decide")
def decide_command(folder: Path, patient: str, job: JobOption = None, now: NowOption = None) -> None:
    """A patient's decision (PERMIT, DENY or NO_CONSENT) for a job, and why."""
    from protection_layer import PolicyError

    layer = _layer(folder)
    try:
        spec = _job(job)
        try:
            decision = layer.decide_patient(spec, patient, _now(now))
        except PolicyError as exc:
            fail(f"no decision (nothing would be released): {exc}", code=1)
        typer.echo(
            f"{decision.decision.value}  patient {patient}, job {spec.name} ({spec.purpose}, {spec.organization})"
        )
        typer.echo(f"  {decision.reason}")
        if decision.consent_id:
            typer.echo(f"  decided by Consent/{decision.consent_id} version {decision.consent_version}")
        if decision.obligations is not None and decision.obligations.restricts:
            for scope in decision.obligations.exclude:
                typer.echo(f"  redacts: {json.dumps(scope, sort_keys=True)}")
            for scope in decision.obligations.within:
                typer.echo(f"  releases only within: {json.dumps(scope, sort_keys=True)}")
    finally:
        layer.close()


@consent_app.command("cohort")
def cohort(folder: Path, job: JobOption = None, now: NowOption = None) -> None:
    """How many of the site's patients are PERMIT, DENY and NO_CONSENT for a job."""
    from protection_layer import PolicyError

    layer = _layer(folder)
    try:
        spec = _job(job)
        try:
            decision = layer.decide_cohort(spec, _now(now))
        except PolicyError as exc:
            fail(f"no decision (nothing would be released): {exc}", code=1)
        counts = decision.counts
        typer.echo(
            f"site {layer.site.site_id}, job {spec.name}: PERMIT {counts['PERMIT']}, DENY {counts['DENY']}, "
            f"NO_CONSENT {counts['NO_CONSENT']}; {decision.redacted} resources redacted; "
            f"{len(decision.resource_keys())} resources released (at {decision.now}, policies {decision.policy_version[:12]})"
        )
    finally:
        layer.close()


@consent_app.command("revoke")
def revoke(
    folder: Path,
    patient: str,
    purpose: Annotated[list[str], typer.Option(help="purpose(s) withdrawn (v3-ActReason)")] = ["HRESCH"],  # noqa: B006
) -> None:
    """Record a patient's withdrawal of research use (a refusal that supersedes earlier permits)."""
    import uuid

    from protection_layer import revocation

    layer = _layer(folder)
    try:
        if patient not in set(layer.site.fhir.patients()):
            fail(f"no patient {patient!r} at site {layer.site.site_id}")
        consent = revocation(
            f"withdrawal-{uuid.uuid4().hex[:12]}", patient, signed=datetime.now(UTC), purposes=purpose
        )
        change = layer.consents.put(consent)
        typer.echo(f"patient {patient}: Consent/{change.consent_id} refuses {', '.join(purpose)} from now on")
    finally:
        layer.close()


@consent_app.command("serve-opa")
def serve_opa(
    site: Annotated[
        Path | None, typer.Option(help="serve this site's policies (default: the built-in ones)")
    ] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8181,
) -> None:
    """Answer OPA's REST API with the embedded engine (for engine = "opa" without an OPA binary)."""
    import uvicorn

    from protection_layer import PolicySet
    from protection_layer.opa_api import create_opa_app

    policies = PolicySet.for_site(site) if site else PolicySet.builtin()
    uvicorn.run(create_opa_app(policies), host=host, port=port, log_level="warning")


@audit_app.command("verify")
def verify(folder: Path) -> None:
    """Check every entry's chain link, hash and Ed25519 signature, and the signed head."""
    from clinical_node.site import Site, SiteError
    from protection_layer import AuditLog
    from protection_layer.audit import AuditError

    try:
        site = Site.open(folder)
        result = AuditLog.for_site(site.root).verify()
    except (SiteError, AuditError) as exc:
        fail(str(exc))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}")
    if not result.ok:
        for problem in result.problems:
            typer.echo(f"TAMPERED: {problem}", err=True)
        typer.echo(
            f"audit log of site {site.site_id}: {len(result.problems)} problem(s) in {result.entries} entries",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(
        f"audit log of site {site.site_id}: {result.entries} entries, chain, signatures and head verified"
    )


@audit_app.command("list")
def list_entries(
    folder: Path,
    patient: Annotated[
        str | None, typer.Option(help="only what concerns this patient, reduced to their part")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="only entries of this kind")] = None,
    last: Annotated[int, typer.Option(min=0, help="only the last N entries (0: all)")] = 0,
) -> None:
    """The site's audit entries as JSON lines (or a patient's own)."""
    from clinical_node.site import Site, SiteError
    from protection_layer import AuditLog

    try:
        log = AuditLog.for_site(Site.open(folder).root)
    except SiteError as exc:
        fail(str(exc))
    entries: list[dict[str, Any]] = log.for_patient(patient) if patient else list(log.entries())
    if kind:
        entries = [e for e in entries if e.get("kind") == kind]
    for entry in entries[-last:] if last else entries:
        if not patient:
            entry = {k: v for k, v in entry.items() if k != "sig"}
        typer.echo(json.dumps(entry, sort_keys=True))
