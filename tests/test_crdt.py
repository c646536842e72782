"""CRDT laws and behaviour: HLC, the OR-map of LWW registers, expiry, wire form."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdt.context import CausalContext
from crdt.hlc import HLC, MAX_COUNTER, ClockDrift, Timestamp
from crdt.messages import DeltaGossip, MalformedState, SyncEntries, SyncProbe, from_wire
from crdt.ormap import Delta, ORMap
from peer.runtime.wire import Codec, Dropped

KEYS = ["a", "b", "c", "d"]
REPLICAS = ["r0", "r1", "r2"]

# -- HLC ------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5_000), st.integers(0, 5_000)), max_size=60))
def test_hlc_is_monotonic_whatever_the_physical_clock_does(steps: list[tuple[bool, int, int]]) -> None:
    clock = HLC("n", max_drift_ms=1_000)
    previous = clock.now(0)
    for observe, physical, remote_wall in steps:  # physical time jumps around, back included
        if observe:
            try:
                clock.observe(Timestamp(remote_wall, 3, "m"), physical)
            except ClockDrift:
                assert remote_wall > physical + 1_000
                continue
            assert clock.last > Timestamp(remote_wall, 3, "m") or clock.last.wall > remote_wall
        stamp = clock.now(physical)
        assert stamp > previous and stamp.wall >= physical
        previous = stamp


def test_hlc_counts_rejections_and_never_wraps() -> None:
    clock = HLC("n", max_drift_ms=100)
    with pytest.raises(ClockDrift):
        clock.observe(Timestamp(10_000, 0, "m"), 1_000)
    assert clock.rejected["future"] == 1 and clock.last.wall == 0
    stamps = [clock.now(5) for _ in range(MAX_COUNTER + 3)]  # a frozen physical clock
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[-1].wall == 6  # borrowed a millisecond rather than wrap the counter


# -- operation histories ------------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "remove", "sync"]),
        st.integers(0, len(REPLICAS) - 1),
        st.sampled_from(KEYS),
        st.integers(0, 99),
        st.integers(0, len(REPLICAS) - 1),
    ),
    max_size=40,
)


def run_history(ops: list[tuple[str, int, str, int, int]]) -> tuple[list[ORMap], list[Delta]]:
    """Replicas mutate and sometimes pass deltas along; returns the replicas
    and every delta made, in order."""
    replicas = [ORMap(name) for name in REPLICAS]
    clocks = [HLC(name) for name in REPLICAS]
    deltas: list[Delta] = []
    for step, (kind, at, key, value, other) in enumerate(ops):
        replica = replicas[at]
        if kind == "put":
            deltas.append(replica.put(key, value, clocks[at].now(1_000 + step)))
        elif kind == "remove":
            delta = replica.remove(key)
            if delta is not None:
                deltas.append(delta)
        elif deltas:  # another replica catches up on a random earlier delta
            replicas[other].merge(deltas[value % len(deltas)], 0)
    return replicas, deltas


def apply_all(deltas: list[Delta], order: list[int]) -> ORMap:
    replica = ORMap("observer")
    for index in order:
        replica.merge(deltas[index], 0)
    return replica


@given(operations, st.randoms(use_true_random=False))
def test_merge_order_grouping_and_repetition_do_not_matter(ops: list[Any], rnd: random.Random) -> None:
    _, deltas = run_history(ops)
    reference = apply_all(deltas, list(range(len(deltas))))
    shuffled = list(range(len(deltas))) * 2  # every delta twice: idempotence
    rnd.shuffle(shuffled)
    assert apply_all(deltas, shuffled) == reference  # commutativity
    if deltas:  # associativity: any grouping into delta groups
        groups, group = [], deltas[0]
        for delta in deltas[1:]:
            if rnd.random() < 0.5:
                groups.append(group)
                group = delta
            else:
                group = group.join(delta)
        groups.append(group)
        assert apply_all(groups, list(range(len(groups)))) == reference


@given(operations)
def test_full_states_merge_as_a_semilattice(ops: list[Any]) -> None:
    replicas, _ = run_history(ops)
    a, b, c = (replica.state() for replica in replicas)

    def merged(*states: Delta) -> ORMap:
        result = ORMap("x")
        for state in states:
            result.merge(state, 0)
        return result

    assert merged(a, b) == merged(b, a)
    assert merged(a, b, c) == merged(a, b.join(c)) == merged(a.join(b), c)
    assert merged(a, a) == merged(a)


# -- a stateful comparison with a reference model -------------------------------------------


class Replicas(RuleBasedStateMachine):
    """Replicas mutate and exchange deltas and states in random orders (deltas
    may be lost or duplicated). The reference model keeps every write and
    remove with the set of writes its replica had seen; once all replicas have
    exchanged everything, each must read, per key, the newest write that no
    write or remove has seen, exactly as the model says."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = [ORMap(name) for name in REPLICAS]
        self.clocks = [HLC(name) for name in REPLICAS]
        self.physical = 1_000
        self.pending: list[tuple[int, Delta]] = []  # (from, delta) in flight
        self.writes: dict[tuple[str, int], tuple[str, int, Timestamp]] = {}  # dot -> (key, value, ts)
        self.superseded: set[tuple[str, int]] = set()

    @rule(at=st.integers(0, 2), key=st.sampled_from(KEYS), value=st.integers(0, 9), tick=st.integers(-5, 5))
    def put(self, at: int, key: str, value: int, tick: int) -> None:
        self.physical += tick  # clocks may step back
        self.superseded.update(self.maps[at].registers(key))
        delta = self.maps[at].put(key, value, self.clocks[at].now(self.physical))
        (dot,) = delta.entries[key]
        self.writes[dot] = (key, value, delta.entries[key][dot].ts)
        self.pending.append((at, delta))

    @rule(at=st.integers(0, 2), key=st.sampled_from(KEYS))
    def remove(self, at: int, key: str) -> None:
        self.superseded.update(self.maps[at].registers(key))
        delta = self.maps[at].remove(key)
        if delta is not None:
            self.pending.append((at, delta))

    @precondition(lambda self: self.pending)
    @rule(index=st.integers(0, 1000), to=st.integers(0, 2), keep=st.booleans())
    def deliver(self, index: int, to: int, keep: bool) -> None:
        _, delta = self.pending[index % len(self.pending)]
        if not keep:  # delivered once more later, or lost: the state exchange repairs it
            self.pending.pop(index % len(self.pending))
        self.maps[to].merge(delta, 0)

    @rule(a=st.integers(0, 2), b=st.integers(0, 2))
    def exchange_state(self, a: int, b: int) -> None:
        self.maps[b].merge(self.maps[a].state(), 0)

    @invariant()
    def converges_to_the_model(self) -> None:
        final = [ORMap(name) for name in REPLICAS]
        for replica in final:
            for source in self.maps:
                replica.merge(source.state(), 0)
        assert final[0] == final[1] == final[2]
        expected = {}
        for dot, (key, value, ts) in self.writes.items():
            if dot not in self.superseded and (key not in expected or ts > expected[key][1]):
                expected[key] = (value, ts)
        assert {key: (r.value, r.ts) for key, r in final[0].items(0)} == expected


