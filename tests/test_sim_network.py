"""The simulated network and process model behave as documented."""

from __future__ import annotations

import pytest

from sim.engine import Simulator
from sim.network import Block, Conditions, Network
from sim.streams import SeedStreams


class Sink:
    def __init__(self, sim: Simulator, index: int) -> None:
        self.sim, self.index = sim, index
        self.received: list[tuple[float, bytes, bool]] = []

    def deliver(self, src, frame: bytes, reliable: bool) -> None:
        self.received.append((self.sim.now, frame, reliable))


def make(conditions: Conditions, seed: int = 1) -> tuple[Simulator, Network, Sink, Sink]:
    sim = Simulator(seed)
    network = Network(sim, conditions)
    a, b = Sink(sim, 0), Sink(sim, 1)
    network.attach(("a", 1), a)
    network.attach(("b", 1), b)
    return sim, network, a, b


def blast(sim: Simulator, network: Network, count: int, reliable: bool = False) -> None:
    for i in range(count):
        sim.at(i * 0.001, network.send, 0, ("a", 1), ("b", 1), i.to_bytes(4, "big"), reliable)
    sim.run_until(count * 0.001 + 60)


def test_loss_duplication_and_reordering_rates():
    sim, network, _, b = make(Conditions(loss=0.2, duplicate=0.1, jitter=0.005))
    blast(sim, network, 20_000)
    frames = [frame for _, frame, _ in b.received]
    unique = set(frames)
    assert 0.78 < len(unique) / 20_000 < 0.82
    assert 0.08 < (len(frames) - len(unique)) / len(unique) < 0.12
    order = [int.from_bytes(f, "big") for f in frames]
    assert order != sorted(order)  # jitter reorders


def test_reliable_messages_arrive_despite_loss_only_later():
    sim, network, _, b = make(Conditions(loss=0.3))
    blast(sim, network, 2_000, reliable=True)
    assert len(b.received) == 2_000
    delays = sorted(t - int.from_bytes(f, "big") * 0.001 for t, f, _ in b.received)
    assert delays[0] < 0.01 and delays[-1] > 1.0  # some waited for a retransmitted SYN


def test_blocks_are_one_way_and_clogs_hold_packets():
    sim, network, a, b = make(Conditions())
    block = Block(frozenset({0}), frozenset({1}))
    network.block(block)
    network.send(0, ("a", 1), ("b", 1), b"x", False)
    network.send(0, ("a", 1), ("b", 1), b"y", True)
    network.send(1, ("b", 1), ("a", 1), b"z", False)
    sim.run_until(5)
    assert not b.received and [f for _, f, _ in a.received] == [b"z"]
    network.unblock(block)
    network.clog(1, until=10.0)
    network.send(0, ("a", 1), ("b", 1), b"late", False)
    sim.run_until(20)
    assert [(t, f) for t, f, _ in b.received] == [(10.0, b"late")]
    assert network.stats.blocked == 2


def test_streams_are_independent_and_reproducible():
    first, second = SeedStreams(9), SeedStreams(9)
    first.get("a").random()  # drawing from one stream shifts no other
    assert first.get("b").random() == second.get("b").random()
    assert SeedStreams(9).get("a").random() != SeedStreams(10).get("a").random()


@pytest.mark.parametrize("drift", [0.0, 1e-3, -1e-3])
def test_node_clock_round_trips(drift):
    from sim.clock import NodeClock

    clock = NodeClock(offset=1234.5, drift=drift)
    for t in (0.0, 1.0, 3600.0):
        assert clock.to_global(clock.monotonic(t)) == pytest.approx(t)
    assert clock.wall(10.0) - clock.wall(0.0) == pytest.approx(10.0 * (1 + drift))
