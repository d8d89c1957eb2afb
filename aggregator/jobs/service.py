"""The job service's core: the queue, the workers that hand jobs to a runner, cancellation,
resumption after a restart, and registration of each finished job's model.

No HTTP here (aggregator/jobs/app.py serves it). Jobs wait in the store's queue; ``workers``
threads take them oldest first and run each with the runner; a job that fails, in any way,
is marked failed with the reason and the worker goes on with the next. When the service
starts, the jobs it was running when it stopped (or was killed) are resumed from their last
checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.federation import Admission, FederationResult
from aggregator.run_output import RunOutput, round_from_dict, write_json_atomic
from paroma.jobspec import JobSpec

from .auth import JobTokenStore
from .runner import JobRunner
from .store import ACTIVE, Job, JobStore

log = logging.getLogger("paroma.jobs")


@dataclass
class _Seen:
    admissions: list[Admission]
    rounds: int
    current: int


class JobService:
    def __init__(self, root: Path, runner: JobRunner, *, workers: int = 1) -> None:
        from aggregator.registry import ModelRegistry

        if workers < 1:
            raise ValueError("workers: at least 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = runner
        self.workers = workers
        self.store = JobStore(self.root / "jobs.sqlite")
        self.tokens = JobTokenStore(self.root / "keys" / "job-tokens.json")
        self.registry = ModelRegistry(self.root / "registry")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._resumable: list[str] = []
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        for job in self.store.in_state(*ACTIVE):
            done = len(self.output(job.id).completed_rounds())
            self.store.log(
                job.id,
                f"the job service restarted; the job resumes after round {done}"
                if done
                else "the job service restarted; the job starts again from its admission",
            )
            self._resumable.append(job.id)
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs; a running job stops after its current round and resumes when the
        service starts again."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self.store.close()

    def output(self, job_id: str) -> RunOutput:
        return RunOutput(self.root / "runs" / job_id)

    # -- requests --------------------------------------------------------------------------

    def submit(self, owner: str, job: JobSpec) -> Job:
        job_id = self.store.submit(owner, job.name, job.to_json(), job.sha256, job.rounds)
        self._wake.set()
        return self.store.get(job_id)

    def cancel(self, job_id: str, by: str) -> Job:
        return self.store.request_cancel(job_id, by)

    # -- the workers -----------------------------------------------------------------------

    def _next(self) -> Job | None:
        with self._lock:
            if self._resumable:
                return self.store.get(self._resumable.pop(0))
        return self.store.claim_next()

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._next()
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._execute(job)

    def _execute(self, job: Job) -> None:
        output = self.output(job.id)
        try:
            spec = JobSpec.from_json(job.spec)
            end = job_deadline(spec)
            if end is not None and _past(end):
                self.store.set_state(
                    job.id, "failed", f"the job's deadline {spec.deadline} passed before it ran"
                )
                return
            result = self.runner.run(
                spec,
                output,
                progress=lambda: self.sync(job.id),
                should_stop=lambda: self.store.cancel_requested(job.id) or (end is not None and _past(end)),
                detach=self._stop.is_set,
                run_started=lambda run_id: self.store.set_run_id(job.id, run_id),
                previous_run=job.run_id,
                note=lambda line: self.store.log(job.id, line),
            )
            self.sync(job.id)
        except Exception as exc:  # one job's failure must not touch the others
            log.exception("job %s failed", job.id)
            self.store.set_state(job.id, "failed", f"{type(exc).__name__}: {exc}")
            return
        if result.status == "cancelled":
            done = len(output.completed_rounds())
            if self.store.cancel_requested(job.id):
                self.store.set_state(job.id, "cancelled", f"cancelled after round {done}")
            elif end is not None and _past(end):
                self.store.set_state(
                    job.id, "failed", f"the job's deadline {spec.deadline} passed after round {done}"
                )
            else:
                self.store.log(job.id, "the job service is stopping; the job resumes on restart")
            return
        if result.status != "completed":
            self.store.set_state(job.id, "failed", result.reason or "the run failed")
            return
        try:
            model_id = self._register(job, spec, result, output)
        except Exception as exc:
            log.exception("job %s: model registration failed", job.id)
            self.store.set_state(job.id, "failed", f"the model could not be registered: {exc}")
            return
        self.store.set_model(job.id, model_id)
        self.store.set_state(job.id, "completed", log=f"completed: {len(result.rounds)} rounds")

    def _register(self, job: Job, spec: JobSpec, result: FederationResult, output: RunOutput) -> str:
        """Register the job's model once, even when the service is killed while registering: a
        marker written before registering lets the resumed job find the model it registered."""
        registered = output.folder / "model.json"
        if registered.exists():
            return str(json.loads(registered.read_text())["model_id"])
        marker = output.folder / "registering.json"
        if marker.exists():
            since = str(json.loads(marker.read_text())["since"])
            for model in reversed(self.registry.list(job.owner)):
                if model.provenance.get("job", {}).get("sha256") == spec.sha256 and model.created >= since:
                    write_json_atomic(registered, {"model_id": model.model_id})
                    return model.model_id
        else:
            # the registry's timestamps have whole seconds
            write_json_atomic(
                marker, {"since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
            )
        model = self.registry.register(spec, result, owner=job.owner)
        write_json_atomic(registered, {"model_id": model.model_id})
        return model.model_id

    def sync(self, job_id: str) -> None:
        """Bring the store up to date with the job's run output."""
        output = self.output(job_id)
        admissions = output.admissions()
        rounds = output.completed_rounds()
        current = int(output.progress().get("round", 0) or 0)
        seen = self._seen.get(job_id)
        if admissions and (seen is None or seen.admissions != admissions):
            self.store.record_admissions(job_id, admissions)
        if seen is None or seen.rounds != len(rounds) or seen.current != current:
            self.store.record_progress(job_id, current, rounds)
        self._seen[job_id] = _Seen(admissions, len(rounds), current)


def job_deadline(job: JobSpec) -> datetime | None:
    """The job's ``deadline.at`` (a date-time without a zone is UTC, as at the sites)."""
    if not job.deadline:
        return None
    end = datetime.fromisoformat(job.deadline)
    return end if end.tzinfo else end.replace(tzinfo=UTC)


def _past(moment: datetime) -> bool:
    return datetime.now(UTC) >= moment


def result_from_output(output: RunOutput, job: JobSpec) -> FederationResult:
    """The FederationResult a run left in its output folder (for runs in another process)."""
    body: dict[str, Any] | None = output.result()
    if body is None:
        raise FileNotFoundError(f"{output.folder}: the run left no result")
    checkpoint = output.checkpoint(job.sha256)
    weights = checkpoint.weights if checkpoint else None
    return FederationResult(
        str(body.get("job_sha256", job.sha256)),
        str(body["status"]),
        [
            Admission(str(a["site_id"]), bool(a["accepted"]), str(a["reason"]))
            for a in body.get("admissions", [])
        ],
        [round_from_dict(r) for r in body.get("rounds", [])],
        weights,
        str(body.get("reason", "")),
    )
