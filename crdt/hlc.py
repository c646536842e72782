"""Hybrid logical clocks (Kulkarni et al., 2014).

A timestamp is ``(wall, counter, node)``: ``wall`` is milliseconds of
physical time as the clock best knows it, ``counter`` orders events within
one millisecond, ``node`` breaks the remaining ties, so every two
timestamps compare and no two events share one. The clock never runs
backwards, whatever the physical clock does (a step back leaves ``wall``
where it was and counts on in ``counter``), and it stays close to physical
time: a timestamp is at most the largest physical time any node has seen.

A peer's timestamp further in the future than ``max_drift_ms`` is refused
(counted in ``rejected``), so one node with a clock years ahead cannot drag
every clock, and every expiry, with it. Physical time comes in as an
argument (milliseconds since the epoch): the clock reads nothing itself.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

# The counter is bounded so a timestamp packs into fixed fields; past it,
# the clock borrows a millisecond from the future rather than wrap.
MAX_COUNTER = 0xFFFF
DEFAULT_MAX_DRIFT_MS = 60_000


class Timestamp(NamedTuple):
    """Ordered field by field. A named tuple rather than an attrs class:
    a replica creates and compares one per entry it receives, and tuples
    do both in C."""

    wall: int
    counter: int
    node: str


class ClockDrift(ValueError):
    """A remote timestamp too far ahead of our physical clock."""


class HLC:
    def __init__(self, node: str, *, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> None:
        self.node = node
        self.max_drift_ms = max_drift_ms
        self.last = Timestamp(0, 0, node)
        self.rejected: Counter[str] = Counter()

    def now(self, physical_ms: int) -> Timestamp:
        """A new timestamp for a local event, above every one before it."""
        last = self.last
        if physical_ms > last.wall:
            stamp = Timestamp(physical_ms, 0, self.node)
        elif last.counter < MAX_COUNTER:
            stamp = Timestamp(last.wall, last.counter + 1, self.node)
        else:
            stamp = Timestamp(last.wall + 1, 0, self.node)
        self.last = stamp
        return stamp

    def peek(self, physical_ms: int) -> int:
        """The clock's current wall time, without making an event: what
        expiry is measured against."""
        return max(self.last.wall, physical_ms)

    def observe(self, remote: Timestamp, physical_ms: int) -> None:
        """Take a timestamp received from a peer into account, so that our
        next event orders after it. Raises ``ClockDrift`` (and counts it)
        when ``remote`` is more than ``max_drift_ms`` ahead of us."""
        if remote.wall > physical_ms + self.max_drift_ms:
            self.rejected["future"] += 1
            raise ClockDrift(f"timestamp {remote.wall} is {remote.wall - physical_ms} ms ahead of this clock")
        last = self.last
        wall = max(last.wall, remote.wall, physical_ms)
        if wall == last.wall and wall == remote.wall:
            counter = max(last.counter, remote.counter) + 1
        elif wall == last.wall:
            counter = last.counter + 1
        elif wall == remote.wall:
            counter = remote.counter + 1
        else:
            counter = 0
        if counter > MAX_COUNTER:
            wall, counter = wall + 1, 0
        self.last = Timestamp(wall, counter, self.node)
