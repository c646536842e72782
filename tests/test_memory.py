"""Memory follows live data: nothing kept per run outlives the run's record.

Asserted on structure (the tables' sizes, ``footprint()``), never on RSS or
time: a lone node and a simulated cluster, driven with virtual clocks, take
runs until they have all expired, and every table is back where it began.
The RSS over hours is ``bench/soak.py``'s to measure.
"""

from __future__ import annotations

import random
from typing import Any

from crdt.hlc import Timestamp
from crdt.ormap import EXPIRY_HEAP_SLACK, ORMap
from membership.config import MembershipConfig
from membership.state import Address
from peer.core.node_core import NodeCore
from peer.core.replication import ReplicationConfig, Replicator
from peer.jobs import ring
from peer.jobs.definition import JobSpec
from peer.jobs.scheduler import SchedulerConfig, StartRun
from peer.jobs.targets import CallTarget
from sim.jobs_scenario import JobsRun, JobsScenario, scheduler_of
from sim.node import Life, node_core_of

WALL_EPOCH = 1_700_000_000.0
A: Address = ("10.0.0.1", 7946)
B: Address = ("10.0.0.2", 7946)
C: Address = ("10.0.0.3", 7946)
# Expired entries are dropped this long after they expire (ReplicationConfig.max_drift_ms), plus a margin.
DROPPED_AFTER = ReplicationConfig().max_drift_ms / 1000 + 5


class LoneNode:
    """A NodeCore with no peers on a virtual clock; runs finish the moment they start."""

    def __init__(self) -> None:
        self.now = 100.0
        self.core = NodeCore(
            "a", A, MembershipConfig(), ReplicationConfig(), rng=random.Random(1), now=self.now,
            wall_clock=lambda: WALL_EPOCH + self.now, scheduler=SchedulerConfig(),
        )  # fmt: skip
        self.core.join(self.now, [])
        self.finished = 0

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            self.now = max(self.now, min(self.core.next_deadline(), end))
            self.core.tick(self.now)
            self._finish_started()
            if self.now >= end:
                return

    def submit(self, spec: JobSpec) -> str:
        scheduler = self.core.scheduler
        assert scheduler is not None
        run_id = scheduler.submit(self.core.wall_ms(), spec)
        self._finish_started()
        return run_id

    def _finish_started(self) -> None:
        scheduler = self.core.scheduler
        assert scheduler is not None
        for effect in self.core.take_effects():
            if isinstance(effect, StartRun):
                scheduler.run_finished(self.core.wall_ms(), effect.run_id, effect.attempt, True, {"echo": "x" * 50})
                self.finished += 1

    def footprint(self) -> dict[str, Any]:
        scheduler = self.core.scheduler
        assert scheduler is not None
        return {**self.core.replicator.footprint(), **{f"scheduler.{k}": v for k, v in scheduler.footprint().items()}}


def test_a_lone_node_holds_nothing_per_run_once_its_runs_expired() -> None:
    node = LoneNode()
    node.advance(5)  # settled: ready
    baseline = node.footprint()
    ring_cache = ring._key_hashes.cache_info().currsize
    spec = JobSpec(id="once", target=CallTarget("os:getcwd"), schedule=None, result_ttl=5.0)
    runs = 1500
    for _ in range(runs):
        node.submit(spec)
        node.advance(0.05)
    # While the records live, they are held, and nothing is queued for gossip: no one would take it.
    during = node.footprint()
    assert node.finished == runs and during["runs.entries"] > 0
    assert during["gossip_backlog"] == 0 and during["held_writes"] == 0
    node.advance(spec.result_ttl + DROPPED_AFTER)
    after = node.footprint()
    assert after["runs.entries"] == 0
    # Each run's claim, stamped to live a day, left an item in the expiry heap: rebuilt, not kept.
    assert after["runs.expiry_heap"] <= EXPIRY_HEAP_SLACK < runs
    # Every other table is back to its size before the runs (the heap aside, by the rule above; the
    # context holds a counter per replica that wrote, one per node's life: ours, now).
    assert after["runs.context_replicas"] == 1
    apart = ("runs.expiry_heap", "runs.context_replicas")
    assert {k: v for k, v in after.items() if k not in apart} == {k: v for k, v in baseline.items() if k not in apart}
    # Run ids were not cached with the job ids the ring places.
    assert ring._key_hashes.cache_info().currsize - ring_cache < 10


def lone_replicator() -> Replicator:
    return Replicator(A, "a#1", ReplicationConfig(), maps=["m"], rng=random.Random(1), now=0.0)


