"""The scheduler: which node runs what, and when. A sans-IO core.

Theory of operation
-------------------
Four replicated maps hold everything (``peer.core.replication``): ``jobs`` (job
id -> definition and the time it took effect), ``runs`` (run id -> record,
``peer.jobs.runs``), ``updates`` (data sent to running runs) and ``leases``
(job -> who walks its schedule, ``peer.jobs.leases``). Every node holds them all, so every node can answer for every job and run, and a
node's death loses nothing that reached one other node.

Ownership. A node is *eligible* to own work when it is live and says it is
``ready`` in its membership metadata: a node first spends ``settle``
seconds ``starting`` (catching up the maps, so it does not re-run what it has
not heard of yet) and says ``draining`` when leaving. Cron jobs in mode
``one`` are placed on the eligible nodes by consistent hashing
(``peer.jobs.ring``); a submitted run goes to its run id's owner on the ring; a
run of a job in mode ``all`` belongs to its node. Every node computes the
same owners from the same view, so no leader hands work out.

Run once. Views differ for a moment at every membership change, and "run
what your view makes yours" would then let two nodes run the same thing.
So no node starts a run on its view alone; every start is backed by a
token only one node holds, passed on explicitly: a cron job in mode ``one``
is walked by the holder of its lease, which a live holder transfers and
only a gone holder's is acquired (``peer.jobs.placement``); a pending run
names its assignee, and only when the assignee is gone does the run's owner
by view take it over, as a re-run (``peer.jobs.claims``).

The parts. ``Scheduler`` is the one face the node core and the driver use;
it holds the role and the timers of the node's life (settling, catching up,
draining) and hands everything else to its parts, each with its own theory
of operation:

- ``peer.jobs.local``: this node as all the parts see it (name, life,
  config, role, stats, the store, the effects owed to the driver);
- ``peer.jobs.view``: the members: who is eligible, who is gone, which life;
- ``peer.jobs.records``: the jobs, runs and updates maps as this node reads
  and writes them, the runs it is running, updates and readers;
- ``peer.jobs.ticks``: the walk of schedules: cursors, due ticks, misfire
  and overlap policies, look-backs, late jobs;
- ``peer.jobs.placement``: the ring, the owners, the leases;
- ``peer.jobs.claims``: claims, pending runs, failover, freezes, the drain's
  hand-back.

Each part knows only those listed before it (claims hand ticks their runs
through ``ticks.Claimer``, given with each call).

Time: ``wall_ms`` (epoch milliseconds) for everything the cluster shares
(ticks, records); all of it is injected, as is randomness.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from membership.state import Member
from peer.jobs.claims import FROZEN_GAP_MS, Claims
from peer.jobs.declared import CodeRevision, judge, revision
from peer.jobs.definition import JobSpec
from peer.jobs.local import (
    JOBS,
    LEASES,
    MAPS,
    RUNS,
    UPDATES,
    BacklogFull,
    CancelRun,
    DeliverUpdate,
    Local,
    Role,
    SchedulerConfig,
    SchedulerEffect,
    SchedulerStats,
    StartRun,
    Store,
    log,
)
from peer.jobs.placement import RING_REBUILD_MS, Placement
from peer.jobs.records import DEFAULT_RESULT_TTL, Execution, JobEntry, Records
from peer.jobs.runs import RunRecord, RunState, reader_key, submitted_run_id, update_key
from peer.jobs.ticks import TICK_EXPIRY_MARGIN_MS, Ticks
from peer.jobs.view import View

__all__ = [
    "DEFAULT_RESULT_TTL",
    "FROZEN_GAP_MS",
    "JOBS",
    "LEASES",
    "MAPS",
    "RING_REBUILD_MS",
    "RUNS",
    "TICK_EXPIRY_MARGIN_MS",
    "UPDATES",
    "BacklogFull",
    "CancelRun",
    "DeliverUpdate",
    "Execution",
    "JobEntry",
    "Role",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerEffect",
    "SchedulerStats",
    "StartRun",
    "Store",
]

# The order footprint() lists its tables in, whichever part holds them.
_FOOTPRINT = (
    "jobs", "unfinished", "running", "updates", "due", "pending_due", "members_left", "handovers",
    "leases_given", "latest_ticks", "walked", "lives", "written_at", "watched", "handed_on", "queued",
)


class Scheduler:
    def __init__(
        self, name: str, config: SchedulerConfig, store: Store, *, rng: random.Random, wall_ms: int, life: int = 1
    ) -> None:
        self._local = Local(name, life, config, store, started_at=wall_ms, ready_at=wall_ms + round(config.settle * 1000))
        self._store = store
        self._rng = rng
        self._last_tick = wall_ms
        self._defined_when_ready: list[JobSpec] = []
        self._declared: dict[str, tuple[JobSpec, str]] = {}  # job declared in code here -> (its spec, revision)
        self._declared_why: dict[str, str] = {}  # job declared here -> the last verdict on it, for status
        self._view = View(self._local)
        self._records = Records(self._local)
        self._ticks = Ticks(self._local, self._view, self._records, next_late_check=wall_ms)
        self._placement = Placement(self._local, self._view, self._records, self._ticks)
        self._claims = Claims(self._local, self._view, self._records, self._ticks, self._placement, next_scan=wall_ms)

    @property
    def name(self) -> str:
        return self._local.name

    @property
    def life(self) -> int:
        """Our incarnation at boot: names this life in the leases we hold."""
        return self._local.life

    @property
    def config(self) -> SchedulerConfig:
        return self._local.config

    @property
    def stats(self) -> SchedulerStats:
        return self._local.stats

    @property
    def role(self) -> Role:
        return self._local.role

    # -- the driver's interface -----------------------------------------------------

    def set_view(self, wall_ms: int, members: Sequence[Member]) -> None:
        """The membership view changed."""
        self._view.update(wall_ms, members)
        self._placement.mark_stale()
        self._claims.scan_soon()

    def on_changes(self, wall_ms: int, changes: Mapping[str, set[str]]) -> None:
        """Keys of our maps changed (written here, merged, or expired)."""
        jobs = sorted(changes.get(JOBS, ()))
        for job_id in jobs:
            self._load_job(job_id)
        if self.role is Role.READY:
            for job_id in jobs:
                if job_id in self._declared:
                    self._judge(wall_ms, job_id)  # a write that lost, a removal: put right (peer.jobs.declared)
        for run_id in sorted(changes.get(RUNS, ())):
            self._records.load_run(run_id)
        for job_id in sorted(changes.get(LEASES, ())):
            self._placement.load_lease(wall_ms, job_id)
        runs = {self._records.load_update(key, deliver=False) for key in sorted(changes.get(UPDATES, ()))}
        for run_id in sorted(runs & self._records.running.keys()):
            # Once all of a batch is in: updates that came in one packet go in order.
            self._records.deliver_updates(run_id)

    def tick(self, wall_ms: int, caught_up: bool = True, history_caught_up: bool = True, joined: bool = True) -> None:
        """``caught_up``: the node holds the cluster's job definitions (its
        jobs map matched a member's), or it is alone; ``history_caught_up``:
        the same of its runs map; ``joined``: it has found its cluster, or
        has none to find (no seeds): a node that has not never turns ready,
        however long it waits (it would own every job, beside a cluster it
        cannot reach)."""
        local = self._local
        self._claims.notice_freeze(wall_ms, self._last_tick)
        self._last_tick = wall_ms
        # Judged no sooner than our settle time: before a node has found the
        # cluster it looks alone, and a lone node holds all there is.
        if not local.history_held and wall_ms >= local.ready_at and (
            history_caught_up or wall_ms >= local.started_at + round(local.config.catch_up_window * 1000)
        ):
            local.history_held = True
        if local.role is Role.STARTING and joined and wall_ms >= local.ready_at and (
            caught_up or wall_ms >= local.started_at + round(local.config.settle_max * 1000)
        ):
            local.role = Role.READY
            self._placement.mark_stale()
            self._claims.scan_soon()
            for spec in self._defined_when_ready:
                self.add_job(wall_ms, spec)
            self._defined_when_ready.clear()
            for job_id in sorted(self._declared):
                self._judge(wall_ms, job_id)
        self._placement.place(wall_ms)
        self._ticks.check_late(wall_ms)
        self._claims.claim(wall_ms)
        self._records.write_progress(wall_ms)
        self._claims.hand_back_when_due(wall_ms)

    def next_deadline(self) -> int:
        """Epoch ms of the next thing to do."""
        local = self._local
        deadlines = [*self._claims.deadlines(self._last_tick), self._ticks.next_late_check, *self._placement.deadlines()]
        if local.role is Role.STARTING:
            # Past its settle time, a node waiting to catch up is woken by
            # the messages that bring it; at the latest, at settle_max.
            settle_max = local.started_at + round(local.config.settle_max * 1000)
            deadlines.append(local.ready_at if local.ready_at > self._last_tick else settle_max)
        deadlines.extend(e.progress_due for e in self._records.running.values() if e.progress_due is not None)
        return min(deadlines)

    def take_effects(self) -> list[SchedulerEffect]:
        effects, self._local.effects = self._local.effects, []
        return effects

    # -- what the driver reports -------------------------------------------------------

    def run_progress(self, wall_ms: int, run_id: str, attempt: int, value: Any) -> None:
        self._records.progress(wall_ms, run_id, attempt, value)

    def run_finished(self, wall_ms: int, run_id: str, attempt: int, ok: bool, result: Any = None, error: str | None = None) -> None:
        self._claims.finish(wall_ms, run_id, attempt, ok, result, error)

    # -- the application's interface ---------------------------------------------------

    def add_job(self, wall_ms: int, spec: JobSpec) -> bool:
        """Define or redefine a job; False if it was already defined so. A
        job declared in code keeps its revision (``peer.jobs.declared``): an
        operator's redefinition lasts until a new revision is rolled out."""
        current = self._records.jobs.get(spec.id)
        return self._put_job(wall_ms, spec, None if current is None else current.code)

    def _put_job(self, wall_ms: int, spec: JobSpec, code: CodeRevision | None) -> bool:
        current = self._records.jobs.get(spec.id)
        if current is not None and current.code == code and current.spec.to_wire() == spec.to_wire():
            return False
        since = wall_ms
        if current is not None and _same_timing(current.spec, spec):
            since = current.since  # an unrelated change does not restart its schedule
        self._store.put(JOBS, spec.id, JobEntry(spec, since, code).to_wire())
        self._load_job(spec.id)
        return True

    def declare(self, wall_ms: int, spec: JobSpec) -> None:
        """A job declared in code on this node (``peer.jobs.declared``):
        judged once settled (we then hold the cluster's definitions), and
        again each time its entry changes, for as long as this node lives.
        Declaring it again replaces this node's declaration."""
        self._declared[spec.id] = (spec, revision(spec))
        self._declared_why.pop(spec.id, None)
        if self.role is Role.READY:
            self._judge(wall_ms, spec.id)

    def declarations(self) -> dict[str, tuple[str, str]]:
        """Jobs declared in code here -> (their revision, what became of the
        declaration: ``waiting`` to settle, ``current``, ``replaced by
        revision ...``, or how it was applied)."""
        return {job_id: (rev, self._declared_why.get(job_id, "waiting")) for job_id, (_, rev) in sorted(self._declared.items())}

    def _judge(self, wall_ms: int, job_id: str) -> None:
        spec, rev = self._declared[job_id]
        entry = self._records.jobs.get(job_id)
        verdict = judge(spec, rev, None if entry is None else entry.spec, None if entry is None else entry.code)
        if verdict.apply:
            assert verdict.spec is not None
            self._put_job(wall_ms, verdict.spec, verdict.code)
            self._local.stats.declarations_applied += 1
            log.info("job %s: this node's declaration (revision %s) applied: %s", job_id, rev, verdict.why)
            self._declared_why[job_id] = "current"
        elif self._declared_why.get(job_id) != verdict.why:
            if verdict.why != "current":
                log.info("job %s: this node's declaration (revision %s) left as it is: %s", job_id, rev, verdict.why)
            self._declared_why[job_id] = verdict.why

    def define_when_ready(self, specs: Sequence[JobSpec]) -> None:
        """Define these jobs once settled (a jobs file read at start): by
        then we hold the cluster's definitions, so a restart re-defining
        the same jobs changes nothing, and their schedules do not restart."""
        if self.role is Role.STARTING:
            self._defined_when_ready.extend(specs)
        else:
            raise RuntimeError("define_when_ready() is for a starting node; use add_job()")

    def remove_job(self, job_id: str) -> bool:
        removed = self._store.remove(JOBS, job_id)
        self._load_job(job_id)
        return removed

    def set_paused(self, wall_ms: int, job_id: str, paused: bool) -> JobSpec:
        entry = self._records.jobs.get(job_id)
        if entry is None:
            raise KeyError(job_id)
        if entry.spec.paused != paused:
            spec = attrs.evolve(entry.spec, paused=paused)
            # Resuming starts the schedule afresh: ticks due while paused are not owed.
            self._store.put(JOBS, job_id, JobEntry(spec, wall_ms, entry.code).to_wire())
            self._load_job(job_id)
        return self._records.jobs[job_id].spec

    def submit(self, wall_ms: int, spec: JobSpec, *, run_at: int | None = None) -> str:
        """Queue one run of ``spec`` now (or at ``run_at``); its run id.
        ``BacklogFull`` when the cluster's pending runs, as this node sees
        them, are at ``max_pending_runs``: submits are refused rather than
        piling up in every node's memory faster than the cluster runs them."""
        backlog, bound = self._records.pending, self.config.max_pending_runs
        if backlog >= bound:
            self._local.stats.submits_refused += 1
            raise BacklogFull(backlog, bound)
        run_id = submitted_run_id(spec.id, wall_ms, self._rng)
        record = RunRecord(
            id=run_id, job=spec.id, state=RunState.PENDING, created=wall_ms,
            not_before=run_at if run_at is not None else wall_ms, spec=spec.to_wire(), via=self.name,
        )
        self._claims.assign(record, spec)  # ours to run, perhaps: its due entry looks at once
        return run_id

    def send(self, run_id: str, data: Any) -> str:
        """Deliver ``data`` to a run, whichever node runs it (or will)."""
        record = self.record(run_id)
        if record is None:
            raise KeyError(run_id)
        if record.state.finished:
            raise ValueError(f"run {run_id} has finished ({record.state.value})")
        key = update_key(run_id, self._rng)
        self._store.put(UPDATES, key, {"data": data}, ttl=self.config.update_ttl)
        self._records.load_update(key)
        return key

    def drain(self, wall_ms: int) -> None:
        """Start leaving: see the handoff paragraph of ``peer.jobs.claims``."""
        if self.role is Role.DRAINING:
            return
        self._local.role = Role.DRAINING
        self._claims.drain(wall_ms)
        self._placement.mark_stale()

    @property
    def drained(self) -> bool:
        return self.role is Role.DRAINING and not self._records.running

    def watch(self, run_id: str) -> bool:
        """Note every change of this run's record here, for
        ``take_watched_changes`` (someone waits on it). Unless the run has
        finished, or its outcome comes here anyway (we run it, or it was
        submitted through us), ask for it: a reader mark in the updates
        map, handed to the run's owner, which hands the outcome to every
        reader directly when it has one. Whether it asked (effects to
        carry out)."""
        self._records.watch(run_id)
        record = self.record(run_id)
        if record is not None and (record.state.finished or self.name in (record.via, record.owner)):
            return False
        key = reader_key(run_id, self.name)
        if self._store.get(UPDATES, key) is None:
            self._store.put(UPDATES, key, {"reader": self.name}, ttl=self.config.update_ttl)
            self._records.load_update(key)
        # To whoever runs it (again at each change the waiter sees: it may
        # change hands); a run not heard of yet is a one-off submitted
        # elsewhere, on its way to the owner of its id on the ring.
        owner = self._placement.ring.owner(run_id) if record is None else record.owner
        if owner is not None and owner != self.name:
            self._store.push(UPDATES, key, [owner])
        return True

    def unwatch(self, run_id: str) -> None:
        self._records.unwatch(run_id)

    def take_watched_changes(self) -> set[str]:
        """The watched runs whose record changed since the last call."""
        return self._records.take_watched_changes()

    # -- reading, for the API -------------------------------------------------------

    def jobs(self) -> dict[str, JobEntry]:
        return dict(self._records.jobs)

    def job_owner(self, job_id: str) -> str | None:
        """Who runs the job's ticks (mode one), by this node's view."""
        return self._placement.owner(job_id)

    def runs_ticks_of(self, spec: JobSpec) -> str | None:
        """Who runs the job's ticks by this node's view: a node, ``all``
        (mode all), or None (no schedule, paused, or no eligible node)."""
        if spec.schedule is None or spec.paused:
            return None
        return "all" if spec.mode == "all" else self.job_owner(spec.id)

    def record(self, run_id: str) -> RunRecord | None:
        return self._records.record(run_id)

    def records(self) -> Iterator[RunRecord]:
        return self._records.records()

    def running(self) -> dict[str, RunRecord]:
        return {run_id: execution.record for run_id, execution in self._records.running.items()}

    def eligible(self) -> tuple[str, ...]:
        return self._placement.ring.members

    def queued(self) -> int:
        """Due runs of this node's waiting here for a slot (``max_running_runs``)."""
        return self._claims.queued

    def backlog(self) -> int:
        """Pending runs in the runs map, anyone's: the cluster's backlog, as this node sees it."""
        return self._records.pending

    def footprint(self) -> dict[str, int]:
        """How many entries each of this node's own tables holds: none may
        grow without bound (checked by the chaos campaigns)."""
        sizes = {
            **self._records.footprint(),
            **self._ticks.footprint(),
            **self._placement.footprint(),
            **self._view.footprint(),
            "queued": self._claims.queued,
        }
        return {table: sizes[table] for table in _FOOTPRINT}

    def late_jobs(self) -> dict[str, int]:
        """Jobs whose latest tick due by more than its grace has no record
        (job -> that tick): found by the last scan."""
        return self._ticks.late_jobs()

    # -- a job's definition changed --------------------------------------------------------

    def _load_job(self, job_id: str) -> None:
        old, entry = self._records.load_job(job_id)
        if entry is None:
            self._placement.forget(job_id, defined=old is not None)
            self._ticks.forget(job_id)
        elif old is not None and (not _same_timing(old.spec, entry.spec) or old.since != entry.since):
            self._ticks.restart(job_id)  # walk the new schedule from its start
        self._placement.jobs_changed()


def _same_timing(a: JobSpec, b: JobSpec) -> bool:
    return (a.schedule, a.mode, a.paused) == (b.schedule, b.mode, b.paused)
