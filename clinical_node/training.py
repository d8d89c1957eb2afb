"""Local training and evaluation of one round, as a task handed to an executor.

A :class:`LocalTask` carries everything the job's code may see: the global weights, the
hyper-parameters and the consent-filtered tensors. The executor runs the training plan on
it and returns the new weights and metrics; the node checks the result
(:func:`validate_update`) before anything leaves the site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .plans import DEFAULT_METRICS, METRIC_RANGES, TrainingPlan

if TYPE_CHECKING:
    import torch

Weights = dict[str, np.ndarray]
MAX_METRIC_NAMES = DEFAULT_METRICS


@dataclass
class LocalTask:
    kind: str  # "train" | "evaluate"
    plan: TrainingPlan
    n_features: int
    weights: Weights
    hyper: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    timeout_s: float = 600.0
    job_id: str = ""  # the sandbox keeps one worker per job


@dataclass
class LocalResult:
    weights: Weights | None
    metrics: dict[str, float]
    isolation: str = "none"
    timings: dict[str, float] = field(default_factory=dict)


class TrainingExecutor(Protocol):
    """Runs a LocalTask; raises ExecutorFailure with a specific reason when it cannot."""

    isolation: str

    def run(self, task: LocalTask) -> LocalResult: ...

    def release(self, job_id: str) -> None:
        """The job has ended at this site: free what its tasks held."""


class ExecutorFailure(Exception):
    """The job's code did not produce a usable result; the reason names why."""


class InvalidUpdate(ExecutorFailure):
    """The job's code produced weights or metrics that must not leave the site."""


def weights_of(model: torch.nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_weights(model: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    import torch

    model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in weights.items()})


def run_task(task: LocalTask) -> LocalResult:
    """Run a task with the plan's code in the calling process (used inside a sandbox)."""
    # Imported here: the node's own process and the sandbox's probe never need torch.
    import torch

    torch.set_num_threads(1)
    module = task.plan.load()
    torch.manual_seed(int(task.hyper.get("seed", 0)))
    model = module.build_model(task.n_features, task.hyper)
    load_weights(model, task.weights)
    x = torch.from_numpy(np.ascontiguousarray(task.x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(task.y, dtype=np.float32))
    if task.kind == "train":
        metrics = dict(module.train(model, x, y, task.hyper))
        return LocalResult(weights_of(model), metrics)
    return LocalResult(None, dict(module.evaluate(model, x, y, task.hyper)))


class InProcessExecutor:
    """Runs the plan in the node's own process: for trusted built-in plans in tests and
    benchmarks only; clinical nodes use the sandbox executor."""

    isolation = "none"

    def run(self, task: LocalTask) -> LocalResult:
        try:
            result = run_task(task)
        except Exception as exc:
            raise ExecutorFailure(f"training plan raised {type(exc).__name__}: {exc}") from exc
        result.isolation = self.isolation
        return result

    def release(self, job_id: str) -> None:
        pass


def validate_update(
    reference: Mapping[str, np.ndarray],
    result: LocalResult,
    *,
    kind: str,
    allowed_metrics: tuple[str, ...] = MAX_METRIC_NAMES,
    max_bytes: int | None = None,
    max_local_steps: int | None = None,
) -> None:
    """Check that what the job's code produced may leave the site: the same tensor names,
    shapes and dtypes as the global model, finite values, a size bound, and only the
    plan's declared metrics, each a plain finite number within its range.

    Raises InvalidUpdate naming the problem. The reasons leave the site, so they name
    only what the site already knows (the model's tensors, the metric vocabulary, the
    bounds) and never a name or value the plan chose: those could carry patient data.
    """
    undeclared = [name for name in result.metrics if name not in allowed_metrics]
    if undeclared:
        raise InvalidUpdate(
            f"{len(undeclared)} metric(s) are not among the plan's declared metrics "
            f"({', '.join(allowed_metrics)})"
        )
    for name, value in result.metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidUpdate(f"metric {name!r} is not a finite number")
        lo, hi, integral = METRIC_RANGES[name]
        if name == "local_steps" and max_local_steps is not None:
            hi = float(max_local_steps)
        if not lo <= value <= hi or (integral and value != int(value)):
            raise InvalidUpdate(
                f"metric {name!r} is outside its range [{lo:g}, {hi:g}]"
                + (" or not whole" if integral else "")
            )
    if kind != "train":
        return
    if result.weights is None:
        raise InvalidUpdate("the training produced no weights")
    expected, got = set(reference), set(result.weights)
    if expected != got:
        extra, missing = len(got - expected), sorted(expected - got)
        raise InvalidUpdate(
            "update tensors differ from the model's: "
            + (f"{extra} unexpected tensor(s)" if extra else "")
            + (", " if extra and missing else "")
            + (f"missing {missing}" if missing else "")
        )
    bound = max_bytes if max_bytes is not None else 4 * sum(a.nbytes for a in reference.values()) + 4096
    total = 0
    for name, ref in reference.items():
        arr = result.weights[name]
        if not isinstance(arr, np.ndarray):
            raise InvalidUpdate(f"tensor {name!r} is not an array")
        if arr.shape != ref.shape:
            raise InvalidUpdate(f"tensor {name!r} does not have the model's shape {ref.shape}")
        if arr.dtype != ref.dtype:
            raise InvalidUpdate(f"tensor {name!r} does not have the model's dtype {ref.dtype}")
        if not np.isfinite(arr).all():
            raise InvalidUpdate(f"tensor {name!r} has NaN or infinite values")
        total += arr.nbytes
    if total > bound:
        raise InvalidUpdate(f"the update is over the bound of {bound} bytes")
