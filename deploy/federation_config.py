"""The federation config: one TOML file describing a whole deployment.

``paroma up`` starts it as processes on this machine and ``paroma deploy compose`` writes the
docker-compose file of the same deployment, both from the :class:`FederationConfig` parsed
here. Parsing lists every problem with its field (like the job spec's), so that an operator
fixes a file in one pass. Shape (``deploy/federations/local-4.toml`` is the default)::

    [federation]  name, workdir, topology, host, min_security
    [aggregator]  node, superlink_port
    [pce]         port
    [relays]      base_port, control_base_port, bandwidth_mbps, max_delay_us, emulate_links
    [[site]]      id, node, data, consent, fhir_port, supernode_port, ingress_port, netns_address

Every router and access node of the topology runs a relay (they are the nodes a path crosses);
the i-th of them in the topology file's order listens on ``base_port + i`` and takes its
controller's orders on ``control_base_port + i``. A site's SuperNode dials its path's ingress,
``ingress_port`` on the first relay of its path.

Relative paths (``workdir``, a topology or data file) are relative to the config file.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interconnect.pce.errors import PceError
from interconnect.pce.loaders import BUILTIN_TOPOLOGIES, load_topology
from interconnect.pce.topology import NodeKind, Topology
from protection_layer.consent_mix import ConsentMix, ConsentMixError

DEFAULT_CONFIG = Path(__file__).with_name("federations") / "local-4.toml"
UCI_HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
DATA_KINDS = ("uci", "synthetic")
CONSENT_KINDS = ("demo", "full")
# Flower's SuperNode serves its ClientAppIo (runtime) API on a port of its own; without a
# per-site value the i-th site gets this base + i.
SUPERNODE_BASE_PORT = 9400
# Each site's own network namespace (``paroma up --netns``) gets a /30 out of this range.
NETNS_NETWORK = ipaddress.ip_network("10.77.0.0/16")
MAX_SYNTHETIC_PATIENTS = 100_000

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_TABLES = ("federation", "aggregator", "pce", "relays", "site")
_FIELDS: dict[str, tuple[str, ...]] = {
    "federation": ("name", "workdir", "topology", "host", "min_security"),
    "aggregator": ("node", "superlink_port"),
    "pce": ("port",),
    "relays": ("base_port", "control_base_port", "bandwidth_mbps", "max_delay_us", "emulate_links"),
    "site": ("id", "node", "data", "consent", "fhir_port", "supernode_port", "ingress_port", "netns_address"),
}


class FederationConfigError(ValueError):
    """An invalid federation config; ``problems`` lists every (field, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: Path | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True)
class DataSource:
    """Where a site's patients come from: ``uci:<hospital>``, ``synthetic:<patients>`` or a
    FHIR Bundle file or a folder of them (``path``)."""

    kind: str  # "uci" | "synthetic" | "fhir"
    hospital: str = ""
    patients: int = 0
    path: Path | None = None

    def describe(self) -> str:
        if self.kind == "uci":
            return f"uci:{self.hospital}"
        if self.kind == "synthetic":
            return f"synthetic:{self.patients}"
        return str(self.path)


@dataclass(frozen=True)
class ConsentSource:
    """Which research consents a site's patients get: the demo's realistic mix for that
    hospital (``demo``), every patient permitting (``full``), or a mix of shares."""

    kind: str  # "demo" | "full" | "mix"
    mix: ConsentMix | None = None
    text: str = ""


@dataclass(frozen=True)
class SiteConfig:
    id: str
    node: str
    data: DataSource
    consent: ConsentSource
    fhir_port: int
    supernode_port: int
    ingress_port: int
    # The site's own address inside its network namespace (``--netns``); the host side of
    # its veth pair is the next lower address of the same /30.
    netns_address: str

    @property
    def netns_host_address(self) -> str:
        return str(ipaddress.ip_address(self.netns_address) - 1)


@dataclass(frozen=True)
class AggregatorConfig:
    node: str
    # Flower 1.42's SuperLink serves its Fleet, Control and ServerAppIo APIs over HTTP(S) on
    # one port (``flower-superlink --port``).
    superlink_port: int


@dataclass(frozen=True)
class RelayConfig:
    base_port: int
    control_base_port: int
    bandwidth_mbps: float
    max_delay_us: float
    # Relays hold each hop's delay and capacity (the topology's) when true.
    emulate_links: bool = True


