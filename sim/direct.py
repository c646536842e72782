"""Replicators wired directly: a perfect network with no time, for measuring
what a digest sync costs (messages, bytes, round trips) and for tests.

Messages go through the real codec, so sizes are real; each wave of messages
is delivered before the next is sent, so the number of waves is the number
of one-way trips, and ``round_trips`` is half of it, rounded up.
"""

from __future__ import annotations

import attrs

from membership.state import Address
from peer.core.replication import Replicator
from peer.runtime.wire import Codec, Dropped

WALL_MS = 1_800_000_000_000  # a fixed wall clock: no time passes here


@attrs.frozen
class Exchange:
    messages: int
    bytes: int
    trips: int

    @property
    def round_trips(self) -> int:
        return (self.trips + 1) // 2


def sync(nodes: dict[Address, Replicator], start: Replicator, peer: Address, codec: Codec | None = None) -> Exchange:
    """``start`` compares digests with ``peer``; deliver until quiet."""
    codec = codec or Codec()
    start.sync_with(peer)
    wave = start.take_effects()
    messages = size = trips = 0
    while wave:
        trips += 1
        next_wave = []
        for send in wave:
            frame = codec.encode(send.messages, stream=True)
            messages += len(send.messages)
            size += len(frame)
            decoded = codec.decode(frame, stream=True)
            assert not isinstance(decoded, Dropped), decoded
            receiver = nodes[send.dst]
            for message in decoded:
                receiver.receive(0.0, WALL_MS, message)
            next_wave += receiver.take_effects()
        wave = next_wave
    return Exchange(messages, size, trips)
