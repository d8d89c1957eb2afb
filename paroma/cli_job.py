"""``paroma job …``: a data scientist's jobs (submit, status, watch, logs, cancel, pull) and
the job service itself (serve, token, schema).

The client commands talk to the job service over HTTP: ``--server`` / ``PAROMA_JOB_SERVER``
(default http://127.0.0.1:8600) with the bearer token of ``--token`` / ``PAROMA_JOB_TOKEN``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

job_app = typer.Typer(
    help="Federated training jobs: submit, follow, cancel, pull the model.", no_args_is_help=True
)

DEFAULT_SERVER = "http://127.0.0.1:8600"
FINAL = ("completed", "failed", "cancelled")

ServerOption = Annotated[
    str | None,
    typer.Option("--server", help=f"job service URL (env PAROMA_JOB_SERVER; default {DEFAULT_SERVER})"),
]
TokenOption = Annotated[str | None, typer.Option("--token", help="bearer token (env PAROMA_JOB_TOKEN)")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class _Client:
    def __init__(self, server: str | None, token: str | None) -> None:
        import httpx

        self.base = (server or os.environ.get("PAROMA_JOB_SERVER") or DEFAULT_SERVER).rstrip("/")
        secret = token or os.environ.get("PAROMA_JOB_TOKEN")
        if not secret:
            fail("no token: pass --token or set PAROMA_JOB_TOKEN (issued by 'paroma job token')")
        self._http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the job service at {self.base}: {exc}")
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = (
                    f"{body.get('title', '')}: {body['detail']}" if body.get("detail") else body.get("title")
                )
            except (ValueError, KeyError, AttributeError):
                detail = response.text[:300]
            fail(f"{method} {path}: {response.status_code} {detail}", 1)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def _mean(round_: dict[str, Any], key: str) -> float | None:
    values = [
        s["evaluate"][key]
        for s in round_.get("sites", {}).values()
        if isinstance(s.get("evaluate", {}).get(key), int | float)
    ]
    return sum(values) / len(values) if values else None


def _round_line(round_: dict[str, Any]) -> str:
    sites = ", ".join(
        f"{name} acc {_number(s.get('evaluate', {}).get('accuracy'))}"
        + (f" [{s['error']}]" if s.get("error") else "")
        for name, s in sorted(round_.get("sites", {}).items())
    )
    return (
        f"round {round_['round']}: mean accuracy {_number(_mean(round_, 'accuracy'))}, "
        f"mean loss {_number(_mean(round_, 'loss'))} ({sites})"
    )


def _admission_lines(job: dict[str, Any]) -> list[str]:
    lines = []
    for a in job["admissions"]:
        said = "" if a["reason"] in ("", "admitted") else f" — {a['reason']}"
        lines.append(f"  {a['site_id']}: {'admits' if a['accepted'] else 'refuses'}{said}")
    return lines


@job_app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="the job spec (TOML)")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Submit a job spec; prints the new job's id."""
    from paroma.jobspec import JobSpec, JobSpecError

    try:
        job = JobSpec.from_toml(spec)
    except JobSpecError as exc:
        fail(f"{spec}: invalid job spec: {exc}")
    created = _Client(server, token).json("POST", "/api/jobs", json=job.to_dict())
    typer.echo(created["id"])


