"""Causal contexts: which events (dots) a replica has seen.

A dot ``(replica, n)`` names the n-th write made by a replica. A causal
context is a version vector (every dot of ``replica`` up to ``vv[replica]``)
plus a dot cloud (dots seen out of order). Adding a dot that extends the
vector moves it, and any cloud dots it makes contiguous, into the vector,
so a context that has seen everything up to some point costs one integer
per replica, whatever the number of writes. The cloud is kept per replica,
so merging and compacting touch only the replicas concerned: a replica
catching up on 100k entries, which arrive in no particular order, must not
rescan its whole cloud for each chunk.

Replica ids name one life of a node (``name#incarnation``): a node that
restarts with empty state starts a new replica, so its new dots can never be
mistaken for ones its previous life made.
"""

from __future__ import annotations

from collections.abc import Iterable

Dot = tuple[str, int]


class CausalContext:
    __slots__ = ("vv", "_cloud")

    def __init__(self, vv: dict[str, int] | None = None, cloud: Iterable[Dot] = ()) -> None:
        self.vv: dict[str, int] = dict(vv or {})
        self._cloud: dict[str, set[int]] = {}
        for dot in cloud:
            self.add(dot)

    @property
    def cloud(self) -> set[Dot]:
        """The dots seen out of order (a new set)."""
        return {(replica, counter) for replica, counters in self._cloud.items() for counter in counters}

    def __contains__(self, dot: Dot) -> bool:
        replica, counter = dot
        if counter <= self.vv.get(replica, 0):
            return True
        counters = self._cloud.get(replica)
        return counters is not None and counter in counters

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self.vv == other.vv and self._cloud == other._cloud

    def __repr__(self) -> str:
        return f"CausalContext({self.vv!r}, {sorted(self.cloud)!r})"

    def copy(self) -> CausalContext:
        copy = CausalContext(self.vv)
        copy._cloud = {replica: set(counters) for replica, counters in self._cloud.items()}
        return copy

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
            if replica in self._cloud:
                self._compact(replica)
        elif counter > current:
            self._cloud.setdefault(replica, set()).add(counter)

    def merge(self, other: CausalContext) -> None:
        for replica, counter in other.vv.items():
            if counter > self.vv.get(replica, 0):
                self.vv[replica] = counter
                if replica in self._cloud:
                    self._prune(replica)
                    self._compact(replica)
        for replica, counters in other._cloud.items():
            for counter in counters:
                self.add((replica, counter))

    def _prune(self, replica: str) -> None:
        """Drop cloud dots the vector now covers."""
        floor = self.vv[replica]
        kept = {counter for counter in self._cloud[replica] if counter > floor}
        if kept:
            self._cloud[replica] = kept
        else:
            del self._cloud[replica]

    def _compact(self, replica: str) -> None:
        """Move cloud dots that extend the vector into it."""
        counters = self._cloud.get(replica)
        if not counters:
            return
        counter = self.vv.get(replica, 0)
        while counter + 1 in counters:
            counter += 1
            counters.discard(counter)
        self.vv[replica] = counter
        if not counters:
            del self._cloud[replica]

    def dots(self) -> int:
        """How many integers this context holds: its memory, roughly."""
        return len(self.vv) + sum(len(counters) for counters in self._cloud.values())
