"""Chaos campaigns: many seeds, each its own random run, and the invariants
every run must keep.

Theory of operation
-------------------
A seed draws its run from nothing but the seed. Two draws exist:

- ``wide`` (``draw_wide``, the default) draws the workload too: the
  cluster size (3..25, by ``SIZE_BANDS``: small clusters likelier, since a
  big one costs several times more), the tick interval (1..10 s), 1..8
  jobs in mode one and 0..2 in mode all (the interval lengthened, then jobs
  dropped, where the load they make would exceed ``LOAD_CAP``), one-offs,
  *long* one-offs that run for seconds and finish only once every update a
  client sent them through random nodes reached them (so a lost update is a
  run that never finishes), and whether nodes start as agents do (a jobs
  file defined at every boot, a boot delay). Its faults are the classic
  kinds plus graceful restarts under the same name, a deploy (a rolling
  restart that waits for readiness), scale up and down, and kill -9 during
  a run (``Kill``: the node executing the most runs when it fires, or the
  first to start one, dies mid-run).
- ``classic`` (``draw_classic``) is the draw the first campaigns used,
  unchanged, for its seeds kept as regressions: a fixed cluster and
  workload, and faults: how far the nodes' clocks are off and drift, then
  degraded-network windows (loss up to 30 %, duplication, latency with
  jitter that reorders), one- and two-way partitions, clogged links,
  crashes (some restarted quickly, some late, some never), pauses,
  wall-clock steps, late joins and a rolling restart by graceful leaves.

Faults fall within the *faulty phase*; a *healed phase* with no fault at
all follows. The mix becomes a jobs scenario (``sim.jobs_scenario``): the
nodes run the scheduler with cron jobs in both modes and one-off runs, and
the simulated executor records what really ran. The same seed always draws
the same mix and yields the same trace, byte for byte, under one string-hash
seed: the scheduler walks some sets of strings, so ``python -m sim`` runs
under ``PYTHONHASHSEED=0`` unless given one, and ``run_campaign`` runs seeds
in worker processes under it when its own interpreter hashes at random.

After the run, ``check`` holds it to the invariants, each named:

- ``membership_converged``: every running node's view equals the truth
  within ``disturbance_window`` of the heal (the longest suspicion plus a
  reconnect: after a partition, the two sides may have declared each other
  dead and meet again only by reconnecting);
- ``false_failure``: no running node declared failed at a time no fault
  explains (a partition, pause or clog between the two, or a degraded
  network: loss may cause a false suspicion, but nothing else may);
- ``crash_detected``: every node that crashed (or was killed) and stayed
  down for ``detection_bound`` was declared failed by every running node
  within it;
- ``maps_converged``: every running node holds the same winner for every key
  of every replicated map written ``MAPS_SETTLE`` seconds before the end (keys
  at their expiry's edge excepted);
- ``tick_missed``: every cron tick ran at least once (mode one: every tick;
  mode all: every tick on each node up around it);
- ``result_lost``: every result, and every one-off submitted, is still held
  by some running node (unless it died with the node it was written on,
  before that node could pass it on);
- ``result_not_everywhere``: every result finished ``MAPS_SETTLE`` before
  the end, and not at its expiry's edge, is readable on every node up and
  ready for that long, once all views have been right for that long (nodes
  that hold each other dead do not sync);
- ``oneoff_unfinished``: every acknowledged one-off has succeeded by the
  end (given the time a failover takes), unless it never left a node that
  died (a long one waits for every update acknowledged to its client, but
  one that never left the node that took it, before that node died);
- ``same_attempt``: no attempt of a run started twice (a re-run takes
  attempt + 1), unless the first claim died unseen with its node (or with
  every node that held it), or a fault cut the second node off from one
  that had run it: a partition between them, a pause or clog of either, a
  degraded network (partitions are outside the run-once promise; graceful
  operations are not). A re-run of what a node killed mid-run was running,
  under the attempt its claim had (the claim reached some nodes, not that
  one), is counted (``same_attempt_after_death``), not failed;
- ``duplicate_in_stable`` / ``late_in_stable``: no run executed twice, and
  no tick started more than ``LATE_BOUND`` late on its node's own clock, in a
  *stable stretch*: no fault active, and all views right for ``STABLE_MARGIN``
  seconds (duplicates and late ticks elsewhere are counted, not failed);
- ``duplicate_in_graceful``: no run executed twice around graceful
  operations only (``GRACEFUL``: deploys, restarts, scaling, leaves, joins)
  with no other fault within the disturbance window. Duplicates are
  reported by the kinds of fault around them (``duplicates_by_fault``);
- ``stuck_run``: no run recorded running (or pending, past its due time) for
  longer than ``stuck_after`` (detection, a grace, a scan) that no node is
  executing;
- ``memory``: once the records' TTL has passed, no node holds a record past
  its expiry, more members than nodes (scaled up included), or more of its
  own bookkeeping than the work in flight needs.

A fault's span is the one it had in the run: a deploy lasts until its last
node is ready again, a kill from when it landed until its node was back, and
a crash no fault made (a supervisor killing a process still draining to
start the new one) counts as a crash.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from membership.suspicion import detection_bound
from peer.core.replication import ReplicationConfig
from peer.jobs.runs import RunState
from peer.jobs.scheduler import MAPS
from sim.faults import (
    ClockStep,
    Clog,
    Crash,
    Degrade,
    Fault,
    Join,
    Kill,
    Leave,
    Partition,
    Pause,
    Restart,
    RollingRestart,
    ScaleDown,
    ScaleUp,
)
from sim.jobs_scenario import JobsRun, JobsScenario, scheduler_of
from sim.node import Life, node_core_of

# Seconds all views must have been right (and no fault active) before a
# stretch counts as stable: a restarted node settles (2 s), says it is
# ready, and its jobs wait a handover (1.5 s) — with room for the gossip.
STABLE_MARGIN = 10.0
# A tick in a stable stretch starts within this of its time, on its node's clock.
LATE_BOUND = 1.0
# A record written this long before the end must be on every running node:
# gossip may miss a node, and the digest syncs (every 10 s, with one random
# member) repair that within two rounds or so.
MAPS_SETTLE = 2 * ReplicationConfig().sync_interval + 5.0
# Jobs keep their records this long, so that the run outlives them.
RESULT_TTL = 40.0
# The faults start when the jobs have been defined and the cluster has settled.
FAULTS_START = 10.0


# The draws a campaign may make per seed: "wide" (the default) draws the
# workload too; "classic" is the fixed mix every seed was drawn with before,
# kept as it was so that the seeds found with it still replay the same runs.
MIXES = ("wide", "classic")


@attrs.frozen
class Campaign:
    """What every seed of a campaign shares."""

    nodes: int = 7  # the cluster size of the classic mix (the wide mix draws its own)
    duration: float = 150.0
    heal: float = 80.0  # the last seconds: no fault at all
    mix: str = attrs.field(default="wide", validator=attrs.validators.in_(MIXES))

    @property
    def faulty_end(self) -> float:
        return self.duration - self.heal

    def replay(self, seed: int) -> str:
        nodes = f" --nodes {self.nodes}" if self.mix == "classic" else ""
        return f"python -m sim chaos --mix {self.mix} --seeds {seed}{nodes} --duration {self.duration:g} --heal {self.heal:g} --json"


@attrs.frozen
class FaultMix:
    """What one seed drew: the workload and its faults."""

    seed: int
    drift: float
    wall_skew: float
    faults: tuple[Fault, ...]
    mix: str = "classic"
    nodes: int = 7
    every: float = 2.0
    cron_jobs: int = 6
    all_jobs: int = 1
    oneoffs: int = 30
    long_oneoffs: int = 0
    ready_oneoffs: int = 0
    all_ready_oneoffs: int = 0
    jobs_file: bool = False
    boot_delay: tuple[float, float] = (0.0, 0.0)

    def describe(self) -> list[str]:
        start = "jobs file on every node" if self.jobs_file else "jobs defined once by node 0"
        if self.boot_delay != (0.0, 0.0):
            start += f", boot delay {self.boot_delay[0]:.2f}-{self.boot_delay[1]:.2f} s"
        lines = [
            f"workload ({self.mix}): {self.nodes} nodes, every {self.every:g} s {self.cron_jobs} jobs in mode one and "
            f"{self.all_jobs} in mode all, {self.oneoffs} one-offs and {self.long_oneoffs} long ones taking updates, "
            f"{self.ready_oneoffs} per node ready and {self.all_ready_oneoffs} per cluster ready; {start}",
            f"clocks: drift up to {self.drift * 1e6:.0f} ppm, wall clocks off by up to {self.wall_skew:.2f} s",
        ]
        for fault in sorted(self.faults, key=lambda f: (f.start, type(f).__name__)):
            lines.append(_describe(fault))
        return lines

    @property
    def slots(self) -> int:
        """Nodes there may be at once: the initial ones and those scaled up."""
        return self.nodes + sum(f.count for f in self.faults if isinstance(f, ScaleUp))


def _describe(fault: Fault) -> str:
    name = type(fault).__name__.lower()
    fields = {k: v for k, v in attrs.asdict(fault, recurse=False).items() if v is not None}
    parts = []
    for key, value in fields.items():
        if isinstance(value, frozenset):
            value = ",".join(str(i) for i in sorted(value))
        elif isinstance(value, tuple):
            value = ",".join(str(i) for i in value)
        elif isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    return f"{name}: " + " ".join(parts)


class _Busy:
    """When each node is already crashed, leaving, joining or paused: one
    life-changing fault per node at a time."""

    def __init__(self) -> None:
        self._spans: dict[int, list[tuple[float, float]]] = {}

    def free(self, index: int, start: float, end: float) -> bool:
        return all(end + 2.0 < a or start > b + 2.0 for a, b in self._spans.get(index, ()))

    def take(self, index: int, start: float, end: float) -> None:
        self._spans.setdefault(index, []).append((start, end))


def draw_mix(seed: int, campaign: Campaign) -> FaultMix:
    """The seed's workload and fault mix, by the campaign's kind of draw."""
    return draw_wide(seed, campaign) if campaign.mix == "wide" else draw_classic(seed, campaign)


class _FaultDraw:
    """The faults both draws have, one drawn per call, with the draws of
    the seed's generator in a fixed order (a seed's mix must not change).
    Node 0 (a seed node) is never crashed, paused or stopped, so a
    restarted node always has someone to join through."""

    def __init__(self, rng: random.Random, nodes: int, campaign: Campaign) -> None:
        self.rng, self.n = rng, nodes
        self.start, self.end, self.duration = FAULTS_START, campaign.faulty_end, campaign.duration
        self.others = list(range(1, nodes))
        self.busy = _Busy()
        self.faults: list[Fault] = []

    def window(self, shortest: float, longest: float) -> tuple[float, float]:
        length = self.rng.uniform(shortest, min(longest, self.end - self.start))
        at = self.rng.uniform(self.start, self.end - length)
        return at, length

    def some(self, low: int, high: int) -> frozenset[int]:
        return frozenset(self.rng.sample(range(self.n), self.rng.randint(low, max(low, high))))

    def degrade(self) -> None:
        rng = self.rng
        at, length = self.window(3.0, 25.0)
        latency = rng.choice([None, rng.uniform(0.002, 0.1)])
        jitter = None if latency is None else latency * rng.uniform(0.2, 1.0)
        self.faults.append(Degrade(rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.05), at, length, latency, jitter))

    def partition(self) -> None:
        at, length = self.window(2.0, 15.0)
        a = self.some(1, self.n // 2)
        self.faults.append(Partition(a, frozenset(range(self.n)) - a, at, length, one_way=self.rng.random() < 0.4))

    def clog(self) -> None:
        at, length = self.window(0.5, 5.0)
        self.faults.append(Clog(self.some(1, max(1, self.n // 3)), at, length))

    def crash(self) -> None:
        rng = self.rng
        index = rng.choice(self.others)
        kind = rng.random()
        at = rng.uniform(self.start, self.end - 12.0)
        room = self.end - at  # back before the heal
        if kind < 0.4:
            restart: float | None = rng.uniform(1.0, min(10.0, room))
        elif kind < 0.7:
            restart = rng.uniform(min(25.0, room), room)  # long enough to be declared failed
        else:
            restart = None  # gone for good
        until = at + restart if restart is not None else self.duration
        if self.busy.free(index, at, until):
            self.busy.take(index, at, until)
            self.faults.append(Crash(frozenset({index}), at, restart))

    def pause(self) -> None:
        index = self.rng.choice(self.others)
        at, length = self.window(1.0, 8.0)
        if self.busy.free(index, at, at + length):
            self.busy.take(index, at, at + length)
            self.faults.append(Pause(frozenset({index}), at, length))

    def clock_step(self) -> None:
        rng = self.rng
        self.faults.append(ClockStep(frozenset({rng.randrange(self.n)}), rng.uniform(self.start, self.end), rng.uniform(-10.0, 10.0)))

    def join(self) -> None:
        """A node that joins late."""
        index = self.rng.choice(self.others)
        at = self.rng.uniform(self.start, self.end - 5.0)
        if self.busy.free(index, 0.0, at):
            self.busy.take(index, 0.0, at)
            self.faults.append(Join(frozenset({index}), at))

    def leaves(self, fewest: int, most: int) -> None:
        """Graceful leaves, one node after the other, each coming back a few
        seconds later."""
        rng = self.rng
        at = rng.uniform(self.start, self.end - 20.0)
        for index in rng.sample(self.others, rng.randint(fewest, most)):
            back = rng.uniform(2.0, 5.0)
            if at + back > self.end:
                break
            if self.busy.free(index, at, at + back):
                self.busy.take(index, at, at + back)
                self.faults.append(Leave(frozenset({index}), at, rejoin_after=back))
            at += back + rng.uniform(3.0, 8.0)


def draw_classic(seed: int, campaign: Campaign) -> FaultMix:
    """The classic draw: ``campaign.nodes`` nodes, a fixed workload, and
    faults. Not one draw may change here: the seeds kept as regressions are
    seeds of this draw."""
    rng = random.Random(f"chaos/{seed}")
    n = campaign.nodes
    draw = _FaultDraw(rng, n, campaign)
    for _ in range(rng.randint(0, 3)):
        draw.degrade()
    for _ in range(rng.randint(0, 2)):
        draw.partition()
    for _ in range(rng.randint(0, 2)):
        draw.clog()
    for _ in range(rng.randint(0, 2)):
        draw.crash()
    for _ in range(rng.randint(0, 2)):
        draw.pause()
    for _ in range(rng.randint(0, 2)):
        draw.clock_step()
    if rng.random() < 0.3 and n > 3:
        draw.join()
    if rng.random() < 0.3:
        draw.leaves(2, len(draw.others))  # a rolling restart, as the first campaigns had it
    drift = rng.choice([0.0, 1e-5, 1e-4])
    wall_skew = rng.choice([0.0, 0.05, 0.5, 2.0])
    return FaultMix(seed, drift, wall_skew, tuple(draw.faults), nodes=n)


# The wide draw's cluster sizes: bands of sizes, each drawn with its weight
# (uniformly within it). Small clusters are common and cheap; a big one
# costs several times a small one (every write goes to every node), so big
# ones are rarer, to keep the average seed affordable.
SIZE_BANDS = ((3, 6, 0.40), (7, 12, 0.32), (13, 18, 0.16), (19, 25, 0.12))
# The work a seed's jobs make, in node-writes per simulated second (a tick's
# run is written on every node; a job in mode all has a run per node): at
# most this many. The tick interval and the job counts are drawn freely,
# then, over it, the interval is lengthened, then jobs dropped. What the
# simulation costs grows with it (it dominates big clusters' cost).
LOAD_CAP = 80.0
# The share of wide seeds whose only faults are graceful operations.
GRACEFUL_SHARE = 0.2
# How long a node takes to go through a graceful restart (drain, exit,
# start, boot, settle, ready), to fit deploys in the faulty phase.
RESTART_SECONDS = 9.0


def _load(nodes: int, every: float, cron: int, alls: int) -> float:
    return nodes * (cron + alls * nodes) / every


def draw_wide(seed: int, campaign: Campaign) -> FaultMix:
    """The wide draw: the cluster size (3..25, small ones likelier), the
    tick interval (1..10 s), the jobs (1..8 in mode one, 0..2 in mode all),
    one-offs, long ones taking updates, whether the nodes start as agents
    do (a jobs file, a boot delay), and faults: today's kinds, and graceful
    restarts, deploys, scale up and down, and kill -9 during a run.

    Node 0 is never crashed, killed, paused or stopped for long (a deploy
    may restart it gracefully). Each node has at most one life-changing
    fault at a time (``_Busy``); the nodes a scale-down will take are
    reserved from then on; kills are drawn last, among the nodes left free."""
    rng = random.Random(f"chaos-wide/{seed}")
    low, high, _ = rng.choices(SIZE_BANDS, weights=[w for _, _, w in SIZE_BANDS])[0]
    n = rng.randint(low, high)
    every = rng.randint(1, 10)
    cron = rng.randint(1, 8)
    alls = rng.choice([0, 1, 1, 2])
    while _load(n, every, cron, alls) > LOAD_CAP and every < 10:
        every += 1
    while _load(n, every, cron, alls) > LOAD_CAP and alls > 0:
        alls -= 1
    while _load(n, every, cron, alls) > LOAD_CAP and cron > 1:
        cron -= 1
    oneoffs = rng.randint(5, 40)
    long_oneoffs = rng.randint(1, 8) if rng.random() < 0.7 else 0
    ready_oneoffs = 1 if rng.random() < 0.3 else 0
    all_ready_oneoffs = rng.randint(1, 3) if rng.random() < 0.3 else 0
    jobs_file = rng.random() < 0.6
    boot_delay = (0.0, 0.0)
    if jobs_file:
        first = round(rng.uniform(0.1, 0.3), 2)
        boot_delay = (first, round(first + rng.uniform(0.1, 0.3), 2))

    draw = _FaultDraw(rng, n, campaign)
    start, end, others, busy, faults = draw.start, draw.end, draw.others, draw.busy, draw.faults
    # Some seeds have graceful operations only (and clock skew): what the
    # run-once promise covers whole, so not a duplicate is allowed there.
    graceful = rng.random() < GRACEFUL_SHARE

    def count(low: int, high: int) -> int:
        drawn = rng.randint(low, high)
        return 0 if graceful else drawn

    # Scaling first: the nodes a scale-down takes are known (the highest
    # indices, spares first), and reserved for it.
    likelier = 2.0 if graceful else 1.0  # graceful operations, in seeds that have only those
    spares = 0
    if rng.random() < 0.25 * likelier:
        spares = rng.randint(1, 3)
        faults.append(ScaleUp(spares, rng.uniform(start, end - 10.0)))
    if rng.random() < 0.25 * likelier and n > 3:
        leaving = rng.randint(1, min(3, n - 3))
        at = rng.uniform(start, end - 5.0)
        faults.append(ScaleDown(leaving, at))
        for index in range(n - leaving, n):
            busy.take(index, at, campaign.duration)
    for _ in range(count(0, 3)):
        draw.degrade()
    for _ in range(count(0, 2)):
        draw.partition()
    for _ in range(count(0, 2)):
        draw.clog()
    if rng.random() < 0.3 * likelier:
        # A deploy: one node after another restarts gracefully, each once
        # the one before is ready again; as many as fit in the faulty phase.
        at = rng.uniform(start, end - 2 * RESTART_SECONDS)
        fit = max(1, int((end - at) / (RESTART_SECONDS + 3.0)))
        order = rng.sample(range(n), min(n, fit, rng.randint(2, 8)))
        gap = round(rng.uniform(0.5, 3.0), 2)
        until = at + len(order) * (RESTART_SECONDS + gap)
        order = [index for index in order if busy.free(index, at, until)]
        if order:
            for index in order:
                busy.take(index, at, until)
            faults.append(RollingRestart(at, tuple(order), gap, round(rng.uniform(0.2, 1.0), 2)))
    for _ in range(rng.randint(0, 2)):
        index = rng.choice(others)
        at = rng.uniform(start, end - RESTART_SECONDS)
        # Held for longer than it takes: a drain waits for long runs.
        if busy.free(index, at, at + 2 * RESTART_SECONDS):
            busy.take(index, at, at + 2 * RESTART_SECONDS)
            faults.append(Restart(frozenset({index}), at, round(rng.uniform(0.2, 1.0), 2)))
    for _ in range(count(0, 2)):
        draw.crash()
    for _ in range(count(0, 2)):
        draw.pause()
    for _ in range(count(0, 2)):
        draw.clock_step()
    if rng.random() < 0.2 and n > 3:
        draw.join()
    if rng.random() < 0.2:
        draw.leaves(1, min(4, len(others)))
    # kill -9 mid-run, among the nodes free then; the run picks the busiest.
    for _ in range(0 if graceful else rng.choice([0, 1, 1, 2])):
        at = rng.uniform(start, end - 15.0)
        patience = 10.0
        kind = rng.random()
        restart = rng.uniform(1.0, 10.0) if kind < 0.7 else (rng.uniform(25.0, 40.0) if kind < 0.85 else None)
        until = at + patience + (restart if restart is not None else campaign.duration)
        candidates = frozenset(i for i in others if busy.free(i, at, until))
        if candidates:
            faults.append(Kill(candidates, at, None if restart is None else round(restart, 2), patience))
    drift = rng.choice([0.0, 1e-5, 1e-4])
    wall_skew = rng.choice([0.0, 0.05, 0.5, 2.0])
    return FaultMix(
        seed, drift, wall_skew, tuple(faults), mix="wide", nodes=n, every=float(every), cron_jobs=cron,
        all_jobs=alls, oneoffs=oneoffs, long_oneoffs=long_oneoffs, ready_oneoffs=ready_oneoffs,
        all_ready_oneoffs=all_ready_oneoffs, jobs_file=jobs_file, boot_delay=boot_delay,
    )


def scenario_of(mix: FaultMix, campaign: Campaign) -> JobsScenario:
    return JobsScenario(
        nodes=mix.nodes,
        seed=mix.seed,
        duration=campaign.duration,
        seeds=min(3, mix.nodes),
        drift=mix.drift,
        wall_skew=mix.wall_skew,
        faults=mix.faults,
        cron_jobs=mix.cron_jobs,
        all_jobs=mix.all_jobs,
        every=mix.every,
        oneoffs=mix.oneoffs,
        long_oneoffs=mix.long_oneoffs,
        ready_oneoffs=mix.ready_oneoffs,
        all_ready_oneoffs=mix.all_ready_oneoffs,
        jobs_file=mix.jobs_file,
        boot_delay=mix.boot_delay,
        heal=campaign.heal,
        result_ttl=RESULT_TTL,
    )


@attrs.frozen
class Violation:
    invariant: str
    detail: str


@attrs.define
class SeedResult:
    seed: int
    mix: FaultMix
    figures: dict[str, Any]
    violations: list[Violation]
    trace_hash: str
    sim_seconds: float
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mix": self.mix.describe(),
            **self.figures,
            "violations": [attrs.asdict(v) for v in self.violations],
            "trace_hash": self.trace_hash,
        }


def run_seed(seed: int, campaign: Campaign) -> SeedResult:
    started = time.perf_counter()  # what a seed costs: building, running and checking it
    cpu_started = time.process_time()  # the same in CPU time: what a shared machine cannot inflate
    mix = draw_mix(seed, campaign)
    run = JobsRun(scenario_of(mix, campaign))
    run.run_until(campaign.duration)
    report = run.measure_jobs()
    figures, violations = check(run, report, campaign)
    wall = time.perf_counter() - started
    figures["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
    return SeedResult(seed, mix, figures, violations, report["trace_hash"], run.sim.now, wall)


def parse_seeds(text: str) -> range:
    """``A..B`` (both included) or a single seed."""
    first, dots, last = text.partition("..")
    try:
        seeds = range(int(first), int(last if dots else first) + 1)
    except ValueError:
        raise ValueError(f"bad seeds {text!r}: expected A..B or a number") from None
    if not seeds:
        raise ValueError(f"bad seeds {text!r}: the range is empty")
    return seeds


def _verified(seed: int, share: float) -> bool:
    """Is this seed one of the share re-run to prove the trace repeats?"""
    return share > 0 and random.Random(f"verify/{seed}").random() < share


def _run_and_verify(job: tuple[int, Campaign, float]) -> SeedResult:
    seed, campaign, share = job
    try:
        result = run_seed(seed, campaign)
    except Exception:  # noqa: BLE001 - a crash of the simulation is a finding too: report it with its seed
        crash = Violation("simulation_crashed", traceback.format_exc(limit=-4).strip())
        return SeedResult(seed, draw_mix(seed, campaign), {}, [crash], "", 0.0, 0.0)
    if _verified(seed, share):
        again = run_seed(seed, campaign)
        result.figures["replayed"] = True
        if again.trace_hash != result.trace_hash:
            result.violations.append(
                Violation("determinism", f"trace {result.trace_hash} then {again.trace_hash} from the same seed")
            )
    return result


def run_campaign(
    seeds: Sequence[int],
    campaign: Campaign,
    *,
    verify_share: float = 0.1,
    workers: int = 1,
    on_result: Callable[[SeedResult], None] | None = None,
) -> dict[str, Any]:
    """Run every seed (on ``workers`` processes), re-running a share of them
    to check they repeat their trace; the summary."""
    jobs = [(seed, campaign, verify_share) for seed in seeds]
    results: list[SeedResult] = []

    def collect(found: Iterator[SeedResult]) -> None:
        for result in found:
            results.append(result)
            if on_result is not None:
                on_result(result)

    if workers > 1 or not hash_seed_fixed():
        # Worker processes, under the string-hash seed the CLI runs with
        # (an interpreter started without one, pytest's say, would run a
        # seed otherwise than its replay line does).
        with _fixed_hash_seed(), multiprocessing.get_context("spawn").Pool(workers) as pool:
            collect(pool.imap(_run_and_verify, jobs))
    else:
        collect(map(_run_and_verify, jobs))
    return summarize(results, campaign)


def hash_seed_fixed() -> bool:
    """Does this interpreter hash strings by a seed it was given? The
    scheduler walks some sets of strings, so the trace of a seed may depend
    on it (``python -m sim`` fixes it at 0 unless given one)."""
    return "PYTHONHASHSEED" in os.environ or not sys.flags.hash_randomization


@contextlib.contextmanager
def _fixed_hash_seed() -> Iterator[None]:
    """Processes started meanwhile hash strings as ``python -m sim`` does."""
    before = os.environ.get("PYTHONHASHSEED")
    if before is None:
        os.environ["PYTHONHASHSEED"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONHASHSEED"]


def summarize(results: Sequence[SeedResult], campaign: Campaign) -> dict[str, Any]:
    def total(name: str) -> int:
        return sum(r.figures.get(name) or 0 for r in results)

    def worst(name: str) -> float | None:
        values = [r.figures[name] for r in results if r.figures.get(name) is not None]
        return max(values, default=None)

    ticks = total("ticks_expected")
    sim_seconds = sum(r.sim_seconds for r in results)
    wall_seconds = sum(r.wall_seconds for r in results)
    one = {"trace_hash": results[0].trace_hash, "mix": results[0].mix.describe()} if len(results) == 1 else {}
    return {
        **one,
        "seeds": len(results),
        "first_seed": min((r.seed for r in results), default=None),
        "last_seed": max((r.seed for r in results), default=None),
        "draw": campaign.mix,
        "nodes": campaign.nodes if campaign.mix == "classic" else "drawn",
        "duration": campaign.duration,
        "heal": campaign.heal,
        "violations": [{"seed": r.seed, "invariant": v.invariant, "detail": v.detail} for r in results for v in r.violations],
        "failing": [
            {"seed": r.seed, "mix": r.mix.describe(), "replay": campaign.replay(r.seed), "trace_hash": r.trace_hash}
            for r in results
            if r.violations
        ],
        "replayed": sum(bool(r.figures.get("replayed")) for r in results),
        "ticks_expected": ticks,
        "missed": total("missed"),
        "duplicates": total("duplicates"),
        "duplicates_per_10k_ticks": round(10_000 * total("duplicates") / ticks, 1) if ticks else None,
        "duplicates_in_stable": total("duplicates_in_stable"),
        "duplicates_in_graceful": total("duplicates_in_graceful"),
        "same_attempt_starts": total("same_attempt_starts"),
        "same_attempt_unexplained": total("same_attempt_unexplained"),
        "same_attempt_after_death": total("same_attempt_after_death"),
        "oneoffs_submitted": total("oneoffs_submitted"),
        "oneoffs_unfinished": total("oneoffs_unfinished"),
        "long_oneoffs": total("long_oneoffs"),
        "updates_sent": total("updates_sent"),
        "updates_lost_with_their_node": total("updates_lost_with_their_node"),
        "kills": total("kills"),
        "results_not_everywhere": total("results_not_everywhere"),
        "results_checked_everywhere": total("results_checked_everywhere"),
        "reruns_after_lost_success": total("reruns_after_lost_success"),
        "duplicates_by_fault": dict(
            sum((Counter(r.figures.get("duplicates_by_fault", {})) for r in results), Counter()).most_common()
        ),
        "late_ticks": total("late_ticks"),
        "late_in_stable": total("late_in_stable"),
        "lost_results": total("lost_results"),
        "lost_with_their_node": total("oneoffs_lost_with_submitter") + total("results_lost_with_their_node"),
        "false_failures": total("false_failures"),
        "false_failures_under_loss": total("false_failures_under_loss"),
        "stuck_runs": total("stuck_runs"),
        "detection_max_seconds": worst("detection_max_seconds"),
        "convergence_after_heal_max_seconds": worst("convergence_after_heal_seconds"),
        "sim_seconds_per_wall_second": round(sim_seconds / wall_seconds, 1) if wall_seconds else None,
        "wall_seconds_per_seed": round(wall_seconds / len(results), 2) if results else None,
        "cpu_seconds_per_seed": round(total("cpu_seconds") / len(results), 2) if results else None,
        "wall_seconds_by_size": _by_size(results),
    }


# Cluster sizes the cost is reported by.
SIZE_REPORT_BANDS = ((3, 6), (7, 12), (13, 18), (19, 40))


def _by_size(results: Sequence[SeedResult]) -> dict[str, dict[str, float]]:
    """Seeds, and the mean and the largest wall seconds a seed took (one
    run: a replay is not counted), and its mean CPU seconds, by band of
    cluster size."""
    bands: dict[str, dict[str, float]] = {}
    for low, high in SIZE_REPORT_BANDS:
        ran = [r for r in results if low <= r.mix.nodes <= high and r.wall_seconds]
        if ran:
            walls = [r.wall_seconds for r in ran]
            cpu = [r.figures.get("cpu_seconds") or 0.0 for r in ran]
            bands[f"{low}-{high}"] = {
                "seeds": len(ran), "mean": round(sum(walls) / len(walls), 2), "max": round(max(walls), 2),
                "cpu_mean": round(sum(cpu) / len(cpu), 2),
            }
    return bands


# -- the invariants ------------------------------------------------------------------------


def check(run: JobsRun, report: dict[str, Any], campaign: Campaign) -> tuple[dict[str, Any], list[Violation]]:
    """The figures of one run, and the invariants it broke."""
    checker = _Checker(run, report, campaign)
    checker.membership()
    checker.jobs()
    checker.maps()
    checker.memory()
    return checker.figures, checker.violations


# Operations the run-once promise covers: a duplicate around them, and
# around no other fault, fails the seed.
GRACEFUL = (Restart, RollingRestart, ScaleUp, ScaleDown, Leave, Join)


class _Checker:
    def __init__(self, run: JobsRun, report: dict[str, Any], campaign: Campaign) -> None:
        self.run, self.report, self.campaign = run, report, campaign
        self.faults = run.scenario.faults
        self.window = run.disturbance_window
        self.violations: list[Violation] = []
        self.figures: dict[str, Any] = {}
        self.up = [node for node in run.nodes if node.life is Life.UP and node.core is not None]
        # Each fault's span as it happened: a deploy lasts until its last
        # node is ready again, a kill lands when it finds a run.
        self.spans = [(fault, *self._span(fault)) for fault in self.faults]
        # A crash no fault made: a supervisor killed a process still
        # draining to start the new one (a leave's rejoin came first). Not
        # graceful, whatever fault led to it.
        made = {(i, f.at) for f in self.faults if isinstance(f, Crash) for i in f.nodes}
        made |= {(i, t) for t, i, _ in run.kills}
        for index, when in run.crashes:
            if (index, when) not in made:
                back = run.back_up_after(index, when)
                crash = Crash(frozenset({index}), when, None if back is None else back - when)
                self.spans.append((crash, when, campaign.duration if back is None else back))

    def fail(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(invariant, detail))

    def _span(self, fault: Fault) -> tuple[float, float]:
        run, end = self.run, self.campaign.duration

        def ready_after(index: int, t: float) -> float:
            return min((r for r in run.ready_times.get(index, ()) if r > t), default=end)

        if isinstance(fault, RollingRestart):
            return fault.start, run.roll_ends.get(fault.at, end)
        if isinstance(fault, Restart):
            return fault.start, max(ready_after(index, fault.at) for index in fault.nodes)
        if isinstance(fault, ScaleUp):
            spares = range(run.scenario.nodes, run.scenario.slots)
            return fault.start, max((ready_after(i, fault.at) for i in spares), default=fault.at)
        if isinstance(fault, ScaleDown):
            return fault.start, fault.at + run.scheduler_config.drain_timeout  # a drain's longest
        if isinstance(fault, Kill):
            for t, index, restart in run.kills:
                if fault.at <= t <= fault.at + fault.patience and index in fault.candidates and restart == fault.restart_after:
                    return t, t + (restart or 0.0)
            return fault.start, fault.at + fault.patience
        return fault.start, fault.end

    # -- stretches of time ------------------------------------------------------------

    def fault_active(self, t: float, after: float = 0.0) -> bool:
        return any(start <= t <= end + after for _, start, end in self.spans)

    def stable(self, t: float) -> bool:
        """No fault active, and all views right, since STABLE_MARGIN ago."""
        if self.fault_active(t, after=STABLE_MARGIN):
            return False
        return any(a + STABLE_MARGIN <= t <= b for a, b in self.run.converged_spans)

    def faults_around(self, t: float) -> list[str]:
        """The kinds of fault active at ``t`` or lately (``STABLE_MARGIN``):
        what a duplicate may be blamed on."""
        return sorted({type(f).__name__.lower() for f, start, end in self.spans if start <= t <= end + STABLE_MARGIN}) or ["none"]

    def degraded(self, t: float) -> bool:
        return any(isinstance(f, Degrade) and f.start <= t <= f.end + self.window for f in self.faults)

    def graceful_only(self, t: float) -> bool:
        """Graceful operations around ``t`` (``STABLE_MARGIN``), and no
        other fault within the disturbance window: what run-once covers."""
        around = [f for f, start, end in self.spans if start <= t <= end + STABLE_MARGIN]
        others = [f for f, start, end in self.spans if not isinstance(f, GRACEFUL) and start <= t <= end + self.window]
        return bool(around) and all(isinstance(f, GRACEFUL) for f in around) and not others

    def cut_apart(self, a: int, b: int, since: float, until: float) -> bool:
        """Did a fault cut nodes ``a`` and ``b`` apart at some time between
        ``since`` and ``until`` (or within the disturbance window before):
        a partition between them, a pause or clog of either, a degraded
        network? The explanations ``false_failure`` accepts."""
        return any(
            start <= until and end + self.window >= since and (isinstance(f, Degrade) or f.disturbs(a, b))
            for f, start, end in self.spans
        )

    # -- membership --------------------------------------------------------------------

    def membership(self) -> None:
        run, report, heal_start = self.run, self.report, self.campaign.faulty_end
        since = run.converged_since
        settled = None if since is None else max(0.0, since - heal_start)
        self.figures["convergence_after_heal_seconds"] = None if settled is None else round(settled, 3)
        if since is None:
            self.fail("membership_converged", "the views differ from the truth at the end")
        elif since > heal_start + self.window:
            self.fail("membership_converged", f"views right only {settled:.1f} s after the heal (bound {self.window:.0f} s)")
        false = [(t, s) for t, s in run.unexplained_failures() if not self.degraded(t)]
        self.figures["false_failures"] = len(false)
        self.figures["false_failures_under_loss"] = len(run.unexplained_failures()) - len(false)
        for t, subject in false[:5]:
            self.fail("false_failure", f"{run.nodes[subject].name} declared failed at {t:.2f} s while running")
        bound = self.detection_bound
        worst: float | None = None
        for (index, when), detected in zip(run.crashes, report["detection_all_seconds"]):
            down_until = self._down_until(index, when)
            if down_until - when < bound:
                continue  # back before it had to be detected: its new life supersedes the old
            if not run.crash_witnesses(index, when):
                continue  # every node that saw it go has since restarted or left: nobody owes a word
            if detected is None or detected > bound:
                took = "never" if detected is None else f"after {detected:.1f} s"
                self.fail(
                    "crash_detected",
                    f"{run.nodes[index].name} crashed at {when:.2f} s, declared failed by all {took} (bound {bound:.0f} s)",
                )
            else:
                worst = max(worst or 0.0, detected)
        self.figures["detection_max_seconds"] = None if worst is None else round(worst, 3)

    @property
    def detection_bound(self) -> float:
        """``membership.suspicion.detection_bound`` for a cluster of as many
        members as the run has slots (its nodes and those scaled up). The run
        does not follow who could confirm a suspicion, so none is counted:
        the longest suspicion. And a probe round is taken as long as the
        slots, not one shorter: slack kept for Lifeguard's local health,
        which slows probing when the network is bad."""
        n = self.run.scenario.slots
        return detection_bound(self.run.config, n, round_probes=n)

    def _down_until(self, index: int, when: float) -> float:
        """When the node crashed at ``when`` was up again (a new life)."""
        back = self.run.back_up_after(index, when)
        return self.campaign.duration if back is None else back

    # -- jobs --------------------------------------------------------------------------

    def jobs(self) -> None:
        run, report = self.run, self.report
        self.figures.update(
            {
                "ticks_expected": report["ticks_expected"],
                "missed": report["missed"],
                "duplicates": report["duplicates"],
                "reruns_after_lost_success": report["reruns_after_lost_success"],
                "lost_results": report["lost_results"],
                "oneoffs_lost_with_submitter": report["oneoffs_lost_with_submitter"],
                "results_lost_with_their_node": report["results_lost_with_their_node"],
                "kills": len(run.kills),
                "long_oneoffs": report["long_oneoffs"],
                "updates_sent": report["updates_sent"],
                "updates_lost_with_their_node": report["updates_lost_with_their_node"],
                "oneoffs_submitted": report["oneoffs_submitted"],
            }
        )
        if report["missed"]:
            self.fail("tick_missed", f"{report['missed']} ticks never ran, e.g. {report['missed_runs'][:5]}")
        if report["lost_results"]:
            self.fail("result_lost", f"{report['lost_results']} results on no running node, e.g. {report['lost_runs'][:5]}")
        duplicates = run.duplicate_executions()
        stable_duplicates = [e for e in duplicates if self.stable(e.start)]
        self.figures["duplicates_in_stable"] = len(stable_duplicates)
        # Per kind of fault around each duplicate (one may count under several).
        self.figures["duplicates_by_fault"] = dict(Counter(kind for e in duplicates for kind in self.faults_around(e.start)))
        for e in stable_duplicates[:5]:
            self.fail("duplicate_in_stable", f"{e.run_id} attempt {e.attempt} ran again on {run.nodes[e.node].name} at {e.start:.2f} s")
        graceful = [e for e in duplicates if not self.stable(e.start) and self.graceful_only(e.start)]
        self.figures["duplicates_in_graceful"] = len(graceful)
        for e in graceful[:5]:
            kinds = ",".join(self.faults_around(e.start))
            self.fail(
                "duplicate_in_graceful",
                f"{e.run_id} attempt {e.attempt} ran again on {run.nodes[e.node].name} at {e.start:.2f} s, around {kinds} only",
            )
        self._same_attempt()
        self._oneoffs()
        self._results_everywhere()
        late, late_in_stable = 0, []
        ticks = run.tick_times()
        for run_id, execution in run.first_executions().items():
            tick_ms = ticks.get(run_id)
            if tick_ms is None:
                continue  # a one-off
            delay = execution.wall_start - tick_ms / 1000
            if delay > LATE_BOUND:
                late += 1
                if self.stable(execution.start):
                    late_in_stable.append((run_id, delay))
        self.figures["late_ticks"] = late
        self.figures["late_in_stable"] = len(late_in_stable)
        for run_id, delay in late_in_stable[:5]:
            self.fail("late_in_stable", f"{run_id} started {delay:.2f} s late")
        self._stuck_runs()

    def _same_attempt(self) -> None:
        """No attempt of a run started twice, unless the first start's claim
        died unseen with its node, or a fault cut the second node apart from
        a node that had run it before (and so held its record: after a kill,
        the one that re-ran it may be the only one that knows), or made it
        take that node for failed."""
        run = self.run
        again = run.same_attempt_starts()
        died = set(run.crashes)  # (node, time) of every crash and kill
        unexplained, after_death = [], 0
        for e in again:
            before = [x for x in run.executions(e.run_id) if x.start < e.start]
            earlier = [x for x in before if x.attempt == e.attempt]
            if all(x.claim_lost for x in earlier):
                continue
            if any(self.cut_apart(x.node, e.node, before[0].start, e.start) for x in before):
                continue
            if any(run.believed_failed(e.node, x.node, before[0].start - self.window, e.start) for x in earlier):
                # The second node held the first for failed on the word of a
                # node a fault cut off from it (a one-way partition between
                # two other groups): a partition's doing, out of run-once's
                # scope, as false_failure's explanations are.
                continue
            if all(x.claim_lost or (not x.ok and (x.node, x.end) in died) for x in earlier):
                # The first start's node died running it (kill -9): its claim
                # reached a few nodes, not the one that re-ran it. A re-run
                # of a dead node's run, as the design allows, named with the
                # attempt it knew of: counted, not failed.
                after_death += 1
                continue
            unexplained.append((e, earlier))
        self.figures["same_attempt_starts"] = len(again)
        self.figures["same_attempt_after_death"] = after_death
        self.figures["same_attempt_unexplained"] = len(unexplained)
        for e, earlier in unexplained[:5]:
            first = earlier[0]
            self.fail(
                "same_attempt",
                f"{e.run_id} attempt {e.attempt} started on {run.nodes[first.node].name} at {first.start:.2f} s "
                f"and again on {run.nodes[e.node].name} at {e.start:.2f} s",
            )

    def _oneoffs(self) -> None:
        """Every acknowledged one-off finished, by the end (given the time
        a failover may take), unless it never left a node that died."""
        due = min(self.stuck_after, self.campaign.heal)
        unfinished, excused = self.run.unfinished_oneoffs(due)
        self.figures["oneoffs_unfinished"] = len(unfinished)
        self.figures["oneoffs_unfinished_lost_with_submitter"] = excused
        for detail in unfinished[:5]:
            self.fail("oneoff_unfinished", detail)

    def _results_everywhere(self) -> None:
        """Every result readable on every node up and ready for MAPS_SETTLE."""
        missing, checked = self.run.results_missing(MAPS_SETTLE)
        self.figures["results_checked_everywhere"] = checked
        self.figures["results_not_everywhere"] = len(missing)
        for detail in missing[:5]:
            self.fail("result_not_everywhere", detail)

    @property
    def stuck_after(self) -> float:
        """A run is taken over within this: failure detection, a grace, a scan."""
        return self.detection_bound + 15.0

    def _stuck_runs(self) -> None:
        """Unfinished records nobody works on, long after they should have
        been taken over (failure detection, the left grace, a scan)."""
        run = self.run
        stuck_after = self.stuck_after
        going = run.open_executions()
        stuck: dict[str, str] = {}
        for node in self.up:
            scheduler = scheduler_of(node.core)
            now_ms = int(node.clock.wall(run.sim.now) * 1000)
            for record in scheduler.records():
                if record.state is RunState.RUNNING and record.id not in going:
                    since = record.started or record.created or now_ms
                elif record.state is RunState.PENDING:
                    since = max(record.not_before or 0, record.created or 0)
                else:
                    continue
                if now_ms - since > stuck_after * 1000:
                    stuck[record.id] = f"{record.state.value} on {node.name}'s view since {(now_ms - since) / 1000:.0f} s"
        self.figures["stuck_runs"] = len(stuck)
        for run_id, detail in sorted(stuck.items())[:5]:
            self.fail("stuck_run", f"{run_id}: {detail}")

    # -- replicated maps ---------------------------------------------------------------

    def maps(self) -> None:
        run = self.run
        if len(self.up) < 2:
            return
        walls = [int(node.clock.wall(run.sim.now) * 1000) for node in self.up]
        cutoff = min(int(node.clock.wall(run.sim.now - MAPS_SETTLE) * 1000) for node in self.up)
        edge = (min(walls) - 3_000, max(walls) + 3_000)
        differing: list[str] = []
        for map_name in MAPS:
            replicas = [node_core_of(node.core).replicator.map(map_name) for node in self.up]
            keys = set().union(*({k for k, _ in r.items(0)} for r in replicas))
            for key in sorted(keys):
                winners = [r.get(key, wall) for r, wall in zip(replicas, walls)]
                present = [w for w in winners if w is not None]
                if not present:
                    continue  # expired everywhere
                if any(w.ts.wall >= cutoff for w in present):
                    continue  # written lately: may still be on its way
                if any(w.expires is not None and edge[0] <= w.expires <= edge[1] for w in present):
                    continue  # at its expiry's edge: the nodes' clocks differ
                if len(present) != len(winners) or len({w.ts for w in present}) > 1:
                    holders = [node.name for node, w in zip(self.up, winners) if w is not None]
                    differing.append(f"{map_name}/{key} held by {len(holders)} of {len(winners)}")
        self.figures["map_keys_differing"] = len(differing)
        for detail in differing[:5]:
            self.fail("maps_converged", detail)

    # -- memory ------------------------------------------------------------------------

    def memory(self) -> None:
        run = self.run
        slots = run.scenario.slots  # scaled up, there are more nodes than at the start
        oneoffs = run.oneoffs_submitted
        # Expired entries are dropped max_drift_ms after they expire (so a
        # clock that far ahead drops nothing early), and a few seconds more.
        expire_slack_ms = run.replication_config.max_drift_ms + 5_000
        worst: dict[str, int] = {}
        for node in self.up:
            core = node_core_of(node.core)
            now_ms = int(node.clock.wall(run.sim.now) * 1000)
            for map_name in MAPS:
                replica = core.replicator.map(map_name)
                held = len(replica)
                live = sum(1 for _ in replica.items(now_ms - expire_slack_ms))
                if held > live:
                    self.fail("memory", f"{node.name} holds {held - live} {map_name} records past their expiry")
                worst[f"{map_name}_keys"] = max(worst.get(f"{map_name}_keys", 0), held)
                worst[f"{map_name}_context_dots"] = max(worst.get(f"{map_name}_context_dots", 0), replica.context.dots())
            members = len(core.membership.members())
            worst["members"] = max(worst.get("members", 0), members)
            if members > slots:
                self.fail("memory", f"{node.name} keeps {members} members for {slots} nodes")
            footprint = scheduler_of(node.core).footprint()
            for name, size in footprint.items():
                worst[f"scheduler_{name}"] = max(worst.get(f"scheduler_{name}", 0), size)
            jobs = footprint["jobs"]
            # Each job's cursor, plus stale heap entries for a few placements.
            if footprint["due"] > 4 * jobs + 16:
                self.fail("memory", f"{node.name}'s tick heap holds {footprint['due']} entries for {jobs} jobs")
            # Runs a node may hold unfinished: the ones in flight (at most
            # one tick per job per period of work) and the pending one-offs.
            if footprint["unfinished"] > 4 * jobs + oneoffs:
                self.fail("memory", f"{node.name} tracks {footprint['unfinished']} unfinished runs")
        # The runs map holds about a TTL's worth of records: that many ticks
        # per job (and per node for mode all), plus the one-offs.
        scenario = run.scenario
        per_ttl = (RESULT_TTL + expire_slack_ms / 1000 + MAPS_SETTLE) / scenario.every
        runs_bound = math.ceil(per_ttl * (scenario.cron_jobs + scenario.all_jobs * slots)) + oneoffs
        if worst.get("runs_keys", 0) > runs_bound:
            self.fail("memory", f"a node holds {worst['runs_keys']} run records, over the TTL's worth ({runs_bound})")
        self.figures["memory"] = worst
