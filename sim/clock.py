"""Node-local clocks.

Each simulated node reads two clocks, as a real process does: a monotonic
clock (what the protocol cores get as ``now``; its epoch is arbitrary and
differs per node, and it runs fast or slow by ``drift``) and a wall clock
(monotonic plus an epoch, which a scenario may step). Deadlines a core
returns are in its monotonic time; ``to_global`` converts them back.
"""

from __future__ import annotations

import attrs

# A plausible Unix time for the simulated wall clocks (2027-01-15).
WALL_EPOCH = 1_800_000_000.0


@attrs.define
class NodeClock:
    offset: float = 0.0  # monotonic reading at global time 0
    drift: float = 0.0  # 1e-4 runs 100 ppm fast
    wall_step: float = 0.0  # total of wall-clock steps applied so far

    def monotonic(self, t: float) -> float:
        return self.offset + t * (1.0 + self.drift)

    def to_global(self, local: float) -> float:
        return (local - self.offset) / (1.0 + self.drift)

    def wall(self, t: float) -> float:
        return WALL_EPOCH + t * (1.0 + self.drift) + self.wall_step
