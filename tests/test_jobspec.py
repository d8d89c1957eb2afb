"""The job spec: a valid one round-trips; an invalid one lists every problem with its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinical_node.plans import TrainingPlan
from paroma.jobspec import JobSpec, JobSpecError, parse_job_spec


def valid() -> dict:
    plan = TrainingPlan.builtin("logistic-regression")
    return {
        "name": "heart",
        "purpose": "HRESCH",
        "organization": "Organization/research",
        "rounds": 3,
        "data": {"spec": "flamby-heart-disease"},
        "plan": {"reference": "logistic-regression", "sha256": plan.sha256},
        "strategy": {"name": "fedprox", "params": {"proximal_mu": 0.1}},
        "training": {"lr": 0.01},
    }


def test_round_trip_keeps_the_hash() -> None:
    job = parse_job_spec(valid())
    again = JobSpec.from_json(job.to_json())
    assert again == job
    assert again.sha256 == job.sha256
    assert job.hyper(2)["proximal_mu"] == pytest.approx(0.1)


def test_every_problem_is_listed() -> None:
    doc = valid()
    doc.update(purpose="FUN", rounds=0, min_sites="two")
    doc["strategy"] = {"name": "fedmagic"}
    doc["training"] = {"lr": -1, "optimizer": "rmsprop"}
    doc["plan"]["sha256"] = "XYZ"
    with pytest.raises(JobSpecError) as caught:
        parse_job_spec(doc)
    fields = {f for f, _ in caught.value.problems}
    assert {
        "purpose",
        "rounds",
        "min_sites",
        "strategy.name",
        "training.lr",
        "training.optimizer",
        "plan.sha256",
    } <= fields


def test_toml_file(tmp_path: Path) -> None:
    plan = TrainingPlan.builtin("mlp")
    path = tmp_path / "job.toml"
    path.write_text(
        f'''name = "mlp-job"
purpose = "HRESCH"
organization = "Organization/research"
rounds = 2
[data]
spec = "flamby-heart-disease"
[plan]
reference = "mlp"
sha256 = "{plan.sha256}"
'''
    )
    job = JobSpec.from_toml(path)
    assert job.plan == "mlp" and job.rounds == 2 and job.feature_spec.n_features == 13
    path.write_text("name = [")
    with pytest.raises(JobSpecError, match="not valid TOML"):
        JobSpec.from_toml(path)
