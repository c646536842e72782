"""The claim order and the events a status change emits."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from membership import Membership, MembershipConfig
from membership.messages import Alive, Dead, Left, Suspect
from membership.state import EventKind, Member, Status, transition_events

ADDR = ("10.0.0.2", 7946)


def _claim(status: Status, incarnation: int):
    if status is Status.ALIVE:
        return Alive("m", incarnation, ADDR)
    if status is Status.SUSPECT:
        return Suspect("m", incarnation, "x")
    if status is Status.DEAD:
        return Dead("m", incarnation, "x")
    return Left("m", incarnation)


claims = st.lists(st.tuples(st.sampled_from(list(Status)), st.integers(0, 5)), max_size=12)


@given(claims, st.randoms(use_true_random=False))
def test_views_are_the_max_claim_whatever_the_order(history, shuffler):
    """Hearing the same claims in any order, any number of times, gives the
    same view: the greatest claim under (incarnation, status)."""
    cores = []
    for order in (history, shuffler.sample(history, len(history)), history + history[::-1]):
        core = Membership("self", ("10.0.0.1", 7946), MembershipConfig(), rng=random.Random(0), now=0.0)
        core.receive(0.0, ADDR, Alive("m", 0, ADDR))
        for status, incarnation in order:
            core.receive(0.0, ADDR, _claim(status, incarnation))
        cores.append(core)
    expected = max([(0, Status.ALIVE)] + [(inc, status) for status, inc in history])
    for core in cores:
        member = core.member("m")
        assert member is not None and (member.incarnation, member.status) == expected
    assert len({core.checksum for core in cores}) == 1


def test_only_an_alive_claim_introduces_a_stranger():
    core = Membership("self", ("10.0.0.1", 7946), MembershipConfig(), rng=random.Random(0), now=0.0)
    for claim in (Suspect("m", 3, "x"), Dead("m", 3, "x"), Left("m", 3)):
        core.receive(0.0, ADDR, claim)
        assert core.member("m") is None
    core.receive(0.0, ADDR, Alive("m", 1, ADDR))
    assert core.member("m") == Member("m", ADDR, 1, Status.ALIVE)


def _m(status: Status, incarnation: int = 1, meta: bytes = b"") -> Member:
    return Member("m", ADDR, incarnation, status, meta)


def test_transition_events():
    assert transition_events(None, _m(Status.ALIVE)) == (EventKind.JOINED,)
    assert transition_events(_m(Status.ALIVE), _m(Status.SUSPECT)) == (EventKind.SUSPECT,)
    assert transition_events(_m(Status.SUSPECT), _m(Status.ALIVE, 2)) == (EventKind.ALIVE,)
    assert transition_events(_m(Status.SUSPECT), _m(Status.DEAD)) == (EventKind.FAILED,)
    assert transition_events(_m(Status.ALIVE), _m(Status.LEFT)) == (EventKind.LEFT,)
    assert transition_events(_m(Status.DEAD), _m(Status.LEFT)) == ()  # already gone: no second story
    assert transition_events(_m(Status.DEAD), _m(Status.ALIVE, 2)) == (EventKind.JOINED,)
    assert transition_events(_m(Status.ALIVE), _m(Status.ALIVE, 2)) == ()
    assert transition_events(_m(Status.ALIVE), _m(Status.ALIVE, 2, b"v2")) == (EventKind.UPDATED,)
    assert transition_events(None, _m(Status.SUSPECT)) == (EventKind.JOINED, EventKind.SUSPECT)
