"""The aggregator's run of one job over a Flower Grid.

Admission first: every connected site is asked (a Flower query message) whether it admits
the job, and answers with a reason. The job goes on with the admitting sites if there are at
least ``min_sites`` of them; otherwise it fails listing every site's reason. Then each round
trains and evaluates on the admitted sites with the job's Flower strategy (through SecAgg+
when the job asks for secure aggregation, ``secure_aggregation.py``), and records every
site's metrics, cohort and failures. An observer sees each step (progress bars, the job
service's status, checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clinical_node.plans import TrainingPlan
from paroma.jobspec import JobSpec
from paroma.wire import ADMISSION_QUERY, from_record, numbers_of, to_record

from .delivery import send_and_collect
from .secure_aggregation import (
    SecAggPlusSettings,
    SecureAggregationFailed,
    SecureRound,
    aggregate_secure_round,
    run_secure_train_round,
)
from .strategies import build_strategy


@dataclass
class SiteResult:
    site_id: str
    train: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0
    cohort: dict[str, int] = field(default_factory=dict)
    isolation: str = ""
    # which consented data the round read (the cohort's snapshot hash) and under which
    # version of the site's policies it was decided: the model's provenance
    snapshot: str = ""
    policy_version: str = ""
    # the site-enforced DP of its update (clip-norm, noise-multiplier, delta, epsilon, releases)
    privacy: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class RoundResult:
    server_round: int
    sites: dict[str, SiteResult]
    train_metrics: dict[str, float]
    seconds: float

    @property
    def mean_accuracy(self) -> float:
        accs = [s.evaluate["accuracy"] for s in self.sites.values() if "accuracy" in s.evaluate]
        return float(np.mean(accs)) if accs else float("nan")


@dataclass
class Admission:
    site_id: str
    accepted: bool
    reason: str


@dataclass
class FederationResult:
    job_sha256: str
    status: str  # completed | failed
    admissions: list[Admission]
    rounds: list[RoundResult]
    weights: dict[str, np.ndarray] | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_sha256": self.job_sha256,
            "status": self.status,
            "reason": self.reason,
            "admissions": [asdict(a) for a in self.admissions],
            "rounds": [
                {
                    "round": r.server_round,
                    "seconds": r.seconds,
                    "mean_accuracy": r.mean_accuracy,
                    "train_metrics": r.train_metrics,
                    "sites": {k: asdict(v) for k, v in r.sites.items()},
                }
                for r in self.rounds
            ],
        }


class FederationObserver(Protocol):
    def admissions(self, admissions: list[Admission]) -> None: ...

    def round_started(self, server_round: int, total: int) -> None: ...

    def round_finished(self, result: RoundResult) -> None: ...


class _Silent:
    def admissions(self, admissions: list[Admission]) -> None:
        pass

    def round_started(self, server_round: int, total: int) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        pass


class JobFailed(Exception):
    """The job cannot go on; the message says why, site by site."""


class _ParticipantGrid:
    """The Grid as a strategy should see it: only the sites that admitted the job."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        live = set(self._grid.get_node_ids())
        return [i for i in self._ids if i in live]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def initial_weights(job: JobSpec) -> dict[str, np.ndarray]:
    """The global model before round 1, built by the job's plan with the job's seed."""
    plan = TrainingPlan.resolve(job.plan) if job.plan else None
    if plan is None or plan.sha256 != job.plan_sha256:
        raise JobFailed(f"the aggregator cannot build the model: plan {job.plan!r} does not match its sha256")
    module = plan.load()
    torch.manual_seed(job.seed)
    model = module.build_model(job.feature_spec.n_features, job.hyper(0))
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= minimum or time.monotonic() >= deadline:
            return ids
        time.sleep(0.5)


