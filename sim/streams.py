"""One master seed, split into independent named random streams.

Each consumer (the network, the fault schedule, every node) draws from its
own ``random.Random``, derived from the master seed and the stream's name by
hashing, so adding draws in one stream never shifts another, and a run is a
pure function of the seed.
"""

from __future__ import annotations

import hashlib
import random


class SeedStreams:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._streams: dict[str, random.Random] = {}

    def get(self, name: str) -> random.Random:
        stream = self._streams.get(name)
        if stream is None:
            digest = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
            stream = self._streams[name] = random.Random(int.from_bytes(digest, "little"))
        return stream
