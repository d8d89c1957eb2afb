"""Splicing two TCP connections together, one direction at a time, with link emulation.

Built on asyncio's protocols rather than streams: bytes go from one transport to the other as
they arrive, with back-pressure both ways (a slow reader pauses the far writer, a full emulated
link pauses its sender), so a relay copies at memory speed when its links are unconstrained.
The relay never looks inside the bytes: the site's TLS runs end to end through it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from interconnect.relay.shaping import LinkClock

# Bytes a direction may hold in its emulated link (queued or in flight) before it stops reading.
# 4 MiB covers the bandwidth-delay product of 1 Gbit/s x 30 ms.
HIGH_WATER = 4 * 2**20
LOW_WATER = HIGH_WATER // 2


@dataclass
class Counters:
    bytes_down: int = 0
    bytes_up: int = 0


class Side(asyncio.Protocol):
    """One TCP connection of a splice. Before it is spliced it reports what it received to
    ``on_data`` (for the relay header); afterwards its bytes go to its direction."""

    def __init__(self, on_made: Callable[[Side], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.splice: Splice | None = None
        self.pending = bytearray()
        self.closed = False
        self._on_made = on_made
        self.on_data: Callable[[Side, bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.received(self, data)
        elif self.on_data is not None:
            self.on_data(self, data)
        else:
            self.pending += data

    def eof_received(self) -> bool:
        if self.splice is not None:
            self.splice.eof(self)
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.splice is not None:
            self.splice.lost(self)

    def pause_writing(self) -> None:
        if self.splice is not None:
            self.splice.sink_paused(self, True)

    def resume_writing(self) -> None:
        if self.splice is not None:
            self.splice.sink_paused(self, False)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class Direction:
    """Bytes from ``src`` to ``dst`` through an emulated link (``clock``; None: straight through)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: Side,
        dst: Side,
        clock: LinkClock | None,
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.loop = loop
        self.on_finished = on_finished
        self.src = src
        self.dst = dst
        self.clock = clock
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False
        self.finished = False
        self.sent = 0
        self._paused_link = False
        self._paused_sink = False

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        if self.clock is None and not self.queue:
            self._write(data)
            return
        now = self.loop.time()
        due = self.clock.due(now, len(data)) if self.clock is not None else now
        self.queue.append((due, data))
        self.queued += len(data)
        if self.queued >= HIGH_WATER and not self._paused_link:
            self._paused_link = True
            self._update_reading()
        self._arm()

    def finish_input(self) -> None:
        """The source sent EOF or went away: pass that on once the link has delivered everything."""
        self.eof = True
        if not self.queue:
            self._deliver_eof()

    def sink_paused(self, paused: bool) -> None:
        self._paused_sink = paused
        self._update_reading()

    def cancel(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()

    def _arm(self) -> None:
        if self.timer is None and self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued -= len(data)
            self._write(data)
        if self._paused_link and self.queued <= LOW_WATER:
            self._paused_link = False
            self._update_reading()
        if self.queue:
            self._arm()
        elif self.eof:
            self._deliver_eof()

    def _write(self, data: bytes) -> None:
        transport = self.dst.transport
        if transport is None or self.dst.closed or transport.is_closing():
            return
        transport.write(data)
        self.sent += len(data)

    def _deliver_eof(self) -> None:
        if self.finished:
            return
        self.finished = True
        transport = self.dst.transport
        if transport is not None and not self.dst.closed and not transport.is_closing():
            if self.src.closed or not transport.can_write_eof():
                transport.close()
            else:
                try:
                    transport.write_eof()
                except OSError:  # the peer went away meanwhile
                    transport.abort()
        self.on_finished()

    def _update_reading(self) -> None:
        transport = self.src.transport
        if transport is None or self.src.closed or transport.is_closing():
            return
        if self._paused_link or self._paused_sink:
            transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()


class Splice:
    """A site-side connection ``a`` joined to the next hop ``b`` for one path at one version."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        path_id: str,
        version: int,
        a: Side,
        b: Side,
        down: LinkClock | None,
        up: LinkClock | None,
        on_closed: Callable[[Splice], None],
    ) -> None:
        self.path_id = path_id
        self.version = version
        self.a = a
        self.b = b
        self.down = Direction(loop, a, b, down, self._check_done)
        self.up = Direction(loop, b, a, up, self._check_done)
        self._on_closed = on_closed
        self._done = False
        a.splice = self
        b.splice = self

    def start(self) -> None:
        """Pass on what either side sent before the splice existed, then read both."""
        for side in (self.a, self.b):
            side.on_data = None
            if side.pending:
                data = bytes(side.pending)
                side.pending.clear()
                self._direction_from(side).feed(data)
        for side in (self.a, self.b):
            if side.transport is not None and not side.closed and not side.transport.is_reading():
                side.transport.resume_reading()

    def _direction_from(self, side: Side) -> Direction:
        return self.down if side is self.a else self.up

    def received(self, side: Side, data: bytes) -> None:
        self._direction_from(side).feed(data)

    def eof(self, side: Side) -> None:
        self._direction_from(side).finish_input()
        self._check_done()

    def lost(self, side: Side) -> None:
        self._direction_from(side).finish_input()
        other = self.b if side is self.a else self.a
        # Nothing can reach a closed connection: drop what was on its way to it.
        self._direction_from(other).cancel()
        self._check_done()

    def sink_paused(self, sink: Side, paused: bool) -> None:
        # ``sink`` cannot take more: pause the direction that writes into it.
        (self.up if sink is self.a else self.down).sink_paused(paused)

    def abort(self) -> None:
        """Close both connections now (the route moved)."""
        self.down.cancel()
        self.up.cancel()
        self.a.abort()
        self.b.abort()
        self._finish()

    @property
    def counters(self) -> Counters:
        return Counters(self.down.sent, self.up.sent)

    def _check_done(self) -> None:
        if self.down.finished and self.up.finished:
            for side in (self.a, self.b):
                if side.transport is not None and not side.transport.is_closing():
                    side.transport.close()
            self._finish()
        elif self.a.closed and self.b.closed:
            self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_closed(self)
