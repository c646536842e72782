"""Job ownership: the ring, bounded-load assignment and run ranks."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.jobs import ring as ring_module
from peer.jobs.ring import DEFAULT_LOAD_FACTOR, DEFAULT_VNODES, Ring, _updated, rank

ROOT = Path(__file__).resolve().parent.parent

member_lists = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=8)
key_lists = st.lists(st.text(max_size=10), max_size=60)
small_vnodes = st.integers(min_value=1, max_value=24)
# Decimal strings, so the test can compute c * K / N exactly on its own.
factors = st.sampled_from(["1", "1.05", "1.1", "1.25", "1.5", "2", "3.7"])


def nodes(n: int, start: int = 0) -> list[str]:
    return [f"node-{i}" for i in range(start, start + n)]


def jobs(k: int) -> list[str]:
    return [f"job-{i}" for i in range(k)]


def moved(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(1 for key, member in before.items() if after[key] != member)


# --- values every node of a cluster must agree on --------------------------


def test_golden_values_do_not_change():
    """Owners, ranks and assignments are computed independently by every node,
    including nodes running other versions: a change here changes who runs
    what in a mixed cluster, so it needs a protocol version bump. (Changed
    with issue 13: 128 points per member from one SHAKE-128 stream.)"""
    ring = Ring(nodes(3))
    assert [ring.owner(f"job-{i}") for i in range(6)] == ["node-0", "node-0", "node-1", "node-1", "node-2", "node-0"]
    assert ring.preference("job-1", 3) == ["node-0", "node-2", "node-1"]
    assert rank("job-1", "node-1") == 17099015631490477166
    assert rank("job-1", "node-2") == 8250395529290728394
    assignment = Ring(nodes(7), load_factor=1.0).assign(jobs(700))
    digest = hashlib.blake2b(repr(sorted(assignment.items())).encode(), digest_size=8).hexdigest()
    assert digest == GOLDEN_ASSIGN_DIGEST


GOLDEN_ASSIGN_DIGEST = "d52157d3a6287dd3"


def test_owners_do_not_depend_on_python_hash_seed():
    script = (
        "from peer.jobs.ring import Ring, rank\n"
        "r = Ring(['a', 'b', 'c', 'd'], vnodes=16)\n"
        "print(sorted(r.assign(str(i) for i in range(200)).items()), rank('x', 'a'))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


# --- the ring ----------------------------------------------------------------


def test_empty_ring_owns_nothing():
    ring = Ring([])
    assert ring.members == ()
    assert ring.owner("job-1") is None
    assert ring.preference("job-1", 3) == []
    assert ring.assign(["job-1", "job-2"]) == {}
    assert Ring([], load_factor=None).assign(["job-1"]) == {}
    assert ring.capacity(10) is None


def test_members_are_sorted_and_deduplicated():
    ring = Ring(["b", "a", "c", "a"])
    assert ring.members == ("a", "b", "c")
    assert ring == Ring(["c", "b", "a"])
    assert hash(ring) == hash(Ring(["c", "b", "a"]))
    assert ring != Ring(["a", "b", "c"], vnodes=3)


def test_a_ring_cannot_be_changed():
    ring = Ring(["a", "b"])
    with pytest.raises(AttributeError):
        ring.members = ("a",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del ring.load_factor
    assert ring.members == ("a", "b")


def test_one_member_owns_everything():
    ring = Ring(["solo"])
    assert ring.preference("job-1", 5) == ["solo"]
    assert set(ring.assign(jobs(50)).values()) == {"solo"}


@pytest.mark.parametrize("vnodes", [0, -1])
def test_vnodes_must_be_positive(vnodes):
    with pytest.raises(ValueError):
        Ring(["a"], vnodes=vnodes)


@pytest.mark.parametrize("factor", [0.99, 0.0, -1.0, math.inf, math.nan])
def test_load_factor_below_one_is_refused(factor):
    """Below 1, capacity * N < K: some key would have no owner."""
    with pytest.raises(ValueError):
        Ring(["a"], load_factor=factor)


def test_capacity_is_exact_not_float_rounded():
    """1.1 * 100 / 10 is 11.000000000000002 in floats; capacity must be 11."""
    assert Ring(nodes(10), load_factor=1.1).capacity(100) == 11
    assert Ring(nodes(100)).capacity(10_000) == 110
    assert Ring(nodes(3), load_factor=1.0).capacity(10) == 4
    assert Ring(nodes(3), load_factor=None).capacity(10) is None
    assert Ring(nodes(3)).load_factor == DEFAULT_LOAD_FACTOR


@given(member_lists, key_lists, small_vnodes, st.randoms(use_true_random=False))
def test_same_members_in_any_order_give_the_same_owners(members, keys, vnodes, rnd):
    one = Ring(members, vnodes=vnodes)
    shuffled = rnd.sample(members, len(members)) + members[: len(members) // 2]
    other = Ring(shuffled, vnodes=vnodes)
    assert one.members == other.members
    for key in keys:
        assert one.owner(key) == other.owner(key)
        assert one.preference(key, 3) == other.preference(key, 3)
    assert one.assign(keys) == other.assign(rnd.sample(keys, len(keys)))


@given(member_lists, key_lists, small_vnodes, st.one_of(st.none(), factors), st.randoms(use_true_random=False))
def test_assign_does_not_depend_on_key_order_or_duplicates(members, keys, vnodes, factor, rnd):
    ring = Ring(members, vnodes=vnodes, load_factor=None if factor is None else float(factor))
    reference = ring.assign(keys)
    again = ring.assign(rnd.sample(keys, len(keys)) + keys[: len(keys) // 3])
    assert again == reference
    # Even the result's own iteration order is the same.
    assert list(again) == list(reference)


@given(member_lists, key_lists, small_vnodes, factors)
def test_every_key_gets_a_member_and_no_member_exceeds_capacity(members, keys, vnodes, factor):
    ring = Ring(members, vnodes=vnodes, load_factor=float(factor))
    assignment = ring.assign(keys)
    assert set(assignment) == set(keys)
    assert set(assignment.values()) <= set(ring.members)
    k, n = len(set(keys)), len(ring.members)
    if k:
        exact = Fraction(factor) * k / n
        cap = math.ceil(exact)
        assert ring.capacity(k) == cap
        loads = Counter(assignment.values())
        assert max(loads.values()) <= cap
        # Each member's own bound: c * K / N rounded one way or the other,
        # together room for every key.
        bounds = ring.capacities(k)
        assert set(bounds) == set(ring.members)
        assert set(bounds.values()) <= {math.floor(exact), cap}
        assert sum(bounds.values()) >= k
        assert all(loads[m] <= bounds[m] for m in ring.members)


@given(member_lists, key_lists, small_vnodes, factors)
def test_a_key_lands_on_the_first_member_of_its_preference_with_room(members, keys, vnodes, factor):
    """Bounded loads only ever pass a member over when it is full: so a key is
    placed on its plain owner unless that owner ends up at its bound, and in
    general every member before its owner in its preference list is full."""
    ring = Ring(members, vnodes=vnodes, load_factor=float(factor))
    assignment = ring.assign(keys)
    loads = Counter(assignment.values())
    bounds = ring.capacities(len(assignment))
    for key, member in assignment.items():
        order = ring.preference(key, len(ring.members))
        assert member in order
        assert all(loads[m] == bounds[m] for m in order[: order.index(member)])


def test_a_few_members_bounds_change_when_the_share_moves():
    """1,000 members, 10k keys: c * K / N is 11.0 and, one member gone, 11.01.
    One bound for all would step from 11 to 12 everywhere; here ~1 % of the
    members get 12, so few of the keys pushed off their owners move back."""
    before = Ring(nodes(1000)).capacities(10_000)
    after = Ring(nodes(1000)[1:]).capacities(10_000)
    assert set(before.values()) == {11}
    changed = sum(after[m] != before[m] for m in after)
    assert 0 < changed < 30
    assert Ring(nodes(3), load_factor=None).capacities(10) == {}


@given(member_lists, key_lists, small_vnodes)
def test_without_load_factor_assign_is_plain_owner(members, keys, vnodes):
    ring = Ring(members, vnodes=vnodes, load_factor=None)
    assert ring.assign(keys) == {key: ring.owner(key) for key in keys}


@given(member_lists, st.text(max_size=10), st.integers(min_value=-2, max_value=12), small_vnodes)
def test_preference_is_distinct_members_owner_first(members, key, count, vnodes):
    ring = Ring(members, vnodes=vnodes)
    order = ring.preference(key, count)
    assert len(order) == max(0, min(count, len(ring.members)))
    assert len(set(order)) == len(order)
    assert set(order) <= set(ring.members)
    if order:
        assert order[0] == ring.owner(key)
        # A shorter list is a prefix of a longer one: fallbacks are stable.
        assert ring.preference(key, len(ring.members))[: len(order)] == order


@given(member_lists, key_lists, small_vnodes, st.text(min_size=1, max_size=8))
def test_a_join_moves_keys_only_to_the_newcomer(members, keys, vnodes, newcomer):
    before = Ring(members, vnodes=vnodes)
    after = Ring([*members, newcomer], vnodes=vnodes)
    for key in keys:
        assert after.owner(key) in (before.owner(key), newcomer)


@given(member_lists, key_lists, small_vnodes, st.data())
def test_a_leave_moves_only_the_leavers_keys(members, keys, vnodes, data):
    before = Ring(members, vnodes=vnodes)
    gone = data.draw(st.sampled_from(before.members))
    after = Ring([m for m in members if m != gone], vnodes=vnodes)
    for key in keys:
        if before.owner(key) != gone:
            assert after.owner(key) == before.owner(key)
        else:
            assert after.owner(key) == (before.preference(key, 2)[1:] or [None])[0]


def test_bounded_assign_moves_about_k_over_n():
    """Joins and leaves move few more keys than the K/N that must move (the
    bench measures ~1.1x; 2x here so a quirk of hashing cannot flake it)."""
    k, n = 3000, 10
    keys = jobs(k)
    base = Ring(nodes(n)).assign(keys)
    for joiner in range(n, n + 3):
        after = Ring([*nodes(n), f"node-{joiner}"]).assign(keys)
        assert moved(base, after) <= 2 * k / (n + 1)
    for gone in ("node-0", "node-4", "node-9"):
        after = Ring([m for m in nodes(n) if m != gone]).assign(keys)
        assert moved(base, after) <= 2 * k / n


def test_bounded_loads_are_even_with_many_keys():
    assignment = Ring(nodes(20)).assign(jobs(4000))
    loads = Counter(assignment.values())
    assert max(loads.values()) <= 220
    assert len(loads) == 20


def test_every_member_full_when_capacity_is_exact():
    """c = 1 with K a multiple of N leaves no slack: the overflow walks must
    still find the last free slots."""
    assignment = Ring(nodes(7), vnodes=8, load_factor=1.0).assign(jobs(700))
    assert Counter(assignment.values()) == dict.fromkeys(nodes(7), 100)


# --- a ring from the previous view's ----------------------------------------


def test_a_ring_from_the_previous_one_is_the_ring_built_afresh(monkeypatch):
    """Placement derives each view's ring from the last one (a few slices
    instead of a sort): whatever the way, the same points and owners."""
    updates = []
    real = ring_module._updated
    monkeypatch.setattr(ring_module, "_updated", lambda *args: updates.append(args) or real(*args))
    keys = jobs(2000)
    ring = Ring(nodes(40), vnodes=16, load_factor=None)
    for members in (nodes(41), nodes(39), [*nodes(38), "late-1", "late-2"], nodes(40, start=3), nodes(40, start=3)):
        fresh = Ring(members, vnodes=16, load_factor=None)
        ring = Ring(members, vnodes=16, load_factor=None, previous=ring)
        assert ring._points == fresh._points
        assert ring.assign(keys) == fresh.assign(keys)
    assert len(updates) == 5  # the cheap way every time, not a new sort


@given(member_lists, member_lists, key_lists, small_vnodes)
def test_any_previous_ring_gives_the_same_ring(before, after, keys, vnodes):
    """Also when most members changed (a full build then) or the vnodes differ."""
    fresh = Ring(after, vnodes=vnodes)
    for previous in (Ring(before, vnodes=vnodes), Ring(before, vnodes=vnodes + 1), Ring([]), fresh):
        ring = Ring(after, vnodes=vnodes, previous=previous)
        assert ring._points == fresh._points
        for key in keys:
            assert ring.preference(key, 3) == fresh.preference(key, 3)
        assert ring.assign(keys) == fresh.assign(keys)


@given(st.lists(st.integers(min_value=0, max_value=2**128), unique=True), st.data())
def test_updating_sorted_points_equals_sorting_them(points, data):
    points.sort()
    gone = data.draw(st.lists(st.sampled_from(points), unique=True) if points else st.just([]))
    added = data.draw(st.lists(st.integers(min_value=0, max_value=2**128).filter(lambda p: p not in points), unique=True))
    assert _updated(points, gone, added) == sorted(set(points) - set(gone) | set(added))


@given(member_lists, key_lists, small_vnodes, st.text(min_size=1, max_size=8))
def test_a_join_through_the_previous_ring_moves_keys_only_to_the_newcomer(members, keys, vnodes, newcomer):
    before = Ring([*members, "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8"], vnodes=vnodes, load_factor=None)
    after = Ring([*before.members, newcomer], vnodes=vnodes, load_factor=None, previous=before)
    for key in keys:
        assert after.owner(key) in (before.owner(key), newcomer)


def test_a_thousand_member_view():
    """The view that froze a node (issue 13: 1,000 members announced at once,
    at 1,024 points each): builds, places, and updates for a join and a leave."""
    members = nodes(1000)
    ring = Ring(members)
    assert len(ring._points) == 1000 * DEFAULT_VNODES
    keys = jobs(10_000)
    assignment = ring.assign(keys)
    loads = Counter(assignment.values())
    assert sum(loads.values()) == len(keys)
    assert max(loads.values()) <= ring.capacity(len(keys)) == 11
    joined = Ring([*members, "node-1000"], previous=ring)
    plain_before, plain_after = Ring(members, load_factor=None), Ring([*members, "node-1000"], load_factor=None, previous=ring)
    assert joined._points == Ring([*members, "node-1000"])._points
    assert all(plain_after.owner(k) in (plain_before.owner(k), "node-1000") for k in keys)
    # Bounded loads at 10 keys per member: a join or a leave moves a few
    # times K/N (the bench: ~2-3x), not a reshuffle (46x with one bound
    # for all members, 11 before the leave and 12 after).
    assert moved(assignment, joined.assign(keys)) <= 8 * len(keys) / 1001
    left = Ring(members[1:], previous=ring)
    assert left._points == Ring(members[1:])._points
    assert moved(assignment, left.assign(keys)) <= 8 * len(keys) / 1000


def test_members_whose_tags_collide_resolve_the_same_everywhere(monkeypatch):
    """Two members whose 64-bit tags collide (a 2**-64 event per pair)
    cannot be told apart by their points: both resolve to the later name,
    on every node alike, and bounded loads still place every key."""
    real = ring_module._tag
    monkeypatch.setattr(ring_module, "_tag", lambda member: real("b" if member == "a" else member))
    ring_module._vnode_points.cache_clear()
    try:
        one, other = Ring(["c", "a", "b"], vnodes=8), Ring(["b", "c", "a"], vnodes=8)
        keys = jobs(300)
        assert one.assign(keys) == other.assign(keys)
        assert set(one.assign(keys).values()) == {"b", "c"}
        assert max(Counter(one.assign(keys).values()).values()) <= one.capacity(300) == 165
        assert one.preference("job-1", 3) == other.preference("job-1", 3)
        assert sorted(one.preference("job-1", 3)) == ["b", "c"]
    finally:
        ring_module._vnode_points.cache_clear()


# --- ranks -------------------------------------------------------------------


@given(st.text(max_size=10), st.text(max_size=10), member_lists)
@settings(max_examples=50)
def test_rank_is_a_function_of_the_pair_only(key, member, members):
    """Whatever ring a node holds, the same (run, member) pair ranks the same."""
    before = rank(key, member)
    Ring([*members, member]).assign([key])
    assert rank(key, member) == before
    assert 0 <= before < 2**64


def test_rank_does_not_confuse_how_a_pair_is_split():
    assert rank("ab", "c") != rank("a", "bc")


def test_rank_orders_members_differently_per_key():
    """A fixed pecking order would make one member win every conflict."""
    members = nodes(5)
    winners = {max(members, key=lambda m, k=k: rank(k, m)) for k in jobs(100)}
    assert winners == set(members)