TestReplicas = Replicas.TestCase
TestReplicas.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- expiry ----------------------------------------------------------------------------


def test_expired_entries_vanish_everywhere_and_never_come_back() -> None:
    a, b, laggard = ORMap("a"), ORMap("b"), ORMap("c")
    clock = HLC("a")
    delta = a.put("run-1", {"result": 42}, clock.now(1_000), expires=61_000)
    kept = a.put("job", "every 5s", clock.now(1_001))
    for replica in (b, laggard):
        replica.merge(delta, 1_000)
        replica.merge(kept, 1_000)
    assert b.get("run-1", 60_999) is not None and b.get("run-1", 61_000) is None  # read: gone at expiry
    assert len(a.expire(61_000)) == 1 and len(b.expire(61_000)) == 1 and len(a) == len(b) == 1
    # The laggard was away (its clock stopped); it comes back holding the entry.
    assert laggard.get("run-1", 50_000) is not None
    a.merge(laggard.state(), 70_000)  # its stale state cannot resurrect the entry
    b.merge_scoped(laggard.state().entries, laggard.context, [(0, 0)], 70_000)
    assert a.get("run-1", 70_000) is None and len(a) == 1 and len(b) == 1
    laggard.merge(a.state(), 50_000)  # and it learns the entry is gone, even before its own expiry
    assert laggard.registers("run-1") == {} and laggard == a
    # Nothing of the entry is left but a counter in the context.
    assert a.context.dots() == 1 and a.context.vv == {"a": 2}


