"""Chaos on real processes: ``python -m peer.tools.chaos``.

    python -m peer.tools.chaos [--nodes N] [--minutes M] [--seed S] [--heal S] [--json] [--keep DIR]

Theory of operation. ``run_chaos`` starts N ``peer agent`` processes on
127.0.0.1 through ``LocalCluster`` (every PID tracked, everything killed on
the way out, whatever happened), each with every other as a seed, so a
restarted node can rejoin whichever nodes are down. They all get one jobs
file: ``CRON_JOBS`` jobs in mode ``one`` and one in mode ``all``, each
``@every 2s`` and calling ``peer.testing.samples:journal``, which appends one line
per execution (run id, attempt, node, start time) to a journal file. The
journal, never what the agents say, is the ground truth of what ran.

Three phases, each bounded in time:

1. Chaos (``minutes``). A seeded driver (``random.Random(seed)``) picks an
   action every 2-5 s on a random undisturbed node: ``kill -9`` and a
   restart 2-10 s later; SIGSTOP for 1-8 s, then SIGCONT; SIGTERM (a
   graceful leave) and a restart 2-10 s after it exited. The first three
   actions are one of each kind, in a seeded order, and the first kill stays
   down long enough for its detection to be checked. A node is disturbed
   from the action until it is back and its scheduler ready again, and at
   most N//2 nodes are disturbed at once. Every second a one-off run (also
   journalling) is submitted through a random undisturbed node. While a
   killed node is down, the undisturbed nodes' views are polled to time its
   detection (and while a stopped node is down, to see it ``left``).
2. Heal (``heal`` seconds). Everything disturbed is brought back at once;
   no more actions. The membership must converge and the schedulers settle
   (all ready, agreeing on every job's owner) within bounds.
3. Checks, through the control APIs and the journal; each failure is one
   string in ``violations`` naming the invariant and its evidence:
   membership converged; every kill kept down long enough for the profile's
   timings (``detection_bound``) was detected, and no graceful stop was
   seen as a failure; every agent holds the same jobs and the same
   finished runs; every tick of the mode-one jobs ran (and, once settled,
   every tick of the mode-all job on every node); every acknowledged
   one-off succeeded and is readable from every agent, but one whose
   submitting node was killed within 2 s before anything ran it (lost with
   it, as the design allows; counted apart); no duplicate once settled; no
   agent exited unless told to, and each exit on SIGTERM was 0 (the end is
   a graceful stop of every agent at once). Memory (RSS) and run-record
   counts are recorded, not judged.

Duplicates follow ``peer.jobs.executions``, as the simulator's do: an
execution that started while another execution of the same run was going
on, or after one had succeeded. The journal records starts only and a
journal run returns at once, so an earlier execution counts as going on or
succeeded unless its node was killed between its start and the later one's
(it may have died before finishing: a re-run then is the design's failover,
not a duplicate).

The same seed gives the same draws. Which node is free when depends on
timing, so a replay is close to the original run, not identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from membership.config import profile as membership_profile
from membership.suspicion import detection_bound as membership_detection_bound
from peer.control.client import ClientError, api_path
from peer.jobs.executions import Execution, find_duplicates
from peer.jobs.runs import tick_run_id
from peer.runtime.keys import generate_key
from peer.runtime.logs import quiet_http_libraries
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for

log = logging.getLogger("peer.chaos")

EVERY_MS = 2000  # every cron job's interval: "@every 2s"
CRON_JOBS = 4  # jobs in mode one, spread over the nodes by the ring
ALL_JOB = "chaos-all"
KINDS = ("kill", "pause", "stop")
ACTION_GAP = (2.0, 5.0)  # seconds between two actions
DOWN = (2.0, 10.0)  # seconds a killed or stopped node stays down
PAUSED = (1.0, 8.0)  # seconds a node stays SIGSTOPped
DIED_DOWN = 2.0  # seconds before an agent that exited on its own is restarted
SUBMIT_EVERY = 1.0  # seconds between one-off submits
SUBMIT_QUIET = 5.0  # no submits in the heal's last seconds: let them finish
POLL = 0.25  # seconds between looks at the cluster
API_TIMEOUT = 3.0
DRAIN_TIMEOUT = 5  # each agent's --drain-timeout; journal runs finish at once anyway
START_TIMEOUT = 60.0  # to start the cluster, and for the final graceful stop
STOP_BOUND = 30.0  # a SIGTERMed agent has exited within this
REJOIN_BOUND = 30.0  # a restarted or resumed agent is ready again within this
CONVERGE_BOUND = 20.0  # after the heal began, every view shows everyone alive within this
SETTLE_BOUND = 20.0  # ...then the schedulers are ready and agree on owners within this
MAPS_BOUND = 15.0  # the agents' lists of jobs and finished runs agree within this
DETECT_SLACK = 1.0  # added to the profile's detection time: the news spreads, machines are slow
SLACK_MS = 5000  # ticks due less than this before the end are not owed yet
FINISH_SETTLE_MS = 5000  # runs finished more recently than this may not have spread yet
HANDOVER_MS = 2000  # once settled, jobs have moved within the scheduler's handover (1.5 s)
SUBMIT_SETTLE_MS = 2000  # a one-off whose submitter was killed this soon may be lost with it
# The checks wait this long for one-offs to finish: a node restarted before
# it was declared dead re-runs what its previous life left running only 30 s
# after its start (the scheduler's catch_up_window).
ONEOFF_WAIT = 45.0
FINISHED = frozenset({"succeeded", "failed", "cancelled", "lost", "missed", "skipped"})
LOG_LINES = 12  # log lines quoted per run in a violation's evidence


# -- the journal: what really ran ------------------------------------------------------


@attrs.frozen
class JournalLine:
    """One execution, as ``peer.testing.samples.journal`` wrote it."""

    run: str
    attempt: int
    node: str
    start_ms: int

    @property
    def job(self) -> str:
        return self.run.split("@")[0]

    @property
    def tick(self) -> int:
        """The tick of a cron job's run (``job@ISO[@node]``), epoch ms."""
        return iso_ms(self.run.split("@")[1])

    @property
    def run_node(self) -> str | None:
        """The node named in the run id (a run of a job in mode ``all``)."""
        parts = self.run.split("@")
        return parts[2] if len(parts) > 2 else None


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def read_journal(path: Path) -> list[JournalLine]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        run, attempt, node, start = text.split(" ")
        lines.append(JournalLine(run, int(attempt), node, int(start)))
    return lines