@job_app.command("status")
def status(
    job_id: Annotated[str | None, typer.Argument(help="a job id; without one, every job you can see")] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the service's JSON answer")] = False,
) -> None:
    """A job's state, admissions with each site's reason, and rounds; or the list of jobs."""
    client = _Client(server, token)
    if job_id is None:
        jobs = client.json("GET", "/api/jobs")
        if as_json:
            typer.echo(json.dumps(jobs, indent=1))
            return
        for j in jobs:
            typer.echo(
                f"{j['id']}  {j['state']:9s}  {j['completed_rounds']}/{j['total_rounds']} rounds  "
                f"{j['name']}  owner {j['owner']}  {j['reason']}".rstrip()
            )
        return
    job = client.json("GET", f"/api/jobs/{job_id}")
    if as_json:
        typer.echo(json.dumps(job, indent=1))
        return
    typer.echo(f"{job['id']}  {job['name']}  owner {job['owner']}")
    typer.echo(f"state: {job['state']}" + (f" — {job['reason']}" if job["reason"] else ""))
    typer.echo(f"rounds: {job['completed_rounds']} of {job['total_rounds']} completed")
    if job["admissions"]:
        typer.echo("admission:")
        for line in _admission_lines(job):
            typer.echo(line)
    typer.echo(f"participating sites: {', '.join(job['participating_sites']) or '-'}")
    for r in job["rounds"]:
        typer.echo(_round_line(r))
    if job["model_id"]:
        typer.echo(f"model: {job['model_id']} (paroma job pull {job['id']} --out DIR)")


@job_app.command("watch")
def watch(
    job_id: str,
    server: ServerOption = None,
    token: TokenOption = None,
    interval: Annotated[float, typer.Option(min=0.05, help="seconds between polls")] = 1.0,
) -> None:
    """Follow a job to its end: a live progress bar, each round's metrics, the participating
    sites. Exit 0 when it completes, 1 when it fails or is cancelled."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    client = _Client(server, token)
    console = Console(highlight=False)
    job = client.json("GET", f"/api/jobs/{job_id}")
    shown_rounds = 0
    shown_admissions = False
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(job["name"], total=job["total_rounds"], state=job["state"])
        while True:
            if job["admissions"] and not shown_admissions:
                progress.console.print("admission:")
                for line in _admission_lines(job):
                    progress.console.print(line)
                progress.console.print(f"participating sites: {', '.join(job['participating_sites']) or '-'}")
                shown_admissions = True
            for r in job["rounds"][shown_rounds:]:
                progress.console.print(_round_line(r))
            shown_rounds = len(job["rounds"])
            state = job["state"] + (f" round {job['current_round']}" if job["state"] == "running" else "")
            progress.update(task, completed=job["completed_rounds"], state=state)
            if job["state"] in FINAL:
                break
            time.sleep(interval)
            job = client.json("GET", f"/api/jobs/{job_id}")
    if job["state"] == "completed":
        console.print(f"completed: model {job['model_id']}")
        return
    typer.echo(f"{job['state']}: {job['reason']}", err=True)
    raise typer.Exit(1)


@job_app.command("logs")
def logs(
    job_id: str,
    server: ServerOption = None,
    token: TokenOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
) -> None:
    """The job's log: submission, each site's admission answer, rounds, the end."""
    client = _Client(server, token)
    after = 0
    while True:
        for line in client.json("GET", f"/api/jobs/{job_id}/logs", params={"after": after}):
            typer.echo(f"{line['at']}  {line['message']}")
            after = line["seq"]
        if not follow or client.json("GET", f"/api/jobs/{job_id}")["state"] in FINAL:
            if follow:  # the last lines written before the end
                for line in client.json("GET", f"/api/jobs/{job_id}/logs", params={"after": after}):
                    typer.echo(f"{line['at']}  {line['message']}")
            return
        time.sleep(1.0)


@job_app.command("cancel")
def cancel(job_id: str, server: ServerOption = None, token: TokenOption = None) -> None:
    """Cancel a queued job, or a running one before its next round."""
    job = _Client(server, token).json("POST", f"/api/jobs/{job_id}/cancel")
    typer.echo(
        f"{job['id']}: {job['state']}"
        + (" (stops before its next round)" if job["state"] not in FINAL else "")
    )


@job_app.command("pull")
def pull(
    job_id: str,
    out: Annotated[Path, typer.Option("--out", help="folder for the weights and the model card")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Download the job's model: weights (.npz, checked against the registry's sha256) and its
    model card (Markdown and JSON)."""
    client = _Client(server, token)
    response = client.request("GET", f"/api/jobs/{job_id}/model")
    model_id = response.headers.get("X-Model-Id", job_id)
    expected = response.headers.get("X-Weights-Sha256", "")
    if hashlib.sha256(response.content).hexdigest() != expected:
        fail(f"the weights received for {model_id} do not match the registry's sha256 {expected}", 1)
    card = client.json("GET", f"/api/jobs/{job_id}/model-card")
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in (
            (f"{model_id}.npz", response.content),
            ("model-card.md", card["markdown"].encode()),
            ("model-card.json", (json.dumps(card["card"], indent=1) + "\n").encode()),
        ):
            tmp = out / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, out / name)
            written.append(out / name)
    except OSError as exc:
        fail(f"{out}: {exc.strerror}")
    for path in written:
        typer.echo(f"wrote {path}")


