"""``paroma demo``: four hospitals' real heart-disease records as FHIR, consent enforced.

Builds four site stores from the UCI files (Cleveland, Hungary, Switzerland, Long Beach VA)
and gives their patients research consents in a realistic mix per site (most permit, some
opt out, some have none, some deny a data class or code, some have expired). Each site's
protection layer decides PERMIT / DENY / NO_CONSENT per patient; a FLamby
Fed-Heart-Disease job then runs on Flower's simulation runtime on the consented data only,
while one patient revokes mid-job and the next round's cohort shrinks by one. The same job
then runs with every patient consenting, and the demo prints each centre's test accuracy
under both beside FLamby's published numbers, and writes ``results.json`` and
``accuracy.png`` to the output folder.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator.federation import Admission, FederationResult, RoundResult
from clinical_node.datasets.uci_heart import HOSPITALS, hospital_bundle
from clinical_node.features import extract
from clinical_node.plans import TrainingPlan
from clinical_node.policy import SitePolicy
from clinical_node.site import Site
from paroma.flamby import BEST_FEDERATED, CENTRES, FLAMBY_HEART
from paroma.jobspec import JobSpec, parse_job_spec
from protection_layer import ConsentMix, ProtectionLayer, generate_consents, revocation

# The demo's job: the strategy benchmarks/heart_disease.py reports as PAROMA-MED's best under
# FLamby's protocol (15 rounds x 100 local steps, batch 4), chosen by cross-validation inside
# the training sets: FedAvg with site weights n**0.875, SGD lr 0.0959, L2 1.0 on the weights.
DEMO_STRATEGY: dict[str, Any] = {"name": "fedavg", "params": {"weight_exponent": 0.875}}
DEMO_TRAINING: dict[str, Any] = {
    "lr": 0.0959,
    "local_steps": 100,
    "batch_size": 4,
    "optimizer": "sgd",
    "weight_decay": 1.0,
}


# Each demo hospital admits health research (HRESCH) by the demo's research organisation,
# and only with the training in a sandbox process (the strongest this machine offers is
# used and printed; "subprocess" is the level every Linux machine reaches).
DEMO_ORGANIZATION = "Organization/paroma-research"
DEMO_POLICY = SitePolicy(purposes=("HRESCH",), organizations=(DEMO_ORGANIZATION,), min_isolation="subprocess")

# Each hospital's patients' research consents (shares per kind; protection_layer/consent_mix.py).
DEMO_MIXES: dict[str, ConsentMix] = {
    "cleveland": ConsentMix(
        permit=0.80, opt_out=0.06, no_consent=0.05, nested_deny=0.04, expired=0.03, other_purpose=0.02
    ),
    "hungarian": ConsentMix(
        permit=0.76, opt_out=0.08, no_consent=0.07, nested_deny=0.04, expired=0.03, other_purpose=0.02
    ),
    "switzerland": ConsentMix(
        permit=0.72, opt_out=0.10, no_consent=0.08, nested_deny=0.04, expired=0.04, other_purpose=0.02
    ),
    "va": ConsentMix(
        permit=0.78, opt_out=0.07, no_consent=0.06, nested_deny=0.04, expired=0.03, other_purpose=0.02
    ),
}
REVOKING_SITE = "cleveland"
# Where each hospital sits in the Secure Traffic Engine's demo network (its topology node).
DEMO_SITE_NODES = {
    "cleveland": "hospital-cleveland",
    "hungarian": "hospital-hungary",
    "switzerland": "hospital-switzerland",
    "va": "hospital-va",
}


@dataclass
class Revocation:
    site: str
    patient: str
    after_round: int
    permit_before: int = -1
    permit_after: int = -1


@dataclass
class DemoResult:
    out: Path
    federation: FederationResult
    seconds: float
    full_consent: FederationResult | None = None
    cohorts: dict[str, dict[str, int]] = field(default_factory=dict)
    revocation: Revocation | None = None
    transport: dict[str, Any] | None = None


def demo_transfer_planner() -> Any:
    """Each hospital's secure path to the aggregator on the demo network (the demo's CVEs loaded)."""
    from interconnect.pce import NvdClient, SecurePathEngine, load_scenario
    from interconnect.transfer import TransferPlanner

    return TransferPlanner(SecurePathEngine(*load_scenario("demo", NvdClient())), DEMO_SITE_NODES)


def demo_job(rounds: int = 15, strategy: dict[str, Any] | None = None, seed: int = 42) -> JobSpec:
    plan = TrainingPlan.builtin("logistic-regression")
    return parse_job_spec(
        {
            "name": "demo-heart-disease",
            "purpose": "HRESCH",
            "organization": DEMO_ORGANIZATION,
            "rounds": rounds,
            "min_sites": 2,
            "seed": seed,
            "data": {"spec": "flamby-heart-disease"},
            "plan": {"reference": plan.name, "sha256": plan.sha256},
            "strategy": strategy or DEMO_STRATEGY,
            "training": DEMO_TRAINING,
        }
    )


def build_demo_sites(
    root: Path, mixes: dict[str, ConsentMix] | None = None, *, now: datetime | None = None, seed: int = 2026
) -> list[Path]:
    """Create one site folder per hospital under ``root``, load its FHIR bundle and give
    its patients research consents (``mixes`` per site; default: every patient permits)."""
    sites: list[Path] = []
    moment = now or datetime.now(UTC)
    for key, hospital in HOSPITALS.items():
        site = Site.create(root / key, key, hospital.name, f"Organization/uci-{key}", DEMO_POLICY)
        site.fhir.ingest_bundle(hospital_bundle(key))
        site.plans.approve_builtin("logistic-regression", by="demo set-up")
        mix = (mixes or {}).get(key, ConsentMix.full())
        drawn = generate_consents(
            site.fhir.patients(),
            mix,
            now=moment,
            seed=seed + len(sites),
            custodian=site.identity.organization,
        )
        layer = ProtectionLayer(site)
        layer.consents.put_many([g.resource for g in drawn if g.resource])
        layer.close()
        site.close()
        sites.append(root / key)
    return sites


def consent_counts(site_dir: Path, job: JobSpec) -> dict[str, int]:
    """PERMIT / DENY / NO_CONSENT for the job at a site now, and the resources redacted."""
    site = Site.open(site_dir)
    layer = ProtectionLayer(site)
    try:
        decision = layer.decide_cohort(job)
        return {**decision.counts, "redacted": decision.redacted}
    finally:
        layer.close()
        site.close()


def revoke_one_patient(site_dir: Path, job: JobSpec) -> str:
    """A permitted patient with a complete record withdraws research use (a refusal dated
    now): from the next round on, the job's cohort at that site is one patient smaller."""
    site = Site.open(site_dir)
    layer = ProtectionLayer(site)
    try:
        decision = layer.decide_cohort(job)
        for patient in decision.permitted:
            resources = (
                site.fhir.read_many(decision.released[patient]) if patient in decision.released else []
            )
            if extract(job.feature_spec, resources).complete == 1:
                layer.consents.put(revocation(f"withdrawal-{patient}", patient, signed=datetime.now(UTC)))
                return patient
        raise RuntimeError(f"site {site.site_id} has no permitted patient with a complete record")
    finally:
        layer.close()
        site.close()


