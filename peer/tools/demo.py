"""``peer demo``: a local cluster of real agents, shown scheduling jobs.

Starts N ``peer agent`` processes on 127.0.0.1 with a fresh cluster key and
one jobs file (``JOBS_TOML``: cron jobs in mode ``one`` calling
``peer.testing.samples``, one that fails once and is retried, a heartbeat in mode
``all``), and shows, from what the agents' control APIs answer:

1. the cluster forming and a live table of which node owns and runs what
   (``GET /jobs`` and ``GET /runs``; redrawn in place on a terminal, printed
   every few seconds otherwise);
2. one-off runs submitted through one node, an update sent to one of them
   through another, the results read through a third;
3. ``kill -9`` of the node that owns the most jobs: how long until the others
   declare it dead and each of its jobs runs on a new owner, and whether
   every tick due since the kill has a record in the runs map (checked, not
   claimed: any tick without one is named);
4. a graceful leave (SIGTERM): its jobs move at once, and the same check;
5. the killed node restarted under its name: it rejoins and takes work back;
6. a summary of the measured timings; every process is stopped by PID at
   the end, whatever happens (``LocalCluster``).

Node 0 is the seed the others (and the restarted node) join through and the
node the demo watches the cluster through, so it is neither killed nor made
to leave. Times are seconds since the demo started (``t+``), measured here
or read from the run records (epoch milliseconds written by the agents on
this machine, so on the same clock).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from peer.control.api import target_document
from peer.control.client import ClientError, api_path, call
from peer.control.text import format_table
from peer.jobs.definition import JobSpec, load_jobs_file
from peer.runtime.keys import generate_key
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for

STEP_TIMEOUT = 60.0
# How often the live table is redrawn on a terminal, and printed otherwise.
TTY_REFRESH = 1.0
PLAIN_REFRESH = 4.0
POLL = 0.25
# The longest the demo watches for a takeover, a handover or a rejoin.
TAKEOVER_TIMEOUT = 40.0
# A tick whose run started within this long of its time counts as on time.
ON_TIME = 1.0
# Ticks due less than this long ago are not checked yet (their owner may be
# waiting out a handover, or the record may still be on its way).
CHECK_MARGIN = 2.0
FINISHED = frozenset({"succeeded", "failed", "cancelled", "lost", "missed", "skipped"})

JOBS_TOML = """\
# The demo's jobs: every agent is started with --jobs on this file.
[[job]]
id = "report"
schedule = "@every 2s"
call = "peer.testing.samples:tick"
kwargs = { work = 0.5 }         # seconds of work per run

[[job]]
id = "counter"
schedule = "@every 2s"
call = "peer.testing.samples:tick"

[[job]]
id = "digest"
schedule = "@every 3s"
call = "peer.testing.samples:tick"
kwargs = { work = 0.3 }

[[job]]
id = "cleanup"
schedule = "@every 3s"
call = "peer.testing.samples:tick"
kwargs = { work = 0.3 }

[[job]]
id = "flaky"                    # fails on its first attempt, every time
schedule = "@every 4s"
call = "peer.testing.samples:flaky"
kwargs = { fail_times = 1 }
retries = 1
backoff = "500ms"

