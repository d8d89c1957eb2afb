"""Jobs as Flower runs on a SuperLink: submitted, followed and stopped with Flower's own CLI
(``flwr run`` with ``--run-config job-spec=… output-dir=…``, ``flwr ls --run-id``,
``flwr stop``) over the SuperLink's Control API, so that Flower schedules the runs.

The run's ServerApp (aggregator/server_app.py) writes admissions, progress, checkpoints and
the result to the output folder, which this runner reads. The Flower App submitted has no code
of its own: its components are the installed project's ServerApp and ClientApp, so nothing
is installed at run time. A run still going when the job service restarts is followed again;
one that ended without a result is submitted anew and resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.federation import FederationResult
from aggregator.run_output import RunOutput, round_from_dict
from paroma.jobspec import JobSpec

from .runner import RunnerError
from .service import result_from_output

CONNECTION = "paroma"
_MAX_UNANSWERED = 10  # consecutive failed status queries before the job fails
_MAX_RESUBMITS = 3  # runs that died after progress, submitted again
APP_NAME = "paroma-job"
_APP_PYPROJECT = f"""# The Flower App the job service submits: the installed PAROMA-MED ServerApp and ClientApp.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "PAROMA-MED federated job"
dependencies = []

[tool.flwr.app]
publisher = "paroma-med"

