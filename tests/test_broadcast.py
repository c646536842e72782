"""The transmit-limited broadcast queue."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from membership.broadcast import BroadcastQueue


def test_newer_message_replaces_older_with_the_same_key():
    queue: BroadcastQueue[str] = BroadcastQueue()
    queue.enqueue("a", "a1", 10)
    queue.take(100, limit=5)
    queue.enqueue("a", "a2", 10)
    assert len(queue) == 1
    assert queue.take(100, limit=5) == ["a2"]


def test_least_sent_first_newest_first_within_the_budget():
    queue: BroadcastQueue[str] = BroadcastQueue()
    queue.enqueue("a", "a", 40)
    queue.enqueue("b", "b", 40)
    assert queue.take(50, limit=3) == ["b"]  # newest first; only one fits
    queue.enqueue("c", "c", 40)
    assert queue.take(100, limit=3) == ["c", "a"]  # never sent before "b" (sent once)
    assert sorted(queue.take(200, limit=3)) == ["a", "b", "c"]


def test_retired_after_limit_transmissions():
    queue: BroadcastQueue[str] = BroadcastQueue()
    queue.enqueue("a", "a", 10)
    sent = [queue.take(100, limit=4) for _ in range(6)]
    assert sent == [["a"]] * 4 + [[]] * 2
    assert not queue.pending("a")


def test_skips_what_does_not_fit_and_takes_smaller_ones():
    queue: BroadcastQueue[str] = BroadcastQueue()
    queue.enqueue("small", "s", 20)
    queue.enqueue("big", "b", 90)
    assert queue.take(60, limit=2) == ["s"]


@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(8, 200)), min_size=1, max_size=40),
    st.integers(8, 1400),
    st.integers(1, 6),
)
def test_packets_stay_within_budget_and_every_key_is_sent_limit_times(items, budget, limit):
    queue: BroadcastQueue[tuple[str, int]] = BroadcastQueue()
    latest = {}
    for key, size in items:
        queue.enqueue(key, (key, size), size)
        latest[key] = size
    sent: dict[str, int] = {}
    for _ in range(limit * len(latest) + 2):
        packet = queue.take(budget, limit)
        assert sum(size for _, size in packet) <= budget
        assert len({key for key, _ in packet}) == len(packet)
        for key, size in packet:
            assert latest[key] == size  # never a stale version
            sent[key] = sent.get(key, 0) + 1
    fits = {key for key, size in latest.items() if size <= budget}
    assert sent == {key: limit for key in fits}


@given(
    st.lists(st.sampled_from("abcd"), min_size=1, max_size=30),
    st.integers(1, 6),
    st.integers(1, 4),
)
def test_with_targets_a_message_goes_to_each_at_most_once_and_stops_once_all_had_it(targets, limit, audience):
    queue: BroadcastQueue[str] = BroadcastQueue()
    queue.enqueue("k", "news", 10)
    got: list[str] = []
    for target in targets:
        if queue.take(100, limit, target=target, audience=audience):
            got.append(target)
    assert len(got) == len(set(got))  # never twice to one target
    assert len(got) <= min(limit, audience)
    if len(queue):  # still queued: every target asked for it got it
        assert set(got) == set(targets) and len(got) < min(limit, audience)
    else:  # retired: by the limit, or once the audience had it
        assert len(got) == min(limit, audience)
