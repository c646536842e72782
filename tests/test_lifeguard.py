"""Lifeguard's local health multiplier and dynamic suspicion timeout."""

from __future__ import annotations

import math

import pytest

from membership.awareness import Awareness
from membership.suspicion import Suspicion


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

