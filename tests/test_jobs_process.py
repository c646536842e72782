"""The jobs issue's scenarios with real ``peer agent`` processes on 127.0.0.1.

What ran is never taken from the system under test: every job runs
``peer.testing.samples.journal``, which appends one line per execution (run id,
attempt, node, start time) to a file with one ``O_APPEND`` write, and the
tests count those lines. The API is used to drive the cluster and to read
what it claims (owners, results), which is then checked against the journal.

Clusters run one after the other (the machines running CI have two shared
cores); the durations are shorter than the issue's, as each test says. Every
process is started through ``LocalCluster``, which kills what still runs by
PID when the test ends, passed or failed.

The agents use the ``lan`` membership profile, the default. With
``PEER_TEST_PROFILE=local`` (whose gossip sends each message to fewer
members) the scaling test fails now and then: a node that misses a graceful
leave for seconds, or a run record that reaches a job's new owner too late,
shows up as a late tick, ticks skipped behind it, or a tick run twice.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest

from peer.control.client import ClientError, api_path
from peer.runtime.keys import generate_key
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for
from peer.tools.chaos import (
    JournalLine,
    iso_ms,
    journal_job,
    read_journal,
    ticks_between,
    toml_jobs,
)

TIMEOUT = 30.0  # generous: the machines running CI are shared and slow
# The membership timings (see the module's docstring).
PROFILE = os.environ.get("PEER_TEST_PROFILE", "lan")
# How long after its tick a run is surely in the journal: a new owner waits
# the handover (1.5 s) before it looks, and the machine may be slow.
SLACK_MS = 5000


# What ran is read with peer.tools.chaos's journal helpers (the chaos driver shares them).


def now_ms() -> int:
    return int(time.time() * 1000)


# -- asking the agents ------------------------------------------------------------------


def role(agent: AgentProcess) -> str:
    return str(agent.call("/status")["scheduler"]["role"])


def owners(agent: AgentProcess) -> dict[str, str | None]:
    """job -> owner, by this agent's view."""
    return {job["id"]: job["owner"] for job in agent.call("/jobs")["jobs"]}


def agreed_owners(agents: list[AgentProcess], jobs: Iterable[str]) -> dict[str, str | None] | None:
    """The owners, if every agent knows every job and they all agree."""
    views = [owners(agent) for agent in agents]
    jobs = set(jobs)
    if not all(jobs <= set(view) for view in views):
        return None
    first = {job: views[0][job] for job in jobs}
    if any(owner is None for owner in first.values()):
        return None
    return first if all({job: view[job] for job in jobs} == first for view in views) else None


def eligible_everywhere(agents: list[AgentProcess], count: int) -> bool:
    return all(agent.call("/status")["scheduler"]["eligible"] == count for agent in agents)


