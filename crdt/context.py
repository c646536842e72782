"""Causal contexts: which events (dots) a replica has seen.

A dot ``(replica, n)`` names the n-th write made by a replica. A causal
context is a version vector (every dot of ``replica`` up to ``vv[replica]``)
plus a dot cloud (dots seen out of order). ``compact()`` moves cloud dots
that extend the vector into it, so a context that has seen everything up to
some point costs one integer per replica, whatever the number of writes.

Replica ids name one life of a node (``name#incarnation``): a node that
restarts with empty state starts a new replica, so its new dots can never be
mistaken for ones its previous life made.
"""

from __future__ import annotations

from collections.abc import Iterable

Dot = tuple[str, int]


class CausalContext:
    __slots__ = ("vv", "cloud")

    def __init__(self, vv: dict[str, int] | None = None, cloud: Iterable[Dot] = ()) -> None:
        self.vv: dict[str, int] = dict(vv or {})
        self.cloud: set[Dot] = set(cloud)

    def __contains__(self, dot: Dot) -> bool:
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self.vv == other.vv and self.cloud == other.cloud

    def __repr__(self) -> str:
        return f"CausalContext({self.vv!r}, {sorted(self.cloud)!r})"

    def copy(self) -> CausalContext:
        return CausalContext(self.vv, self.cloud)

    def next_dot(self, replica: str) -> Dot:
        """A new dot for a write by ``replica`` (its own dots are always
        contiguous in its own context), recorded as seen."""
        dot = (replica, self.vv.get(replica, 0) + 1)
        self.vv[replica] = dot[1]
        return dot

    def add(self, dot: Dot) -> None:
        replica, counter = dot
        current = self.vv.get(replica, 0)
        if counter == current + 1:
            self.vv[replica] = counter
            if self.cloud:
                self._compact_replica(replica)
        elif counter > current:
            self.cloud.add(dot)

    def merge(self, other: CausalContext) -> None:
        for replica, counter in other.vv.items():
            if counter > self.vv.get(replica, 0):
                self.vv[replica] = counter
        if other.cloud or self.cloud:
            vv = self.vv
            self.cloud = {dot for dot in self.cloud | other.cloud if dot[1] > vv.get(dot[0], 0)}
            for replica in {replica for replica, _ in self.cloud}:
                self._compact_replica(replica)

    def _compact_replica(self, replica: str) -> None:
        counter = self.vv.get(replica, 0)
        while (replica, counter + 1) in self.cloud:
            counter += 1
            self.cloud.discard((replica, counter))
        if counter:
            self.vv[replica] = counter

    def dots(self) -> int:
        """How many integers this context holds: its memory, roughly."""
        return len(self.vv) + len(self.cloud)

    def to_wire(self) -> list[object]:
        return [self.vv, sorted(self.cloud)]