def _site_of(message: Message, known: Mapping[int, str], node_id: int | None = None) -> str:
    for name in ("site", "admission"):
        record = message.content.config_records.get(name) if not message.has_error() else None
        if record is not None and "site-id" in record:
            return str(record["site-id"])
    # An error the SuperLink wrote in the site's place comes from the SuperLink: the node the
    # instruction went to says whose it is.
    node = node_id if node_id is not None else message.metadata.src_node_id
    return known.get(node, f"node-{node}")


def _error_reason(message: Message) -> str:
    reason = message.error.reason or f"error code {message.error.code}"
    if reason.startswith("site ") and ": " in reason:
        return reason.split(": ", 1)[1]
    return reason


def _entry(
    results: dict[str, SiteResult], reply: Message, sites: Mapping[int, str], node_id: int | None = None
) -> SiteResult:
    name = _site_of(reply, sites, node_id)
    return results.setdefault(name, SiteResult(name))


def admit(
    grid: Grid, job: JobSpec, node_ids: list[int], timeout: float
) -> tuple[list[Admission], dict[int, str], list[int]]:
    """Ask every site whether it admits the job; return the answers, node→site, admitted ids."""
    messages = [
        Message(
            RecordDict({"job": ConfigRecord({"job": job.to_json()})}),
            dst_node_id=node_id,
            message_type=ADMISSION_QUERY,
        )
        for node_id in node_ids
    ]
    replies = send_and_collect(grid, messages, timeout)
    answered: set[int] = set()
    admissions: list[Admission] = []
    sites: dict[int, str] = {}
    admitted: list[int] = []
    for node_id, reply in replies.items():
        answered.add(node_id)
        if reply.has_error():
            site = f"node-{node_id}"
            admissions.append(Admission(site, False, f"admission query failed: {_error_reason(reply)}"))
            continue
        record = reply.content.config_records["admission"]
        site = str(record["site-id"])
        sites[node_id] = site
        accepted = bool(record["accepted"])
        admissions.append(Admission(site, accepted, str(record["reason"])))
        if accepted:
            admitted.append(node_id)
    for node_id in node_ids:
        if node_id not in answered:
            admissions.append(Admission(f"node-{node_id}", False, f"no answer within {timeout:.0f} s"))
    admissions.sort(key=lambda a: a.site_id)
    return admissions, sites, admitted


