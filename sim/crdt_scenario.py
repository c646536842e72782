"""Replicated-map scenarios: N nodes write to one map under faults.

A run is a membership scenario (``sim.membership_scenario``: the same
network, clocks and faults) whose nodes run ``peer.core.node_core.NodeCore``, the
membership core with the replication core on top. During the write window,
``writes`` writes land on random running nodes, on ``keys`` keys (a share
with a time to live). Every quarter of a simulated second the run compares
the digest roots of all running replicas. It measures:

- convergence: all running replicas hold equal entries (equal roots);
  ``convergence_seconds`` counts from the last disturbance (the last write,
  the last expiry, or a fault's end) to the moment roots last became and
  stayed equal;
- lost writes: keys whose converged value is older than the newest write
  to them, where that write did not expire and its node did not crash
  afterwards (a node that crashed may not have passed its write on);
- expiry: no entry outlives its time to live on any replica;
- cost: bytes per node per second (membership traffic included) and the
  largest replica state in bytes.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from crdt.hlc import Timestamp
from peer.core.node_core import NodeCore
from peer.core.replication import ReplicationConfig
from sim.membership_scenario import MembershipRun, MembershipScenario
from sim.node import DrivenCore, Life, SimNode, node_core, node_core_of

MAP = "data"
POLL_INTERVAL = 0.25


@attrs.frozen
class CrdtScenario(MembershipScenario):
    keys: int = 100
    writes: int = 1_000
    write_start: float = 5.0
    write_window: float = 20.0
    ttl: float | None = None  # seconds to live of the writes that expire
    ttl_share: float = 0.0  # the share of writes that do
    replication: dict[str, Any] = attrs.field(factory=dict)  # ReplicationConfig overrides


@attrs.frozen
class _Write:
    time: float
    node: int
    life: int  # the node's boot count when it wrote
    key: str
    stamp: Timestamp
    expires: int | None


class CrdtRun(MembershipRun):
    scenario: CrdtScenario

    def __init__(self, scenario: CrdtScenario) -> None:
        self.replication_config = ReplicationConfig(**scenario.replication)
        super().__init__(scenario, make_core=self._make_core)
        self._writes: list[_Write] = []
        self._crashed_lives: set[tuple[int, int]] = set()
        self._roots_equal_since: float | None = None
        self._last_write = 0.0
        self._max_state_bytes = 0
        self._expiry_violations = 0

    def _make_core(self, node: SimNode, rng: random.Random, now: float, incarnation: int) -> DrivenCore:
        return node_core(node, rng, now, incarnation, self.replication_config, maps=[MAP])

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        if node.running or node.life is Life.PAUSED:
            self._crashed_lives.add((index, node.boots))
        super().crash(index)

    def _start(self) -> None:
        super()._start()
        scenario = self.scenario
        stream = self.sim.streams.get("writes")
        for number in range(scenario.writes):
            when = scenario.write_start + stream.uniform(0, scenario.write_window)
            key = f"key-{stream.randrange(scenario.keys):06d}"
            expiring = scenario.ttl is not None and stream.random() < scenario.ttl_share
            self.sim.at(when, self._write, stream.randrange(scenario.nodes), key, number, expiring)
        self.sim.at(POLL_INTERVAL, self._poll)

    def _write(self, index: int, key: str, value: int, expiring: bool) -> None:
        running = [node for node in self.nodes if node.life is Life.UP]
        if not running:
            return
        node = min(running, key=lambda n: (n.index - index) % len(self.nodes))  # the chosen one, or the next up
        ttl = self.scenario.ttl if expiring else None
        stamp = node.apply(lambda core, now: node_core_of(core).put(now, MAP, key, value, ttl=ttl))
        expires = None if ttl is None else stamp.wall + round(ttl * 1000)
        self._writes.append(_Write(self.sim.now, node.index, node.boots, key, stamp, expires))
        self._last_write = self.sim.now

    def _poll(self) -> None:
        self.sim.at(self.sim.now + POLL_INTERVAL, self._poll)
        cores = self._running_cores()
        roots = {core.replicator.map(MAP).root() for core in cores}
        if len(roots) == 1 and cores:
            if self._roots_equal_since is None:
                self._roots_equal_since = self.sim.now
        else:
            self._roots_equal_since = None
        for core in cores:
            self._max_state_bytes = max(self._max_state_bytes, _state_bytes(core))
        if self.scenario.ttl is not None and round(self.sim.now / POLL_INTERVAL) % 4 == 0:
            self._check_expiry()

    def _running_cores(self) -> list[NodeCore]:
        return [node_core_of(node.core) for node in self.nodes if node.life is Life.UP and node.core is not None]

    def _wall_ms_now(self) -> int:
        return int(self.nodes[0].clock.wall(self.sim.now) * 1000)

    def _check_expiry(self) -> None:
        """No replica may still read an entry a second past its expiry (the
        second allows for skew between the nodes' clocks)."""
        for node in self.nodes:
            if node.life is not Life.UP or node.core is None:
                continue
            now_ms = int(node.clock.wall(self.sim.now) * 1000)
            for _, register in node_core_of(node.core).replicator.map(MAP).items(now_ms - 1_000):
                if register.expires is not None and register.expires < now_ms - 1_000:
                    self._expiry_violations += 1

    def measure_crdt(self) -> dict[str, Any]:
        base = self.measure()
        scenario = self.scenario
        since = self._roots_equal_since
        # An expiry changes every replica too (each on its own clock, when
        # it drops the entry: max_drift_ms after it expired): the last one is
        # a disturbance like the last write.
        drop_delay = self.replication_config.max_drift_ms / 1000
        last_drop = max(
            (
                self.sim.now - (self._wall_ms_now() - write.expires) / 1000 + drop_delay
                for write in self._writes
                if write.expires
            ),
            default=0.0,
        )
        disturbance = max(self._last_write, self._last_disturbance, min(last_drop, self.sim.now))
        cores = self._running_cores()
        final = cores[0].replicator.map(MAP) if cores else None
        wall_ms = self._wall_ms_now()
        lost = 0
        newest: dict[str, _Write] = {}
        for write in self._writes:
            if write.key not in newest or write.stamp > newest[write.key].stamp:
                newest[write.key] = write
        for key, write in newest.items():
            if (write.node, write.life) in self._crashed_lives:
                continue  # its node crashed, perhaps before passing it on: either outcome is right
            if write.expires is not None and write.expires <= wall_ms:
                continue  # the newest write expired: the key is rightly gone
            register = final.get(key, wall_ms) if final is not None else None
            if register is None or register.ts < write.stamp:
                lost += 1
        totals: dict[str, int] = {}
        for core in cores:
            for field, value in attrs.asdict(core.replicator.stats).items():
                totals[field] = totals.get(field, 0) + value
        report = base.to_json()
        report.update(
            {
                "scenario": "crdt",
                "keys": scenario.keys,
                "writes": len(self._writes),
                "keys_written": len({write.key for write in self._writes}),
                "converged": since is not None and bool(cores),
                "convergence_seconds": None if since is None else round(max(0.0, since - disturbance), 3),
                "membership_converged": base.converged,
                "membership_convergence_seconds": base.to_json()["convergence_seconds"],
                "lost_writes": lost,
                "expired_entries_seen": self._expiry_violations,
                "live_keys": sum(1 for _ in final.items(wall_ms)) if final is not None else 0,
                "max_state_bytes": self._max_state_bytes,
                "final_state_bytes": max((_state_bytes(core) for core in cores), default=0),
                "replication": totals,
            }
        )
        return report


def _state_bytes(core: NodeCore) -> int:
    replica = core.replicator.map(MAP)
    return replica.entry_bytes + 24 * replica.context.dots()


def run_crdt(scenario: CrdtScenario) -> dict[str, Any]:
    run = CrdtRun(scenario)
    run.run_until(scenario.duration)
    return run.measure_crdt()
