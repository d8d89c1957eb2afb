"""A deployment's working folder: everything ``paroma up`` needs before it starts a process.

    <workdir>/pki/               the federation CA, issued certificates, CRL (interconnect.pki)
    <workdir>/pki/supernodes/    each site's SuperNode authentication key (OpenSSH, P-384)
    <workdir>/sites/<id>/        each clinical-node site folder: FHIR data, consents, approved plan
    <workdir>/flwr/app/          the Flower App that runs the job (its code is the installed one)
    <workdir>/flwr/<service>/    FLWR_HOME of the SuperLink, each SuperNode and the flwr CLI
    <workdir>/relays/            each relay's config and the control secret
    <workdir>/logs/<service>.log and <workdir>/run/<service>.pid

Preparing is idempotent: what exists is kept (a site folder is built in a temporary folder
and renamed into place whole, so a failed build leaves nothing half-made behind).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinical_node.datasets.synthetic import fit_profile, profile_of, synthetic_rows
from clinical_node.datasets.uci_heart import HOSPITALS, hospital_bundle, rows_bundle
from clinical_node.site import Site
from interconnect.pki import (
    CertKind,
    FederationPKI,
    IssuedCert,
    PkiNotFoundError,
    SupernodeAuthKey,
    UnknownCertificateError,
    create_supernode_auth_key,
)
from paroma.demo import DEMO_MIXES, DEMO_POLICY
from protection_layer import ConsentMix, ProtectionLayer, generate_consents

from .federation_config import FederationConfig, SiteConfig

RELAY_CONTROL_FILE = "relay.token"
FLOWER_APP_NAME = "paroma-federation"
# The run config keys the ServerApp reads (aggregator/server_app.py); `flwr run` only
# overrides keys the app declares.
FLOWER_APP_CONFIG = {
    "num-server-rounds": 3,
    "strategy": "fedavg",
    "min-sites": 2,
    "sites-root": "",
    "job-spec": "",
    "output-dir": "",
    "expected-sites": 0,
}


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def supernode_keys(self) -> Path:
        return self.pki / "supernodes"

    @property
    def sites(self) -> Path:
        return self.root / "sites"

    def site(self, site_id: str) -> Path:
        return self.sites / site_id

    @property
    def app(self) -> Path:
        return self.root / "flwr" / "app"

    def flwr_home(self, service: str) -> Path:
        return self.root / "flwr" / service

    @property
    def relays(self) -> Path:
        return self.root / "relays"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.run / f"{service}.pid"


@dataclass(frozen=True)
class Credentials:
    """The certificates and keys of one deployment."""

    ca: Path
    crl: Path
    aggregator: IssuedCert
    pce: IssuedCert
    sites: dict[str, IssuedCert]
    relays: dict[str, IssuedCert]
    supernodes: dict[str, SupernodeAuthKey]


def aggregator_hosts(config: FederationConfig) -> list[str]:
    """Every address a SuperNode may dial for the SuperLink through a relay: the host, and
    the host side of each site's veth pair (``--netns``). The SuperNode checks the SuperLink's
    certificate against the address it dials (RFC 6125), relays in between or not."""
    hosts = ["localhost", config.host]
    hosts += [s.netns_host_address for s in config.sites]
    return list(dict.fromkeys(hosts))


def ensure_credentials(config: FederationConfig, workdir: Workdir) -> Credentials:
    try:
        pki = FederationPKI.open(workdir.pki)
    except PkiNotFoundError:
        pki = FederationPKI.create(workdir.pki, name=config.name)
    aggregator = _ensure_cert(pki, CertKind.AGGREGATOR, "aggregator", aggregator_hosts(config))
    pce = _ensure_cert(pki, CertKind.SERVICE, "pce", ["localhost", config.host])
    sites = {
        s.id: _ensure_cert(pki, CertKind.SITE, s.id, ["localhost", config.host, s.netns_address])
        for s in config.sites
    }
    relays = {
        r: _ensure_cert(
            pki, CertKind.RELAY, r, ["localhost", config.host, *(s.netns_host_address for s in config.sites)]
        )
        for r in config.routers
    }
    supernodes = {s.id: _ensure_supernode_key(workdir, s.id) for s in config.sites}
    return Credentials(pki.ca_path, pki.crl_path, aggregator, pce, sites, relays, supernodes)


def _ensure_cert(pki: FederationPKI, kind: CertKind, name: str, hosts: list[str]) -> IssuedCert:
    try:
        current = pki.get(kind, name)
    except UnknownCertificateError:
        return pki.issue(kind, name, hosts)
    if current.revoked_at is not None or set(current.hosts) != set(hosts):
        return pki.issue(kind, name, hosts, reissue=True)
    return current


def _ensure_supernode_key(workdir: Workdir, site_id: str) -> SupernodeAuthKey:
    private = workdir.supernode_keys / f"{site_id}.key"
    public = workdir.supernode_keys / f"{site_id}.pub"
    if private.is_file() and public.is_file():
        return SupernodeAuthKey(site_id, private, public)
    return create_supernode_auth_key(workdir.supernode_keys, site_id, overwrite=True)


def ensure_site(config: FederationConfig, site: SiteConfig, workdir: Workdir, *, seed: int = 2026) -> Path:
    """The site's folder, built once: FHIR data, research consents, the built-in training
    plan approved, the demo's admission policy."""
    target = workdir.site(site.id)
    if (target / "site.toml").is_file():
        return target
    workdir.sites.mkdir(parents=True, exist_ok=True)
    building = workdir.sites / f".{site.id}.building"
    shutil.rmtree(building, ignore_errors=True)
    try:
        index = config.sites.index(site)
        _build_site(site, building, seed + index, index)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _build_site(site: SiteConfig, folder: Path, seed: int, index: int) -> None:
    if site.data.kind == "uci":
        name = HOSPITALS[site.data.hospital].name
        organization = f"Organization/uci-{site.data.hospital}"
    elif site.data.kind == "synthetic":
        name, organization = f"{site.id} (synthetic patients)", f"Organization/uci-{site.id}"
    else:
        name, organization = site.id, f"Organization/{site.id}"
    created = Site.create(folder, site.id, name, organization, DEMO_POLICY)
    try:
        for bundle in _bundles(site, seed, index):
            created.fhir.ingest_bundle(bundle)
        created.plans.approve_builtin("logistic-regression", by="paroma up")
        mix = _consent_mix(site)
        drawn = generate_consents(
            created.fhir.patients(),
            mix,
            now=datetime.now(UTC),
            seed=seed,
            custodian=created.identity.organization,
        )
        layer = ProtectionLayer(created)
        try:
            layer.consents.put_many([g.resource for g in drawn if g.resource])
        finally:
            layer.close()
    finally:
        created.close()