def run_federation(
    grid: Grid,
    job: JobSpec,
    *,
    observer: FederationObserver | None = None,
    weights: dict[str, np.ndarray] | None = None,
    start_round: int = 1,
    expected_sites: int | None = None,
    node_wait_s: float = 60.0,
    should_stop: Callable[[], bool] | None = None,
) -> FederationResult:
    observer = observer or _Silent()
    node_ids = _wait_for_nodes(grid, expected_sites or job.min_sites, node_wait_s)
    if not node_ids:
        return FederationResult(job.sha256, "failed", [], [], None, "no site is connected to the aggregator")
    admissions, sites, admitted = admit(grid, job, node_ids, min(job.round_timeout_s, 120.0))
    observer.admissions(admissions)
    if len(admitted) < job.min_sites:
        reasons = "; ".join(f"{a.site_id}: {'admitted' if a.accepted else a.reason}" for a in admissions)
        return FederationResult(
            job.sha256,
            "failed",
            admissions,
            [],
            None,
            f"{len(admitted)} of {len(admissions)} sites admitted the job, {job.min_sites} needed ({reasons})",
        )
    # Rounds go on with the job's minimum of sites: an admitted site that dies or loses its
    # path must not make the strategy wait for it forever.
    strategy = build_strategy(
        job.strategy,
        job.strategy_params,
        len(admitted),
        privacy=job.privacy,
        min_sites=min(job.min_sites, len(admitted)),
    )
    view = _ParticipantGrid(grid, admitted)
    arrays = to_record(weights if weights is not None else initial_weights(job))
    rounds: list[RoundResult] = []
    for server_round in range(start_round, job.rounds + 1):
        if should_stop is not None and should_stop():
            return FederationResult(
                job.sha256, "cancelled", admissions, rounds, from_record(arrays), "cancelled"
            )
        observer.round_started(server_round, job.rounds)
        start = time.perf_counter()
        results: dict[str, SiteResult] = {}

        job_config = ConfigRecord({"job": job.to_json()})
        instructions = strategy.configure_train(server_round, arrays, job_config, view)  # type: ignore[arg-type]
        secure: SecureRound | None = None
        if job.privacy.secure_aggregation:
            try:
                secure = run_secure_train_round(
                    grid, instructions, server_round, SecAggPlusSettings(), job.round_timeout_s
                )
            except SecureAggregationFailed as exc:
                return FederationResult(
                    job.sha256,
                    "failed",
                    admissions,
                    rounds,
                    from_record(arrays),
                    f"round {server_round}: {exc}",
                )
            train_replies = {i: m for i, m in enumerate(secure.replies + secure.failures)}
            by_node = False
        else:
            # One reply per node (each site counted at most once), a site that left and came
            # back within the round asked again (aggregator/delivery.py).
            train_replies = send_and_collect(
                grid, instructions, job.round_timeout_s, enough=min(job.min_sites, len(admitted))
            )
            by_node = True
        ok = [m for m in train_replies.values() if not m.has_error()]
        for key, reply in train_replies.items():
            entry = _entry(results, reply, sites, key if by_node else None)
            if reply.has_error():
                entry.error = f"train: {_error_reason(reply)}"
                continue
            metrics = numbers_of(reply.content.metric_records["metrics"])
            entry.n_train = int(metrics.pop("num-examples", 0))
            entry.train = metrics
            record = reply.content.config_records.get("site")
            if record is not None:
                entry.isolation = str(record.get("isolation", ""))
                entry.snapshot = str(record.get("snapshot", ""))
                entry.policy_version = str(record.get("policy-version", ""))
                entry.cohort = {
                    k[len("cohort-") :]: int(v)
                    for k, v in numbers_of(record).items()
                    if k.startswith("cohort-")
                }
                entry.privacy = {
                    k[len("dp-") :]: v for k, v in numbers_of(record).items() if k.startswith("dp-")
                }
        if len(ok) < job.min_sites:
            failures = "; ".join(f"{s.site_id}: {s.error}" for s in results.values() if s.error)
            missing = len(admitted) - len(train_replies)
            extra = (
                f"; {missing} site(s) did not answer within {job.round_timeout_s:.0f} s"
                if missing > 0
                else ""
            )
            return FederationResult(
                job.sha256,
                "failed",
                admissions,
                rounds,
                from_record(arrays),
                f"round {server_round}: {len(ok)} site(s) returned an update, {job.min_sites} needed ({failures}{extra})",
            )
        new_arrays, train_metrics = (
            aggregate_secure_round(strategy, server_round, arrays, secure)
            if secure is not None
            else strategy.aggregate_train(server_round, ok)
        )
        if new_arrays is not None:
            arrays = new_arrays
        eval_replies = send_and_collect(
            grid,
            strategy.configure_evaluate(server_round, arrays, ConfigRecord({"job": job.to_json()}), view),  # type: ignore[arg-type]
            job.round_timeout_s,
        )
        for node_id, reply in eval_replies.items():
            entry = _entry(results, reply, sites, node_id)
            if reply.has_error():
                entry.error = (
                    entry.error + "; " if entry.error else ""
                ) + f"evaluate: {_error_reason(reply)}"
                continue
            metrics = numbers_of(reply.content.metric_records["metrics"])
            entry.n_test = int(metrics.pop("num-examples", 0))
            entry.evaluate = metrics
        result = RoundResult(
            server_round,
            dict(sorted(results.items())),
            numbers_of(train_metrics) if train_metrics is not None else {},
            time.perf_counter() - start,
        )
        rounds.append(result)
        observer.round_finished(result)
    return FederationResult(job.sha256, "completed", admissions, rounds, from_record(arrays))
