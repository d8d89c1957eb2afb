"""``paroma model …``: the aggregator's model registry (list, show, card, promote, retire, verify)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

model_app = typer.Typer(
    help="The model registry: trained models, their provenance and cards.", no_args_is_help=True
)

RegistryOption = Annotated[Path, typer.Option("--registry", help="the registry folder")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _registry(folder: Path, *, must_exist: bool = True) -> Any:
    from aggregator.registry import ModelRegistry

    if must_exist and not folder.is_dir():
        fail(f"--registry {folder}: no such folder")
    if must_exist and any(folder.iterdir()) and not (folder / "log").is_dir():
        fail(f"--registry {folder}: not a model registry (no log/ folder)")
    return ModelRegistry(folder)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from aggregator.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        fail(str(exc))


@model_app.command("list")
def model_list(
    registry: RegistryOption,
    owner: Annotated[str | None, typer.Option(help="only this owner's models")] = None,
) -> None:
    """The registered models, oldest first."""
    from rich.console import Console
    from rich.table import Table

    models = _call(_registry(registry).list, owner)
    table = Table("job", "owner", "state", "created", "final mean accuracy")
    # the id is what the other commands take: never wrapped or cut
    table.add_column("model", no_wrap=True, overflow="ignore")
    for m in models:
        metrics = m.provenance.get("metrics") or [{}]
        acc = metrics[-1].get("mean_accuracy")
        table.add_row(
            m.model_id, m.job_name, m.owner, m.state, m.created, "n/a" if acc is None else f"{acc:.3f}"
        )
    # a table wide enough for whole ids when the output is not a terminal (pipes, scripts)
    (Console() if sys.stdout.isatty() else Console(width=200)).print(table)


@model_app.command("show")
def model_show(model_id: str, registry: RegistryOption) -> None:
    """A model's record with its full provenance, as JSON."""
    model = _call(_registry(registry).get, model_id)
    typer.echo(json.dumps(model.to_dict(), indent=2, sort_keys=True))


@model_app.command("card")
def model_card(
    model_id: str,
    registry: RegistryOption,
    as_json: Annotated[bool, typer.Option("--json", help="the card as JSON instead of Markdown")] = False,
) -> None:
    """A model's card (Markdown, or JSON with --json)."""
    markdown, card = _call(_registry(registry).model_card, model_id)
    typer.echo(json.dumps(card, indent=2, sort_keys=True) if as_json else markdown, nl=as_json)


@model_app.command("promote")
def model_promote(
    model_id: str,
    registry: RegistryOption,
    to: Annotated[str, typer.Option("--to", help="validated or released")],
    by: Annotated[str, typer.Option("--by", help="who promotes it")],
) -> None:
    """Move a model forward: registered → validated → released."""
    if to not in ("validated", "released"):
        fail(f"--to {to!r}: expected validated or released (use `paroma model retire` to retire)")
    model = _call(_registry(registry).transition, model_id, to, by=by)
    typer.echo(f"model {model.model_id} is {model.state}")


@model_app.command("retire")
def model_retire(
    model_id: str,
    registry: RegistryOption,
    by: Annotated[str, typer.Option("--by", help="who retires it")],
) -> None:
    """Retire a model: it can no longer be pulled."""
    model = _call(_registry(registry).transition, model_id, "retired", by=by)
    typer.echo(f"model {model.model_id} is {model.state}")


@model_app.command("verify")
def model_verify(registry: RegistryOption) -> None:
    """Check the registry's signed log and every weights file; exit 1 on any problem."""
    reg = _registry(registry)
    problems = reg.verify()
    for problem in problems:
        typer.echo(f"TAMPERED: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(
        f"registry {registry} intact: {len(reg.list())} model(s), every entry and weights file verified"
    )
