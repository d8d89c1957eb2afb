"""``paroma up`` / ``down`` / ``status``: the multi-process federation of one config file.

``up`` prepares the working folder (``deploy.workdir``), then starts the services of
``deploy.services.plan`` as detached processes, each with its log (``logs/<service>.log``) and
pid file (``run/<service>.pid``), and waits for each group to answer its health check before
the next: relays, the Secure Traffic Engine driving them, the SuperLink (TLS, SuperNode
authentication; the sites' keys are registered through its Control API), the sites' FHIR APIs
(HTTPS), and one SuperNode per site dialling its path's ingress. A service that does not come
up stops ``up``: everything started is stopped again and the error names the service and
shows its log's tail. ``down`` stops every service with all the processes it started, in
reverse order, and removes the namespaces; it is idempotent. ``status`` probes every service
now.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from . import netns as netns_mod
from .federation_config import FederationConfig
from .processes import ProcessRecord, is_running, log_tail, read_record, start_detached, stop, stop_all
from .services import HealthCheck, Service, base_env, bin_path, plan
from .workdir import (
    RELAY_CONTROL_FILE,
    Credentials,
    Workdir,
    ensure_credentials,
    ensure_site,
    write_flower_app,
    write_flwr_cli_config,
)

STATE_FILE = "deployment.json"
Echo = Callable[[str], None]


class LaunchError(RuntimeError):
    """A service did not start or did not become healthy; names it and shows its log's tail."""

    def __init__(self, service: str, reason: str, tail: str = "") -> None:
        self.service = service
        self.reason = reason
        self.tail = tail
        super().__init__(f"{service}: {reason}")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    kind: str
    pid: int | None
    address: str
    health: str  # "up", "down" or "unhealthy: <why>"

    @property
    def up(self) -> bool:
        return self.health == "up"


# ---------------------------------------------------------------------------- preparing


def prepare(config: FederationConfig, echo: Echo = lambda _: None) -> tuple[Workdir, Credentials]:
    """The working folder: PKI, SuperNode keys, site folders, the Flower App, the flwr CLI's
    connection, the relays' configs and control secret."""
    from interconnect.relay.config import write_token

    workdir = Workdir(config.workdir)
    workdir.root.mkdir(parents=True, exist_ok=True)
    creds = ensure_credentials(config, workdir)
    for site in config.sites:
        if not (workdir.site(site.id) / "site.toml").is_file():
            echo(f"building site {site.id} ({site.data.describe()}, consent {site.consent.text})")
        try:
            ensure_site(config, site, workdir)
        except Exception as exc:  # any failure of the data or consent load names the site
            raise LaunchError(f"site {site.id}", f"building its folder failed: {exc}") from exc
    write_flower_app(workdir)
    write_flwr_cli_config(config, workdir, creds.ca)
    workdir.relays.mkdir(parents=True, exist_ok=True)
    token_path = workdir.relays / RELAY_CONTROL_FILE
    if not token_path.is_file():
        write_token(token_path)
    from .traffic_engine import relay_listen_host

    for node in config.relay_nodes:
        _write_text(
            workdir.relays / f"{node}.toml",
            "[relay]\n"
            f'name = "{node}"\n'
            f'host = "{relay_listen_host(config, _netns_requested(workdir))}"\n'
            f"port = {config.relay_port(node)}\n"
            f'control_host = "{config.host}"\n'
            f"control_port = {config.relay_control_port(node)}\n"
            f'token_file = "{RELAY_CONTROL_FILE}"\n'
            # The control API over HTTPS with the relay's federation certificate.
            f'tls_cert_file = "{creds.relays[node].cert_path}"\n'
            f'tls_key_file = "{creds.relays[node].key_path}"\n',
        )
    return workdir, creds


def _netns_requested(workdir: Workdir) -> bool:
    return bool(_read_state(workdir).get("netns", False))


# ---------------------------------------------------------------------------- up


