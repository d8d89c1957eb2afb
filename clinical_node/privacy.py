"""Site-enforced differential privacy of the updates a node sends.

Applied by the node itself, outside the sandbox, after the update is validated, so the
submitted code cannot skip it: the update's difference to the global model is clipped to
an L2 norm C (FlatClip, McMahan et al. 2018, arXiv:1710.06963) and Gaussian noise of
standard deviation sigma * C is added to every coordinate. Integer tensors (counters such
as BatchNorm's) are not released: they go back as the global model had them.

The privacy spent is accounted per job by Flower's Rényi-DP accountant (Google's
dp-accounting underneath), one Gaussian release per training round, with no sampling
amplification (a site takes part in every round with all its records) and the neighbouring
relation "add or remove the site's contribution". The ledger lives in the site folder, so a
restarted node goes on counting.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paroma.jobspec import JobSpec

from .policy import SitePolicy


@dataclass(frozen=True)
class PrivacyParameters:
    """What the node applies to one job's updates, and who asked for it."""

    clip_norm: float
    noise_multiplier: float
    delta: float
    required_by: str  # "site", "job" or "site+job"


def site_privacy(policy: SitePolicy, job: JobSpec) -> PrivacyParameters | None:
    """The clipping and noise this site applies to ``job``'s updates (None: none).

    The site's policy (``require_dp``) and the job (``privacy.clip_norm`` and
    ``noise_multiplier``, unless it asks for server-side DP) may both ask; the stricter of
    each wins: the smaller clipping norm, the larger noise multiplier.
    """
    asks = job.privacy.mode == "site" and (job.privacy.clip_norm > 0 or job.privacy.noise_multiplier > 0)
    if not policy.require_dp and not asks:
        return None
    norms, noises, who = [], [], []
    if policy.require_dp:
        norms.append(policy.dp_clip_norm)
        noises.append(policy.dp_noise_multiplier)
        who.append("site")
    if asks:
        norms.append(job.privacy.clip_norm if job.privacy.clip_norm > 0 else policy.dp_clip_norm)
        noises.append(job.privacy.noise_multiplier)
        who.append("job")
    return PrivacyParameters(min(norms), max(noises), job.privacy.delta, "+".join(who))


def privatize(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    params: PrivacyParameters,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """The clipped and noised update, and whether clipping scaled it down.

    ``rng`` defaults to a generator seeded from the operating system's entropy: the noise
    must not be predictable by anyone, the job's author included.
    """
    rng = rng or np.random.default_rng()
    floats = [k for k, ref in reference.items() if np.issubdtype(ref.dtype, np.floating)]
    deltas = {k: update[k].astype(np.float64) - reference[k].astype(np.float64) for k in floats}
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas.values()))
    scale = min(1.0, params.clip_norm / norm) if norm > 0 else 1.0
    std = params.noise_multiplier * params.clip_norm
    out: dict[str, np.ndarray] = {}
    for name, ref in reference.items():
        if name not in deltas:
            out[name] = ref.copy()
            continue
        value = reference[name].astype(np.float64) + deltas[name] * scale
        if std > 0:
            value = value + rng.normal(0.0, std, size=value.shape)
        out[name] = value.astype(ref.dtype)
    return out, scale < 1.0


@dataclass(frozen=True)
class PrivacySpent:
    epsilon: float  # inf when there is no noise
    delta: float
    releases: int


class PrivacyLedger:
    """Per-job privacy accounting of a site's released updates."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def _path(self, job_sha256: str) -> Path:
        return self.folder / f"{job_sha256}.json"

    @staticmethod
    def _accountant(delta: float) -> Any:
        from flwr.serverapp import RdpAccountant
        from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod

        config = PrivacyConfig(
            target_delta=delta,
            population_size=1,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
        return RdpAccountant(config)

    def _releases(self, job_sha256: str) -> list[dict[str, float]]:
        path = self._path(job_sha256)
        if not path.exists():
            return []
        releases: list[dict[str, float]] = json.loads(path.read_text())["releases"]
        return releases

    def record(self, job_sha256: str, params: PrivacyParameters, server_round: int) -> PrivacySpent:
        """Account one released update of ``job_sha256`` (once per round) and return the
        job's total so far."""
        with self._lock:
            releases = self._releases(job_sha256)
            if server_round not in [r["round"] for r in releases]:
                releases.append({"round": server_round, **asdict(params)})  # type: ignore[dict-item]
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path(job_sha256).with_suffix(".tmp")
            tmp.write_text(json.dumps({"releases": releases}, indent=1))
            os.replace(tmp, self._path(job_sha256))
        return self._spent(releases, params.delta)

    def spent(self, job_sha256: str, delta: float) -> PrivacySpent:
        with self._lock:
            releases = self._releases(job_sha256)
        return self._spent(releases, delta)

    def _spent(self, releases: list[dict[str, float]], delta: float) -> PrivacySpent:
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        if not releases:
            return PrivacySpent(0.0, delta, 0)
        if any(r["noise_multiplier"] <= 0 for r in releases):
            return PrivacySpent(math.inf, delta, len(releases))
        accountant = self._accountant(delta)
        for r in releases:
            accountant.compose(GaussianPrivacyEvent(float(r["noise_multiplier"]), 1, 1))
        return PrivacySpent(float(accountant.get_epsilon(delta)), delta, len(releases))
