"""Run once, on real ``peer agent`` processes, through ordinary operations.

Two things users do every day, on four agents on 127.0.0.1 (the ``lan``
profile, a cluster key): a rolling restart (each agent in turn gets SIGTERM,
exits, starts again under the same name and port, and is waited for until
``GET /health/ready`` answers 200), and one-offs submitted the moment every
agent says it is ready. What ran is read from a journal the jobs write
outside the agents (``peer.testing.samples.journal``), never from the agents: every
mode-``one`` tick due while the restarts went on ran exactly once, every
node's mode-``all`` ticks ran at most once each, and every one-off started
exactly once. No time limit is asserted; every process is stopped by PID
when the test ends (``LocalCluster``).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from peer.control.client import ClientError, api_path
from peer.runtime.keys import generate_key
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for
from peer.tools.chaos import read_journal, ticks_between, toml_jobs

TIMEOUT = 60.0  # generous: the machines running CI are shared and slow
EVERY_MS = 1000
NODES = 4
# Ticks this close to the start of the check or to its end are not owed yet
# (the first owner may still wait its handover; the journal may lag).
MARGIN_MS = 3000


def journal_jobs(journal: Path) -> list[dict[str, Any]]:
    """Three cron jobs in mode one, every second, each run a line in ``journal``."""
    return [
        {"id": f"tick-{i}", "schedule": "@every 1s", "mode": "one", "call": "peer.testing.samples:journal",
         "kwargs": {"path": str(journal)}}
        for i in range(3)
    ]


def start_cluster(cluster: LocalCluster, journal: Path, workdir: Path) -> list[AgentProcess]:
    """Four agents, each with the others as seeds, all with one jobs file."""
    jobs = journal_jobs(journal)
    jobs.append(
        {
            "id": "everywhere",
            "schedule": "@every 1s",
            "mode": "all",
            "call": "peer.testing.samples:journal",
            "kwargs": {"path": str(journal)},
        }
    )
    jobs_file = workdir / "jobs.toml"
    jobs_file.write_text(toml_jobs(jobs))
    agents = cluster.add_mesh(NODES, extra_args=["--jobs", str(jobs_file), "--drain-timeout", "10"])
    cluster.wait_api(agents, TIMEOUT)
    for agent in agents:
        wait_for(agent.answers_ready, TIMEOUT, f"{agent.name} to be ready")
    return agents


def test_a_rolling_restart_runs_every_tick_once_and_misses_none(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with LocalCluster(tmp_path, profile="lan", key=generate_key()) as cluster:
        agents = start_cluster(cluster, journal, tmp_path)
        time.sleep(3)
        began = int(time.time() * 1000)
        exits = {}
        for agent in agents:
            exits[agent.name] = agent.stop(TIMEOUT)
            agent.start()
            cluster.wait_api([agent], TIMEOUT)
            wait_for(agent.answers_ready, TIMEOUT, f"{agent.name} to be ready again")
            time.sleep(1.5)
        ended = int(time.time() * 1000)
        time.sleep(MARGIN_MS / 1000 + 1)
    assert exits == {agent.name: 0 for agent in agents}
    lines = read_journal(journal)
    runs = Counter(line.run for line in lines)
    twice = sorted(run for run, count in runs.items() if count > 1)
    assert not twice, f"run more than once: {twice}\n" + "\n".join(
        f"{line.run} {line.attempt} {line.node} {line.start_ms}" for line in lines if line.run in twice
    )
    owed = [
        f"tick-{i}@{tick}"
        for i in range(3)
        for tick in ticks_between(began, ended - MARGIN_MS, EVERY_MS)
    ]
    ran = {f"{line.job}@{line.tick}" for line in lines if line.run_node is None}
    missed = [run for run in owed if run not in ran]
    assert not missed, f"{len(missed)} of {len(owed)} ticks never ran: {missed[:10]}"


def test_one_offs_submitted_as_soon_as_every_agent_is_ready_each_start_once(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with LocalCluster(tmp_path, profile="lan", key=generate_key()) as cluster:
        agents = start_cluster(cluster, journal, tmp_path)
        submitted = []
        for number in range(12):
            agent = agents[number % NODES]
            body = {"id": f"once-{number}", "call": "peer.testing.samples:journal", "kwargs": {"path": str(journal)}}
            submitted.append(agent.call("/submit", method="POST", body=body)["run"])
        for number, run_id in enumerate(submitted):
            reader = agents[(number + 1) % NODES]
            record = wait_for(
                lambda reader=reader, run_id=run_id: _finished(reader, run_id), TIMEOUT, f"{run_id} to finish"  # type: ignore[misc]
            )
            assert record["state"] == "succeeded", record
    starts = Counter((line.run, line.attempt) for line in read_journal(journal) if line.run in set(submitted))
    assert {run for run, _ in starts} == set(submitted)
    assert all(count == 1 for count in starts.values()), starts
    assert all(attempt == 1 for _, attempt in starts), starts


def _finished(agent: AgentProcess, run_id: str) -> dict[str, object] | None:
    try:
        record = agent.call(api_path("runs", run_id))
    except ClientError as error:
        if error.status == 404:
            return None
        raise
    return record if record["state"] not in ("pending", "running") else None


def test_an_agent_with_no_seed_restarted_comes_back_into_its_cluster_not_beside_it(tmp_path: Path) -> None:
    """The README's first agent has no seed: nothing tells its restart from
    a first start, and it used to come back as a cluster of its own, running
    every job beside its old one (48 runs twice in 12 s on four agents)
    until a reconnect round found it. Restarted gracefully, then killed and
    restarted once it was taken for dead: no tick runs twice, and every
    agent counts all three in its ring at the end."""
    journal = tmp_path / "journal"
    jobs = journal_jobs(journal)
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(toml_jobs(jobs))
    with LocalCluster(tmp_path, profile="lan", key=generate_key(), extra_args=["--jobs", str(jobs_file)]) as cluster:
        agents = [cluster.add() for _ in range(3)]  # node-0 has no seed; the others join through it
        cluster.wait_api(agents, TIMEOUT)
        first = agents[0]
        wait_for(lambda: all(agent.call("/status")["scheduler"]["eligible"] == 3 for agent in agents), TIMEOUT, "three eligible")
        time.sleep(2)
        assert first.stop(TIMEOUT) == 0
        first.start()
        cluster.wait_api([first], TIMEOUT)
        wait_for(first.answers_ready, TIMEOUT, "node-0 to be ready again")
        time.sleep(3)
        killed_ms = int(time.time() * 1000)
        first.kill()
        wait_for(lambda: all(agent.call("/status")["scheduler"]["eligible"] == 2 for agent in agents[1:]), TIMEOUT, "node-0 taken for dead")
        first.start()
        cluster.wait_api([first], TIMEOUT)
        wait_for(first.answers_ready, TIMEOUT, "node-0 to be ready after its kill")
        time.sleep(4)
        eligible = {agent.name: agent.call("/status")["scheduler"]["eligible"] for agent in agents}
    lines = read_journal(journal)
    runs = Counter(line.run for line in lines)

    def rerun_after_the_kill(run: str) -> bool:
        first_start, second = sorted((line for line in lines if line.run == run), key=lambda line: line.start_ms)
        return first_start.node == first.name and first_start.start_ms <= killed_ms and second.attempt > first_start.attempt

    twice = sorted(run for run, count in runs.items() if count > 1 and not (count == 2 and rerun_after_the_kill(run)))
    assert not twice, f"run more than once: {twice}\n" + "\n".join(
        f"{line.run} {line.attempt} {line.node} {line.start_ms}" for line in lines if line.run in twice
    )
    assert eligible == {agent.name: 3 for agent in agents}, eligible
