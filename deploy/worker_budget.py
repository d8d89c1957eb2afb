"""A cap on the sandbox workers alive at once when many simulated sites share one machine.

Every clinical node keeps one sandbox worker per job alive for the job's lifetime (torch
imported once per job, clinical_node/sandbox/executor.py), which costs about 220 MB of
private memory per site. On a hospital's own machine that is one worker; a simulation of 100
sites in one process would hold 100 of them. Under a budget of ``max_live`` workers, the
first ``max_live - 1`` sites to answer keep theirs (residents); every other site's worker is
released as soon as it has answered, so one slot serves them in turn. Flower's strategies
sample the sites in a new random order every pass, so no choice of whom to evict can use the
order; this one restarts exactly ``sites - (max_live - 1)`` workers per pass whatever the
order, where LRU or MRU eviction under a shuffled order restart up to every one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from paroma.jobspec import JobSpec, JobSpecError


class WorkerBudget:
    """Which workers (site folder, job sha256) to release after each answer (one budget per
    job run: a second job's workers find the places taken and are released each time)."""

    def __init__(self, max_live: int) -> None:
        from clinical_node.sandbox.backends import SLOTS_PER_PROCESS

        if max_live < 1:
            raise ValueError(f"max_live must be >= 1, got {max_live}")
        if max_live > SLOTS_PER_PROCESS:
            # one process holds at most SLOTS_PER_PROCESS sandboxes: their uids
            raise ValueError(
                f"max_live must be <= {SLOTS_PER_PROCESS} (sandbox uids of one process), got {max_live}"
            )
        self.max_live = max_live
        self._residents: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def answered(self, site: str, job_sha256: str) -> list[tuple[str, str]]:
        """``site`` has answered for the job: the workers to release now."""
        worker = (site, job_sha256)
        with self._lock:
            if worker in self._residents:
                return []
            if len(self._residents) < self.max_live - 1:
                self._residents.add(worker)
                return []
        return [worker]


def worker_budget_mod(
    sites: Sequence[str], max_live: int, release: Callable[[str, str], None] | None = None
) -> Mod:
    """A mod for a ClientApp serving ``sites`` by partition id (as build_client_app does);
    ``release(site_folder, job_sha256)`` stops a worker (by default the site's executor)."""
    budget = WorkerBudget(max_live)

    def stop(folder: str, sha: str) -> None:
        from clinical_node.runtime import open_node

        open_node(folder).executor.release(sha)

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        config = message.content.config_records.get("config")
        partition = int(context.node_config.get("partition-id", -1))
        if config is None or "job" not in config or not 0 <= partition < len(sites):
            return reply
        try:
            job = JobSpec.from_json(str(config["job"]))
        except JobSpecError:
            return reply
        for folder, sha in budget.answered(sites[partition], job.sha256):
            (release or stop)(folder, sha)
        return reply

    return mod
