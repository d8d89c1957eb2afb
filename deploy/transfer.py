"""The simulation's view of the network: every round, each site's model exchange is estimated
over the path the secure path engine has installed for it at that moment
(``interconnect.transfer``), so a vulnerability that moves a path mid-job shows in the rounds
after it."""

from __future__ import annotations

from aggregator.federation import Admission, FederationObserver, RoundResult, initial_weights
from interconnect.transfer import TransferPlanner
from paroma.jobspec import JobSpec


def model_bytes(job: JobSpec) -> int:
    """Bytes of the job's model tensors: what goes to each site and what comes back each round."""
    return int(sum(array.nbytes for array in initial_weights(job).values()))


class TransferRecorder:
    """A FederationObserver that records each round's transfer estimates, then hands on."""

    def __init__(
        self, planner: TransferPlanner, n_bytes: int, inner: FederationObserver | None = None
    ) -> None:
        self.planner = planner
        self.n_bytes = n_bytes
        self.inner = inner

    def admissions(self, admissions: list[Admission]) -> None:
        if self.inner is not None:
            self.inner.admissions(admissions)

    def round_started(self, server_round: int, total: int) -> None:
        if self.inner is not None:
            self.inner.round_started(server_round, total)

    def round_finished(self, result: RoundResult) -> None:
        self.planner.record_round(result.server_round, sorted(result.sites), self.n_bytes)
        if self.inner is not None:
            self.inner.round_finished(result)
