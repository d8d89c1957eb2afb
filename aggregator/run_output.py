"""What a job's run keeps in its output folder: admissions, progress, a checkpoint after
every completed round, and the final result.

The ServerApp writes it (``output-dir`` in the run config) and the job service reads it,
whichever runtime runs the job (in-process, simulation or a SuperLink). The checkpoint holds
the global model after the round, the round's number and every completed round's metrics;
it is written to a new file and then committed by atomically replacing ``checkpoint.json``,
so a process killed at any instant leaves either the previous checkpoint or the new one.
A run restarted on the same folder resumes after the last completed round.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from paroma.jobspec import JobSpec
from paroma.wire import from_record

from .federation import (
    Admission,
    FederationObserver,
    FederationResult,
    RoundResult,
    SiteResult,
    run_federation,
)

CHECKPOINT = "checkpoint.json"
PROGRESS = "run-state.json"
ADMISSIONS = "admissions.json"
RESULT = "federation.json"
_EVALUATE = "evaluate"


class CheckpointError(Exception):
    """A checkpoint that cannot be used (unreadable, for another job, weights altered)."""


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    _write_atomic(path, (json.dumps(json_safe(data), indent=1, sort_keys=True) + "\n").encode())


def weights_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """The weights as an uncompressed ``.npz`` (no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **weights)  # type: ignore[arg-type]
    return buffer.getvalue()


def weights_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def round_to_dict(result: RoundResult) -> dict[str, Any]:
    return {
        "round": result.server_round,
        "seconds": result.seconds,
        "mean_accuracy": result.mean_accuracy,
        "train_metrics": result.train_metrics,
        "sites": {k: asdict(v) for k, v in result.sites.items()},
    }


def round_from_dict(data: dict[str, Any]) -> RoundResult:
    known = {f.name for f in fields(SiteResult)}
    sites = {
        name: SiteResult(**{k: v for k, v in site.items() if k in known})
        for name, site in dict(data.get("sites", {})).items()
    }
    return RoundResult(int(data["round"]), sites, dict(data.get("train_metrics", {})), float(data["seconds"]))


@dataclass(frozen=True)
class Checkpoint:
    job_sha256: str
    completed_round: int
    rounds: list[dict[str, Any]]  # every completed round, as round_to_dict gives it
    weights: dict[str, np.ndarray]
    weights_sha256: str


