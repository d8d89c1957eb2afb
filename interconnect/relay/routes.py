"""A relay's routing table entries and the first line that names a path between relays.

Pure data and parsing, no I/O. A path id is the engine's installed-path name; its ``version``
is the engine's route version, so a relay can tell a connection set up on a route that has
since moved (and refuse or close it) from one on the current route.

Between relays every connection starts with one line, then the site's bytes untouched::

    PAROMA-RELAY/1 <path-id> <version>\\r\\n

The site's node never sends it: it connects to its ingress listener (one port per path on the
path's first relay), which knows the path from the port. The last relay connects to the target
(the aggregator's SuperLink) and sends nothing of its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

HEADER_PREFIX = b"PAROMA-RELAY/1 "
MAX_HEADER_BYTES = 256
# Path ids are the engine's path names (1 to 80 printable characters); on the wire they must not
# contain spaces, so names are restricted to this alphabet.
PATH_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,80}$")
MAX_PORT = 65535


class RouteError(ValueError):
    """A route entry or relay header is malformed; the message names the field."""


@dataclass(frozen=True)
class LinkEmulation:
    """What a relay adds to the bytes it sends on one direction of a hop: propagation delay and a
    capacity (``None``: unconstrained). ``link`` names the emulated link(s), so that every path
    crossing the same link in the same direction shares its capacity."""

    delay_us: float = 0.0
    capacity_mbps: float | None = None
    link: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.delay_us, bool) or not isinstance(self.delay_us, int | float):
            raise RouteError(f"delay_us: expected a number of microseconds, got {self.delay_us!r}")
        if not math.isfinite(self.delay_us) or not 0 <= self.delay_us <= 10_000_000:
            raise RouteError(f"delay_us: {self.delay_us!r} is out of range (0 to 10,000,000 µs)")
        if self.capacity_mbps is not None:
            c = self.capacity_mbps
            if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c <= 0:
                raise RouteError(f"capacity_mbps: expected a positive number of Mbit/s or null, got {c!r}")

    @property
    def unconstrained(self) -> bool:
        return self.delay_us == 0 and self.capacity_mbps is None

    def as_dict(self) -> dict[str, Any]:
        return {"delay_us": self.delay_us, "capacity_mbps": self.capacity_mbps, "link": self.link}


@dataclass(frozen=True)
class RouteEntry:
    """One path through this relay: where its bytes go next and what the hop emulates.

    ``downstream`` shapes the bytes towards the target, ``upstream`` the answers back towards the
    site. ``ingress_port`` is set on the path's first relay only: the port the site's node dials
    (0: any free port, reported back by the relay).
    """

    path_id: str
    version: int
    next_host: str
    next_port: int
    next_is_relay: bool
    downstream: LinkEmulation = field(default_factory=LinkEmulation)
    upstream: LinkEmulation = field(default_factory=LinkEmulation)
    ingress_port: int | None = None

    def __post_init__(self) -> None:
        check_path_id(self.path_id)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise RouteError(f"version: expected a whole number >= 1, got {self.version!r}")
        if not isinstance(self.next_host, str) or not self.next_host or len(self.next_host) > 253:
            raise RouteError(f"next_host: expected a host name or address, got {self.next_host!r}")
        _check_port(self.next_port, "next_port", allow_zero=False)
        if self.ingress_port is not None:
            _check_port(self.ingress_port, "ingress_port", allow_zero=True)

    @property
    def next_hop(self) -> tuple[str, int]:
        return self.next_host, self.next_port

    def as_dict(self) -> dict[str, Any]:
        return {
            "path_id": self.path_id,
            "version": self.version,
            "next_host": self.next_host,
            "next_port": self.next_port,
            "next_is_relay": self.next_is_relay,
            "downstream": self.downstream.as_dict(),
            "upstream": self.upstream.as_dict(),
            "ingress_port": self.ingress_port,
        }


def _check_port(value: object, name: str, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_PORT:
        raise RouteError(f"{name}: expected a TCP port from {low} to {MAX_PORT}, got {value!r}")


def check_path_id(path_id: object) -> str:
    if not isinstance(path_id, str) or not PATH_ID.match(path_id):
        raise RouteError(f"path id {path_id!r}: expected 1 to 80 letters, digits or . _ : @ - (no spaces)")
    return path_id


def route_from_mapping(data: object) -> RouteEntry:
    """A route entry from its JSON form (the control API's body)."""
    if not isinstance(data, dict):
        raise RouteError(f"route: expected an object, got {type(data).__name__}")
    allowed = {
        "path_id",
        "version",
        "next_host",
        "next_port",
        "next_is_relay",
        "downstream",
        "upstream",
        "ingress_port",
    }
    unknown = set(data) - allowed
    if unknown:
        raise RouteError(f"route: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    for key in ("path_id", "version", "next_host", "next_port", "next_is_relay"):
        if key not in data:
            raise RouteError(f"route: {key} is required")
    if not isinstance(data["next_is_relay"], bool):
        raise RouteError(f"next_is_relay: expected true or false, got {data['next_is_relay']!r}")
    return RouteEntry(
        path_id=data["path_id"],
        version=data["version"],
        next_host=data["next_host"],
        next_port=data["next_port"],
        next_is_relay=data["next_is_relay"],
        downstream=_emulation(data.get("downstream"), "downstream"),
        upstream=_emulation(data.get("upstream"), "upstream"),
        ingress_port=data.get("ingress_port"),
    )


def _emulation(data: object, where: str) -> LinkEmulation:
    if data is None:
        return LinkEmulation()
    if not isinstance(data, dict):
        raise RouteError(f"{where}: expected an object with delay_us and capacity_mbps")
    unknown = set(data) - {"delay_us", "capacity_mbps", "link"}
    if unknown:
        raise RouteError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        return LinkEmulation(data.get("delay_us", 0.0), data.get("capacity_mbps"), str(data.get("link", "")))
    except RouteError as exc:
        raise RouteError(f"{where}.{exc}") from None


def format_header(path_id: str, version: int) -> bytes:
    return HEADER_PREFIX + f"{check_path_id(path_id)} {version}\r\n".encode()


def parse_header(line: bytes) -> tuple[str, int]:
    """The path id and version from a relay header line (without or with its CRLF)."""
    if not line.startswith(HEADER_PREFIX):
        raise RouteError("not a PAROMA-RELAY/1 header")
    parts = line[len(HEADER_PREFIX) :].strip().split(b" ")
    if len(parts) != 2 or not parts[1].isdigit():
        raise RouteError("relay header: expected '<path-id> <version>'")
    try:
        path_id = parts[0].decode("ascii")
    except UnicodeDecodeError:
        raise RouteError("relay header: path id is not ASCII") from None
    return check_path_id(path_id), int(parts[1])
