"""``paroma scenario ...`` (researchers' simulated federations) and ``paroma data synthetic``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

scenario_app = typer.Typer(
    help="Scenarios: simulated federations with events, and their reports.", no_args_is_help=True
)

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "scenarios"


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(file: Path) -> object:
    from deploy.scenario import ScenarioError, load_scenario

    path = file if file.exists() or file.suffix else SHIPPED / f"{file}.toml"
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        lines = "; ".join(f"{f}: {m}" for f, m in exc.problems)
        _fail(f"{path}: {lines}")
    raise AssertionError("unreachable")


@scenario_app.command("list")
def list_scenarios() -> None:
    """The scenarios shipped in deploy/scenarios/."""
    from deploy.scenario import load_scenario

    for path in sorted(SHIPPED.glob("*.toml")):
        s = load_scenario(path)
        typer.echo(f"{path.stem:18s} {s.description}")


@scenario_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="a scenario TOML file, or a shipped scenario's name")],
) -> None:
    """Validate a scenario file (every problem is named) and its network."""
    from deploy.scenario import Scenario, ScenarioError
    from deploy.scenario_run import Network, scenario_job

    scenario = _load(file)
    assert isinstance(scenario, Scenario)
    try:
        scenario_job(scenario)
        if any(s.node for s in scenario.sites):
            Network(scenario)
    except ScenarioError as exc:
        _fail(f"{file}: " + "; ".join(f"{f}: {m}" for f, m in exc.problems))
    typer.echo(
        f"{file}: scenario {scenario.name} is valid ({len(scenario.sites)} sites, {scenario.rounds} rounds)"
    )


@scenario_app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="a scenario TOML file, or a shipped scenario's name")],
    out: Annotated[
        Path | None, typer.Option(help="output folder (default ./paroma-output/scenario-<name>-<time>)")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, max=1000, help="run over N rounds (events keep their relative place)")
    ] = None,
    local_steps: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="override the job's local steps")
    ] = None,
    deploy: Annotated[
        bool, typer.Option("--deploy", help="run on the multi-process federation (paroma up)")
    ] = False,
) -> None:
    """Run a scenario on the in-process runtime and write report.html and run.json."""
    from deploy.scenario import Scenario, ScenarioError
    from deploy.scenario_run import reduced, run_scenario

    scenario = _load(file)
    assert isinstance(scenario, Scenario)
    if rounds is not None:
        scenario = reduced(scenario, rounds)
    folder = out or Path("paroma-output") / f"scenario-{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if deploy:
        from deploy.scenario_deploy import DeployUnavailable, run_deployed, unsupported

        if unsupported(scenario):
            _fail(
                f"scenario {scenario.name}: --deploy does not run " + "; ".join(unsupported(scenario))
                + "; run it without --deploy (in-process runtime)"
            )  # fmt: skip
        try:
            result = run_deployed(scenario, folder, local_steps=local_steps, progress=typer.echo)
        except DeployUnavailable as exc:
            _fail(str(exc), 1)
        except ScenarioError as exc:
            _fail(f"{file}: " + "; ".join(f"{f}: {m}" for f, m in exc.problems))
        _summary(scenario.name, result)
        return
    try:
        result = run_scenario(scenario, folder, local_steps=local_steps, progress=typer.echo)
    except ScenarioError as exc:
        _fail(f"{file}: " + "; ".join(f"{f}: {m}" for f, m in exc.problems))
    _summary(scenario.name, result)


def _summary(name: str, result: object) -> None:
    from deploy.scenario_run import ScenarioRun

    assert isinstance(result, ScenarioRun)
    fed = result.federation
    typer.echo(
        f"{name}: {fed.status}"
        + (f" ({fed.reason})" if fed.reason else "")
        + (f", final mean accuracy {fed.rounds[-1].mean_accuracy:.3f}" if fed.rounds else "")
    )
    typer.echo(f"wrote {result.out / 'report.html'} and {result.out / 'run.json'} ({result.seconds:.0f} s)")
    if fed.status != "completed":
        raise typer.Exit(1)


def data_synthetic(
    sites: Annotated[int, typer.Option(min=1, max=10_000, help="number of sites")] = 4,
    patients: Annotated[int, typer.Option(min=1, max=1_000_000, help="patients per site")] = 1000,
    out: Annotated[Path, typer.Option(help="folder for the bundles (one <site>.json per site)")] = Path(
        "paroma-output/synthetic"
    ),
    seed: Annotated[int, typer.Option(min=0, help="the same seed gives the same data")] = 0,
) -> None:
    """Synthetic heart-disease patients as FHIR R4 transaction Bundles (load with `paroma node load`)."""
    from clinical_node.datasets.synthetic import profile_of, site_id, synthetic_site_bundle

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"--out {out}: {exc.strerror}")
    for i in range(sites):
        bundle = synthetic_site_bundle(i, patients, seed)
        path = out / f"{site_id(i)}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(bundle, separators=(",", ":")))
        tmp.replace(path)
        typer.echo(f"{path}: {patients} patients, {len(bundle['entry'])} resources ({profile_of(i)} profile)")
