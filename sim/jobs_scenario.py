"""Job scenarios: the scheduler on N simulated nodes, under churn and loss.

A run is a membership scenario (same network, clocks and faults) whose nodes
run ``peer.core.node_core.NodeCore`` with the scheduler. The jobs are ``cron_jobs``
jobs in mode ``one`` and ``all_jobs`` in mode ``all``, all ``@every
<every>s``, defined one of two ways:

- ``jobs_file=False`` (the default, the model every seed and test before it
  was written for): at ``jobs_start`` one node defines them with ``add_job``;
- ``jobs_file=True``, as real agents start (``peer agent --jobs FILE``):
  every node, at every boot, hands them to ``define_when_ready`` right after
  its core is built, and defines them once settled and caught up. With a
  ``boot_delay`` too (0.2-0.6 s, say), a run starts and restarts its nodes
  the way processes do.

During the run, ``oneoffs`` one-off runs are submitted through random nodes,
``fail_share`` of them failing their first attempt (they have retries);
``ready_oneoffs`` more through each node the moment its scheduler turns
ready, and ``all_ready_oneoffs`` through a random node each time every
running node is ready again (what a deploy script does once its readiness
probes all pass). ``churn`` random nodes (never the seeds) crash
or leave gracefully during the faulty phase and come back a few seconds
later; the last ``heal`` seconds are fault-free.

The simulated executor plays the jobs: a started run takes a random time
from ``work_seconds``, then its node reports the outcome, unless the node
crashed or the scheduler cancelled the run meanwhile. Against the ground
truth the run measures:

- ``ticks_expected``: ticks of the mode-one jobs between their definition
  (plus ``settle``) and ``heal`` seconds before the end, plus, for mode
  ``all``, each tick once per node that was up from well before it to
  well after it;
- ``ticks_run``: those with a successful execution; ``missed`` the rest;
- ``duplicates``: executions that started while another execution of the
  same run was going on, or after one had succeeded, by the one rule of
  ``peer.jobs.executions`` (a re-run after its first execution's node
  crashed, or after a failed attempt, is not one; nor is one after a
  success that died with its node before any other node knew of it:
  ``reruns_after_lost_success``);
- ``same_attempt_starts``: executions of a run with an attempt an earlier
  execution of it had already started with (two claims of one attempt:
  never legitimate, as a re-run takes attempt + 1, even when the loser was
  cancelled at once); ``twice`` lists such runs and duplicated ones, with
  who ran them when;
- ``lost_results``: runs that succeeded (more than ``RESULT_SETTLE``
  seconds before the end, and not so long ago that the result expired),
  and one-offs submitted before the heal phase (unless their result expired),
  whose ``succeeded`` record is on no running node at the end, except a
  write that never left its node: one held by no other node a second after
  the life of the node holding it ended (a crash, or a graceful leave cut
  off by a partition): ``oneoffs_lost_with_submitter`` and
  ``results_lost_with_their_node``;
  ``results_not_everywhere``: those on some running nodes but not all yet
  (a lost delta waits for the next digest sync);
- ``oneoffs_done``, and the scheduler's counters summed over the nodes.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from membership.effects import Event
from peer.core.replication import ReplicationConfig
from peer.jobs.cron import parse_schedule
from peer.jobs.definition import JobSpec
from peer.jobs.executions import Execution, find_duplicates
from peer.jobs.runs import RunRecord, RunState, tick_run_id
from peer.jobs.scheduler import CancelRun, DeliverUpdate, Role, Scheduler, SchedulerConfig, StartRun
from peer.jobs.targets import CallTarget
from sim.clock import WALL_EPOCH
from sim.faults import ClockStep, Crash, Fault, Leave
from sim.membership_scenario import MembershipRun, MembershipScenario
from sim.node import DrivenCore, Life, SimNode, node_core, node_core_of

# A run of a mode-all job is owed by a node up from this long before its
# tick (after its settle) to this long after.
ALL_MODE_MARGIN_BEFORE = 2.0
ALL_MODE_MARGIN_AFTER = 5.0
# A result must be on every running node this long after its run finished.
RESULT_SETTLE = 5.0
# A client sending an update to a run no node it asks knows yet asks again
# this often, for this long.
UPDATE_RETRY = 0.5
UPDATE_PATIENCE = 30.0


def _seconds_range(value: Sequence[Any]) -> tuple[float, float]:
    return float(value[0]), float(value[1])


def _count_range(value: Sequence[Any]) -> tuple[int, int]:
    return int(value[0]), int(value[1])


@attrs.frozen
class JobsScenario(MembershipScenario):
    cron_jobs: int = 10
    all_jobs: int = 1
    every: float = 2.0
    oneoffs: int = 50
    fail_share: float = 0.1
    work_seconds: tuple[float, float] = (0.05, 0.5)
    jobs_start: float = 5.0
    churn: int = 0  # nodes that crash or leave (and come back) during the faulty phase
    heal: float = 20.0  # fault-free seconds at the end
    result_ttl: float = 600.0  # seconds results (and every record) of the jobs are kept
    scheduler: dict[str, Any] = attrs.field(factory=dict)  # SchedulerConfig overrides
    replication: dict[str, Any] = attrs.field(factory=dict)
    jobs_file: bool = False  # every node defines the jobs at every boot (define_when_ready), as agents do
    ready_oneoffs: int = 0  # one-offs submitted through a node as its scheduler turns ready
    all_ready_oneoffs: int = 0  # one-offs submitted through a random node as all running nodes are ready
    # Long one-offs: each runs ``long_seconds`` and finishes only once it
    # was delivered the ``long_updates`` updates sent to it through random nodes.
    long_oneoffs: int = 0
    long_seconds: tuple[float, float] = attrs.field(default=(2.0, 8.0), converter=_seconds_range)
    long_updates: tuple[int, int] = attrs.field(default=(1, 3), converter=_count_range)


def churn_faults(scenario: JobsScenario) -> list[Fault]:
    """``churn`` crash-or-leave events on random non-seed nodes, each node
    back 2-10 s later, all within the faulty phase."""
    rng = random.Random(f"churn/{scenario.seed}")
    start = scenario.jobs_start + 5.0
    end = scenario.duration - scenario.heal - 10.0
    candidates = list(range(scenario.seeds, scenario.nodes))
    faults: list[Fault] = []
    if end <= start or not candidates:
        return faults
    busy_until: dict[int, float] = {}
    for _ in range(scenario.churn):
        at = rng.uniform(start, end)
        free = [i for i in candidates if busy_until.get(i, -1.0) < at]
        if not free:
            continue
        index = rng.choice(free)
        back_after = rng.uniform(2.0, 10.0)
        busy_until[index] = at + back_after + 5.0
        if rng.random() < 0.5:
            faults.append(Crash(frozenset({index}), at, restart_after=back_after))
        else:
            faults.append(Leave(frozenset({index}), at, rejoin_after=back_after))
    return faults


@attrs.define
class _Execution:
    run_id: str
    attempt: int
    node: int
    boots: int
    start: float
    wall_start: float  # on its node's wall clock
    end: float | None = None
    ok: bool = False
    success_lost: bool = False  # no other node knew of the success when its node's life ended
    claim_lost: bool = False  # its node died running it, and no other node knew of its claim
    updates: set[int | None] = attrs.Factory(set)  # a long run's updates delivered to it (their numbers)
    work_done: bool = False  # a long run's work is done: it waits for its updates


class JobsRun(MembershipRun):
    scenario: JobsScenario

    def __init__(self, scenario: JobsScenario) -> None:
        self.scheduler_config = SchedulerConfig(**scenario.scheduler)
        self.replication_config = ReplicationConfig(**scenario.replication)
        super().__init__(scenario, make_core=self._make_core)
        self._work = self.sim.streams.get("work")
        self._executions: dict[str, list[_Execution]] = defaultdict(list)
        self._open: dict[tuple[int, str, int], _Execution] = {}  # (node, run, attempt)
        self._oneoffs: dict[str, float] = {}  # run id -> submit time
        # Records no other node held a second after the life of the only
        # node holding them ended: a write that never left its node.
        self._stranded: set[str] = set()
        self._failing: set[str] = set()  # one-off ids whose first attempt fails
        self._lives: dict[int, list[list[float]]] = defaultdict(list)  # node -> [start, end] of each life
        self._defined_at: float | None = None
        self._finish_on_resume: list[_Execution] = []  # finished while their node was paused
        self._roles: dict[int, Role] = {}  # node -> its scheduler's role, as last seen
        self.ready_times: dict[int, list[float]] = defaultdict(list)  # node -> when its scheduler turned ready
        self._all_ready = False
        self._submitted = 0  # one-offs submitted so far (they are numbered)
        self._ready_submits = self.sim.streams.get("ready-oneoffs")
        # Long one-offs: run id -> updates planned, and those given up on
        # (no node knew the run for the client's whole patience).
        self._long: dict[str, int] = {}
        self._long_unsent: dict[str, int] = defaultdict(int)
        self._updates_sent = 0
        # Updates accepted: (run, n) -> (update key, node and boot it went through).
        self._update_keys: dict[tuple[str, int], tuple[str, int, int]] = {}
        self._updates_stranded = 0  # accepted by a node that died before passing them on
        self._updates_refused: list[str] = []  # sends a node refused: the run had finished
        self._long_work = self.sim.streams.get("long-work")
        self._update_sends = self.sim.streams.get("updates")

    def _make_core(self, node: SimNode, rng: random.Random, now: float, incarnation: int) -> DrivenCore:
        core = node_core(node, rng, now, incarnation, self.replication_config, scheduler=self.scheduler_config)
        if self.scenario.jobs_file:
            # As peer.runtime.agent's Agent.bind does with the --jobs file.
            scheduler_of(core).define_when_ready(self._job_specs())
        return core

    def ready(self, index: int) -> bool:
        """Up, and its scheduler ready: what a readiness probe waits for."""
        node = self.nodes[index]
        return node.life is Life.UP and node.core is not None and scheduler_of(node.core).role is Role.READY

    def on_view_change(self, node: SimNode) -> None:
        self._note_role(node)  # the role travels in the node's metadata: a change bumps its view
        super().on_view_change(node)

    # -- the workload -------------------------------------------------------------

    def _start(self) -> None:
        super()._start()
        scenario = self.scenario
        if not scenario.jobs_file:
            self.sim.at(scenario.jobs_start, self._define_jobs)
        stream = self.sim.streams.get("oneoffs")
        window_end = scenario.duration - scenario.heal
        for number in range(scenario.oneoffs):
            when = stream.uniform(scenario.jobs_start + 1.0, max(scenario.jobs_start + 1.0, window_end))
            failing = stream.random() < scenario.fail_share
            self.sim.at(when, self._submit, stream.randrange(scenario.nodes), number, failing)
        self._submitted = scenario.oneoffs
        # Their own stream, so that scenarios without them draw as before.
        longs = self.sim.streams.get("long-oneoffs")
        low, high = scenario.long_updates
        for number in range(scenario.long_oneoffs):
            when = longs.uniform(scenario.jobs_start + 1.0, max(scenario.jobs_start + 1.0, window_end))
            self.sim.at(when, self._submit_long, longs.randrange(scenario.nodes), number, longs.randint(low, high))

    def _job_specs(self) -> list[JobSpec]:
        specs = [self._cron_spec(f"cron-{i:03d}", "one") for i in range(self.scenario.cron_jobs)]
        return specs + [self._cron_spec(f"all-{i:03d}", "all") for i in range(self.scenario.all_jobs)]

    def _define_jobs(self) -> None:
        node = self._up_node(0)
        if node is None:
            return
        self._defined_at = self.sim.now
        specs = self._job_specs()

        def define(core: DrivenCore, now: float) -> None:
            scheduler = scheduler_of(core)
            for spec in specs:
                scheduler.add_job(node_core_of(core).wall_ms(), spec)

        node.apply(define)

    def _cron_spec(self, job_id: str, mode: str) -> JobSpec:
        return JobSpec(
            id=job_id,
            target=CallTarget("sim:work"),
            schedule=parse_schedule(f"@every {self.scenario.every:g}s"),
            mode=mode,
            misfire="all",  # a tick found late still runs: missed ticks are failures here
            grace=60.0,
            overlap="allow",
            result_ttl=self.scenario.result_ttl,
        )

    def _submit(self, index: int, number: int, failing: bool, exactly: bool = False) -> None:
        """Submit a one-off through the node (or, unless ``exactly``, the
        next one up)."""
        node = self._up_node(index)
        if node is None or (exactly and node.index != index):
            return
        run_id = self._submit_oneoff(node, f"oneoff-{number:04d}", "sim:work")
        if failing:
            self._failing.add(run_id)

    def _submit_oneoff(self, node: SimNode, job_id: str, call: str) -> str:
        spec = JobSpec(
            id=job_id, target=CallTarget(call), schedule=None, retries=2, backoff=0.5, result_ttl=self.scenario.result_ttl
        )
        run_id = node.apply(lambda core, now: scheduler_of(core).submit(node_core_of(core).wall_ms(), spec))
        self._oneoffs[run_id] = self.sim.now
        return run_id

    def _submit_long(self, index: int, number: int, updates: int) -> None:
        """Submit a long one-off through the node (or the next one up), and
        plan the updates a client sends it while it runs."""
        node = self._up_node(index)
        if node is None:
            return
        run_id = self._submit_oneoff(node, f"long-{number:04d}", "sim:long")
        self._long[run_id] = updates
        for n in range(updates):
            self.sim.at(self.sim.now + self._update_sends.uniform(0.2, self.scenario.long_seconds[1]), self._send_update, run_id, n, 0)

    def _send_update(self, run_id: str, n: int, tries: int) -> None:
        """Send update ``n`` through a random node, as a client would; a node
        that does not know the run yet is asked again (another, half a second
        later), for up to UPDATE_PATIENCE seconds."""
        node = self._up_node(self._update_sends.randrange(len(self.nodes)))
        if node is not None:
            try:
                key = node.apply(lambda core, now: scheduler_of(core).send(run_id, {"n": n}))
            except KeyError:
                pass  # not heard of it yet
            except ValueError:
                self._updates_refused.append(f"{run_id} update {n} refused by {node.name}: finished")
                self._give_up_update(run_id)
                return
            else:
                self._updates_sent += 1
                self._update_keys[(run_id, n)] = (key, node.index, node.boots)
                return
        if (tries + 1) * UPDATE_RETRY < UPDATE_PATIENCE:
            self.sim.at(self.sim.now + UPDATE_RETRY, self._send_update, run_id, n, tries + 1)
        else:
            self._give_up_update(run_id)

    def _give_up_update(self, run_id: str) -> None:
        """The run will not get this update: its executions stop waiting for it."""
        self._long_unsent[run_id] += 1
        for execution in [e for key, e in self._open.items() if key[1] == run_id and e.work_done]:
            self.sim.at(self.sim.now, self._finish, execution)

    def _check_updates_stranded(self, node: SimNode, sent: list[tuple[str, int, str]]) -> None:
        """Updates a node acknowledged and no other node holds, nor any
        execution got, a second after its life ended: lost with it (as a
        one-off that never left its submitter). Its run does not wait for it."""
        maps = [
            (node_core_of(n.core).replicator.map("updates"), int(n.clock.wall(self.sim.now) * 1000))
            for n in self.nodes if n is not node and n.running and n.core is not None
        ]
        for run_id, n, key in sent:
            got = any(n in e.updates for e in self._executions.get(run_id, ()))
            if got or any(replica.get(key, wall) is not None for replica, wall in maps):
                continue
            self._updates_stranded += 1
            self._give_up_update(run_id)

    def _updates_due(self, run_id: str) -> int:
        return self._long.get(run_id, 0) - self._long_unsent.get(run_id, 0)

    def _note_role(self, node: SimNode) -> None:
        """Follow the node's scheduler role: when it turns ready, submit the
        one-offs that wait for that (a moment later, out of the core's call)."""
        role = scheduler_of(node.core).role if node.running and node.core is not None else None
        changed = role is not self._roles.get(node.index)
        if role is None:
            self._roles.pop(node.index, None)
        else:
            self._roles[node.index] = role
        if changed and role is Role.READY:
            self.ready_times[node.index].append(self.sim.now)
            if self._defined_at is None and self.scenario.jobs_file:
                self._defined_at = self.sim.now  # the first node ready defines the jobs
            for _ in range(self.scenario.ready_oneoffs):
                self.sim.at(self.sim.now, self._submit, node.index, self._next_oneoff(), False, True)
        everyone = all(
            n.life in (Life.STOPPED, Life.CRASHED, Life.LEFT, Life.LEAVING) or self._roles.get(n.index) is Role.READY
            for n in self.nodes
        )
        if everyone and not self._all_ready and self._roles:
            ready = sorted(self._roles)
            for _ in range(self.scenario.all_ready_oneoffs):
                index = self._ready_submits.choice(ready)
                self.sim.at(self.sim.now, self._submit, index, self._next_oneoff(), False, True)
        self._all_ready = everyone

    def _next_oneoff(self) -> int:
        self._submitted += 1
        return self._submitted - 1

    def _up_node(self, index: int) -> SimNode | None:
        """The node, or the next one that is up."""
        count = len(self.nodes)
        for step in range(count):
            node = self.nodes[(index + step) % count]
            if node.life is Life.UP and node.core is not None:
                return node
        return None

    # -- the simulated executor ---------------------------------------------------------

    def on_event(self, node: SimNode, event: Any) -> None:
        if isinstance(event, StartRun):
            wall = node.clock.wall(self.sim.now)
            execution = _Execution(event.run_id, event.attempt, node.index, node.boots, self.sim.now, wall)
            self._executions[event.run_id].append(execution)
            self._open[(node.index, event.run_id, event.attempt)] = execution
            if event.run_id in self._long:
                low, high = self.scenario.long_seconds
                work = self._long_work.uniform(low, high)
            else:
                low, high = self.scenario.work_seconds
                work = self._work.uniform(low, high)
            self.sim.at(self.sim.now + work, self._finish, execution)
            self.run_started(node.index)
        elif isinstance(event, DeliverUpdate):
            receiver = self._open.get((node.index, event.run_id, event.attempt))
            if receiver is not None and isinstance(event.data, dict):
                receiver.updates.add(event.data.get("n"))
                if receiver.work_done and len(receiver.updates) >= self._updates_due(event.run_id):
                    self.sim.at(self.sim.now, self._finish, receiver)  # not within the core's call
        elif isinstance(event, CancelRun):
            key = (node.index, event.run_id, event.attempt)
            if key in self._open:
                self._open.pop(key).end = self.sim.now
        elif isinstance(event, Event):
            super().on_event(node, event)

    def _finish(self, execution: _Execution) -> None:
        node = self.nodes[execution.node]
        key = (execution.node, execution.run_id, execution.attempt)
        if self._open.get(key) is not execution:
            return  # cancelled, or its node crashed
        if node.life is Life.PAUSED:
            self._finish_on_resume.append(execution)  # the work is done; telling waits for the process
            return
        if len(execution.updates) < self._updates_due(execution.run_id):
            execution.work_done = True  # done but for the updates: finishes as the last one arrives
            return
        del self._open[key]
        assert node.running and node.boots == execution.boots
        ok = not (execution.run_id in self._failing and execution.attempt == 1)
        execution.end, execution.ok = self.sim.now, ok
        error = None if ok else "RuntimeError: simulated failure"

        def report(core: DrivenCore, now: float) -> None:
            scheduler_of(core).run_finished(
                node_core_of(core).wall_ms(), execution.run_id, execution.attempt, ok, {"run": execution.run_id}, error
            )

        node.apply(report)

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        self._check_stranded(node)
        super().crash(index)
        for key in [key for key in self._open if key[0] == index]:
            self._open.pop(key).end = self.sim.now

    def on_life(self, node: SimNode) -> None:
        self._note_role(node)
        super().on_life(node)
        if node.life is Life.LEFT:
            self._check_stranded(node)
        if node.life is Life.UP and self._finish_on_resume:
            waiting, self._finish_on_resume = self._finish_on_resume, []
            for execution in waiting:
                self._finish(execution)
        lives = self._lives[node.index]
        if node.life is Life.UP and (not lives or lives[-1][1] < float("inf")):
            lives.append([self.sim.now, float("inf")])
        elif node.life in (Life.CRASHED, Life.LEAVING, Life.PAUSED) and lives and lives[-1][1] == float("inf"):
            lives[-1][1] = self.sim.now

    def _check_stranded(self, node: SimNode) -> None:
        """A node's life ends: note the one-offs and results only it held
        (a second later, when what it sent last has landed), and the
        executions whose every trace died with it: its own, and others' that
        only it remembered (a partition kept them on its side, say). Doing
        those again is at-least-once at work, neither a duplicate nor a
        second claim of one attempt."""
        if node.core is None:
            return
        scheduler = scheduler_of(node.core)
        succeeded = {run_id for run_id, executions in self._executions.items() if any(e.ok for e in executions)}
        held = {run_id for run_id in self._oneoffs.keys() | succeeded if scheduler.record(run_id) is not None}
        traced = [
            e for run_id, executions in self._executions.items()
            for e in executions
            if (e.node, e.boots) == (node.index, node.boots) or scheduler.record(run_id) is not None
        ]

        # Updates acknowledged by this node: did they get out before it died?
        sent_here = [
            (run_id, n, key)
            for (run_id, n), (key, index, boots) in self._update_keys.items()
            if (index, boots) == (node.index, node.boots)
        ]

        def check() -> None:
            others = [scheduler_of(n.core) for n in self.nodes if n is not node and n.running and n.core is not None]
            self._stranded |= {run_id for run_id in held if all(s.record(run_id) is None for s in others)}
            self._check_updates_stranded(node, sent_here)
            for execution in traced:
                records = [s.record(execution.run_id) for s in others]
                if execution.ok and not any(r is not None and r.state is RunState.SUCCEEDED for r in records):
                    execution.success_lost = True  # re-running it is at-least-once, not a duplicate
                if not any(r is not None and _knows_claim(r, execution.attempt) for r in records):
                    execution.claim_lost = True  # its attempt died unseen: claiming it again is no second claim

        self.sim.at(self.sim.now + 1.0, check)

    # -- measuring ------------------------------------------------------------------------

    def measure_jobs(self) -> dict[str, Any]:
        base = self.measure().to_json()
        scenario = self.scenario
        expected = self._expected_runs()
        ran = {run_id for run_id in expected if any(e.ok for e in self._executions.get(run_id, ()))}
        duplicates = len(self.duplicate_executions())
        succeeded = {run_id for run_id, executions in self._executions.items() if any(e.ok for e in executions)}
        # A result is owed from RESULT_SETTLE after its run finished until it
        # expires (by the clocks of the nodes, which may be off).
        kept_since = self.sim.now - scenario.result_ttl + self._clock_margin()
        settled = {
            run_id
            for run_id, executions in self._executions.items()
            if any(e.ok and e.end is not None and kept_since < e.end <= self.sim.now - RESULT_SETTLE for e in executions)
        }
        expired = {
            run_id
            for run_id, executions in self._executions.items()
            if any(e.ok and e.end is not None and e.end <= kept_since for e in executions)
        }
        submitted = {run_id for run_id, when in self._oneoffs.items() if when <= scenario.duration - scenario.heal}
        owed_oneoffs = submitted - expired
        cores = [(node, node_core_of(node.core)) for node in self.nodes if node.life is Life.UP and node.core is not None]
        lost, partial, with_node = set(), set(), set()
        for run_id in sorted(settled | owed_oneoffs):
            holders = 0
            for _, core in cores:
                record = scheduler_of(core).record(run_id)
                holders += record is not None and record.state is RunState.SUCCEEDED
            if holders == 0 and run_id in self._stranded:
                with_node.add(run_id)
            elif holders == 0:
                lost.add(run_id)
            elif holders < len(cores):
                partial.add(run_id)
        totals: dict[str, int] = defaultdict(int)
        for _, core in cores:
            for field, value in attrs.asdict(scheduler_of(core).stats).items():
                totals[field] += value
        base.update(
            {
                "scenario": "jobs",
                "cron_jobs": scenario.cron_jobs,
                "all_jobs": scenario.all_jobs,
                "every": scenario.every,
                "churn": scenario.churn,
                "jobs_file": scenario.jobs_file,
                "boot_delay": list(scenario.boot_delay),
                "ticks_expected": len(expected),
                "ticks_run": len(ran),
                "missed": len(expected) - len(ran),
                "missed_runs": sorted(set(expected) - ran)[:20],
                "duplicates": duplicates,
                "same_attempt_starts": len(self.same_attempt_starts()),
                "twice": self.twice(),
                "reruns_after_lost_success": self.reruns_after_lost_success(),
                "executions": sum(len(e) for e in self._executions.values()),
                "oneoffs_submitted": len(self._oneoffs),
                "oneoffs_done": len(submitted & succeeded),
                "lost_results": len(lost),
                "lost_runs": sorted(lost)[:20],
                "results_not_everywhere": len(partial),
                "oneoffs_lost_with_submitter": len(with_node & self._oneoffs.keys()),
                "results_lost_with_their_node": len(with_node - self._oneoffs.keys()),
                "long_oneoffs": len(self._long),
                "updates_sent": self._updates_sent,
                "updates_unsent": sum(self._long_unsent.values()) - self._updates_stranded,
                "updates_lost_with_their_node": self._updates_stranded,
                "updates_refused": self._updates_refused[:5],
                "kills": [[round(t, 3), self.nodes[i].name] for t, i, _ in self.kills],
                "scheduler": dict(totals),
            }
        )
        return base

    def _clock_margin(self) -> float:
        """How far apart two nodes' wall clocks may be, and a second more."""
        steps = sum(abs(f.seconds) for f in self.scenario.faults if isinstance(f, ClockStep))
        return 2 * self.scenario.wall_skew + steps + 1.0

    def _expected_runs(self) -> set[str]:
        scenario = self.scenario
        if self._defined_at is None:
            return set()
        settle = self.scheduler_config.settle
        first = self._definition_start() + 1.0
        last = scenario.duration - scenario.heal
        expected: set[str] = set()
        for i in range(scenario.cron_jobs):
            for tick in self._ticks(first, last):
                expected.add(tick_run_id(f"cron-{i:03d}", tick))
        for node in self.nodes:
            # A node owes the ticks of a job in mode all by its own clock,
            # which may be off, and may have been stepped.
            for start, end in self._lives.get(node.index, ()):
                # Its scheduler owes none before its boot's reading plus the
                # settle, whatever its clock read since (one stepped back
                # while it settled reads less later: wide seed 988).
                ready = max(
                    self._latest_reading(node, start, start + settle + ALL_MODE_MARGIN_BEFORE),
                    self._local(node, start) + settle,
                )
                until = self._local(node, min(end - ALL_MODE_MARGIN_AFTER, last))
                for i in range(scenario.all_jobs):
                    for tick in self._ticks(max(first, ready), until):
                        expected.add(tick_run_id(f"all-{i:03d}", tick, node.name))
        return expected

    def _definition_start(self) -> float:
        """From when (simulated time) the jobs' ticks are owed. Defined by
        every node as it turns ready, a job may be defined several times at
        once as a cluster starts; the definition that won (the latest
        ``since`` held by a running node, read on its definer's clock) says
        from when its ticks are due."""
        assert self._defined_at is not None
        if not self.scenario.jobs_file:
            return self._defined_at
        since = [
            entry.since
            for node in self.nodes
            if node.life is Life.UP and node.core is not None
            for entry in scheduler_of(node.core).jobs().values()
        ]
        latest = max(since, default=0) / 1000 - WALL_EPOCH + self.scenario.wall_skew
        return max(self._defined_at, latest)

    def _latest_reading(self, node: SimNode, start: float, end: float) -> float:
        """The latest time the node's clock showed between two moments: a
        node ready before its clock stepped back owes no tick it already
        saw the time of."""
        steps = [f.at for f in self.scenario.faults if isinstance(f, ClockStep) and node.index in f.nodes and start < f.at <= end]
        return max([self._local(node, end)] + [self._local(node, at - 1e-6) for at in steps])

    def _local(self, node: SimNode, t: float) -> float:
        """What the node's wall clock read at simulated time ``t``, as a
        simulated time (the reference clock's reading, less its epoch)."""
        later_steps = sum(
            f.seconds for f in self.scenario.faults
            if isinstance(f, ClockStep) and node.index in f.nodes and t < f.at <= self.sim.now
        )
        return node.clock.wall(t) - later_steps - WALL_EPOCH

    def tick_times(self) -> dict[str, int]:
        """Run id -> tick (epoch ms) of every tick of the cron jobs due so
        far, on every node for those in mode all."""
        if self._defined_at is None:
            return {}
        ticks = self._ticks(self._defined_at, self.sim.now)
        times: dict[str, int] = {}
        for i in range(self.scenario.cron_jobs):
            times.update((tick_run_id(f"cron-{i:03d}", tick), tick) for tick in ticks)
        for i in range(self.scenario.all_jobs):
            for node in self.nodes:
                times.update((tick_run_id(f"all-{i:03d}", tick, node.name), tick) for tick in ticks)
        return times

    def _ticks(self, start: float, end: float) -> list[int]:
        """Ticks of the jobs' schedule between two simulated times."""
        if end <= start:
            return []
        schedule = parse_schedule(f"@every {self.scenario.every:g}s")
        return schedule.ticks_between(_wall_ms(start), _wall_ms(end), limit=1_000_000)

    def executions(self, run_id: str) -> list[_Execution]:
        """Every execution of the run, in the order they started."""
        return sorted(self._executions.get(run_id, ()), key=lambda e: e.start)

    @property
    def oneoffs_submitted(self) -> int:
        """One-offs acknowledged so far (a run id returned), long ones too."""
        return len(self._oneoffs)

    def back_up_after(self, index: int, t: float) -> float | None:
        """When the node's next life started after ``t`` (None: it did not).
        At ``t`` itself too: a supervisor that kills a process still draining
        starts the new one in the same instant when booting takes no time."""
        return min((start for start, _ in self._lives.get(index, ()) if start >= t), default=None)

    def executing(self, index: int) -> int:
        return sum(1 for key in self._open if key[0] == index)

    @property
    def long_runs(self) -> dict[str, int]:
        """Long one-offs: run id -> the updates planned for it."""
        return dict(self._long)

    def unfinished_oneoffs(self, due: float) -> tuple[list[str], int]:
        """One-offs acknowledged ``due`` seconds ago or more that no running
        node holds succeeded at the end (unless their success was old enough
        to have expired), each with what the nodes hold and who ran it; and
        how many of them never left a node that died (excused)."""
        now = self.sim.now
        kept_since = now - self.scenario.result_ttl + self._clock_margin()
        schedulers = [scheduler_of(n.core) for n in self.nodes if n.life is Life.UP and n.core is not None]
        unfinished, excused = [], 0
        for run_id, submitted in sorted(self._oneoffs.items(), key=lambda item: item[1]):
            if submitted > now - due:
                continue
            records = [s.record(run_id) for s in schedulers]
            if any(r is not None and r.state is RunState.SUCCEEDED for r in records):
                continue
            executions = self._executions.get(run_id, [])
            if any(e.ok and e.end is not None and e.end <= kept_since for e in executions):
                continue  # succeeded long enough ago to have expired
            if all(r is None for r in records) and run_id in self._stranded:
                excused += 1
                continue
            states = Counter(r.state.value if r is not None else "none" for r in records)
            ran = [
                f"{self.nodes[e.node].name}#{e.boots} attempt {e.attempt} {e.start:.2f}-"
                + ("" if e.end is None else f"{e.end:.2f}")
                + (" ok" if e.ok else "")
                for e in executions
            ]
            updates = ""
            if run_id in self._long:
                updates = f", {len(executions[-1].updates) if executions else 0} of {self._updates_due(run_id)} updates"
            unfinished.append(f"{run_id} (submitted {submitted:.2f}): {dict(states)}; ran {ran or 'never'}{updates}")
        return unfinished, excused

    def results_missing(self, settle: float) -> tuple[list[str], int]:
        """Results (successes that did not die with their node) finished at
        least ``settle`` seconds ago and not at their expiry's edge, missing
        from a node up and ready since ``settle`` ago while all views were
        right; and how many (result, node) pairs were checked. Nothing is
        owed while the views have not been right for ``settle``: nodes that
        hold each other dead do not sync."""
        now = self.sim.now
        since = self.converged_since
        if since is None or since > now - settle:
            return [], 0
        kept_since = now - self.scenario.result_ttl + self._clock_margin()
        owing = []
        for node in self.nodes:
            lives = self._lives.get(node.index)
            if node.life is not Life.UP or node.core is None or not lives or lives[-1][1] != float("inf"):
                continue
            readied = [t for t in self.ready_times.get(node.index, ()) if t >= lives[-1][0]]
            if readied and readied[0] <= now - settle:
                owing.append(node)
        missing, checked = [], 0
        for run_id, executions in sorted(self._executions.items()):
            done = [e for e in executions if e.ok and not e.success_lost and e.end is not None]
            ends = [e.end for e in done if e.end is not None]
            if not ends or not any(kept_since < end <= now - settle for end in ends):
                continue
            for node in owing:
                checked += 1
                record = scheduler_of(node.core).record(run_id)
                if record is None or record.state is not RunState.SUCCEEDED:
                    state = "nothing" if record is None else f"{record.state.value} (attempt {record.attempt})"
                    first = min(done, key=lambda e: e.end or 0.0)
                    missing.append(f"{run_id} (succeeded on {self.nodes[first.node].name} at {first.end:.2f}): {node.name} holds {state}")
        return missing, checked

    def duplicate_executions(self) -> list[_Execution]:
        """The duplicates among the executions, by ``peer.jobs.executions``
        (the rule the real-process chaos harness counts by too): those that
        started while another execution of the same run was going on, or
        after one had succeeded (unless that success died with its node
        before any other node knew of it)."""
        executions = [e for of_run in self._executions.values() for e in of_run]
        found = find_duplicates([Execution(e.run_id, e.start, e.end, e.ok, e.success_lost) for e in executions])
        return [executions[index] for index, _ in found]

    def same_attempt_starts(self) -> list[_Execution]:
        """Executions that started an attempt of their run that an earlier
        execution had started already: two claims of one attempt (a re-run
        after a failure or a hand-back takes attempt + 1)."""
        again = []
        for executions in self._executions.values():
            seen: set[int] = set()
            for execution in sorted(executions, key=lambda e: e.start):
                if execution.attempt in seen:
                    again.append(execution)
                seen.add(execution.attempt)
        return again

    def twice(self, limit: int = 20) -> list[dict[str, Any]]:
        """The runs executed twice as a duplicate or with the same attempt,
        and who ran them when, oldest first."""
        runs = {e.run_id for e in self.duplicate_executions()} | {e.run_id for e in self.same_attempt_starts()}
        found = []
        for run_id in sorted(runs, key=lambda r: min(e.start for e in self._executions[r])):
            executions = sorted(self._executions[run_id], key=lambda e: e.start)
            found.append(
                {
                    "run": run_id,
                    "executions": [
                        {
                            "node": self.nodes[e.node].name,
                            "boot": e.boots,
                            "attempt": e.attempt,
                            "start": round(e.start, 3),
                            "end": None if e.end is None else round(e.end, 3),
                            "ok": e.ok,
                        }
                        for e in executions
                    ],
                }
            )
        return found[:limit]

    def reruns_after_lost_success(self) -> int:
        """Runs re-run after a success nobody else had heard of when its
        node died: at-least-once doing its job."""
        return sum(
            1 for executions in self._executions.values() if len(executions) > 1 and any(e.success_lost for e in executions)
        )

    def first_executions(self) -> dict[str, _Execution]:
        """Run id -> its first execution."""
        return {run_id: min(executions, key=lambda e: e.start) for run_id, executions in self._executions.items() if executions}

    def open_executions(self) -> set[str]:
        """Runs being executed right now, somewhere."""
        return {run_id for _, run_id, _ in self._open}


def _knows_claim(record: RunRecord, attempt: int) -> bool:
    """Does this record tell that the attempt was claimed: a claim or an
    outcome of it, or a later attempt? (A pending record of the same
    attempt does not: it is what the claim answered.)"""
    return record.attempt > attempt or (record.attempt == attempt and record.state.phase >= RunState.RUNNING.phase)


def _wall_ms(sim_time: float) -> int:
    """A simulated time on the reference wall clock (no skew, no drift)."""
    return round((WALL_EPOCH + sim_time) * 1000)


def scheduler_of(core: DrivenCore | None) -> Scheduler:
    """The scheduler of a node of a jobs scenario."""
    scheduler = node_core_of(core).scheduler
    assert scheduler is not None
    return scheduler


def run_jobs(scenario: JobsScenario) -> dict[str, Any]:
    if scenario.churn:
        scenario = attrs.evolve(scenario, faults=(*scenario.faults, *churn_faults(scenario)))
    run = JobsRun(scenario)
    run.run_until(scenario.duration)
    return run.measure_jobs()
