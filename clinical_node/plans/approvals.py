"""A site's allow-list of training plans, by sha256.

Approving a plan copies the file into the site folder (``plans/<sha256>.py``) and records it
in ``plans/approved.json`` (with who approved it and when); the node only ever runs such a
copy, whose hash it checks again at load. Built-in plans are approved the same way, by the
site's explicit choice: nothing is approved by default.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import BUILTIN_PLANS, TrainingPlan, TrainingPlanError


@dataclass(frozen=True)
class Approval:
    sha256: str
    name: str
    approved_at: str
    approved_by: str


class PlanApprovals:
    def __init__(self, site_root: Path) -> None:
        self.dir = Path(site_root) / "plans"
        self.index = self.dir / "approved.json"
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Approval]:
        if not self.index.exists():
            return {}
        try:
            raw = json.loads(self.index.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingPlanError(f"{self.index}: unreadable allow-list: {exc}") from exc
        return {a["sha256"]: Approval(**a) for a in raw.get("approved", [])}

    def _save(self, approvals: dict[str, Approval]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index.with_suffix(".tmp")
        tmp.write_text(json.dumps({"approved": [a.__dict__ for a in approvals.values()]}, indent=1))
        os.replace(tmp, self.index)

    def approve(self, plan: TrainingPlan, by: str = "site-admin") -> Approval:
        """Approve a plan file; it must parse, define the plan functions and declare only
        known metrics. It is read, not run: its code only ever runs in the sandbox."""
        plan.check()
        with self._lock:
            approvals = self._load()
            self.dir.mkdir(parents=True, exist_ok=True)
            target = self.dir / f"{plan.sha256}.py"
            if not target.exists():
                tmp = target.with_suffix(".tmp")
                shutil.copyfile(plan.path, tmp)
                os.replace(tmp, target)
            approval = Approval(plan.sha256, plan.name, datetime.now(UTC).isoformat(timespec="seconds"), by)
            approvals[plan.sha256] = approval
            self._save(approvals)
        return approval

    def approve_builtin(self, name: str, by: str = "site-admin") -> Approval:
        return self.approve(TrainingPlan.builtin(name), by)

    def revoke(self, sha256: str) -> bool:
        with self._lock:
            approvals = self._load()
            found = approvals.pop(sha256, None)
            if found is not None:
                self._save(approvals)
                (self.dir / f"{sha256}.py").unlink(missing_ok=True)
        return found is not None

    def approved(self) -> list[Approval]:
        return sorted(self._load().values(), key=lambda a: a.approved_at)

    def is_approved(self, sha256: str) -> bool:
        return sha256 in self._load()

    def plan(self, sha256: str) -> TrainingPlan:
        """The approved copy of a plan, checked against its hash."""
        approval = self._load().get(sha256)
        if approval is None:
            raise TrainingPlanError(f"training plan sha256 {sha256} is not approved at this site")
        plan = TrainingPlan.from_file(self.dir / f"{sha256}.py", approval.name)
        if plan.sha256 != sha256:
            raise TrainingPlanError(
                f"the approved copy of plan {approval.name} was altered (sha256 {plan.sha256})"
            )
        return plan

    def builtin_names(self) -> list[str]:
        return [name for name in BUILTIN_PLANS if TrainingPlan.builtin(name).sha256 in self._load()]
