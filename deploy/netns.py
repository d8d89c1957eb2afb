"""A network namespace per site (``paroma up --netns``, as root): the site's SuperNode has its
own interfaces and address and reaches the federation only through a veth pair whose host end
faces the relays (``ip netns`` and ``ip link``, iproute2).

    host: <veth host end> 10.77.0.1/30  <-->  namespace paroma-<fed>-<site>: 10.77.0.2/30, lo
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from .federation_config import FederationConfig, SiteConfig
from .services import netns_name, veth_names


class NetnsError(RuntimeError):
    """A namespace could not be made; the message names the site and the failing command."""


@dataclass(frozen=True)
class SiteNamespace:
    site: str
    name: str
    host_if: str
    ns_if: str
    host_address: str
    address: str


def namespaces(config: FederationConfig) -> list[SiteNamespace]:
    out = []
    for site in config.sites:
        host_if, ns_if = veth_names(config, site)
        out.append(
            SiteNamespace(
                site.id, netns_name(config, site), host_if, ns_if, site.netns_host_address, site.netns_address
            )
        )
    return out


def can_use_netns() -> bool:
    return os.geteuid() == 0 and _run(["ip", "netns", "list"], check=False).returncode == 0


def create(config: FederationConfig, site: SiteConfig) -> SiteNamespace:
    """Create (or re-create) the site's namespace and veth pair, both ends up."""
    ns = next(n for n in namespaces(config) if n.site == site.id)
    remove(ns)
    steps = [
        ["ip", "netns", "add", ns.name],
        ["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if],
        ["ip", "link", "set", ns.ns_if, "netns", ns.name],
        ["ip", "addr", "add", f"{ns.host_address}/30", "dev", ns.host_if],
        ["ip", "link", "set", ns.host_if, "up"],
        ["ip", "-n", ns.name, "addr", "add", f"{ns.address}/30", "dev", ns.ns_if],
        ["ip", "-n", ns.name, "link", "set", ns.ns_if, "up"],
        # The SuperNode's own runtime API (its ClientApps connect to it) is on the namespace's
        # loopback.
        ["ip", "-n", ns.name, "link", "set", "lo", "up"],
    ]
    for step in steps:
        result = _run(step, check=False)
        if result.returncode != 0:
            remove(ns)
            raise NetnsError(f"site {site.id}: `{' '.join(step)}` failed: {result.stderr.strip()}")
    return ns


def remove(ns: SiteNamespace) -> None:
    """Delete the namespace and the veth pair (deleting one end deletes both); idempotent."""
    _run(["ip", "link", "del", ns.host_if], check=False)
    _run(["ip", "netns", "del", ns.name], check=False)


def exists(ns: SiteNamespace) -> bool:
    result = _run(["ip", "netns", "list"], check=False)
    return any(line.split()[0] == ns.name for line in result.stdout.splitlines() if line.strip())


def exec_prefix(name: str) -> list[str]:
    return ["ip", "netns", "exec", name]


def _run(argv: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)
