"""Named one-shot timers for a sans-IO core.

A core keeps every pending deadline here under a key (a small tuple such as
``("suspicion", name)``). Scheduling a key again moves its deadline, and
cancelling forgets it; stale heap entries are skipped lazily. ``due(now)``
returns the keys whose deadlines have passed, earliest first, with ties in
scheduling order, so a core's behaviour does not depend on hash order.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class Timers(Generic[Key]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Key]] = []
        self._live: dict[Key, int] = {}  # key -> sequence number of its live entry
        self._when: dict[Key, float] = {}  # key -> its deadline
        self._seq = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._live

    def __len__(self) -> int:
        return len(self._live)

    def schedule(self, key: Key, when: float) -> None:
        self._seq += 1
        self._live[key] = self._seq
        self._when[key] = when
        heapq.heappush(self._heap, (when, self._seq, key))

    def schedule_by(self, key: Key, when: float) -> None:
        """Make ``key`` fire no later than ``when`` (earlier if it already would)."""
        if self._when.get(key, math.inf) > when:
            self.schedule(key, when)

    def cancel(self, key: Key) -> None:
        self._live.pop(key, None)
        self._when.pop(key, None)

    def next_deadline(self) -> float:
        heap, live = self._heap, self._live
        while heap:
            when, seq, key = heap[0]
            if live.get(key) == seq:
                return when
            heapq.heappop(heap)
        return math.inf

    def due(self, now: float) -> list[Key]:
        heap, live = self._heap, self._live
        fired = []
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            if live.get(key) == seq:
                del live[key]
                del self._when[key]
                fired.append(key)
        return fired
