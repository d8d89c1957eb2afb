"""Running a job on the deployment: submitted as a Flower run to the SuperLink's Control API
(``flwr run``, TLS verified against the federation CA) and followed until its result,
``federation.json``, appears in the run's output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.run_output import PROGRESS, RunOutput
from paroma.jobspec import JobSpec

from .federation_config import FederationConfig
from .launcher import _json_out, flwr_cli
from .workdir import Workdir

RESULT_FILE = "federation.json"


class JobRunError(RuntimeError):
    """The run could not be submitted, or ended without a result."""


@dataclass(frozen=True)
class SubmittedJob:
    run_id: int
    out: Path

    @property
    def result_path(self) -> Path:
        return self.out / RESULT_FILE

    @property
    def progress_path(self) -> Path:
        return self.out / PROGRESS

    def progress(self) -> dict[str, Any]:
        """The run's phase, current round and total (aggregator/run_output.py), {} before any."""
        try:
            return RunOutput(self.out).progress()
        except Exception:  # a file being replaced or unreadable: no progress to show yet
            return {}


def submit(config: FederationConfig, job: JobSpec, *, out: Path | None = None) -> SubmittedJob:
    workdir = Workdir(config.workdir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out = Path(out) if out is not None else workdir.jobs / f"{job.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    overrides = out / "run-config.toml"
    # JSON string escapes are TOML basic-string escapes.
    overrides.write_text(
        f"job-spec = {json.dumps(job.to_json())}\n"
        f"output-dir = {json.dumps(str(out.resolve()))}\n"
        f"expected-sites = {len(config.sites)}\n"
        f"min-sites = {job.min_sites}\n"
    )
    result = flwr_cli(
        workdir, "run", str(workdir.app), config.name, "--run-config", str(overrides), "--format", "json"
    )
    answer = _json_out(result)
    if not isinstance(answer, dict) or not answer.get("success") or "run-id" not in answer:
        raise JobRunError(f"flwr run was refused: {(result.stdout + result.stderr).strip()[-2000:]}")
    return SubmittedJob(int(answer["run-id"]), out)


def run_status(config: FederationConfig, run_id: int) -> str:
    """The run's status as the SuperLink reports it ("running", "finished:completed", ...)."""
    result = flwr_cli(Workdir(config.workdir), "ls", config.name, "--run-id", str(run_id), "--format", "json")
    answer = _json_out(result)
    if isinstance(answer, dict):
        for run in answer.get("runs", []):
            if int(run.get("run-id", -1)) == run_id:
                return str(run.get("status", "unknown"))
    return "unknown"


def wait(config: FederationConfig, submitted: SubmittedJob, *, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Block until the run's result is written; raise JobRunError if the run finishes without
    one or the time runs out."""
    deadline = time.monotonic() + timeout_s
    checked = time.monotonic()
    while time.monotonic() < deadline:
        if submitted.result_path.is_file():
            data = json.loads(submitted.result_path.read_text())
            return data if isinstance(data, dict) else {}
        if time.monotonic() - checked > 30:
            checked = time.monotonic()
            state = run_status(config, submitted.run_id)
            if state.startswith("finished") and not submitted.result_path.is_file():
                time.sleep(1.0)
                if not submitted.result_path.is_file():
                    raise JobRunError(
                        f"run {submitted.run_id} {state} without a result "
                        f"(see `flwr log {submitted.run_id}` and the superlink log)"
                    )
        time.sleep(0.5)
    raise JobRunError(f"run {submitted.run_id}: no result after {timeout_s:.0f} s")