def _bundles(site: SiteConfig, seed: int, index: int) -> list[dict[str, Any]]:
    if site.data.kind == "uci":
        return [hospital_bundle(site.data.hospital)]
    if site.data.kind == "synthetic":
        # the scenario runner's and the scale benchmark's generator: the site's place in the
        # federation picks its UCI hospital profile, as for `paroma data synthetic`
        rows = synthetic_rows(fit_profile(profile_of(index)), site.data.patients, seed)
        return [rows_bundle(site.id, f"{site.id} (synthetic patients)", rows)]
    if site.data.kind == "fhir" and site.data.path is not None:
        files = sorted(site.data.path.glob("*.json")) if site.data.path.is_dir() else [site.data.path]
        bundles = []
        for file in files:
            try:
                bundles.append(json.loads(file.read_text()))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise ValueError(
                    f"site {site.id}: {file} is not a readable JSON FHIR Bundle: {exc}"
                ) from None
        return bundles
    raise ValueError(f"site {site.id}: data {site.data.describe()} is not a kind paroma up loads")


def _consent_mix(site: SiteConfig) -> ConsentMix:
    if site.consent.mix is not None:
        return site.consent.mix
    # "demo": the demo's mix of that hospital, else the default realistic mix.
    return DEMO_MIXES.get(site.data.hospital or site.id, ConsentMix())


def write_flower_app(workdir: Workdir) -> Path:
    """A Flower App without code of its own: its components are the installed project's
    ServerApp and ClientApp, so nothing is installed at run time (no internet)."""
    workdir.app.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {json.dumps(v)}" for k, v in FLOWER_APP_CONFIG.items())
    text = f"""# Written by `paroma up`: the federation's Flower App. Its components come from the
# installed PAROMA-MED packages; it has no dependencies to install.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{FLOWER_APP_NAME}"
version = "1.0.0"
description = "PAROMA-MED federated job"
dependencies = []

[tool.flwr.app]
publisher = "paroma-med"

[tool.flwr.app.components]
serverapp = "aggregator.server_app:app"
clientapp = "clinical_node.client_app:app"

[tool.flwr.app.config]
{config}
"""
    _write(workdir.app / "pyproject.toml", text)
    return workdir.app


def write_flwr_cli_config(config: FederationConfig, workdir: Workdir, ca: Path) -> Path:
    """The flwr CLI's connection to the federation's SuperLink (FLWR_HOME/config.toml), TLS
    verified against the federation CA."""
    home = workdir.flwr_home("cli")
    text = f"""[superlink]
default = "{config.name}"

[superlink.{config.name}]
address = "{config.host}:{config.aggregator.superlink_port}"
root-certificates = "{ca}"
"""
    _write(home / "config.toml", text)
    return home


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
