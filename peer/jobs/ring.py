"""Job ownership: which member runs which job.

Theory of operation
-------------------
Every node derives ownership from its own membership view, with no messages:
nodes holding the same view compute the same owners. All hashing is
blake2b or SHAKE-128 with a distinct prefix or ``person`` per use, never
Python's salted ``hash()``, so a key hashes the same in every process and
version, and nothing depends on the order members were learned in.

*Plain owner.* Each member puts ``vnodes`` points on a 64-bit ring (the
first ``vnodes`` 64-bit words of SHAKE-128 over its name); a key's owner is
the member of the first point at or clockwise after the key's position. A
join takes only the arcs the new member's points cut off, and a leave hands
only the leaver's arcs to their clockwise neighbours, so about K/N keys
move and every other key stays put.

*Points name their member.* A point is stored as ``position << 64 |
tag(member)`` (the tag: a 64-bit hash of the name), so one sorted list of
ints orders positions and owners together and a key's owner is a bisection
and a mask away. Two members whose tags collide (2**-64 per pair) resolve
to the later name in sorted order on every node; the other owns nothing.

*A ring from the last one.* Views change by a member or a few, so
``Ring(members, previous=ring)`` removes the leavers' points from the last
view's list and inserts the newcomers' (slices copied between the changed
places) instead of sorting every point again; above a quarter of the
points changed, it sorts. Either way the same list, hence the same owners.
A member's points are cached (7 KB each at 128 points; 4,096 members).

*Bounded loads* (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
Bounded Loads", 2018). With ``load_factor`` c, ``assign`` gives no member more
than ``capacity = ceil(c * K / N)`` keys. Keys are taken in a fixed order (a
second hash of the key, so the order does not depend on the view or on the
caller's iteration order) in two passes: first every key goes to its plain
owner while that owner is below its bound; then each key left over walks
clockwise from its position to the first member still below its bound. A
key therefore only leaves its plain owner when that owner has more than its
bound of keys of its own, and where it lands is always the first member of
its ``preference`` list that had room. Each member's bound is c * K / N
rounded up or down (never below 1) by its tag (``capacities``): the share
moves a little when N or K does, and only a few members' bounds with it.

Why this scheme (issue 13: 1,000 ready members announced at once froze a
node for 38 s, 5.6 s per ring at 1,024 points per member; targets: a ring in
under 2 ms at 100 members and under 20 ms at 1,000, K/N movement kept).
``python bench/ring_bench.py``, 10 joins and leaves per cell; "moved" is
keys moved over the ideal, K/(N+1) for a join and K/N for a leave; times on
a shared 2-core machine under a load of 1-14, so they vary by 2x:

- Cost of a view change, 10k jobs (ms):

                            100 members            1,000 members
    before (v1024)    build 26-41, cold 86-190    build 645-1,090, cold 1,230-2,030
    now (v128)        build 1.2-1.4, cold 4-9     build 19-34, cold 64-130
      from last ring  join 0.16-0.23, leave 0.13-0.19  join 1.5-3.3, leave 1.4-2.0
    assign 10k jobs   11-12 (c1.1: 13-14)         16-27 (c1.1: 20; before: 49, c1.1: 229)

  Placement passes the previous ring, so a join or leave at 1,000 members
  costs ~2 ms plus ~20 ms of assign; a ring from scratch (a node's first
  view, or many members at once) 19-34 ms warm. Cold, hashing is one
  SHAKE-128 call per member instead of one blake2b per point.
- Balance of the plain ring ("arcs": the largest share of the ring one
  member covers over 1/N, i.e. max/mean with endless jobs; members
  ``node-{i}``): 10 members 1.20 at 64 points, 1.10 at 128, 1.17 at 256,
  1.05 at 1,024 (one set of names: noisy at 10); 100 members 1.38, 1.22,
  1.11, 1.08; 1,000 members 1.64, 1.37, 1.18, 1.11. With 10k jobs at 100
  members the job counts' own Poisson spread adds to it: 1.57, 1.69, 1.28,
  1.26; at 1,000 members (10 jobs each) 2.0-2.3 whatever the points. Plain
  joins and leaves move ~1.0x whatever the points.
- A ring's cost is a sort of N * vnodes points (~0.15 us each here) or, from
  the last ring, their copy. From scratch, 128 points take 1.3-1.4 ms at
  100 members and 19-34 ms at 1,000 (at the 20 ms target; ~2 ms from the
  last ring), 256 take 2.7 and 46-65, 1,024 take 11 and 250-400. So 128
  points per member: the most that keeps a view change (from the last
  ring) well within the targets and a ring from scratch about at them,
  at the price of a less even plain ring than 1,024
  (arcs 1.10 against 1.05 at 10 members, 1.22 against 1.08 at 100, 1.37
  against 1.11 at 1,000). Points per member that shrink as N grows would keep the total
  bounded, but change every member's points at each step of the count: a
  join there moves about twice K/N, and the only-to-the-newcomer property
  goes.
- Bounded loads hold max/mean at 1.10 (at 1 key per member or fewer, the
  integer bound of 2 or 1 makes it 2 or 10). Moved (join / leave) with
  c = 1.1, 128 points: 10 members, 10k jobs 0.98 / 1.03; 100 members 1.30 /
  1.28; 1,000 members 3.00 / 2.07; 100 members, 1k jobs 2.25 / 2.42. With
  one bound for all, ceil(c * K / N) (before issue 13): the same except when
  a change steps that bound, and then every key pushed off its owner goes
  back: a leave at 1,000 members and 10k jobs lifts it from 11 to 12 and
  moves 46x K/N (5.4x at 100 members, 1k jobs). The bound per member costs
  more where most members are at their bound, 1-2 keys each: 1,000 members,
  1k jobs 6.1 / 5.0 against 1.6 / 1.8 between steps; it has no steps.
- Rendezvous (highest random weight) balances like 1,024 points (1.27 with
  10k jobs at 100 members) and moves 1.17 / 1.12 with c = 1.1, but scores
  every key against every member: ~400 ms per assign of 10k keys over 100
  members in CPython (seconds at 1,000), against ~13 ms for the ring.
  Mirrokni et al.'s single pass in ring order moves more than owners
  first, overflow after (1,000 members, 10k jobs: 3.83 / 2.22). Not
  measured: jump hash, which only removes the last bucket (a leave of any
  other member renumbers the rest), and Maglev, whose table (65,537
  entries for 1,000 members) is filled by a Python loop on every change and
  moves more than K/N by design.

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
import struct
from collections.abc import Iterable
from fractions import Fraction

__all__ = ["DEFAULT_LOAD_FACTOR", "DEFAULT_VNODES", "Ring", "rank"]

DEFAULT_VNODES = 128
DEFAULT_LOAD_FACTOR = 1.10

_KEY = b"peer.ring.key"
_MEMBER = b"peer.ring.member"
_VNODE = b"peer.ring.vnode\x00"
_RANK = b"peer.ring.rank"

_TAG_BITS = 64
_TAG_MASK = (1 << _TAG_BITS) - 1
# A ring of a previous view is updated in place of a new sort while no
# more than 1/_INCREMENTAL of its points change.
_INCREMENTAL = 4


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


# Views change far more often than members or jobs do, so a node re-hashes
# only what is new; bounded so a long-lived node's memory stays bounded too.
def _hash_key(key: str) -> tuple[int, int]:
    """(ring position shifted into a point's place, processing order) of a key."""
    digest = hashlib.blake2b(key.encode(), digest_size=16, person=_KEY).digest()
    return int.from_bytes(digest[:8], "big") << _TAG_BITS, int.from_bytes(digest[8:], "big")


# Job ids, placed again at every view change.
_key_hashes = functools.lru_cache(maxsize=1 << 16)(_hash_key)


@functools.lru_cache(maxsize=4096)
def _tag(member: str) -> int:
    return _hash64(member.encode(), _MEMBER)


@functools.lru_cache(maxsize=4096)
def _vnode_points(member: str, vnodes: int) -> tuple[int, ...]:
    """A member's points, sorted, each ``position << 64 | tag(member)``.

    One SHAKE-128 stream gives all the positions (the first ``vnodes``
    64-bit words of it), a few microseconds per member where a hash per
    point cost a third of a microsecond each. The tag in the low bits names
    the member, so that one sort of the points orders the owners with them.
    """
    stream = hashlib.shake_128(_VNODE + member.encode()).digest(8 * vnodes)
    tag = _tag(member)
    # A set: a member's own points are distinct, so every point of a ring
    # names one (position, member) and a member's points can be found by value.
    return tuple(sorted({position << _TAG_BITS | tag for position in struct.unpack(f">{vnodes}Q", stream)}))


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


def _updated(points: list[int], gone: list[int], added: list[int]) -> list[int]:
    """``sorted(set(points) - set(gone) | set(added))`` for sorted ``points``,
    with ``gone`` among them and ``added`` not: slices of the old list copied
    between the few places that change, O(P) memory copying and
    O(changes * log P) steps of Python, where a sort compares every point."""
    if gone:
        gone_at = sorted(bisect.bisect_left(points, point) for point in gone)
        kept: list[int] = []
        start = 0
        for i in gone_at:
            kept += points[start:i]
            start = i + 1
        kept += points[start:]
        points = kept
    if not added:
        return points
    added = sorted(added)
    merged: list[int] = []
    start = 0
    for point in added:
        i = bisect.bisect_left(points, point, start)
        merged += points[start:i]
        merged.append(point)
        start = i
    merged += points[start:]
    return merged


class Ring:
    """Immutable; built once per membership view."""

    __slots__ = ("_factor", "_names", "_points", "load_factor", "members", "vnodes")

    members: tuple[str, ...]
    vnodes: int
    load_factor: float | None
    _factor: Fraction | None
    _points: list[int]  # every member's points (position << 64 | tag), sorted
    _names: dict[int, str]  # tag -> member

    def __init__(
        self,
        members: Iterable[str],
        *,
        vnodes: int = DEFAULT_VNODES,
        load_factor: float | None = DEFAULT_LOAD_FACTOR,
        previous: Ring | None = None,
    ) -> None:
        """``previous``: the ring of an earlier view, to update rather than
        build from scratch when few members changed; the same ring either way."""
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
        # Two members whose tags collide (a 2**-64 event per pair) resolve
        # to the later name in sorted order: odd, but the same on every node.
        init(self, "_names", {_tag(member): member for member in self.members})
        init(self, "_points", self._build(previous))

    def _build(self, previous: Ring | None) -> list[int]:
        if previous is not None and previous.vnodes == self.vnodes:
            before, now = set(previous.members), set(self.members)
            gone, joined = sorted(before - now), sorted(now - before)
            if (len(gone) + len(joined)) * self.vnodes * _INCREMENTAL <= len(previous._points):
                return _updated(
                    previous._points,
                    [point for member in gone for point in _vnode_points(member, self.vnodes)],
                    [point for member in joined for point in _vnode_points(member, self.vnodes)],
                )
        points: list[int] = []
        for member in self.members:
            points += _vnode_points(member, self.vnodes)
        # Each member's points are sorted already: timsort merges the runs.
        points.sort()
        return points

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

    def _index(self, key: str) -> int:
        """Index of the first point at or clockwise after the key. Not
        through the cache of ``assign``'s job ids: a run id is looked up a
        few times in its life, and would fill the cache with ids that
        expired long ago."""
        i = bisect.bisect_left(self._points, _hash_key(key)[0])
        return 0 if i == len(self._points) else i

    def owner(self, key: str) -> str | None:
        """Plain consistent-hash owner of one key (None when no members)."""
        if not self.members:
            return None
        return self._names[self._points[self._index(key)] & _TAG_MASK]

    def preference(self, key: str, count: int) -> list[str]:
        """Up to ``count`` distinct members in the key's clockwise order, owner first."""
        count = min(count, len(self._names))
        if count <= 0:
            return []
        points, names = self._points, self._names
        size = len(points)
        i = self._index(key)
        found: list[str] = []
        seen: set[int] = set()
        while len(found) < count:
            tag = points[i] & _TAG_MASK
            if tag not in seen:
                seen.add(tag)
                found.append(names[tag])
            i += 1
            if i == size:
                i = 0
        return found

    def capacity(self, count: int) -> int | None:
        """Most keys one member gets when ``count`` keys are assigned (None: unbounded)."""
        if self._factor is None or not self.members:
            return None
        # Over the members that own points: all of them, bar a tag collision.
        return math.ceil(self._factor * count / len(self._names))

    def capacities(self, count: int) -> dict[str, int]:
        """Each member's bound when ``count`` keys are assigned (empty: unbounded).

        ``c * K / N`` rounded up for some members and down (but not below 1)
        for the others, the members rounded up chosen by their tags: those
        below the fraction's share of the tag space, and more in that order
        if the bounds would not hold every key.
        """
        return {self._names[tag]: cap for tag, cap in self._capacities(count).items()}

    def _capacities(self, count: int) -> dict[int, int]:
        if self._factor is None or not self.members:
            return {}
        tags = sorted(self._names)
        share = self._factor * count / len(tags)
        # Rounded up for the members whose tags fall below the fraction's
        # share of the tag space: as N or K changes, the share moves a
        # little and only a few members' bounds change. One bound for all,
        # ceil(c * K / N), changes every member's at once when it steps
        # (from 11 to 12 as 1,000 members with 10k keys lose one), and every
        # key pushed off its owner goes back. Never below 1, though: below
        # one key per member, a bound of 0 would shut most members out.
        low = max(math.floor(share), 1)
        up = bisect.bisect_left(tags, math.ceil((share - low) * (1 << _TAG_BITS))) if share > low else 0
        up = max(up, count - low * len(tags))  # room for every key: c >= 1 does not promise it rounded down
        return {tag: low + 1 if i < up else low for i, tag in enumerate(tags)}

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        """Owner of every key of a whole set, no member above ``capacity(K)``.

        Deterministic and independent of the iteration order of ``keys``
        (duplicates count once); with ``load_factor=None``, ``owner()`` of each
        key. The result's own iteration order is deterministic as well.
        """
        if not self.members:
            return {}
        ordered = sorted(set(keys), key=_processing_order)
        points, names = self._points, self._names
        size = len(points)
        find = bisect.bisect_left
        hashes = _key_hashes
        at = [find(points, hashes(key)[0]) for key in ordered]
        if size in at:  # past the last point: the first one
            at = [0 if i == size else i for i in at]
        if self._factor is None:
            return {key: names[points[i] & _TAG_MASK] for key, i in zip(ordered, at, strict=True)}

        cap = self._capacities(len(ordered))
        # By tag, not name, while placing: a member is the tag of its points.
        load = dict.fromkeys(names, 0)
        placed: dict[str, int] = {}
        overflow: list[tuple[str, int]] = []
        for key, i in zip(ordered, at, strict=True):
            tag = points[i] & _TAG_MASK
            if load[tag] < cap[tag]:
                load[tag] += 1
                placed[key] = tag
            else:
                overflow.append((key, i))
        if overflow:
            # Walk clockwise past full members. A member only ever fills up
            # during the walk, so a point found full stays full: remember
            # where to resume after it (union-find "next free" with path
            # compression), which keeps the walks short even when nearly
            # every member is full.
            resume: dict[int, int] = {}
            for key, i in overflow:
                skipped: list[int] = []
                while load[tag := points[i] & _TAG_MASK] >= cap[tag]:
                    skipped.append(i)
                    if len(skipped) > size:
                        raise RuntimeError(f"{self!r}: no member has room for {key!r}")  # cannot happen: see _capacities
                    i = resume.get(i, i + 1)
                    if i == size:
                        i = 0
                for j in skipped:
                    resume[j] = i
                tag = points[i] & _TAG_MASK
                load[tag] += 1
                placed[key] = tag
        # In processing order, as without a bound.
        return {key: names[placed[key]] for key in ordered}
