"""A running job's progress as a JSON file next to its result (``progress.json`` in the run's
output folder), rewritten atomically at admission and at the start and end of every round, so
that an operator, ``paroma fed run`` or a test can follow a job run by a SuperLink.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .federation import Admission, FederationObserver, RoundResult

PROGRESS_FILE = "progress.json"


class ProgressFile:
    """A FederationObserver writing ``progress.json``; forwards to ``inner`` when given."""

    def __init__(self, folder: Path, inner: FederationObserver | None = None) -> None:
        self.path = Path(folder) / PROGRESS_FILE
        self.inner = inner
        self.state: dict[str, Any] = {"admissions": [], "current_round": 0, "total_rounds": 0, "rounds": []}

    def admissions(self, admissions: list[Admission]) -> None:
        self.state["admissions"] = [asdict(a) for a in admissions]
        self._write()
        if self.inner is not None:
            self.inner.admissions(admissions)

    def round_started(self, server_round: int, total: int) -> None:
        self.state["current_round"] = server_round
        self.state["total_rounds"] = total
        self._write()
        if self.inner is not None:
            self.inner.round_started(server_round, total)

    def round_finished(self, result: RoundResult) -> None:
        self.state["rounds"].append(
            {
                "round": result.server_round,
                "seconds": result.seconds,
                "sites": {k: {"n_train": v.n_train, "error": v.error} for k, v in result.sites.items()},
            }
        )
        self._write()
        if self.inner is not None:
            self.inner.round_finished(result)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.state["updated"] = time.time()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.path)
