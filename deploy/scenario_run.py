"""Running a scenario on the in-process runtime (deploy/inprocess.py).

The sites are built from the scenario's data and consent mix, the job is the demo's with
the scenario's strategy, training and privacy merged over it, and the federation runs the
real ServerApp job loop, ClientApps, clinical nodes, sandboxes and protection layers. The
scenario acts where it would in a real federation:

* consent churn: before each round from ``from_round``, a share of each site's permitting
  patients withdraw research use (a refusal dated now, in the site's consent store); the
  site's protection layer decides the round's cohort without them;
* attacks: deploy.attacks' ClientApp mod poisons what the attacking site sends;
* network events: applied to a SecurePathEngine holding one installed path per site (site
  node -> aggregator node, with the scenario's bandwidth, delay bound and Minimum Security
  Threshold); paths move as the engine moves them, and a site whose path is unroutable is cut
  off: the aggregator's messages to it get no reply, so the round goes on without it (as a
  site that does not answer within the round timeout on a deployment).

Each round records every site's path, its security and an estimated transfer time of the
round's two model transfers (global model down, update up): 2 x (path delay + model bits /
reserved bandwidth).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.federation import Admission, FederationResult, RoundResult, initial_weights, run_federation
from clinical_node.client_app import build_client_app
from clinical_node.site import Site
from deploy.attacks import poisoning_mod
from deploy.inprocess import InProcessGrid
from deploy.scenario import NetworkEvent, Scenario, ScenarioError
from deploy.sites import build_site
from paroma.jobspec import JobSpec, JobSpecError, parse_job_spec
from protection_layer import ProtectionLayer, revocation


@dataclass
class SitePath:
    site: str
    status: str  # active | unroutable | none (no node on the topology)
    nodes: list[str] = field(default_factory=list)
    delay_us: float = 0.0
    path_security: float = 0.0
    transfer_s: float = 0.0
    reason: str = ""


@dataclass
class AppliedEvent:
    round: int
    description: str
    moved: dict[str, str]  # site -> what happened to its path


@dataclass
class ScenarioRun:
    scenario: Scenario
    job: JobSpec
    federation: FederationResult
    paths: dict[int, dict[str, SitePath]]  # round -> site -> path used in that round
    events: list[AppliedEvent]
    revoked: dict[int, dict[str, int]]  # round -> site -> patients who withdrew before it
    model_bytes: int
    seconds: float
    out: Path
    runtime: str = "in-process"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "source": str(self.scenario.source) if self.scenario.source else None,
            "rounds": self.scenario.rounds,
            "job": self.job.to_dict(),
            "job_sha256": self.job.sha256,
            "federation": self.federation.to_dict(),
            "paths": {str(r): {s: p.__dict__ for s, p in sites.items()} for r, sites in self.paths.items()},
            "events": [e.__dict__ for e in self.events],
            "revoked": {str(r): v for r, v in self.revoked.items()},
            "attacks": [a.__dict__ for a in self.scenario.attacks],
            "model_bytes": self.model_bytes,
            "seconds": self.seconds,
            "runtime": self.runtime,
        }


def scenario_job(scenario: Scenario, local_steps: int | None = None) -> JobSpec:
    """The demo's job with the scenario's settings merged over it."""
    from paroma.demo import demo_job

    doc = demo_job(scenario.rounds, seed=scenario.seed).to_dict()
    for key, value in scenario.job.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict) and key != "strategy":
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    if local_steps is not None:
        doc["training"]["local_steps"] = local_steps
    doc["name"] = f"scenario-{scenario.name}"[:80]
    try:
        return parse_job_spec(doc)
    except JobSpecError as exc:
        raise ScenarioError([(f"job.{f}", m) for f, m in exc.problems]) from None


class Network:
    """The federation's network as the secure path engine sees it: one installed path per
    site placed on the topology."""

    def __init__(self, scenario: Scenario) -> None:
        from interconnect.pce import NvdClient, PathRequest, PceError, SecurePathEngine, load_scenario

        self.scenario = scenario
        self.nvd = NvdClient()
        problems: list[tuple[str, str]] = []
        try:
            topology, exposures = load_scenario(scenario.topology, self.nvd)
        except PceError as exc:
            raise ScenarioError([("scenario.topology", str(exc))]) from None
        self.engine = SecurePathEngine(topology, exposures)
        nodes = {n.id for n in topology.nodes}
        links = {link.id for link in topology.links}
        if scenario.aggregator not in nodes:
            problems.append(
                ("scenario.aggregator", f"{scenario.aggregator!r} is not a node of {scenario.topology}")
            )
        for i, site in enumerate(scenario.sites):
            if site.node is not None and site.node not in nodes:
                problems.append((f"site[{i}].node", f"{site.node!r} is not a node of {scenario.topology}"))
        for i, event in enumerate(scenario.network):
            if event.node and event.node not in nodes:
                problems.append(
                    (f"network[{i}].node", f"{event.node!r} is not a node of {scenario.topology}")
                )
            if event.link and event.link not in links:
                problems.append(
                    (
                        f"network[{i}].link",
                        f"{event.link!r} is not a link of {scenario.topology} ({', '.join(sorted(links)[:6])}, ...)",
                    )
                )
            if event.cve:
                try:
                    self.nvd.lookup(event.cve)
                except PceError as exc:
                    problems.append((f"network[{i}].cve", str(exc)))
        # A CVE is added to a node that does not carry it yet and fixed where it is carried.
        carried = {(e.node, e.vulnerability.cve_id) for e in exposures}
        for i, event in enumerate(scenario.network):
            key = (event.node, event.cve)
            if event.event == "cve":
                if key in carried:
                    problems.append((f"network[{i}].cve", f"{event.node} already carries {event.cve} then"))
                carried.add(key)
            elif event.event == "fix":
                if key not in carried:
                    problems.append((f"network[{i}].cve", f"{event.node} does not carry {event.cve} then"))
                carried.discard(key)
        if problems:
            raise ScenarioError(problems)
        for i, site in enumerate(scenario.sites):
            if site.node is None:
                continue
            try:
                self.engine.install(
                    PathRequest(
                        site.id,
                        site.node,
                        scenario.aggregator,
                        scenario.bandwidth_mbps,
                        scenario.max_delay_us,
                        scenario.min_security,
                    )
                )
            except PceError as exc:
                problems.append((f"site[{i}].node", f"no path to the aggregator at the start: {exc}"))
        if problems:
            raise ScenarioError(problems)

    def apply(self, event: NetworkEvent) -> dict[str, str]:
        """Apply one event; return how each site's path changed."""
        before = {p.name: p for p in self.engine.paths()}
        if event.event == "cve":
            self.engine.add_vulnerability(event.node, self.nvd.lookup(event.cve), event.remediation)
        elif event.event == "fix":
            self.engine.remove_vulnerability(event.node, event.cve)
        elif event.event in ("node-down", "node-up"):
            self.engine.set_node_state(event.node, event.event == "node-up")
        else:
            self.engine.set_link_state(event.link, event.event == "link-up")
        moved: dict[str, str] = {}
        for path in self.engine.paths():
            old = before.get(path.name)
            if old is None or old.version == path.version:
                continue
            if path.route is None:
                moved[path.name] = f"unroutable: {path.reason}"
            elif old.route is None:
                moved[path.name] = "restored via " + " > ".join(path.route.nodes)
            else:
                moved[path.name] = "moved to " + " > ".join(path.route.nodes)
        return moved

    def site_paths(self, model_bytes: int) -> dict[str, SitePath]:
        out: dict[str, SitePath] = {}
        installed = {p.name: p for p in self.engine.paths()}
        bits = 8.0 * model_bytes
        for site in self.scenario.sites:
            path = installed.get(site.id)
            if path is None:
                out[site.id] = SitePath(site.id, "none")
            elif path.route is None:
                out[site.id] = SitePath(site.id, "unroutable", reason=path.reason or "")
            else:
                route = path.route
                transfer = 2.0 * (route.delay_us / 1e6 + bits / (path.request.bandwidth_mbps * 1e6))
                out[site.id] = SitePath(
                    site.id, "active", list(route.nodes), route.delay_us, route.path_security, transfer
                )
        return out