def ticks_between(after_ms: int, until_ms: int, every_ms: int = EVERY_MS) -> list[int]:
    """The ticks of ``@every`` ``every_ms`` in (after_ms, until_ms]."""
    first = (after_ms // every_ms + 1) * every_ms
    return list(range(first, until_ms + 1, every_ms))


def journal_job(job_id: str, path: Path, *, mode: str = "one", sleep: float = 0.0) -> dict[str, Any]:
    """A cron job, every 2 s, that journals each execution."""
    return {
        "id": job_id,
        "schedule": "@every 2s",
        "mode": mode,
        "call": "peer.testing.samples:journal",
        "kwargs": {"path": str(path), "sleep": sleep},
    }


def toml_jobs(jobs: Iterable[dict[str, Any]]) -> str:
    """A jobs file (``[[job]]`` tables) of ``journal_job`` definitions."""
    tables = []
    for job in jobs:
        kwargs = ", ".join(f"{key} = {json.dumps(value)}" for key, value in job["kwargs"].items())
        tables.append(
            f'[[job]]\nid = "{job["id"]}"\nschedule = "{job["schedule"]}"\nmode = "{job["mode"]}"\n'
            f'call = "{job["call"]}"\nkwargs = {{ {kwargs} }}\n'
        )
    return "\n".join(tables)


def duplicates(lines: Iterable[JournalLine], deaths: Mapping[str, Sequence[int]]) -> list[tuple[JournalLine, JournalLine]]:
    """(duplicate, an earlier execution it duplicates), per the module's
    definition; ``deaths``: node -> epoch ms at which a process of it was
    killed (or found dead)."""
    lines = list(lines)
    found = find_duplicates([journal_execution(line, deaths.get(line.node, ())) for line in lines])
    return [(lines[index], lines[earlier]) for index, earlier in found]


def journal_execution(line: JournalLine, deaths: Iterable[int]) -> Execution:
    """A journal line as ``peer.jobs.executions`` judges executions. The
    journal has starts only: an execution whose node was killed after it
    started may have been cut short, so it counts as going on until that
    kill and as no success; otherwise it returned, successfully, at once."""
    killed = min((death for death in deaths if death >= line.start_ms), default=None)
    if killed is None:
        return Execution(line.run, line.start_ms, end=line.start_ms, succeeded=True)
    return Execution(line.run, line.start_ms, end=killed)


def detection_bound(profile: str, members: int, observers: int) -> float:
    """How long ``observers`` live nodes of a cluster of ``members`` may take
    to declare a killed one dead: ``membership.suspicion.detection_bound``
    by the profile's timings (the killed node counted as a member), plus
    ``DETECT_SLACK``."""
    return membership_detection_bound(membership_profile(profile), members, observers) + DETECT_SLACK


# -- what the driver did -----------------------------------------------------------------


@attrs.define
class Action:
    """One disturbance; times are seconds since the start of the run."""

    kind: str  # kill, pause, stop; "died" for an exit the driver did not cause
    node: str
    at: float
    planned: float  # seconds down (kill, stop) or paused, as drawn
    exited: float | None = None  # stop: when the process exited
    exit_code: int | None = None
    back: float | None = None  # restarted or resumed
    ready: float | None = None  # its scheduler ready again
    detected: float | None = None  # kill: seconds until every undisturbed node saw it dead
    observers: int | None = None  # kill: the fewest undisturbed nodes while it was down
    seen_failed_by: list[str] = attrs.Factory(list)  # stop: nodes that saw it dead, not left

    def to_json(self) -> dict[str, Any]:
        document = attrs.asdict(self)
        return {key: round(value, 2) if isinstance(value, float) else value for key, value in document.items()}


@attrs.define
class Disturbance:
    """A node disturbed and not yet back and ready.

    ``state``: ``stopping`` (SIGTERM sent), ``down`` (exited), ``paused``,
    ``rejoining`` (restarted or resumed, its scheduler not ready yet);
    ``due``: wall time of the next step, or the bound of the current wait."""

    action: Action
    agent: AgentProcess
    state: str
    due: float


@attrs.frozen
class OneOff:
    run: str
    node: str  # submitted through
    at_ms: int


# -- the driver --------------------------------------------------------------------------


class Chaos:
    """One run: the cluster, the seeded draws, and what was seen."""

    def __init__(self, cluster: LocalCluster, journal: Path, *, nodes: int, seed: int, profile: str) -> None:
        self.cluster = cluster
        self.journal = journal
        self.nodes = nodes
        self.seed = seed
        self.profile = profile
        self.rng = random.Random(seed)
        # Submits are drawn from their own stream: they interleave with the
        # actions by timing, which must not shift the actions' draws.
        self.submit_rng = random.Random(f"{seed}/submit")
        self.first_kinds = self.rng.sample(KINDS, len(KINDS))
        self.t0 = time.time()
        self.agents: dict[str, AgentProcess] = {}
        self.actions: list[Action] = []
        self.disturbed: dict[str, Disturbance] = {}
        self.deaths: dict[str, list[int]] = defaultdict(list)  # node -> epoch ms its process died
        self.oneoffs: list[OneOff] = []
        self.submit_errors: list[str] = []
        self.violations: list[str] = []
        self.next_submit = 0.0
        self.next_action = 0.0
        self.ready_ms = 0  # the cluster was formed and its schedulers ready
        self.since: dict[str, int] = {}  # job -> epoch ms it was defined
        self.survived_minutes = 0.0
        self.heal_start = 0.0
        self.convergence: float | None = None  # seconds after the heal began
        self.settled_ms: int | None = None  # after the heal: all ready, owners agreed
        self.memory_start: dict[str, dict[str, int | None]] = {}

    def t(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.t0

    def violation(self, text: str) -> None:
        log.warning("t+%.1fs VIOLATION %s", self.t(), text.splitlines()[0])
        self.violations.append(text)

    def undisturbed(self) -> list[AgentProcess]:
        return [agent for name, agent in sorted(self.agents.items()) if name not in self.disturbed and agent.running]

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every agent, each with all the others as seeds; wait until
        they see each other, are ready and agree on the jobs' owners."""
        for agent in self.cluster.add_mesh(self.nodes):
            self.agents[agent.name] = agent
        self.cluster.wait_api(self.agents.values(), START_TIMEOUT)
        everyone = {name: "alive" for name in self.agents}
        wait_for(lambda: self.cluster.converged(everyone), START_TIMEOUT, "the agents to see each other")
        wait_for(self.settled, START_TIMEOUT, "the schedulers to be ready and agree on owners")
        self.ready_ms = now_ms()
        self.since = {job["id"]: iso_ms(job["since"]) for job in self.agents["node-0"].call("/jobs")["jobs"]}
        log.info("t+%.1fs %d agents ready (profile %s, seed %d)", self.t(), self.nodes, self.profile, self.seed)

    def settled(self) -> bool:
        """Nothing disturbed; every scheduler ready, seeing every node
        eligible; every agent names the same owner for each job."""
        if self.disturbed:
            return False
        owners = []
        try:
            for agent in self.agents.values():
                scheduler = agent.call("/status", timeout=API_TIMEOUT)["scheduler"]
                if scheduler["role"] != "ready" or scheduler["eligible"] != self.nodes:
                    return False
                owners.append({job["id"]: job["owner"] for job in agent.call("/jobs", timeout=API_TIMEOUT)["jobs"]})
        except ClientError:
            return False
        return len(owners[0]) == CRON_JOBS + 1 and None not in owners[0].values() and all(o == owners[0] for o in owners)

    def converged(self) -> bool:
        """Every agent runs and sees exactly the others alive."""
        if any(d.state != "rejoining" for d in self.disturbed.values()) or not all(a.running for a in self.agents.values()):
            return False
        everyone = {name: "alive" for name in self.agents}
        views = self.cluster.views(self.agents.values())
        return len(views) == self.nodes and all(view == everyone for view in views.values())

    # -- the loop ----------------------------------------------------------------------------

    def run_phase(self, until: float, *, act: bool, submit_until: float, stop_when: Callable[[], bool] | None = None) -> bool:
        """Tend the cluster until ``until`` (or until ``stop_when()``, which
        is then returned): bring disturbed nodes back when due, notice exits,
        time detections, submit one-offs, and act when ``act``."""
        while (now := time.time()) < until:
            self.notice_exits(now)
            self.advance(now)
            self.watch_views(now)
            if submit_until > now >= self.next_submit:
                self.submit()
                self.next_submit = now + SUBMIT_EVERY
            if act and now >= self.next_action and len(self.disturbed) < self.nodes // 2:
                self.act()
                self.next_action = time.time() + self.rng.uniform(*ACTION_GAP)
            if stop_when is not None and stop_when():
                return True
            time.sleep(POLL)
        return False

    def act(self) -> None:
        kind = self.first_kinds.pop(0) if self.first_kinds else self.rng.choice(KINDS)
        candidates = self.undisturbed()
        if not candidates:
            return
        agent = self.rng.choice(candidates)
        planned = self.rng.uniform(*(PAUSED if kind == "pause" else DOWN))
        if kind == "kill" and not any(action.kind == "kill" for action in self.actions):
            # The first kill stays down long enough that its detection is
            # checked (check_detections); most random ones come back sooner.
            planned = max(planned, detection_bound(self.profile, self.nodes, len(candidates) - 1) + 1.0)
        now = time.time()
        action = Action(kind, agent.name, self.t(now), planned)
        self.actions.append(action)
        if kind == "kill":
            self.deaths[agent.name].append(now_ms())  # before the kill: no execution there after this
            agent.kill()
            action.exit_code = agent.process.returncode if agent.process else None
            self.disturbed[agent.name] = Disturbance(action, agent, "down", now + planned)
            log.info("t+%.1fs kill -9 %s; restart in %.1fs", action.at, agent.name, planned)
        elif kind == "pause":
            agent.signal(signal.SIGSTOP)
            self.disturbed[agent.name] = Disturbance(action, agent, "paused", now + planned)
            log.info("t+%.1fs SIGSTOP %s; SIGCONT in %.1fs", action.at, agent.name, planned)
        else:
            agent.stop(timeout=0.0)  # SIGTERM; advance() waits for the exit
            self.disturbed[agent.name] = Disturbance(action, agent, "stopping", now + STOP_BOUND)
            log.info("t+%.1fs SIGTERM %s; restart %.1fs after it exits", action.at, agent.name, planned)

    def advance(self, now: float) -> None:
        """Move each disturbed node along: exited, restarted, resumed, ready."""
        for name, disturbance in list(self.disturbed.items()):
            agent, action = disturbance.agent, disturbance.action
            if disturbance.state == "stopping":
                code = agent.process.poll() if agent.process else None
                if code is None and now < disturbance.due:
                    continue
                if code is None:
                    self.violation(
                        f"exits: {name} had not exited {STOP_BOUND:g}s after SIGTERM (t+{action.at:.1f}s); killed it\n"
                        + log_tail(agent)
                    )
                    self.deaths[name].append(now_ms())
                    agent.kill()
                    code = agent.process.returncode if agent.process else None
                elif code != 0:
                    self.violation(f"exits: {name} exited with {code} on SIGTERM (t+{action.at:.1f}s), not 0\n" + log_tail(agent))
                action.exited, action.exit_code = self.t(now), code
                disturbance.state, disturbance.due = "down", now + action.planned
                log.info("t+%.1fs %s exited with %s", action.exited, name, code)
            elif disturbance.state in ("down", "paused") and now >= disturbance.due:
                if disturbance.state == "down":
                    agent.start()
                    log.info("t+%.1fs restarted %s (pid %d)", self.t(now), name, agent.pid)
                else:
                    agent.signal(signal.SIGCONT)
                    log.info("t+%.1fs SIGCONT %s", self.t(now), name)
                action.back = self.t(now)
                disturbance.state, disturbance.due = "rejoining", now + REJOIN_BOUND
            elif disturbance.state == "rejoining":
                if scheduler_role(agent) == "ready":
                    action.ready = self.t()
                    del self.disturbed[name]
                    log.info("t+%.1fs %s is ready again", action.ready, name)
                elif now >= disturbance.due:
                    self.violation(
                        f"rejoin: {name}, back at t+{action.back:.1f}s after {action.kind}, "
                        f"was not ready within {REJOIN_BOUND:g}s\n" + log_tail(agent)
                    )
                    del self.disturbed[name]

    def notice_exits(self, now: float) -> None:
        """An agent that exited although nobody stopped it: a violation; it
        is restarted after ``DIED_DOWN`` so the run goes on."""
        for name, agent in sorted(self.agents.items()):
            disturbance = self.disturbed.get(name)
            if disturbance is not None and disturbance.state in ("stopping", "down"):
                continue
            if agent.process is None or agent.process.poll() is None:
                continue
            self.deaths[name].append(now_ms())
            action = Action("died", name, self.t(now), DIED_DOWN, exited=self.t(now), exit_code=agent.process.returncode)
            self.actions.append(action)
            self.violation(
                f"exits: {name} exited on its own with {agent.process.returncode} at about t+{action.at:.1f}s\n" + log_tail(agent)
            )
            self.disturbed[name] = Disturbance(action, agent, "down", now + DIED_DOWN)

    def watch_views(self, now: float) -> None:
        """While a killed node is down and undetected, or a stopped one is
        gone: ask the undisturbed nodes what they see of it."""
        watched = [
            d for d in self.disturbed.values()
            if d.state in ("down", "stopping")
            and ((d.action.kind == "kill" and d.action.detected is None) or d.action.kind == "stop")
        ]
        if not watched:
            return
        observers = self.undisturbed()
        views = self.cluster.views(observers)
        for disturbance in watched:
            action = disturbance.action
            if action.kind == "kill":
                action.observers = min(action.observers or len(observers), len(observers))
                if observers and len(views) == len(observers) and all(v.get(action.node) == "dead" for v in views.values()):
                    action.detected = round(now - self.t0 - action.at, 2)
                    log.info("t+%.1fs %s declared dead by every undisturbed node, %.1fs after the kill",
                             self.t(now), action.node, action.detected)
            else:
                for observer, view in views.items():
                    if view.get(action.node) == "dead" and observer not in action.seen_failed_by:
                        action.seen_failed_by.append(observer)

    def submit(self) -> None:
        """A one-off journalling run through a random undisturbed node."""
        candidates = self.undisturbed()
        if not candidates:
            return
        agent = self.submit_rng.choice(candidates)
        body = {"id": f"oneoff-{len(self.oneoffs) + len(self.submit_errors):04d}", "call": "peer.testing.samples:journal",
                "kwargs": {"path": str(self.journal)}}
        at_ms = now_ms()
        try:
            run = str(agent.call("/submit", method="POST", body=body, timeout=API_TIMEOUT)["run"])
        except ClientError as error:
            # Not acknowledged, so not owed; but worth a look if they pile up.
            self.submit_errors.append(f"t+{self.t():.1f}s {agent.name}: {error}")
            return
        self.oneoffs.append(OneOff(run, agent.name, at_ms))

    # -- the phases ----------------------------------------------------------------------------

    def chaos_phase(self, seconds: float) -> None:
        start = time.time()
        self.next_action = start + self.rng.uniform(*ACTION_GAP)
        self.run_phase(start + seconds, act=True, submit_until=start + seconds)
        self.survived_minutes = round((time.time() - start) / 60, 2)

    def heal_phase(self, seconds: float) -> None:
        """Bring every disturbed node back; the views must converge, then
        the schedulers settle, each within its bound; then no action until
        ``seconds`` after the heal began (one-offs go on a little longer)."""
        self.heal_start = self.bring_back()
        end = self.heal_start + seconds
        submit_until = end - SUBMIT_QUIET
        if self.run_phase(self.heal_start + CONVERGE_BOUND, act=False, submit_until=submit_until, stop_when=self.converged):
            self.convergence = round(time.time() - self.heal_start, 2)
            log.info("t+%.1fs membership converged, %.1fs after the heal began", self.t(), self.convergence)
        else:
            views = self.cluster.views(self.agents.values())
            self.violation(f"membership: not converged {CONVERGE_BOUND:g}s after the heal began; views: {views}")
        if self.run_phase(time.time() + SETTLE_BOUND, act=False, submit_until=submit_until, stop_when=self.settled):
            self.settled_ms = now_ms()
            log.info("t+%.1fs schedulers settled (all ready, owners agreed)", self.t())
        else:
            self.violation(f"membership: the schedulers were not all ready and agreeing on owners {SETTLE_BOUND:g}s later")
        self.memory_start = self.memory()
        self.run_phase(end, act=False, submit_until=submit_until)
        self.notice_exits(time.time())

    def bring_back(self) -> float:
        """Resume, restart (once exited) every disturbed node at once; the
        wall time when all run again."""
        for disturbance in list(self.disturbed.values()):
            if disturbance.state == "stopping":
                disturbance.agent.wait(max(0.0, disturbance.due - time.time()))
                self.advance(time.time())  # records the exit (or kills it past its bound)
            if disturbance.state in ("down", "paused"):
                disturbance.due = 0.0
        self.advance(time.time())
        log.info("t+%.1fs heal: every node runs again", self.t())
        return time.time()

    def stop_all(self) -> None:
        """The end: every agent leaves gracefully, all at once; each must exit 0."""
        for agent in self.cluster.running():
            agent.signal(signal.SIGTERM)
        for name, agent in sorted(self.agents.items()):
            code = agent.wait(START_TIMEOUT)
            if code != 0:
                self.violation(f"exits: {name} exited with {code} on the final SIGTERM, not 0\n" + log_tail(agent))
        log.info("t+%.1fs done: %d violations", self.t(), len(self.violations))

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        """The checks after the heal (each failure a violation); their figures."""
        log.info("t+%.1fs checking", self.t())
        self.check_maps()
        end_ms = now_ms()
        lines = read_journal(self.journal)
        lost, with_submitter = self.check_oneoffs({line.run for line in lines})
        expected, missed, missed_all = self.check_ticks(lines, end_ms)
        found = duplicates(lines, self.deaths)
        healed_from = (self.settled_ms or end_ms) + HANDOVER_MS
        healed = [(line, earlier) for line, earlier in found if line.start_ms >= healed_from]
        for line, earlier in healed:
            self.violation(f"duplicates: in the healed phase, {self.describe_duplicate(line, earlier)}\n" + self.evidence(line.run))
        self.check_detections()
        kills = [action for action in self.actions if action.kind == "kill"]
        detected = [action.detected for action in kills if action.detected is not None]
        return {
            "ticks_expected": expected,
            "missed": len(missed),
            "missed_runs": missed[:20],
            "missed_all_healed": len(missed_all),
            "executions": len(lines),
            "duplicates": len(found),
            "duplicates_healed": len(healed),
            "duplicate_runs": [self.describe_duplicate(line, earlier) for line, earlier in found][:20],
            "oneoffs_submitted": len(self.oneoffs),
            "oneoffs_lost": len(lost),
            "oneoffs_lost_with_submitter": len(with_submitter),
            "oneoffs_lost_with_submitter_runs": with_submitter[:20],
            "submit_errors": self.submit_errors[:20],
            "detections": {f"{action.node}@t+{action.at:.1f}s": action.detected for action in kills},
            "detection_seconds_max": max(detected) if detected else None,
        }

    def check_maps(self) -> None:
        """Every agent lists the same jobs and the same finished runs."""
        differences = self.map_differences()
        deadline = time.time() + MAPS_BOUND
        while differences and time.time() < deadline:
            time.sleep(1.0)
            differences = self.map_differences()
        if differences:
            shown = "\n  ".join(differences[:20])
            self.violation(f"maps: the agents still differ {MAPS_BOUND:g}s into the checks ({len(differences)} differences):\n  {shown}")

    def map_differences(self) -> list[str]:
        """How the agents' jobs and finished runs differ (empty: they agree).
        Runs finished in the last ``FINISH_SETTLE_MS``, or not finished, are
        left out: they may still be on their way."""
        cutoff = now_ms() - FINISH_SETTLE_MS
        jobs: dict[str, dict[str, tuple[Any, ...]]] = {}
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        for name, agent in sorted(self.agents.items()):
            try:
                listed = agent.call("/jobs", timeout=API_TIMEOUT)["jobs"]
                records = agent.call(api_path("runs", query={"limit": 1_000_000}), timeout=30.0)["runs"]
            except ClientError as error:
                return [f"{name} did not answer: {error}"]
            jobs[name] = {job["id"]: (job["schedule"], job["mode"], job["paused"], job["owner"]) for job in listed}
            runs[name] = {record["id"]: record for record in records}
        differences = []
        first = min(jobs)
        for name, listed_jobs in jobs.items():
            if listed_jobs != jobs[first]:
                differences.append(f"jobs on {name} {listed_jobs} != on {first} {jobs[first]}")
        settled = {
            run_id
            for records in runs.values()
            for run_id, record in records.items()
            if record["state"] in FINISHED and (record.get("finished") or cutoff + 1) <= cutoff
        }
        for run_id in sorted(settled):
            seen = {name: _run_state(records.get(run_id)) for name, records in runs.items()}
            if len(set(seen.values())) > 1:
                differences.append(f"{run_id}: " + ", ".join(f"{name} {state}" for name, state in seen.items()))
        return differences

    def check_oneoffs(self, ran: set[str]) -> tuple[list[str], list[str]]:
        """The acknowledged one-offs lost (a violation each), and those lost
        with their submitter (killed within ``SUBMIT_SETTLE_MS`` of the
        submit, before anyone ran them: the design allows it)."""
        lost: list[str] = []
        with_submitter: list[str] = []
        deadline = time.time() + ONEOFF_WAIT
        for oneoff in self.oneoffs:
            if oneoff.run not in ran and any(
                oneoff.at_ms <= death <= oneoff.at_ms + SUBMIT_SETTLE_MS for death in self.deaths.get(oneoff.node, ())
            ):
                with_submitter.append(oneoff.run)
                continue
            problems = [] if oneoff.run in ran else ["not in the journal"]
            for name, agent in sorted(self.agents.items()):
                wait = max(0.0, deadline - time.time())
                path = api_path("runs", oneoff.run, query={"wait": f"{wait:.1f}"})
                try:
                    record = agent.call(path, timeout=wait + API_TIMEOUT)
                except ClientError as error:
                    problems.append(f"{name}: {error}")
                    continue
                if record["state"] != "succeeded":
                    problems.append(f"{name} has it {_run_state(record)} ({record.get('error') or 'no error'})")
            if problems:
                lost.append(oneoff.run)
                self.violation(
                    f"oneoffs: {oneoff.run}, submitted through {oneoff.node} at t+{self.t(oneoff.at_ms / 1000):.1f}s: "
                    + "; ".join(problems) + "\n" + self.evidence(oneoff.run)
                )
        return lost, with_submitter

    def check_ticks(self, lines: list[JournalLine], end_ms: int) -> tuple[int, list[str], list[str]]:
        """Every tick of the mode-one jobs from the first after the cluster
        was ready to ``SLACK_MS`` before the end ran at least once; once
        settled, every tick of the mode-all job ran on every node. The ticks
        expected of the mode-one jobs, and the runs that did not run."""
        ran = {(line.job, line.tick) for line in lines if line.job in self.since and line.job != ALL_JOB}
        expected = 0
        missed = []
        for job, since in sorted(self.since.items()):
            if job == ALL_JOB:
                continue
            for tick in ticks_between(max(self.ready_ms, since), end_ms - SLACK_MS):
                expected += 1
                if (job, tick) not in ran:
                    missed.append(tick_run_id(job, tick))
        missed_all = []
        if self.settled_ms is not None:
            ran_all = {(line.tick, line.node) for line in lines if line.job == ALL_JOB and line.run_node == line.node}
            for tick in ticks_between(self.settled_ms + HANDOVER_MS, end_ms - SLACK_MS):
                missed_all += [tick_run_id(ALL_JOB, tick, node) for node in sorted(self.agents) if (tick, node) not in ran_all]
        for run_id in missed:
            self.violation(f"ticks: {run_id} never ran\n" + self.evidence(run_id))
        for run_id in missed_all:
            self.violation(f"ticks: {run_id} (mode all, healed phase) never ran\n" + self.evidence(run_id))
        return expected, missed, missed_all

    def check_detections(self) -> None:
        """Every kill kept down at least ``detection_bound`` was detected
        while down; every graceful stop was seen left, never dead."""
        for action in self.actions:
            if action.kind == "kill" and action.back is not None and action.observers:
                bound = detection_bound(self.profile, self.nodes, action.observers)
                down = action.back - action.at
                if action.detected is None and down >= bound:
                    self.violation(
                        f"detection: {action.node}, killed at t+{action.at:.1f}s and down {down:.1f}s "
                        f"(bound {bound:.1f}s with {action.observers} observers), was not declared dead by every observer"
                    )
            if action.kind == "stop" and action.seen_failed_by:
                self.violation(
                    f"detection: {action.node}, stopped gracefully at t+{action.at:.1f}s, was seen dead (not left) by "
                    f"{', '.join(action.seen_failed_by)}"
                )

    def describe_duplicate(self, line: JournalLine, earlier: JournalLine) -> str:
        return (
            f"{line.run} ran on {line.node} (attempt {line.attempt}) at t+{self.t(line.start_ms / 1000):.2f}s "
            f"after it ran on {earlier.node} (attempt {earlier.attempt}) at t+{self.t(earlier.start_ms / 1000):.2f}s"
        )

    def memory(self) -> dict[str, dict[str, int | None]]:
        """Each agent's RSS (KiB, from /proc) and run records held."""
        figures: dict[str, dict[str, int | None]] = {}
        for name, agent in sorted(self.agents.items()):
            try:
                records: int | None = int(agent.call(api_path("runs", query={"limit": 1}), timeout=API_TIMEOUT)["total"])
            except ClientError:
                records = None
            figures[name] = {"rss_kib": rss_kib(agent.pid) if agent.running else None, "run_records": records}
        return figures

    def evidence(self, run_id: str) -> str:
        """The journal's lines for a run and the agents' log lines naming it."""
        lines = [f"  journal: {line.run} attempt {line.attempt} on {line.node} at t+{self.t(line.start_ms / 1000):.2f}s"
                 for line in read_journal(self.journal) if line.run == run_id]
        for name, agent in sorted(self.agents.items()):
            mentions = [text for text in agent.log_text().splitlines() if run_id in text]
            lines += [f"  {name}.log: {text}" for text in mentions[-LOG_LINES:]]
        return "\n".join(lines) or "  (no journal line, no log line names it)"


def scheduler_role(agent: AgentProcess) -> str | None:
    try:
        return str(agent.call("/status", timeout=API_TIMEOUT)["scheduler"]["role"])
    except ClientError:
        return None


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process, KiB (None once it is gone)."""
    try:
        for text in Path(f"/proc/{pid}/status").read_text().splitlines():
            if text.startswith("VmRSS:"):
                return int(text.split()[1])
    except OSError:
        pass
    return None


def log_tail(agent: AgentProcess, lines: int = 20) -> str:
    return "\n".join(f"  {agent.name}.log: {text}" for text in agent.log_text().splitlines()[-lines:])


def now_ms() -> int:
    return int(time.time() * 1000)


def _run_state(record: Mapping[str, Any] | None) -> str:
    if record is None:
        return "missing"
    return f"{record['state']}/attempt {record.get('attempt')}/{record.get('owner')}"


# -- one run -----------------------------------------------------------------------------------


def run_chaos(
    workdir: Path,
    *,
    nodes: int = 5,
    minutes: float = 1.0,
    seed: int,
    heal: float = 30.0,
    profile: str = "lan",
) -> dict[str, Any]:
    """Start ``nodes`` agents in ``workdir`` (their logs, the jobs file, the
    journal), run ``minutes`` of chaos and ``heal`` seconds healed, check,
    stop them all. The result: the run's parameters and ``command`` to
    repeat it; ``actions`` (``counts`` by kind, ``timeline``: each action
    with its times in seconds since the start); ``ticks_expected`` and
    ``missed`` (mode-one ticks), ``missed_all_healed``; ``executions``,
    ``duplicates`` and ``duplicates_healed`` (with ``duplicate_runs``);
    ``oneoffs_submitted`` (acknowledged), ``oneoffs_lost``,
    ``oneoffs_lost_with_submitter`` (and ``_runs``), ``submit_errors``; ``detections`` and
    ``detection_seconds_max``; ``convergence_seconds`` and
    ``settled_seconds`` after the heal began; ``rss_kib`` and
    ``run_records`` per node at the heal's start and end;
    ``survived_minutes``; ``violations``."""
    if nodes < 3:
        raise ValueError("chaos needs at least 3 nodes (at most N//2 are disturbed at once)")
    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "journal.txt"
    jobs_file = workdir / "jobs.toml"
    jobs = [journal_job(f"chaos-{i}", journal) for i in range(CRON_JOBS)] + [journal_job(ALL_JOB, journal, mode="all")]
    jobs_file.write_text(toml_jobs(jobs))
    extra = ["--jobs", str(jobs_file), "--drain-timeout", str(DRAIN_TIMEOUT)]
    log.info("peer.tools.chaos: seed %d, %d nodes, %g minutes of chaos, %gs healed; workdir %s", seed, nodes, minutes, heal, workdir)
    with LocalCluster(workdir, profile=profile, key=generate_key(), extra_args=extra) as cluster:
        chaos = Chaos(cluster, journal, nodes=nodes, seed=seed, profile=profile)
        chaos.start()
        chaos.chaos_phase(minutes * 60)
        chaos.heal_phase(heal)
        figures = chaos.check()
        memory_end = chaos.memory()
        chaos.stop_all()
    memory_start = chaos.memory_start
    return {
        "seed": seed,
        "nodes": nodes,
        "minutes": minutes,
        "heal_seconds": heal,
        "profile": profile,
        "command": repeat_command(nodes, minutes, seed, heal),
        "workdir": str(workdir),
        "actions": {
            "counts": dict(Counter(action.kind for action in chaos.actions)),
            "timeline": [action.to_json() for action in chaos.actions],
        },
        **figures,
        "convergence_seconds": chaos.convergence,
        "settled_seconds": round(chaos.settled_ms / 1000 - chaos.heal_start, 2) if chaos.settled_ms else None,
        "rss_kib": {name: {"heal_start": memory_start.get(name, {}).get("rss_kib"), "end": memory_end[name]["rss_kib"]}
                    for name in memory_end},
        "run_records": {name: {"heal_start": memory_start.get(name, {}).get("run_records"), "end": memory_end[name]["run_records"]}
                        for name in memory_end},
        "survived_minutes": chaos.survived_minutes,
        "violations": chaos.violations,
    }


def repeat_command(nodes: int, minutes: float, seed: int, heal: float) -> str:
    return shlex.join(["python", "-m", "peer.tools.chaos", "--nodes", str(nodes), "--minutes", f"{minutes:g}",
                       "--seed", str(seed), "--heal", f"{heal:g}"])


def describe(action: Mapping[str, Any]) -> str:
    """One action of the timeline (``Action.to_json``), on one line."""
    what = {"kill": "kill -9", "pause": "SIGSTOP", "stop": "SIGTERM", "died": "exited on its own:"}[action["kind"]]
    text = f"t+{action['at']:.1f}s {what} {action['node']}"
    if action["kind"] == "stop":
        text += f", exited {action['exit_code']} at t+{action['exited']:.1f}s" if action["exited"] is not None else ", never exited"
    if action["back"] is not None:
        text += f", back at t+{action['back']:.1f}s"
    if action["ready"] is not None:
        text += f", ready at t+{action['ready']:.1f}s"
    if action["kind"] == "kill":
        text += f"; declared dead after {action['detected']}s" if action["detected"] is not None else "; not declared dead while down"
    return text


def format_report(result: Mapping[str, Any]) -> str:
    """The result, for a person."""
    r = result
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(r["actions"]["counts"].items())) or "none"
    detections = ", ".join(f"{k}: {v}" for k, v in r["detections"].items()) or "no kill"
    memory = ", ".join(
        f"{name} {r['rss_kib'][name]['heal_start']} -> {r['rss_kib'][name]['end']}"
        f" ({r['run_records'][name]['heal_start']} -> {r['run_records'][name]['end']} records)"
        for name in sorted(r["rss_kib"])
    )
    lines = [
        (f"peer.tools.chaos: seed {r['seed']}, {r['nodes']} nodes, {r['minutes']:g} min of chaos (survived "
        f"{r['survived_minutes']:g}), {r['heal_seconds']:g}s healed, profile {r['profile']}; workdir {r['workdir']}"),
        f"actions: {counts}",
        *(f"  {describe(action)}" for action in r["actions"]["timeline"]),
        f"ticks (mode one): {r['ticks_expected']} expected, {r['missed']} missed; mode all, healed: {r['missed_all_healed']} missed",
        f"executions: {r['executions']}; duplicates: {r['duplicates']} ({r['duplicates_healed']} in the healed phase)",
        *(f"  {text}" for text in r["duplicate_runs"]),
        (f"one-offs: {r['oneoffs_submitted']} submitted, {r['oneoffs_lost']} lost, {r['oneoffs_lost_with_submitter']} lost "
        f"with their submitter {r['oneoffs_lost_with_submitter_runs']}, {len(r['submit_errors'])} submits refused"),
        f"detection: max {r['detection_seconds_max']}s ({detections})",
        f"convergence: {r['convergence_seconds']}s after the heal began; settled after {r['settled_seconds']}s",
        f"memory, RSS KiB at the heal's start -> end: {memory}",
    ]
    if r["violations"]:
        lines.append(f"VIOLATIONS ({len(r['violations'])}):")
        lines += [f"- {text}" for text in r["violations"]]
        lines.append(f"repeat with: {r['command']}")
    else:
        lines.append("no violations")
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peer.tools.chaos", description="Chaos on real peer agents on 127.0.0.1.")
    parser.add_argument("--nodes", type=int, default=5, help="agents to start (default 5, at least 3)")
    parser.add_argument("--minutes", type=float, default=1.0, help="minutes of chaos (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random driver (default: a random one, printed)")
    parser.add_argument("--heal", type=float, default=30.0, help="seconds of healed phase before the checks (default 30)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    parser.add_argument("--keep", metavar="DIR", help="keep the agents' logs, the jobs file and the journal in DIR")
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    quiet_http_libraries()
    log.info("seed %d: repeat with %s", seed, repeat_command(args.nodes, args.minutes, seed, args.heal))
    if args.keep:
        result = run_chaos(Path(args.keep), nodes=args.nodes, minutes=args.minutes, seed=seed, heal=args.heal)
    else:
        with tempfile.TemporaryDirectory(prefix="peer-chaos-") as workdir:
            result = run_chaos(Path(workdir), nodes=args.nodes, minutes=args.minutes, seed=seed, heal=args.heal)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    if result["violations"]:
        keep = "" if args.keep else " --keep DIR"  # to read the agents' logs and the journal afterwards
        print(
            f"peer.tools.chaos: {len(result['violations'])} violations; seed {seed}; repeat with: {result['command']}{keep}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
