"""A relay: forwards the federation's byte streams hop by hop along the installed paths.

One transit listener takes connections from the previous relay (each starts with the
``PAROMA-RELAY/1`` line naming its path and route version); one ingress listener per path whose
first relay this is takes the site's own connection. The routing table is pushed by the
controller over the control API (``control.py``). On a route change the relay refuses new
connections on the old version and closes the ones still open on it, so traffic leaves a hop as
soon as the controller says so; the site's node reconnects and lands on the new route.

The relay holds no key: TLS runs from the site to the aggregator through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from interconnect.relay.forwarding import Side, Splice
from interconnect.relay.routes import (
    MAX_HEADER_BYTES,
    LinkEmulation,
    RouteEntry,
    RouteError,
    format_header,
    parse_header,
)
from interconnect.relay.shaping import LinkClock

log = logging.getLogger("paroma.relay")
CONNECT_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 5.0


@dataclass
class PathStats:
    connections_total: int = 0
    connections_refused: int = 0
    connect_failures: int = 0
    connections_closed_by_reroute: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    last_change: float = field(default_factory=time.time)


class Relay:
    """The relay's state and listeners; runs on one asyncio event loop."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.routes: dict[str, RouteEntry] = {}
        self.stats: dict[str, PathStats] = {}
        self._splices: dict[str, set[Splice]] = {}
        self._ingress: dict[str, asyncio.Server] = {}
        self._links: dict[tuple[str, str], LinkClock] = {}
        self._transit: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transit = await self._loop.create_server(
            lambda: Side(self._transit_accepted), self.host, self.port, reuse_address=True
        )
        self.port = self._transit.sockets[0].getsockname()[1]
        log.info("relay %s: transit listener on %s:%d", self.name, self.host, self.port)

    async def stop(self) -> None:
        servers = [s for s in (self._transit, *self._ingress.values()) if s is not None]
        for server in servers:
            server.close()
        for splices in self._splices.values():
            for splice in list(splices):
                splice.abort()
        for task in list(self._tasks):
            task.cancel()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._ingress.clear()

    # ------------------------------------------------------------------ routing table

    async def set_route(self, entry: RouteEntry) -> dict[str, Any]:
        """Install or replace a path's entry; connections on an older version are closed."""
        old = self.routes.get(entry.path_id)
        if old is not None and entry.version < old.version:
            raise RouteError(
                f"path {entry.path_id!r}: version {entry.version} is older than the installed {old.version}"
            )
        listen_port = await self._ensure_ingress(entry, old)
        if listen_port is not None:
            entry = RouteEntry(**{**entry.__dict__, "ingress_port": listen_port})
        self.routes[entry.path_id] = entry
        stats = self.stats.setdefault(entry.path_id, PathStats())
        stats.last_change = time.time()
        closed = self._close_older(entry.path_id, entry.version)
        stats.connections_closed_by_reroute += closed
        log.info(
            "relay %s: path %s v%d -> %s:%d%s (closed %d)",
            self.name,
            entry.path_id,
            entry.version,
            entry.next_host,
            entry.next_port,
            f", ingress port {listen_port}" if listen_port is not None else "",
            closed,
        )
        return {
            "path_id": entry.path_id,
            "version": entry.version,
            "ingress_port": listen_port,
            "closed": closed,
        }

    async def remove_route(self, path_id: str) -> dict[str, Any]:
        if path_id not in self.routes:
            raise KeyError(path_id)
        del self.routes[path_id]
        server = self._ingress.pop(path_id, None)
        if server is not None:
            server.close()
        closed = self._close_older(path_id, None)
        stats = self.stats.setdefault(path_id, PathStats())
        stats.connections_closed_by_reroute += closed
        stats.last_change = time.time()
        log.info("relay %s: path %s removed (closed %d)", self.name, path_id, closed)
        return {"path_id": path_id, "closed": closed}

    def status(self) -> dict[str, Any]:
        paths = []
        for path_id in sorted(set(self.routes) | set(self.stats)):
            entry = self.routes.get(path_id)
            stats = self.stats.get(path_id, PathStats())
            open_splices = self._splices.get(path_id, set())
            down = stats.bytes_down + sum(s.counters.bytes_down for s in open_splices)
            up = stats.bytes_up + sum(s.counters.bytes_up for s in open_splices)
            paths.append(
                {
                    "path_id": path_id,
                    "route": entry.as_dict() if entry else None,
                    "connections_open": len(open_splices),
                    "connections_total": stats.connections_total,
                    "connections_refused": stats.connections_refused,
                    "connect_failures": stats.connect_failures,
                    "connections_closed_by_reroute": stats.connections_closed_by_reroute,
                    "bytes_down": down,
                    "bytes_up": up,
                    "last_change": stats.last_change,
                }
            )
        return {"relay": self.name, "host": self.host, "port": self.port, "paths": paths}

    def open_connections(self, path_id: str | None = None) -> int:
        if path_id is not None:
            return len(self._splices.get(path_id, ()))
        return sum(len(s) for s in self._splices.values())

    # ------------------------------------------------------------------ internals

    async def _ensure_ingress(self, entry: RouteEntry, old: RouteEntry | None) -> int | None:
        server = self._ingress.get(entry.path_id)
        if entry.ingress_port is None:
            if server is not None:
                server.close()
                del self._ingress[entry.path_id]
            return None
        if server is not None:
            bound = int(server.sockets[0].getsockname()[1])
            if entry.ingress_port in (0, bound):
                return bound
            server.close()
            del self._ingress[entry.path_id]
        assert self._loop is not None
        path_id = entry.path_id
        try:
            server = await self._loop.create_server(
                lambda: Side(lambda side: self._ingress_accepted(side, path_id)),
                self.host,
                entry.ingress_port,
                reuse_address=True,
            )
        except OSError as exc:
            raise RouteError(
                f"ingress_port: cannot listen on {self.host}:{entry.ingress_port}: {exc.strerror}"
            ) from None
        self._ingress[path_id] = server
        return int(server.sockets[0].getsockname()[1])

    def _close_older(self, path_id: str, version: int | None) -> int:
        closed = 0
        for splice in list(self._splices.get(path_id, ())):
            if version is None or splice.version < version:
                splice.abort()
                closed += 1
        return closed

    def _ingress_accepted(self, side: Side, path_id: str) -> None:
        assert side.transport is not None
        side.transport.pause_reading()
        entry = self.routes.get(path_id)
        stats = self.stats.setdefault(path_id, PathStats())
        if entry is None:
            stats.connections_refused += 1
            side.abort()
            return
        self._spawn(self._connect(side, entry))

    def _transit_accepted(self, side: Side) -> None:
        assert side.transport is not None and self._loop is not None
        timer = self._loop.call_later(HEADER_TIMEOUT_S, side.abort)

        def on_data(s: Side, data: bytes) -> None:
            s.pending += data
            end = s.pending.find(b"\n")
            if end < 0:
                if len(s.pending) > MAX_HEADER_BYTES:
                    timer.cancel()
                    s.abort()
                return
            timer.cancel()
            assert s.transport is not None
            s.transport.pause_reading()
            line = bytes(s.pending[: end + 1])
            del s.pending[: end + 1]
            s.on_data = None
            try:
                path_id, version = parse_header(line)
            except RouteError as exc:
                log.warning("relay %s: refused a connection: %s", self.name, exc)
                s.abort()
                return
            entry = self.routes.get(path_id)
            stats = self.stats.setdefault(path_id, PathStats())
            if entry is None or entry.version != version:
                # A connection set up on a route that has moved (or never came here): refuse it.
                stats.connections_refused += 1
                s.abort()
                return
            self._spawn(self._connect(s, entry))

        side.on_data = on_data
        if side.pending:
            data = bytes(side.pending)
            side.pending.clear()
            on_data(side, data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _clock(self, emulation: LinkEmulation, direction: str) -> LinkClock | None:
        if emulation.unconstrained:
            return None
        if not emulation.link:
            return LinkClock.of(emulation)
        key = (emulation.link, direction)
        clock = self._links.get(key)
        fresh = LinkClock.of(emulation)
        if clock is None or (clock.delay_s, clock.bytes_per_s) != (fresh.delay_s, fresh.bytes_per_s):
            self._links[key] = clock = fresh
        return clock

    async def _connect(self, side: Side, entry: RouteEntry) -> None:
        assert self._loop is not None
        stats = self.stats.setdefault(entry.path_id, PathStats())
        try:
            transport, far = await asyncio.wait_for(
                self._loop.create_connection(Side, entry.next_host, entry.next_port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            stats.connect_failures += 1
            log.warning(
                "relay %s: path %s: cannot reach %s:%d: %s",
                self.name,
                entry.path_id,
                entry.next_host,
                entry.next_port,
                exc,
            )
            side.abort()
            return
        assert isinstance(far, Side)
        current = self.routes.get(entry.path_id)
        if side.closed or current is None or current.version != entry.version:
            far.abort()
            side.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if entry.next_is_relay:
            transport.write(format_header(entry.path_id, entry.version))
        stats.connections_total += 1
        splice = Splice(
            self._loop,
            entry.path_id,
            entry.version,
            side,
            far,
            self._clock(entry.downstream, "down"),
            self._clock(entry.upstream, "up"),
            self._splice_closed,
        )
        self._splices.setdefault(entry.path_id, set()).add(splice)
        splice.start()

    def _splice_closed(self, splice: Splice) -> None:
        splices = self._splices.get(splice.path_id)
        if splices is not None and splice in splices:
            splices.discard(splice)
            stats = self.stats.setdefault(splice.path_id, PathStats())
            counters = splice.counters
            stats.bytes_down += counters.bytes_down
            stats.bytes_up += counters.bytes_up
