"""``paroma up`` / ``down`` / ``status`` and ``paroma fed run``: the multi-process federation of
one federation config file on this machine (deploy/launcher.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from deploy.federation_config import FederationConfig
    from paroma.jobspec import JobSpec

fed_app = typer.Typer(help="Run jobs on a federation started with `paroma up`.", no_args_is_help=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="the federation config file (deploy/federations/local-4.toml)"),
]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(path: Path) -> FederationConfig:
    from deploy.federation_config import FederationConfigError, load_federation_config

    try:
        return load_federation_config(path)
    except FederationConfigError as exc:
        fail(str(exc))


def _job(
    job: Path | None, rounds: int | None, local_steps: int | None, round_timeout: float | None
) -> JobSpec:
    from dataclasses import replace

    from paroma.demo import demo_job
    from paroma.jobspec import JobSpec, JobSpecError

    try:
        spec = JobSpec.from_toml(job) if job is not None else demo_job(rounds or 3)
    except JobSpecError as exc:
        fail(f"{job}: {exc}")
    if rounds is not None:
        spec = replace(spec, rounds=rounds)
    if local_steps is not None:
        spec = replace(spec, training=replace(spec.training, local_steps=local_steps))
    if round_timeout is not None:
        spec = replace(spec, round_timeout_s=round_timeout)
    return spec


def up(
    config: ConfigOption,
    netns: Annotated[
        bool, typer.Option("--netns", help="each site's SuperNode in its own network namespace (root)")
    ] = False,
    run: Annotated[
        bool, typer.Option("--run", help="then run a job to completion (as `paroma fed run`)")
    ] = False,
    job: Annotated[Path | None, typer.Option(help="the job spec for --run (default: the demo job)")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="rounds of the --run job")] = None,
    local_steps: Annotated[
        int | None, typer.Option(min=1, help="local steps per round of the --run job")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=5, help="seconds each service may take to become healthy")
    ] = 180,
) -> None:
    """Start the federation: relays, Secure Traffic Engine, SuperLink (TLS, SuperNode auth), each
    site's FHIR API (HTTPS) and SuperNode (through its path's relays)."""
    from deploy.launcher import LaunchError, format_status
    from deploy.launcher import up as start

    cfg = _config(config)
    spec = _job(job, rounds, local_steps, None) if run else None
    try:
        rows = start(cfg, netns=netns, timeout_s=timeout, echo=typer.echo)
    except LaunchError as exc:
        typer.echo(f"error: {exc}", err=True)
        if exc.tail:
            typer.echo(f"--- last lines of {exc.service}'s log:\n{exc.tail}", err=True)
        raise typer.Exit(1) from None
    for line in format_status(rows):
        typer.echo(line)
    typer.echo(f"federation {cfg.name} is up; logs in {cfg.workdir / 'logs'}")
    if spec is not None:
        _run_and_report(cfg, spec, None)


def down(config: ConfigOption) -> None:
    """Stop every service of the federation (idempotent) and remove its network namespaces."""
    from deploy.launcher import down as stop_all

    cfg = _config(config)
    stopped = stop_all(cfg)
    typer.echo(f"stopped {len(stopped)} service(s)" + (f": {', '.join(stopped)}" if stopped else ""))


def status(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """One line per service: pid, address, health (probed now). Exit 1 if any is not up."""
    from dataclasses import asdict

    from deploy.launcher import format_status
    from deploy.launcher import status as probe_all

    cfg = _config(config)
    rows = probe_all(cfg)
    if not rows:
        typer.echo(f"federation {cfg.name} has not been started (`paroma up --config {config}`)")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        for line in format_status(rows):
            typer.echo(line)
    if not all(r.up for r in rows):
        raise typer.Exit(1)


@fed_app.command("run")
def fed_run(
    config: ConfigOption,
    job: Annotated[Path | None, typer.Option(help="the job spec (TOML); default: the demo job")] = None,
    rounds: Annotated[int | None, typer.Option(min=1)] = None,
    local_steps: Annotated[int | None, typer.Option(min=1)] = None,
    round_timeout: Annotated[float | None, typer.Option(min=1, help="seconds a round may take")] = None,
    out: Annotated[
        Path | None, typer.Option(help="the run's output folder (default: <workdir>/jobs/...)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=10, help="seconds to wait for the result")] = 3600,
) -> None:
    """Submit a job as a Flower run (Control API over TLS) and wait for its result."""
    cfg = _config(config)
    _run_and_report(cfg, _job(job, rounds, local_steps, round_timeout), out, timeout)


def _run_and_report(cfg: FederationConfig, spec: JobSpec, out: Path | None, timeout: float = 3600) -> None:
    from deploy.flower_jobs import JobRunError, submit, wait

    try:
        submitted = submit(cfg, spec, out=out)
        typer.echo(f"run {submitted.run_id} submitted; output in {submitted.out}")
        result = wait(cfg, submitted, timeout_s=timeout)
    except JobRunError as exc:
        fail(str(exc), 1)
    for r in result.get("rounds", []):
        sites = ", ".join(f"{k} {v['n_train']}" for k, v in r["sites"].items())
        typer.echo(
            f"round {r['round']}: {r['seconds']:.1f} s, mean accuracy {r['mean_accuracy']:.3f} ({sites})"
        )
    typer.echo(f"job {result.get('status')}{': ' + result['reason'] if result.get('reason') else ''}")
    typer.echo(f"result: {submitted.result_path}")
    if result.get("status") != "completed":
        raise typer.Exit(1)
