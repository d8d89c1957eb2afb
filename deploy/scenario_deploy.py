"""Scenarios on the multi-process federation (``paroma scenario run --deploy``)."""

from __future__ import annotations

from deploy.scenario import Scenario


class DeployUnavailable(Exception):
    """The multi-process runtime cannot run this scenario; the message says why."""


def run_deployed(scenario: Scenario) -> None:
    raise DeployUnavailable(
        f"scenario {scenario.name}: --deploy needs the multi-process federation (`paroma up`, "
        "deploy/federation_config.py), which this installation does not have; run it without --deploy"
    )