[tool.flwr.app.components]
serverapp = "aggregator.server_app:app"
clientapp = "clinical_node.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
strategy = "fedavg"
min-sites = 2
sites-root = ""
job-spec = ""
output-dir = ""
expected-sites = 0
"""


class SuperLinkRunner:
    name = "superlink"

    def __init__(
        self,
        address: str,
        home: Path,
        *,
        app_dir: Path | None = None,
        root_certificates: Path | None = None,
        expected_sites: int = 0,
        poll_s: float = 1.0,
        status_s: float = 5.0,
    ) -> None:
        self.address = address
        self.home = Path(home)
        self.expected_sites = expected_sites
        # progress is read from the run's output folder every poll_s; the SuperLink is asked
        # for the run's state every status_s (each ask is a flwr CLI process, about 1.5 s of
        # CPU), and at once when the output holds the result
        self.poll_s = poll_s
        self.status_s = max(status_s, poll_s)
        self.home.mkdir(parents=True, exist_ok=True)
        security = (
            f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}"
            if root_certificates
            else "insecure = true"
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {json.dumps(address)}\n{security}\n"
        )
        if app_dir is None:
            app_dir = self.home / "app"
            app_dir.mkdir(parents=True, exist_ok=True)
            (app_dir / "pyproject.toml").write_text(_APP_PYPROJECT)
        self.app_dir = Path(app_dir)

    # -- the flwr CLI ----------------------------------------------------------------------

    def _run_flwr(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        bin_dir = Path(sys.executable).parent
        env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        try:
            return subprocess.run(
                [str(bin_dir / "flwr"), *args],
                capture_output=True,
                text=True,
                env=env,
                cwd=self.app_dir,
                timeout=180,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunnerError(f"flwr {args[0]}: {exc}") from exc

    def run_log(self, run_id: str, lines: int = 20) -> str:
        """The last lines of the run's log (the ServerApp's), as ``flwr log --show`` gives it."""
        done = self._run_flwr(["log", run_id, CONNECTION, "--show"])
        return "\n".join((done.stdout + done.stderr).strip().splitlines()[-lines:])

    def _flwr(self, *args: str) -> Any:
        done = self._run_flwr([*args, "--format", "json"])
        try:
            answer = json.loads(done.stdout[done.stdout.find("{") :]) if "{" in done.stdout else None
        except json.JSONDecodeError:
            answer = None
        if done.returncode != 0 or not isinstance(answer, dict) or not answer.get("success", False):
            said = answer.get("error-message") or answer.get("error") if isinstance(answer, dict) else None
            text = said or (done.stdout + done.stderr).strip()[-800:]
            raise RunnerError(f"flwr {args[0]} on the SuperLink at {self.address} failed: {text}")
        return answer

    def submit(self, job: JobSpec, output: RunOutput) -> str:
        output.folder.mkdir(parents=True, exist_ok=True)
        overrides = output.folder / "run-config.toml"
        lines = [
            f"job-spec = {json.dumps(job.to_json())}",  # JSON string escapes are TOML's too
            f"output-dir = {json.dumps(str(output.folder.resolve()))}",
        ]
        if self.expected_sites:
            lines.append(f"expected-sites = {self.expected_sites}")
        overrides.write_text("\n".join(lines) + "\n")
        answer = self._flwr("run", str(self.app_dir), CONNECTION, "--run-config", str(overrides))
        return str(answer["run-id"])

    def status(self, run_id: str) -> tuple[str, str]:
        """The run's status and its details as the SuperLink reports them."""
        answer = self._flwr("ls", CONNECTION, "--run-id", run_id)
        for run in answer.get("runs", []):
            if str(run.get("run-id")) == run_id:
                return str(run.get("status", "unknown")), str(run.get("status-details", ""))
        return "unknown", f"the SuperLink does not know run {run_id}"

    def runs(self) -> list[dict[str, Any]]:
        """Every run the SuperLink knows (answers once its Control API is up)."""
        return list(self._flwr("ls", CONNECTION).get("runs", []))

    def stop(self, run_id: str) -> None:
        self._flwr("stop", run_id, CONNECTION)

    # -- the JobRunner interface -----------------------------------------------------------

    def run(
        self,
        job: JobSpec,
        output: RunOutput,
        *,
        progress: Callable[[], None],
        should_stop: Callable[[], bool],
        run_started: Callable[[str], None],
        previous_run: str = "",
        note: Callable[[str], None] | None = None,
        detach: Callable[[], bool] = lambda: False,
    ) -> FederationResult:
        run_id = ""
        if previous_run and not previous_run.startswith("local-"):
            try:
                state, _ = self.status(previous_run)
            except RunnerError:
                state = "unknown"
            if not state.startswith("finished") and state != "unknown":
                run_id = previous_run  # still scheduled or running: follow it again
        if not run_id:
            (output.folder / "federation.json").unlink(missing_ok=True)
            run_id = self.submit(job, output)
            run_started(run_id)
        stopping = False
        unanswered = 0
        resubmits = 0
        rounds_at_submit = len(output.completed_rounds())
        asked = time.monotonic()
        while True:
            time.sleep(self.poll_s)
            progress()
            if detach():
                # the run goes on at the SuperLink; the restarted service follows it again
                return _cancelled(job, output)
            if not stopping and should_stop():
                self.stop(run_id)
                stopping = True
            if time.monotonic() - asked < self.status_s and output.result() is None:
                continue
            asked = time.monotonic()
            try:
                state, details = self.status(run_id)
                unanswered = 0
            except RunnerError:
                # a SuperLink busy or restarting for a moment is not the run's end
                unanswered += 1
                if unanswered >= _MAX_UNANSWERED:
                    raise
                continue
            if not state.startswith("finished"):
                continue
            progress()
            if stopping or state == "finished:stopped":
                return _cancelled(job, output)
            if output.result() is not None:
                return result_from_output(output, job)
            try:
                tail = self.run_log(run_id, lines=5)
            except RunnerError as exc:
                tail = str(exc)
            done = len(output.completed_rounds())
            if done > rounds_at_submit and resubmits < _MAX_RESUBMITS:
                # the ServerApp died after checkpointing progress: a new run resumes after it
                resubmits += 1
                ended = run_id
                rounds_at_submit = done
                run_id = self.submit(job, output)
                run_started(run_id)
                if note is not None:
                    note(
                        f"Flower run {ended} ended ({state}) without a result after round {done}; "
                        f"submitted again as run {run_id}, which resumes after round {done}"
                    )
                continue
            raise RunnerError(
                f"Flower run {run_id} ended ({state}{': ' + details if details not in ('', 'N/A') else ''}) "
                f"without a result; the end of its log (flwr log {run_id}): {tail or '(empty)'}"
            )


def _cancelled(job: JobSpec, output: RunOutput) -> FederationResult:
    rounds = [round_from_dict(r) for r in output.completed_rounds()]
    return FederationResult(job.sha256, "cancelled", output.admissions(), rounds, None, "cancelled")
