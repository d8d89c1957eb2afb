"""A hospital's path to production, after ``paroma node init``: its policies, its SuperNode
key, and joining the federation (``paroma node policy ...``, ``node keys``, ``node join``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

policy_app = typer.Typer(
    help="The site's admission policy and policy engine (site.toml).", no_args_is_help=True
)

SUPERNODE_KEY = "supernode"  # keys/supernode.key and keys/supernode.pub


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _site(folder: Path) -> Any:
    from clinical_node.site import Site, SiteError

    try:
        return Site.open(folder)
    except SiteError as exc:
        _fail(str(exc))


@policy_app.command("show")
def show(folder: Path) -> None:
    """Print the site's [policy] and [protection] tables."""
    from protection_layer.layer import ProtectionSettings

    site = _site(folder)
    typer.echo(site.policy.to_toml().rstrip())
    settings = ProtectionSettings.from_mapping(site.settings.get("protection"))
    typer.echo(f'\n[protection]\nengine = "{settings.engine}"')
    if settings.opa_url:
        typer.echo(f'opa_url = "{settings.opa_url}"')


@policy_app.command("set")
def set_policy(
    folder: Path,
    purpose: Annotated[
        list[str] | None, typer.Option(help="admitted purpose of use (v3-ActReason), repeatable")
    ] = None,
    organization: Annotated[
        list[str] | None, typer.Option(help="admitted requesting organisation, repeatable")
    ] = None,
    min_cohort: Annotated[int | None, typer.Option(help="fewest consenting patients for a job")] = None,
    min_isolation: Annotated[str | None, typer.Option(help="none, subprocess, unshare or bubblewrap")] = None,
    require_dp: Annotated[bool | None, typer.Option("--require-dp/--no-require-dp")] = None,
    dp_clip_norm: Annotated[float | None, typer.Option()] = None,
    dp_noise_multiplier: Annotated[float | None, typer.Option()] = None,
    max_round_seconds: Annotated[float | None, typer.Option()] = None,
    engine: Annotated[str | None, typer.Option(help="policy engine: embedded or opa")] = None,
    opa_url: Annotated[str | None, typer.Option(help="the OPA server for engine opa")] = None,
) -> None:
    """Change the site's admission policy and policy engine; what is not given is kept. The
    whole file is checked before it is replaced (atomically)."""
    from clinical_node.policy import PolicyError, SitePolicy
    from protection_layer.engine import PolicyError as EngineError
    from protection_layer.layer import ProtectionSettings

    site = _site(folder)
    policy = dict(site.settings.get("policy") or {})
    changes: dict[str, Any] = {
        "purposes": purpose,
        "organizations": organization,
        "min_cohort": min_cohort,
        "min_isolation": min_isolation,
        "require_dp": require_dp,
        "dp_clip_norm": dp_clip_norm,
        "dp_noise_multiplier": dp_noise_multiplier,
        "max_round_seconds": max_round_seconds,
    }
    policy.update({k: v for k, v in changes.items() if v is not None})
    protection = dict(site.settings.get("protection") or {})
    if engine is not None:
        protection["engine"] = engine
    if opa_url is not None:
        protection["opa_url"] = opa_url
    try:
        parsed = SitePolicy.from_mapping(policy)
        if protection:
            ProtectionSettings.from_mapping(protection)
    except (PolicyError, EngineError) as exc:
        _fail(f"{folder}: nothing changed: {exc}")
    if protection:
        site.settings["protection"] = protection
    site.write_policy(parsed)
    typer.echo(f"site {site.site_id}: policy updated")


def keys(
    folder: Path,
    overwrite: Annotated[bool, typer.Option(help="replace an existing key")] = False,
) -> None:
    """Make the site's SuperNode authentication key (keys/supernode.key, 0600) and print its
    public key, which the federation operator registers with the SuperLink."""
    from interconnect.pki import PkiError, create_supernode_auth_key

    site = _site(folder)
    try:
        key = create_supernode_auth_key(site.root / "keys", SUPERNODE_KEY, overwrite=overwrite)
    except PkiError as exc:
        _fail(str(exc))
    typer.echo(key.public_key_openssh())
    typer.echo(
        f"private key {key.private_key_path} (0600); give {key.public_key_path} to the federation operator",
        err=True,
    )


def join_command(
    site_dir: Path, superlink: str, root_certificates: Path, auth_key: Path, port: int
) -> list[str]:
    """The SuperNode command line a site joins with: the one ``paroma up`` runs for it
    (deploy.services.plan), for this site folder."""
    executable = shutil.which("flower-supernode") or str(Path(sys.executable).with_name("flower-supernode"))
    return [
        executable,
        "--root-certificates", str(root_certificates),
        "--superlink", superlink,
        "--auth-supernode-private-key", str(auth_key),
        "--node-config", f'site-dir="{site_dir}"',
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip


def join(
    folder: Path,
    superlink: Annotated[
        str, typer.Option(help="HOST:PORT of the SuperLink (or of the site's relay ingress)")
    ],
    root_certificates: Annotated[Path, typer.Option(help="the federation CA certificate (PEM)")],
    auth_key: Annotated[Path | None, typer.Option(help="SuperNode key (default: keys/supernode.key)")] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="the SuperNode's local ClientAppIo port")
    ] = 9094,
    dry_run: Annotated[bool, typer.Option("--print", help="print the command instead of running it")] = False,
) -> None:
    """Join the federation: run this site's Flower SuperNode (TLS to the SuperLink, verified
    against the federation CA; authenticated with the site's SuperNode key)."""
    site = _site(folder)
    key = auth_key or site.root / "keys" / f"{SUPERNODE_KEY}.key"
    problems = []
    if ":" not in superlink or not superlink.rsplit(":", 1)[1].isdigit():
        problems.append(f"--superlink {superlink!r}: expected HOST:PORT")
    if not root_certificates.is_file():
        problems.append(f"--root-certificates {root_certificates}: no such file")
    if not key.is_file():
        problems.append(f"SuperNode key {key}: no such file (run `paroma node keys {folder}`)")
    if problems:
        _fail("; ".join(problems))
    argv = join_command(site.root.resolve(), superlink, root_certificates.resolve(), key.resolve(), port)
    if dry_run:
        typer.echo(" ".join(argv))
        return
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    os.execve(argv[0], argv, env)  # noqa: S606 - the node becomes its SuperNode process
