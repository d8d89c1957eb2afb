"""``paroma pki …``: the federation's certificate authority, its certificates and CRL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

pki_app = typer.Typer(
    help="Federation PKI: a CA, certificates for the aggregator, sites, relays and services, revocation.",
    no_args_is_help=True,
)

DirArgument = Annotated[Path, typer.Argument(help="the federation's PKI folder")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@pki_app.command("init")
def init(
    folder: DirArgument,
    name: Annotated[
        str, typer.Option(help="federation name (lowercase letters, digits, '-', '.')")
    ] = "paroma-federation",
    days: Annotated[int, typer.Option(help="validity of the CA certificate, days")] = 3650,
) -> None:
    """Create the federation CA: ca.key (0600), a self-signed ca.pem and an empty signed CRL."""
    from interconnect.pki import FederationPKI, PkiError

    try:
        pki = FederationPKI.create(folder, name=name, days=days)
    except (PkiError, OSError) as exc:
        fail(str(exc))
    typer.echo(
        f"federation CA {name!r} in {folder} (valid until {pki.ca_cert.not_valid_after_utc:%Y-%m-%d}); "
        f"certificate {pki.ca_path}"
    )


@pki_app.command("issue")
def issue(
    folder: DirArgument,
    kind: Annotated[str, typer.Option(help="aggregator | site | relay | service")],
    name: Annotated[str, typer.Option(help="the holder's name (lowercase letters, digits, '-', '.')")],
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="a DNS name the holder answers on (repeatable)")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="an IP address the holder answers on (repeatable)")
    ] = None,
    days: Annotated[int, typer.Option(help="validity, days")] = 365,
    reissue: Annotated[
        bool, typer.Option(help="revoke a current certificate of that name and issue a new one")
    ] = False,
) -> None:
    """Issue a key (0600) and a certificate (serverAuth + clientAuth) with the hosts as subjectAltName.

    Without --dns/--ip the certificate names localhost and 127.0.0.1."""
    import ipaddress

    from interconnect.pki import FederationPKI, PkiError

    for address in ip or []:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            fail(f"--ip {address!r}: not an IPv4 or IPv6 address")
    try:
        issued = FederationPKI.open(folder).issue(
            kind, name, [*(dns or []), *(ip or [])], days=days, reissue=reissue
        )
    except (PkiError, OSError) as exc:
        fail(str(exc))
    typer.echo(
        f"{issued.kind.value} {issued.name}: serial {issued.serial_hex}, hosts {', '.join(issued.hosts)}, "
        f"until {issued.not_after:%Y-%m-%d}\n  cert {issued.cert_path}\n  key  {issued.key_path}"
    )


@pki_app.command("revoke")
def revoke(
    folder: DirArgument,
    which: Annotated[str, typer.Argument(help="a serial number (hex) or a holder's name")],
) -> None:
    """Revoke certificates and re-sign the CRL; TLS peers refuse them from the next handshake on."""
    from interconnect.pki import FederationPKI, PkiError

    try:
        revoked = FederationPKI.open(folder).revoke(which)
    except (PkiError, OSError) as exc:
        fail(str(exc))
    for cert in revoked:
        typer.echo(f"revoked {cert.kind.value} {cert.name} (serial {cert.serial_hex})")


@pki_app.command("crl")
def crl(folder: DirArgument) -> None:
    """Re-sign the CRL with a fresh nextUpdate (an expired CRL makes every peer refuse every certificate)."""
    from interconnect.pki import FederationPKI, PkiError

    try:
        path = FederationPKI.open(folder).refresh_crl()
    except (PkiError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"CRL re-signed: {path}")


@pki_app.command("list")
def list_certificates(
    folder: DirArgument,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Every certificate the federation issued, with its state."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from interconnect.pki import FederationPKI, PkiError

    try:
        certs = FederationPKI.open(folder).certificates()
    except (PkiError, OSError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([c.as_dict() for c in certs], indent=2))
        return
    now = datetime.now(UTC)
    table = Table("serial", "kind", "name", "hosts", "not after", "state")
    for c in certs:
        state = "revoked" if c.revoked_at else ("expired" if c.not_after < now else "valid")
        table.add_row(
            c.serial_hex, c.kind.value, c.name, ", ".join(c.hosts), f"{c.not_after:%Y-%m-%d}", state
        )
    Console().print(table)


@pki_app.command("verify")
def verify(
    folder: DirArgument,
    cert: Annotated[Path, typer.Argument(help="a PEM certificate")],
) -> None:
    """Check a certificate: issued by the federation CA, within its validity, not revoked (exit 1 if not)."""
    from interconnect.pki import FederationPKI, PkiError

    try:
        result = FederationPKI.open(folder).verify(cert)
    except (PkiError, OSError) as exc:
        fail(str(exc))
    if result.ok:
        typer.echo(f"valid: {result.subject}, serial {result.serial:x}, until {result.not_after:%Y-%m-%d}")
        return
    typer.echo(f"invalid: {result.subject}: {'; '.join(result.problems)}", err=True)
    raise typer.Exit(1)


@pki_app.command("supernode-key")
def supernode_key(
    folder: Annotated[Path, typer.Argument(help="folder for the key pair")],
    name: Annotated[str, typer.Option(help="the SuperNode's name (its site id)")],
) -> None:
    """Create a SuperNode authentication key pair (ECDSA P-384, OpenSSH), as Flower expects.

    Give the SuperNode `--auth-supernode-private-key NAME.key` and register NAME.pub with
    `flwr supernode register` on a SuperLink started with `--enable-supernode-auth`."""
    from interconnect.pki import PkiError, create_supernode_auth_key

    try:
        key = create_supernode_auth_key(folder, name)
    except (PkiError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"private key {key.private_key_path} (0600)\npublic key  {key.public_key_path}")