[[job]]
id = "heartbeat"                # every node runs each tick
schedule = "@every 3s"
mode = "all"
call = "peer.testing.samples:tick"
"""


def run(nodes: int, *, keep: bool = False, out: TextIO = sys.stdout) -> int:
    if nodes < 3:
        out.write("peer demo needs at least 3 nodes\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="peer-demo-") as workdir:
        jobs_file = Path(workdir) / "jobs.toml"
        jobs_file.write_text(JOBS_TOML)
        with LocalCluster(
            Path(workdir), prefix="node-", profile="lan", key=generate_key(), extra_args=["--jobs", str(jobs_file)]
        ) as cluster:
            demo = Demo(cluster, load_jobs_file(str(jobs_file)), out)
            return demo.run(nodes, workdir, keep=keep)


@attrs.define
class TickCheck:
    """The ticks of one job in a window, as the runs map records them."""

    job: str
    ticks: int = 0
    on_time: int = 0  # succeeded, started within ON_TIME of the tick
    late: list[float] = attrs.Factory(list)  # succeeded later: seconds late
    running: int = 0  # still pending or running when checked
    rerun: list[str] = attrs.Factory(list)  # due before the event, run again by another node after it
    skipped: list[str] = attrs.Factory(list)  # recorded skipped or missed: a job policy decided not to run it
    reasons: list[str] = attrs.Factory(list)  # why, for the skipped ones
    problems: list[str] = attrs.Factory(list)  # no record, failed, lost, cancelled

    def line(self, name_width: int) -> str:
        parts = []
        if self.on_time:
            parts.append(f"{self.on_time} on time")
        if self.late:
            parts.append(f"{len(self.late)} late by {_span(self.late)}")
        if self.running:
            parts.append(f"{self.running} still running")
        if self.skipped:
            parts.append(f"{len(self.skipped)} NOT RUN: {', '.join(self.skipped)} ({self.reasons[0]})")
        if self.problems:
            parts.append(f"{len(self.problems)} WRONG: {'; '.join(self.problems)}")
        text = f"{self.ticks} tick{'s' if self.ticks != 1 else ''}: " + ", ".join(parts)
        if self.rerun:
            text += f"; due before, run after: {', '.join(self.rerun)}"
        return f"{self.job.ljust(name_width)}  {text}"


class Demo:
    def __init__(self, cluster: LocalCluster, specs: Sequence[JobSpec], out: TextIO) -> None:
        self.cluster = cluster
        self.specs = {spec.id: spec for spec in specs}
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.t0 = time.time()
        self.agents: list[AgentProcess] = []
        self.timings: list[tuple[str, str]] = []
        self.problems: list[str] = []

    # -- output ------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def t(self, when: float | None = None) -> str:
        """A moment as ``t+12.3s`` (seconds since the demo started)."""
        return f"t+{(time.time() if when is None else when) - self.t0:.1f}s"

    def event(self, text: str) -> None:
        self.say(f"\n[{self.t()}] {text}")

    def timing(self, what: str, value: str) -> None:
        self.timings.append((what, value))

    # -- reading the cluster --------------------------------------------------------

    @property
    def observer(self) -> AgentProcess:
        return self.agents[0]

    def runs(self, job: str, limit: int = 100) -> list[dict[str, Any]]:
        document = self.observer.call(api_path("runs", query={"job": job, "limit": limit}))
        return list(document["runs"])

    def owners(self) -> dict[str, str | None]:
        """Job -> owner, as node 0 sees it."""
        return {job["id"]: job["owner"] for job in self.observer.call("/jobs")["jobs"]}

    def owned_by(self, name: str) -> list[str]:
        return sorted(job for job, owner in self.owners().items() if owner == name)

    def table(self) -> list[str]:
        """The live table, as node 0 sees the cluster now."""
        observer = self.observer
        jobs = observer.call("/jobs")["jobs"]
        members = observer.call("/members")["members"]
        rows: list[tuple[str, ...]] = [("JOB", "OWNER", "LAST RUN", "STATE", "RAN ON", "RESULT")]
        now = time.time()
        for job in jobs:
            if job["mode"] == "all":
                rows.append(self._all_row(job, now))
            else:
                rows.append(self._one_row(job, now))
        statuses = ", ".join(f"{m['name']} {m['status']}" + _role(m) for m in members)
        header = f"as {observer.name} sees it at {self.t(now)}: {statuses}"
        return [header, *format_table(rows).splitlines()]

    def _one_row(self, job: dict[str, Any], now: float) -> tuple[str, ...]:
        owner = job["owner"] or "-"
        runs = [r for r in self.runs(job["id"], limit=10) if r.get("tick") is not None]
        if not runs:
            return (job["id"], owner, "-", "-", "-", "")
        latest = max(runs, key=lambda r: r["tick"])
        tick = latest["tick"] / 1000
        state = latest["state"] + (f" (attempt {latest['attempt']})" if latest.get("attempt", 1) > 1 else "")
        return (job["id"], owner, self._ago(tick, now), state, latest.get("owner") or "-", _outcome(latest))

    def _ago(self, when: float, now: float) -> str:
        return f"{self.t(when)} ({max(0.0, now - when):.0f}s ago)"

    def _all_row(self, job: dict[str, Any], now: float) -> tuple[str, ...]:
        runs = [r for r in self.runs(job["id"], limit=4 * len(self.agents)) if r.get("tick") is not None]
        if not runs:
            return (job["id"], "all", "-", "-", "-", "")
        tick = max(r["tick"] for r in runs)
        latest = [r for r in runs if r["tick"] == tick]
        states = Counter(r["state"] for r in latest)
        state = ", ".join(f"{count} {name}" for name, count in sorted(states.items()))
        nodes = ",".join(sorted(r.get("node") or "?" for r in latest))
        return (job["id"], "all", self._ago(tick / 1000, now), state, nodes, "")

    # -- the live table ---------------------------------------------------------------

    def watch(
        self,
        *,
        least: float,
        most: float,
        until: Callable[[], bool] | None = None,
        then: float = 0.0,
    ) -> bool:
        """Show the live table for at least ``least`` seconds, until ``until()``
        holds (polled every ``POLL``) and ``then`` seconds more, at most
        ``most`` seconds. Whether ``until`` held (True without one)."""
        start = time.time()
        held_at: float | None = None if until is not None else start
        drawn = 0
        last_draw = -1e9
        while True:
            now = time.time()
            if held_at is None and until is not None and _answered(until):
                held_at = now
            done = now - start >= most or (
                held_at is not None and now - start >= least and now - held_at >= then
            )
            refresh = TTY_REFRESH if self.tty else PLAIN_REFRESH
            # Not on a terminal, the last table is left out when one was just printed.
            if now - last_draw >= refresh or (done and (self.tty or now - last_draw >= refresh / 2)):
                try:
                    lines = self.table()
                except ClientError as error:
                    lines = [f"({self.observer.name} did not answer: {error})"]
                if self.tty:
                    width = shutil.get_terminal_size().columns - 1
                    lines = [line[:width] for line in lines]  # one screen line each, so we can draw over them
                    if drawn:
                        self.out.write(f"\x1b[{drawn}F\x1b[J")  # up to the table's first line; clear below
                    else:
                        self.out.write("\n")
                else:
                    lines = ["", *lines]
                self.out.write("\n".join(lines) + "\n")
                self.out.flush()
                drawn = len(lines)
                last_draw = now
            if done:
                return held_at is not None
            time.sleep(POLL)

    # -- checks --------------------------------------------------------------------------

    def note_moves(self, jobs: Sequence[str], moved: dict[str, dict[str, Any]], away_from: str, since_ms: int) -> None:
        """Record, for each job not seen moved yet, its first run elsewhere."""
        for job in jobs:
            if job not in moved:
                record = self.first_run_elsewhere(job, away_from, since_ms)
                if record is not None:
                    moved[job] = record

    def first_run_elsewhere(self, job: str, not_on: str, since_ms: int) -> dict[str, Any] | None:
        """The earliest run of ``job`` started at or after ``since_ms`` by
        another node than ``not_on``."""
        found = [
            r
            for r in self.runs(job, limit=40)
            if r.get("owner") not in (None, not_on) and (r.get("started") or 0) >= since_ms
        ]
        return min(found, key=lambda r: r["started"]) if found else None

    def first_run_on(self, job: str, node: str, since_ms: int) -> dict[str, Any] | None:
        found = [r for r in self.runs(job, limit=40) if r.get("owner") == node and (r.get("started") or 0) >= since_ms]
        return min(found, key=lambda r: r["started"]) if found else None

    def check_ticks(self, job: str, since_ms: int, until_ms: int) -> TickCheck:
        """Every tick of ``job`` from the last one due at or before
        ``since_ms`` to ``until_ms``: has it a record, and how did it go?"""
        spec = self.specs[job]
        assert spec.schedule is not None
        first = spec.schedule.previous_at_or_before(since_ms)
        ticks = spec.schedule.ticks_between((first or since_ms) - 1, until_ms, 1000)
        records = {r["tick"]: r for r in self.runs(job, limit=1000) if r.get("tick") is not None}
        check = TickCheck(job)
        for tick in ticks:
            check.ticks += 1
            record = records.get(tick)
            where = self.t(tick / 1000)
            if record is None:
                check.problems.append(f"{where} has no record")
                continue
            state, started = record["state"], record.get("started")
            if state in ("skipped", "missed"):
                check.skipped.append(where)
                check.reasons.append(f"{state}: {record.get('error') or 'no reason given'}")
                continue
            if state not in FINISHED:
                check.running += 1
            elif state != "succeeded":
                check.problems.append(f"{where} {state}: {record.get('error') or 'no error given'}")
                continue
            elif started is not None and started - tick > ON_TIME * 1000:
                check.late.append((started - tick) / 1000)
            else:
                check.on_time += 1
            if tick <= since_ms and started is not None and started > since_ms:
                check.rerun.append(f"{where} on {record.get('owner')} (attempt {record.get('attempt', 1)})")
        return check

    def report_ticks(self, jobs: Sequence[str], since: float, what: str) -> str:
        """Check and print the ticks of ``jobs`` since ``since``; a one-line verdict."""
        until = time.time() - CHECK_MARGIN
        checks = [self.check_ticks(job, int(since * 1000), int(until * 1000)) for job in jobs]
        width = max(len(job) for job in jobs)
        self.say(f"  every tick of those jobs due from {what} to {self.t(until)}, as the runs map records it:")
        for check in checks:
            self.say(f"    {check.line(width)}")
        total = sum(c.ticks for c in checks)
        skipped = sum(len(c.skipped) for c in checks)
        bad = sum(len(c.problems) for c in checks)
        ran = total - skipped - bad
        if bad:
            self.say(f"  {bad} of {total} ticks have no record or did not succeed (named above)")
            self.problems.append(f"{bad} of {total} ticks after {what} have no record or did not succeed")
        elif skipped:
            self.say(
                f"  every tick has a record and none failed, but {skipped} of {total} did not run: "
                "a job policy recorded them skipped or missed (reason above)"
            )
        else:
            self.say(f"  no tick was missed: all {total} have a record, and ran")
        return f"{ran} of {total} ran" + (f", {skipped} skipped by policy" if skipped else "") + (f", {bad} WRONG" if bad else "")

    def time_until_all(self, agents: Sequence[AgentProcess], name: str, status: str) -> tuple[float, float]:
        """Poll until every agent in ``agents`` sees ``name`` with ``status``;
        the wall times the first and the last one did."""
        seen: dict[str, float] = {}

        def everyone() -> bool:
            for agent_name, view in self.cluster.views(agents).items():
                if view.get(name) == status and agent_name not in seen:
                    seen[agent_name] = time.time()
            return len(seen) == len(agents)

        wait_for(everyone, STEP_TIMEOUT, f"every agent to see {name} {status}")
        return min(seen.values()), max(seen.values())

    def scheduler_stats(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for agent in self.cluster.running():
            try:
                total.update(agent.call("/status")["scheduler"]["stats"])
            except ClientError:
                pass
        return total

    # -- the walk-through -------------------------------------------------------------

    def run(self, nodes: int, workdir: str, *, keep: bool) -> int:
        cluster = self.cluster
        one = [job for job, spec in self.specs.items() if spec.mode == "one" and spec.schedule is not None]
        self.say(
            f"peer demo: {nodes} agents on 127.0.0.1 (profile lan, a fresh cluster key), each started with "
            f"--jobs jobs.toml; logs and jobs in {workdir}"
        )
        self.say("Times are seconds since the demo started. The jobs:")
        for spec in self.specs.values():
            extra = f", retries {spec.retries}" if spec.retries else ""
            schedule = spec.schedule.text if spec.schedule else "-"
            self.say(f"  {spec.id:10} {schedule:10} mode {spec.mode:3}  {target_document(spec.target)['summary']}{extra}")

        # 1. Start, converge, schedulers ready.
        self.agents = [cluster.add() for _ in range(nodes)]
        cluster.wait_api(self.agents, STEP_TIMEOUT)
        everyone = {agent.name: "alive" for agent in self.agents}
        wait_for(lambda: cluster.converged(everyone), STEP_TIMEOUT, "the cluster to converge")
        self.event(f"all {nodes} agents see each other")
        self.timing("cluster formed (all agents see each other)", self.t())
        wait_for(
            lambda: all(_ready_view(a, nodes) for a in self.agents), STEP_TIMEOUT,
            "every scheduler to be ready and see every node eligible",
        )
        wait_for(lambda: all(self.owners().get(job) for job in one), STEP_TIMEOUT, "every job to have an owner")
        self.event(f"every scheduler is ready ({nodes} eligible nodes); each job has its owner, by consistent hashing:")
        self.timing("schedulers ready, jobs placed", self.t())
        self.watch(least=6.0, most=6.0)

        # 2. Submit, send, read.
        self.submit_send_read()

        # 3. kill -9 the busiest node.
        victim = self.busiest(exclude={self.observer.name})
        self.kill(victim)

        # 4. A graceful leave.
        leaver = self.busiest(exclude={self.observer.name, victim.name})
        self.leave(leaver)

        # 5. Restart the killed node.
        self.restart(victim)

        # 6. Summary, and the end.
        self.summary()
        if keep:
            api = f"{self.observer.api[0]}:{self.observer.api[1]}"
            self.say(
                f"\nThe cluster keeps running; try `peer jobs --api {api}`, `peer runs report --api {api}` or "
                f"`peer members --api {api}`. Ctrl-C stops it."
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                # Ctrl-C on a terminal reaches the agents too, and they start
                # leaving; a second signal would cut their leave short.
                time.sleep(0.5)
        self.event("stopping every agent gracefully (SIGTERM) ...")
        stopping = time.time()
        for agent in cluster.running():
            if not _leaving(agent):
                agent.signal(15)
        codes = {agent.name: agent.wait(STEP_TIMEOUT) for agent in cluster.agents.values()}
        self.say(f"  all exited after {time.time() - stopping:.1f}s (status {', '.join(f'{n} {c}' for n, c in codes.items())})")
        if self.problems:
            self.say(f"\ndone in {time.time() - self.t0:.0f}s, but the demo saw problems:")
            for problem in self.problems:
                self.say(f"  - {problem}")
            return 1
        self.say(f"\ndone in {time.time() - self.t0:.0f}s.")
        return 0

    def busiest(self, exclude: set[str]) -> AgentProcess:
        """The running agent (not in ``exclude``) owning the most jobs."""
        owners = Counter(owner for owner in self.owners().values() if owner)
        candidates = [a for a in self.agents if a.running and a.name not in exclude]
        return max(candidates, key=lambda a: (owners[a.name], -self.agents.index(a)))

    def submit_send_read(self) -> None:
        submitter, sender, reader = self.agents[1], self.agents[2], self.agents[0]
        submits: list[tuple[str, dict[str, Any]]] = [
            ("the job counter, once, now", {"job": "counter"}),
            (
                "peer.testing.samples:total(numbers=[1, 2, 3, 4])",
                {"id": "sum", "call": "peer.testing.samples:total", "kwargs": {"numbers": [1, 2, 3, 4]}},
            ),
            (
                "peer.testing.samples:flaky(fail_times=1), retries 1",
                {"id": "flaky-once", "call": "peer.testing.samples:flaky", "kwargs": {"fail_times": 1}, "retries": 1, "backoff": "200ms"},
            ),
            (
                "peer.testing.samples:wait_for_update(), which waits for an update",
                {"id": "approval", "call": "peer.testing.samples:wait_for_update", "timeout": "30s"},
            ),
        ]
        self.event(f"submit {len(submits)} one-off runs through {submitter.name} (POST /submit; `peer submit`):")
        run_ids = [call(submitter.api, "/submit", method="POST", body=body)["run"] for _, body in submits]
        width = max(len(r) for r in run_ids)
        for run_id, (what, _) in zip(run_ids, submits):
            self.say(f"  {run_id.ljust(width)}  {what}")
        waiting = run_ids[-1]
        data = {"approved": True, "via": sender.name}

        def send() -> bool:
            try:
                call(sender.api, api_path("runs", waiting, "send"), method="POST", body={"data": data})
            except ClientError as error:
                if error.status == 404:  # the submit has not reached it yet
                    return False
                raise
            return True

        wait_for(send, 10.0, f"{sender.name} to know run {waiting}")
        self.event(f"send {json.dumps(data)} to {waiting} through {sender.name} (POST /runs/ID/send; `peer send`)")
        self.event(f"results, read through {reader.name} (GET /runs/ID?wait=20; `peer result --wait`):")
        for run_id in run_ids:
            record = reader.call(api_path("runs", run_id, query={"wait": "20"}), timeout=30.0)
            took = ""
            if record.get("finished") and record.get("created"):
                took = f" {(record['finished'] - record['created']) / 1000:.1f}s after submit,"
            attempt = f" attempt {record['attempt']}," if record.get("attempt", 1) > 1 else ""
            self.say(f"  {run_id.ljust(width)}  {record['state']} on {record.get('owner')},{took}{attempt} {_outcome(record)}")
            if record["state"] != "succeeded":
                self.problems.append(f"submitted run {run_id} ended {record['state']}")

    def kill(self, victim: AgentProcess) -> None:
        jobs = self.owned_by(victim.name)
        others = [a for a in self.agents if a.running and a is not victim]
        spared = len(self.owned_by(self.observer.name))
        note = f" ({self.observer.name} owns {spared}, but it is the seed and our window)" if spared > len(jobs) else ""
        # Kill it in the middle of a run, if it starts one soon: that run is re-run elsewhere.
        running = _poll(lambda: _running(victim), 4.0) if jobs else []
        # ...once its claim (the running record) has reached the others.
        claimed = _poll(lambda: [r for r in running if _state(self.observer, r) == "running"], 1.0) if running else []
        self.event(f"kill -9 {victim.name} (pid {victim.pid}), the node owning the most jobs{note}: {', '.join(jobs) or 'none'}")
        if running:
            its = "its claim" if len(running) == 1 else "their claims"
            held = f"; {self.observer.name} holds {its}" if claimed else f"; {its} had not reached {self.observer.name} yet"
            self.say(f"  (it is in the middle of {', '.join(running)}{held})")
        killed = time.time()
        killed_ms = int(killed * 1000)
        victim.kill()
        dead_seen: dict[str, float] = {}
        moved: dict[str, dict[str, Any]] = {}

        def taken_over() -> bool:
            for name, view in self.cluster.views(others).items():
                if view.get(victim.name) == "dead":
                    dead_seen.setdefault(name, time.time())
            self.note_moves(jobs, moved, victim.name, killed_ms)
            return len(dead_seen) == len(others) and len(moved) == len(jobs)

        self.say("  the others probe it, suspect it, declare it dead; then its jobs move (live table):")
        self.watch(least=0.0, most=TAKEOVER_TIMEOUT, until=taken_over, then=3.0)
        if len(dead_seen) == len(others):
            first, last = min(dead_seen.values()), max(dead_seen.values())
            self.say(
                f"  detected: declared dead {_span([first - killed, last - killed])} after the kill by {_all(len(others))} "
                f"(as the demo saw it, polling every {POLL:g}s)"
            )
            self.timing(f"kill -9 {victim.name}: declared dead by every other node", f"{last - killed:.1f}s after the kill")
        else:
            self.say(f"  only {len(dead_seen)} of {len(others)} others declared it dead within {TAKEOVER_TIMEOUT:g}s")
            self.problems.append(f"{victim.name} was not declared dead by every node")
        if not jobs:
            return
        self.say("  takeover: the first run of each of its jobs on another node:")
        self.report_handover(jobs, moved, killed, "kill", "  its jobs running on new owners (takeover)")

    def report_handover(self, jobs: Sequence[str], moved: dict[str, dict[str, Any]], since: float, what: str, label: str) -> None:
        """Where a gone node's jobs ran next, and whether every tick since ``what`` ran."""
        delays = self.report_moves(jobs, moved, since, what)
        if delays:
            self.timing(label, f"{_span(delays)} after the {what}")
        verdict = self.report_ticks(jobs, since, f"the {what} ({self.t(since)})")
        self.timing(f"  its ticks since the {what}", verdict)

    def report_moves(self, jobs: Sequence[str], moved: dict[str, dict[str, Any]], since: float, what: str) -> list[float]:
        width = max(len(j) for j in jobs)
        delays = []
        for job in jobs:
            record = moved.get(job)
            if record is None:
                self.say(f"    {job.ljust(width)}  did not run on another node")
                self.problems.append(f"{job} did not run on another node after the {what}")
                continue
            delay = record["started"] / 1000 - since
            delays.append(delay)
            tick = record.get("tick")
            late = (
                f"the tick of {self.t(tick / 1000)}, started {(record['started'] - tick) / 1000:.1f}s after it"
                if tick
                else "a submitted run"
            )
            self.say(f"    {job.ljust(width)}  on {record['owner']}, {delay:.1f}s after the {what} ({late})")
        return delays

    def leave(self, leaver: AgentProcess) -> None:
        jobs = self.owned_by(leaver.name)
        others = [a for a in self.agents if a.running and a is not leaver]
        self.event(f"SIGTERM {leaver.name}: a graceful leave; it owns {', '.join(jobs) or 'no job'}")
        stopped = time.time()
        stopped_ms = int(stopped * 1000)
        leaver.signal(15)
        moved: dict[str, dict[str, Any]] = {}
        exited: list[float] = []
        left_seen: dict[str, float] = {}

        def gone() -> bool:
            if not exited and not leaver.running:
                exited.append(time.time())
            for name, view in self.cluster.views(others).items():
                if view.get(leaver.name) == "left":
                    left_seen.setdefault(name, time.time())
            self.note_moves(jobs, moved, leaver.name, stopped_ms)
            return len(moved) == len(jobs) and bool(exited) and len(left_seen) == len(others)

        self.watch(least=0.0, most=TAKEOVER_TIMEOUT, until=gone, then=3.0)
        code = leaver.wait(STEP_TIMEOUT)
        if not exited:
            exited.append(time.time())
        failed = [a.name for a in others if a.view().get(leaver.name) == "dead"]
        self.say(
            f"  it exited with status {code} within {exited[0] - stopped:.1f}s of the signal; "
            + (f"{_all(len(others))} saw it left within {max(left_seen.values()) - stopped:.1f}s" if len(left_seen) == len(others)
               else f"{len(left_seen)} of {len(others)} saw it left")
            + (f"; {', '.join(failed)} saw it FAILED" if failed else " (left, not failed)")
        )
        if code != 0 or failed or len(left_seen) != len(others):
            self.problems.append(f"{leaver.name}'s graceful leave: exit status {code}, seen left by {len(left_seen)} of {len(others)}")
        self.timing(f"graceful leave of {leaver.name}: exited {code}", f"within {exited[0] - stopped:.1f}s of SIGTERM")
        if not jobs:
            return
        self.say("  its jobs, handed over as it drained (it claims nothing new once draining, so its ticks run on time elsewhere):")
        self.report_handover(jobs, moved, stopped, "SIGTERM", "  its jobs running on new owners")

    def restart(self, victim: AgentProcess) -> None:
        others = [a for a in self.agents if a.running]
        self.event(f"restart {victim.name} under the same name (same jobs file)")
        restarted = time.time()
        restarted_ms = int(restarted * 1000)
        victim.start()
        self.cluster.wait_api([victim], STEP_TIMEOUT)
        _, alive = self.time_until_all([*others, victim], victim.name, "alive")
        self.say(f"  every agent sees it alive, with a new incarnation, {alive - restarted:.1f}s after the restart")
        ready_at: list[float] = []
        back: dict[str, dict[str, Any]] = {}

        def working() -> bool:
            if not ready_at and _meta(self.observer, victim.name) == "ready":
                ready_at.append(time.time())
            if ready_at:
                for job in self.owned_by(victim.name):
                    if job not in back:
                        record = self.first_run_on(job, victim.name, restarted_ms)
                        if record is not None:
                            back[job] = record
            return bool(back)

        self.say("  it starts by catching up the replicated maps, then says it is ready and takes back what the ring gives it:")
        self.watch(least=0.0, most=TAKEOVER_TIMEOUT, until=working, then=4.0)
        owned = self.owned_by(victim.name)
        if not ready_at:
            self.say(f"  it did not become ready within {TAKEOVER_TIMEOUT:g}s")
            self.problems.append(f"{victim.name} did not become ready after its restart")
            self.timing(f"restart of {victim.name}: seen alive by all", f"{alive - restarted:.1f}s")
            return
        self.say(f"  it was ready to own work {ready_at[0] - restarted:.1f}s after the restart; it owns {', '.join(owned) or 'no job'} now")
        if not back:
            self.say(f"  it ran none of its jobs within {TAKEOVER_TIMEOUT:g}s")
            if owned:
                self.problems.append(f"{victim.name} owns {', '.join(owned)} after its restart but ran none of them")
            return
        first = min(back.values(), key=lambda r: r["started"])
        self.say(f"  its first run: {first['id']}, {first['started'] / 1000 - restarted:.1f}s after the restart")
        self.timing(
            f"restart of {victim.name}: alive / ready / first run",
            f"{alive - restarted:.1f}s / {ready_at[0] - restarted:.1f}s / {first['started'] / 1000 - restarted:.1f}s after the restart",
        )
        if owned:
            verdict = self.report_ticks(sorted(owned), restarted, f"the restart ({self.t(restarted)})")
            self.timing("  ticks of the jobs it took back", verdict)

    def summary(self) -> None:
        stats = self.scheduler_stats()
        states: Counter[str] = Counter()
        for state in ("succeeded", "failed", "running", "pending", "lost", "missed", "skipped", "cancelled"):
            states[state] = self.observer.call(api_path("runs", query={"state": state, "limit": 1}))["total"]
        self.event("summary")
        rows = [(what, value) for what, value in self.timings]
        rows.append(("runs recorded (every node holds them all)", ", ".join(f"{n} {s}" for s, n in states.items() if n)))
        counters = (
            f"ticks run {stats['ticks_run']}, late {stats['ticks_late']}, missed {stats['ticks_missed']}, "
            f"retries {stats['retries']}, failovers {stats['failovers']}, claims lost {stats['claims_lost']}"
        )
        rows.append(("scheduler counters, summed over the running agents", counters))
        rows.append(("demo so far", f"{time.time() - self.t0:.1f}s"))
        for what, value in rows:
            self.say(f"  {what.ljust(max(len(w) for w, _ in rows))}  {value}")


