"""``paroma relay …``: run a relay process, look at a running one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

relay_app = typer.Typer(
    help="Relays that carry the federation's traffic along the secure paths.", no_args_is_help=True
)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@relay_app.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", help="the relay's TOML file ([relay] table)")],
) -> None:
    """Run one relay: transit and ingress listeners plus its control API, until SIGTERM."""
    import logging

    from interconnect.relay.config import RelayConfigError, load_relay_config
    from interconnect.relay.runner import RelayService, run_relay

    try:
        settings = load_relay_config(config)
    except RelayConfigError as exc:
        fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(service: RelayService) -> None:
        typer.echo(
            f"relay {settings.name} ready: transit {settings.host}:{service.relay.port}, "
            f"control {service.control_url}",
        )

    try:
        run_relay(settings, ready)
    except OSError as exc:
        fail(f"relay {settings.name}: {exc}")


@relay_app.command("status")
def status(
    url: Annotated[str, typer.Argument(help="the relay's control URL, e.g. http://127.0.0.1:7201")],
    token_file: Annotated[Path, typer.Option("--token-file", help="the control secret")],
) -> None:
    """Print a running relay's routing table and counters (JSON)."""
    from interconnect.relay.client import RelayControlClient, RelayControlError

    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        fail(f"{token_file}: {exc.strerror}")
    client = RelayControlClient("relay", url, token)
    try:
        typer.echo(json.dumps(client.routes(), indent=2))
    except RelayControlError as exc:
        fail(str(exc))
    finally:
        client.close()
