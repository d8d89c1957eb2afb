"""The aggregator's Flower ServerApp (``flwr run .`` uses it through pyproject.toml).

The job comes from the run config: ``job-spec`` holds a job spec (TOML file path or its JSON);
without one, a FLamby heart-disease job with ``num-server-rounds`` rounds and ``strategy`` is
run. With ``output-dir`` set, the run writes its admissions, progress, a checkpoint after every
round and its result there (aggregator/run_output.py), and resumes from a checkpoint it finds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from clinical_node.plans import TrainingPlan
from paroma.jobspec import JobSpec, parse_job_spec

from .federation import FederationObserver, FederationResult, run_federation
from .run_output import RunOutput, run_with_checkpoints

log = logging.getLogger("paroma.aggregator")


def job_from_run_config(run_config: dict[str, Any]) -> JobSpec:
    text = str(run_config.get("job-spec", "") or "")
    if text.strip().startswith("{"):
        return JobSpec.from_json(text)
    if text:
        return JobSpec.from_toml(Path(text))
    plan = TrainingPlan.builtin("logistic-regression")
    return parse_job_spec(
        {
            "name": "flamby-heart-disease",
            "purpose": "HRESCH",
            "organization": "Organization/paroma-research",
            "rounds": int(run_config.get("num-server-rounds", 3)),
            "min_sites": int(run_config.get("min-sites", 2)),
            "data": {"spec": "flamby-heart-disease"},
            "plan": {"reference": plan.name, "sha256": plan.sha256},
            "strategy": {"name": str(run_config.get("strategy", "fedavg"))},
        }
    )


def build_server_app(
    job: JobSpec | None = None,
    *,
    observer: FederationObserver | None = None,
    results: list[FederationResult] | None = None,
    expected_sites: int | None = None,
) -> ServerApp:
    """A ServerApp running ``job`` (or the run config's job); each result is appended to
    ``results`` when given."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        spec = job or job_from_run_config(dict(context.run_config))
        out = str(context.run_config.get("output-dir", "") or "")
        # A deployment's run says how many sites to wait for before admission.
        expected = expected_sites or int(context.run_config.get("expected-sites", 0) or 0) or None
        if out:
            result = run_with_checkpoints(
                grid, spec, RunOutput(Path(out)), observer=observer, expected_sites=expected
            )
        else:
            result = run_federation(grid, spec, observer=observer, expected_sites=expected)
        if results is not None:
            results.append(result)
        log.info("job %s %s %s", spec.name, result.status, result.reason)

    return app


app = build_server_app()
