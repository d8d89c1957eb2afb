"""Link emulation: when each chunk of a byte stream is due at the far end of a hop.

A hop is a FIFO link of capacity C bit/s with propagation delay D (the topology's
``capacity_mbps`` and ``delay_us``). A chunk of n bytes that reaches the link at t starts being
sent when the link is free, occupies it for 8n/C, and arrives D after its last bit left:

    start = max(t, busy_until);  busy_until = start + 8n/C;  due = busy_until + D

which is a token bucket refilled at C with a depth of one chunk, followed by a delay line. The
delay is applied per chunk, not once per connection, and chunks overlap in flight (pipelining),
so a long transfer takes size/C + D, not (chunks x D). Pure arithmetic on a clock the caller
passes in.
"""

from __future__ import annotations

from dataclasses import dataclass

from interconnect.relay.routes import LinkEmulation


@dataclass
class LinkClock:
    """The emulated link's state: until when it is busy sending."""

    delay_s: float
    bytes_per_s: float | None
    busy_until: float = 0.0

    @classmethod
    def of(cls, emulation: LinkEmulation) -> LinkClock:
        rate = None if emulation.capacity_mbps is None else emulation.capacity_mbps * 1e6 / 8
        return cls(emulation.delay_us / 1e6, rate)

    def due(self, now: float, n_bytes: int) -> float:
        """Arrival time at the far end of a chunk of ``n_bytes`` handed to the link at ``now``."""
        if self.bytes_per_s is None:
            return now + self.delay_s
        start = max(now, self.busy_until)
        self.busy_until = start + n_bytes / self.bytes_per_s
        return self.busy_until + self.delay_s

    def backlog_bytes(self, now: float) -> float:
        """Bytes still waiting to be sent on the link (for flow control)."""
        if self.bytes_per_s is None:
            return 0.0
        return max(0.0, self.busy_until - now) * self.bytes_per_s
