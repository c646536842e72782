"""The scheduler in the simulator: every tick runs, results survive churn.

Each scenario checks the invariants the jobs issue asks for: no missed
tick, no lost result, and no duplicate while membership is stable; under
churn and loss duplicates are counted (and stay rare), never a lost tick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sim.faults import Kill, Leave, Partition, Restart, RollingRestart, ScaleDown, ScaleUp
from sim.jobs_scenario import JobsRun, JobsScenario, run_jobs, scheduler_of
from sim.node import Life, SimNode


def test_a_stable_cluster_runs_every_tick_exactly_once() -> None:
    report = run_jobs(JobsScenario(nodes=8, duration=40, seed=3, oneoffs=30, heal=10))
    assert report["ticks_expected"] > 150
    assert report["missed"] == 0, report["missed_runs"]
    assert report["duplicates"] == 0
    assert report["lost_results"] == 0
    # The epidemic can miss a node now and then; the next digest sync (10 s)
    # repairs it. Counted, and rare.
    assert report["results_not_everywhere"] <= 2
    assert report["oneoffs_done"] == report["oneoffs_submitted"] == 30
    assert report["scheduler"]["retries"] >= 1  # some one-offs failed once and were retried


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_churn_and_loss_lose_no_tick_and_no_result(seed: int) -> None:
    report = run_jobs(JobsScenario(nodes=12, duration=45, seed=seed, oneoffs=30, churn=4, loss=0.05, heal=12))
    assert report["missed"] == 0, report["missed_runs"]
    assert report["lost_results"] == 0, report["lost_runs"]
    assert report["oneoffs_done"] + report["oneoffs_lost_with_submitter"] == report["oneoffs_submitted"]
    # Duplicates are possible across membership changes; they are counted and rare.
    assert report["duplicates"] <= report["executions"] // 50


@pytest.mark.parametrize("seed", [1, 2])
def test_a_rolling_restart_of_every_node_loses_nothing_and_runs_nothing_twice(seed: int) -> None:
    nodes = 6
    restarts = [Leave(frozenset({i}), 12.0 + 8 * i, rejoin_after=3.0) for i in range(nodes)]
    scenario = JobsScenario(nodes=nodes, seeds=2, duration=80, seed=seed, oneoffs=40, heal=15, faults=restarts)
    report = run_jobs(scenario)
    assert report["missed"] == 0, report["missed_runs"]
    assert report["lost_results"] == 0 and report["results_not_everywhere"] <= 2
    assert report["oneoffs_done"] == report["oneoffs_submitted"] == 40
    assert report["duplicates"] == 0


def test_the_same_seed_gives_the_same_run() -> None:
    scenario = JobsScenario(nodes=6, duration=25, seed=9, oneoffs=10, churn=2, loss=0.02, heal=8)
    first, second = run_jobs(scenario), run_jobs(scenario)
    for report in (first, second):
        report.pop("wall_seconds")
        report.pop("sim_seconds_per_wall_second")
    assert first == second


def test_the_command_line_prints_the_figures_and_a_replay_line() -> None:
    command = [sys.executable, "-m", "sim", "jobs", "--nodes", "5", "--duration", "20", "--oneoffs", "5", "--heal", "8"]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout)
    for field in ("ticks_expected", "ticks_run", "duplicates", "missed", "lost_results", "trace_hash"):
        assert field in report
    assert report["ticks_run"] == report["ticks_expected"] > 0
    replay = subprocess.run(report["replay"].split(), capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(replay.stdout)["trace_hash"] == report["trace_hash"]


# -- agents started, restarted and deployed as processes are ---------------------------

# How real agents start: a boot delay, and every node's jobs file defined once caught up.
AGENT_START = {"jobs_file": True, "boot_delay": (0.2, 0.6), "cron_jobs": 3, "all_jobs": 1, "every": 1.0, "oneoffs": 0}


class _LifeLog(JobsRun):
    """A jobs run that keeps each node's life changes, in order."""

    def __init__(self, scenario: JobsScenario) -> None:
        super().__init__(scenario)
        self.life_log: dict[int, list[Life]] = {node.index: [] for node in self.nodes}

    def on_life(self, node: SimNode) -> None:
        self.life_log[node.index].append(node.life)
        super().on_life(node)


def _run(scenario: JobsScenario) -> _LifeLog:
    run = _LifeLog(scenario)
    run.run_until(scenario.duration)
    return run


