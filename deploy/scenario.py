"""Scenario files: what a researcher asks a simulated federation to go through.

A scenario (TOML) declares the sites and their data, the consent mix and how consent
changes over the rounds, poisoning sites, network events on the secure path engine, and the
job's strategy and privacy settings. Parsing lists every problem with its field, like the
job spec. Shape::

    [scenario]
    name = "consent-churn"
    description = "..."
    rounds = 6
    seed = 42
    topology = "demo"          # the network the sites' paths cross (interconnect.pce loaders)
    min_security = 50          # Minimum Security Threshold of every site->aggregator path
    aggregator = "aggregator"  # topology node of the aggregator
    bandwidth_mbps = 100       # what each path reserves
    max_delay_us = 50000

    [job]                      # merged over the demo's job (paroma.demo.demo_job)
    strategy = { name = "fedavg" }
    training = { local_steps = 50 }
    privacy = { clip_norm = 1.0, noise_multiplier = 0.3 }

    [[site]]
    id = "cleveland"
    data = "uci:cleveland"     # uci:<hospital> | synthetic:<patients> | a Bundle file or folder
    consent = "demo"           # demo | full | "permit=0.8,opt_out=0.1,no_consent=0.1"
    node = "hospital-cleveland"  # its topology node (optional: no path is modelled without)

    [[churn]]                  # consent withdrawn over rounds
    from_round = 2
    revoke_fraction = 0.02     # of the site's permitting patients, before each round from from_round
    sites = ["cleveland"]      # default: every site

    [[attack]]                 # deploy.attacks.Poisoning
    site = "cleveland"
    kind = "sign-flip"         # sign-flip | scale | noise
    scale = 10.0
    noise_std = 1.0
    from_round = 1

    [[network]]                # before round `round` trains
    round = 3
    event = "cve"              # cve | fix | node-down | node-up | link-down | link-up
    node = "router-5"
    cve = "CVE-2022-44204"     # for cve / fix (offline NVD records)
    remediation = 1.0          # for cve
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.attacks import ATTACK_KINDS, AttackError, Poisoning
from deploy.sites import DataSource, parse_consent, parse_data
from protection_layer import ConsentMix

NETWORK_EVENTS = ("cve", "fix", "node-down", "node-up", "link-down", "link-up")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")
_TOP_LEVEL = ("scenario", "job", "site", "churn", "attack", "network")


class ScenarioError(ValueError):
    """An invalid scenario; ``problems`` lists every (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True)
class ScenarioSite:
    id: str
    data: DataSource
    data_text: str
    consent: ConsentMix
    consent_text: str
    node: str | None = None
    name: str = ""


@dataclass(frozen=True)
class Churn:
    from_round: int
    revoke_fraction: float
    sites: tuple[str, ...]


@dataclass(frozen=True)
class NetworkEvent:
    round: int
    event: str
    node: str = ""
    link: str = ""
    cve: str = ""
    remediation: float = 1.0

    def describe(self) -> str:
        if self.event == "cve":
            return f"{self.cve} on {self.node}"
        if self.event == "fix":
            return f"{self.cve} fixed on {self.node}"
        if self.event.startswith("node-"):
            return f"{self.node} {self.event[5:]}"
        return f"link {self.link} {self.event[5:]}"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    rounds: int
    seed: int
    sites: tuple[ScenarioSite, ...]
    job: Mapping[str, Any] = field(default_factory=dict)
    churn: tuple[Churn, ...] = ()
    attacks: tuple[Poisoning, ...] = ()
    network: tuple[NetworkEvent, ...] = ()
    topology: str = "demo"
    aggregator: str = "aggregator"
    min_security: float = 50.0
    bandwidth_mbps: float = 100.0
    max_delay_us: float = 50_000.0
    source: Path | None = None


