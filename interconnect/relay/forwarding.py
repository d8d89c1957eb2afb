"""Splicing two TCP connections together, one direction at a time, with link emulation.

Built on asyncio's protocols rather than streams: bytes go from one transport to the other as
they arrive, with back-pressure both ways (a slow reader pauses the far writer, a full emulated
link pauses its sender), so a relay copies at memory speed when its links are unconstrained.
The relay never looks inside the bytes: the site's TLS runs end to end through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from interconnect.relay.shaping import LinkClock

# An unconstrained direction is moved by the kernel (splice(2) socket -> pipe -> socket): the
# bytes never enter Python. Off where os.splice is missing (not Linux), or with PAROMA_RELAY_COPY=1.
ZERO_COPY = hasattr(os, "splice") and os.environ.get("PAROMA_RELAY_COPY") != "1"
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Bytes a direction may hold in its emulated link (queued or in flight) before it stops reading.
# 4 MiB covers the bandwidth-delay product of 1 Gbit/s x 30 ms.
HIGH_WATER = 4 * 2**20
LOW_WATER = HIGH_WATER // 2
# SO_LINGER on with a zero timeout: close() sends a TCP RST instead of a FIN (RFC 9293 3.6).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


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
        # Reading is done by a KernelDirection on the socket itself, never by the transport.
        self.kernel_reading = False

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
            self.splice.lost(self, reset=exc is not None)

    def pause_writing(self) -> None:
        if self.splice is not None:
            self.splice.sink_paused(self, True)

    def resume_writing(self) -> None:
        if self.splice is not None:
            self.splice.sink_paused(self, False)

    def abort(self) -> None:
        """Reset the connection: a stream the relay cannot carry on (no next hop, the route
        moved, the far side failed) ends in a TCP RST, never in a FIN. A FIN in the middle of
        the site's TLS handshake reads as a TLS protocol violation, which a TLS client (Flower's
        SuperNode among them) takes for a security failure and stops retrying; a reset is a
        transport failure, which it retries, landing on the path the controller installs."""
        if self.transport is not None and not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
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
        if self.sent == 0:
            # The far side ended before it sent anything: the stream was never set up (a hop
            # behind it failed), so the connection is reset rather than ended.
            self.dst.abort()
        elif transport is not None and not self.dst.closed and not transport.is_closing():
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


class KernelDirection:
    """An unconstrained direction spliced by the kernel: ``src``'s socket -> a pipe -> ``dst``'s
    socket, non-blocking, driven by the event loop's readiness callbacks. It owns reading on
    ``src`` (its transport stays paused) and writing on ``dst`` (whose transport has nothing
    buffered when it starts)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, src: Side, dst: Side, on_finished: Callable[[], None]
    ) -> None:
        assert src.transport is not None and dst.transport is not None
        self.loop = loop
        self.src = src
        self.dst = dst
        self.on_finished = on_finished
        self.src_fd = src.transport.get_extra_info("socket").fileno()
        self.dst_fd = dst.transport.get_extra_info("socket").fileno()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_BYTES)
        self.in_pipe = 0
        self.sent = 0
        self.eof = False
        self.finished = False
        self._reading = False
        self._writing = False
        # asyncio refuses add_reader on a transport's socket; its selector loop's own (private)
        # registration calls are what the transports themselves use, and the transport stays
        # paused, so the two never watch the socket at once.
        self._add_reader = loop._add_reader  # type: ignore[attr-defined]
        self._remove_reader = loop._remove_reader  # type: ignore[attr-defined]
        self._add_writer = loop._add_writer  # type: ignore[attr-defined]
        self._remove_writer = loop._remove_writer  # type: ignore[attr-defined]
        src.kernel_reading = True

    def start(self) -> None:
        """Begin once whatever the transports still hold for ``dst`` has left."""
        if self.finished:
            return
        if self.dst.transport is not None and self.dst.transport.get_write_buffer_size():
            self.loop.call_later(0.001, self.start)
            return
        self._watch_src(True)

    def feed(self, data: bytes) -> None:
        # Bytes read before the splice existed (after the relay header): through the transport.
        if self.dst.transport is not None and not self.dst.closed:
            self.dst.transport.write(data)
            self.sent += len(data)

    def finish_input(self) -> None:
        if not self.finished:
            self.eof = True
            self._watch_src(False)
            self._drain()

    def sink_paused(self, paused: bool) -> None:
        pass  # writes to dst bypass its transport

    def cancel(self) -> None:
        if self.finished and self.pipe_r < 0:
            return
        self.finished = True
        self._watch_src(False)
        self._watch_dst(False)
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pipe_r = self.pipe_w = -1

    def _alive(self, side: Side) -> bool:
        return side.transport is not None and not side.closed and not side.transport.is_closing()

    def _watch_src(self, on: bool) -> None:
        if on and not self._reading and self._alive(self.src):
            self._add_reader(self.src_fd, self._readable)
            self._reading = True
        elif not on and self._reading:
            self._reading = False
            if self._alive(self.src):
                self._remove_reader(self.src_fd)

    def _watch_dst(self, on: bool) -> None:
        if on and not self._writing and self._alive(self.dst):
            self._add_writer(self.dst_fd, self._writable)
            self._writing = True
        elif not on and self._writing:
            self._writing = False
            if self._alive(self.dst):
                self._remove_writer(self.dst_fd)

    def _readable(self) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        # Move what is there (up to a few pipe-fulls) per wake-up: fewer trips through the loop.
        for _ in range(8):
            try:
                n = os.splice(self.src_fd, self.pipe_w, PIPE_BYTES - self.in_pipe, flags=flags)
            except BlockingIOError:
                return
            except OSError:
                self._fail()
                return
            if n == 0:
                self.finish_input()
                return
            self.in_pipe += n
            self._drain()
            if not self._reading or self.finished:
                return

    def _writable(self) -> None:
        self._watch_dst(False)
        self._drain()

    def _drain(self) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while self.in_pipe and not self.finished:
            try:
                n = os.splice(self.pipe_r, self.dst_fd, self.in_pipe, flags=flags)
            except BlockingIOError:
                # dst is full: stop reading until it drains (back-pressure to the sender).
                self._watch_src(False)
                self._watch_dst(True)
                return
            except OSError:
                self._fail()
                return
            self.in_pipe -= n
            self.sent += n
        if self.finished:
            return
        if self.eof:
            self._deliver_eof()
        else:
            self._watch_src(True)

    def _deliver_eof(self) -> None:
        transport = self.dst.transport
        if self.sent == 0:
            self.dst.abort()  # never set up: reset (see Direction._deliver_eof)
        elif transport is not None and self._alive(self.dst):
            if self.src.closed or not transport.can_write_eof():
                transport.close()
            else:
                try:
                    transport.write_eof()
                except OSError:
                    transport.abort()
        self.cancel()
        self.on_finished()

    def _fail(self) -> None:
        self.cancel()
        self.src.abort()
        self.dst.abort()
        self.on_finished()


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
        self.down = self._direction(loop, a, b, down)
        self.up = self._direction(loop, b, a, up)
        self._on_closed = on_closed
        self._done = False
        a.splice = self
        b.splice = self

    def _direction(
        self, loop: asyncio.AbstractEventLoop, src: Side, dst: Side, clock: LinkClock | None
    ) -> Direction | KernelDirection:
        if (
            clock is None
            and ZERO_COPY
            and hasattr(loop, "_add_reader")
            and src.transport is not None
            and dst.transport is not None
        ):
            return KernelDirection(loop, src, dst, self._check_done)
        return Direction(loop, src, dst, clock, self._check_done)

    def start(self) -> None:
        """Pass on what either side sent before the splice existed, then read both."""
        for side in (self.a, self.b):
            side.on_data = None
            if side.pending:
                data = bytes(side.pending)
                side.pending.clear()
                self._direction_from(side).feed(data)
        for side in (self.a, self.b):
            if side.transport is None or side.closed:
                continue
            if side.kernel_reading:
                if side.transport.is_reading():
                    side.transport.pause_reading()
            elif not side.transport.is_reading():
                side.transport.resume_reading()
        for direction in (self.down, self.up):
            if isinstance(direction, KernelDirection):
                direction.start()

    def _direction_from(self, side: Side) -> Direction | KernelDirection:
        return self.down if side is self.a else self.up

    def received(self, side: Side, data: bytes) -> None:
        self._direction_from(side).feed(data)

    def eof(self, side: Side) -> None:
        self._direction_from(side).finish_input()
        self._check_done()

    def lost(self, side: Side, *, reset: bool = False) -> None:
        other = self.b if side is self.a else self.a
        if reset:
            # A reset (or any error) on one side is passed on as a reset: the stream broke.
            self.abort()
            return
        self._direction_from(side).finish_input()
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
