"""Site-enforced differential privacy: clipping and noise applied by the node, the stricter
of site and job wins, and the privacy spent accounted with Flower's RDP accountant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from aggregator.strategies import build_strategy
from clinical_node.policy import SitePolicy
from clinical_node.privacy import PrivacyLedger, PrivacyParameters, privatize, site_privacy
from paroma.demo import demo_job
from paroma.jobspec import JobSpecError, PrivacySettings, parse_job_spec

REFERENCE = {
    "w": np.zeros((50, 40), np.float32),
    "b": np.zeros(40, np.float32),
    "count": np.array(7, np.int64),
}


def job_with(**privacy: object):  # type: ignore[no-untyped-def]
    doc = demo_job(rounds=2).to_dict()
    doc["privacy"] = {**doc["privacy"], **privacy}
    return parse_job_spec(doc)


def test_update_is_clipped_to_the_norm_and_integers_are_not_released() -> None:
    update = {
        "w": np.full((50, 40), 3.0, np.float32),
        "b": np.full(40, 3.0, np.float32),
        "count": np.array(99),
    }
    params = PrivacyParameters(clip_norm=2.0, noise_multiplier=0.0, delta=1e-5, required_by="site")
    out, clipped = privatize(update, REFERENCE, params)
    norm = math.sqrt(sum(float(np.sum((out[k] - REFERENCE[k]) ** 2)) for k in ("w", "b")))
    assert clipped and norm == pytest.approx(2.0, rel=1e-5)
    assert out["count"] == 7 and out["w"].dtype == np.float32
    small = {k: v + 1e-4 if k != "count" else v for k, v in REFERENCE.items()}
    same, clipped = privatize(small, REFERENCE, params)
    assert not clipped and np.allclose(same["w"], small["w"])


def test_noise_has_the_configured_standard_deviation() -> None:
    params = PrivacyParameters(clip_norm=0.5, noise_multiplier=1.2, delta=1e-5, required_by="job")
    out, _ = privatize(dict(REFERENCE), REFERENCE, params, np.random.default_rng(1))
    noise = np.concatenate([out["w"].ravel(), out["b"].ravel()])
    assert noise.std() == pytest.approx(0.6, rel=0.05)  # sigma * C over 2040 coordinates
    again, _ = privatize(dict(REFERENCE), REFERENCE, params)
    assert not np.array_equal(again["w"], privatize(dict(REFERENCE), REFERENCE, params)[0]["w"])


def test_stricter_of_site_and_job_wins() -> None:
    site = SitePolicy(require_dp=True, dp_clip_norm=1.0, dp_noise_multiplier=0.5)
    job = job_with(clip_norm=2.0, noise_multiplier=0.8, delta=1e-6)
    params = site_privacy(site, job)
    assert params == PrivacyParameters(1.0, 0.8, 1e-6, "site+job")
    assert site_privacy(SitePolicy(), demo_job(rounds=1)) is None
    assert site_privacy(SitePolicy(), job_with(clip_norm=0.3)) == PrivacyParameters(0.3, 0.0, 1e-5, "job")
    # a job asking for server-side DP leaves the site's own clipping to the site's policy
    server = job_with(clip_norm=1.0, noise_multiplier=1.0, mode="server-fixed")
    assert site_privacy(SitePolicy(), server) is None


def test_epsilon_is_flowers_rdp_accounting_and_survives_a_restart(tmp_path: Path) -> None:
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )

    params = PrivacyParameters(1.0, 1.1, 1e-5, "site")
    ledger = PrivacyLedger(tmp_path)
    first = ledger.record("job", params, 1)
    ledger.record("job", params, 1)  # the same round again (a retry) is not a second release
    spent = PrivacyLedger(tmp_path).record("job", params, 2)
    assert (first.releases, spent.releases) == (1, 2)
    oracle = RdpAccountant(
        PrivacyConfig(1e-5, 1, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    )
    oracle.compose(GaussianPrivacyEvent(1.1, 1, 1), 2)
    assert spent.epsilon == pytest.approx(oracle.get_epsilon(1e-5))
    assert 0 < first.epsilon < spent.epsilon
    clip_only = PrivacyLedger(tmp_path).record("other", PrivacyParameters(1.0, 0.0, 1e-5, "site"), 1)
    assert clip_only.epsilon == math.inf


def test_server_side_dp_wraps_the_strategy_and_is_validated() -> None:
    fixed = build_strategy(
        "fedavg", {}, 4, privacy=PrivacySettings(clip_norm=0.5, noise_multiplier=1.0, mode="server-fixed")
    )
    assert isinstance(fixed, DifferentialPrivacyServerSideFixedClipping)
    assert (fixed.clipping_norm, fixed.noise_multiplier, fixed.num_sampled_clients) == (0.5, 1.0, 4)
    adaptive = build_strategy(
        "fedavg", {}, 3, privacy=PrivacySettings(noise_multiplier=1.0, mode="server-adaptive")
    )
    assert isinstance(adaptive, DifferentialPrivacyServerSideAdaptiveClipping)
    plain = build_strategy("fedavg", {}, 3, privacy=PrivacySettings(clip_norm=0.5, noise_multiplier=1.0))
    assert not isinstance(plain, DifferentialPrivacyServerSideFixedClipping)
    with pytest.raises(JobSpecError, match=r"privacy\.clip_norm: server-side DP with fixed clipping"):
        job_with(noise_multiplier=1.0, mode="server-fixed")
    with pytest.raises(JobSpecError, match=r"privacy\.mode"):
        job_with(mode="client")
