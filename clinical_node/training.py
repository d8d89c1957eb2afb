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
from typing import Any, Protocol

import numpy as np
import torch

from .plans import TrainingPlan

Weights = dict[str, np.ndarray]
MAX_METRIC_NAMES = ("train_loss", "local_steps", "loss", "accuracy")


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


class ExecutorFailure(Exception):
    """The job's code did not produce a usable result; the reason names why."""


class InvalidUpdate(ExecutorFailure):
    """The job's code produced weights or metrics that must not leave the site."""


def weights_of(model: torch.nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_weights(model: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in weights.items()})


def run_task(task: LocalTask) -> LocalResult:
    """Run a task with the plan's code in the calling process (used inside a sandbox)."""
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


def validate_update(
    reference: Mapping[str, np.ndarray],
    result: LocalResult,
    *,
    kind: str,
    allowed_metrics: tuple[str, ...] = MAX_METRIC_NAMES,
    max_bytes: int | None = None,
) -> None:
    """Check that what the job's code produced may leave the site: the same tensor names,
    shapes and dtypes as the global model, finite values, a size bound, and only the
    declared metrics as plain finite numbers. Raises InvalidUpdate naming the problem."""
    for name, value in result.metrics.items():
        if name not in allowed_metrics:
            raise InvalidUpdate(
                f"metric {name!r} is not one of the declared metrics {', '.join(allowed_metrics)}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidUpdate(f"metric {name!r} is not a finite number")
    if kind != "train":
        return
    if result.weights is None:
        raise InvalidUpdate("the training produced no weights")
    expected, got = set(reference), set(result.weights)
    if expected != got:
        extra, missing = sorted(got - expected), sorted(expected - got)
        raise InvalidUpdate(
            "update tensors differ from the model's: "
            + (f"unexpected {extra}" if extra else "")
            + (" " if extra and missing else "")
            + (f"missing {missing}" if missing else "")
        )
    bound = max_bytes if max_bytes is not None else 4 * sum(a.nbytes for a in reference.values()) + 4096
    total = 0
    for name, ref in reference.items():
        arr = result.weights[name]
        if not isinstance(arr, np.ndarray):
            raise InvalidUpdate(f"tensor {name!r} is not an array")
        if arr.shape != ref.shape:
            raise InvalidUpdate(f"tensor {name!r} has shape {arr.shape}, expected {ref.shape}")
        if arr.dtype != ref.dtype:
            raise InvalidUpdate(f"tensor {name!r} has dtype {arr.dtype}, expected {ref.dtype}")
        if not np.isfinite(arr).all():
            raise InvalidUpdate(f"tensor {name!r} has NaN or infinite values")
        total += arr.nbytes
    if total > bound:
        raise InvalidUpdate(f"update is {total} bytes, over the bound of {bound}")