def test_a_booting_process_answers_nothing_until_its_core_exists() -> None:
    scenario = JobsScenario(nodes=4, seeds=4, duration=6, seed=2, heal=2, **{**AGENT_START, "boot_delay": (0.5, 0.5)})
    run = _LifeLog(scenario)
    run.run_until(0.45)  # every process started within the join window (1 s), none booted yet
    assert all(node.life in (Life.STOPPED, Life.BOOTING) and node.core is None for node in run.nodes)
    assert any(node.life is Life.BOOTING for node in run.nodes)
    run.run_until(scenario.duration)
    assert all(run.life_log[i][:2] == [Life.BOOTING, Life.UP] and run.ready(i) for i in range(4))


def test_with_a_jobs_file_every_node_defines_the_jobs_and_a_restart_redefines_nothing() -> None:
    scenario = JobsScenario(nodes=4, seeds=4, duration=20, seed=1, heal=4, faults=[Restart(frozenset({2}), 8.0)], **AGENT_START)
    run = _run(scenario)
    assert run.nodes[2].boots == 2 and run.ready(2)
    held = [scheduler_of(node.core).jobs() for node in run.nodes]
    assert all(jobs.keys() == {"cron-000", "cron-001", "cron-002", "all-000"} for jobs in held)
    # One definition won everywhere; the restarted node's jobs file changed nothing.
    for job_id in held[0]:
        assert len({jobs[job_id].since for jobs in held}) == 1
    assert max(entry.since for entry in held[2].values()) / 1000 < run.nodes[2].clock.wall(8.0)
    report = run.measure_jobs()
    assert report["jobs_file"] is True and report["ticks_run"] > 0
    assert "same_attempt_starts" in report and isinstance(report["twice"], list)


def test_a_restart_leaves_waits_for_the_exit_and_boots_again() -> None:
    scenario = JobsScenario(nodes=4, seeds=4, duration=16, seed=3, heal=4, faults=[Restart(frozenset({1}), 6.0)], **AGENT_START)
    run = _run(scenario)
    assert run.life_log[1] == [Life.BOOTING, Life.UP, Life.LEAVING, Life.LEFT, Life.BOOTING, Life.UP]
    assert run.nodes[1].boots == 2 and run.ready(1)
    assert [node.boots for node in run.nodes] == [1, 2, 1, 1]
    report = run.measure_jobs()
    assert report["leaves_reported_failed"] == 0 and report["false_positives"] == 0


def test_a_rolling_restart_restarts_every_node_one_after_another() -> None:
    gap = 1.0
    scenario = JobsScenario(nodes=4, seeds=4, duration=45, seed=1, heal=5, faults=[RollingRestart(8.0, gap=gap)], **AGENT_START)
    run = _run(scenario)
    assert [node.boots for node in run.nodes] == [2, 2, 2, 2]
    assert all(run.ready(i) for i in range(4))
    # Each next node left only once the one before was ready again, plus the
    # gap: its new scheduler's ready time is a drain, a boot and a settle later.
    back = [run.ready_times[i][1] for i in range(4)]
    settle = run.scheduler_config.settle
    assert all(later - earlier > gap + settle for earlier, later in zip(back, back[1:]))
    assert run.measure_jobs()["leaves_reported_failed"] == 0


def test_a_rolling_restart_in_a_given_order_skips_a_node_that_is_down() -> None:
    faults = [Leave(frozenset({3}), 6.0), RollingRestart(8.0, (2, 3, 0))]
    scenario = JobsScenario(nodes=4, seeds=4, duration=30, seed=4, heal=4, faults=faults, **AGENT_START)
    run = _run(scenario)
    assert [node.boots for node in run.nodes] == [2, 1, 2, 1]
    assert run.nodes[3].life is Life.LEFT
    assert run.ready_times[2][1] < run.ready_times[0][1]


def test_scaled_up_nodes_start_late_and_become_live_ready_members() -> None:
    scenario = JobsScenario(nodes=4, seeds=4, duration=20, seed=5, heal=4, faults=[ScaleUp(2, 8.0)], **AGENT_START)
    run = _LifeLog(scenario)
    assert len(run.nodes) == 6
    run.run_until(7.9)
    assert [(node.life, node.boots) for node in run.nodes[4:]] == [(Life.STOPPED, 0)] * 2
    run.run_until(scenario.duration)
    assert [node.boots for node in run.nodes] == [1] * 6
    names = {node.name for node in run.nodes}
    for node in run.nodes:
        assert run.ready(node.index)
        assert {member.name for member in node.core.live_members()} == names
    # The new nodes take work: each runs its ticks of the job in mode all.
    ran_on = {execution.node for execution in run.first_executions().values()}
    assert {4, 5} <= ran_on


