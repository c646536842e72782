"""The replication core in memory: digest sync, gossip piggyback, chunking."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.messages import DeltaGossip, SyncProbe
from crdt.ormap import ORMap
from peer.core.replication import ReplicationConfig, Replicator
from peer.runtime.wire import Codec
from sim.direct import WALL_MS, sync

A, B, C, D = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1), ("10.0.0.4", 1)
WALL = WALL_MS


def pair(config: ReplicationConfig | None = None) -> dict[tuple[str, int], Replicator]:
    config = config or ReplicationConfig()
    return {
        addr: Replicator(addr, name, config, maps=["m"], rng=random.Random(i), now=0.0)
        for i, (addr, name) in enumerate([(A, "a#1"), (B, "b#1")])
    }


def run_exchange(nodes: dict[tuple[str, int], Replicator], start: Replicator, peer: tuple[str, int]) -> tuple[int, int, int]:
    result = sync(nodes, start, peer)
    return result.messages, result.bytes, result.round_trips


def fill(replicator: Replicator, keys: list[str], value: Any) -> None:
    for key in keys:
        replicator.put(WALL, "m", key, value)


def full_merge(*maps: ORMap) -> ORMap:
    result = ORMap("x")
    for replica_map in maps:
        result.merge(replica_map.state(), WALL)
    return result


@settings(max_examples=40, deadline=None)
@given(
    shared=st.integers(0, 300),
    only_a=st.integers(0, 60),
    only_b=st.integers(0, 60),
    removed=st.integers(0, 30),
    overwritten=st.integers(0, 30),
)
def test_digest_sync_equals_full_sync(shared: int, only_a: int, only_b: int, removed: int, overwritten: int) -> None:
    nodes = pair()
    a, b = nodes[A], nodes[B]
    common = [f"k{i}" for i in range(shared)]
    fill(a, common, "v")
    b.map("m").merge(a.map("m").state(), WALL)
    fill(a, [f"a{i}" for i in range(only_a)], 1)
    fill(b, [f"b{i}" for i in range(only_b)], 2)
    for key in common[:removed]:
        a.remove(WALL, "m", key)
    fill(b, common[-overwritten:] if overwritten else [], "new")
    expected = full_merge(a.map("m"), b.map("m"))
    run_exchange(nodes, a, B)
    for replica_map in (a.map("m"), b.map("m")):
        assert dict(replica_map.items(WALL)) == dict(expected.items(WALL))
    assert a.map("m").root() == b.map("m").root()


def test_traffic_follows_the_difference_not_the_state() -> None:
    figures = {}
    for differing in (0, 1, 100):
        nodes = pair()
        a, b = nodes[A], nodes[B]
        fill(a, [f"key-{i}" for i in range(20_000)], "value")
        b.map("m").merge(a.map("m").state(), WALL)
        fill(b, [f"new-{i}" for i in range(differing)], "x")
        figures[differing] = run_exchange(nodes, a, B)
        assert a.map("m").root() == b.map("m").root()
    messages, size, _ = figures[0]
    assert messages == 2 and size < 1_000  # the roots match: a probe and its echo
    assert figures[1][1] < 4_000 and figures[100][1] < 60 * figures[1][1]


def test_catch_up_of_an_empty_replica_is_chunked() -> None:
    nodes = pair(ReplicationConfig(chunk_bytes=20_000))
    a, b = nodes[A], nodes[B]
    fill(a, [f"key-{i}" for i in range(5_000)], "x" * 20)
    chunks = []
    original = a._send

    def spy(dst: Any, messages: list[Any], reliable: bool = False) -> None:
        chunks.append(len(Codec().encode(messages, stream=True)))
        original(dst, messages, reliable)

    a._send = spy  # type: ignore[method-assign]
    run_exchange(nodes, b, A)
    assert len(b.map("m")) == 5_000 and a.map("m").root() == b.map("m").root()
    assert max(chunks) < 20_000 + 2_000 and sum(chunks) > 100_000


def test_deltas_ride_gossip_and_big_ones_wait_for_sync() -> None:
    a = pair()[A]
    a.set_peers([B, C])
    a.put(WALL, "m", "small", 1)
    a.put(WALL, "m", "big", "x" * 5_000)
    assert a.stats.deltas_gossiped == 1 and a.stats.deltas_too_big == 1
    (message,) = a.take_gossip(1_400, 3, B)
    assert list(message.delta.entries) == ["small"]
    # Each peer has a delta from us once; once every peer had it, it is retired.
    assert not a.take_gossip(1_400, 3, B)
    assert a.take_gossip(1_400, 3, C) and not a.take_gossip(1_400, 3, C)
    a.put(WALL, "m", "again", 2)
    assert a.take_gossip(1_400, 3, B) and a.take_gossip(1_400, 3, C) and not a.take_gossip(1_400, 3, D)


def test_registers_from_too_far_ahead_are_refused() -> None:
    nodes = pair()
    a, b = nodes[A], nodes[B]
    a.put(WALL + 3_600_000, "m", "future", 1)  # a's clock is an hour ahead
    b.put(WALL, "m", "now", 1)
    run_exchange(nodes, a, B)
    assert a.get(WALL + 3_600_000, "m", "now") is not None  # b's writes reach a
    assert b.get(WALL, "m", "future") is None and b.get(WALL, "m", "now") is not None
    assert b.stats.registers_refused == 1 and b.hlc.rejected["future"] >= 1


def test_a_leaving_node_hands_off_what_it_wrote_in_reliable_chunks() -> None:
    """Its own writes may be nowhere else (gossip lost or not sent yet): they
    go in full, over the reliable channel, before the node leaves; what it
    only received is left to the digest sync that follows."""
    nodes = pair(ReplicationConfig(chunk_bytes=20_000))
    a, b = nodes[A], nodes[B]
    fill(b, ["theirs"], 1)
    run_exchange(nodes, a, B)
    fill(a, [f"mine-{i}" for i in range(2_000)], "x" * 20)
    a.take_effects()
    a.hand_off([B])
    sends = a.take_effects()
    deltas = [s for s in sends if isinstance(s.messages[0], DeltaGossip)]
    assert deltas and all(s.reliable and s.dst == B for s in deltas)
    assert any(isinstance(s.messages[0], SyncProbe) for s in sends)
    codec = Codec()
    handed = set()
    for send in deltas:
        frame = codec.encode(send.messages, stream=True)
        assert len(frame) < 20_000 + 2_000
        for message in codec.decode(frame, stream=True):  # type: ignore[union-attr]
            handed |= set(message.delta.entries)
            b.receive(0.0, WALL, message)
    assert handed == {f"mine-{i}" for i in range(2_000)}
    assert all(b.get(WALL, "m", f"mine-{i}") is not None for i in range(2_000))