class _ProgressObserver:
    def __init__(
        self,
        console: Console,
        total: int,
        revoke: tuple[Path, JobSpec, int] | None = None,
        label: str = "rounds",
    ) -> None:
        self.console = console
        self.revoke = revoke
        self.revocation: Revocation | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(label, total=total, status="admission…")

    def admissions(self, admissions: list[Admission]) -> None:
        for a in admissions:
            mark = f"[green]{a.reason}[/]" if a.accepted else f"[red]refused[/]: {a.reason}"
            self.progress.console.print(f"  site {a.site_id}: {mark}")

    def round_started(self, server_round: int, total: int) -> None:
        self.progress.update(self.task, status=f"round {server_round} training…")

    def round_finished(self, result: RoundResult) -> None:
        if result.server_round == 1:
            for entry in result.sites.values():
                self.progress.console.print(
                    f"  site {entry.site_id}: trains in a [bold]{entry.isolation or 'unknown'}[/] sandbox"
                )
        self.progress.update(
            self.task,
            advance=1,
            status=f"round {result.server_round}: mean accuracy {result.mean_accuracy:.3f}",
        )
        if self.revoke is None:
            return
        site_dir, job, after = self.revoke
        site = site_dir.name
        permit = result.sites[site].cohort.get("permit", -1) if site in result.sites else -1
        if result.server_round == after:
            patient = revoke_one_patient(site_dir, job)
            self.revocation = Revocation(site, patient, after, permit_before=permit)
            self.progress.console.print(
                f"  after round {after}: patient [bold]{patient}[/] at {site} withdraws research consent "
                f"(cohort this round: {permit} PERMIT)"
            )
        elif self.revocation is not None and result.server_round == after + 1:
            self.revocation.permit_after = permit
            self.progress.console.print(
                f"  round {after + 1}: {site}'s cohort is {permit} PERMIT "
                f"({permit - self.revocation.permit_before:+d}; {self.revocation.patient} no longer included)"
            )