def test_a_replica_with_no_peers_queues_no_gossip_and_drops_what_was_queued_when_left_alone() -> None:
    replicator = lone_replicator()
    for i in range(100):
        replicator.put(WALL_EPOCH * 1000, "m", f"k{i}", i)
    assert replicator.footprint()["gossip_backlog"] == 0 and not replicator.has_gossip()
    replicator.set_peers([B])
    for i in range(100):
        replicator.put(WALL_EPOCH * 1000, "m", f"k{i}", i + 1)
    assert replicator.footprint()["gossip_backlog"] == 100
    replicator.set_peers([])  # B left or died: nobody will take those deltas
    assert replicator.footprint()["gossip_backlog"] == 0
    # A member that turns up later gets what was written meanwhile from the digest sync.
    replicator.set_peers([C])
    replicator.sync_with(C)
    assert replicator.take_effects(), "the digest sync goes out"


def test_deltas_that_wait_only_for_a_departed_member_are_released() -> None:
    replicator = lone_replicator()
    replicator.set_peers([B, C])
    for i in range(50):
        replicator.put(WALL_EPOCH * 1000, "m", f"k{i}", i)
    # B has had every delta (each goes to a member once, in a small cluster); C none yet.
    while replicator.take_gossip(10_000, 100, B):
        pass
    assert replicator.footprint()["gossip_backlog"] == 50
    replicator.set_peers([B])  # C died: what waited for it alone goes
    assert replicator.footprint()["gossip_backlog"] == 0
    # Deltas B has not had yet stay queued for it.
    replicator.set_peers([B, C])
    replicator.put(WALL_EPOCH * 1000, "m", "fresh", 1)
    while replicator.take_gossip(10_000, 100, C):
        pass
    replicator.set_peers([B])
    assert replicator.footprint()["gossip_backlog"] == 1
    assert [key for message in replicator.take_gossip(10_000, 100, B) for key in message.delta.entries] == ["fresh"]


def test_the_expiry_heap_holds_no_more_than_the_live_keys_and_a_slack() -> None:
    replica = ORMap("a#1")
    day = 86_400_000
    keys = 3 * EXPIRY_HEAP_SLACK
    for i in range(keys):
        # A claim that would live a day, then its outcome that lives a second.
        replica.put(f"run-{i}", "claimed", Timestamp(2 * i, 0, "a#1"), expires=day)
        replica.put(f"run-{i}", "succeeded", Timestamp(2 * i + 1, 0, "a#1"), expires=1_000 + i)
    assert len(replica.footprint()) and replica.footprint()["expiry_heap"] <= 2 * keys + EXPIRY_HEAP_SLACK
    assert replica.expire(10 * keys) and len(replica) == 0
    assert replica.footprint()["expiry_heap"] <= EXPIRY_HEAP_SLACK
    replica.put("next", "v", Timestamp(10 * keys, 0, "a#1"), expires=day)
    assert replica.footprint()["entries"] == 1


def test_a_cluster_holds_nothing_per_run_once_its_runs_expired() -> None:
    """Three simulated nodes take 20 one-offs a second, submitted through
    random ones, for two minutes; once every record has expired, every
    node's tables hold what they held with no runs (the tombstones compacted)."""
    ttl = 5.0
    scenario = JobsScenario(
        nodes=3, seed=7, duration=120.0 + ttl + DROPPED_AFTER + 15, cron_jobs=0, all_jobs=0, oneoffs=2400,
        fail_share=0.0, heal=ttl + DROPPED_AFTER + 15, result_ttl=ttl,
    )  # fmt: skip
    run = JobsRun(scenario)
    run.run_until(scenario.duration)
    assert run.measure_jobs()["oneoffs_done"] == 2400
    for node in run.nodes:
        assert node.life is Life.UP
        sizes = node_core_of(node.core).replicator.footprint()
        assert sizes["runs.entries"] == sizes["updates.entries"] == 0, node.name
        assert sizes["gossip_backlog"] == sizes["held_writes"] == 0, node.name
        assert sizes["runs.tombstones"] == sizes["updates.tombstones"] == 0, (node.name, sizes)
        assert sizes["runs.context_replicas"] <= 3
        assert sizes["runs.expiry_heap"] <= EXPIRY_HEAP_SLACK, (node.name, sizes)
        tables = scheduler_of(node.core).footprint()
        assert all(size == 0 for table, size in tables.items() if table != "lives"), (node.name, tables)
