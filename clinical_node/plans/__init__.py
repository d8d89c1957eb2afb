"""Training plans: the code a job runs on each site, identified by the sha256 of its file.

A plan is a Python file defining ``build_model(n_features, hyper)``,
``train(model, x, y, hyper) -> metrics`` and ``evaluate(model, x, y, hyper) -> metrics``.
Sites admit a job only if its plan's sha256 is on their allow-list.
"""

from __future__ import annotations

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
