"""A data scientist's session through the CLI against a live job service (local runner over
two real UCI sites): submit the shipped example spec, watch it to the end, read its status
and log, pull the model and check its provenance against what the service reported."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import JobServiceFixture

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "aggregator" / "jobs" / "examples" / "heart.toml"


def paroma(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paroma.cli", "job", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160", **(env or {})},
        timeout=600,
    )


def test_submit_watch_pull_with_provenance(job_service: JobServiceFixture, tmp_path: Path) -> None:
    token = job_service.tokens["alice"]
    submitted = paroma("submit", str(EXAMPLE), "--server", job_service.url, "--token", token)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job-")

    env = {"PAROMA_JOB_SERVER": job_service.url, "PAROMA_JOB_TOKEN": token}
    watched = paroma("watch", job_id, "--interval", "0.2", env=env)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    out = watched.stdout
    assert "cleveland: admits" in out and "hungarian: admits" in out
    assert "participating sites: cleveland, hungarian" in out
    for n in (1, 2, 3):
        assert out.count(f"round {n}: mean accuracy") == 1, out
    assert "completed: model heart-disease-lr-" in out

    status = httpx.get(f"{job_service.url}/api/jobs/{job_id}", headers=job_service.headers("alice")).json()
    shown = paroma("status", job_id, env=env)
    assert shown.returncode == 0 and "state: completed" in shown.stdout
    assert f"model: {status['model_id']}" in shown.stdout
    listed = paroma("status", env=env)
    assert job_id in listed.stdout
    log = paroma("logs", job_id, env=env)
    assert "submitted by alice" in log.stdout and "round 3 completed" in log.stdout

    out_dir = tmp_path / "model"
    pulled = paroma("pull", job_id, "--out", str(out_dir), env=env)
    assert pulled.returncode == 0, pulled.stderr
    weights_file = out_dir / f"{status['model_id']}.npz"
    card = json.loads((out_dir / "model-card.json").read_text())
    markdown = (out_dir / "model-card.md").read_text()
    assert card["model_id"] == status["model_id"] and status["model_id"] in markdown
    assert hashlib.sha256(weights_file.read_bytes()).hexdigest() == card["weights_sha256"]
    with np.load(weights_file, allow_pickle=False) as npz:
        assert npz["linear.weight"].shape == (1, 13) and np.isfinite(npz["linear.weight"]).all()

    # provenance: the job as submitted, its training plan, every site's cohort, every round
    assert card["training"]["job_sha256"] == status["spec_sha256"]
    assert card["training"]["training_plan"]["sha256"] == (
        "aafa44dc53b4effcb546fd09b8eec463ee07be910b4a0d09adcd2a41aa7da713"
    )
    assert card["owner"] == "alice"
    assert sorted(card["sites"]) == ["cleveland", "hungarian"]
    last = status["rounds"][-1]["sites"]
    for site in ("cleveland", "hungarian"):
        assert card["sites"][site]["cohort"] == last[site]["cohort"]
        assert card["sites"][site]["rounds"] == [1, 2, 3]
    assert [m["round"] for m in card["metrics"]] == [1, 2, 3]
    for metric, reported in zip(card["metrics"], status["rounds"], strict=True):
        assert metric["mean_accuracy"] == pytest.approx(reported["mean_accuracy"])
    assert {a["site_id"]: a["accepted"] for a in card["admissions"]} == {"cleveland": True, "hungarian": True}


def test_cli_errors_are_one_line_and_non_zero(job_service: JobServiceFixture, tmp_path: Path) -> None:
    env = {"PAROMA_JOB_SERVER": job_service.url, "PAROMA_JOB_TOKEN": job_service.tokens["bob"]}
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace('purpose = "HRESCH"', 'purpose = "FUN"')
        .replace("rounds = 3", "rounds = 0")
    )
    invalid = paroma("submit", str(bad), env=env)
    assert invalid.returncode == 2
    assert (
        invalid.stderr.count("\n") == 1 and "purpose: 'FUN'" in invalid.stderr and "rounds:" in invalid.stderr
    )
    unknown = paroma("status", "job-000000000000", env=env)
    assert unknown.returncode == 1 and "404" in unknown.stderr and "no job" in unknown.stderr
    no_token = paroma("status", env={"PAROMA_JOB_SERVER": job_service.url, "PAROMA_JOB_TOKEN": ""})
    assert no_token.returncode == 2 and "no token" in no_token.stderr
    down = paroma("status", env={"PAROMA_JOB_SERVER": "http://127.0.0.1:9", "PAROMA_JOB_TOKEN": "x"})
    assert down.returncode == 2 and "cannot reach the job service" in down.stderr
