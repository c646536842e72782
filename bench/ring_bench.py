"""Job ownership: balance, churn and cost of the candidate schemes.

    python bench/ring_bench.py [--trials 10] [--quick] [--only TEXT] [--json]

Part 1, for 10, 100 and 1,000 members (``node-{i}``) and 100, 1k and 10k jobs
(``job-{i}``), each scheme is measured on:
- arcs: the largest share of the ring one member's points cover, over the
  mean 1/N (the plain ring's max/mean with endless jobs);
- max/mean: the most jobs any member owns over the mean K/N;
- join / leave: jobs whose owner changed when one member joins (N -> N+1) or
  one random member leaves (N -> N-1), as a ratio to the ideal, K/(N+1) for
  the join and K/N for the leave; averaged over ``--trials`` joins and leaves.
  1.00 is the minimum any scheme can move on average;
- build: milliseconds to build the ring of a view from scratch (members'
  points cached, as on a running node; best of 3); update: milliseconds to
  derive it from the previous view's ring when one member joins (its points
  not cached yet, as for a real newcomer; best of 3); assign: milliseconds
  for one ``assign()`` of all K jobs (key hashes cached, best of 3).

Part 2, the view-change path (the targets of issue 13: a ring in under 2 ms
at 100 members and under 20 ms at 1,000), for the shipped ring and for the
one it replaced (``legacy v1024``: a blake2b per point, 1,024 points per
member, owners from a point -> member dictionary): build from cached points,
update for one join and for one leave, cold build (no member hashed
before: a node's first view, or 1,000 members announced at once), and
``assign()`` of 10k jobs, plain and with c = 1.1, warm and cold.

Schemes:
- ``ring vN``: ``peer.jobs.ring.Ring`` with N vnodes and no load bound;
- ``ring vN c1.1``: ``peer.jobs.ring.Ring`` with bounded loads (the shipped
  algorithm: plain owners first, then overflow walks clockwise);
- ``one bound vN c1.1``: the shipped algorithm with the bound it had
  before issue 13, ceil(c * K / N) for every member;
- ``classic vN c1.1``: Mirrokni et al.'s single pass with keys in ring
  order, each walking clockwise to the first member with room;
  bounded loads here all use the ring's per-member bounds (``capacities``);
- ``rendezvous`` / ``rendezvous c1.1``: highest random weight, and with
  bounded loads (plain owners first, overflow to the next highest weight).
  Pairs are scored with a splitmix64 mix of the key's and member's blake2b
  hashes, cheaper than one blake2b per pair, so its time is a lower bound.
  Not run at 1,000 members (10M pairs per assign; seconds).

Timings vary with the machine's load; the balance and churn figures are
deterministic.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from peer.jobs.ring import (
    _TAG_MASK,
    DEFAULT_VNODES,
    Ring,
    _hash64,
    _key_hashes,
    _processing_order,
    _tag,
    _vnode_points,
)

LOAD_FACTOR = 1.10
_MASK = (1 << 64) - 1
MEMBER_COUNTS = (10, 100, 1000)
JOB_COUNTS = (100, 1000, 10_000)


class Assigner(Protocol):
    def assign(self, keys: Iterable[str]) -> dict[str, str]: ...


class ClassicRing(Ring):
    """Mirrokni et al.'s original pass: keys in ring order, each to the first
    member clockwise below capacity, owners and overflow interleaved."""

    __slots__ = ()

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        if not self.members:
            return {}
        ordered = sorted(set(keys), key=lambda k: (_key_hashes(k)[0], k))
        cap = self.capacities(len(ordered))
        points, names = self._points, self._names
        size = len(points)
        load = dict.fromkeys(self.members, 0)
        result = {}
        for key in ordered:
            i = self._index(key)
            while load[member := names[points[i] & _TAG_MASK]] >= cap[member]:
                i = i + 1 if i + 1 < size else 0
            member = names[points[i] & _TAG_MASK]
            load[member] += 1
            result[key] = member
        return result


class LegacyRing:
    """The ring this module's one replaced (before issue 13), for its costs:
    a blake2b per point, points and owners in two lists, owners found
    through a point -> member dictionary built for every view."""

    _hasher = hashlib.blake2b(digest_size=8, person=b"peer.ring.vnode")
    _cache: dict[tuple[str, int], tuple[int, ...]] = {}  # noqa: RUF012 - the bench's own, as lru_cache was

    def __init__(self, members: Iterable[str], vnodes: int = 1024) -> None:
        self.members = tuple(sorted(set(members)))
        positions: list[int] = []
        owner_of: dict[int, str] = {}
        for member in self.members:
            points = self._points(member, vnodes)
            positions.extend(points)
            owner_of.update(dict.fromkeys(points, member))
        positions.sort()
        self._positions = positions
        self._owners = list(map(owner_of.__getitem__, positions))

    @classmethod
    def _points(cls, member: str, vnodes: int) -> tuple[int, ...]:
        cached = cls._cache.get((member, vnodes))
        if cached is None:
            prefix = cls._hasher.copy()
            prefix.update(f"{member}#".encode())
            out = []
            for i in range(vnodes):
                hasher = prefix.copy()
                hasher.update(str(i).encode())
                out.append(int.from_bytes(hasher.digest(), "big"))
            cached = cls._cache[member, vnodes] = tuple(sorted(out))
        return cached


class OneBoundRing(Ring):
    """Bounded loads with one bound for every member, ceil(c * K / N): the
    rule before issue 13."""

    __slots__ = ()

    def _capacities(self, count: int) -> dict[int, int]:
        cap = self.capacity(count)
        return {} if cap is None else dict.fromkeys(self._names, cap)


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class Rendezvous:
    """Highest random weight, optionally with bounded loads."""

    def __init__(self, members: Iterable[str], load_factor: float | None) -> None:
        self.members = tuple(sorted(set(members)))
        self.load_factor = load_factor
        self._hashes = [(_hash64(m.encode(), b"peer.bench.hrw"), m) for m in self.members]

    def _ordered(self, key: str) -> list[str]:
        k = _key_hashes(key)[0]
        return [m for _, m in sorted(((_mix(k ^ h), m) for h, m in self._hashes), reverse=True)]

    def _owner(self, key: str) -> str:
        k = _key_hashes(key)[0]
        return max((_mix(k ^ h), m) for h, m in self._hashes)[1]

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        if not self.members:
            return {}
        ordered = sorted(set(keys), key=_processing_order)
        if self.load_factor is None:
            return {key: self._owner(key) for key in ordered}
        cap = Ring(self.members, vnodes=1, load_factor=self.load_factor).capacities(len(ordered))
        load = dict.fromkeys(self.members, 0)
        result = {}
        overflow = []
        for key in ordered:
            member = self._owner(key)
            if load[member] < cap[member]:
                load[member] += 1
                result[key] = member
            else:
                overflow.append(key)
        for key in overflow:
            member = next(m for m in self._ordered(key) if load[m] < cap[m])
            load[member] += 1
            result[key] = member
        return result


Factory = Callable[..., Assigner]


def schemes(quick: bool) -> dict[str, Factory]:
    plain_vnodes = (64, 128, 1024) if quick else (16, 64, 128, 256, 1024)
    bounded_vnodes = (128,) if quick else (64, 128, 256, 1024)
    out: dict[str, Factory] = {}
    for v in plain_vnodes:
        out[f"ring v{v}"] = functools.partial(Ring, vnodes=v, load_factor=None)
    for v in bounded_vnodes:
        out[f"ring v{v} c{LOAD_FACTOR}"] = functools.partial(Ring, vnodes=v, load_factor=LOAD_FACTOR)
    if not quick:
        out[f"one bound v{DEFAULT_VNODES} c{LOAD_FACTOR}"] = functools.partial(
            OneBoundRing, vnodes=DEFAULT_VNODES, load_factor=LOAD_FACTOR
        )
        out[f"classic v{DEFAULT_VNODES} c{LOAD_FACTOR}"] = functools.partial(
            ClassicRing, vnodes=DEFAULT_VNODES, load_factor=LOAD_FACTOR
        )
        out["rendezvous"] = functools.partial(Rendezvous, load_factor=None)
        out[f"rendezvous c{LOAD_FACTOR}"] = functools.partial(Rendezvous, load_factor=LOAD_FACTOR)
    return out


def moved(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(1 for key, member in a.items() if b[key] != member)


def best_ms(run: Callable[[], object], times: int = 3) -> float:
    best = math.inf
    for _ in range(times):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best * 1000


_fresh = iter(range(10**9))


def newcomer() -> str:
    """A member name never hashed before in this process."""
    return f"new-{next(_fresh)}"


def arcs(ring: Ring) -> float:
    """The largest share of the ring any member's arcs cover, over the mean:
    the max/mean of job counts with infinitely many jobs."""
    points = ring._points
    share: Counter[int] = Counter()
    previous = (points[-1] >> 64) - (1 << 64)
    for point in points:
        share[point & _TAG_MASK] += (point >> 64) - previous
        previous = point >> 64
    return max(share.values()) / ((1 << 64) / len(ring.members))


def measure(factory: Factory, n: int, k: int, trials: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    members = [f"node-{i}" for i in range(n)]
    keys = [f"job-{i}" for i in range(k)]
    base_ring = factory(members)  # warms the caches of members' points
    base = base_ring.assign(keys)  # and of keys' hashes
    row = {"build_ms": best_ms(lambda: factory(members))}
    if isinstance(base_ring, Ring):
        row["update_ms"] = best_ms(lambda: factory([*members, newcomer()], previous=base_ring))
    row["assign_ms"] = best_ms(lambda: base_ring.assign(keys), 1 if isinstance(base_ring, Rendezvous) and n * k > 10**5 else 3)
    if isinstance(base_ring, Ring):
        row["arcs"] = arcs(base_ring)
    loads = Counter(base.values())
    joins = [moved(base, factory([*members, f"node-{n + t}"]).assign(keys)) / (k / (n + 1)) for t in range(trials)]
    leaves = [
        moved(base, factory([m for m in members if m != gone]).assign(keys)) / (k / n)
        for gone in rng.sample(members, min(trials, n))
    ]
    return {"max_mean": max(loads.values()) / (k / n), "join": sum(joins) / len(joins), "leave": sum(leaves) / len(leaves), **row}


def view_change(n: int, k: int, legacy: bool) -> dict[str, float]:
    """Costs on the view-change path at ``n`` members, ``k`` jobs."""
    members = [f"node-{i}" for i in range(n)]
    keys = [f"job-{i}" for i in range(k)]
    if legacy:
        LegacyRing._cache.clear()
        started = time.perf_counter()
        LegacyRing(members)
        cold = (time.perf_counter() - started) * 1000
        build = best_ms(lambda: LegacyRing(members), 1 if n >= 1000 else 3)
        return {"build_ms": build, "cold_build_ms": cold}
    _vnode_points.cache_clear()
    _tag.cache_clear()
    _key_hashes.cache_clear()
    started = time.perf_counter()
    ring = Ring(members, load_factor=None)
    cold = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    ring.assign(keys)
    cold_assign = (time.perf_counter() - started) * 1000
    bounded = Ring(members, load_factor=LOAD_FACTOR)
    without = members[1:]
    Ring(without, previous=ring)
    return {
        "build_ms": best_ms(lambda: Ring(members)),
        "join_ms": best_ms(lambda: Ring([*members, newcomer()], previous=ring)),
        "leave_ms": best_ms(lambda: Ring(without, previous=ring)),
        "cold_build_ms": cold,
        "assign_ms": best_ms(lambda: ring.assign(keys)),
        "bounded_assign_ms": best_ms(lambda: bounded.assign(keys)),
        "cold_assign_ms": cold_assign,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="joins and leaves averaged per cell")
    parser.add_argument("--quick", action="store_true", help="fewer schemes, no 1,000-member churn rows")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of tables")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", metavar="TEXT", help="only the schemes whose name holds TEXT")
    args = parser.parse_args(argv)

    def emit(row: dict[str, object], text: str) -> None:
        print(json.dumps({f: round(v, 4) if isinstance(v, float) else v for f, v in row.items()}) if args.json else text, flush=True)

    header = (
        f"{'scheme':<22} {'N':>5} {'K':>6} {'arcs':>5} {'max/mean':>8} {'join':>6} {'leave':>6}"
        f" {'build ms':>9} {'update ms':>9} {'assign ms':>9}"
    )
    if not args.json:
        print(f"c = {LOAD_FACTOR}; join/leave = jobs moved / ideal (K/(N+1), K/N), mean of {args.trials}")
        print(header)
        print("-" * len(header))
    for name, factory in schemes(args.quick).items():
        if args.only not in name:
            continue
        for n in MEMBER_COUNTS:
            if n >= 1000 and (args.quick or name.startswith("rendezvous")):
                continue
            for k in JOB_COUNTS:
                row = measure(factory, n, k, args.trials, args.seed)
                update = f"{row['update_ms']:>9.2f}" if "update_ms" in row else f"{'-':>9}"
                arc = f"{row['arcs']:>5.2f}" if "arcs" in row else f"{'-':>5}"
                emit(
                    {"scheme": name, "n": n, "k": k, **row},
                    f"{name:<22} {n:>5} {k:>6} {arc} {row['max_mean']:>8.2f} {row['join']:>6.2f} {row['leave']:>6.2f}"
                    f" {row['build_ms']:>9.2f} {update} {row['assign_ms']:>9.1f}",
                )
        if not args.json:
            print()

    if not args.json:
        print(f"view change, 10k jobs; shipped: v{DEFAULT_VNODES}; ms (best of 3; legacy at 1,000 members: one build)")
    for n in (100, 1000):
        old = view_change(n, 10_000, legacy=True)
        emit(
            {"scheme": "legacy v1024", "n": n, **old},
            f"legacy v1024   N={n:>5}: build {old['build_ms']:.1f}, cold build {old['cold_build_ms']:.1f}",
        )
        new = view_change(n, 10_000, legacy=False)
        emit(
            {"scheme": f"ring v{DEFAULT_VNODES}", "n": n, **new},
            f"ring v{DEFAULT_VNODES:<8} N={n:>5}: build {new['build_ms']:.2f}, join {new['join_ms']:.2f},"
            f" leave {new['leave_ms']:.2f}, cold build {new['cold_build_ms']:.1f};"
            f" assign {new['assign_ms']:.1f} (c{LOAD_FACTOR}: {new['bounded_assign_ms']:.1f}, cold: {new['cold_assign_ms']:.1f})",
        )


if __name__ == "__main__":
    main()
