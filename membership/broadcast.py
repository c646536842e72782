"""The transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Claims to disseminate wait here, keyed by what they are about (a member's
name): a newer claim replaces an older one with the same key, so the queue
never holds stale news and its length is bounded by the number of keys.
Each outgoing packet is topped up from the queue: the claims sent the fewest
times go first (newest first among equals), as many as fit in the bytes left
(a long queue is looked at only until a few did not fit: the rest go in the
next packet).
A claim is retired once it has been sent ``limit`` times, where the caller
computes ``limit`` as retransmit_mult * ceil(log10(n + 1)), enough for an
epidemic to reach every member with high probability.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")

# Below this many bytes left no message fits; stop scanning.
_SMALLEST_MESSAGE = 8
# A packet is topped up from the queue until this many messages did not fit
# (or were sent to its target already): the rest wait for the next packet.
_MAX_PASSED = 32


@attrs.define(slots=True)
class _Broadcast(Generic[T]):
    key: str
    message: T
    size: int
    transmits: int = 0
    sent_to: set[object] | None = None  # the targets it went to, when the caller names them


class BroadcastQueue(Generic[T]):
    def __init__(self) -> None:
        self._by_key: dict[str, _Broadcast[T]] = {}
        # _levels[t] holds the broadcasts sent t times, in insertion order.
        self._levels: list[dict[str, _Broadcast[T]]] = [{}]

    def __len__(self) -> int:
        return len(self._by_key)

    def enqueue(self, key: str, message: T, size: int) -> None:
        """Queue ``message`` (``size`` bytes on the wire), replacing any
        older message with the same key."""
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._levels[old.transmits][key]
        broadcast = _Broadcast(key, message, size)
        self._by_key[key] = broadcast
        self._levels[0][key] = broadcast

    def discard(self, key: str) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._levels[old.transmits][key]

    def clear(self) -> None:
        """Drop every message: there is no one left to send them to."""
        self._by_key.clear()
        self._levels = [{}]

    def retarget(self, targets: Iterable[object], audience: int) -> None:
        """The targets are now these (``audience`` of them): forget that a
        message went to any other (a member that left or died), and retire
        those that every one of them has had. Without this, a message that
        waited for a gone member would wait for good, as ``take`` with a
        target never sends a message to a member twice."""
        live = set(targets)
        for key, broadcast in list(self._by_key.items()):
            if broadcast.sent_to is None:
                continue
            broadcast.sent_to &= live
            if len(broadcast.sent_to) >= audience:
                self.discard(key)

    def sent(self, key: str, targets: Iterable[object], audience: int) -> None:
        """The message queued under ``key`` reached these targets another
        way (a direct copy): ``take`` with a target skips them, and it is
        retired once ``audience`` targets had it."""
        broadcast = self._by_key.get(key)
        if broadcast is None:
            return
        if broadcast.sent_to is None:
            broadcast.sent_to = set()
        broadcast.sent_to.update(targets)
        if len(broadcast.sent_to) >= audience:
            self.discard(key)

    def fresh(self) -> int:
        """How many messages have not been sent yet."""
        return len(self._levels[0])

    def pending(self, key: str) -> bool:
        return key in self._by_key

    def get(self, key: str) -> T | None:
        """The message queued under ``key``, if any."""
        broadcast = self._by_key.get(key)
        return None if broadcast is None else broadcast.message

    def take(self, budget: int, limit: int, *, target: object = None, audience: int | None = None) -> list[T]:
        """Messages for one packet with ``budget`` bytes free; counts a
        transmission for each and retires those sent ``limit`` times. With
        a ``target``, a message is not sent to it twice, and is retired as
        soon as it went to ``audience`` targets: in a cluster of a few
        members every one has had it once, and more copies are waste."""
        if not self._by_key or budget < _SMALLEST_MESSAGE:
            return []
        chosen: list[_Broadcast[T]] = []
        passed = 0  # messages looked at that did not go: a long queue is not scanned to its end
        for level in self._levels:
            for broadcast in reversed(level.values()):
                if broadcast.size <= budget and (target is None or broadcast.sent_to is None or target not in broadcast.sent_to):
                    chosen.append(broadcast)
                    budget -= broadcast.size
                    if budget < _SMALLEST_MESSAGE:
                        break
                else:
                    passed += 1
                    if passed > _MAX_PASSED:
                        break
            if budget < _SMALLEST_MESSAGE or passed > _MAX_PASSED:
                break
        # Oldest first, so that within a level the newer stay in front.
        for broadcast in reversed(chosen):
            del self._levels[broadcast.transmits][broadcast.key]
            broadcast.transmits += 1
            if target is not None:
                if broadcast.sent_to is None:
                    broadcast.sent_to = set()
                broadcast.sent_to.add(target)
            if broadcast.transmits >= limit or (
                audience is not None and broadcast.sent_to is not None and len(broadcast.sent_to) >= audience
            ):
                del self._by_key[broadcast.key]
                continue
            if broadcast.transmits == len(self._levels):
                self._levels.append({})
            self._levels[broadcast.transmits][broadcast.key] = broadcast
        return [broadcast.message for broadcast in chosen]
