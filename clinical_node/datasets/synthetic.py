"""Synthetic heart-disease patients as FHIR R4, for any number of sites and patients.

Each synthetic site takes one of the four UCI hospitals as its *profile* (site ``i`` the
``i mod 4``-th, so a federation of synthetic sites is as heterogeneous as the real one) and
draws patients from a Gaussian copula fitted to that hospital's rows:

* each column's marginal is the hospital's empirical distribution (so codes, categories,
  units and the source's 0-for-missing values appear in the proportions they have there);
* the dependence between columns is the hospital's rank correlation (normal scores,
  pairwise over the rows where both columns are present), so e.g. the diagnosis goes with
  asymptomatic chest pain, exercise angina and ST depression as it does in the data;
* each column is missing (no Observation at all) with the hospital's missing rate.

The Observations are made by the same code as the real hospitals' (``uci_heart``): same LOINC
and project codes, UCUM units, categories and ``dataAbsentReason``. Everything is
deterministic given the seed: site ``i`` of seed ``s`` is the same whatever the number of
sites. Rows are pure data; :func:`site_bundle` makes the transaction Bundle the store
ingests in one piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from scipy.special import ndtr

from .uci_heart import COLUMNS, HOSPITALS, MEASURES, _birth_date, _number, _observation, read_rows

MAX_PATIENTS = 1_000_000
MAX_SITES = 10_000
_PROFILES = tuple(HOSPITALS)


class SyntheticError(ValueError):
    """Invalid generator arguments; the message names the argument."""


@dataclass(frozen=True)
class Profile:
    """What is fitted from one hospital: per column its sorted observed values and its
    missing rate, and the normal-score correlation matrix of the columns."""

    hospital: str
    values: tuple[np.ndarray, ...]
    missing: np.ndarray
    correlation: np.ndarray


def _normal_scores(observed: np.ndarray) -> np.ndarray:
    """Rank-based normal scores (van der Waerden) of the present values; NaN stays NaN."""
    from scipy.stats import norm, rankdata

    out = np.full(observed.shape, np.nan)
    present = ~np.isnan(observed)
    n = int(present.sum())
    if n:
        out[present] = norm.ppf(rankdata(observed[present]) / (n + 1))
    return out


@cache
def fit_profile(hospital: str) -> Profile:
    rows = read_rows(hospital)
    table = np.array(
        [[float(v) if (v := row[c]) is not None else np.nan for c in COLUMNS] for row in rows],
        dtype=np.float64,
    )
    scores = np.column_stack([_normal_scores(table[:, j]) for j in range(len(COLUMNS))])
    k = len(COLUMNS)
    corr = np.eye(k)
    for a in range(k):
        for b in range(a + 1, k):
            both = ~np.isnan(scores[:, a]) & ~np.isnan(scores[:, b])
            if both.sum() >= 10 and scores[both, a].std() > 0 and scores[both, b].std() > 0:
                corr[a, b] = corr[b, a] = float(np.corrcoef(scores[both, a], scores[both, b])[0, 1])
    # Pairwise estimates need not form a positive definite matrix: clip the spectrum.
    eigval, eigvec = np.linalg.eigh(corr)
    corr = eigvec @ np.diag(np.clip(eigval, 1e-3, None)) @ eigvec.T
    d = np.sqrt(np.diag(corr))
    corr = corr / np.outer(d, d)
    values = tuple(np.sort(table[~np.isnan(table[:, j]), j]) for j in range(k))
    missing = np.isnan(table).mean(axis=0)
    return Profile(hospital, values, missing, corr)


def profile_of(site_index: int) -> str:
    return _PROFILES[site_index % len(_PROFILES)]


def site_id(site_index: int) -> str:
    return f"synth-{site_index + 1:03d}"


def synthetic_rows(profile: Profile, patients: int, seed: int) -> list[dict[str, str | None]]:
    """``patients`` rows in the UCI processed layout (strings, None for missing)."""
    if not 1 <= patients <= MAX_PATIENTS:
        raise SyntheticError(f"patients: {patients} is outside [1, {MAX_PATIENTS}]")
    rng = np.random.default_rng(seed)
    k = len(COLUMNS)
    z = rng.multivariate_normal(np.zeros(k), profile.correlation, size=patients, method="cholesky")
    u = ndtr(z)
    absent = rng.random((patients, k)) < profile.missing
    columns: list[list[str | None]] = []
    for j, name in enumerate(COLUMNS):
        observed = profile.values[j]
        if observed.size == 0:
            columns.append([None] * patients)
            continue
        picked = observed[np.minimum((u[:, j] * observed.size).astype(int), observed.size - 1)]
        if name == "oldpeak":
            text = [f"{v:.1f}" for v in picked]
        else:
            text = [str(int(v)) if float(v).is_integer() else f"{v:g}" for v in picked]
        if name == "age":  # an age is always recorded: the Patient's birth date depends on it
            columns.append(list(text))
        else:
            columns.append([None if absent[i, j] else text[i] for i in range(patients)])
    return [{name: columns[j][i] for j, name in enumerate(COLUMNS)} for i in range(patients)]


def site_bundle(site: str, rows: list[dict[str, str | None]], *, name: str | None = None) -> dict[str, Any]:
    """The transaction Bundle of a synthetic site: its Organization, a Patient per row and
    the row's Observations (literal references, ids prefixed by the site)."""
    org_id = f"org-{site}"
    org_ref = f"Organization/{org_id}"
    entries: list[dict[str, Any]] = []

    def put(resource: dict[str, Any]) -> None:
        entries.append(
            {
                "fullUrl": f"{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
        )

    put({"resourceType": "Organization", "id": org_id, "active": True, "name": name or f"Synthetic {site}"})
    for number, row in enumerate(rows, start=1):
        patient_id = f"{site}-{number:06d}"
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": patient_id,
            "managingOrganization": {"reference": org_ref},
        }
        if row["sex"] is not None:
            patient["gender"] = "male" if _number(row["sex"]) == 1 else "female"
        if row["age"] is not None:
            patient["birthDate"] = _birth_date(patient_id, int(_number(row["age"]))).isoformat()
        put(patient)
        for measure in MEASURES:
            raw = row[measure.column]
            if raw is not None:
                put(_observation(site, patient_id, measure, raw, org_ref))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def synthetic_site_bundle(site_index: int, patients: int, seed: int = 0) -> dict[str, Any]:
    """Site ``site_index`` (0-based) of a synthetic federation drawn with ``seed``."""
    if not 0 <= site_index < MAX_SITES:
        raise SyntheticError(f"site index {site_index} is outside [0, {MAX_SITES})")
    hospital = profile_of(site_index)
    rows = synthetic_rows(fit_profile(hospital), patients, seed * 1_000_003 + site_index)
    return site_bundle(
        site_id(site_index),
        rows,
        name=f"Synthetic site {site_index + 1} ({HOSPITALS[hospital].name} profile)",
    )