def up(
    config: FederationConfig,
    *,
    netns: bool = False,
    timeout_s: float = 180.0,
    echo: Echo = lambda _: None,
) -> list[ServiceStatus]:
    """Start the whole deployment; raise LaunchError (after stopping what was started) if a
    service does not come up."""
    workdir = Workdir(config.workdir)
    running = [s for s in _recorded_services(workdir) if _record(workdir, s.name) is not None]
    if running:
        names = ", ".join(s.name for s in running)
        raise LaunchError("deployment", f"already running ({names}); run `paroma down` first")
    if netns and not netns_mod.can_use_netns():
        raise LaunchError("netns", "--netns needs root and a working `ip netns` (iproute2)")
    workdir.root.mkdir(parents=True, exist_ok=True)
    _write_state(workdir, {"netns": netns, "services": []})
    workdir, creds = prepare(config, echo)
    # Each `up` starts Flower's state afresh (runs and registered SuperNodes); the SuperLink's
    # database survives only its own restarts in between (`restart`).
    for stale in workdir.flwr_home("superlink").glob("state.db*"):
        stale.unlink()
    services = plan(config, workdir, creds, netns=netns)
    _write_state(
        workdir,
        {"netns": netns, "started": time.time(), "services": [_service_json(s) for s in services]},
    )
    try:
        if netns:
            for site in config.sites:
                netns_mod.create(config, site)
        groups: list[list[Service]] = [
            [s for s in services if s.kind == "relay"],
            [s for s in services if s.kind == "traffic-engine"],
            [s for s in services if s.kind == "superlink"],
        ]
        for group in groups:
            _start_group(workdir, group, timeout_s, echo)
        _register_supernodes(config, workdir, creds, echo)
        _start_group(workdir, [s for s in services if s.kind == "fhir"], timeout_s, echo)
        _start_group(workdir, [s for s in services if s.kind == "supernode"], timeout_s, echo, config=config)
    except BaseException:
        down(config)
        raise
    return status(config)


def _start_group(
    workdir: Workdir,
    group: list[Service],
    timeout_s: float,
    echo: Echo,
    *,
    config: FederationConfig | None = None,
) -> None:
    records: dict[str, ProcessRecord] = {}
    for service in group:
        argv = [*netns_mod.exec_prefix(service.netns), *service.argv] if service.netns else list(service.argv)
        records[service.name] = start_detached(
            service.name,
            argv,
            log_path=workdir.log(service.name),
            pid_path=workdir.pid(service.name),
            env=service.env,
        )
    deadline = time.monotonic() + timeout_s
    pending = {s.name: s for s in group}
    while pending:
        for name, service in list(pending.items()):
            record = records[name]
            if not is_running(record):
                raise LaunchError(name, "exited while starting", log_tail(record.log))
            verdict = probe(service.health, workdir, config)
            if verdict == "up":
                echo(f"{name} up ({service.address}, pid {record.pid})")
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            name = sorted(pending)[0]
            reason = probe(pending[name].health, workdir, config)
            raise LaunchError(
                name, f"not healthy after {timeout_s:.0f} s ({reason})", log_tail(records[name].log)
            )
        time.sleep(0.3)


# ---------------------------------------------------------------------------- SuperNode auth


