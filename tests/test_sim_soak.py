"""Wide seed sweeps of the membership scenarios: ``python -m pytest -m soak``.

The same invariants as tests/test_sim_membership.py, over a hundred seeds
each and on larger clusters; too slow for every run, and not needed there:
the simulator is deterministic, so a failing seed reproduces exactly.
"""

from __future__ import annotations

import pytest

from sim.faults import ClockStep, Clog, Crash, Degrade, Join, Leave, Partition, Pause
from sim.membership_scenario import MembershipScenario, run_membership

pytestmark = pytest.mark.soak

N = 20
A, B = frozenset(range(N // 2)), frozenset(range(N // 2, N))

SCENARIOS = {
    "split": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=150, faults=(Partition(A, B, 20, 60),)
    ),
    "long-split": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=260, seeds=2,
        overrides={"reconnect_timeout": 60.0, "tombstone_timeout": 60.0},
        faults=(Partition(A, B, 20, 180),),
    ),
    "one-way-half": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=180, faults=(Partition(A, B, 20, 60, one_way=True),)
    ),
    "one-way-node": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=180, faults=(Partition({3}, frozenset(range(N)) - {3}, 20, 60, one_way=True),)
    ),
    "loss": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=150, faults=(Degrade(0.1, 0.1, 0, 120), Join({18, 19}, 30), Crash({7}, 60))
    ),
    "churn": lambda seed: MembershipScenario(
        nodes=30, seed=seed, duration=150,
        faults=(Join(range(20, 25), 20), Leave({3, 4}, 30), Join(range(25, 30), 40), Leave({10, 22}, 50),
                Crash({12}, 60), Leave({0}, 70)),
    ),
    "restart": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=100, faults=(Crash({3}, 20, 40), Crash({5}, 20, 1))
    ),
    "restart-clock-back": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=100, faults=(ClockStep({3, 5}, 10, -3600), Crash({3}, 20, 40), Crash({5}, 20, 1))
    ),
    "leave-rejoin": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=90, faults=(Leave({4, 9}, 20, rejoin_after=15),)
    ),
    "pause": lambda seed: MembershipScenario(
        nodes=N, seed=seed, duration=120, faults=(Pause({2}, 20, 40), Clog({9}, 30, 3))
    ),
    "large-crash": lambda seed: MembershipScenario(
        nodes=100, seed=seed, duration=90, loss=0.02, faults=(Crash({5, 50, 77}, 30),)
    ),
}


@pytest.mark.parametrize("seed", range(100, 200))
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sweep(name, seed):
    result = run_membership(SCENARIOS[name](seed))
    assert result.converged, (name, seed)
    assert result.false_positives == 0, (name, seed)
    assert result.leaves_reported_failed == 0, (name, seed)
    # A node restarted after 1 s may come back before anyone noticed: only
    # crashes of nodes that stay down long enough must be detected by all.
    detected = result.detection_all_seconds[:1] if name.startswith("restart") else result.detection_all_seconds
    assert all(d is not None for d in detected), (name, seed)
