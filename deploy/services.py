"""What ``paroma up`` starts, in order: a pure plan of every service of a deployment.

Each :class:`Service` is one detached process with the command line, environment and health
check that make it part of the federation; nothing here starts or probes anything (that is
``deploy.launcher``). Order matters: the relays before their controller (it pushes routes to
them), the controller before the SuperNodes (it opens their ingress listeners), the SuperLink
before the SuperNodes (they must find a federation that registered their keys).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .federation_config import FederationConfig, SiteConfig
from .traffic_engine import relay_listen_host
from .workdir import Credentials, Workdir


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a service is up: a TCP listener, an HTTP(S) answer (``ca`` verifies the
    server's certificate), or a SuperNode the SuperLink lists as online."""

    kind: str  # "tcp" | "http" | "https" | "supernode"
    host: str = ""
    port: int = 0
    path: str = "/"
    ca: Path | None = None
    site: str = ""


@dataclass(frozen=True)
class Service:
    name: str
    kind: str  # "relay" | "traffic-engine" | "superlink" | "fhir" | "supernode"
    argv: tuple[str, ...]
    address: str
    health: HealthCheck
    env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None


def bin_path(name: str) -> str:
    """A console script of the running environment (flower-superlink, paroma, ...)."""
    return str(Path(sys.executable).with_name(name))


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    # Flower's SuperLink and SuperNode start `flower-superexec` and `flwr-*app` by name.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    # The installed project is the app's code: no `uv sync` of the app at run time.
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.pop("FLWR_HOME", None)
    return env


def netns_name(config: FederationConfig, site: SiteConfig) -> str:
    return f"paroma-{config.name}-{site.id}"


def veth_names(config: FederationConfig, site: SiteConfig) -> tuple[str, str]:
    """Host and namespace ends of the site's veth pair (interface names: at most 15 bytes)."""
    index = config.sites.index(site)
    tag = f"{abs(hash_name(config.name)) % 10_000:04d}"
    return f"pmh{tag}s{index}", f"pmn{tag}s{index}"


def hash_name(text: str) -> int:
    # A stable (not per-process salted) hash, so `paroma down` finds what `up` made.
    value = 0
    for char in text.encode():
        value = (value * 131 + char) % 1_000_000_007
    return value


def ingress_address(config: FederationConfig, site: SiteConfig, netns: bool) -> tuple[str, int]:
    """Where the site's SuperNode dials the SuperLink: its path's ingress on the first relay
    (reached over its veth pair when it has a namespace of its own)."""
    return (site.netns_host_address if netns else config.host), site.ingress_port


def plan(
    config: FederationConfig, workdir: Workdir, creds: Credentials, *, netns: bool = False
) -> list[Service]:
    env = base_env()
    services: list[Service] = []
    relay_host = relay_listen_host(config, netns)
    for node in config.relay_nodes:
        services.append(
            Service(
                name=f"relay-{node}",
                kind="relay",
                # `paroma relay run` without the rest of the CLI's imports (ten of these start at once).
                argv=(
                    sys.executable,
                    "-m",
                    "interconnect.relay",
                    "--config",
                    str(workdir.relays / f"{node}.toml"),
                ),
                address=f"{relay_host}:{config.relay_port(node)}",
                health=HealthCheck(
                    "https", config.host, config.relay_control_port(node), "/healthz", creds.ca
                ),
                env=env,
            )
        )
    engine_argv = [sys.executable, "-m", "deploy.traffic_engine", "--config", str(config.source)]
    if netns:
        engine_argv.append("--netns")
    services.append(
        Service(
            name="traffic-engine",
            kind="traffic-engine",
            argv=tuple(engine_argv),
            address=f"https://{config.host}:{config.pce_port}",
            health=HealthCheck("https", config.host, config.pce_port, "/api/transport", creds.ca),
            env=env,
        )
    )
    link = config.aggregator.superlink_port
    services.append(
        Service(
            name="superlink",
            kind="superlink",
            argv=(
                bin_path("flower-superlink"),
                "--ssl-certfile",
                str(creds.aggregator.cert_path),
                "--ssl-keyfile",
                str(creds.aggregator.key_path),
                "--ssl-ca-certfile",
                str(creds.ca),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--database",
                str(workdir.flwr_home("superlink") / "state.db"),
                "--host",
                config.host,
                "--port",
                str(link),
            ),
            address=f"https://{config.host}:{link}",
            health=HealthCheck("https", config.host, link, "/", creds.ca),
            env={**env, "FLWR_HOME": str(workdir.flwr_home("superlink"))},
        )
    )
    for site in config.sites:
        cert = creds.sites[site.id]
        services.append(
            Service(
                name=f"fhir-{site.id}",
                kind="fhir",
                argv=(
                    bin_path("paroma"),
                    "node",
                    "serve",
                    str(workdir.site(site.id)),
                    "--host",
                    config.host,
                    "--port",
                    str(site.fhir_port),
                    "--ssl-certfile",
                    str(cert.cert_path),
                    "--ssl-keyfile",
                    str(cert.key_path),
                ),
                address=f"https://{config.host}:{site.fhir_port}/fhir",
                health=HealthCheck("https", config.host, site.fhir_port, "/fhir/metadata", creds.ca),
                env=env,
            )
        )
    for site in config.sites:
        host, port = ingress_address(config, site, netns)
        key = creds.supernodes[site.id]
        node_config = f'site-dir="{workdir.site(site.id)}"'
        services.append(
            Service(
                name=f"supernode-{site.id}",
                kind="supernode",
                argv=(
                    bin_path("flower-supernode"),
                    "--root-certificates",
                    str(creds.ca),
                    "--superlink",
                    f"{host}:{port}",
                    "--auth-supernode-private-key",
                    str(key.private_key_path),
                    "--node-config",
                    node_config,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(site.supernode_port),
                ),
                address=f"{host}:{port} (netns {netns_name(config, site)})" if netns else f"{host}:{port}",
                health=HealthCheck("supernode", site=site.id),
                env={**env, "FLWR_HOME": str(workdir.flwr_home(f"supernode-{site.id}"))},
                netns=netns_name(config, site) if netns else None,
            )
        )
    return services
