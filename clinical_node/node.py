"""The clinical node: what a hospital runs to take part in federated jobs.

For each job the node decides admission, and for each round it asks its data view (the
protection layer) which resources the job may read, extracts the tensors from them, runs
the job's training plan through its executor (the sandbox), checks the update and hands
back only that. The Flower ClientApp (``client_app.py``) is a thin adapter over this class.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from paroma.jobspec import JobSpec

from .features import SiteDataset, extract
from .plans import TrainingPlan, TrainingPlanError
from .policy import isolation_rank
from .privacy import PrivacyLedger, privatize, site_privacy
from .site import Site
from .training import (
    ExecutorFailure,
    LocalTask,
    TrainingExecutor,
    validate_update,
)

log = logging.getLogger("paroma.node")


@dataclass(frozen=True)
class Admission:
    accepted: bool
    reason: str


@dataclass
class Cohort:
    """What one job may read at this site in one round.

    ``snapshot`` identifies exactly what ``load`` would return (the permitted patients,
    their consent versions, the redactions and the store's generation), so the node reads
    and extracts again only when it changed."""

    load: Callable[[], Iterable[dict[str, Any]]]
    permit: int
    deny: int = 0
    no_consent: int = 0
    redacted_resources: int = 0
    snapshot: str = ""


class DataView(Protocol):
    """Gives a job the resources it may read this round (the protection layer implements it)."""

    def cohort(self, job: JobSpec, server_round: int) -> Cohort: ...


class AdmissionPolicy(Protocol):
    def admit(self, job: JobSpec) -> Admission: ...


class NodeEvents(Protocol):
    """Told of every round the node takes part in (the protection layer audits them)."""

    def round_finished(
        self, job: JobSpec, server_round: int, kind: str, report: RoundReport | None, error: str | None
    ) -> None: ...


class UnfilteredView:
    """Every Patient and Observation of the store, with no consent filtering. Only for data
    that needs no consent (public benchmark data such as the UCI files in benchmarks)."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def cohort(self, job: JobSpec, server_round: int) -> Cohort:
        store = self.site.fhir
        patients = store.patients()
        snapshot = hashlib.sha256(f"unfiltered:{store.generation()}".encode()).hexdigest()

        def load() -> Iterable[dict[str, Any]]:
            yield from store.iter_resources("Patient")
            yield from store.iter_resources("Observation")

        return Cohort(load, permit=len(patients), snapshot=snapshot)


class SiteAdmission:
    """Admission on the site's policy: purpose, requesting organisation, approved plan,
    sandbox isolation and privacy. Every refusal names the rule it failed."""

    def __init__(self, site: Site, isolation: str) -> None:
        self.site = site
        self.isolation = isolation

    def admit(self, job: JobSpec) -> Admission:
        policy = self.site.policy
        if job.purpose not in policy.purposes:
            return Admission(
                False,
                f"purpose {job.purpose} is not admitted at this site (admitted: {', '.join(policy.purposes) or 'none'})",
            )
        if job.organization not in policy.organizations:
            return Admission(False, f"organisation {job.organization} is not admitted at this site")
        if not self.site.plans.is_approved(job.plan_sha256):
            return Admission(
                False,
                f"training plan {job.plan} (sha256 {job.plan_sha256[:12]}…) is not approved at this site",
            )
        if isolation_rank(self.isolation) < isolation_rank(policy.min_isolation):
            return Admission(
                False,
                f"this site requires sandbox isolation {policy.min_isolation}; its sandbox provides {self.isolation}",
            )
        if job.round_timeout_s > policy.max_round_seconds:
            return Admission(
                False,
                f"round timeout {job.round_timeout_s:.0f} s exceeds the site's limit of {policy.max_round_seconds:.0f} s",
            )
        return Admission(True, "admitted")


@dataclass
class RoundReport:
    """What the node sends back for one round."""

    site_id: str
    kind: str
    metrics: dict[str, float]
    num_examples: int
    weights: dict[str, np.ndarray] | None = None
    cohort: dict[str, int] = field(default_factory=dict)
    isolation: str = "none"
    snapshot: str = ""
    seconds: float = 0.0
    # Site-enforced DP of this update: clip_norm, noise_multiplier, delta, and the job's
    # privacy spent so far at this site (epsilon, releases). Empty when none was applied.
    privacy: dict[str, float] = field(default_factory=dict)


class RoundFailure(Exception):
    """This site cannot take part in this round; the reason is sent to the aggregator.
    ``code`` says what kind of failure (a sandbox reason code, "invalid-update", ...)."""

    def __init__(self, reason: str, code: str = "refused") -> None:
        super().__init__(reason)
        self.code = code


def site_seed(site_id: str) -> int:
    return zlib.crc32(site_id.encode()) % 10_000


class ClinicalNode:
    def __init__(
        self,
        site: Site,
        *,
        view: DataView,
        executor: TrainingExecutor | None = None,
        admission: AdmissionPolicy | None = None,
        events: NodeEvents | None = None,
    ) -> None:
        self.site = site
        self.view = view
        self.events = events
        self.protection: Any = None  # the site's protection layer when runtime.open_node wired one
        if executor is None:
            from .sandbox import SandboxExecutor

            executor = SandboxExecutor.strongest(private_paths=[site.root])
        self.executor: TrainingExecutor = executor
        self.admission: AdmissionPolicy = admission or SiteAdmission(site, self.executor.isolation)
        self.privacy = PrivacyLedger(site.root / "privacy")
        self._datasets: dict[tuple[str, str], SiteDataset] = {}
        self._metrics: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @property
    def site_id(self) -> str:
        return self.site.site_id

    def admit(self, job: JobSpec) -> Admission:
        return self.admission.admit(job)

    def _plan(self, job: JobSpec) -> TrainingPlan:
        decision = self.admission.admit(job)
        if not decision.accepted:
            raise RoundFailure(f"the job is not admitted at this site: {decision.reason}")
        try:
            return self.site.plans.plan(job.plan_sha256)
        except TrainingPlanError as exc:
            raise RoundFailure(str(exc), "plan-invalid") from exc

    def dataset(self, job: JobSpec, server_round: int) -> tuple[SiteDataset, Cohort]:
        try:
            cohort = self.view.cohort(job, server_round)
        except RoundFailure:
            raise
        except Exception as exc:
            # Fail closed: whatever went wrong in the data view, no data is used this round.
            raise RoundFailure(f"the data view released no data: {type(exc).__name__}: {exc}") from exc
        key = (job.sha256, cohort.snapshot)
        with self._lock:
            data = self._datasets.get(key)
        if data is None:
            data = extract(job.feature_spec, cohort.load())
            with self._lock:
                self._datasets = {k: v for k, v in self._datasets.items() if k[0] != job.sha256}
                self._datasets[key] = data
        return data, cohort

    def _declared_metrics(self, plan: TrainingPlan) -> tuple[str, ...]:
        declared = self._metrics.get(plan.sha256)
        if declared is None:
            try:
                declared = plan.check()
            except TrainingPlanError as exc:
                raise RoundFailure(str(exc), "plan-invalid") from exc
            self._metrics[plan.sha256] = declared
        return declared

    def _time_left(self, job: JobSpec, started: float) -> float:
        """The sandbox's wall-clock deadline for this round: the job's round timeout, the
        site's longest round and the job's end, whichever comes first, less what the round
        has already spent (the answer must reach the aggregator in time)."""
        limit = min(job.round_timeout_s, self.site.policy.max_round_seconds)
        if job.deadline:
            end = datetime.fromisoformat(job.deadline)
            end = end if end.tzinfo else end.replace(tzinfo=UTC)
            limit = min(limit, (end - datetime.now(UTC)).total_seconds())
        left = limit - (time.perf_counter() - started)
        if left <= 0:
            raise RoundFailure("the job's deadline has passed", "deadline")
        return left

    def _run(
        self, kind: str, job: JobSpec, server_round: int, weights: Mapping[str, np.ndarray]
    ) -> RoundReport:
        start = time.perf_counter()
        plan = self._plan(job)
        declared = self._declared_metrics(plan)
        data, cohort = self.dataset(job, server_round)
        x, y = (data.x_train, data.y_train) if kind == "train" else (data.x_test, data.y_test)
        if len(y) == 0:
            raise RoundFailure(
                f"no {'training' if kind == 'train' else 'test'} records are usable for this job"
            )
        hyper = job.hyper(server_round, site_seed(self.site_id))
        task = LocalTask(
            kind=kind,
            plan=plan,
            n_features=job.feature_spec.n_features,
            weights=dict(weights),
            hyper=hyper,
            x=x,
            y=y,
            timeout_s=self._time_left(job, start),
            job_id=job.sha256,
        )
        try:
            result = self.executor.run(task)
            validate_update(
                weights,
                result,
                kind=kind,
                allowed_metrics=declared,
                max_local_steps=int(hyper.get("local_steps", 0)) or None,
            )
        except ExecutorFailure as exc:
            code = str(getattr(exc, "code", "invalid-update"))
            log.warning("site %s, job %s, round %d %s: %s", self.site_id, job.name, server_round, kind, exc)
            raise RoundFailure(str(exc), code) from exc
        finally:
            if kind == "evaluate" and server_round >= job.rounds:
                self.executor.release(job.sha256)
        released = result.weights
        privacy: dict[str, float] = {}
        params = site_privacy(self.site.policy, job)
        if kind == "train" and params is not None and released is not None:
            released, _ = privatize(released, weights, params)
            spent = self.privacy.record(job.sha256, params, server_round)
            privacy = {
                "clip_norm": params.clip_norm,
                "noise_multiplier": params.noise_multiplier,
                "delta": spent.delta,
                "epsilon": spent.epsilon,
                "releases": float(spent.releases),
            }
        return RoundReport(
            site_id=self.site_id,
            kind=kind,
            metrics=result.metrics,
            num_examples=len(y),
            weights=released,
            cohort={
                "permit": cohort.permit,
                "deny": cohort.deny,
                "no_consent": cohort.no_consent,
                "redacted": cohort.redacted_resources,
                "usable": data.complete,
                "train": data.n_train,
                "test": data.n_test,
            },
            isolation=result.isolation,
            snapshot=cohort.snapshot,
            seconds=time.perf_counter() - start,
            privacy=privacy,
        )

    def _reported(
        self, kind: str, job: JobSpec, server_round: int, weights: Mapping[str, np.ndarray]
    ) -> RoundReport:
        try:
            report = self._run(kind, job, server_round, weights)
        except RoundFailure as exc:
            if self.events is not None:
                self.events.round_finished(job, server_round, kind, None, str(exc))
            raise
        if self.events is not None:
            self.events.round_finished(job, server_round, kind, report, None)
        return report

    def train(self, job: JobSpec, server_round: int, weights: Mapping[str, np.ndarray]) -> RoundReport:
        return self._reported("train", job, server_round, weights)

    def evaluate(self, job: JobSpec, server_round: int, weights: Mapping[str, np.ndarray]) -> RoundReport:
        return self._reported("evaluate", job, server_round, weights)


def summarize(reports: Iterable[RoundReport]) -> dict[str, Any]:
    return {r.site_id: {"metrics": r.metrics, "n": r.num_examples, "cohort": r.cohort} for r in reports}
