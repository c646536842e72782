"""Chaos campaigns in the simulator (``sim.chaos``): a small sweep in CI, the
seeds that once found a violation kept as regressions, the replay line, and
a soak of thousands of seeds behind ``-m soak``."""

from __future__ import annotations

import json
import subprocess
import sys

import attrs
import pytest

from sim.chaos import (
    Campaign,
    check,
    draw_mix,
    parse_seeds,
    run_campaign,
    run_seed,
    scenario_of,
)
from sim.faults import Crash, Degrade, Partition
from sim.jobs_scenario import JobsRun

# The classic draw: the mix every regression seed below was found with.
CAMPAIGN = Campaign(mix="classic")

# Seeds that once broke an invariant, with what was wrong; each must pass.
REGRESSIONS = {
    # A node partitioned off was declared dead; the other side recorded its
    # run of a mode-all tick "lost", and the node, alive, cancelled it.
    8: "scheduler: a run recorded lost by a node that took its owner for failed",
    # A node left gracefully 0.6 s after finishing a run, under 12 % loss:
    # its result had reached nobody, and the leave's digest sync could not
    # finish before it went. Its new life ran the tick again. A leaving node
    # now hands off its own writes over the reliable channel.
    114: "replication: a leaving node hands off what it wrote",
    # The same, cut off by a partition it did not know of yet: the two
    # random members it handed off to were both on the other side. It now
    # hands off to four, those it holds alive first.
    90: "core: a leaving node hands off to four members, alive ones first",
    # A node told to leave started a tick due 20 ms later (its cursors
    # outlived the drain while the ring's rebuild was held back) and left
    # with the run going; the simulator's executor tripped on it.
    231: "scheduler: a draining node claims nothing new",
    # The checker's own bugs, kept so they stay fixed: mode-all ticks owed
    # by the clock of a node whose clock had stepped ahead (3), a record
    # expired everywhere counted as diverging (11), gossip repaired by the
    # digest sync counted as diverging (35), a one-off that never left a
    # node cut off by a partition when it left (53, 57), a node declared
    # failed while cut off, before it crashed, counted as never detected (105).
    3: "checker: a node owes mode-all ticks by its own clock",
    11: "checker: a record expired everywhere",
    35: "checker: the digest sync repairs what gossip missed",
    53: "checker: a write that never left its node",
    57: "checker: a write that never left its node",
    105: "checker: a crashed node already held failed",
    # A node crashed 3 s after a run succeeded, its result still on it
    # alone (19 % loss); its next life re-ran the claim. At-least-once: the
    # success had died with the node; counted apart, not as a duplicate.
    180: "checker: a re-run of a success that died with its node",
    # A node whose clock stepped 7-10 s ahead died 1-2 s later: the ticks
    # it skipped were owed by the checker as if seconds had passed (460, 471).
    460: "checker: mode-all ticks owed by a stepped clock's real time",
    471: "checker: mode-all ticks owed by a stepped clock's real time",
    # A node ready just before its clock stepped back 9 s owes no tick
    # whose time it had already seen.
    643: "checker: mode-all ticks after a clock stepped back",
}


def test_a_small_sweep_keeps_every_invariant_and_replays_a_share() -> None:
    summary = run_campaign(range(1, 9), CAMPAIGN, verify_share=0.25)
    assert summary["violations"] == [], json.dumps(summary["failing"], indent=1)
    assert summary["seeds"] == 8 and summary["replayed"] >= 1
    assert summary["ticks_expected"] > 8 * 300
    # The faults were real: some runs went twice under them, and some
    # ticks ran late; never in a stable stretch.
    assert summary["duplicates"] > 0 and summary["late_ticks"] > 0
    assert summary["duplicates_in_stable"] == summary["late_in_stable"] == 0


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_seeds_that_once_found_a_violation(seed: int) -> None:
    result = run_seed(seed, CAMPAIGN)
    assert result.violations == [], f"{REGRESSIONS[seed]}: {result.violations}\n" + "\n".join(result.mix.describe())