def _ready_view(agent: AgentProcess, nodes: int) -> bool:
    try:
        scheduler = agent.call("/status")["scheduler"]
    except ClientError:
        return False
    return bool(scheduler["role"] == "ready" and scheduler["eligible"] == nodes)


def _poll(condition: Callable[[], list[str]], timeout: float) -> list[str]:
    """``condition()`` once it is not empty, or empty after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def _running(agent: AgentProcess) -> list[str]:
    """The runs of jobs in mode one the agent is running."""
    try:
        running = agent.call("/status")["scheduler"]["running"]
    except ClientError:
        return []
    return [run for run in running if run.count("@") == 1]


def _leaving(agent: AgentProcess) -> bool:
    """Is the agent leaving already (or no longer answering)?"""
    try:
        return bool(agent.call("/status", timeout=2.0)["state"] == "leaving")
    except ClientError:
        return True


def _state(agent: AgentProcess, run_id: str) -> str | None:
    try:
        return str(agent.call(api_path("runs", run_id))["state"])
    except ClientError:
        return None


def _meta(agent: AgentProcess, name: str) -> str | None:
    try:
        members = agent.call("/members")["members"]
    except ClientError:
        return None
    return next((m["meta"] for m in members if m["name"] == name), None)


def _role(member: dict[str, Any]) -> str:
    meta = member.get("meta")
    return f" ({meta})" if member["status"] in ("alive", "suspect") and meta and meta != "ready" else ""


def _outcome(record: dict[str, Any]) -> str:
    """A run's result, error or progress, on one short line."""
    if record.get("state") == "succeeded":
        text = json.dumps(record.get("result"), separators=(",", ":"))
    elif record.get("error"):
        text = f"error: {record['error']}"
    elif record.get("progress") is not None:
        text = f"progress: {json.dumps(record['progress'], separators=(',', ':'))}"
    else:
        text = ""
    return text if len(text) <= 60 else text[:57] + "..."


def _answered(condition: Callable[[], bool]) -> bool:
    """``condition()``, False when an agent did not answer (try again later)."""
    try:
        return condition()
    except ClientError:
        return False


def _all(others: int) -> str:
    return "the other node" if others == 1 else f"all {others} others"


def _span(values: Sequence[float]) -> str:
    low, high = f"{min(values):.1f}s", f"{max(values):.1f}s"
    return low if low == high else f"{low} to {high}"
