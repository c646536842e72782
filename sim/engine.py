"""The discrete-event loop and the trace hash.

Events are callbacks kept in a heap ordered by (time, sequence number): ties
run in the order they were scheduled, so a run is a pure function of the
seed. Everything observable that a run does is fed to the trace hash; two
runs with the same seed and scenario produce the same hash byte for byte.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from typing import Any

from sim.streams import SeedStreams


class Simulator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.streams = SeedStreams(seed)
        self.now = 0.0
        self.events_run = 0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._trace = hashlib.blake2b(digest_size=16)

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` at simulated time ``when`` (not before now)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, callback, args))

    def record(self, data: bytes) -> None:
        """Feed ``data`` to the trace hash."""
        self._trace.update(data)

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    def run_until(self, end: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= end:
            when, _, callback, args = pop(heap)
            self.now = when
            callback(*args)
            self.events_run += 1
        self.now = end
