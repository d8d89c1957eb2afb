"""``paroma deploy ...``: the container deployment of a federation config."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, NoReturn

import typer

deploy_app = typer.Typer(
    help="Container deployment: docker-compose from the federation config.", no_args_is_help=True
)

ConfigOption = Annotated[Path, typer.Option("--config", help="the federation config (TOML)")]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(path: Path) -> object:
    from deploy.federation_config import FederationConfigError, load_federation_config

    try:
        return load_federation_config(path)
    except FederationConfigError as exc:
        _fail(str(exc))


@deploy_app.command("compose")
def compose(
    config: ConfigOption,
    out: Annotated[
        Path | None,
        typer.Option(help="the compose file to write (default: docker-compose.yml beside the config)"),
    ] = None,
) -> None:
    """Write the docker-compose file (and its container config beside it) for the federation."""
    from deploy.compose import ComposeError, write_compose
    from deploy.federation_config import FederationConfig

    cfg = _config(config)
    assert isinstance(cfg, FederationConfig)
    target = out or config.parent / "docker-compose.yml"
    command = f"paroma deploy compose --config {shlex.quote(str(config))} --out {shlex.quote(str(target))}"
    try:
        written, side = write_compose(cfg, target, command)
    except (ComposeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {written} and {side}")


@deploy_app.command("prepare")
def prepare(
    config: ConfigOption,
    opa: Annotated[
        bool, typer.Option("--opa", help="point each site at its own OPA server (compose)")
    ] = False,
) -> None:
    """Make the federation's working folder as `paroma up` does (PKI, keys, sites, relay configs)."""
    from deploy.compose import opa_port
    from deploy.federation_config import FederationConfig
    from deploy.launcher import prepare as make

    cfg = _config(config)
    assert isinstance(cfg, FederationConfig)
    workdir, _ = make(cfg, echo=typer.echo)
    if opa:
        from clinical_node.site import Site

        for site_cfg in cfg.sites:
            site = Site.open(workdir.site(site_cfg.id))
            site.settings["protection"] = {
                **site.settings.get("protection", {}),
                "engine": "opa",
                "opa_url": f"http://127.0.0.1:{opa_port(cfg, site_cfg.id)}",
            }
            site.write_policy(site.policy)
            typer.echo(f"site {site_cfg.id}: policies decided by {site.settings['protection']['opa_url']}")
    typer.echo(f"working folder {workdir.root} ready")


@deploy_app.command("register")
def register(config: ConfigOption) -> None:
    """Register every site's SuperNode key with the running SuperLink (SuperNode authentication)."""
    from deploy.federation_config import FederationConfig
    from deploy.launcher import LaunchError, _register_supernodes
    from deploy.workdir import Workdir, ensure_credentials

    cfg = _config(config)
    assert isinstance(cfg, FederationConfig)
    workdir = Workdir(cfg.workdir)
    try:
        _register_supernodes(cfg, workdir, ensure_credentials(cfg, workdir), typer.echo)
    except LaunchError as exc:
        _fail(str(exc), 1)
    typer.echo(f"{len(cfg.sites)} SuperNode key(s) registered")
