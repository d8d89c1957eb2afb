"""``paroma deploy compose``: the docker-compose file of a federation config.

The compose file runs exactly the services ``paroma up`` starts (deploy.services.plan: the
relays, the Secure Traffic Engine, the SuperLink, each hospital's FHIR API and SuperNode),
each in its own container, with the same command lines, ports and health checks, plus what a
container deployment needs around them:

* ``prepare``: a one-shot container that makes the working folder as ``paroma up`` does
  (PKI, SuperNode keys, site folders, relay configs; deploy.launcher.prepare) and points
  each site's protection layer at its own OPA server;
* ``opa-<site>``: the official OPA server image, one per hospital (a hospital's consent
  decisions are its own: no OPA is shared between sites); the site loads its Rego policies
  into it with PUT /v1/policies (protection_layer.engine.OpaServerEngine);
* ``register``: a one-shot container that registers the SuperNodes' public keys with the
  SuperLink (SuperNode authentication), as ``paroma up`` does before starting them.

The containers share the host's network (``network_mode: host``), as the processes of
``paroma up`` (without ``--netns``) share one machine: every address and TLS certificate
of the plan holds unchanged. The working folder is one named volume mounted at
``/federation/work``; the federation config is written beside the compose file with that
workdir (``<name>.federation.toml``) and mounted read-only at ``/federation/federation.toml``.
Paths of the plan map to those; executables are called by name (they are on the images'
PATH). Nothing here builds or starts a container.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from deploy.federation_config import FederationConfig
from deploy.services import HealthCheck, Service

CONTAINER_ROOT = "/federation"
CONTAINER_WORKDIR = f"{CONTAINER_ROOT}/work"
CONTAINER_CONFIG = f"{CONTAINER_ROOT}/federation.toml"
WORK_VOLUME = "federation-work"
OPA_IMAGE = "openpolicyagent/opa:1.4.2"
OPA_BASE_PORT = 8181
IMAGE_TAG = "0.1.0"
IMAGES = {
    "relay": ("paroma-med/relay", "deploy/docker/relay.Dockerfile"),
    "aggregator": ("paroma-med/aggregator", "deploy/docker/aggregator.Dockerfile"),
    "node": ("paroma-med/node", "deploy/docker/node.Dockerfile"),
}
# Which image runs each kind of service of the plan.
IMAGE_OF_KIND = {
    "relay": "relay",
    "traffic-engine": "aggregator",
    "superlink": "aggregator",
    "fhir": "node",
    "supernode": "node",
}
# Services started only when those of the earlier groups are healthy (deploy.launcher's order).
START_ORDER = ("relay", "traffic-engine", "superlink", "fhir", "supernode")
# The plan's environment that matters inside a container (the rest is the host's).
KEPT_ENV = ("OMP_NUM_THREADS", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "FLWR_HOME")


class ComposeError(ValueError):
    """A federation config that cannot become a compose file; the message names the field."""


@dataclass(frozen=True)
class PathMap:
    """Host paths of a plan to container paths."""

    workdir: Path
    config: Path

    def arg(self, value: str) -> str:
        out = value.replace(str(self.workdir), CONTAINER_WORKDIR)
        return out.replace(str(self.config), CONTAINER_CONFIG)


def opa_port(config: FederationConfig, site_id: str) -> int:
    return OPA_BASE_PORT + [s.id for s in config.sites].index(site_id)


def _check(config: FederationConfig) -> None:
    problems: list[str] = []
    for i, site in enumerate(config.sites):
        if site.data.kind not in ("uci", "synthetic"):
            problems.append(
                f"site[{i}].data: {site.data.describe()} is a file on this machine; a compose "
                "deployment builds its sites inside a container from uci:<hospital> or synthetic:<patients>"
            )
    if Path(config.topology).is_absolute():
        problems.append(f"federation.topology: {config.topology} is a file; use a built-in topology name")
    used = {config.aggregator.superlink_port, config.pce_port}
    used |= {s.fhir_port for s in config.sites} | {s.supernode_port for s in config.sites}
    used |= {config.relay_port(r) for r in config.relay_nodes}
    used |= {config.relay_control_port(r) for r in config.relay_nodes}
    for site in config.sites:
        if opa_port(config, site.id) in used:
            problems.append(
                f"site {site.id}: its OPA server's port {opa_port(config, site.id)} is taken by another service"
            )
    if problems:
        raise ComposeError("; ".join(problems))


def container_config_text(config: FederationConfig) -> str:
    """The federation config as the containers read it: the same file with the workdir at
    the volume's mount point."""
    text = config.source.read_text()
    pattern = re.compile(r'^(\s*workdir\s*=\s*)"[^"]*".*$', re.M)
    if pattern.search(text):
        text = pattern.sub(lambda m: f'{m.group(1)}"{CONTAINER_WORKDIR}"', text, count=1)
    else:
        text = text.replace("[federation]\n", f'[federation]\nworkdir = "{CONTAINER_WORKDIR}"\n', 1)
    header = (
        f"# Written by `paroma deploy compose` from {config.source.name}: the same federation with its\n"
        f"# working folder at {CONTAINER_WORKDIR} (the {WORK_VOLUME} volume of the compose file).\n"
    )
    return header + text


