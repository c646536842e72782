"""``python -m sim``: the command line people and checks use."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

REQUIRED = {
    "nodes", "seed", "sim_seconds", "wall_seconds", "converged", "convergence_seconds", "false_positives",
    "detection_first_seconds", "detection_all_seconds", "messages_per_node_second", "bytes_per_node_second",
    "trace_hash", "replay",
}


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True, timeout=120)


def test_json_report_and_replay_line_reproduce_the_run():
    done = sim("membership", "--nodes", "12", "--seed", "3", "--duration", "40", "--crash", "1", "--crash-at", "10",
               "--loss", "0.02", "--partition", "0-5|6-11@15+5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert REQUIRED <= report.keys()
    assert report["nodes"] == 12 and report["seed"] == 3 and report["sim_seconds"] == 40
    assert report["converged"] is True and report["false_positives"] == 0
    assert len(report["crashed"]) == 1 and report["detection_all_seconds"][0] > 0
    replay = shlex.split(report["replay"])
    assert replay[:3] == ["python", "-m", "sim"]
    again = json.loads(sim(*replay[3:]).stdout)
    assert again["trace_hash"] == report["trace_hash"]


def test_human_summary():
    done = sim("membership", "--nodes", "5", "--duration", "10")
    assert done.returncode == 0 and "converged:        yes" in done.stdout and "replay:" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--partition", "0-3"], "bad partition '0-3'"),
        (["--partition", "0-3|2-4@1+1"], "groups overlap"),
        (["--partition", "0-3|4-99@1+1"], "not within 0..9"),
        (["--loss", "1.5"], "not a probability"),
        (["--crash", "10"], "at least one must survive"),
        (["--nodes", "0"], "not a positive integer"),
    ],
)
def test_bad_arguments_get_one_clear_line_and_exit_2(args, message):
    done = sim("membership", "--nodes", "10", *args) if "--nodes" not in args else sim("membership", *args)
    assert done.returncode == 2
    assert message in done.stderr
