"""Membership under faults, in the simulator: each scenario asserts its invariants.

Bounds come from the protocol's own parameters: a crashed member is first
probed by someone within a few rounds (each round every member probes one
other), then a suspicion lasts at most the maximum Lifeguard timeout, and
the verdict spreads in a few gossip rounds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from membership import MembershipConfig, Status
from sim.faults import ClockStep, Clog, Crash, Degrade, Join, Leave, Partition, Pause
from sim.membership_scenario import MembershipResult, MembershipRun, MembershipScenario, run_membership

SEEDS = [1, 2, 3]
N = 20
HALF_A, HALF_B = frozenset(range(N // 2)), frozenset(range(N // 2, N))


def detection_bound(config: MembershipConfig, n: int) -> float:
    return 8 * config.probe_interval + config.suspicion_max_timeout(n) + 10 * config.gossip_interval


def views(run: MembershipRun) -> dict[str, dict[str, tuple[Status, int]]]:
    """Each running node's view: member name -> (status, incarnation)."""
    return {
        node.name: {m.name: (m.status, m.incarnation) for m in node.core.members()}
        for node in run.nodes
        if node.running and node.core is not None
    }


def assert_healthy(result: MembershipResult) -> None:
    assert result.converged, result.to_json()
    assert result.false_positives == 0, result.to_json()
    assert result.leaves_reported_failed == 0, result.to_json()
    # A datagram the network delivered twice is a replay to the codec: dropped, harmlessly (and only those).
    assert result.drops["replayed"] <= result.network.get("duplicated", 0)
    assert sum(result.drops.values()) == result.drops["replayed"], result.drops


@pytest.mark.parametrize("seed", SEEDS)
def test_steady_state_has_no_false_failure_and_identical_views(seed):
    run = MembershipRun(MembershipScenario(nodes=N, seed=seed, duration=60))
    result = run.run()
    assert_healthy(result)
    assert result.failures_declared == 0
    assert result.convergence_seconds < 10
    live = {node.name: {m.name for m in node.core.live_members()} for node in run.nodes}
    assert all(view == set(live) for view in live.values())
    assert len({node.core.checksum for node in run.nodes}) == 1


@pytest.mark.parametrize("seed", range(1, 6))
def test_a_mass_join_leaves_no_member_missing_for_long(seed):
    """Serf sometimes leaves one agent missing a member until its next
    push-pull, tens of seconds later; a joiner here compares views a few
    probe intervals after joining, so the last hole closes within seconds."""
    scenario = MembershipScenario(nodes=50, seed=seed, duration=40)
    result = run_membership(scenario)
    assert_healthy(result)
    assert result.convergence_seconds <= 4 * scenario.config().probe_interval + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_crashed_nodes_are_declared_failed_by_all_within_the_bound(seed):
    scenario = MembershipScenario(nodes=N, seed=seed, duration=90, faults=(Crash({4, 11}, at=20.0),))
    run = MembershipRun(scenario)
    result = run.run()
    assert_healthy(result)
    bound = detection_bound(scenario.config(), N)
    for first, last in zip(result.detection_first_seconds, result.detection_all_seconds):
        assert first is not None and last is not None
        assert first <= last <= bound
    for view in views(run).values():
        assert view["node-0004"][0] is Status.DEAD and view["node-0011"][0] is Status.DEAD


@pytest.mark.parametrize("seed", SEEDS)
def test_halves_split_longer_than_dead_members_are_remembered_merge_again(seed):
    """memberlist cannot heal this (its issue #222): once the halves have
    forgotten each other, only re-contacting seeds brings them back."""
    remember = 60.0
    scenario = MembershipScenario(
        nodes=N,
        seed=seed,
        duration=260,
        seeds=2,  # both in half A: half B must find its way back alone
        overrides={"reconnect_timeout": remember, "tombstone_timeout": remember},
        faults=(Partition(HALF_A, HALF_B, start=20.0, duration=3 * remember),),
    )
    run = MembershipRun(scenario)
    run.run_until(20.0 + 3 * remember - 1)  # late in the split
    for node in run.nodes:
        own_half = HALF_A if node.index in HALF_A else HALF_B
        assert {m.name for m in node.core.live_members()} == {run.nodes[i].name for i in own_half}
        assert node.core.stats.reaped >= len(own_half)  # the other half is forgotten
    result = run.run()
    assert_healthy(result)
    config = scenario.config()
    assert result.convergence_seconds <= 1.5 * config.reconnect_interval + detection_bound(config, N)


