"""Running a job on Flower's simulation runtime, one virtual SuperNode per site folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator.federation import FederationObserver, FederationResult
from aggregator.server_app import build_server_app
from clinical_node.client_app import build_client_app
from paroma.jobspec import JobSpec

if TYPE_CHECKING:
    from interconnect.transfer import TransferPlanner


def run_simulated_job(
    job: JobSpec,
    sites: Sequence[Path],
    *,
    observer: FederationObserver | None = None,
    parallel: int | None = None,
    quiet: bool = True,
    transfer: TransferPlanner | None = None,
) -> FederationResult:
    """Run ``job`` over the given site folders on Flower's simulation runtime (Ray).

    With ``transfer`` every round's model exchange is estimated over each site's secure path
    (``transfer.rounds``)."""
    from flwr.simulation import run_simulation

    if transfer is not None:
        from deploy.transfer import TransferRecorder, model_bytes

        observer = TransferRecorder(transfer, model_bytes(job), observer)

    site_list = [str(Path(s).resolve()) for s in sites]
    results: list[FederationResult] = []
    server = build_server_app(job, observer=observer, results=results, expected_sites=len(site_list))
    client = build_client_app(site_list)
    cpus = parallel or max(1, min(len(site_list), os.cpu_count() or 1))
    if quiet:
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)
    # Ray's workers inherit the driver's environment: one thread per worker on a small machine.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=len(site_list),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cpus,
                "num_gpus": 0,
                "logging_level": "ERROR",
                "log_to_driver": not quiet,
                "include_dashboard": False,
            },
        },
    )
    if not results:
        raise RuntimeError("the simulation ended without a result from the ServerApp (see the log above)")
    return results[0]