def load_scenario(path: Path) -> Scenario:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError([("(file)", f"{path}: {exc.strerror}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([("(file)", f"{path}: not valid TOML: {exc}")]) from exc
    return parse_scenario(data, base=Path(path).parent, source=Path(path))


def _tables(data: Mapping[str, Any], key: str, problems: list[tuple[str, str]]) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        problems.append((key, f"expected an array of tables ([[{key}]])"))
        return []
    return value


def parse_scenario(data: Any, base: Path | None = None, source: Path | None = None) -> Scenario:
    """Validate a scenario document and list every problem."""
    problems: list[tuple[str, str]] = []
    if not isinstance(data, Mapping):
        raise ScenarioError([("(document)", "expected a table")])
    for key in data:
        if key not in _TOP_LEVEL:
            problems.append((str(key), f"unknown table; expected {', '.join(_TOP_LEVEL)}"))

    def number(table: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((f"{where}{key}", f"expected a number, got {value!r}"))
            return default
        if not lo <= float(value) <= hi:
            problems.append((f"{where}{key}", f"{value} is outside [{lo:g}, {hi:g}]"))
        return float(value)

    def integer(table: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((f"{where}{key}", f"expected an integer, got {value!r}"))
            return default
        if not lo <= value <= hi:
            problems.append((f"{where}{key}", f"{value} is outside [{lo}, {hi}]"))
        return value

    def text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            problems.append(
                (f"{where}{key}", "required text" if default is None else f"expected text, got {value!r}")
            )
            return default or ""
        return value

    head = data.get("scenario", {})
    if not isinstance(head, Mapping):
        problems.append(("scenario", "expected a table"))
        head = {}
    name = text(head, "name", "scenario.")
    if name and not _NAME.match(name):
        problems.append(("scenario.name", f"{name!r}: use letters, digits, '_', '.', '-' (up to 80)"))
    description = head.get("description", "")
    if not isinstance(description, str):
        problems.append(("scenario.description", "expected text"))
        description = ""
    rounds = integer(head, "rounds", "scenario.", 5, 1, 1_000)
    seed = integer(head, "seed", "scenario.", 42, 0, 2**31 - 1)
    topology = text(head, "topology", "scenario.", "demo")
    aggregator = text(head, "aggregator", "scenario.", "aggregator")
    min_security = number(head, "min_security", "scenario.", 50.0, 0.0, 100.0)
    bandwidth = number(head, "bandwidth_mbps", "scenario.", 100.0, 1e-3, 1e6)
    max_delay = number(head, "max_delay_us", "scenario.", 50_000.0, 1.0, 1e9)

    job = data.get("job", {})
    if not isinstance(job, Mapping):
        problems.append(("job", "expected a table"))
        job = {}
    for key in job:
        if key not in ("strategy", "training", "privacy", "min_sites", "deadline"):
            problems.append(
                (f"job.{key}", "unknown; a scenario may set strategy, training, privacy, min_sites, deadline")
            )

    sites: list[ScenarioSite] = []
    seen: set[str] = set()
    for i, raw in enumerate(_tables(data, "site", problems)):
        where = f"site[{i}]."
        sid = text(raw, "id", where)
        if sid and not _SITE_ID.match(sid):
            problems.append((f"{where}id", f"{sid!r}: use 1-63 lowercase letters, digits and '-'"))
        if sid in seen:
            problems.append((f"{where}id", f"site {sid!r} is declared twice"))
        seen.add(sid)
        data_text = raw.get("data")
        source_: DataSource | None = None
        try:
            source_ = parse_data(data_text, base)
        except ValueError as exc:
            problems.append((f"{where}data", str(exc)))
        consent_text = raw.get("consent", "demo")
        mix: ConsentMix | None = None
        try:
            mix = parse_consent(consent_text, sid)
        except ValueError as exc:
            problems.append((f"{where}consent", str(exc)))
        node = raw.get("node")
        if node is not None and (not isinstance(node, str) or not node):
            problems.append((f"{where}node", "expected a topology node id"))
            node = None
        for key in raw:
            if key not in ("id", "data", "consent", "node", "name"):
                problems.append((f"{where}{key}", "unknown; expected id, data, consent, node, name"))
        if source_ is not None and mix is not None and sid:
            sites.append(
                ScenarioSite(
                    sid, source_, str(data_text), mix, str(consent_text), node, str(raw.get("name", sid))
                )
            )
    if not sites and not any(f.startswith("site[") for f, _ in problems):
        problems.append(("site", "a scenario needs at least one [[site]]"))
    site_ids = {s.id for s in sites}

    churn: list[Churn] = []
    for i, raw in enumerate(_tables(data, "churn", problems)):
        where = f"churn[{i}]."
        start = integer(raw, "from_round", where, 1, 1, 1_000)
        fraction = number(raw, "revoke_fraction", where, 0.02, 0.0, 1.0)
        names = raw.get("sites", sorted(site_ids))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append((f"{where}sites", "expected a list of site ids"))
            names = []
        for n in names:
            if n not in site_ids:
                problems.append((f"{where}sites", f"{n!r} is not a declared site"))
        churn.append(Churn(start, fraction, tuple(names)))

    attacks: list[Poisoning] = []
    for i, raw in enumerate(_tables(data, "attack", problems)):
        where = f"attack[{i}]."
        site = text(raw, "site", where)
        if site and site not in site_ids:
            problems.append((f"{where}site", f"{site!r} is not a declared site"))
        kind = raw.get("kind", "sign-flip")
        if kind not in ATTACK_KINDS:
            problems.append((f"{where}kind", f"{kind!r} is not one of {', '.join(ATTACK_KINDS)}"))
            continue
        scale = number(raw, "scale", where, 10.0, 1e-6, 1e6)
        noise = number(raw, "noise_std", where, 1.0, 0.0, 1e6)
        start = integer(raw, "from_round", where, 1, 1, 1_000)
        try:
            attacks.append(Poisoning(site, str(kind), scale, noise, start))
        except AttackError as exc:
            problems.append((f"{where}kind", str(exc)))

    events: list[NetworkEvent] = []
    for i, raw in enumerate(_tables(data, "network", problems)):
        where = f"network[{i}]."
        at = integer(raw, "round", where, 1, 1, 1_000)
        if at > rounds:
            problems.append((f"{where}round", f"round {at} is after the scenario's last round {rounds}"))
        event = raw.get("event")
        if event not in NETWORK_EVENTS:
            problems.append((f"{where}event", f"{event!r} is not one of {', '.join(NETWORK_EVENTS)}"))
            continue
        node = link = cve = ""
        remediation = 1.0
        if event in ("cve", "fix", "node-down", "node-up"):
            node = text(raw, "node", where)
        else:
            link = text(raw, "link", where)
        if event in ("cve", "fix"):
            cve = text(raw, "cve", where)
            if cve and not _CVE.match(cve):
                problems.append((f"{where}cve", f"{cve!r} is not a CVE id (CVE-YYYY-NNNN)"))
        if event == "cve":
            remediation = number(raw, "remediation", where, 1.0, 1.0, 10.0)
        events.append(NetworkEvent(at, str(event), node, link, cve, remediation))
    if events and not any(s.node for s in sites):
        problems.append(("network", "network events need sites placed on the topology (site.node)"))

    if problems:
        raise ScenarioError(problems)
    return Scenario(
        name=name,
        description=description,
        rounds=rounds,
        seed=seed,
        sites=tuple(sites),
        job=dict(job),
        churn=tuple(churn),
        attacks=tuple(attacks),
        network=tuple(sorted(events, key=lambda e: e.round)),
        topology=topology,
        aggregator=aggregator,
        min_security=min_security,
        bandwidth_mbps=bandwidth,
        max_delay_us=max_delay,
        source=source,
    )
