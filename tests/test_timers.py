"""The core's named one-shot timers."""

from __future__ import annotations

import math

from membership.timers import Timers


def test_timers_fire_in_order_and_honour_cancel_and_reschedule():
    timers = Timers()
    timers.schedule("b", 2.0)
    timers.schedule("a", 1.0)
    timers.schedule("c", 2.0)
    timers.schedule("gone", 0.5)
    timers.cancel("gone")
    timers.schedule("a", 3.0)  # moved later
    assert timers.next_deadline() == 2.0
    assert timers.due(2.5) == ["b", "c"]  # ties in scheduling order
    assert "a" in timers and len(timers) == 1
    assert timers.due(3.0) == ["a"]
    assert timers.next_deadline() == math.inf


def test_schedule_by_only_moves_a_deadline_earlier():
    timers = Timers()
    timers.schedule("t", 10.0)
    timers.schedule_by("t", 20.0)
    assert timers.next_deadline() == 10.0
    timers.schedule_by("t", 5.0)
    assert timers.next_deadline() == 5.0 and timers.due(6.0) == ["t"]
    timers.schedule_by("new", 7.0)  # a key not pending is simply scheduled
    assert timers.due(7.0) == ["new"] and timers.next_deadline() == math.inf