def planned_services(config: FederationConfig) -> tuple[list[Service], PathMap]:
    """What ``paroma up`` would start for ``config`` (its host networking, no --netns), with
    the credentials made in a scratch folder (only their paths are used)."""
    from deploy.services import plan
    from deploy.workdir import Workdir, ensure_credentials

    scratch = Path(tempfile.mkdtemp(prefix="paroma-compose-")).resolve()
    try:
        probe = replace(config, workdir=scratch / "work")
        workdir = Workdir(probe.workdir)
        creds = ensure_credentials(probe, workdir)
        services = plan(probe, workdir, creds, netns=False)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return services, PathMap(scratch / "work", config.source)


def command_of(service: Service, paths: PathMap) -> list[str]:
    """The container's command for a planned service: the same arguments, paths mapped,
    executables by name."""
    import sys

    first = service.argv[0]
    executable = "python" if first == sys.executable else Path(first).name
    return [executable, *(paths.arg(a) for a in service.argv[1:])]


def ports_of(service: Service, config: FederationConfig) -> list[int]:
    """The TCP ports the service listens on (host network: they are the host's)."""
    if service.kind == "relay":
        node = service.name.removeprefix("relay-")
        return [config.relay_port(node), config.relay_control_port(node)]
    if service.kind == "traffic-engine":
        return [config.pce_port]
    if service.kind == "superlink":
        return [config.aggregator.superlink_port]
    site = config.site(service.name.split("-", 1)[1])
    return [site.fhir_port] if service.kind == "fhir" else [site.supernode_port]


def healthcheck_test(health: HealthCheck, paths: PathMap, config: FederationConfig) -> list[str]:
    probe = ["CMD", "python", "-m", "deploy.healthcheck"]
    if health.kind == "supernode":
        # The launcher asks the SuperLink whether the node is online; from inside the
        # container the SuperNode's own ClientAppIo listener tells that it runs.
        return [*probe, "tcp", "127.0.0.1", str(config.site(health.site).supernode_port)]
    if health.kind == "tcp":
        return [*probe, "tcp", health.host, str(health.port)]
    if health.kind == "http":
        return [*probe, "http", health.host, str(health.port), health.path]
    return [*probe, "https", health.host, str(health.port), health.path, paths.arg(str(health.ca))]


def _image(kind: str) -> dict[str, Any]:
    name, dockerfile = IMAGES[kind]
    return {"image": f"{name}:{IMAGE_TAG}", "build": {"context": "..", "dockerfile": dockerfile}}


def _health(test: list[str]) -> dict[str, Any]:
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 12, "start_period": "20s"}