class _ScenarioGrid(InProcessGrid):
    """The in-process Grid with cut-off sites: messages to them get no reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unreachable: set[int] = set()

    def delivers_to(self, node_id: int) -> bool:
        # still listed as online, but its messages are lost on the way: never answered
        return node_id not in self.unreachable and super().delivers_to(node_id)


class _Driver:
    """The scenario's observer: before each round it applies the round's consent churn and
    network events; it records each round's paths."""

    def __init__(
        self,
        scenario: Scenario,
        job: JobSpec,
        site_dirs: list[Path],
        grid: _ScenarioGrid,
        network: Network | None,
        model_bytes: int,
        progress: Callable[[str], None],
    ) -> None:
        self.scenario, self.job, self.site_dirs, self.grid = scenario, job, site_dirs, grid
        self.network, self.model_bytes, self.progress = network, model_bytes, progress
        self.paths: dict[int, dict[str, SitePath]] = {}
        self.events: list[AppliedEvent] = []
        self.revoked: dict[int, dict[str, int]] = {}
        self.rng = random.Random(scenario.seed)
        self.admitted: list[Admission] = []

    def admissions(self, admissions: list[Admission]) -> None:
        self.admitted = admissions
        for a in admissions:
            self.progress(f"  site {a.site_id}: {'admitted' if a.accepted else 'refused: ' + a.reason}")

    def round_started(self, server_round: int, total: int) -> None:
        for churn in self.scenario.churn:
            if server_round >= churn.from_round and churn.revoke_fraction > 0:
                for site in churn.sites:
                    n = self._revoke(site, churn.revoke_fraction, server_round)
                    self.revoked.setdefault(server_round, {})[site] = (
                        self.revoked.get(server_round, {}).get(site, 0) + n
                    )
        if self.network is not None:
            for event in self.scenario.network:
                if event.round == server_round:
                    moved = self.network.apply(event)
                    self.events.append(AppliedEvent(server_round, event.describe(), moved))
                    self.progress(f"  before round {server_round}: {event.describe()}")
                    for site, what in moved.items():
                        self.progress(f"    {site}: {what}")
            paths = self.network.site_paths(self.model_bytes)
            self.grid.unreachable = {
                i + 1 for i, s in enumerate(self.scenario.sites) if paths[s.id].status == "unroutable"
            }
            self.paths[server_round] = paths

    def round_finished(self, result: RoundResult) -> None:
        self.progress(f"  round {result.server_round}: mean accuracy {result.mean_accuracy:.3f}")

    def _revoke(self, site_id: str, fraction: float, server_round: int) -> int:
        folder = self.site_dirs[[s.id for s in self.scenario.sites].index(site_id)]
        site = Site.open(folder)
        layer = ProtectionLayer(site)
        try:
            permitted = sorted(layer.decide_cohort(self.job).permitted)
            n = min(len(permitted), max(1, round(fraction * len(permitted)))) if permitted else 0
            chosen = self.rng.sample(permitted, n)
            now = datetime.now(UTC)
            layer.consents.put_many(
                [revocation(f"withdrawal-r{server_round}-{p}", p, signed=now) for p in chosen]
            )
            return n
        finally:
            layer.close()
            site.close()