def _plot(result: FederationResult, path: Path, full: FederationResult | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rounds = [r.server_round for r in result.rounds]
    for site in CENTRES:
        values = [
            r.sites[site].evaluate.get("accuracy", float("nan")) if site in r.sites else float("nan")
            for r in result.rounds
        ]
        ax.plot(rounds, values, marker="o", markersize=3, label=site, alpha=0.8)
    ax.plot(
        rounds,
        [r.mean_accuracy for r in result.rounds],
        color="black",
        linewidth=2.2,
        label="mean, realistic consent",
    )
    if full is not None:
        ax.plot(
            [r.server_round for r in full.rounds],
            [r.mean_accuracy for r in full.rounds],
            color="black",
            linestyle=":",
            linewidth=2.0,
            label="mean, full consent",
        )
    ax.axhline(
        FLAMBY_HEART[BEST_FEDERATED]["mean"],
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"FLamby best federated ({BEST_FEDERATED})",
    )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.set_title("PAROMA-MED demo: Fed-Heart-Disease with consent enforced")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _accuracy(result: FederationResult | None, centre: str) -> tuple[str, str]:
    site = result.rounds[-1].sites.get(centre) if result and result.rounds else None
    if site is None:
        return "-", "absent"
    acc = site.evaluate.get("accuracy")
    return f"{site.n_train}/{site.n_test}", f"{acc:.3f}" if acc is not None else site.error


def results_table(result: FederationResult, full: FederationResult | None = None) -> Table:
    """Final-round test accuracy per centre: with the realistic consent mix, with full
    consent (when run), and FLamby's published numbers."""
    table = Table(title="Test accuracy per centre (final round)")
    table.add_column("centre")
    table.add_column("train/test", justify="right")
    table.add_column("sandbox")
    table.add_column("realistic consent", justify="right", style="bold")
    if full is not None:
        table.add_column("train/test", justify="right")
        table.add_column("full consent", justify="right", style="bold")
    for method in ("FedAvg", BEST_FEDERATED, "Pooled Training"):
        table.add_column(f"FLamby {method}", justify="right")
    final = result.rounds[-1] if result.rounds else None
    for centre in CENTRES:
        split, accuracy = _accuracy(result, centre)
        site = final.sites.get(centre) if final else None
        row = [centre, split, site.isolation if site else "-", accuracy]
        if full is not None:
            row += _accuracy(full, centre)
        row += [f"{FLAMBY_HEART[m][centre]:.3f}" for m in ("FedAvg", BEST_FEDERATED, "Pooled Training")]
        table.add_row(*row)
    means = ["mean", "", "", f"{result.rounds[-1].mean_accuracy:.4f}"]
    if full is not None:
        means += ["", f"{full.rounds[-1].mean_accuracy:.4f}"]
    means += [f"{FLAMBY_HEART[m]['mean']:.4f}" for m in ("FedAvg", BEST_FEDERATED, "Pooled Training")]
    table.add_row(*means)
    return table


def cohort_table(cohorts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="Consent decisions for the job, per site (protection layer, Rego)")
    for column in ("site", "PERMIT", "DENY", "NO_CONSENT", "redacted resources"):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, counts in cohorts.items():
        table.add_row(site, *(str(counts[k]) for k in ("PERMIT", "DENY", "NO_CONSENT", "redacted")))
    return table


def _run(
    job: JobSpec, sites: list[Path], observer: _ProgressObserver, console: Console, transfer: Any = None
) -> FederationResult:
    from deploy.simulation import run_simulated_job

    with observer.progress:
        result = run_simulated_job(job, sites, observer=observer, transfer=transfer)
    if result.status != "completed":
        console.print(f"[red]The job {result.status}: {result.reason}")
        raise SystemExit(1)
    return result


def run_demo(
    out: Path, *, rounds: int = 15, console: Console | None = None, compare_full_consent: bool = True
) -> DemoResult:
    # A wide console even when the output is not a terminal, so the tables keep their columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=150))
    start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("sites", "sites-full-consent"):
        if (out / folder).exists():
            shutil.rmtree(out / folder)
    job = demo_job(rounds)
    console.print(f"[bold]PAROMA-MED demo[/] — output folder: {out}")
    console.print(
        "Building four clinical-node stores from the UCI heart-disease files (FHIR R4), with research consents…"
    )
    sites = build_demo_sites(out / "sites", DEMO_MIXES)
    cohorts: dict[str, dict[str, int]] = {}
    for path in sites:
        site = Site.open(path)
        counts = site.fhir.counts()
        console.print(
            f"  {site.site_id:12s} {counts.get('Patient', 0):4d} patients, "
            f"{counts.get('Observation', 0):5d} observations (encrypted at rest)"
        )
        site.close()
        cohorts[path.name] = consent_counts(path, job)
    console.print(cohort_table(cohorts))
    console.print(
        f"Job [bold]{job.name}[/]: {job.strategy}, {job.rounds} rounds x {job.training.local_steps} local steps, "
        f"plan {job.plan} (sha256 {job.plan_sha256[:12]}…), purpose {job.purpose}, by {job.organization}"
    )
    revoke_after = max(1, min(rounds - 1, rounds // 3))
    observer = _ProgressObserver(
        console, job.rounds, (out / "sites" / REVOKING_SITE, job, revoke_after) if rounds > 1 else None,
        label="realistic consent",
    )  # fmt: skip
    transfer = demo_transfer_planner()
    result = _run(job, sites, observer, console, transfer)
    if transfer.rounds:
        for site_id, estimate in sorted(transfer.rounds[-1]["sites"].items()):
            route = " > ".join(estimate["path"]) or f"no path ({estimate['reason']})"
            exchange = (
                f"{estimate['transfer_s'] * 1000:.2f} ms" if estimate["transfer_s"] is not None else "-"
            )
            console.print(f"  {site_id:12s} model exchange per round {exchange} over {route}")
    full: FederationResult | None = None
    if compare_full_consent:
        console.print("The same job with every patient consenting (the full-consent baseline)…")
        full_sites = build_demo_sites(out / "sites-full-consent")
        full = _run(job, full_sites, _ProgressObserver(console, job.rounds, label="full consent"), console)
    console.print(results_table(result, full))
    console.print(
        "[dim]Each site trains and evaluates only on its consenting patients (its test split too), "
        "so the two columns are measured on different test sets.[/]"
    )
    (out / "results.json").write_text(
        json.dumps(
            {
                "job": job.to_dict(),
                "job_sha256": job.sha256,
                "consent_mix": {k: v.shares() for k, v in DEMO_MIXES.items()},
                "cohorts": cohorts,
                "revocation": observer.revocation.__dict__ if observer.revocation else None,
                "federation": result.to_dict(),
                "full_consent": full.to_dict() if full else None,
                "transport": transfer.as_dict(),
                "flamby_reference": FLAMBY_HEART,
            },
            indent=2,
        )
    )
    _plot(result, out / "accuracy.png", full)
    seconds = time.perf_counter() - start
    console.print(
        f"Wrote {out / 'results.json'} and {out / 'accuracy.png'} ({seconds:.0f} s). "
        f"Audit logs: paroma audit verify {out / 'sites' / REVOKING_SITE}"
    )
    return DemoResult(out, result, seconds, full, cohorts, observer.revocation, transfer.as_dict())
