"""Lifeguard's local health multiplier.

A node that misses acks may be the slow one itself (CPU starved, dropping
packets), not the members it probes. It keeps a score in
[0, max_multiplier - 1]: a failed probe with too few nacks from the relays,
or having to refute a suspicion about itself, raises it; each successful
probe lowers it. Probe intervals are stretched by (score + 1), so an
unhealthy node probes less and gives others longer to answer before it
accuses them, instead of spreading false suspicions.
"""

from __future__ import annotations

import attrs


@attrs.define
class Awareness:
    max_multiplier: int
    score: int = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