def test_scaled_down_nodes_leave_for_good() -> None:
    scenario = JobsScenario(nodes=5, seeds=2, duration=22, seed=6, heal=4, faults=[ScaleDown(2, 8.0)], **AGENT_START)
    run = _run(scenario)
    # The highest indices go first; seeds last.
    assert [node.life for node in run.nodes] == [Life.UP] * 3 + [Life.LEFT] * 2
    assert [node.boots for node in run.nodes] == [1] * 5
    for node in run.nodes[:3]:
        assert {member.name for member in node.core.live_members()} == {"node-0000", "node-0001", "node-0002"}
    report = run.measure_jobs()
    assert report["leaves_reported_failed"] == 0 and report["false_positives"] == 0


def test_the_command_line_restarts_and_scales_and_its_replay_line_repeats_the_run() -> None:
    command = [
        sys.executable, "-m", "sim", "jobs", "--nodes", "3", "--seeds", "3", "--duration", "30", "--oneoffs", "3",
        "--heal", "5", "--every", "1", "--cron-jobs", "2", "--jobs-file", "--boot-delay", "0.2-0.6",
        "--scale-up", "1@6", "--restart", "0@8", "--rolling-restart", "2,1@12", "--scale-down", "1@24",
        "--ready-oneoffs", "1", "--all-ready-oneoffs", "1", "--json",
    ]
    # One string-hash seed for both processes: the scheduler walks a set of
    # run ids (Scheduler.on_changes), so the order of its claims, and the
    # trace, can depend on PYTHONHASHSEED.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True, env=env)
    report = json.loads(result.stdout)
    assert report["jobs_file"] is True and report["boot_delay"] == [0.2, 0.6]
    assert "same_attempt_starts" in report and "duplicates" in report
    assert report["oneoffs_submitted"] > 3  # and those submitted as nodes turned ready
    for flag in ("--jobs-file", "--scale-up", "--restart", "--rolling-restart", "--scale-down", "--ready-oneoffs"):
        assert flag in report["replay"]
    replay = subprocess.run(report["replay"].split(), capture_output=True, text=True, timeout=120, check=True, env=env)
    assert json.loads(replay.stdout)["trace_hash"] == report["trace_hash"]


def test_restarts_and_scaling_keep_the_run_a_function_of_its_seed() -> None:
    faults = [ScaleUp(1, 5.0), RollingRestart(8.0, gap=0.5), ScaleDown(1, 22.0)]
    scenario = JobsScenario(nodes=3, seeds=3, duration=26, seed=7, heal=3, faults=faults, **{**AGENT_START, "oneoffs": 5})
    first, second = run_jobs(scenario), run_jobs(scenario)
    assert first["trace_hash"] == second["trace_hash"]
    assert first["same_attempt_starts"] == second["same_attempt_starts"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scale-up", "two@5"], "expected K@AT"),
        (["--restart", "9@5"], "not within 0..3"),
        (["--rolling-restart", "1,1@5"], "distinct indices"),
        (["--boot-delay", "0.6-0.2"], "LOW <= HIGH"),
    ],
)
def test_bad_restart_and_scale_arguments_get_one_clear_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sim", "jobs", "--nodes", "4", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and message in done.stderr


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(1, 11))
def test_fifty_nodes_with_churn_and_loss(seed: int) -> None:
    report = run_jobs(JobsScenario(nodes=50, duration=90, seed=seed, oneoffs=100, churn=10, loss=0.05, heal=20))
    assert report["missed"] == 0, report["missed_runs"]
    assert report["lost_results"] == 0, report["lost_runs"]


