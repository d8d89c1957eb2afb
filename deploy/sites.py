"""Building a simulated hospital's site folder from a short description of its data and
its patients' consents (what scenario files and federation configs write).

``data``: ``uci:<hospital>`` (the real UCI heart-disease file of cleveland, hungarian,
switzerland or va), ``synthetic:<patients>`` (clinical_node.datasets.synthetic, the
site's profile chosen by its position), or a path to a FHIR Bundle JSON file or a folder
of them. ``consent``: ``demo`` (the demo's realistic mix for that hospital, or the
Cleveland mix for other sites), ``full`` (every patient permits), or a mix
``permit=0.8,opt_out=0.1,...`` (protection_layer.consent_mix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinical_node.datasets.synthetic import MAX_PATIENTS, synthetic_site_bundle
from clinical_node.datasets.uci_heart import HOSPITALS, hospital_bundle
from clinical_node.policy import SitePolicy
from clinical_node.site import Site
from protection_layer import ConsentMix, ProtectionLayer, generate_consents
from protection_layer.consent_mix import ConsentMixError


@dataclass(frozen=True)
class DataSource:
    kind: str  # uci | synthetic | bundle
    hospital: str = ""
    patients: int = 0
    path: Path | None = None


def parse_data(text: Any, base: Path | None = None) -> DataSource:
    """A ``data`` value; ValueError names what is expected."""
    if not isinstance(text, str) or not text:
        raise ValueError("expected uci:<hospital>, synthetic:<patients> or a FHIR Bundle file or folder")
    kind, sep, rest = text.partition(":")
    if sep and kind == "uci":
        if rest not in HOSPITALS:
            raise ValueError(f"unknown UCI hospital {rest!r}; expected one of {', '.join(HOSPITALS)}")
        return DataSource("uci", hospital=rest)
    if sep and kind == "synthetic":
        try:
            n = int(rest)
        except ValueError:
            raise ValueError(f"synthetic:{rest}: the number of patients must be an integer") from None
        if not 1 <= n <= MAX_PATIENTS:
            raise ValueError(f"synthetic:{n}: the number of patients must be in [1, {MAX_PATIENTS}]")
        return DataSource("synthetic", patients=n)
    path = Path(text) if base is None or Path(text).is_absolute() else base / text
    if not path.exists():
        raise ValueError(
            f"{text!r} is neither uci:<hospital>, synthetic:<patients> nor an existing file or folder"
        )
    return DataSource("bundle", path=path)


def parse_consent(text: Any, site_id: str) -> ConsentMix:
    """A ``consent`` value; ValueError names what is expected."""
    from paroma.demo import DEMO_MIXES

    if text == "demo":
        return DEMO_MIXES.get(site_id, DEMO_MIXES["cleveland"])
    if text == "full":
        return ConsentMix.full()
    if not isinstance(text, str):
        raise ValueError('expected "demo", "full" or a mix such as "permit=0.8,opt_out=0.1,no_consent=0.1"')
    try:
        return ConsentMix.parse(text)
    except ConsentMixError as exc:
        raise ValueError(str(exc)) from None


def bundles_of(source: DataSource, index: int, seed: int) -> list[dict[str, Any]]:
    if source.kind == "uci":
        return [hospital_bundle(source.hospital)]
    if source.kind == "synthetic":
        return [synthetic_site_bundle(index, source.patients, seed)]
    assert source.path is not None
    files = sorted(source.path.glob("*.json")) if source.path.is_dir() else [source.path]
    return [json.loads(f.read_text()) for f in files]


def build_site(
    folder: Path,
    site_id: str,
    name: str,
    source: DataSource,
    mix: ConsentMix,
    *,
    index: int = 0,
    seed: int = 0,
    policy: SitePolicy | None = None,
    now: datetime | None = None,
) -> Path:
    """Create the site folder, load its bundles (each in one transaction), approve the
    built-in logistic-regression plan and give its patients research consents."""
    from paroma.demo import DEMO_POLICY

    site = Site.create(
        folder, site_id, name, f"Organization/{site_id}", policy if policy is not None else DEMO_POLICY
    )
    try:
        for bundle in bundles_of(source, index, seed):
            site.fhir.ingest_bundle(bundle)
        site.plans.approve_builtin("logistic-regression", by="scenario set-up")
        drawn = generate_consents(
            site.fhir.patients(),
            mix,
            now=now or datetime.now(UTC),
            seed=seed * 7_919 + index,
            custodian=site.identity.organization,
        )
        layer = ProtectionLayer(site)
        try:
            layer.consents.put_many([g.resource for g in drawn if g.resource])
        finally:
            layer.close()
    finally:
        site.close()
    return folder


def build_synthetic_site(cfg: Any, site_cfg: Any, *, seed: int = 0) -> None:
    """A ``synthetic:<patients>`` site of the config drawn by clinical_node.datasets.synthetic
    (what the in-process scenario runtime gives the same site), built whole in a temporary
    folder and renamed into place; the working folder's preparation then keeps it as it keeps
    every site already built."""
    import os
    import shutil

    from deploy.federation_config import FederationConfig, SiteConfig
    from deploy.workdir import Workdir

    assert isinstance(cfg, FederationConfig) and isinstance(site_cfg, SiteConfig)
    target = Workdir(cfg.workdir).site(site_cfg.id)
    if (target / "site.toml").is_file():
        return
    mix = (
        site_cfg.consent.mix
        if site_cfg.consent.mix is not None
        else parse_consent(site_cfg.consent.kind, site_cfg.id)
    )
    building = target.with_name(f".{site_cfg.id}.building")
    shutil.rmtree(building, ignore_errors=True)
    try:
        build_site(
            building, site_cfg.id, site_cfg.id, DataSource("synthetic", patients=site_cfg.data.patients), mix,
            index=cfg.sites.index(site_cfg), seed=seed,
        )  # fmt: skip
        os.replace(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
