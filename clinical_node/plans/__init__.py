"""Training plans: the code a job runs on each site, identified by the sha256 of its file.

A plan is a Python file defining ``build_model(n_features, hyper)``,
``train(model, x, y, hyper) -> metrics`` and ``evaluate(model, x, y, hyper) -> metrics``,
and optionally ``METRICS``: the names of the metrics it reports, a tuple of string literals
from the site's vocabulary (:data:`METRIC_RANGES`); without it, :data:`DEFAULT_METRICS`.
Sites admit a job only if its plan's sha256 is on their allow-list.

The node reads a plan only as text (:meth:`TrainingPlan.check`): its code runs in the
sandbox, never in the node's or the administrator's process.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).parent
BUILTIN_PLANS: dict[str, Path] = {
    "logistic-regression": _HERE / "logistic_regression.py",
    "mlp": _HERE / "mlp.py",
}
REQUIRED_FUNCTIONS = ("build_model", "train", "evaluate")
DEFAULT_METRICS = ("train_loss", "local_steps", "loss", "accuracy")
# The metrics a plan may report and their ranges (low, high, whole number): a metric is
# a channel out of the site, so only these names and values inside the range pass.
METRIC_RANGES: dict[str, tuple[float, float, bool]] = {
    "train_loss": (0.0, 1e6, False),
    "loss": (0.0, 1e6, False),
    "local_steps": (0.0, 1e9, True),
    "accuracy": (0.0, 1.0, False),
    "balanced_accuracy": (0.0, 1.0, False),
    "auc": (0.0, 1.0, False),
    "f1": (0.0, 1.0, False),
    "precision": (0.0, 1.0, False),
    "recall": (0.0, 1.0, False),
    "mse": (0.0, 1e12, False),
    "mae": (0.0, 1e6, False),
}


class TrainingPlanError(Exception):
    """A plan file that cannot be used: missing, unreadable, or without the plan API."""


@dataclass(frozen=True)
class TrainingPlan:
    name: str
    path: Path
    sha256: str

    @classmethod
    def from_file(cls, path: Path, name: str | None = None) -> TrainingPlan:
        path = Path(path)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise TrainingPlanError(f"training plan {path}: {exc.strerror}") from exc
        return cls(name or path.stem, path, digest)

    @classmethod
    def builtin(cls, name: str) -> TrainingPlan:
        if name not in BUILTIN_PLANS:
            raise TrainingPlanError(
                f"unknown built-in training plan {name!r}; expected one of {', '.join(BUILTIN_PLANS)}"
            )
        return cls.from_file(BUILTIN_PLANS[name], name)

    @classmethod
    def resolve(cls, reference: str) -> TrainingPlan:
        """A built-in plan by name, or a plan file by path."""
        if reference in BUILTIN_PLANS:
            return cls.builtin(reference)
        return cls.from_file(Path(reference))

    def check(self) -> tuple[str, ...]:
        """Read the plan as text (without running it): it must be Python, define the plan
        functions at top level, and declare its metrics (if it does) as a literal tuple of
        names from the vocabulary. Returns the declared metrics."""
        try:
            source = self.path.read_bytes()
        except OSError as exc:
            raise TrainingPlanError(f"training plan {self.path}: {exc.strerror}") from exc
        if hashlib.sha256(source).hexdigest() != self.sha256:
            raise TrainingPlanError(f"training plan {self.path} changed since its sha256 was taken")
        try:
            tree = ast.parse(source, filename=str(self.path))
        except (SyntaxError, ValueError) as exc:
            raise TrainingPlanError(f"training plan {self.path} is not valid Python: {exc}") from exc
        defined: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.ImportFrom):  # a plan may reuse another plan's functions
                defined |= {alias.asname or alias.name for alias in node.names}
        missing = [f for f in REQUIRED_FUNCTIONS if f not in defined]
        if missing:
            raise TrainingPlanError(f"training plan {self.path} lacks {', '.join(missing)}")
        declared: tuple[str, ...] = DEFAULT_METRICS
        for node in tree.body:  # type: ignore[assignment]
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "METRICS" for t in targets):
                assert isinstance(node, ast.Assign)
                try:
                    value = ast.literal_eval(node.value)
                except ValueError as exc:
                    raise TrainingPlanError(
                        f"training plan {self.path}: METRICS must be a literal tuple of names"
                    ) from exc
                if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
                    raise TrainingPlanError(f"training plan {self.path}: METRICS must be a tuple of names")
                unknown = [v for v in value if v not in METRIC_RANGES]
                if unknown:
                    raise TrainingPlanError(
                        f"training plan {self.path}: METRICS {unknown} are not in the site's metric "
                        f"vocabulary ({', '.join(METRIC_RANGES)})"
                    )
                declared = tuple(value)
        return declared

    def load(self) -> ModuleType:
        """Import the plan file (after checking it still has the recorded sha256)."""
        current = hashlib.sha256(self.path.read_bytes()).hexdigest()
        if current != self.sha256:
            raise TrainingPlanError(
                f"training plan {self.path} changed: sha256 {current} is not the approved {self.sha256}"
            )
        spec = importlib.util.spec_from_file_location(f"paroma_plan_{self.sha256[:16]}", self.path)
        if spec is None or spec.loader is None:
            raise TrainingPlanError(f"training plan {self.path} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        missing = [f for f in REQUIRED_FUNCTIONS if not callable(getattr(module, f, None))]
        if missing:
            raise TrainingPlanError(f"training plan {self.path} lacks {', '.join(missing)}")
        return module