@pytest.mark.parametrize("seed", SEEDS)
def test_halves_split_shorter_than_memory_merge_through_dead_members(seed):
    scenario = MembershipScenario(
        nodes=N, seed=seed, duration=150, faults=(Partition(HALF_A, HALF_B, start=20.0, duration=60.0),)
    )
    result = run_membership(scenario)
    assert_healthy(result)
    assert result.failures_declared >= 2 * (N // 2) ** 2  # each half failed the other
    assert result.convergence_seconds <= 1.5 * scenario.config().reconnect_interval


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("group", [HALF_A, frozenset({3})], ids=["half", "one-node"])
def test_one_way_partition_causes_no_permanent_flapping(seed, group):
    scenario = MembershipScenario(
        nodes=N,
        seed=seed,
        duration=180,
        faults=(Partition(group, frozenset(range(N)) - group, start=20.0, duration=60.0, one_way=True),),
    )
    result = run_membership(scenario)
    assert_healthy(result)
    assert result.failures_declared > 0  # the fault did bite
    assert result.last_event_seconds < 80.0 + 60.0  # then the views settled for good


@pytest.mark.parametrize("seed", SEEDS)
def test_ten_percent_loss_and_duplication(seed):
    scenario = MembershipScenario(
        nodes=N,
        seed=seed,
        duration=150,
        faults=(
            Degrade(loss=0.1, duplicate=0.1, start=0.0, duration=120.0),
            Join({18, 19}, at=30.0),
            Crash({7}, at=60.0),
        ),
    )
    run = MembershipRun(scenario)
    result = run.run()
    assert_healthy(result)
    assert result.network["lost"] > 300 and result.network["duplicated"] > 300  # the fault did bite
    assert result.drops["replayed"] > 200  # and the copies were refused as replays
    (detected,) = result.detection_all_seconds
    assert detected is not None and detected <= detection_bound(scenario.config(), N)
    for view in views(run).values():
        assert view["node-0018"][0] is Status.ALIVE and view["node-0019"][0] is Status.ALIVE


@pytest.mark.parametrize("seed", SEEDS)
def test_churn_of_joins_and_leaves(seed):
    scenario = MembershipScenario(
        nodes=30,
        seed=seed,
        duration=150,
        faults=(
            Join(range(20, 25), at=20.0),
            Leave({3, 4}, at=30.0),
            Join(range(25, 30), at=40.0),
            Leave({10, 22}, at=50.0),
            Crash({12}, at=60.0),
            Leave({0}, at=70.0),  # even the seed
        ),
    )
    run = MembershipRun(scenario)
    result = run.run()
    assert_healthy(result)
    left = {"node-0003", "node-0004", "node-0010", "node-0022", "node-0000"}
    for view in views(run).values():
        # left, or never known by nodes that joined after the leave
        assert all(view.get(name, (Status.LEFT,))[0] is Status.LEFT for name in left)
        assert view["node-0012"][0] is Status.DEAD
        assert sum(status.is_live for status, _ in view.values()) == 30 - len(left) - 1


@pytest.mark.parametrize("seed", SEEDS)
def test_a_node_restarted_under_its_name_is_not_confused_with_its_dead_self(seed):
    scenario = MembershipScenario(
        nodes=N,
        seed=seed,
        duration=100,
        faults=(
            Crash({3}, at=20.0, restart_after=40.0),  # declared failed, then back
            Crash({5}, at=20.0, restart_after=1.0),  # back before anyone noticed
        ),
    )
    run = MembershipRun(scenario)
    result = run.run()
    assert_healthy(result)
    assert result.detection_all_seconds[0] is not None  # its first life was declared failed
    for index in (3, 5):
        node = run.nodes[index]
        assert node.boots == 2
        for view in views(run).values():
            assert view[node.name] == (Status.ALIVE, node.core.incarnation)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("down_for", [1.0, 40.0], ids=["before-detection", "after-detection"])
def test_a_restart_after_the_wall_clock_stepped_back_still_wins(seed, down_for):
    """Its boot-time incarnation is then below its previous life's: it must
    learn of its old self and refute, not stay outranked."""
    scenario = MembershipScenario(
        nodes=N,
        seed=seed,
        duration=100,
        # Back 100 s: below its first life's boot time, inside the codec's replay window (a clock off
        # by more than the window is cut off in a keyed cluster: its frames are stale everywhere).
        faults=(ClockStep({3}, at=10.0, seconds=-100.0), Crash({3}, at=20.0, restart_after=down_for)),
    )
    run = MembershipRun(scenario)
    first_life = []
    run.at(19.9, lambda: first_life.append(run.nodes[3].core.incarnation))
    result = run.run()
    assert_healthy(result)
    node = run.nodes[3]
    booted_at = int(node.clock.wall(20.0 + down_for) * 1000)
    assert booted_at < first_life[0]  # the step put its new life below the old one...
    assert node.core.incarnation > first_life[0]  # ...and it climbed back above it
    for view in views(run).values():
        assert view[node.name] == (Status.ALIVE, node.core.incarnation)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_node_that_left_can_come_back_under_its_name(seed):
    scenario = MembershipScenario(
        nodes=N, seed=seed, duration=90, faults=(Leave({4, 9}, at=20.0, rejoin_after=15.0),)
    )
    run = MembershipRun(scenario)
    result = run.run()
    assert_healthy(result)
    for index in (4, 9):
        node = run.nodes[index]
        for view in views(run).values():
            assert view[node.name] == (Status.ALIVE, node.core.incarnation)


@pytest.mark.parametrize("seed", SEEDS)
def test_paused_and_clogged_nodes_come_back(seed):
    scenario = MembershipScenario(
        nodes=N,
        seed=seed,
        duration=120,
        faults=(Pause({2}, start=20.0, duration=40.0), Clog({9}, start=30.0, duration=3.0)),
    )
    run = MembershipRun(scenario)
    result = run.run()
    assert_healthy(result)
    assert any(view["node-0002"][0] is Status.ALIVE for view in views(run).values())
    assert run.nodes[2].core.stats.refutations >= 1  # it heard it was declared failed and refuted


@pytest.mark.parametrize("pause", [0.05, 0.3, 2.0])
def test_a_core_never_sees_its_clock_go_backwards(pause):
    """Short pauses end before the core's next deadline: resuming must not
    hand it that deadline as the time, and an earlier time after."""
    scenario = MembershipScenario(
        nodes=8,
        seed=4,
        duration=40,
        drift=1e-3,
        faults=tuple(Pause({1}, start=5.0 + 1.37 * k, duration=pause) for k in range(10)),
    )
    run = MembershipRun(scenario)
    handed: list[float] = []

    def watch() -> None:
        core = run.nodes[1].core
        tick, receive = core.tick, core.receive

        def checked_tick(now: float) -> None:
            handed.append(now)
            tick(now)

        def checked_receive(now: float, *args: object) -> None:
            handed.append(now)
            receive(now, *args)

        core.tick, core.receive = checked_tick, checked_receive

    run.at(1.5, watch)
    assert_healthy(run.run())
    assert len(handed) > 100
    assert all(a <= b for a, b in zip(handed, handed[1:]))


@pytest.mark.parametrize("seed", SEEDS)
def test_clock_drift_and_wall_clock_skew_change_nothing(seed):
    scenario = MembershipScenario(
        # Wall clocks up to 110 s apart: just inside the codec's 120 s replay window.
        nodes=N, seed=seed, duration=90, drift=1e-3, wall_skew=55.0, faults=(Crash({6}, at=30.0),)
    )
    result = run_membership(scenario)
    assert_healthy(result)
    assert result.detection_all_seconds[0] <= detection_bound(scenario.config(), N)


def test_same_seed_same_trace_different_seed_different_trace():
    scenario = MembershipScenario(nodes=10, seed=42, duration=40, loss=0.05, faults=(Crash({2}, at=10.0),))
    first, second = run_membership(scenario), run_membership(scenario)
    assert first.trace_hash == second.trace_hash
    assert first.to_json() | {"wall_seconds": 0, "sim_seconds_per_wall_second": 0} == second.to_json() | {
        "wall_seconds": 0,
        "sim_seconds_per_wall_second": 0,
    }
    other = run_membership(MembershipScenario(nodes=10, seed=43, duration=40, loss=0.05, faults=(Crash({2}, at=10.0),)))
    assert other.trace_hash != first.trace_hash


def test_trace_does_not_depend_on_the_interpreter_hash_seed():
    command = [sys.executable, "-m", "sim", "membership", "--nodes", "12", "--seed", "5", "--duration", "30",
               "--crash", "1", "--crash-at", "10", "--loss", "0.05", "--json"]
    hashes = set()
    for hash_seed in ("0", "1", "12345"):
        env = os.environ | {"PYTHONHASHSEED": hash_seed}
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=120).stdout
        hashes.add(output.split('"trace_hash": "')[1][:32])
    assert len(hashes) == 1


@pytest.mark.parametrize("burst", [64, 8])
def test_learning_bounds_leave_a_100_member_join_whole(burst):
    """A mass join of 100 nodes through one seed, then one more node
    joining the converged cluster: its seed's full table comes whole (a
    node that knows no one is not rate-limited), and the per-source
    learning budget (however tight) delays no one for long."""
    scenario = MembershipScenario(
        nodes=101, seed=1, duration=60, faults=(Join({100}, at=40.0),), overrides={"learn_burst": burst}
    )
    run = MembershipRun(scenario)
    joined = []
    run.at(40.5, lambda: joined.append(len(run.nodes[100].core.live_members())))
    result = run.run()
    assert_healthy(result)
    assert joined == [101]  # the joiner knew all of them within half a second
    assert run.nodes[100].core.stats.members_rate_limited == 0
    for view in views(run).values():
        assert sum(status is Status.ALIVE for status, _ in view.values()) == 101