def test_a_seed_draws_the_same_mix_every_time_and_mixes_differ() -> None:
    assert draw_mix(5, CAMPAIGN) == draw_mix(5, CAMPAIGN)
    mixes = [draw_mix(seed, CAMPAIGN) for seed in range(1, 41)]
    assert len({mix.faults for mix in mixes}) == 40
    kinds = {type(fault).__name__ for mix in mixes for fault in mix.faults}
    assert kinds == {"Degrade", "Partition", "Clog", "Crash", "Pause", "ClockStep", "Join", "Leave"}
    for mix in mixes:
        for fault in mix.faults:
            assert 0 <= fault.start and fault.end <= CAMPAIGN.faulty_end or (isinstance(fault, Crash) and fault.restart_after is None)
            assert 0 not in getattr(fault, "nodes", frozenset()) or type(fault).__name__ in ("Clog", "ClockStep")
            if isinstance(fault, Degrade):
                assert 0 <= fault.loss <= 0.3


def test_the_checker_catches_a_false_failure_and_ticks_that_never_ran() -> None:
    """The invariants are not vacuous. A partition the checker is not told
    of explains nothing: the failure it caused is a false one. A cluster
    whose nodes never finish settling runs no tick: all are missed."""
    mix = draw_mix(1, CAMPAIGN)
    partition = Partition(frozenset({1}), frozenset(range(CAMPAIGN.nodes)) - {1}, 20.0, 20.0)
    scenario = attrs.evolve(scenario_of(mix, CAMPAIGN), faults=(partition,))
    run = JobsRun(scenario)
    run.run_until(CAMPAIGN.duration)
    report = run.measure_jobs()
    run.scenario = attrs.evolve(scenario, faults=())
    _, violations = check(run, report, CAMPAIGN)
    assert "false_failure" in {v.invariant for v in violations}

    never_ready = {"settle": 1000.0, "settle_max": 1000.0}
    run = JobsRun(attrs.evolve(scenario_of(mix, CAMPAIGN), faults=(), scheduler=never_ready))
    run.run_until(CAMPAIGN.duration)
    figures, violations = check(run, run.measure_jobs(), CAMPAIGN)
    assert figures["missed"] == figures["ticks_expected"] > 0
    assert "tick_missed" in {v.invariant for v in violations}


def test_the_cli_prints_a_replay_line_that_repeats_the_trace() -> None:
    first = subprocess.run(
        [sys.executable, "-m", "sim", "chaos", "--mix", "classic", "--seeds", "4", "--json", "--verify-share", "0"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    summary = json.loads(first.stdout)
    assert summary["seeds"] == 1 and summary["violations"] == []
    replay = CAMPAIGN.replay(4).split()
    assert replay[:4] == ["python", "-m", "sim", "chaos"]
    again = subprocess.run([sys.executable, *replay[1:]], check=True, capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["trace_hash"] == summary["trace_hash"]


def test_seeds_run_side_by_side_on_worker_processes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sim", "chaos", "--seeds", "1..2", "--workers", "2", "--verify-share", "0", "--json"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    summary = json.loads(result.stdout)
    assert (summary["seeds"], summary["first_seed"], summary["last_seed"]) == (2, 1, 2)


def test_bad_seed_ranges_are_refused() -> None:
    assert parse_seeds("3..5") == range(3, 6)
    assert parse_seeds("7") == range(7, 8)
    for bad in ("5..3", "x", "1..y"):
        with pytest.raises(ValueError, match="bad seeds"):
            parse_seeds(bad)
    result = subprocess.run(
        [sys.executable, "-m", "sim", "chaos", "--seeds", "9..1"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2 and "bad seeds" in result.stderr


@pytest.mark.soak
def test_soak_thousands_of_seeds() -> None:
    """``pytest -m soak tests/test_sim_chaos.py``: 2000 seeds on two
    processes (about half an hour on two cores)."""
    summary = run_campaign(range(1, 2001), CAMPAIGN, verify_share=0.05, workers=2)
    assert summary["violations"] == [], json.dumps(summary["failing"][:10], indent=1)
