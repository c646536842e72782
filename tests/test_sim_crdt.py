"""Replicated maps in the simulator: convergence under partitions, loss,
duplication, crashes and restarts; expiry everywhere; determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from sim.crdt_scenario import CrdtScenario, run_crdt
from sim.faults import Crash, Degrade, Partition, Pause

SYNC = 10.0  # the default digest sync interval
# Replicas converge at most this long after the membership views do (which,
# after a partition, takes up to a reconnect interval): a few sync rounds.
BOUND = 2.5 * SYNC


def check(report: dict[str, Any]) -> None:
    assert report["converged"], report
    membership = report["membership_convergence_seconds"] or 0.0
    assert report["convergence_seconds"] is not None and report["convergence_seconds"] <= membership + BOUND
    assert report["lost_writes"] == 0 and report["expired_entries_seen"] == 0
    assert report["membership_converged"] and report["false_positives"] == 0
    # A datagram the network delivered twice is a replay to the codec: dropped, harmlessly (and only those).
    drops = dict(report["drops"])
    assert drops.pop("replayed") <= report["network"]["duplicated"]  # type: ignore[index]
    assert drops == dict.fromkeys(["bad_mac", "malformed", "oversized", "plaintext", "stale", "unknown_version"], 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_converges_after_a_partition_heals(seed: int) -> None:
    halves = Partition(range(10), range(10, 20), start=8.0, duration=25.0)
    report = run_crdt(CrdtScenario(nodes=20, seed=seed, duration=75.0, writes=600, faults=[halves]))
    check(report)
    assert report["live_keys"] == report["keys_written"] > 90


@pytest.mark.parametrize("seed", [1, 2])
def test_converges_under_loss_and_duplication(seed: int) -> None:
    # 20% loss and 5% duplication through the writes and after; then a clean
    # network, in which membership must settle too (under sustained loss SWIM
    # raises, and refutes, a suspicion now and then).
    degraded = Degrade(0.2, 0.05, 0.0, 40.0)
    report = run_crdt(CrdtScenario(nodes=20, seed=seed, duration=80.0, writes=600, faults=[degraded]))
    check(report)
    assert report["network"]["lost"] > 0 and report["network"]["duplicated"] > 0  # type: ignore[index]


def test_a_crashed_node_restarts_empty_and_catches_up() -> None:
    crash = Crash({3, 7}, at=15.0, restart_after=10.0)
    report = run_crdt(CrdtScenario(nodes=15, seed=4, duration=60.0, writes=600, faults=[crash]))
    check(report)  # the roots of the restarted nodes equal everyone's
    assert report["crashed"] == ["node-0003", "node-0007"]
    assert report["replication"]["syncs_started"] > 0  # type: ignore[index]


def test_expired_entries_vanish_everywhere_and_memory_follows() -> None:
    # Written by 25 s, expired by 30 s, read as absent from then on; dropped
    # (memory freed) once clocks up to max_drift_ms (60 s) ahead agree.
    report = run_crdt(CrdtScenario(nodes=12, seed=5, duration=100.0, writes=800, keys=400, ttl=5.0, ttl_share=1.0))
    check(report)
    assert report["live_keys"] == 0
    assert report["final_state_bytes"] < report["max_state_bytes"] / 20  # type: ignore[operator]


def test_the_same_seed_gives_the_same_trace_and_the_cli_prints_it() -> None:
    command = [sys.executable, "-m", "sim", "crdt", "--nodes", "8", "--seed", "9", "--duration", "40"]
    command += ["--writes", "300", "--loss", "0.1", "--json"]
    first = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    second = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert first["trace_hash"] == second["trace_hash"]
    for field in ("converged", "convergence_seconds", "bytes_per_node_second", "max_state_bytes", "trace_hash"):
        assert field in first
    assert first["replay"].startswith("python -m sim crdt --nodes 8 --seed 9")


def test_a_node_back_from_a_long_absence_resurrects_nothing() -> None:
    # Two nodes stop (SIGSTOP) for 40 s while the entries they hold expire
    # everywhere else; when they continue, nothing expired comes back. (The
    # run lasts until every replica has dropped them: max_drift_ms after.)
    pause = Pause({4, 9}, start=20.0, duration=40.0)
    scenario = CrdtScenario(
        nodes=12, seed=6, duration=120.0, writes=500, ttl=20.0, ttl_share=0.5, write_window=10.0, faults=[pause]
    )
    report = run_crdt(scenario)
    check(report)
    assert report["replication"]["expired"] > 0  # type: ignore[index]
    assert report["live_keys"] < report["keys_written"]  # type: ignore[operator]


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(40))
def test_soak_crdt_under_mixed_faults(seed: int) -> None:
    faults = [  # a faulty phase, then a healed one in which the invariants must hold
        Degrade(0.1, 0.05, 0.0, 40.0),
        Partition(range(8), range(8, 16), start=10.0, duration=20.0),
        Crash({seed % 16}, at=12.0, restart_after=8.0),
        Pause({(seed + 5) % 16}, start=15.0, duration=10.0),
    ]
    scenario = CrdtScenario(nodes=16, seed=seed, duration=100.0, writes=800, ttl=15.0, ttl_share=0.3, faults=faults)
    check(run_crdt(scenario))