def _volumes() -> list[str]:
    return [f"{WORK_VOLUME}:{CONTAINER_WORKDIR}", f"./{{config}}:{CONTAINER_CONFIG}:ro"]


def compose_document(config: FederationConfig, config_file: str) -> dict[str, Any]:
    """The compose document; ``config_file`` is the container config's name beside it."""
    _check(config)
    services, paths = planned_services(config)
    volumes = [v.replace("{config}", config_file) for v in _volumes()]
    out: dict[str, Any] = {}
    out["prepare"] = {
        **_image("node"),
        "command": ["paroma", "deploy", "prepare", "--config", CONTAINER_CONFIG, "--opa"],
        "network_mode": "host",
        "volumes": volumes,
        "restart": "no",
    }
    for site in config.sites:
        port = opa_port(config, site.id)
        out[f"opa-{site.id}"] = {
            "image": OPA_IMAGE,
            # Loopback only: the site's policies and the consents it asks about stay on its host.
            "command": ["run", "--server", f"--addr=127.0.0.1:{port}", "--log-level=error"],
            "network_mode": "host",
            "expose": [str(port)],
            "restart": "unless-stopped",
        }
    # Each group starts when the previous one is healthy, as deploy.launcher starts them;
    # the SuperNodes also wait for their keys to be registered.
    previous: dict[str, str] = {"prepare": "service_completed_successfully"}
    for kind in START_ORDER:
        group = [s for s in services if s.kind == kind]
        if kind == "supernode":
            out["register"] = {
                **_image("aggregator"),
                "command": ["paroma", "deploy", "register", "--config", CONTAINER_CONFIG],
                "network_mode": "host",
                "volumes": volumes,
                "restart": "no",
                "depends_on": {"superlink": {"condition": "service_healthy"}},
            }
            previous = {**previous, "register": "service_completed_successfully"}
        for service in group:
            depends: dict[str, Any] = {name: {"condition": c} for name, c in previous.items()}
            if kind in ("fhir", "supernode"):
                depends[f"opa-{service.name.split('-', 1)[1]}"] = {"condition": "service_started"}
            env = {k: paths.arg(v) for k, v in service.env.items() if k in KEPT_ENV}
            out[service.name] = {
                **_image(IMAGE_OF_KIND[kind]),
                "command": command_of(service, paths),
                "network_mode": "host",
                "expose": [str(p) for p in ports_of(service, config)],
                "volumes": volumes,
                "environment": dict(sorted(env.items())),
                "healthcheck": _health(healthcheck_test(service.health, paths, config)),
                "depends_on": depends,
                "restart": "unless-stopped",
                "labels": {"org.paroma-med.service-kind": kind},
            }
        if group:
            previous = {s.name: "service_healthy" for s in group}
    return {
        "services": out,
        "volumes": {WORK_VOLUME: {}},
    }


def render(document: Mapping[str, Any], config: FederationConfig, command: str) -> str:
    header = (
        f"# PAROMA-MED federation {config.name!r} as containers on one host: generated by\n"
        f"#   {command}\n"
        "# from the same federation config as `paroma up`; do not edit, regenerate.\n"
        "# Build and start: docker compose up --build   (README: Deployment, scenarios and scale)\n"
    )
    return header + yaml.dump(
        dict(document), Dumper=_PlainDumper, sort_keys=False, width=110, default_flow_style=False
    )


class _PlainDumper(yaml.SafeDumper):
    """Every service spelled out: no YAML anchors and aliases for repeated lists."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_compose(config: FederationConfig, out: Path, command: str) -> tuple[Path, Path]:
    """Write the compose file and the container config beside it (atomically)."""
    config_name = f"{config.name}.federation.toml"
    document = compose_document(config, config_name)
    text = render(document, config, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    side = out.parent / config_name
    for path, content in ((side, container_config_text(config)), (out, text)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
    return out, side