def until_known(call: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """``call()``'s document, retried while it is a 404 (a record or job that
    has not reached this node yet)."""

    def attempt() -> dict[str, Any] | None:
        try:
            return call()
        except ClientError as error:
            if error.status != 404:
                raise
            return None

    return wait_for(attempt, TIMEOUT, what)


def run_path(run_id: str, *rest: str, query: dict[str, Any] | None = None) -> str:
    return api_path("runs", run_id, *rest, query=query)


def logs(cluster: LocalCluster) -> str:
    """The tail of every agent's log, for a failure's message."""
    return "\n".join(f"--- {a.name}\n" + "\n".join(a.log_text().splitlines()[-30:]) for a in cluster.agents.values())


# -- scenarios 1 and 2: three nodes, cron jobs in mode one and all -----------------------


def test_cron_ticks_run_once_each_spread_over_nodes_and_once_per_node_in_mode_all(tmp_path: Path) -> None:
    """Scenarios 1 and 2 of the issue, on one cluster of three agents that all
    start with the same jobs file: seven jobs every 2 s in mode ``one`` and one
    in mode ``all``, watched for 40 s (the issue says 60; 40 is 20 ticks).

    Mode one: every tick from the first after the job was defined to the
    last that surely ran has exactly one line in the journal (no duplicate,
    no gap), and in steady state on the node every agent names as the
    owner; the jobs are spread over at least two nodes; ``peer jobs --json``
    names the same owners on every node. Mode all: every tick due after all
    three were ready ran exactly once on each node, and on the node its run
    id names."""
    journal = tmp_path / "journal.txt"
    one = ["solo", *(f"spread-{i}" for i in range(6))]
    jobs = [journal_job(job_id, journal) for job_id in one] + [journal_job("everywhere", journal, mode="all")]
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(toml_jobs(jobs))
    with LocalCluster(tmp_path, profile=PROFILE, key=generate_key(), extra_args=["--jobs", str(jobs_file)]) as cluster:
        agents = [cluster.add() for _ in range(3)]
        cluster.wait_api(agents, TIMEOUT)
        wait_for(lambda: all(role(agent) == "ready" for agent in agents), TIMEOUT, "three agents to be ready")
        all_ready_ms = now_ms()
        # Ready by its own word is not yet ready in the others' views, nor
        # placed in its own (ring rebuilds are debounced): owners agreed
        # before every ring holds all three can be a passing view (CI once
        # agreed on the owners of node-0 and node-2's ring, and node-1 then
        # rightly ran what it owned).
        wait_for(lambda: eligible_everywhere(agents, 3), TIMEOUT, "three eligible agents")
        agreed = wait_for(lambda: agreed_owners(agents, [*one, "everywhere"]), TIMEOUT, "the agents to agree on owners")
        agreed_ms = now_ms()
        since = {job["id"]: iso_ms(job["since"]) for job in agents[0].call("/jobs")["jobs"]}

        time.sleep(40)

        end_ms = now_ms()
        final = {agent.name: owners(agent) for agent in agents}
        listed = {}
        for agent in agents:
            result = agent.cli("jobs", "--json")
            assert result.returncode == 0, result.stderr
            listed[agent.name] = {job["id"]: job["owner"] for job in json.loads(result.stdout)["jobs"]}
        lines = read_journal(journal)
        failure_logs = logs(cluster)

    by_run = Counter(line.run for line in lines)
    duplicates = {run: count for run, count in by_run.items() if count > 1}
    assert not duplicates, f"runs executed more than once: {duplicates}\n{failure_logs}"
    for line in lines:
        assert line.tick <= line.start_ms + 100, f"{line} ran before its tick"

    # Mode one: every tick, once, from the first after the definition on.
    for job_id in one:
        ran = {line.tick for line in lines if line.job == job_id}
        expected = ticks_between(since[job_id], end_ms - SLACK_MS)
        missing = sorted(set(expected) - ran)
        assert len(expected) >= 15 and not missing, f"{job_id}: ticks never run: {missing}\n{failure_logs}"
        # In steady state, by the node everyone names.
        steady = [line for line in lines if line.job == job_id and line.tick > agreed_ms + SLACK_MS]
        assert steady and {line.node for line in steady} == {agreed[job_id]}, (job_id, agreed[job_id], steady)

    # The owners: the same on every node, through the API and the CLI, all along.
    for name in final:
        assert final[name] == listed[name] == agreed | {"everywhere": "all"}, (final, listed, agreed)
    assert len({agreed[job_id] for job_id in one}) >= 2, f"all seven jobs on one node: {agreed}"

    # Mode all: every tick once per node, on that node.
    everywhere = [line for line in lines if line.job == "everywhere"]
    assert all(line.run_node == line.node for line in everywhere), everywhere
    per_node = defaultdict(set)
    for line in everywhere:
        per_node[line.tick].add(line.node)
    for tick in ticks_between(max(all_ready_ms, since["everywhere"]), end_ms - SLACK_MS):
        assert per_node[tick] == {a.name for a in agents}, f"tick {tick}: ran on {per_node[tick]}\n{failure_logs}"


# -- scenario 3: one-off jobs across nodes, then a crash and a graceful stop mid-run ---------------


def submit(agent: AgentProcess, job_id: str, journal: Path, updates: int) -> str:
    body = {"id": job_id, "call": "peer.testing.samples:journal", "kwargs": {"path": str(journal), "updates": updates}}
    document = agent.call("/submit", method="POST", body=body)
    assert document["job"] == job_id
    return str(document["run"])


def send(agent: AgentProcess, run_id: str, data: Any) -> None:
    until_known(lambda: agent.call(run_path(run_id, "send"), method="POST", body={"data": data}), f"{agent.name} to know {run_id}")


def records(agent: AgentProcess, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The runs' records as this agent has them (those it has)."""
    wanted = set(run_ids)
    return {run["id"]: run for run in agent.call("/runs?limit=1000")["runs"] if run["id"] in wanted}


def finished_runs(agent: AgentProcess, run_ids: list[str]) -> dict[str, dict[str, Any]] | None:
    """The runs' records on this agent, once it has them all finished."""
    seen = records(agent, run_ids)
    finished = len(seen) == len(run_ids) and all(run["state"] not in ("pending", "running") for run in seen.values())
    return seen if finished else None


def same_updates(received: list[Any], expected: list[Any]) -> bool:
    """Every update arrived, once; not necessarily in the order sent: two
    updates sent one after the other through one node travel as separate
    gossip deltas and may reach the run's node in either order, and a
    running run is given each as it arrives (a known issue, not what this
    scenario is about)."""
    return len(received) == len(expected) and sorted(map(json.dumps, received)) == sorted(map(json.dumps, expected))


def result_through(agent: AgentProcess, run_id: str) -> dict[str, Any]:
    """The finished run's record, read through ``agent`` (``?wait=``)."""
    record = until_known(
        lambda: agent.call(run_path(run_id, query={"wait": TIMEOUT}), timeout=TIMEOUT + 10), f"{agent.name} to know {run_id}"
    )
    assert record["state"] == "succeeded", record
    return record


def test_one_off_runs_submitted_sent_to_and_read_through_different_nodes_survive_a_crash_and_a_stop(
    tmp_path: Path,
) -> None:
    """Scenario 3 of the issue, on five agents (drain timeout 2 s).

    First batch: ten one-off jobs that each wait for two updates are
    submitted through node A (the first with ``peer submit``, the rest with
    ``POST /submit``), sent their updates through node B (``peer send``,
    ``POST /runs/{id}/send``) and their results read through node C (``peer
    result --wait``, ``GET /runs/{id}?wait=``): each ran exactly once, got
    its updates (each once), and its record names the node that ran it.

    Second batch: ten more, each sent its first update while running; then
    the node running most of them is killed -9 and the next one is stopped
    with SIGTERM (its runs wait for a second update, so the drain times out
    and it hands them back). Every run still finishes, on a survivor, as a
    later attempt for those on the two victims, with both updates (the
    re-run gets the first again), and every result is readable from every
    survivor: nothing is lost."""
    journal = tmp_path / "journal.txt"
    with LocalCluster(tmp_path, profile=PROFILE, key=generate_key(), extra_args=["--drain-timeout", "2"]) as cluster:
        agents = [cluster.add() for _ in range(5)]
        cluster.wait_api(agents, TIMEOUT)
        wait_for(lambda: eligible_everywhere(agents, 5), TIMEOUT, "five eligible agents")
        a, b, c = agents[:3]

        # -- first batch: stable membership ----------------------------------------------
        first_cli = a.cli(
            "submit", "--call", "peer.testing.samples:journal", "--id", "batch1-0",
            "--kwargs", json.dumps({"path": str(journal), "updates": 2}),
        )
        assert first_cli.returncode == 0, first_cli.stderr
        batch1 = [first_cli.stdout.strip()] + [submit(a, f"batch1-{i}", journal, updates=2) for i in range(1, 10)]
        assert len(set(batch1)) == 10
        for i, run_id in enumerate(batch1):
            if i == 0:
                wait_for(lambda run_id=run_id: run_id in records(b, [run_id]), TIMEOUT, f"{b.name} to know {run_id}")
                for n in range(2):
                    sent = b.cli("send", run_id, json.dumps({"run": i, "n": n}))
                    assert sent.returncode == 0 and sent.stdout.strip() == f"sent to {run_id}", sent.stderr
            else:
                for n in range(2):
                    send(b, run_id, {"run": i, "n": n})
        read = c.cli("result", batch1[0], "--wait", str(TIMEOUT))
        assert read.returncode == 0, read.stderr
        assert same_updates(json.loads(read.stdout)["updates"], [{"run": 0, "n": 0}, {"run": 0, "n": 1}]), read.stdout
        results1 = {run_id: result_through(c, run_id) for run_id in batch1}
        lines1 = read_journal(journal)
        assert sorted(line.run for line in lines1) == sorted(batch1), lines1
        for i, run_id in enumerate(batch1):
            record = results1[run_id]
            [line] = [line for line in lines1 if line.run == run_id]
            assert record["attempt"] == line.attempt == 1 and record["owner"] == line.node, (record, line)
            result = record["result"]
            assert (result["run"], result["attempt"], result["node"]) == (run_id, 1, line.node), record
            assert same_updates(result["updates"], [{"run": i, "n": 0}, {"run": i, "n": 1}]), record

        # -- second batch: a crash and a graceful stop while they run -----------------------
        batch2 = [submit(a, f"batch2-{i}", journal, updates=2) for i in range(10)]
        for i, run_id in enumerate(batch2):
            send(b, run_id, {"run": i, "n": 0})

        def all_got_the_first_update() -> dict[str, dict[str, Any]] | None:
            seen = records(a, batch2)
            done = len(seen) == 10 and all(
                run["state"] == "running" and run.get("progress") == {"received": 1, "of": 2} for run in seen.values()
            )
            return seen if done else None

        running = wait_for(all_got_the_first_update, TIMEOUT, "every run to be running with its first update")
        load = Counter(run["owner"] for run in running.values() if run["owner"] != a.name)
        assert len(load) >= 2, f"the runs are on too few nodes to lose two: {load}"
        (crashed, _), (stopped, _) = load.most_common(2)  # at least one run each, neither A
        victims = {crashed: cluster.agents[crashed], stopped: cluster.agents[stopped]}
        survivors = [agent for agent in agents if agent.name not in victims]
        sender, reader = (s for s in survivors if s is not a)  # B and C among the survivors
        on_victims = {run_id for run_id, run in running.items() if run["owner"] in victims}

        victims[crashed].kill()
        assert victims[stopped].stop(TIMEOUT) == 0, victims[stopped].log_text()
        stopped_log = victims[stopped].log_text()
        assert "handed back" in stopped_log or "cancelling run" in stopped_log, stopped_log[-3000:]

        def rerun_on_survivors() -> bool:
            seen = records(a, batch2)
            return all(
                seen[run_id]["state"] == "running"
                and seen[run_id]["owner"] not in victims
                and seen[run_id]["attempt"] >= (2 if run_id in on_victims else 1)
                for run_id in batch2
            )

        wait_for(rerun_on_survivors, TIMEOUT * 2, "every run of the victims to be re-run on a survivor")
        for i, run_id in enumerate(batch2):
            send(sender, run_id, {"run": i, "n": 1})
        results2 = {run_id: result_through(reader, run_id) for run_id in batch2}
        everyone = {}
        for agent in survivors:  # results replicate: each survivor has them all, soon
            everyone[agent.name] = wait_for(
                functools.partial(finished_runs, agent, batch1 + batch2), TIMEOUT, f"{agent.name} to have every result"
            )
        lines = read_journal(journal)
        failure_logs = logs(cluster)

    for i, run_id in enumerate(batch2):
        record = results2[run_id]
        executions = sorted((line for line in lines if line.run == run_id), key=lambda line: line.attempt)
        assert executions, run_id
        last = executions[-1]
        assert record["owner"] == last.node and record["attempt"] == last.attempt and last.node not in victims, (record, executions)
        assert same_updates(record["result"]["updates"], [{"run": i, "n": 0}, {"run": i, "n": 1}]), record
        if run_id in on_victims:
            assert executions[0].node in victims and record["attempt"] >= 2, (record, executions, failure_logs)
        else:
            assert [line.attempt for line in executions] == [1], (executions, failure_logs)
        assert [line.attempt for line in executions] == sorted(set(line.attempt for line in executions)), executions
    for name, seen in everyone.items():
        for run_id, run in seen.items():
            expected = results1.get(run_id) or results2[run_id]
            assert (run["state"], run.get("result"), run["attempt"]) == ("succeeded", expected["result"], expected["attempt"]), (
                name, run
            )


# -- scenario 4: scaling out and in under cron jobs --------------------------------------------


@attrs.frozen
class Scaling:
    """What happened while the cluster was scaled: the journal, the jobs'
    definition times, the runs' records at the end, the membership changes."""

    lines: list[JournalLine]
    since: dict[str, int]
    end_ms: int
    records: dict[str, list[dict[str, Any]]]  # job -> its runs, as a survivor has them
    changes: list[tuple[int, str]]
    logs: str

    def story(self, job_id: str) -> str:
        states = Counter(run["state"] for run in self.records[job_id])
        not_run = sorted(
            (run["id"], run["state"], run.get("error")) for run in self.records[job_id] if run["state"] != "succeeded"
        )
        return f"membership changes: {self.changes}\nrun states: {dict(states)}; not run: {not_run}\n{self.logs}"

    def check(self, job_id: str) -> None:
        lines = [line for line in self.lines if line.job == job_id]
        ran = Counter(line.tick for line in lines)
        expected = ticks_between(self.since[job_id], self.end_ms - SLACK_MS)
        missing = sorted(set(expected) - set(ran))
        duplicates = sorted((tick, [line for line in lines if line.tick == tick]) for tick, n in ran.items() if n > 1)
        assert len(expected) >= 12 and not missing, f"{job_id}: ticks never run: {missing}\n{self.story(job_id)}"
        assert len({line.node for line in lines}) >= 3, f"{job_id} hardly moved: {lines}"
        assert not duplicates, f"{job_id}: ticks run twice: {duplicates}\n{self.story(job_id)}"


@pytest.fixture(scope="module")
def scaling(tmp_path_factory: pytest.TempPathFactory) -> Scaling:
    """Scenario 4 of the issue, run once for the two tests below: two cron
    jobs every 2 s in mode one (``scaled`` runs in a moment; ``scaled-slow``
    takes 0.5 s, a quarter of its interval), defined with ``peer jobs add``
    while three agents run; three more join; then four leave gracefully, one
    at a time (``peer leave`` for the first, SIGTERM for the others), each
    time the owner of one of the jobs, so that both are handed over; then
    two agents run them for a while. Each phase lasts a few ticks (the issue
    gives no durations)."""
    tmp_path = tmp_path_factory.mktemp("scaling")
    journal = tmp_path / "journal.txt"
    jobs_file = tmp_path / "jobs.toml"
    job_ids = ["scaled", "scaled-slow"]
    jobs_file.write_text(toml_jobs([journal_job("scaled", journal), journal_job("scaled-slow", journal, sleep=0.5)]))
    changes: list[tuple[int, str]] = []
    with LocalCluster(tmp_path, profile=PROFILE, key=generate_key()) as cluster:
        agents = [cluster.add() for _ in range(3)]
        cluster.wait_api(agents, TIMEOUT)
        wait_for(lambda: eligible_everywhere(agents, 3), TIMEOUT, "three eligible agents")
        added = agents[0].cli("jobs", "add", str(jobs_file))
        assert added.returncode == 0 and added.stdout.split() == ["defined", "scaled", "defined", "scaled-slow"], added
        since = {
            job["id"]: iso_ms(job["since"])
            for job in until_known(lambda: agents[0].call("/jobs"), "the jobs")["jobs"]
        }
        wait_for(lambda: agreed_owners(agents, job_ids), TIMEOUT, "three agents to agree on the owners")
        time.sleep(6)

        more = [cluster.add() for _ in range(3)]
        cluster.wait_api(more, TIMEOUT)
        changes.append((now_ms(), "3 -> 6"))
        agents += more
        wait_for(lambda: eligible_everywhere(agents, 6), TIMEOUT, "six eligible agents")
        wait_for(lambda: agreed_owners(agents, job_ids), TIMEOUT, "six agents to agree on the owners")
        time.sleep(6)

        for step in range(4):
            owner = wait_for(lambda: agreed_owners(agents, job_ids), TIMEOUT, "the agents to agree on the owners")
            leaving = cluster.agents[str(owner[job_ids[step % 2]])]
            changes.append((now_ms(), f"{leaving.name} leaves"))
            if step == 0:
                left = leaving.cli("leave")
                assert left.returncode == 0, left.stderr
                assert leaving.wait(TIMEOUT) == 0, leaving.log_text()
            else:
                assert leaving.stop(TIMEOUT) == 0, leaving.log_text()
            agents.remove(leaving)
            wait_for(lambda: eligible_everywhere(agents, len(agents)), TIMEOUT, f"{len(agents)} eligible agents")
            time.sleep(3)
        time.sleep(6)
        end_ms = now_ms()
        records = {job_id: agents[0].call(api_path("runs", query={"job": job_id, "limit": 1000}))["runs"] for job_id in job_ids}
        return Scaling(read_journal(journal), since, end_ms, records, changes, logs(cluster))


def test_scaling_from_three_to_six_and_back_to_two_misses_no_tick(scaling: Scaling) -> None:
    """Every tick of the quick job from the first after its definition to
    the last that surely ran is in the journal, once. The design allows a
    duplicate only across a membership change; none was ever observed here,
    so none is allowed."""
    scaling.check("scaled")


def test_scaling_misses_no_tick_of_a_job_that_runs_for_a_quarter_of_its_interval(scaling: Scaling) -> None:
    """The same for the job whose runs take 0.5 s of its 2 s interval: a new
    owner starts its first tick up to 1.5 s late (the handover wait), so that
    run may still be going at the next tick, which must run all the same
    (overlap ``allow``, the default)."""
    scaling.check("scaled-slow")


# -- back-pressure: a node runs at most max_running_runs, and refuses submits past the backlog --


def concurrency(runs: Iterable[dict[str, Any]], owner: str) -> int:
    """The most runs of ``owner`` that overlapped, by their records' start and end."""
    edges = sorted(
        edge for run in runs if run["owner"] == owner for edge in ((run["started"], 1), (run["finished"], -1))
    )  # an end before a start at the same ms: back to back is not overlap
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def test_nodes_run_at_most_their_limit_and_refuse_submits_past_the_backlog(tmp_path: Path) -> None:
    """Two agents running two runs each at most (a flag), a backlog of three
    (the config file). Ten sync one-offs: never more than two running per
    node, each run once, all succeed; a client that honours 429's
    Retry-After gets them all in. Then runs that wait for updates fill the
    slots and the backlog, and the next submit is a 429, and the CLI's exit 1."""
    config = tmp_path / "peer.toml"
    config.write_text("max_pending_runs = 3\n")
    journal = tmp_path / "journal"
    args = ["--max-running-runs", "2", "--config", str(config)]
    with LocalCluster(tmp_path, profile=PROFILE, key=generate_key(), extra_args=args) as cluster:
        agents = [cluster.add() for _ in range(2)]
        a, b = agents
        cluster.wait_api(agents, TIMEOUT)
        wait_for(lambda: eligible_everywhere(agents, 2), TIMEOUT, "two eligible agents")

        refused = 0
        run_ids: list[str] = []
        running_seen: dict[str, int] = {agent.name: 0 for agent in agents}

        def sample() -> None:
            for agent in agents:
                running = len(agent.call("/status")["scheduler"]["running"])
                running_seen[agent.name] = max(running_seen[agent.name], running)

        for i in range(10):
            body = {"id": f"sleepy-{i}", "call": "peer.testing.samples:sleep", "kwargs": {"seconds": 0.5, "result": i}}
            via = agents[i % 2]
            while True:
                try:
                    run_ids.append(str(via.call("/submit", method="POST", body=body)["run"]))
                    break
                except ClientError as error:
                    assert error.status == 429 and "max_pending_runs" in str(error), error
                    refused += 1
                    sample()
                    time.sleep(0.2)
            sample()
        done = wait_for(lambda: (sample(), finished_runs(a, run_ids))[1], TIMEOUT, "the ten runs to finish")
        assert {run["state"] for run in done.values()} == {"succeeded"}, done
        assert {run["attempt"] for run in done.values()} == {1}
        assert sorted(run["result"] for run in done.values()) == list(range(10))
        assert max(running_seen.values()) <= 2 and sum(running_seen.values()) > 0, running_seen
        for agent in agents:
            assert concurrency(done.values(), agent.name) <= 2, (agent.name, done)
        assert {run["owner"] for run in done.values()} == {a.name, b.name}  # both took their share

        # Runs that wait for an update fill the slots (two a node), then the
        # backlog (three pending, as a sees them): the next submit is a 429.
        waiting: list[str] = []
        with pytest.raises(ClientError) as info:
            for i in range(20):
                waiting.append(submit(a, f"waits-{i}", journal, updates=1))
                time.sleep(0.2)  # the claims reach a: its backlog counts the runs that wait
        assert info.value.status == 429 and "backlog of pending runs is 3, at its bound of 3" in str(info.value)
        assert len(waiting) >= 3
        status = a.call("/status")["scheduler"]
        assert (status["backlog"], status["max_pending_runs"], status["max_running_runs"]) == (3, 3, 2), status
        sample()
        assert max(running_seen.values()) <= 2, running_seen
        cli = a.cli("submit", "--call", "peer.testing.samples:echo")
        assert cli.returncode == 1 and cli.stdout == "" and "HTTP 429" in cli.stderr, cli
        assert sum(agent.call("/status")["scheduler"]["stats"]["submits_refused"] for agent in agents) == refused + 2
        assert "peer_scheduler_submits_refused_total" in a.call_text("/metrics")

        # Each, sent its update (delivered once it runs), finishes and frees its slot for the next.
        for run_id in waiting:
            send(a, run_id, "go")
        done = wait_for(lambda: (sample(), finished_runs(a, waiting))[1], TIMEOUT, "the waiting runs to finish")
        assert max(running_seen.values()) <= 2, running_seen
        assert {run["state"] for run in done.values()} == {"succeeded"}, done
        assert sorted(line.run for line in read_journal(journal)) == sorted(waiting)  # each ran once
