"""Job ownership: balance, churn and cost of the candidate schemes.

    python bench/ring_bench.py [--trials 10] [--quick] [--json]

For 10 and 100 members (``node-{i}``) and 100, 1k and 10k jobs (``job-{i}``),
each scheme is measured on:
- max/mean: the most jobs any member owns over the mean K/N;
- join / leave: jobs whose owner changed when one member joins (N -> N+1) or
  one random member leaves (N -> N-1), as a ratio to the ideal, K/(N+1) for
  the join and K/N for the leave; averaged over ``--trials`` joins and leaves.
  1.00 is the minimum any scheme can move on average;
- build: milliseconds to build the ring of a new view (members' points
  cached, as on a running node; best of 3); assign: milliseconds for one
  ``assign()`` of all K jobs (key hashes cached, best of 3). A last line
  gives the cold costs of the default ring: 100 members and 10k jobs never
  hashed before (best of 3).

Schemes:
- ``ring vN``: ``peer.jobs.ring.Ring`` with N vnodes and no load bound;
- ``ring vN c1.1``: ``peer.jobs.ring.Ring`` with bounded loads (the shipped
  algorithm: plain owners first, then overflow walks clockwise);
- ``classic vN c1.1``: Mirrokni et al.'s single pass with keys in ring
  order, each walking clockwise to the first member with room;
- ``rendezvous`` / ``rendezvous c1.1``: highest random weight, and with
  bounded loads (plain owners first, overflow to the next highest weight).
  Pairs are scored with a splitmix64 mix of the key's and member's blake2b
  hashes, cheaper than one blake2b per pair, so its time is a lower bound.

Timings vary with the machine's load; the balance and churn figures are
deterministic.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from peer.jobs.ring import (
    DEFAULT_VNODES,
    Ring,
    _hash64,
    _key_hashes,
    _processing_order,
    _vnode_points,
)

LOAD_FACTOR = 1.10
_MASK = (1 << 64) - 1


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
        cap = self.capacity(len(ordered))
        assert cap is not None
        owners = self._owners
        size = len(owners)
        load = dict.fromkeys(self.members, 0)
        result = {}
        for key in ordered:
            i = self._index(key)
            while load[owners[i]] >= cap:
                i = i + 1 if i + 1 < size else 0
            load[owners[i]] += 1
            result[key] = owners[i]
        return result


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
        cap = Ring(self.members, vnodes=1, load_factor=self.load_factor).capacity(len(ordered))
        assert cap is not None
        load = dict.fromkeys(self.members, 0)
        result = {}
        overflow = []
        for key in ordered:
            member = self._owner(key)
            if load[member] < cap:
                load[member] += 1
                result[key] = member
            else:
                overflow.append(key)
        for key in overflow:
            member = next(m for m in self._ordered(key) if load[m] < cap)
            load[member] += 1
            result[key] = member
        return result


Factory = Callable[[Sequence[str]], Assigner]


def schemes(quick: bool) -> dict[str, Factory]:
    plain_vnodes = (64, 256, 1024) if quick else (16, 64, 256, 1024)
    bounded_vnodes = (256, 1024) if quick else (64, 256, 1024, 2048)
    out: dict[str, Factory] = {}
    for v in plain_vnodes:
        out[f"ring v{v}"] = functools.partial(Ring, vnodes=v, load_factor=None)
    for v in bounded_vnodes:
        out[f"ring v{v} c{LOAD_FACTOR}"] = functools.partial(Ring, vnodes=v, load_factor=LOAD_FACTOR)
    out[f"classic v1024 c{LOAD_FACTOR}"] = functools.partial(ClassicRing, vnodes=1024, load_factor=LOAD_FACTOR)
    out["rendezvous"] = functools.partial(Rendezvous, load_factor=None)
    out[f"rendezvous c{LOAD_FACTOR}"] = functools.partial(Rendezvous, load_factor=LOAD_FACTOR)
    return out


def moved(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(1 for key, member in a.items() if b[key] != member)


def measure(factory: Factory, n: int, k: int, trials: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    members = [f"node-{i}" for i in range(n)]
    keys = [f"job-{i}" for i in range(k)]
    base_ring = factory(members)  # warms the caches of members' points
    base = base_ring.assign(keys)  # and of keys' hashes
    builds = []
    for _ in range(3):
        started = time.perf_counter()
        factory(members)
        builds.append(time.perf_counter() - started)
    timings = []
    for _ in range(1 if isinstance(base_ring, Rendezvous) and n * k > 10**5 else 3):
        started = time.perf_counter()
        base_ring.assign(keys)
        timings.append(time.perf_counter() - started)
    loads = Counter(base.values())
    joins = [
        moved(base, factory([*members, f"node-{n + t}"]).assign(keys)) / (k / (n + 1)) for t in range(trials)
    ]
    leaves = [
        moved(base, factory([m for m in members if m != gone]).assign(keys)) / (k / n)
        for gone in rng.sample(members, min(trials, n))
    ]
    return {
        "max_mean": max(loads.values()) / (k / n),
        "join": sum(joins) / len(joins),
        "leave": sum(leaves) / len(leaves),
        "build_ms": min(builds) * 1000,
        "assign_ms": min(timings) * 1000,
    }


def measure_cold() -> dict[str, float]:
    """A node's first view: no member's points and no key's hashes cached."""
    builds, assigns = [], []
    for _ in range(3):
        _vnode_points.cache_clear()
        _key_hashes.cache_clear()
        started = time.perf_counter()
        ring = Ring([f"node-{i}" for i in range(100)])
        built = time.perf_counter()
        ring.assign(f"job-{i}" for i in range(10_000))
        builds.append(built - started)
        assigns.append(time.perf_counter() - built)
    return {"build_ms": round(min(builds) * 1000, 1), "assign_ms": round(min(assigns) * 1000, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="joins and leaves averaged per cell")
    parser.add_argument("--quick", action="store_true", help="fewer vnode counts")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    header = f"{'scheme':<24} {'N':>4} {'K':>6} {'max/mean':>8} {'join':>6} {'leave':>6} {'build ms':>9} {'assign ms':>9}"
    if not args.json:
        print(f"c = {LOAD_FACTOR}; join/leave = jobs moved / ideal (K/(N+1), K/N), mean of {args.trials}")
        print(header)
        print("-" * len(header))
    for name, factory in schemes(args.quick).items():
        for n in (10, 100):
            for k in (100, 1000, 10_000):
                row = measure(factory, n, k, args.trials, args.seed)
                if args.json:
                    print(json.dumps({"scheme": name, "n": n, "k": k, **{f: round(v, 4) for f, v in row.items()}}))
                else:
                    print(
                        f"{name:<24} {n:>4} {k:>6} {row['max_mean']:>8.2f} {row['join']:>6.2f} {row['leave']:>6.2f}"
                        f" {row['build_ms']:>9.1f} {row['assign_ms']:>9.1f}",
                        flush=True,
                    )
        if not args.json:
            print()
    cold = measure_cold()
    if args.json:
        print(json.dumps({"scheme": f"cold ring v{DEFAULT_VNODES}", "n": 100, "k": 10_000, **cold}))
    else:
        print(
            f"cold, default ring (v{DEFAULT_VNODES}), 100 members, 10k jobs: build {cold['build_ms']:.1f} ms,"
            f" first assign {cold['assign_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