def _model_bytes(job: JobSpec) -> int:
    return int(sum(np.asarray(v).nbytes for v in initial_weights(job).values()))


def build_scenario_sites(scenario: Scenario, root: Path) -> list[Path]:
    """One site folder per scenario site under ``root`` (made afresh)."""
    import shutil

    if root.exists():
        shutil.rmtree(root)
    now = datetime.now(UTC)
    return [
        build_site(
            root / site.id, site.id, site.name, site.data, site.consent, index=i, seed=scenario.seed, now=now
        )
        for i, site in enumerate(scenario.sites)
    ]


def copy_sites(scenario: Scenario, source: Path, root: Path) -> list[Path]:
    """The scenario's site folders copied from ``source`` (each must exist there)."""
    import shutil

    missing = [s.id for s in scenario.sites if not (source / s.id / "site.toml").is_file()]
    if missing:
        raise ScenarioError([("site", f"{source} has no site folder for {', '.join(missing)}")])
    if root.exists():
        shutil.rmtree(root)
    return [Path(shutil.copytree(source / s.id, root / s.id)) for s in scenario.sites]


def run_scenario(
    scenario: Scenario,
    out: Path,
    *,
    local_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
    sites_from: Path | None = None,
) -> ScenarioRun:
    """Build the sites under ``out/sites`` (or copy them from ``sites_from``, a folder of site
    folders built for the same ``[[site]]`` tables), run the scenario, write ``out/run.json``
    and ``out/report.html``."""
    from clinical_node.runtime import forget_nodes
    from deploy.scenario_report import write_report

    say = progress or (lambda _line: None)
    started = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    job = scenario_job(scenario, local_steps)
    network = Network(scenario) if any(s.node for s in scenario.sites) else None
    say(f"scenario {scenario.name}: building {len(scenario.sites)} site(s) under {out / 'sites'}")
    site_dirs = (
        copy_sites(scenario, sites_from, out / "sites")
        if sites_from is not None
        else build_scenario_sites(scenario, out / "sites")
    )
    model_bytes = _model_bytes(job)
    mods = [poisoning_mod(scenario.attacks)] if scenario.attacks else None
    grid = _ScenarioGrid(build_client_app([str(p) for p in site_dirs], mods), len(site_dirs))
    driver = _Driver(scenario, job, site_dirs, grid, network, model_bytes, say)
    grid.take_serverapp_identity()
    say(f"job {job.name}: {job.strategy}, {job.rounds} rounds x {job.training.local_steps} local steps")
    try:
        result = run_federation(grid, job, observer=driver, expected_sites=len(site_dirs), node_wait_s=0)
    finally:
        forget_nodes()  # stops the sandbox workers and closes the sites' stores
    run = ScenarioRun(
        scenario,
        job,
        result,
        driver.paths,
        driver.events,
        driver.revoked,
        model_bytes,
        time.perf_counter() - started,
        out,
    )
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(run.to_dict(), indent=1, default=_json_default))
    tmp.replace(out / "run.json")
    write_report(run, out / "report.html")
    return run


def _json_default(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def reduced(scenario: Scenario, rounds: int) -> Scenario:
    """The scenario over ``rounds`` rounds, with its events, churn and attacks moved to the
    same relative place (an event after round 1 stays after round 1)."""
    if rounds == scenario.rounds:
        return scenario

    def at(r: int) -> int:
        return 1 if r <= 1 else max(2, min(rounds, math.ceil(r * rounds / scenario.rounds)))

    return replace(
        scenario,
        rounds=rounds,
        network=tuple(replace(e, round=at(e.round)) for e in scenario.network),
        churn=tuple(replace(c, from_round=at(c.from_round)) for c in scenario.churn),
        attacks=tuple(replace(a, from_round=at(a.from_round)) for a in scenario.attacks),
    )
