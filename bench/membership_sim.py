"""Membership in the simulator, at N = 50, 200 and 1000: speed and protocol figures.

    python bench/membership_sim.py [--sizes 50,200,1000] [--seed 1]

Per cluster size it prints:
- join: all nodes boot within one second through one seed; simulated seconds
  until every view was complete, and the wall time that took (the join storm:
  each of the N alive claims is gossiped about N * retransmit-limit times);
- steady state: a converged cluster, three windows of max(60 s, one
  push-pull period) of simulated time each: simulated seconds per wall
  second (best and median, as the machine is shared) with every frame
  HMAC-signed and verified by the real codec, the same with unsigned frames
  (what authentication costs), and frames per wall second (signed, best);
- first detection: twenty nodes crash one after another; mean time from a
  crash to the first suspicion, in protocol periods, beside SWIM's analytic
  e/(e-1) ~= 1.58 periods until some member picks it as a probe target;
- dissemination: one node changes its metadata; gossip rounds until 99.99 %
  of the members hold it, beside the epidemic model of Serf's convergence
  simulator (fan-out 3, no loss).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from membership.effects import Event
from membership.state import EventKind
from sim.membership_scenario import MembershipRun, MembershipScenario
from sim.node import SimNode


def serf_model_rounds(nodes: int, fanout: int, loss: float = 0.0, target: float = 0.9999) -> int:
    """Rounds until the infected fraction reaches ``target`` in the logistic
    model Serf's convergence simulator plots:
    infected(x) = n / (1 + (n + 1) * exp(-contact * n * x)), contact = fanout / n * (1 - loss) / 2."""
    contact = fanout / nodes * (1 - loss) * 0.5
    rounds = 0
    while nodes / (1 + (nodes + 1) * math.exp(-contact * nodes * rounds)) / nodes < target:
        rounds += 1
    return rounds


class BenchRun(MembershipRun):
    """A membership run that also records metadata updates as they spread."""

    def __init__(self, scenario: MembershipScenario) -> None:
        super().__init__(scenario)
        self.updates: dict[str, float] = {}  # observer -> when it learned the new metadata

    def on_event(self, node: SimNode, event: Event) -> None:
        super().on_event(node, event)
        if event.kind is EventKind.UPDATED and event.member.meta == b"v2":
            self.updates.setdefault(node.name, self.sim.now)

    def timed(self, until: float) -> float:
        started = time.perf_counter()
        self.run_until(until)
        return time.perf_counter() - started


def join_and_settle(run: BenchRun) -> tuple[float, float, float]:
    """Boot everyone, run until the views converge, then let the join's
    gossip drain. Returns (simulated time of convergence, wall seconds, now)."""
    join_wall, t = 0.0, 0.0
    while run.converged_since is None or t < 5:
        t += 1.0
        join_wall += run.timed(t)
    joined_at = run.converged_since
    assert joined_at is not None
    settle = 2 * run.config.push_pull_interval
    join_wall += run.timed(t + settle)
    return joined_at, join_wall, t + settle


def steady(run: BenchRun, t: float) -> tuple[list[float], float, float]:
    """Three windows of max(60 s, one push-pull period): the machine is
    shared, so report the best and the median. Returns (speeds, best frames
    per wall second, now)."""
    window = max(60.0, run.config.push_pull_period(run.scenario.nodes))
    speeds, frame_rates = [], []
    for _ in range(3):
        frames = run.network.stats.frames
        wall = run.timed(t + window)
        speeds.append(window / wall)
        frame_rates.append((run.network.stats.frames - frames) / wall)
        t += window
    return speeds, max(frame_rates), t


def bench(nodes: int, seed: int) -> dict[str, float]:
    run = BenchRun(MembershipScenario(nodes=nodes, seed=seed, duration=10_000))
    config = run.config
    joined_at, join_wall, t = join_and_settle(run)
    speeds, frame_rate, t = steady(run, t)
    # First detection: crashes 30 simulated seconds apart.
    crashes = 20
    for k in range(crashes):
        run.at(t + 30 * k, run.crash, 1 + k)
    run.timed(t + 30 * crashes + 30)
    t += 30 * crashes + 30
    suspected = run.measure().suspicion_first_seconds
    periods = [first / config.probe_interval for first in suspected if first is not None]
    # Dissemination of one metadata change.
    origin = run.nodes[crashes + 1]
    changed_at = t + 1
    run.at(changed_at, origin.set_meta, b"v2")
    run.timed(t + 60)
    live = [node for node in run.nodes if node.running and node is not origin]
    times = sorted(run.updates[node.name] - changed_at for node in live if node.name in run.updates)
    needed = math.ceil(0.9999 * len(live))
    reach = times[needed - 1] if len(times) >= needed else math.inf
    # The same steady state with unsigned frames: what authentication costs.
    unsigned = BenchRun(MembershipScenario(nodes=nodes, seed=seed, duration=10_000, authenticated=False))
    _, _, u = join_and_settle(unsigned)
    unsigned_speeds, _, _ = steady(unsigned, u)
    return {
        "nodes": nodes,
        "join_converged_sim_s": joined_at,
        "join_wall_s": join_wall,
        "steady_x_best": max(speeds),
        "steady_x_median": statistics.median(speeds),
        "steady_frames_per_wall_s": frame_rate,
        "unsigned_x_best": max(unsigned_speeds),
        "unsigned_x_median": statistics.median(unsigned_speeds),
        "first_detection_periods": statistics.mean(periods),
        "dissemination_rounds": reach / config.gossip_interval,
        "serf_model_rounds": serf_model_rounds(nodes, config.gossip_nodes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"e/(e-1) = {math.e / (math.e - 1):.2f} protocol periods (SWIM, expected first detection)")
    header = (
        f"{'N':>5} {'join conv s':>11} {'join wall s':>11} {'signed x best/median':>20} "
        f"{'unsigned x':>15} {'frames/wall s':>13} {'1st detect (periods)':>20} {'99.99% rounds':>13} "
        f"{'serf model':>10}"
    )
    print(header)
    for size in (int(s) for s in args.sizes.split(",")):
        r = bench(size, args.seed)
        print(
            f"{r['nodes']:>5} {r['join_converged_sim_s']:>11.2f} {r['join_wall_s']:>11.1f} "
            f"{r['steady_x_best']:>11.0f} / {r['steady_x_median']:<6.0f} "
            f"{r['unsigned_x_best']:>7.0f} / {r['unsigned_x_median']:<5.0f} {r['steady_frames_per_wall_s']:>13.0f} "
            f"{r['first_detection_periods']:>20.2f} {r['dissemination_rounds']:>13.1f} {r['serf_model_rounds']:>10d}",
            flush=True,
        )


if __name__ == "__main__":
    main()
