"""Scenarios on the multi-process federation (``paroma scenario run --deploy``).

The scenario's sites become a federation config (``deploy/federation_config.py``) on free
ports of this machine with its working folder in the run's output folder; ``paroma up``
starts it (relays, Secure Traffic Engine, SuperLink, each site's FHIR API and SuperNode), the
job is submitted as a Flower run (``deploy.flower_jobs``) and the federation is stopped
after its result. The report is the in-process runtime's, from the run's result.

What the deployed runtime does not script yet is refused before anything starts, each named:
consent churn between rounds, poisoning sites and network events (on the in-process runtime
they act through the observer between rounds, which a Flower run on a SuperLink does not
have).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.federation import Admission, FederationResult, RoundResult, SiteResult
from deploy.scenario import Scenario, ScenarioError

PORT_BLOCK = 300


class DeployUnavailable(Exception):
    """The multi-process runtime cannot run this scenario; the message says why."""


def unsupported(scenario: Scenario) -> list[str]:
    reasons = []
    if scenario.churn:
        reasons.append(f"{len(scenario.churn)} [[churn]] table(s): consent churn between rounds")
    if scenario.attacks:
        reasons.append(f"{len(scenario.attacks)} [[attack]] table(s): poisoning sites")
    if scenario.network:
        reasons.append(f"{len(scenario.network)} [[network]] event(s)")
    missing = [s.id for s in scenario.sites if not s.node]
    if missing:
        reasons.append(f"site(s) {', '.join(missing)} without a topology node (site.node)")
    others = [s.id for s in scenario.sites if s.data.kind not in ("uci", "synthetic")]
    if others:
        reasons.append(f"site(s) {', '.join(others)}: data from a file (use uci: or synthetic:)")
    return reasons


def _free_block(size: int) -> int:
    """A base port with ``size`` free ports above it (checked by binding each)."""
    for base in range(21_000, 60_000, size):
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise DeployUnavailable(f"no block of {size} free ports on 127.0.0.1")


def federation_toml(scenario: Scenario, workdir: Path, base: int) -> str:
    def q(v: str) -> str:
        return json.dumps(v)

    lines = [
        "[federation]",
        f"name = {q(scenario.name[:40].lower().replace('_', '-').replace('.', '-'))}",
        f"workdir = {q(str(workdir))}",
        f"topology = {q(scenario.topology)}",
        'host = "127.0.0.1"',
        f"min_security = {scenario.min_security}",
        "",
        "[aggregator]",
        f"node = {q(scenario.aggregator)}",
        f"superlink_port = {base}",
        "",
        "[pce]",
        f"port = {base + 1}",
        "",
        "[relays]",
        f"base_port = {base + 10}",
        f"control_base_port = {base + 110}",
        f"bandwidth_mbps = {scenario.bandwidth_mbps}",
        f"max_delay_us = {scenario.max_delay_us}",
    ]
    for i, site in enumerate(scenario.sites):
        lines += [
            "",
            "[[site]]",
            f"id = {q(site.id)}",
            f"node = {q(site.node or '')}",
            f"data = {q(site.data_text)}",
            f"consent = {q(site.consent_text)}",
            f"fhir_port = {base + 210 + i}",
            f"supernode_port = {base + 240 + i}",
            f"ingress_port = {base + 270 + i}",
        ]
    return "\n".join(lines) + "\n"


def federation_result(data: dict[str, Any]) -> FederationResult:
    """A FederationResult back from its ``to_dict`` form (the run's federation.json)."""
    rounds = []
    for r in data.get("rounds", []):
        sites = {name: SiteResult(**entry) for name, entry in r.get("sites", {}).items()}
        rounds.append(
            RoundResult(int(r["round"]), sites, dict(r.get("train_metrics", {})), float(r["seconds"]))
        )
    admissions = [Admission(**a) for a in data.get("admissions", [])]
    return FederationResult(
        str(data.get("job_sha256", "")), str(data.get("status", "failed")), admissions, rounds, None,
        str(data.get("reason", "")),
    )  # fmt: skip


def run_deployed(
    scenario: Scenario,
    out: Path,
    *,
    local_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
    timeout_s: float = 3600.0,
) -> Any:
    """Run the scenario on a federation of processes; returns the ScenarioRun."""
    from deploy.federation_config import FederationConfigError, load_federation_config
    from deploy.flower_jobs import JobRunError, submit, wait
    from deploy.launcher import LaunchError, down, up
    from deploy.scenario_report import write_report
    from deploy.scenario_run import ScenarioRun, _json_default, _model_bytes, scenario_job
    from deploy.sites import build_synthetic_site

    reasons = unsupported(scenario)
    if reasons:
        raise DeployUnavailable(
            f"scenario {scenario.name}: --deploy does not run " + "; ".join(reasons)
            + "; run it without --deploy (in-process runtime)"
        )  # fmt: skip
    say = progress or (lambda _line: None)
    started = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    job = scenario_job(scenario, local_steps)
    source = out / "federation.toml"
    source.write_text(federation_toml(scenario, out / "work", _free_block(PORT_BLOCK)))
    try:
        config = load_federation_config(source)
    except FederationConfigError as exc:
        raise ScenarioError([(f, m) for f, m in exc.problems]) from None
    for site in config.sites:
        if site.data.kind == "synthetic":
            build_synthetic_site(config, site, seed=scenario.seed)
    try:
        up(config, timeout_s=300.0, echo=say)
        submitted = submit(config, job, out=out / "job")
        say(f"run {submitted.run_id} submitted to the federation's SuperLink")
        result = wait(config, submitted, timeout_s=timeout_s)
    except (LaunchError, JobRunError) as exc:
        raise DeployUnavailable(f"scenario {scenario.name} on the multi-process federation: {exc}") from None
    finally:
        stopped = down(config)
        say(f"stopped {len(stopped)} service(s)")
    run = ScenarioRun(
        scenario, job, federation_result(result), {}, [], {}, _model_bytes(job),
        time.perf_counter() - started, out, runtime="multi-process federation (paroma up)",
    )  # fmt: skip
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(run.to_dict(), indent=1, default=_json_default))
    tmp.replace(out / "run.json")
    write_report(run, out / "report.html")
    return run
