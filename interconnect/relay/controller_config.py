"""The relays' controller as a file, for ``paroma pce serve --relays FILE`` (TOML)::

    [controller]
    token_file = "relay.token"     # the relays' control secret (relative to this file; 0600)
    bandwidth_mbps = 100           # what each site -> aggregator path reserves
    max_delay_us = 50000
    min_security = 50              # the Minimum Security Threshold of the installed paths
    health_interval_s = 0.5
    ingress_file = "ingress.json"  # optional: each site's ingress, rewritten when it changes
    ca_file = "pki/ca.pem"         # optional: verify relays' HTTPS control APIs (CRL beside it)

    [aggregator]
    node = "aggregator"            # the topology node the aggregator sits behind
    host = "127.0.0.1"             # where its traffic ends (the SuperLink's Fleet API)
    port = 9092

    [[relay]]                      # one per router/access node of the topology
    node = "router-1"
    host = "127.0.0.1"
    port = 7101
    control_url = "http://127.0.0.1:7201"

    [[site]]
    id = "cleveland"
    node = "hospital-cleveland"
    ingress_port = 7301            # optional; default: any free port on the first relay

Every problem is listed with its field.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interconnect.pce.engine import SecurePathEngine
from interconnect.relay.config import read_secret
from interconnect.relay.controller import AggregatorEndpoint, RelayController, RelayEndpoint


class ControllerConfigError(ValueError):
    """The controller's file is wrong; the message lists every problem with its field."""


@dataclass(frozen=True)
class ControllerConfig:
    token: str
    aggregator: AggregatorEndpoint
    relays: dict[str, RelayEndpoint]
    sites: dict[str, str]
    ingress_ports: dict[str, int] = field(default_factory=dict)
    bandwidth_mbps: float = 100.0
    max_delay_us: float = 50_000.0
    min_security: float = 50.0
    health_interval_s: float = 0.5
    ingress_file: Path | None = None
    ca_file: Path | None = None


def load_controller_config(path: Path | str) -> ControllerConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ControllerConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ControllerConfigError(f"{path}: not TOML: {exc}") from None
    problems: list[str] = []
    unknown = set(data) - {"controller", "aggregator", "relay", "site"}
    if unknown:
        problems.append(f"unknown table(s) {', '.join(sorted(unknown))}")
    controller = _table(data, "controller", problems)
    token = ""
    token_file = controller.get("token_file")
    if not isinstance(token_file, str) or not token_file:
        problems.append("controller.token_file: the path of the relays' control secret is required")
    else:
        token = read_secret(path.parent / token_file, problems, "controller.token_file")
    numbers = {
        key: _number(controller, key, default, low, f"controller.{key}", problems)
        for key, default, low in (
            ("bandwidth_mbps", 100.0, 0.0),
            ("max_delay_us", 50_000.0, 0.0),
            ("min_security", 50.0, -1.0),
            ("health_interval_s", 0.5, 0.0),
        )
    }
    if numbers["min_security"] > 100:
        problems.append(f"controller.min_security: {numbers['min_security']:g} is above 100")
    ingress_file = controller.get("ingress_file")
    if ingress_file is not None and (not isinstance(ingress_file, str) or not ingress_file):
        problems.append(f"controller.ingress_file: expected a file name, got {ingress_file!r}")
    ca_file = controller.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not (path.parent / ca_file).is_file()):
        problems.append(f"controller.ca_file: {ca_file!r} is not a readable file")
    aggregator = _table(data, "aggregator", problems)
    agg = AggregatorEndpoint(
        _string(aggregator, "node", "aggregator", problems),
        _string(aggregator, "host", "aggregator", problems),
        _port(aggregator.get("port"), "aggregator.port", problems),
    )
    relays: dict[str, RelayEndpoint] = {}
    for i, item in enumerate(_list(data, "relay", problems)):
        where = f"relay[{i}]"
        node = _string(item, "node", where, problems)
        if node in relays:
            problems.append(f"{where}.node: {node!r} is listed twice")
        url = _string(item, "control_url", where, problems)
        if url and not url.startswith(("http://", "https://")):
            problems.append(f"{where}.control_url: expected an http(s) URL, got {url!r}")
        relays[node] = RelayEndpoint(
            node,
            _string(item, "host", where, problems),
            _port(item.get("port"), f"{where}.port", problems),
            url,
        )
    sites: dict[str, str] = {}
    ingress_ports: dict[str, int] = {}
    for i, item in enumerate(_list(data, "site", problems)):
        where = f"site[{i}]"
        site_id = _string(item, "id", where, problems)
        if site_id in sites:
            problems.append(f"{where}.id: {site_id!r} is listed twice")
        sites[site_id] = _string(item, "node", where, problems)
        if "ingress_port" in item:
            ingress_ports[site_id] = _port(item["ingress_port"], f"{where}.ingress_port", problems)
    if problems:
        raise ControllerConfigError(f"{path}: " + "; ".join(problems))
    return ControllerConfig(
        token=token,
        aggregator=agg,
        relays=relays,
        sites=sites,
        ingress_ports=ingress_ports,
        bandwidth_mbps=numbers["bandwidth_mbps"],
        max_delay_us=numbers["max_delay_us"],
        min_security=numbers["min_security"],
        health_interval_s=numbers["health_interval_s"],
        ingress_file=path.parent / ingress_file if isinstance(ingress_file, str) else None,
        ca_file=path.parent / ca_file if isinstance(ca_file, str) else None,
    )


def controller_from_config(engine: SecurePathEngine, config: ControllerConfig) -> RelayController:
    controller = RelayController(
        engine,
        config.relays,
        sites=config.sites,
        aggregator=config.aggregator,
        token=config.token,
        bandwidth_mbps=config.bandwidth_mbps,
        max_delay_us=config.max_delay_us,
        min_security=config.min_security,
        ingress_ports=config.ingress_ports,
        health_interval_s=config.health_interval_s,
        control_ca=config.ca_file,
    )
    if config.ingress_file is not None:
        target = config.ingress_file
        controller.on_route_change.append(lambda _site: write_ingress_file(controller, target))
    return controller


def write_ingress_file(controller: RelayController, path: Path) -> None:
    """Each site's ingress (host, port) and route as JSON, written atomically."""
    sites = controller.status()["sites"]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(sites, indent=2))
    os.replace(tmp, path)


def _table(data: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        problems.append(f"a [{key}] table is required")
        return {}
    return value


def _list(data: dict[str, Any], key: str, problems: list[str]) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value) or not value:
        problems.append(f"at least one [[{key}]] table is required")
        return []
    return value


def _string(table: dict[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        problems.append(f"{where}.{key}: expected a non-empty string, got {value!r}")
        return ""
    return value


def _port(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(f"{where}: expected a TCP port from 1 to 65535, got {value!r}")
        return 1
    return value


def _number(
    table: dict[str, Any], key: str, default: float, low: float, where: str, problems: list[str]
) -> float:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= low
    ):
        problems.append(f"{where}: expected a number above {low:g}, got {value!r}")
        return default
    return float(value)
