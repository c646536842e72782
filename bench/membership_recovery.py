"""How fast views agree again after a mass join and after a healed split.

    python bench/membership_recovery.py [--seeds 10]

For each cluster size, over several seeds, it prints the median and the
worst seconds until every running node's view equals the truth:
- after a mass join (every node boots within one second, through one seed),
  counted from the last boot;
- after a half/half partition of 40 s, counted from the moment it heals.
Serf's complaint to beat: an agent left missing a member until its next
push-pull, tens of seconds later.
"""

from __future__ import annotations

import argparse
import statistics

from sim.faults import Partition
from sim.membership_scenario import MembershipScenario, run_membership


def seconds(scenarios: list[MembershipScenario]) -> tuple[float, float]:
    times = []
    for scenario in scenarios:
        result = run_membership(scenario)
        if result.convergence_seconds is None or result.false_positives:
            raise SystemExit(f"seed {scenario.seed}: no convergence, or a running member declared failed")
        times.append(result.convergence_seconds)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    seeds = range(1, args.seeds + 1)
    print(f"{'N':>4} {'mass join: median / worst s':>28} {'healed split: median / worst s':>31}")
    for n in (20, 50, 200):
        join = seconds([MembershipScenario(nodes=n, seed=s, duration=40) for s in seeds])
        half = frozenset(range(n // 2))
        split = Partition(half, frozenset(range(n)) - half, start=30.0, duration=40.0)
        heal = seconds([MembershipScenario(nodes=n, seed=s, duration=200, faults=(split,)) for s in seeds])
        print(f"{n:>4} {join[0]:>19.1f} / {join[1]:<6.1f} {heal[0]:>22.1f} / {heal[1]:<6.1f}", flush=True)


if __name__ == "__main__":
    main()