def flwr_cli(workdir: Workdir, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the flwr CLI against the federation's SuperLink (TLS, the federation CA)."""
    env = {**base_env(), "FLWR_HOME": str(workdir.flwr_home("cli"))}
    return subprocess.run(
        [bin_path("flwr"), *args], capture_output=True, text=True, env=env, timeout=timeout_s, check=False
    )


def _json_out(result: subprocess.CompletedProcess[str]) -> Any:
    text = result.stdout
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        return None


def _register_supernodes(config: FederationConfig, workdir: Workdir, creds: Credentials, echo: Echo) -> None:
    """Register each site's SuperNode public key with the SuperLink: with
    ``--enable-supernode-auth`` only these keys may join (Flower's Control API)."""
    registered = registered_nodes(config, workdir)
    known = _read_state(workdir).get("node_ids", {})
    node_ids: dict[str, int] = {}
    for site in config.sites:
        if site.id in known and int(known[site.id]) in registered:
            node_ids[site.id] = int(known[site.id])
            continue
        key = creds.supernodes[site.id]
        result = flwr_cli(
            workdir,
            "supernode",
            "register",
            str(key.public_key_path),
            config.name,
            "--name",
            site.id,
            "--format",
            "json",
        )
        answer = _json_out(result)
        if not isinstance(answer, dict) or not answer.get("success"):
            raise LaunchError(
                "superlink",
                f"registering the SuperNode key of site {site.id} failed",
                result.stdout + result.stderr,
            )
        node_ids[site.id] = int(answer["node-id"])
        echo(f"SuperNode key of {site.id} registered (node {node_ids[site.id]})")
    state = _read_state(workdir)
    state["node_ids"] = node_ids
    _write_state(workdir, state)


def registered_nodes(config: FederationConfig, workdir: Workdir) -> dict[int, str]:
    """Node id -> status ("registered", "online", "offline", ...) as the SuperLink lists them."""
    result = flwr_cli(workdir, "supernode", "list", config.name, "--format", "json")
    answer = _json_out(result)
    if not isinstance(answer, dict) or not answer.get("success", True):
        return {}
    nodes = answer.get("nodes", [])
    return {int(n.get("node-id")): str(n.get("status", "")) for n in nodes if n.get("node-id") is not None}


# ---------------------------------------------------------------------------- health


def probe(health: HealthCheck, workdir: Workdir, config: FederationConfig | None = None) -> str:
    """ "up", or why not."""
    try:
        if health.kind == "tcp":
            with socket.create_connection((health.host, health.port), timeout=2):
                return "up"
        if health.kind in ("http", "https"):
            verify: ssl.SSLContext | bool = False
            if health.kind == "https":
                if health.ca is None:
                    return "no CA to verify the service with"
                verify = ssl.create_default_context(cafile=str(health.ca))
            url = f"{health.kind}://{health.host}:{health.port}{health.path}"
            response = httpx.get(url, verify=verify, timeout=3)
            # The SuperLink has no page at "/": any HTTP answer over verified TLS means it serves.
            return "up" if response.status_code < 500 else f"HTTP {response.status_code}"
        if health.kind == "supernode":
            node_id = _read_state(workdir).get("node_ids", {}).get(health.site)
            if node_id is None:
                return "its key is not registered"
            state = registered_nodes(config, workdir) if config is not None else {}
            status_ = state.get(int(node_id), "unknown")
            return "up" if status_ == "online" else f"SuperLink lists it as {status_}"
    except (OSError, httpx.HTTPError, ssl.SSLError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"unknown health check {health.kind!r}"


# ---------------------------------------------------------------------------- status, down


def status(config: FederationConfig) -> list[ServiceStatus]:
    workdir = Workdir(config.workdir)
    services = _recorded_services(workdir)
    online = registered_nodes(config, workdir) if any(s.kind == "supernode" for s in services) else {}
    node_ids = _read_state(workdir).get("node_ids", {})
    out = []
    for service in services:
        record = _record(workdir, service.name)
        if record is None:
            out.append(ServiceStatus(service.name, service.kind, None, service.address, "down"))
            continue
        if service.health.kind == "supernode":
            node = node_ids.get(service.health.site)
            state = online.get(int(node), "unknown") if node is not None else "not registered"
            verdict = "up" if state == "online" else f"SuperLink lists it as {state}"
        else:
            verdict = probe(service.health, workdir)
        health = "up" if verdict == "up" else f"unhealthy: {verdict}"
        out.append(ServiceStatus(service.name, service.kind, record.pid, service.address, health))
    return out


def down(config: FederationConfig) -> list[str]:
    """Stop every service (reverse start order) with all its processes; remove the sites'
    namespaces. Returns the services that were running."""
    workdir = Workdir(config.workdir)
    stopped = []
    names = [s.name for s in _recorded_services(workdir)]
    # Pid files of services a changed config no longer names are stopped too.
    if workdir.run.is_dir():
        names += [p.stem for p in sorted(workdir.run.glob("*.pid")) if p.stem not in names]
    # The SuperNodes first (so that none reports a SuperLink gone), then the rest at once.
    records = {n: r for n in names if (r := read_record(workdir.pid(n))) is not None}
    first = [r for n, r in records.items() if n.startswith("supernode-")]
    rest = [r for n, r in records.items() if not n.startswith("supernode-")]
    for batch in (first, rest):
        stopped += [r.name for r in stop_all(batch)]
    for name in names:
        workdir.pid(name).unlink(missing_ok=True)
    for ns in netns_mod.namespaces(config):
        if os.geteuid() == 0 and netns_mod.exists(ns):
            netns_mod.remove(ns)
    return stopped


def service(config: FederationConfig, name: str) -> tuple[Service, ProcessRecord | None]:
    """One recorded service and its process (for fault tests and operators)."""
    workdir = Workdir(config.workdir)
    for candidate in _recorded_services(workdir):
        if candidate.name == name:
            return candidate, _record(workdir, name)
    raise KeyError(f"no service {name!r} in {config.name}")


def restart(config: FederationConfig, name: str, timeout_s: float = 120.0) -> ProcessRecord:
    """Start a stopped (or crashed) service again, as ``up`` did. A SuperNode that crashed is
    first deactivated at the SuperLink (``deploy.supernode_lease``): it would stay online there
    for up to a minute, and the SuperLink refuses to activate it again meanwhile."""
    workdir = Workdir(config.workdir)
    spec, record = service(config, name)
    if record is not None:
        stop(record)
    if spec.kind == "supernode":
        _release_lease(config, workdir, spec)
    _start_group(workdir, [spec], timeout_s, lambda _: None, config=config)
    started = _record(workdir, name)
    assert started is not None
    return started


def _release_lease(config: FederationConfig, workdir: Workdir, spec: Service) -> None:
    from .supernode_lease import LeaseError, deactivate

    node_id = _read_state(workdir).get("node_ids", {}).get(spec.health.site)
    if node_id is None or registered_nodes(config, workdir).get(int(node_id)) != "online":
        return
    argv = list(spec.argv)
    key = Path(argv[argv.index("--auth-supernode-private-key") + 1])
    ca = Path(argv[argv.index("--root-certificates") + 1])
    try:
        deactivate(f"{config.host}:{config.aggregator.superlink_port}", ca, key, int(node_id))
    except LeaseError as exc:
        raise LaunchError(spec.name, f"its previous run is still online at the SuperLink: {exc}") from exc


def _record(workdir: Workdir, name: str) -> ProcessRecord | None:
    record = read_record(workdir.pid(name))
    return record if record is not None and is_running(record) else None


def _service_json(service: Service) -> dict[str, Any]:
    data = asdict(service)
    data.pop("env")
    data["flwr_home"] = service.env.get("FLWR_HOME")
    data["health"]["ca"] = str(service.health.ca) if service.health.ca else None
    return data


def _recorded_services(workdir: Workdir) -> list[Service]:
    out = []
    for item in _read_state(workdir).get("services", []):
        health = dict(item["health"])
        health["ca"] = Path(health["ca"]) if health.get("ca") else None
        out.append(
            Service(
                name=item["name"],
                kind=item["kind"],
                argv=tuple(item["argv"]),
                address=item["address"],
                health=HealthCheck(**health),
                env=base_env() | _service_env(item),
                netns=item.get("netns"),
            )
        )
    return out


def _service_env(item: dict[str, Any]) -> dict[str, str]:
    # FLWR_HOME is the one per-service variable (SuperLink and SuperNodes).
    return {"FLWR_HOME": item["flwr_home"]} if item.get("flwr_home") else {}


def _read_state(workdir: Workdir) -> dict[str, Any]:
    try:
        data = json.loads((workdir.run / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(workdir: Workdir, state: dict[str, Any]) -> None:
    _write_text(workdir.run / STATE_FILE, json.dumps(state, indent=2))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_status(rows: Iterable[ServiceStatus]) -> list[str]:
    out = []
    for row in rows:
        pid = str(row.pid) if row.pid is not None else "-"
        out.append(f"{row.name:<28} pid {pid:>7}  {row.address:<44} {row.health}")
    return out
