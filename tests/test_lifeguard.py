"""Lifeguard's local health multiplier and dynamic suspicion timeout."""

from __future__ import annotations

import math

import pytest

from membership.awareness import Awareness
from membership.config import MembershipConfig, profile
from membership.suspicion import Suspicion, detection_bound


def test_awareness_is_clamped_and_scales_timeouts():
    awareness = Awareness(max_multiplier=8)
    awareness.apply_delta(-3)
    assert awareness.score == 0 and awareness.scale(1.0) == 1.0
    awareness.apply_delta(20)
    assert awareness.score == 7 and awareness.scale(0.5) == 4.0


def test_suspicion_shrinks_from_max_to_min_with_independent_confirmations():
    s = Suspicion.start(5, "a", now=100.0, min_timeout=5.0, max_timeout=30.0, k=3)
    assert s.deadline() == 130.0
    assert not s.confirm("a")  # the accuser is no confirmation of itself
    assert s.confirm("b") and not s.confirm("b")
    assert s.timeout() == pytest.approx(30.0 - 25.0 * math.log(2) / math.log(4))
    assert s.confirm("c") and s.confirm("d")
    assert s.timeout() == 5.0 and s.deadline() == 105.0
    assert not s.confirm("e")  # k reached: nothing more to learn


def test_suspicion_without_expected_confirmations_uses_the_minimum():
    s = Suspicion.start(1, "a", now=0.0, min_timeout=4.0, max_timeout=24.0, k=0)
    assert s.deadline() == 4.0



def test_a_cluster_suspicion_expects_confirmations_only_when_enough_members_can_give_them():
    lan = MembershipConfig()  # suspicion_mult 4: two confirmations expected, from 4 members on
    big = Suspicion.for_cluster(lan, 100, incarnation=7, accuser="a", now=10.0)
    assert (big.incarnation, big.accuser, big.started) == (7, "a", 10.0)
    assert big.min_timeout == 4.0 * 2 and big.max_timeout == 6 * 4.0 * 2  # log10(100) = 2
    assert big.expected_confirmations == 2
    assert Suspicion.for_cluster(lan, 4, 1, "a", 0.0).expected_confirmations == 2
    # Three members: the suspect and the accuser leave one, who cannot be two confirmations.
    small = Suspicion.for_cluster(lan, 3, 1, "a", 0.0)
    assert small.expected_confirmations == 0 and small.deadline() == small.min_timeout == 4.0


def test_the_detection_bound_is_two_probe_rounds_then_the_suspicion():
    lan = MembershipConfig()  # 1 s probes; suspicion 4 s at least, 24 s at most below 10 members
    # Two rounds of 9 probes, then the suspicion, shortened by the other observers' confirmations.
    assert detection_bound(lan, 10, observers=1) == 2 * 9 + 4 * 6
    assert detection_bound(lan, 10, observers=3) == 2 * 9 + 4
    one = Suspicion.for_cluster(lan, 10, 1, "a", 0.0)
    one.confirm("b")
    assert detection_bound(lan, 10, observers=2) == 2 * 9 + one.timeout()
    assert detection_bound(lan, 10, observers=9) == detection_bound(lan, 10, observers=3)  # two confirmations at most count
    # Too few members to expect confirmations: the shortest suspicion, whoever observes.
    assert detection_bound(lan, 3, observers=1) == 2 * 2 + 4
    # Observers unknown: the longest suspicion, even where none is expected.
    assert detection_bound(lan, 10) == 2 * 9 + 24
    assert detection_bound(lan, 3) == 2 * 2 + 24
    # Longer rounds for a caller that wants the slack.
    assert detection_bound(lan, 10, round_probes=10) == 2 * 10 + 24
    # The profile's timings count: wan probes every 5 s and starts suspicions at 6 x 5 s.
    wan = profile("wan")
    assert detection_bound(wan, 5) == 2 * 4 * 5 + 6 * 6 * 5

