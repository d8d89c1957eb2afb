"""The job service for data scientists: job specs in, models with provenance out.

``JobService`` queues and runs jobs with a ``JobRunner`` (``LocalRunner`` over site folders,
``SuperLinkRunner`` as Flower runs on a SuperLink), ``create_app`` serves its HTTP API and
page, ``job_spec_schema`` is the published JSON Schema of job specs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JobRunner", "JobService", "LocalRunner", "SuperLinkRunner", "create_app", "job_spec_schema"]

_WHERE = {
    "JobRunner": ".runner",
    "LocalRunner": ".runner",
    "SuperLinkRunner": ".superlink",
    "JobService": ".service",
    "create_app": ".app",
    "job_spec_schema": ".schema",
}


def __getattr__(name: str) -> Any:
    # lazily, so that `paroma job token` and `paroma job schema` start without torch or Flower
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(name)
