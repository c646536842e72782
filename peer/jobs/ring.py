"""Job ownership: which member runs which job.

Theory of operation
-------------------
Every node derives ownership from its own membership view, with no messages:
nodes holding the same view compute the same owners. All hashing is
``blake2b(digest_size=8)`` with a distinct ``person`` per use, never Python's
salted ``hash()``, so a key hashes the same in every process and version.

*Plain owner.* Each member puts ``vnodes`` points on a 64-bit ring; a key's
owner is the member of the first point at or clockwise after the key's
position. A join takes only the arcs the new member's points cut off, and a
leave hands only the leaver's arcs to their clockwise neighbours, so about
K/N keys move and every other key stays put.

*Bounded loads* (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
Bounded Loads", 2018). With ``load_factor`` c, ``assign`` gives no member more
than ``capacity = ceil(c * K / N)`` keys. Keys are taken in a fixed order (a
second hash of the key, so the order does not depend on the view or on the
caller's iteration order) in two passes: first every key goes to its plain
owner while that owner is below capacity; then each key left over walks
clockwise from its position to the first member still below capacity. A key
therefore only leaves its plain owner when that owner has more than
``capacity`` keys of its own, and where it lands is always the first member
of its ``preference`` list that had room.

Why this scheme (``python bench/ring_bench.py``: c = 1.10, 10 random joins
and leaves per cell; "moved" is keys moved over the ideal, K/(N+1) for a join
and K/N for a leave; times on a shared 2-core machine):

- Plain ring, 100 members, 10k jobs: max/mean 2.12 at 16 vnodes, 1.61 at 64,
  1.29 at 256, 1.23 at 1024; rendezvous 1.20. The job count per member is
  itself Poisson(100), whose maximum over 100 members is ~1.2x the mean, so
  no vnode count reaches 1.10: bounded loads are needed.
- Bounded loads hold max/mean at 1.10; what they add to the moves depends on
  how uneven the plain owners are, so vnodes still matter. Moved (join /
  leave) at 100 members, 10k jobs: 1.56 / 1.75 at 64 vnodes, 1.20 / 1.26 at
  256, 1.17 / 1.21 at 1024, 1.12 / 1.13 at 2048. Rendezvous with bounded
  loads, whose owners are as even as hashing allows, moves 1.07 / 1.15 --
  but it scores every key against every member: ~400-500 ms per assign of
  10k keys over 100 members in CPython, against ~15 ms for the ring.
- Owners first, overflow after, moves about as many keys as the classic
  single pass in ring order at 10k jobs (1.17 / 1.21 against 1.16 / 1.23),
  and fewer when overflow is common (100 members, 1k jobs: leave 4.77
  against 5.59), since there a walking key can take the slot a later key's
  own owner had, and push that key on in turn.
- Hence a ring of 1024 vnodes per member with c = 1.10 by default: at 10
  members it moves 1.00 / 1.00 of ideal with 10k jobs and 1.10 / 1.06 with
  1k; at 100 members a new view builds in ~25 ms (a member's points are
  cached across views, so only newcomers are hashed) and assign takes
  ~15 ms. 2048 vnodes move ~5% fewer keys at 100 members for ~3x the build
  time and twice the memory.

The capacity is an integer that follows N, and whenever it rises, keys that
overflowed go back to their owners. With few keys per member that dominates
whatever the scheme (1000 jobs: capacity 11 with 100 members, 12 with 99; a
leave moves ~5x K/N); with 10k jobs a leave lifts it from 110 to 112, which
is why even rendezvous stays above 1.10 there.

The scheduler, though, places jobs with no load bound by default
(``SchedulerConfig.load_factor = None``; ``--load-factor`` turns it on). A
bounded assignment depends on the whole set of keys, and job definitions
reach the nodes one by one: two nodes holding different job sets then
compute different owners for jobs neither has changed. In the simulator (20
nodes, 4 churn events, 5% loss, 6 seeds) that gave 3 duplicate runs with
c = 1.1 against none with the plain ring, whose owners depend only on the
members.

``rank`` is separate from the ring: it scores (key, member) pairs without
reference to any view, so two members that both claim a run agree on the
winner even while their views differ.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections.abc import Iterable
from fractions import Fraction

__all__ = ["DEFAULT_LOAD_FACTOR", "DEFAULT_VNODES", "Ring", "rank"]

DEFAULT_VNODES = 1024
DEFAULT_LOAD_FACTOR = 1.10

_POSITION = b"peer.ring.key"
_ORDER = b"peer.ring.order"
_VNODE = b"peer.ring.vnode"
_RANK = b"peer.ring.rank"


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


# Copying a keyed hasher costs half of building one from its parameters,
# and hashing is most of a cold start; the digests are those of _hash64.
_POSITION_HASHER = hashlib.blake2b(digest_size=8, person=_POSITION)
_ORDER_HASHER = hashlib.blake2b(digest_size=8, person=_ORDER)
_VNODE_HASHER = hashlib.blake2b(digest_size=8, person=_VNODE)


def _digest64(hasher: hashlib.blake2b, data: bytes) -> int:
    hasher = hasher.copy()
    hasher.update(data)
    return int.from_bytes(hasher.digest(), "big")


# Views change far more often than members or jobs do, so a node re-hashes
# only what is new; bounded so a long-lived node's memory stays bounded too.
@functools.lru_cache(maxsize=1 << 16)
def _key_hashes(key: str) -> tuple[int, int]:
    """(ring position, processing order) of a key."""
    data = key.encode()
    return _digest64(_POSITION_HASHER, data), _digest64(_ORDER_HASHER, data)


@functools.lru_cache(maxsize=4096)
def _vnode_points(member: str, vnodes: int) -> tuple[int, ...]:
    # str(i) holds no "#", so "member#i" names exactly one (member, i).
    prefix = _VNODE_HASHER.copy()
    prefix.update(f"{member}#".encode())
    # Sorted, so that concatenating members gives timsort presorted runs.
    return tuple(sorted(_digest64(prefix, str(i).encode()) for i in range(vnodes)))


def _processing_order(key: str) -> tuple[int, str]:
    return _key_hashes(key)[1], key


def rank(key: str, member: str) -> int:
    """A view-independent score: when two members both claim the same run, the
    higher rank wins, the same on every node whatever its view.

    64-bit, so a tie between two members is a ~2**-64 event; callers that
    must be total break it by member name.
    """
    # Length prefix: ("ab", "c") and ("a", "bc") must not hash alike.
    return _hash64(f"{len(key)}:{key}{member}".encode(), _RANK)


class Ring:
    """Immutable; built once per membership view."""

    __slots__ = ("_factor", "_owners", "_positions", "load_factor", "members", "vnodes")

    members: tuple[str, ...]
    vnodes: int
    load_factor: float | None
    _factor: Fraction | None
    _positions: list[int]  # every member's points, sorted
    _owners: list[str]  # the member of each point

    def __init__(
        self,
        members: Iterable[str],
        *,
        vnodes: int = DEFAULT_VNODES,
        load_factor: float | None = DEFAULT_LOAD_FACTOR,
    ) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        if load_factor is not None and not (math.isfinite(load_factor) and load_factor >= 1):
            # Below 1, capacity * N < K and some key would have nowhere to go.
            raise ValueError(f"load_factor must be a finite number >= 1 or None, got {load_factor}")
        # Immutable (see __setattr__): a view's owners must not drift.
        init = object.__setattr__
        init(self, "members", tuple(sorted(set(members))))
        init(self, "vnodes", vnodes)
        init(self, "load_factor", load_factor)
        # Exact decimal value of c as written: float 1.1 * 100 / 10 is
        # 11.000000000000002, whose ceil would silently allow 12.
        init(self, "_factor", None if load_factor is None else Fraction(repr(load_factor)))
        positions: list[int] = []
        owner_of: dict[int, str] = {}
        for member in self.members:
            points = _vnode_points(member, vnodes)
            positions.extend(points)
            # Two members on one point (a 64-bit collision) both resolve to
            # the later name in sorted order: odd, but the same on every node.
            owner_of.update(dict.fromkeys(points, member))
        positions.sort()
        init(self, "_positions", positions)
        init(self, "_owners", list(map(owner_of.__getitem__, positions)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Ring is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Ring is immutable: cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"Ring({len(self.members)} members, vnodes={self.vnodes}, load_factor={self.load_factor})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self.members, self.vnodes, self.load_factor) == (other.members, other.vnodes, other.load_factor)

    def __hash__(self) -> int:
        return hash((self.members, self.vnodes, self.load_factor))

    def _index(self, key: str, *, cached: bool = False) -> int:
        """Index of the first point at or clockwise after the key. Only the
        job ids ``assign`` places at every view change go through the
        cache: a run id is looked up a few times in its life, and would
        fill the cache with ids that expired long ago."""
        position = _key_hashes(key)[0] if cached else _digest64(_POSITION_HASHER, key.encode())
        i = bisect.bisect_left(self._positions, position)
        return 0 if i == len(self._positions) else i

    def owner(self, key: str) -> str | None:
        """Plain consistent-hash owner of one key (None when no members)."""
        if not self.members:
            return None
        return self._owners[self._index(key)]

    def preference(self, key: str, count: int) -> list[str]:
        """Up to ``count`` distinct members in the key's clockwise order, owner first."""
        count = min(count, len(self.members))
        if count <= 0:
            return []
        owners = self._owners
        size = len(owners)
        i = self._index(key)
        found: list[str] = []
        seen: set[str] = set()
        while len(found) < count:
            member = owners[i]
            if member not in seen:
                seen.add(member)
                found.append(member)
            i += 1
            if i == size:
                i = 0
        return found

    def capacity(self, count: int) -> int | None:
        """Most keys one member gets when ``count`` keys are assigned (None: unbounded)."""
        if self._factor is None or not self.members:
            return None
        return math.ceil(self._factor * count / len(self.members))

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        """Owner of every key of a whole set, no member above ``capacity(K)``.

        Deterministic and independent of the iteration order of ``keys``
        (duplicates count once); with ``load_factor=None``, ``owner()`` of each
        key. The result's own iteration order is deterministic as well.
        """
        if not self.members:
            return {}
        ordered = sorted(set(keys), key=_processing_order)
        owners = self._owners
        if self._factor is None:
            return {key: owners[self._index(key, cached=True)] for key in ordered}

        cap = math.ceil(self._factor * len(ordered) / len(self.members))
        load = dict.fromkeys(self.members, 0)
        result: dict[str, str] = {}
        overflow: list[tuple[str, int]] = []
        for key in ordered:
            i = self._index(key, cached=True)
            member = owners[i]
            if load[member] < cap:
                load[member] += 1
                result[key] = member
            else:
                overflow.append((key, i))
        if not overflow:
            return result

        # Walk clockwise past full members. A member only ever fills up
        # during the walk, so a point found full stays full: remember where to
        # resume after it (union-find "next free" with path compression),
        # which keeps the walks short even when nearly every member is full.
        size = len(owners)
        resume: dict[int, int] = {}
        for key, i in overflow:
            skipped: list[int] = []
            while load[owners[i]] >= cap:
                skipped.append(i)
                if len(skipped) > size:
                    # Only if colliding points left some member no point of
                    # its own, so the members reachable lack room for K keys.
                    raise RuntimeError(f"{self!r}: no member has room for {key!r}")
                i = resume.get(i, i + 1)
                if i == size:
                    i = 0
            for j in skipped:
                resume[j] = i
            member = owners[i]
            load[member] += 1
            result[key] = member
        return result