@dataclass(frozen=True)
class FederationConfig:
    source: Path
    name: str
    workdir: Path
    topology: str  # a built-in topology name or an absolute file path
    host: str
    min_security: float
    aggregator: AggregatorConfig
    pce_port: int
    relays: RelayConfig
    sites: tuple[SiteConfig, ...]
    # The topology's routers and access nodes in file order, each running a relay: the i-th
    # listens on base_port + i.
    routers: tuple[str, ...]

    @property
    def relay_nodes(self) -> tuple[str, ...]:
        return self.routers

    def relay_port(self, router: str) -> int:
        return self.relays.base_port + self.routers.index(router)

    def relay_control_port(self, router: str) -> int:
        return self.relays.control_base_port + self.routers.index(router)

    @property
    def relay_ports(self) -> dict[str, int]:
        return {router: self.relays.base_port + i for i, router in enumerate(self.routers)}

    def site(self, site_id: str) -> SiteConfig:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(f"no site {site_id!r} in federation {self.name!r}")

    def load_topology(self) -> Topology:
        return load_topology(self.topology)


def load_federation_config(path: str | Path) -> FederationConfig:
    """Read and validate a federation config file, raising FederationConfigError with every
    problem found."""
    source = Path(path).resolve()
    try:
        data = tomllib.loads(source.read_text())
    except OSError as exc:
        raise FederationConfigError([("(file)", f"cannot read: {exc.strerror or exc}")], source) from None
    except UnicodeDecodeError:
        raise FederationConfigError([("(file)", "not UTF-8 text")], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise FederationConfigError([("(file)", f"not valid TOML: {exc}")], source) from None
    return parse_federation_config(data, source)


def parse_federation_config(data: Mapping[str, Any], source: Path) -> FederationConfig:
    """Validate a parsed config document; relative paths are relative to ``source``'s folder."""
    problems: list[tuple[str, str]] = []
    fields = _Fields(problems)
    base = source.parent
    for key in data:
        if key not in _TABLES:
            problems.append((key, f"unknown table; expected {', '.join(_TABLES)}"))

    fed = fields.table(data, "federation")
    name = fields.text(fed, "federation.name", pattern=_NAME, expect="lower-case letters, digits, '-'")
    workdir_text = fields.text(fed, "federation.workdir", default=f".paroma/{name or 'federation'}")
    topology_ref = fields.text(fed, "federation.topology", default="demo")
    host = fields.text(fed, "federation.host", default="127.0.0.1")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problems.append(("federation.host", f"{host!r} is not an IP address"))
    min_security = fields.number(fed, "federation.min_security", 0.0, 100.0, default=50.0)

    agg = fields.table(data, "aggregator")
    aggregator_node = fields.text(agg, "aggregator.node", default="aggregator")
    superlink_port = fields.port(agg, "aggregator.superlink_port", default=9093)

    pce = fields.table(data, "pce")
    pce_port = fields.port(pce, "pce.port", default=8585)

    rel = fields.table(data, "relays")
    base_port = fields.port(rel, "relays.base_port", default=7100)
    bandwidth = fields.number(rel, "relays.bandwidth_mbps", 0.0, 10_000_000.0, default=100.0, open_low=True)
    max_delay = fields.number(rel, "relays.max_delay_us", 0.0, 10_000_000.0, default=50_000.0, open_low=True)
    control_base_port = fields.port(rel, "relays.control_base_port", default=(base_port or 7100) + 100)
    emulate_links = rel.get("emulate_links", True)
    if not isinstance(emulate_links, bool):
        problems.append(("relays.emulate_links", f"expected true or false, got {emulate_links!r}"))
        emulate_links = True

    topology: Topology | None = None
    topology_stored = topology_ref
    if topology_ref:
        if topology_ref not in BUILTIN_TOPOLOGIES:
            topology_stored = str((base / topology_ref).resolve())
        try:
            topology = load_topology(topology_stored)
        except PceError as exc:
            problems.append(("federation.topology", str(exc)))
    if topology is not None and aggregator_node:
        _check_node(topology, aggregator_node, "aggregator.node", problems)
    relaying = (NodeKind.ROUTER, NodeKind.ACCESS)
    routers = tuple(n.id for n in topology.nodes if n.kind in relaying) if topology else ()

    sites = _sites(data.get("site"), base, topology, (base_port or 7100) + 200, fields, problems)

    # Every listening port of the deployment is distinct (they share one host address).
    owners: dict[int, str] = {}

    def claim(port: int, owner: str) -> None:
        if port <= 0:
            return
        if port in owners:
            problems.append((owner, f"port {port} is already used by {owners[port]}"))
        else:
            owners[port] = owner

    claim(superlink_port, "aggregator.superlink_port")
    claim(pce_port, "pce.port")
    if base_port > 0:
        if base_port + len(routers) - 1 > 65535:
            problems.append(("relays.base_port", f"{base_port} + {len(routers)} relays passes port 65535"))
        for i, router in enumerate(routers):
            claim(base_port + i, f"relays.base_port (relay of {router})")
    if control_base_port > 0:
        if control_base_port + len(routers) - 1 > 65535:
            problems.append(
                ("relays.control_base_port", f"{control_base_port} + {len(routers)} relays passes 65535")
            )
        for i, router in enumerate(routers):
            claim(control_base_port + i, f"relays.control_base_port (control of {router})")
    for i, site in enumerate(sites):
        claim(site.fhir_port, f"site[{i}].fhir_port")
        claim(site.supernode_port, f"site[{i}].supernode_port")
        claim(site.ingress_port, f"site[{i}].ingress_port")

    if problems:
        raise FederationConfigError(problems, source)
    return FederationConfig(
        source=source,
        name=name,
        workdir=(base / workdir_text).resolve(),
        topology=topology_stored,
        host=host,
        min_security=min_security,
        aggregator=AggregatorConfig(aggregator_node, superlink_port),
        pce_port=pce_port,
        relays=RelayConfig(base_port, control_base_port, bandwidth, max_delay, emulate_links),
        sites=tuple(sites),
        routers=routers,
    )


def _sites(
    raw: Any,
    base: Path,
    topology: Topology | None,
    ingress_base: int,
    fields: _Fields,
    problems: list[tuple[str, str]],
) -> list[SiteConfig]:
    if raw is None:
        problems.append(("site", "no [[site]] table: a federation needs at least one site"))
        return []
    if not isinstance(raw, list):
        problems.append(("site", "expected an array of tables ([[site]])"))
        return []
    sites: list[SiteConfig] = []
    seen_ids: dict[str, int] = {}
    seen_nodes: dict[str, int] = {}
    seen_addresses: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"site[{i}]"
        if not isinstance(item, Mapping):
            problems.append((where, "expected a table"))
            continue
        for key in item:
            if key not in _FIELDS["site"]:
                problems.append((f"{where}.{key}", f"unknown field; expected {', '.join(_FIELDS['site'])}"))
        site_id = fields.text(
            item, f"{where}.id", pattern=_SITE_ID, expect="lower-case letters, digits, '-', '_'"
        )
        if site_id:
            if site_id in seen_ids:
                problems.append(
                    (f"{where}.id", f"duplicate site id {site_id!r} (also site[{seen_ids[site_id]}])")
                )
            seen_ids.setdefault(site_id, i)
        node = fields.text(item, f"{where}.node")
        if node and topology is not None:
            _check_node(topology, node, f"{where}.node", problems)
        if node:
            if node in seen_nodes:
                problems.append((f"{where}.node", f"node {node!r} already hosts site[{seen_nodes[node]}]"))
            seen_nodes.setdefault(node, i)
        data = _data_source(fields.text(item, f"{where}.data"), f"{where}.data", base, problems)
        consent = _consent_source(
            fields.text(item, f"{where}.consent", default="demo"), f"{where}.consent", data, problems
        )
        fhir_port = fields.port(item, f"{where}.fhir_port")
        supernode_port = fields.port(item, f"{where}.supernode_port", default=SUPERNODE_BASE_PORT + i)
        ingress_port = fields.port(item, f"{where}.ingress_port", default=ingress_base + i)
        default_address = str(NETNS_NETWORK.network_address + 4 * i + 2)
        address = fields.text(item, f"{where}.netns_address", default=default_address)
        if address:
            address = _check_netns_address(address, f"{where}.netns_address", problems)
            if address in seen_addresses:
                problems.append(
                    (f"{where}.netns_address", f"{address} is already site[{seen_addresses[address]}]'s")
                )
            seen_addresses.setdefault(address, i)
        if data is not None and consent is not None:
            sites.append(
                SiteConfig(site_id, node, data, consent, fhir_port, supernode_port, ingress_port, address)
            )
    return sites


def _check_node(topology: Topology, node: str, where: str, problems: list[tuple[str, str]]) -> None:
    if not topology.has_node(node):
        problems.append((where, f"no node {node!r} in topology {topology.name!r}"))


def _data_source(text: str, where: str, base: Path, problems: list[tuple[str, str]]) -> DataSource | None:
    if not text:
        return None
    kind, sep, value = text.partition(":")
    if sep and kind == "uci":
        if value not in UCI_HOSPITALS:
            problems.append(
                (where, f"unknown UCI hospital {value!r}; expected one of {', '.join(UCI_HOSPITALS)}")
            )
            return None
        return DataSource("uci", hospital=value)
    if sep and kind == "synthetic":
        if not value.isdigit() or not 1 <= int(value) <= MAX_SYNTHETIC_PATIENTS:
            problems.append(
                (where, f"synthetic:{value}: expected a patient count from 1 to {MAX_SYNTHETIC_PATIENTS}")
            )
            return None
        return DataSource("synthetic", patients=int(value))
    path = (base / text).resolve()
    if not path.exists():
        problems.append(
            (
                where,
                f"{text!r}: no such FHIR Bundle file or folder (expected uci:<hospital>, synthetic:<n> or a path)",
            )
        )
        return None
    return DataSource("fhir", path=path)


def _consent_source(
    text: str, where: str, data: DataSource | None, problems: list[tuple[str, str]]
) -> ConsentSource | None:
    if not text:
        return None
    if text == "full":
        return ConsentSource("full", ConsentMix.full(), text)
    if text == "demo":
        # The demo's mixes are per UCI hospital; other data gets the default realistic mix.
        return ConsentSource("demo", None, text)
    if "=" not in text:
        problems.append((where, f"{text!r}: expected demo, full or shares like 'permit=0.8,opt_out=0.2'"))
        return None
    try:
        return ConsentSource("mix", ConsentMix.parse(text), text)
    except ConsentMixError as exc:
        problems.append((where, str(exc)))
        return None


def _check_netns_address(text: str, where: str, problems: list[tuple[str, str]]) -> str:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        problems.append((where, f"{text!r} is not an IPv4 address"))
        return text
    # The veth pair is a /30: host side .1 (or .5, ...), namespace side the next address.
    if int(address) % 4 != 2:
        problems.append((where, f"{text}: expected the second host of a /30 (x.x.x.2, .6, .10, ...)"))
    return str(address)


class _Fields:
    """Typed reads of one table's fields, each problem recorded with its dotted name."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems

    def table(self, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, Mapping):
            self.problems.append((name, "expected a table"))
            return {}
        for key in value:
            if key not in _FIELDS[name]:
                self.problems.append((f"{name}.{key}", f"unknown field; expected {', '.join(_FIELDS[name])}"))
        return value

    def text(
        self,
        table: Mapping[str, Any],
        dotted: str,
        *,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        expect: str = "",
    ) -> str:
        key = dotted.rsplit(".", 1)[1]
        if key not in table:
            if default is None:
                self.problems.append((dotted, "missing"))
                return ""
            return default
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            self.problems.append((dotted, f"expected a non-empty string, got {value!r}"))
            return ""
        if pattern is not None and not pattern.match(value):
            self.problems.append((dotted, f"{value!r}: expected {expect or pattern.pattern}"))
            return ""
        return value

    def number(
        self,
        table: Mapping[str, Any],
        dotted: str,
        low: float,
        high: float,
        *,
        default: float,
        open_low: bool = False,
    ) -> float:
        key = dotted.rsplit(".", 1)[1]
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append((dotted, f"expected a number, got {value!r}"))
            return default
        if value > high or value < low or (open_low and value == low):
            bound = f"above {low}" if open_low else f"at least {low}"
            self.problems.append((dotted, f"{value}: expected a number {bound} and at most {high}"))
            return default
        return float(value)

    def port(self, table: Mapping[str, Any], dotted: str, *, default: int | None = None) -> int:
        key = dotted.rsplit(".", 1)[1]
        if key not in table:
            if default is None:
                self.problems.append((dotted, "missing"))
                return 0
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65535:
            self.problems.append((dotted, f"{value!r}: expected a TCP port from 1024 to 65535"))
            return 0
        return value
