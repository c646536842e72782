"""A deploy on real processes: what scaling and restarting agents do to the jobs.

    python bench/deploy_bench.py [--nodes N] [--reps R] [--json] [--seed S] [--keep DIR]

What a deploy does to a cluster is what this measures: agents added, every
agent restarted in turn (SIGTERM, then started again under the same name and
port), the added ones removed, and one ``kill -9``ed and restarted. The
question is whether the jobs still run exactly once while that happens.

Per repetition a fresh cluster of ``--nodes`` ``peer agent`` processes on
127.0.0.1 (``peer.testing.cluster.LocalCluster``: profile ``lan``, a cluster key,
every process tracked by PID and killed when its ``with`` block ends, whatever
happened). Each agent has every other as a seed, on ports picked beforehand
(as ``peer.tools.chaos`` does), and all get one jobs file: four jobs in mode
``one`` and one in mode ``all``, each ``@every 1s``, calling
``peer.testing.samples:journal``. Once every scheduler is ready and sees every node
eligible, four phases, in order:

1. ``scale-up``: N/2 (at least 1) more agents, seeded with the original
   ones, started one at a time, each waited for until ``GET /health/ready``
   answers 200; then a few seconds of steady running.
2. ``rolling-restart``: every agent in turn: SIGTERM, wait for its exit (its
   code is recorded: anything but 0 is reported), start it again under the
   same name and port, wait until it is ready, then 2 s before the next.
3. ``scale-down``: SIGTERM the agents added in phase 1, wait for their exits
   (and a few seconds).
4. ``kill-restart``: ``kill -9`` one random agent, wait 8 s (long enough to
   be declared dead), start it again under the same name, wait until it is
   ready, then a few seconds.

Throughout the phases, one-off runs (also ``peer.testing.samples:journal``) are
submitted with ``POST /submit`` through random running agents, 1-3 a second,
and one through each agent as soon as it answers ready (where duplicate
starts have been seen). A quarter of them are long: they wait for one update
and sleep 3-6 s; the update is sent a moment after the submit, through
another agent (``POST /runs/{id}/send``, retried on 404 while the record is
on its way). A submit that errors is counted refused, not lost: nothing was
promised. After the last phase the one-offs get up to 60 s to finish (their
records polled through a running agent), then every agent is stopped.

The ground truth is the journal. ``peer.testing.samples.journal`` appends one line per
execution, ``RUN_ID ATTEMPT NODE START_MS``, to a file outside the agents, so
what ran is counted from there and never from what the agents say about it
(the runs map is what is under test). Only one-offs' final states come from
the API. Figures per phase (a tick belongs to the phase it was due in, a
one-off to the phase it was submitted in):

- mode ``one`` ticks: ``due`` (ticks of the jobs' schedule, not counting the
  first 3 s after the cluster was ready nor the last 3 s before the end of
  the run: not owed yet), ``ran`` (at least one journal line), ``missed``
  (none), ``twice`` (more than one), split into ``rerun after kill`` (the
  earlier execution started on the killed node before the kill: the design's
  failover, ``peer.tools.chaos.duplicates``'s definition) and ``duplicates``;
- mode ``all`` ticks, per node that was up (from ready to its SIGTERM or
  kill) throughout [tick - 3 s, tick + 3 s]: ``due``, ``ran``, ``missed``,
  ``twice``;
- one-offs: ``submitted`` (acknowledged), ``refused``, ``succeeded``
  (final state read through the API), ``failed`` (another final state),
  ``lost`` (acknowledged but not finished, or unknown, at the end; or
  recorded ``lost``), ``2x same attempt`` (two journal lines with the same
  run id and attempt: two nodes started it at once), ``rerun`` (lines with
  attempt > 1).

Anything odd is reported as a problem, not hidden: an exit code other than
0 on SIGTERM, an agent that exits on its own (down from then on; the rolling
restart starts it again at its turn), an agent not ready in time, and a
source file of ``peer``, ``membership`` or ``crdt`` changed during a rep (the
agents import them at each start: a rep over code being edited mixes versions).

All times come from this machine's one clock. Nothing is asserted: the exit
status is 0 unless a cluster could not be started. The same seed gives the
same draws (which agent, which one-offs are long); timing decides the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crdt
import membership
import peer
from peer.control.client import ClientError, api_path
from peer.jobs.runs import tick_run_id
from peer.runtime.keys import generate_key
from peer.runtime.logs import quiet_http_libraries
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for
from peer.tools.chaos import FINISHED, JournalLine, duplicates, iso_ms, read_journal, ticks_between, toml_jobs

log = logging.getLogger("deploy_bench")
PEER_SOURCE = Path(peer.__file__).parent  # the agents run ``python -m peer`` from the same place

EVERY_MS = 1000  # every cron job is "@every 1s"
ONE_JOBS = [f"deploy-{index}" for index in range(4)]  # mode one
ALL_JOB = "deploy-all"  # mode all
PROFILE = "lan"
DRAIN_TIMEOUT = 10  # each agent's --drain-timeout: a long one-off (<= 6 s) finishes before its node leaves

START_TIMEOUT = 60.0  # the first cluster: to be ready, every scheduler seeing every node
READY_TIMEOUT = 60.0  # a started agent answers /health/ready 200 within this
STOP_TIMEOUT = 40.0  # a SIGTERMed agent has exited within this (else it is killed)
API_TIMEOUT = 3.0
POLL = 0.1  # seconds between looks while waiting

STEADY_S = 5.0  # after the scale-up
ROLL_GAP_S = 2.0  # between two restarts of the rolling restart
SCALE_DOWN_SETTLE_S = 3.0  # after the scale-down
KILL_DOWN_S = 8.0  # a killed agent stays down this long (lan: declared dead within ~5 s)
AFTER_KILL_S = 5.0  # after the killed agent is back

SUBMIT_GAP_S = (0.3, 0.9)  # between two one-offs: 1-3 a second
LONG_SHARE = 0.25  # of the one-offs, those that wait for an update and sleep
LONG_SLEEP_S = (3.0, 6.0)
SEND_DELAY_S = 0.5  # the update is sent this long after the submit...
SEND_TRIES = 6  # ...tried this many times (404: the record is not there yet)...
SEND_RETRY_S = 0.5  # ...this far apart
ONEOFF_WAIT_S = 60.0  # after the last phase, for the one-offs to finish

WARMUP_MS = 3000  # ticks due this soon after the cluster was ready are not owed
TAIL_MS = 3000  # nor those due this soon before the end of the run
ALL_SPAN_MS = 3000  # a mode-all tick is owed by a node up from tick - this to tick + this


def now_ms() -> int:
    return int(time.time() * 1000)


# -- what happened -------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    start_ms: int
    end_ms: int = 0


@dataclass
class OneOff:
    id: str
    node: str  # submitted through
    phase: str
    at_ms: int
    long: bool
    run: str | None = None  # the run id; None: refused
    error: str | None = None  # why it was refused
    send: str | None = None  # a long one's update: how the send went
    state: str | None = None  # the final state, through the API ("unknown": 404)


@dataclass
class PendingSend:
    oneoff: OneOff
    due: float
    tries: int = 0


@dataclass
class Exit:
    node: str
    phase: str
    code: int | None  # None: still running after STOP_TIMEOUT, then killed
    seconds: float  # from the SIGTERM


@dataclass
class Tally:
    """The figures of one phase (or a sum of them)."""

    one_due: int = 0
    one_ran: int = 0
    one_missed: int = 0
    one_twice: int = 0
    one_rerun_after_kill: int = 0
    one_duplicates: int = 0
    all_due: int = 0
    all_ran: int = 0
    all_missed: int = 0
    all_twice: int = 0
    oneoffs_submitted: int = 0
    oneoffs_refused: int = 0
    oneoffs_succeeded: int = 0
    oneoffs_failed: int = 0
    oneoffs_lost: int = 0
    oneoffs_started_twice: int = 0
    oneoffs_rerun: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})


@dataclass
class PhaseFigures:
    phase: Phase
    tally: Tally = field(default_factory=Tally)
    all_by_node: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    runs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # figure -> the runs behind it

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase.name,
            "start_ms": self.phase.start_ms,
            "end_ms": self.phase.end_ms,
            "seconds": round((self.phase.end_ms - self.phase.start_ms) / 1000, 1),
            **dataclasses.asdict(self.tally),
            "all_by_node": {node: {key: counts[key] for key in ("due", "ran", "missed", "twice")}
                            for node, counts in sorted(self.all_by_node.items())},
            "runs": dict(self.runs),
        }


# -- the driver -------------------------------------------------------------------------------


class Deploy:
    """One repetition: the cluster, the phases, the one-offs, and what was seen."""

    def __init__(self, cluster: LocalCluster, journal: Path, *, nodes: int, seed: str) -> None:
        self.cluster = cluster
        self.journal = journal
        self.nodes = nodes
        self.rng = random.Random(seed)  # which agent is killed
        self.submit_rng = random.Random(f"{seed}/submit")  # one-offs: timing decides how many, so their own stream
        self.t0 = time.time()
        self.originals: list[AgentProcess] = []
        self.added: list[AgentProcess] = []
        self.killed: str | None = None
        self.up: dict[str, list[list[int]]] = defaultdict(list)  # name -> [ready ms, down ms (0: still up)]
        self.deaths: dict[str, list[int]] = defaultdict(list)  # name -> ms it was killed
        self.phases: list[Phase] = []
        self.stage = "start"  # the phase going on, or start, after (the last phase), end (the final stop)
        self.oneoffs: list[OneOff] = []
        self.sends: list[PendingSend] = []
        self.exits: list[Exit] = []
        self.events: list[str] = []
        self.problems: list[str] = []
        self.next_submit = float("inf")
        self.ready_ms = 0  # the cluster first became ready
        self.end_ms = 0  # the final SIGTERM
        self.since: dict[str, int] = {}  # job -> ms it was defined

    def note(self, text: str) -> None:
        text = f"t+{time.time() - self.t0:5.1f}s {text}"
        log.info("%s", text)
        self.events.append(text)

    def problem(self, text: str) -> None:
        self.note(f"PROBLEM: {text}")
        self.problems.append(text)

    # -- who is up ------------------------------------------------------------------------------

    def mark_up(self, agent: AgentProcess, at_ms: int | None = None) -> None:
        self.up[agent.name].append([at_ms or now_ms(), 0])

    def mark_down(self, agent: AgentProcess) -> None:
        intervals = self.up.get(agent.name)
        if intervals and intervals[-1][1] == 0:
            intervals[-1][1] = now_ms()

    def up_agents(self) -> list[AgentProcess]:
        """Ready and not told to go: where one-offs and updates are sent."""
        return [agent for name, agent in sorted(self.cluster.agents.items())
                if self.up[name] and self.up[name][-1][1] == 0 and agent.running]

    def was_up(self, name: str, from_ms: int, to_ms: int) -> bool:
        return any(start <= from_ms and to_ms <= end for start, end in self.up.get(name, ()))

    # -- waiting, with one-offs going on ------------------------------------------------------------

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Until ``condition()`` (True) or ``timeout`` (False), submitting
        one-offs and sending updates meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                return False
            self.tend()
            time.sleep(POLL)
        return True

    def idle(self, seconds: float) -> None:
        self.wait(lambda: False, seconds)

    def tend(self) -> None:
        self.notice_crashes()
        if time.time() >= self.next_submit:
            self.submit()
            self.next_submit = time.time() + self.submit_rng.uniform(*SUBMIT_GAP_S)
        self.send_updates()

    def notice_crashes(self) -> None:
        """An agent up that exited although nobody stopped it: down from now,
        a death (what it ran may be re-run), and a problem reported."""
        for name, agent in sorted(self.cluster.agents.items()):
            if self.up[name] and self.up[name][-1][1] == 0 and not agent.running:
                self.mark_down(agent)
                self.deaths[name].append(now_ms())
                code = agent.process.returncode if agent.process else None
                self.problem(f"{name} exited on its own with {code}: {last_error(agent)}")

    def submit(self, agent: AgentProcess | None = None) -> None:
        """A one-off through ``agent``, else a random running agent."""
        if agent is None:
            candidates = self.up_agents()
            if not candidates:
                return
            agent = self.submit_rng.choice(candidates)
        oneoff = OneOff(f"oneoff-{len(self.oneoffs)}", agent.name, self.stage, now_ms(), self.submit_rng.random() < LONG_SHARE)
        kwargs: dict[str, Any] = {"path": str(self.journal)}
        if oneoff.long:
            kwargs.update(sleep=round(self.submit_rng.uniform(*LONG_SLEEP_S), 1), updates=1)
        self.oneoffs.append(oneoff)
        body = {"id": oneoff.id, "call": "peer.testing.samples:journal", "kwargs": kwargs}
        try:
            oneoff.run = str(agent.call("/submit", method="POST", body=body, timeout=API_TIMEOUT)["run"])
        except ClientError as error:
            oneoff.error = str(error)
            return
        if oneoff.long:
            self.sends.append(PendingSend(oneoff, time.time() + SEND_DELAY_S))

    def send_updates(self) -> None:
        """Each long one-off's update, through an agent other than its submitter."""
        now = time.time()
        for pending in [pending for pending in self.sends if pending.due <= now]:
            oneoff = pending.oneoff
            assert oneoff.run is not None
            agents = [agent for agent in self.up_agents() if agent.name != oneoff.node] or self.up_agents()
            pending.tries += 1
            agent = self.submit_rng.choice(agents) if agents else None
            error = send_update(agent, oneoff.run)
            if error is None:
                oneoff.send = f"sent through {agent.name if agent else '?'} (try {pending.tries})"
                self.sends.remove(pending)
            elif pending.tries >= SEND_TRIES or error.status not in (None, 404):  # 404: the record is on its way
                oneoff.send = f"not sent after {pending.tries} tries: {error}"
                self.sends.remove(pending)
            else:
                pending.due = now + SEND_RETRY_S

    # -- agents up and down ------------------------------------------------------------------------

    def bring_up(self, agent: AgentProcess) -> bool:
        """Start ``agent`` (unless it runs), wait until it is ready, submit a
        one-off through it at once."""
        started = time.time()
        if not agent.running:
            agent.start()
        if not self.wait(lambda: not agent.running or agent.answers_ready(), READY_TIMEOUT) or not agent.running:
            code = agent.process.poll() if agent.process else None
            self.problem(f"{agent.name} (start {agent.starts}) not ready within {READY_TIMEOUT:g}s (exit code {code})")
            return False
        self.mark_up(agent)
        self.note(f"{agent.name} ready {time.time() - started:.1f}s after its start")
        self.submit(agent)
        return True

    def terminate(self, agents: Sequence[AgentProcess]) -> None:
        """SIGTERM each (a graceful leave) and wait for the exits; one that
        is already down (crashed: ``notice_crashes`` said so) is left be."""
        self.notice_crashes()
        agents = [agent for agent in agents if agent.running]
        sent = time.time()
        exited: dict[str, float] = {}

        def all_exited() -> bool:
            for agent in agents:
                if agent.name not in exited and not agent.running:
                    exited[agent.name] = time.time()
            return len(exited) == len(agents)

        for agent in agents:
            self.mark_down(agent)
            agent.stop(timeout=0.0)  # SIGTERM; the wait is here, one-offs going on
        self.wait(all_exited, STOP_TIMEOUT)
        for agent in agents:
            code = agent.process.poll() if agent.process else None
            if code is None:
                self.problem(f"{agent.name} still running {STOP_TIMEOUT:g}s after SIGTERM: killed")
                self.deaths[agent.name].append(now_ms())
                agent.kill()
            elif code != 0:
                self.problem(f"{agent.name} exited with {code} on SIGTERM: {last_error(agent)}")
            seconds = round(exited.get(agent.name, time.time()) - sent, 1)
            self.exits.append(Exit(agent.name, self.stage, code, seconds))
            self.note(f"{agent.name} exited with {code}, {seconds:.1f}s after SIGTERM")

    # -- the phases ----------------------------------------------------------------------------------

    def begin(self, name: str) -> None:
        at = now_ms()
        if self.phases:
            self.phases[-1].end_ms = at
        self.phases.append(Phase(name, at))
        self.stage = name
        self.note(f"phase {name}")

    def start(self) -> None:
        """The original agents, each with all the others as seeds; until
        every scheduler is ready and sees them all eligible, with the jobs."""
        self.originals.extend(self.cluster.add_mesh(self.nodes))
        self.cluster.wait_api(self.originals, START_TIMEOUT)
        wait_for(self.settled, START_TIMEOUT, "the schedulers to be ready with every node eligible", interval=0.2)
        self.ready_ms = now_ms()
        for agent in self.originals:
            self.mark_up(agent, self.ready_ms)
        self.since = {job["id"]: iso_ms(job["since"]) for job in self.originals[0].call("/jobs")["jobs"]}
        self.note(f"{self.nodes} agents ready")

    def settled(self) -> bool:
        try:
            for agent in self.originals:
                scheduler = agent.call("/status", timeout=API_TIMEOUT)["scheduler"]
                jobs = {job["id"] for job in agent.call("/jobs", timeout=API_TIMEOUT)["jobs"]}
                if not agent.answers_ready() or scheduler["role"] != "ready" or scheduler["eligible"] != self.nodes:
                    return False
                if jobs != {*ONE_JOBS, ALL_JOB}:
                    return False
        except ClientError:
            return False
        return True

    def scale_up(self) -> None:
        self.begin("scale-up")
        self.next_submit = time.time()
        seeds = [agent.addr for agent in self.originals]
        for index in range(self.nodes, self.nodes + max(1, self.nodes // 2)):
            agent = self.cluster.add(f"node-{index}", seeds=seeds, start=False)
            self.added.append(agent)
            self.bring_up(agent)
        self.idle(STEADY_S)

    def rolling_restart(self) -> None:
        self.begin("rolling-restart")
        for agent in [*self.originals, *self.added]:
            self.terminate([agent])
            self.bring_up(agent)
            self.idle(ROLL_GAP_S)

    def scale_down(self) -> None:
        self.begin("scale-down")
        self.terminate([agent for agent in self.added if agent.running])
        self.idle(SCALE_DOWN_SETTLE_S)

    def kill_restart(self) -> None:
        self.begin("kill-restart")
        if not self.up_agents():
            self.problem("no agent up to kill")
            return
        victim = self.rng.choice(self.up_agents())
        self.killed = victim.name
        self.deaths[victim.name].append(now_ms())  # before the kill: nothing runs there after this
        self.mark_down(victim)
        victim.kill()
        self.note(f"kill -9 {victim.name}")
        self.idle(KILL_DOWN_S)
        views = self.cluster.views(self.up_agents())
        seen = {name: view.get(victim.name) for name, view in views.items()}
        self.note(f"{victim.name} after {KILL_DOWN_S:g}s down, as the others see it: {seen}")
        self.bring_up(victim)
        self.idle(AFTER_KILL_S)

    def end_phases(self) -> None:
        self.phases[-1].end_ms = now_ms()
        self.stage = "after"
        self.next_submit = float("inf")  # no more one-offs

    def finish_oneoffs(self) -> None:
        """Until every acknowledged one-off has finished (at most
        ``ONEOFF_WAIT_S``), polling their records on the running agents."""
        waiting = [oneoff for oneoff in self.oneoffs if oneoff.run is not None]
        deadline = time.monotonic() + ONEOFF_WAIT_S
        while True:
            self.send_updates()
            readers = self.up_agents()
            for index, oneoff in enumerate(waiting):
                if readers:
                    assert oneoff.run is not None  # waiting holds acknowledged one-offs only
                    oneoff.state = run_state(readers[index % len(readers)], oneoff.run) or oneoff.state
            waiting = [oneoff for oneoff in waiting if oneoff.state not in FINISHED]
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        self.note(f"one-offs: {len(waiting)} not finished after the wait")

    def stop_all(self) -> None:
        self.stage = "end"
        self.end_ms = now_ms()
        self.terminate(self.cluster.running())

    # -- figures -------------------------------------------------------------------------------

    def figures(self, lines: list[JournalLine]) -> list[PhaseFigures]:
        by_run: dict[str, list[JournalLine]] = defaultdict(list)
        for line in lines:
            by_run[line.run].append(line)
        duplicated = {line.run for line, _earlier in duplicates(lines, self.deaths)}
        owed_from, owed_until = self.ready_ms + WARMUP_MS, self.end_ms - TAIL_MS
        result = []
        for phase in self.phases:
            figures = PhaseFigures(phase)
            tally, runs = figures.tally, figures.runs
            after, until = max(phase.start_ms, owed_from), min(phase.end_ms, owed_until)
            for job in ONE_JOBS:
                for tick in ticks_between(max(after, self.since.get(job, 0)), until, EVERY_MS):
                    run = tick_run_id(job, tick)
                    executions = len(by_run.get(run, ()))
                    tally.one_due += 1
                    if executions:
                        tally.one_ran += 1
                    else:
                        tally.one_missed += 1
                        runs["one_missed"].append(run)
                    if executions > 1:
                        tally.one_twice += 1
                        kind = "one_duplicates" if run in duplicated else "one_rerun_after_kill"
                        setattr(tally, kind, getattr(tally, kind) + 1)
                        runs[kind].append(describe_run(run, by_run[run], self.t0))
            for tick in ticks_between(max(after, self.since.get(ALL_JOB, 0)), until, EVERY_MS):
                for node in sorted(self.cluster.agents):
                    if not self.was_up(node, tick - ALL_SPAN_MS, tick + ALL_SPAN_MS):
                        continue
                    run = tick_run_id(ALL_JOB, tick, node)
                    executions = len(by_run.get(run, ()))
                    counts = figures.all_by_node[node]
                    tally.all_due += 1
                    counts["due"] += 1
                    if executions:
                        tally.all_ran += 1
                        counts["ran"] += 1
                    else:
                        tally.all_missed += 1
                        counts["missed"] += 1
                        runs["all_missed"].append(run)
                    if executions > 1:
                        tally.all_twice += 1
                        counts["twice"] += 1
                        runs["all_twice"].append(describe_run(run, by_run[run], self.t0))
            for oneoff in (oneoff for oneoff in self.oneoffs if oneoff.phase == phase.name):
                self.count_oneoff(figures, oneoff, by_run.get(oneoff.run or "", []), duplicated)
            result.append(figures)
        return result

    def count_oneoff(self, figures: PhaseFigures, oneoff: OneOff, executions: list[JournalLine], duplicated: set[str]) -> None:
        tally, runs = figures.tally, figures.runs
        if oneoff.run is None:
            tally.oneoffs_refused += 1
            return
        tally.oneoffs_submitted += 1
        where = f"{oneoff.run} (via {oneoff.node}{', long' if oneoff.long else ''}"
        if oneoff.state == "succeeded":
            tally.oneoffs_succeeded += 1
        elif oneoff.state in FINISHED and oneoff.state != "lost":
            tally.oneoffs_failed += 1
            runs["oneoffs_failed"].append(f"{where}): {oneoff.state}")
        else:
            tally.oneoffs_lost += 1
            send = f"; update {oneoff.send}" if oneoff.long else ""
            runs["oneoffs_lost"].append(f"{where}): {oneoff.state or 'never read'}{send}; {len(executions)} journal lines")
        if any(count > 1 for count in Counter(line.attempt for line in executions).values()):
            tally.oneoffs_started_twice += 1
            runs["oneoffs_started_twice"].append(describe_run(oneoff.run, executions, self.t0))
        if any(line.attempt > 1 for line in executions):
            tally.oneoffs_rerun += 1
            after_kill = " (failover: the earlier start died with the killed node)" if oneoff.run not in duplicated else ""
            runs["oneoffs_rerun"].append(describe_run(oneoff.run, executions, self.t0) + after_kill)


def last_error(agent: AgentProcess) -> str:
    """The last line of its log naming an error (a traceback's last line), or "no error logged"."""
    errors = [text.strip() for text in agent.log_text().splitlines() if "Error" in text or '"level":"ERROR"' in text]
    return errors[-1][:300] if errors else "no error logged"


def send_update(agent: AgentProcess | None, run: str) -> ClientError | None:
    """Send ``run`` its update through ``agent``; the error, if it failed."""
    if agent is None:
        return ClientError("no agent up to send through")
    try:
        agent.call(api_path("runs", run, "send"), method="POST", body={"data": {"go": True}}, timeout=API_TIMEOUT)
    except ClientError as error:
        return error
    return None


def run_state(agent: AgentProcess, run: str) -> str | None:
    """The run's state on ``agent``; "unknown" if it does not know it; None
    if it did not answer."""
    try:
        return str(agent.call(api_path("runs", run), timeout=API_TIMEOUT)["state"])
    except ClientError as error:
        return "unknown" if error.status == 404 else None


def describe_run(run: str, executions: Iterable[JournalLine], t0: float) -> str:
    starts = ", ".join(f"attempt {line.attempt} on {line.node} at t+{line.start_ms / 1000 - t0:.2f}s"
                       for line in sorted(executions, key=lambda line: line.start_ms))
    return f"{run}: {starts}"


# -- one repetition ------------------------------------------------------------------------------


def source_stamps() -> dict[str, float]:
    """The modification time of every source file the agents import: if one
    changes during a rep, agents started later run other code than the
    first ones, and the figures mix versions."""
    stamps: dict[str, float] = {}
    for package in (peer, membership, crdt):
        assert package.__file__ is not None  # regular packages (with an __init__.py), not namespace ones
        stamps.update({str(path): path.stat().st_mtime for path in Path(package.__file__).parent.rglob("*.py")})
    return stamps


class StartFailed(Exception):
    """The cluster of a repetition could not be started."""


def run_rep(rep: int, nodes: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One fresh cluster through the four phases; its figures.
    ``StartFailed`` if the cluster could not be started."""
    workdir.mkdir(parents=True)
    journal = workdir / "journal.txt"
    jobs_file = workdir / "jobs.toml"
    jobs = [
        {"id": job, "schedule": "@every 1s", "mode": "one", "call": "peer.testing.samples:journal", "kwargs": {"path": str(journal)}}
        for job in ONE_JOBS
    ]
    jobs.append(
        {"id": ALL_JOB, "schedule": "@every 1s", "mode": "all", "call": "peer.testing.samples:journal", "kwargs": {"path": str(journal)}}
    )
    jobs_file.write_text(toml_jobs(jobs))
    extra = ["--jobs", str(jobs_file), "--drain-timeout", str(DRAIN_TIMEOUT)]
    sources = source_stamps()
    with LocalCluster(workdir, profile=PROFILE, key=generate_key(), extra_args=extra) as cluster:
        deploy = Deploy(cluster, journal, nodes=nodes, seed=f"{seed}/{rep}")
        try:
            deploy.start()
        except (RuntimeError, TimeoutError, ClientError, OSError) as error:  # an agent exited, never got ready, no port
            raise StartFailed(str(error)) from error
        deploy.scale_up()
        deploy.rolling_restart()
        deploy.scale_down()
        deploy.kill_restart()
        deploy.end_phases()
        deploy.finish_oneoffs()
        deploy.stop_all()
    after = source_stamps()
    changed = sorted(path for path in {*sources, *after} if sources.get(path) != after.get(path))
    if changed:
        deploy.problem(f"source files changed during the rep (agents ran different code): {', '.join(changed)}")
    phases = deploy.figures(read_journal(journal))
    return {
        "rep": rep,
        "workdir": str(workdir),
        "added": [agent.name for agent in deploy.added],
        "killed": deploy.killed,
        "phases": [figures.to_json() for figures in phases],
        "totals": dataclasses.asdict(sum((figures.tally for figures in phases), Tally())),
        "executions": len(read_journal(journal)),
        "exits": [dataclasses.asdict(exit) for exit in deploy.exits],
        "nonzero_exits": [dataclasses.asdict(exit) for exit in deploy.exits if exit.code != 0],
        "problems": deploy.problems,
        "updates_not_sent": [
            oneoff.run for oneoff in deploy.oneoffs if oneoff.long and oneoff.run and not (oneoff.send or "").startswith("sent")
        ],
        "oneoffs": [dataclasses.asdict(oneoff) for oneoff in deploy.oneoffs],
        "events": deploy.events,
    }


# -- the report -------------------------------------------------------------------------------------

PHASES = ["scale-up", "rolling-restart", "scale-down", "kill-restart"]
COLUMNS = [  # (title, Tally field)
    ("one:due", "one_due"), ("ran", "one_ran"), ("miss", "one_missed"), ("twice", "one_twice"),
    ("kill-rerun", "one_rerun_after_kill"), ("dup", "one_duplicates"),
    ("all:due", "all_due"), ("ran", "all_ran"), ("miss", "all_missed"), ("twice", "all_twice"),
    ("oneoff:sub", "oneoffs_submitted"), ("refused", "oneoffs_refused"), ("ok", "oneoffs_succeeded"),
    ("failed", "oneoffs_failed"), ("lost", "oneoffs_lost"), ("2x-same-att", "oneoffs_started_twice"), ("rerun", "oneoffs_rerun"),
]


def table(rows: Sequence[tuple[str, str, dict[str, int]]]) -> str:
    """rows: (phase, seconds, figures by Tally field)."""
    header = ["phase", "secs", *(title for title, _ in COLUMNS)]
    cells = [header] + [[name, seconds, *(str(figures[key]) for _, key in COLUMNS)] for name, seconds, figures in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths)))
                     for row in cells)


def summed(reps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every figure summed over the repetitions, per phase and in total."""
    keys = [f.name for f in dataclasses.fields(Tally)]
    phases = {name: {key: sum(p[key] for rep in reps for p in rep["phases"] if p["phase"] == name) for key in ["seconds", *keys]}
              for name in PHASES}
    return {
        "phases": phases,
        "totals": {key: sum(rep["totals"][key] for rep in reps) for key in keys},
        "nonzero_exits": sum(len(rep["nonzero_exits"]) for rep in reps),
        "problems": sum(len(rep["problems"]) for rep in reps),
    }


def format_rep(rep: dict[str, Any]) -> str:
    rows = [(p["phase"], f"{p['seconds']:.0f}", p) for p in rep["phases"]] + [("total", "", rep["totals"])]
    lines = [f"rep {rep['rep']}: added {', '.join(rep['added'])}; killed {rep['killed']}; {rep['executions']} executions in the journal;"
             f" workdir {rep['workdir']}", table(rows)]
    exits = ", ".join(f"{e['node']} {e['code']} ({e['seconds']}s)" for e in rep["exits"])
    lines.append(f"exits on SIGTERM: {exits}")
    for text in rep["problems"]:
        lines.append(f"PROBLEM: {text}")
    if rep["updates_not_sent"]:
        lines.append(f"updates not delivered to: {', '.join(rep['updates_not_sent'])}")
    for p in rep["phases"]:
        for figure, runs in p["runs"].items():
            shown = runs[:8]
            lines.append(f"  {p['phase']} {figure} ({len(runs)}):")
            lines += [f"    {text}" for text in shown]
            if len(runs) > len(shown):
                lines.append(f"    ... and {len(runs) - len(shown)} more (--json has them all)")
    return "\n".join(lines)


def format_total(total: dict[str, Any], reps: int) -> str:
    rows = [(name, f"{figures['seconds']:.0f}", figures) for name, figures in total["phases"].items()] + [("total", "", total["totals"])]
    return f"summed over {reps} reps:\n" + table(rows)


def repeat_command(args: argparse.Namespace, seed: int) -> str:
    words = ["python", "bench/deploy_bench.py", "--nodes", str(args.nodes), "--reps", str(args.reps), "--seed", str(seed)]
    words += ["--json"] if args.json else []
    words += ["--keep", args.keep] if args.keep else []
    return shlex.join(words)


def run_reps(args: argparse.Namespace, seed: int, command: str) -> list[dict[str, Any]] | None:
    """Every repetition, one after the other (each printed as it ends,
    unless --json); None if a cluster could not be started."""
    with tempfile.TemporaryDirectory(prefix="peer-deploy-") as scratch:
        base = Path(args.keep) if args.keep else Path(scratch)
        reps = []
        for rep in range(1, args.reps + 1):
            log.info("rep %d of %d", rep, args.reps)
            try:
                reps.append(run_rep(rep, args.nodes, seed, base / f"rep-{rep}"))
            except StartFailed as error:
                print(f"deploy_bench: the cluster of rep {rep} could not be started: {error}", file=sys.stderr)
                print(f"deploy_bench: repeat with: {command}", file=sys.stderr)
                return None
            if not args.json:
                print(format_rep(reps[-1]), flush=True)
    return reps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/deploy_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4, help="agents before the scale-up (default 4)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, each a fresh cluster (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument("--seed", type=int, default=None, help="seed of the draws (default: a random one, printed)")
    parser.add_argument("--keep", metavar="DIR", help="keep each rep's agent logs, jobs file and journal in DIR/rep-N")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    if args.keep and any((Path(args.keep) / f"rep-{rep}").exists() for rep in range(1, args.reps + 1)):
        parser.error(f"--keep {args.keep}: a rep-N directory is already there; give a new or empty directory")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    command = repeat_command(args, seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    quiet_http_libraries()
    log.info("deploy_bench: %d agents, %d reps, seed %d, peer from %s: %s", args.nodes, args.reps, seed, PEER_SOURCE, command)
    try:
        reps = run_reps(args, seed, command)
    except KeyboardInterrupt:  # every agent was killed on the way out
        print(f"deploy_bench: interrupted; repeat with: {command}", file=sys.stderr)
        return 130
    if reps is None:
        return 1
    total = summed(reps)
    if args.json:
        print(json.dumps({"command": command, "seed": seed, "nodes": args.nodes, "profile": PROFILE, "peer_source": str(PEER_SOURCE),
                          "drain_timeout": DRAIN_TIMEOUT, "reps": reps, "summed": total}, indent=1))
    else:
        print(format_total(total, len(reps)))
        print(f"peer from {PEER_SOURCE}; command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
