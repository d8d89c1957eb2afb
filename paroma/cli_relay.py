"""``paroma relay …``: run a relay process, look at a running one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

# The name of the control secret's file in a layout folder (the secret itself is random, 0600).
TOKEN_FILE = "relay.token"  # noqa: S105 (a file name, not a secret)
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
    ca: Annotated[
        Path | None, typer.Option("--ca", help="the federation's ca.pem, for an https:// URL")
    ] = None,
) -> None:
    """Print a running relay's routing table and counters (JSON)."""
    import httpx

    from interconnect.pki import PkiError
    from interconnect.pki.tls import ssl_client_context
    from interconnect.relay.client import RelayControlClient, RelayControlError

    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        fail(f"{token_file}: {exc.strerror}")
    try:
        http = httpx.Client(timeout=5, verify=ssl_client_context(ca_path=ca) if ca else True)
    except PkiError as exc:
        fail(str(exc))
    client = RelayControlClient("relay", url, token, http=http)
    try:
        typer.echo(json.dumps(client.routes(), indent=2))
    except RelayControlError as exc:
        fail(str(exc))
    finally:
        http.close()


@relay_app.command("token")
def token(
    path: Annotated[Path, typer.Argument(help="file for the relays' control secret (written 0600)")],
) -> None:
    """Create the secret the controller and the relays share for the control API."""
    from interconnect.relay.config import write_token

    try:
        write_token(path)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")
    typer.echo(f"control secret written to {path} (0600)")


@relay_app.command("layout")
def layout(
    folder: Annotated[
        Path, typer.Argument(help="folder for the relay files, the controller file and the secret")
    ],
    site: Annotated[
        list[str],
        typer.Option("--site", help="SITE_ID=TOPOLOGY_NODE, repeatable (e.g. cleveland=hospital-cleveland)"),
    ],
    aggregator_port: Annotated[
        int, typer.Option(help="the port the aggregator's traffic ends at (SuperLink Fleet API)")
    ],
    topology: Annotated[
        str, typer.Option("--topology", "-t", help="built-in (demo, geant, kdl) or a file")
    ] = "demo",
    aggregator_node: Annotated[
        str, typer.Option(help="the topology node the aggregator sits behind")
    ] = "aggregator",
    host: Annotated[str, typer.Option(help="the address every relay listens on")] = "127.0.0.1",
    base_port: Annotated[
        int, typer.Option(help="relay i (routers and access nodes in topology order) listens on base+i")
    ] = 7100,
    control_base_port: Annotated[int, typer.Option(help="relay i's control API listens on this+i")] = 7200,
    min_security: Annotated[float, typer.Option(help="Minimum Security Threshold of the site paths")] = 50.0,
    pki: Annotated[
        Path | None,
        typer.Option(
            "--pki", help="a federation PKI folder: issue each relay a certificate, control APIs over HTTPS"
        ),
    ] = None,
) -> None:
    """Write a relay file per router/access node and the controller file for `paroma pce serve --relays`."""
    from interconnect.pce.errors import PceError
    from interconnect.pce.loaders import load_topology
    from interconnect.relay.config import write_token
    from interconnect.relay.layout import LayoutError, controller_config_text, place_relays, relay_config_text

    sites: dict[str, str] = {}
    for item in site:
        site_id, sep, node = item.partition("=")
        if not sep or not site_id or not node:
            fail(f"--site {item!r}: expected SITE_ID=TOPOLOGY_NODE")
        sites[site_id] = node
    from interconnect.pki import FederationPKI, PkiError, UnknownCertificateError

    tls: dict[str, tuple[str, str]] = {}
    try:
        graph = load_topology(topology)
        placements = place_relays(graph, base_port, control_base_port, host)
        if pki is not None:
            authority = FederationPKI.open(pki)
            for p in placements:
                try:
                    issued = authority.get("relay", p.node)
                except UnknownCertificateError:
                    issued = authority.issue("relay", p.node, [host])
                tls[p.node] = (str(issued.cert_path.resolve()), str(issued.key_path.resolve()))
        controller = controller_config_text(
            graph, placements, sites, host=host, aggregator_node=aggregator_node,
            aggregator_port=aggregator_port, token_file=TOKEN_FILE, min_security=min_security,
            ca_file=str(authority.ca_path.resolve()) if pki is not None else None,
        )  # fmt: skip
    except (PceError, LayoutError, PkiError) as exc:
        fail(str(exc))
    try:
        (folder / "relays").mkdir(parents=True, exist_ok=True)
        if not (folder / TOKEN_FILE).exists():
            write_token(folder / TOKEN_FILE)
        for p in placements:
            (folder / "relays" / f"{p.node}.toml").write_text(
                relay_config_text(p, host, f"../{TOKEN_FILE}", tls.get(p.node))
            )
        (folder / "controller.toml").write_text(controller)
    except OSError as exc:
        fail(f"{folder}: {exc.strerror}")
    typer.echo(
        f"{len(placements)} relays in {folder / 'relays'}, controller file {folder / 'controller.toml'}"
    )
    typer.echo(f"run:  for f in {folder}/relays/*.toml; do paroma relay run --config $f & done")
    typer.echo(f"then: paroma pce serve --topology {topology} --relays {folder / 'controller.toml'}")