def test_an_expired_register_is_not_adopted_from_a_stranger() -> None:
    a, stranger = ORMap("a"), ORMap("s")
    stranger.put("k", 1, Timestamp(1_000, 0, "s"), expires=2_000)
    a.merge(stranger.state(), 5_000)
    assert len(a) == 0 and ("s", 1) in a.context


def test_memory_is_bounded_by_live_entries() -> None:
    a, b = ORMap("a"), ORMap("b")
    clock = HLC("a")
    for round_ in range(50):
        for i in range(100):
            b.merge(a.put(f"run-{round_}-{i}", i, clock.now(round_ * 1_000), expires=round_ * 1_000 + 500), 0)
        a.expire(round_ * 1_000 + 500)
        b.expire(round_ * 1_000 + 500)
    assert len(a) == len(b) == 0 and a == b
    assert a.context.dots() == b.context.dots() == 1  # 5,000 writes, one counter


# -- values and the wire -----------------------------------------------------------------


def test_values_are_normalised_and_bad_entries_refused() -> None:
    replica = ORMap("a")
    clock = HLC("a")
    replica.put("k", (1, 2), clock.now(1))
    assert replica.get("k", 0).value == [1, 2]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="map keys must be strings"):
        replica.put("k", {1: "x"}, clock.now(1))
    with pytest.raises(ValueError, match="cannot be serialised"):
        replica.put("k", object(), clock.now(1))
    with pytest.raises(ValueError, match="limit is 65536"):
        replica.put("k", b"x" * 70_000, clock.now(1))
    with pytest.raises(ValueError, match="a key is a string"):
        replica.put("", 1, clock.now(1))


@given(operations)
def test_replication_messages_round_trip(ops: list[Any]) -> None:
    replicas, deltas = run_history(ops)
    codec = Codec()
    for delta in deltas:
        for message in (DeltaGossip("jobs", delta), DeltaGossip("jobs", delta, relay=False)):
            # A fresh codec each time: one that decoded a delta skips its repeats.
            assert Codec().decode(codec.encode([message], stream=True), stream=True) == (message,)
    state = replicas[0]
    probe = SyncProbe("jobs", ("10.0.0.1", 7946), (0, 0), tuple(state.tree.children_summary((0, 0))), state.context, True)
    entries = SyncEntries("jobs", ("10.0.0.1", 7946), ((0, 0),), state.state().entries, state.context)
    for message in (probe, entries):
        assert codec.decode(codec.encode([message], stream=True), stream=True) == (message,)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=20))
def test_decoding_untrusted_state_is_total(garbage: Any) -> None:
    for tag in (32, 33, 34):
        for body in ([tag, garbage], [tag, "m", garbage, garbage], [tag, "m", ["h", 1], [0, 0], garbage, garbage, True]):
            try:
                from_wire(body)
            except MalformedState:
                pass
    frame = Codec().encode([])[:2] + msgpack.packb([[34, "m", ["h", 1], [[9, 0]], [], [[], []]]])
    assert isinstance(Codec().decode(frame), Dropped)


def test_context_compacts() -> None:
    context = CausalContext()
    for dot in [("a", 3), ("a", 2), ("b", 1), ("a", 1)]:
        context.add(dot)
    assert context.vv == {"a": 3, "b": 1} and context.cloud == set()
    other = CausalContext({"a": 1}, [("a", 5), ("c", 2)])
    context.merge(other)
    assert context.vv == {"a": 3, "b": 1} and context.cloud == {("a", 5), ("c", 2)}
    assert ("a", 2) in context and ("a", 4) not in context and ("c", 2) in context