def assert_runs_once_from_the_command_line(command: str) -> None:
    """``python -m sim COMMAND``: no tick missed or run twice, no attempt
    started twice, no result lost, every one-off done."""
    done = subprocess.run([sys.executable, "-m", "sim", *command.split()], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    assert (report["missed"], report["duplicates"], report["same_attempt_starts"], report["lost_results"]) == (0, 0, 0, 0)
    assert report["oneoffs_done"] == report["oneoffs_submitted"]


def test_a_deploy_with_scaling_and_a_rolling_restart_runs_every_tick_once_seed_38() -> None:
    """Seed 38 once spun forever (a placement deadline in the past that a
    debounced ring rebuild kept putting off); it also checks a deploy's
    run-once: no tick twice, none missed, no attempt started twice."""
    command = (
        "jobs --nodes 6 --seeds 6 --profile lan --cron-jobs 4 --all-jobs 1 --every 1 --duration 100 --heal 15 "
        "--oneoffs 20 --jobs-file --boot-delay 0.2-0.6 --scale-up 2@15 --rolling-restart 25 --scale-down 2@75 "
        "--all-ready-oneoffs 1 --seed 38 --json"
    )
    assert_runs_once_from_the_command_line(command)


def test_a_first_node_with_no_seed_restarted_by_a_deploy_rejoins_its_cluster_before_it_settles() -> None:
    """Seed 5 with node 0 the only seed (it has none of its own, as the
    README's first agent): restarted by the deploy, it knew no one, took
    itself for a new cluster's first node and, its jobs file defined, ran
    every tick beside its cluster until a reconnect round found it (29 runs
    twice). Members that saw it go now contact it every second for a while
    (``rejoin_window``), so it hears of its cluster before it settles."""
    command = (
        "jobs --nodes 6 --profile lan --cron-jobs 4 --all-jobs 1 --every 1 --duration 100 --heal 15 "
        "--oneoffs 20 --rolling-restart 25 --jobs-file --seed 5 --json"
    )
    assert_runs_once_from_the_command_line(command)


# -- long one-offs taking updates, and kill -9 mid-run ---------------------------------


def test_long_one_offs_finish_once_every_update_sent_through_random_nodes_arrived() -> None:
    scenario = JobsScenario(nodes=5, duration=40, seed=4, cron_jobs=2, oneoffs=0, long_oneoffs=6, heal=15)
    run = JobsRun(scenario)
    run.run_until(scenario.duration)
    report = run.measure_jobs()
    assert report["long_oneoffs"] == 6 and report["updates_sent"] >= 6 and report["updates_unsent"] == 0
    assert report["oneoffs_done"] == 6
    for run_id, planned in run.long_runs.items():
        done = [e for e in run.executions(run_id) if e.ok]
        assert len(done) == 1 and done[0].updates == set(range(planned))
        # It ran for several seconds: its work, then the wait for its updates.
        assert done[0].end - done[0].start >= scenario.long_seconds[0]


class _LostUpdate(JobsRun):
    """A client whose first update to each long run never gets out."""

    def _send_update(self, run_id: str, n: int, tries: int) -> None:
        if n != 0:
            super()._send_update(run_id, n, tries)


def test_a_lost_update_shows_as_a_long_run_that_never_finishes() -> None:
    scenario = JobsScenario(nodes=4, duration=40, seed=4, cron_jobs=1, oneoffs=0, long_oneoffs=3, heal=15)
    run = _LostUpdate(scenario)
    run.run_until(scenario.duration)
    unfinished, excused = run.unfinished_oneoffs(due=10.0)
    assert len(unfinished) == 3 and excused == 0
    assert all("running" in line for line in unfinished)
    assert run.measure_jobs()["oneoffs_done"] == 0


def test_a_kill_lands_on_a_node_in_the_middle_of_a_run() -> None:
    kill = Kill(frozenset({1, 2, 3}), 20.0, restart_after=3.0)
    scenario = JobsScenario(nodes=5, duration=50, seed=2, cron_jobs=3, every=1.0, oneoffs=10, heal=15, faults=(kill,))
    run = JobsRun(scenario)
    run.run_until(scenario.duration)
    [(when, index, restart)] = run.kills
    assert 20.0 <= when <= 20.0 + kill.patience and index in kill.candidates and restart == 3.0
    # Something was running on it when it died: an execution cut short.
    cut = [e for run_id in run.first_executions() for e in run.executions(run_id) if e.node == index and e.end == when]
    assert cut and not any(e.ok for e in cut)
    assert run.nodes[index].boots == 2  # and it came back under its name
    report = run.measure_jobs()
    assert report["missed"] == 0 and report["lost_results"] == 0


def test_a_node_restarted_where_it_finds_no_one_never_turns_ready_until_it_joins() -> None:
    """Node 2 restarts while a partition cuts it off from everyone (wide
    seed 597: a one-way partition had the same effect). Alone, with seeds
    it cannot reach, it must not take itself for a cluster's first node and
    own every job beside the real cluster: it waits, however long, and
    turns ready once the partition heals and it has caught up."""
    faults = (Partition({2}, {0, 1}, start=14.0, duration=30.0), Restart({2}, at=15.0, delay=0.5))
    run = JobsRun(JobsScenario(nodes=3, seeds=2, duration=60, seed=4, cron_jobs=3, all_jobs=0, oneoffs=0, heal=10, faults=faults))
    run.run_until(60)
    readied = run.ready_times[2]
    assert len(readied) == 2 and readied[0] < 14.0  # ready before; then again only after the heal
    assert readied[1] >= 44.0
    # Its new life ran nothing while cut off, and nothing another node ran.
    # (Its old life's tick at 14 s, run while cut off, is run again by the
    # others: a partition's doing.)
    report = run.measure_jobs()
    again = [e for twice in report["twice"] for e in twice["executions"] if (e["node"], e["boot"]) == ("node-0002", 2)]
    assert again == []
    assert report["missed"] == 0