class RunOutput:
    """A run's output folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _read(self, name: str) -> Any:
        path = self.folder / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable: {exc}") from exc

    # -- written by the run -----------------------------------------------------------------

    def write_progress(self, **progress: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / PROGRESS, progress)

    def write_admissions(self, admissions: list[Admission]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / ADMISSIONS, [asdict(a) for a in admissions])

    def write_checkpoint(
        self, job_sha256: str, rounds: list[dict[str, Any]], weights: dict[str, np.ndarray]
    ) -> Checkpoint:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = weights_bytes(weights)
        digest = hashlib.sha256(data).hexdigest()
        completed = int(rounds[-1]["round"]) if rounds else 0
        name = f"weights-round-{completed}.npz"
        _write_atomic(self.folder / name, data)
        previous = self._read(CHECKPOINT)
        write_json_atomic(
            self.folder / CHECKPOINT,
            {
                "job_sha256": job_sha256,
                "completed_round": completed,
                "weights": name,
                "weights_sha256": digest,
                "rounds": rounds,
            },
        )
        # the previous weights are garbage only once the new checkpoint is committed
        if isinstance(previous, dict) and previous.get("weights") not in (None, name):
            (self.folder / str(previous["weights"])).unlink(missing_ok=True)
        return Checkpoint(job_sha256, completed, rounds, weights, digest)

    def write_result(self, result: FederationResult, rounds: list[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        body = result.to_dict()
        body["rounds"] = rounds
        write_json_atomic(self.folder / RESULT, body)

    # -- read by the job service and by a resumed run -------------------------------------

    def progress(self) -> dict[str, Any]:
        data = self._read(PROGRESS)
        return data if isinstance(data, dict) else {}

    def admissions(self) -> list[Admission]:
        data = self._read(ADMISSIONS) or []
        return [Admission(str(a["site_id"]), bool(a["accepted"]), str(a["reason"])) for a in data]

    def result(self) -> dict[str, Any] | None:
        data = self._read(RESULT)
        return data if isinstance(data, dict) else None

    def completed_rounds(self) -> list[dict[str, Any]]:
        """Every completed round's metrics, from the last checkpoint (its weights unread)."""
        meta = self._read(CHECKPOINT)
        return list(meta["rounds"]) if isinstance(meta, dict) else []

    def checkpoint(self, job_sha256: str | None = None) -> Checkpoint | None:
        """The last committed checkpoint (None before the first round completes)."""
        meta = self._read(CHECKPOINT)
        if meta is None:
            return None
        if job_sha256 is not None and meta.get("job_sha256") != job_sha256:
            raise CheckpointError(
                f"{self.folder / CHECKPOINT}: checkpoint of job {meta.get('job_sha256')}, not {job_sha256}"
            )
        path = self.folder / str(meta["weights"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise CheckpointError(f"{path}: the weights do not match the checkpoint's sha256")
        return Checkpoint(
            str(meta["job_sha256"]),
            int(meta["completed_round"]),
            list(meta["rounds"]),
            weights_from_bytes(data),
            str(meta["weights_sha256"]),
        )


class GlobalModelTap(Grid):
    """A Grid that keeps the global model the aggregator last sent out for evaluation: after
    a round's aggregation the strategy evaluates exactly that model, so it is the model the
    round produced."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.latest: dict[str, np.ndarray] | None = None

    def _tap(self, messages: Iterable[Message]) -> list[Message]:
        batch = list(messages)
        for message in batch:
            if message.metadata.message_type == _EVALUATE and message.content.array_records:
                self.latest = from_record(next(iter(message.content.array_records.values())))
                break
        return batch

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._tap(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(self._tap(messages), timeout=timeout)


class CheckpointingObserver:
    """The observer that writes a run's output folder, then tells ``inner`` (if any)."""

    def __init__(
        self,
        output: RunOutput,
        job: JobSpec,
        grid: GlobalModelTap,
        *,
        resumed: Checkpoint | None = None,
        inner: FederationObserver | None = None,
    ) -> None:
        self.output = output
        self.job = job
        self.grid = grid
        self.inner = inner
        self.rounds: list[dict[str, Any]] = list(resumed.rounds) if resumed else []

    def admissions(self, admissions: list[Admission]) -> None:
        self.output.write_admissions(admissions)
        self.output.write_progress(phase="admission", round=0, total=self.job.rounds)
        if self.inner is not None:
            self.inner.admissions(admissions)

    def round_started(self, server_round: int, total: int) -> None:
        self.output.write_progress(phase="running", round=server_round, total=total)
        if self.inner is not None:
            self.inner.round_started(server_round, total)

    def round_finished(self, result: RoundResult) -> None:
        if self.grid.latest is None:
            raise CheckpointError(f"round {result.server_round}: no global model was sent for evaluation")
        self.rounds = [r for r in self.rounds if r["round"] < result.server_round]
        self.rounds.append(round_to_dict(result))
        self.output.write_checkpoint(self.job.sha256, self.rounds, self.grid.latest)
        if self.inner is not None:
            self.inner.round_finished(result)

    def finished(self, result: FederationResult) -> FederationResult:
        """The result with every round of the job (those before a resume too), written."""
        merged = FederationResult(
            result.job_sha256,
            result.status,
            result.admissions,
            [round_from_dict(r) for r in self.rounds],
            result.weights,
            result.reason,
        )
        self.output.write_result(merged, self.rounds)
        self.output.write_progress(phase=result.status, round=len(self.rounds), total=self.job.rounds)
        return merged


def resume_point(output: RunOutput, job: JobSpec) -> tuple[Checkpoint | None, int]:
    """The checkpoint to resume from (if any) and the round to start with."""
    checkpoint = output.checkpoint(job.sha256)
    return checkpoint, (checkpoint.completed_round + 1 if checkpoint else 1)


def run_with_checkpoints(
    grid: Grid,
    job: JobSpec,
    output: RunOutput,
    *,
    observer: FederationObserver | None = None,
    expected_sites: int | None = None,
    node_wait_s: float = 60.0,
    should_stop: Callable[[], bool] | None = None,
) -> FederationResult:
    """Run ``job`` writing ``output``; resume after the last completed round when ``output``
    holds a checkpoint of this job."""
    checkpoint, start = resume_point(output, job)
    tap = GlobalModelTap(grid)
    watcher = CheckpointingObserver(output, job, tap, resumed=checkpoint, inner=observer)
    result = run_federation(
        tap,
        job,
        observer=watcher,
        weights=checkpoint.weights if checkpoint else None,
        start_round=start,
        expected_sites=expected_sites,
        node_wait_s=node_wait_s,
        should_stop=should_stop,
    )
    return watcher.finished(result)
