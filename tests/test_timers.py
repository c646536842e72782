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