@job_app.command("token")
def token_cmd(
    root: Annotated[Path, typer.Option("--root", help="the job service's folder")],
    role: Annotated[str, typer.Option(help="data-scientist, site-admin or operator")],
    subject: Annotated[str, typer.Option(help="whose token: a person's or a service's name")],
) -> None:
    """Issue a job-service bearer token (printed once; the service keeps only its hash)."""
    from aggregator.jobs.auth import JobTokenStore, TokenError

    try:
        typer.echo(JobTokenStore(root / "keys" / "job-tokens.json").issue(role, subject))
    except (TokenError, OSError) as exc:
        fail(str(exc))


@job_app.command("schema")
def schema(out: Annotated[Path | None, typer.Option(help="write it to this file")] = None) -> None:
    """The job spec's JSON Schema."""
    from aggregator.jobs.schema import job_spec_schema

    text = json.dumps(job_spec_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"{out}: {exc.strerror}")
    typer.echo(f"wrote {out}")


@job_app.command("serve")
def serve(
    root: Annotated[
        Path, typer.Option("--root", help="the service's folder: job store, runs, registry, tokens")
    ],
    sites_root: Annotated[
        Path | None, typer.Option("--sites-root", help="run jobs here, over the site folders under this one")
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option(
            "--superlink", help="or as Flower runs: the SuperLink's Control API (its --host:--port)"
        ),
    ] = None,
    app_dir: Annotated[
        Path | None,
        typer.Option("--app", help="the Flower App submitted (default: one running this project's apps)"),
    ] = None,
    superlink_ca: Annotated[
        Path | None,
        typer.Option("--superlink-ca", help="CA of the SuperLink's TLS certificate (default: insecure)"),
    ] = None,
    expected_sites: Annotated[
        int, typer.Option("--expected-sites", min=0, help="SuperNodes a run waits for before admission")
    ] = 0,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8600,
    workers: Annotated[int, typer.Option(min=1, max=64, help="jobs run at the same time")] = 1,
) -> None:
    """Serve the job service (API, OpenAPI at /docs, and the data scientists' page at /)."""
    if (sites_root is None) == (superlink is None):
        fail("give exactly one of --sites-root DIR (local runner) or --superlink HOST:PORT")
    import uvicorn

    from aggregator.jobs.app import create_app
    from aggregator.jobs.runner import JobRunner, LocalRunner
    from aggregator.jobs.service import JobService

    runner: JobRunner
    if sites_root is not None:
        if not sites_root.is_dir():
            fail(f"--sites-root {sites_root}: not a folder")
        runner = LocalRunner(sites_root)
    else:
        from aggregator.jobs.superlink import SuperLinkRunner

        runner = SuperLinkRunner(
            str(superlink),
            root / "flwr-cli",
            app_dir=app_dir,
            root_certificates=superlink_ca,
            expected_sites=expected_sites,
        )
    try:
        service = JobService(root, runner, workers=workers)
    except OSError as exc:
        fail(f"{root}: {exc.strerror}")
    service.start()
    typer.echo(f"job service on http://{host}:{port} ({runner.name} runner, folder {root})", err=True)
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
    finally:
        service.stop()
