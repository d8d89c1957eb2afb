"""Where a job runs. The job service hands each job to a ``JobRunner``, which runs it to
its end and keeps the run's output folder (aggregator/run_output.py) up to date; the service
reads progress, checkpoints and the result from that folder.

``LocalRunner`` runs the job in the service's process over site folders, with the in-process
Grid (for laptops and tests). ``SuperLinkRunner`` (aggregator/jobs/superlink.py) submits it
as a Flower run to a SuperLink.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from aggregator.federation import Admission, FederationResult, RoundResult
from aggregator.run_output import RunOutput, run_with_checkpoints
from clinical_node.client_app import build_client_app
from clinical_node.runtime import site_dirs
from deploy.inprocess import InProcessGrid
from paroma.jobspec import JobSpec


class RunnerError(Exception):
    """The runner could not run the job (the message says why)."""


class JobRunner(Protocol):
    """Runs one job to its end, resuming from ``output``'s checkpoint when it holds one;
    ``progress`` is called whenever ``output`` changed, ``should_stop`` before every round,
    ``run_started`` with the runtime's id for the run; ``previous_run`` is the id of the run
    that ran the job before the service restarted ("" for a new job); ``note`` adds a line to
    the job's log; ``detach`` says the service is stopping (the job should resume when it
    starts again: a run elsewhere goes on, one in this process stops after its round)."""

    name: str

    def run(
        self,
        job: JobSpec,
        output: RunOutput,
        *,
        progress: Callable[[], None],
        should_stop: Callable[[], bool],
        run_started: Callable[[str], None],
        previous_run: str = "",
        note: Callable[[str], None] | None = None,
        detach: Callable[[], bool] = lambda: False,
    ) -> FederationResult: ...


class _Notify:
    def __init__(self, progress: Callable[[], None]) -> None:
        self._progress = progress

    def admissions(self, admissions: list[Admission]) -> None:
        self._progress()

    def round_started(self, server_round: int, total: int) -> None:
        self._progress()

    def round_finished(self, result: RoundResult) -> None:
        self._progress()


class LocalRunner:
    """The job over the site folders under ``sites_root`` (every site is asked to admit it)."""

    name = "local"

    def __init__(self, sites_root: Path) -> None:
        self.sites_root = Path(sites_root)

    def sites(self) -> list[Path]:
        return site_dirs(self.sites_root)

    def run(
        self,
        job: JobSpec,
        output: RunOutput,
        *,
        progress: Callable[[], None],
        should_stop: Callable[[], bool],
        run_started: Callable[[str], None],
        previous_run: str = "",
        note: Callable[[str], None] | None = None,
        detach: Callable[[], bool] = lambda: False,
    ) -> FederationResult:
        sites: Sequence[Path] = self.sites()
        if not sites:
            raise RunnerError(f"no site folder (with a site.toml) under {self.sites_root}")
        grid = InProcessGrid(build_client_app([str(s.resolve()) for s in sites]), len(sites))
        grid.take_serverapp_identity()
        run_started(f"local-{grid.run.run_id}")
        return run_with_checkpoints(
            grid,
            job,
            output,
            observer=_Notify(progress),
            expected_sites=len(sites),
            node_wait_s=0,
            should_stop=lambda: should_stop() or detach(),
        )
