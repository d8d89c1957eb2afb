"""A short real federation on Flower's simulation runtime: two UCI hospitals, admission,
per-site metrics; and a job no site admits fails listing every site's reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aggregator.federation import RoundResult
from clinical_node.site import Site
from deploy.simulation import run_simulated_job
from paroma.demo import DEMO_POLICY, demo_job
from paroma.jobspec import parse_job_spec

pytestmark = pytest.mark.slow


class Recorder:
    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.rounds: list[RoundResult] = []

    def admissions(self, admissions) -> None:
        self.admitted = [a.site_id for a in admissions if a.accepted]

    def round_started(self, server_round: int, total: int) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        self.rounds.append(result)


def test_two_site_federation_trains_and_reports_per_site(uci_sites: Path) -> None:
    # Hungary's policy demands site-side DP: its node clips and noises its own update.
    hungary = Site.open(uci_sites / "hungarian")
    hungary.write_policy(replace(DEMO_POLICY, require_dp=True, dp_clip_norm=5.0, dp_noise_multiplier=0.01))
    hungary.close()
    job = demo_job(rounds=2)
    recorder = Recorder()
    result = run_simulated_job(job, [uci_sites / "cleveland", uci_sites / "hungarian"], observer=recorder)
    assert result.status == "completed", result.reason
    assert recorder.admitted == ["cleveland", "hungarian"]
    assert [r.server_round for r in result.rounds] == [1, 2]
    final = result.rounds[-1]
    assert set(final.sites) == {"cleveland", "hungarian"}
    assert final.sites["cleveland"].n_train == 199 and final.sites["cleveland"].n_test == 104
    assert final.sites["hungarian"].n_train == 172 and final.sites["hungarian"].n_test == 89
    for site in final.sites.values():
        assert site.train["local_steps"] == 100
        assert 0.5 < site.evaluate["accuracy"] <= 1.0
        assert site.isolation == "bubblewrap"  # trained in the strongest sandbox, as reported
    assert final.sites["cleveland"].privacy == {}
    dp = final.sites["hungarian"].privacy
    assert (dp["clip-norm"], dp["noise-multiplier"], dp["releases"]) == (5.0, 0.01, 2.0)
    assert dp["epsilon"] > result.rounds[0].sites["hungarian"].privacy["epsilon"] > 0
    assert result.weights is not None
    assert result.weights["linear.weight"].shape == (1, 13)
    assert np.isfinite(result.weights["linear.weight"]).all()


def test_job_refused_by_every_site_fails_with_each_reason(uci_sites: Path) -> None:
    doc = demo_job(rounds=1).to_dict()
    doc["plan"]["sha256"] = "0" * 64  # a plan no site approved
    job = parse_job_spec(doc)
    result = run_simulated_job(job, [uci_sites / "switzerland", uci_sites / "va"])
    assert result.status == "failed"
    assert "0 of 2 sites admitted the job" in result.reason
    assert "switzerland:" in result.reason and "va:" in result.reason
    assert "sha256" in result.reason
    assert all(not a.accepted for a in result.admissions)
