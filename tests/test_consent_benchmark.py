"""benchmarks/consent.py at toy scale: it runs, and its correctness checks hold (the OPA
REST path and every sampled per-resource query agree with the embedded decision). Its
timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_consent_benchmark_runs_and_its_engines_agree(tmp_path: Path) -> None:
    out = tmp_path / "consent.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/consent.py", "--patients", "300", "--sample", "40",
         "--cache", str(tmp_path / "cache"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OPA batched agrees: True; per-resource sample agrees 40/40" in result.stdout
    report = json.loads(out.read_text())
    assert sum(report["counts"].values()) == 300 and report["warm_churn_redecided"] == 3
    assert report["resources"] == {"Patient": 300, "Observation": 2700}
