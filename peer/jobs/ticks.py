"""The walk of schedules: cursors, the heap of due ticks, look-backs, late jobs.

Theory of operation
-------------------
The node walks the schedule of each job it holds the lease of (mode
``one``, ``peer.jobs.placement`` says which and from where) and of each job
in mode ``all`` with a cursor: the last tick handled. The next tick after
the cursor waits in a heap until it is due (entries the cursor has moved
past, or of a job moved elsewhere or redefined, are skipped when popped).

A tick that already has a record was handled (by us or a previous holder);
otherwise the holder applies the job's policies: late by more than its
grace, it is a misfire (``skip``: recorded ``missed``; ``once``: only the
last of a backlog runs; ``all``: every one runs); with a previous run still
going, the overlap policy (``allow`` runs both; ``forbid`` records
``skipped``; ``replace`` cancels the old one). What runs is handed to the
claims (``Claimer``, ``peer.jobs.claims``), which claim and start it.

Look-backs. A lease acquired from a gone holder may start its walk before
our own start. Those ticks wait until we hold the records made before we
started (``Local.history_held``): one without a record may have run. Then
they are judged, and only then the ticks since our start behind them: a
job's ticks are handled in order, so a recorded tick tells that all before
it were. A job whose lease we acquired also waits a handover time before
its first ticks are due, for a rival's claims to arrive.

Late jobs. Every ``late_check_interval`` the node looks for jobs whose
latest tick due by more than its grace has no record: no owner ran it (none
eligible, or something is wrong). They are shown, not run.
"""

from __future__ import annotations

import heapq
from typing import Protocol

import attrs

from peer.jobs.definition import JobSpec
from peer.jobs.local import RUNS, Local
from peer.jobs.records import Records
from peer.jobs.runs import RunEvent, RunRecord, RunState, advance, tick_run_id
from peer.jobs.view import View

# A tick this close to its result TTL's end may have lost its record already
# (expiry is by the clock of the node that wrote it): it is not judged.
TICK_EXPIRY_MARGIN_MS = 5_000


class Claimer(Protocol):
    """Where the ticks to run go (``peer.jobs.claims.Claims``)."""

    def start(self, wall_ms: int, record: RunRecord, spec: JobSpec, *, attempt: int, takeover: bool = False) -> None: ...

    def cancel(self, wall_ms: int, record: RunRecord, spec: JobSpec | None, reason: str) -> None: ...

    def room(self, *, urgent: bool = False) -> bool:
        """May the node start one more run: into any of its ``max_running_runs``
        slots when ``urgent`` (a tick), else outside the reserved ones?"""

    def defer(self, wall_ms: int, record: RunRecord, spec: JobSpec) -> None:
        """Keep this tick pending, ours, until a slot frees (then ``decide`` again)."""


@attrs.define(eq=False)
class Ticks:
    _local: Local
    _view: View
    _records: Records
    _next_late_check: int
    _cursors: dict[str, int] = attrs.field(init=False, factory=dict)  # job I schedule -> last tick handled
    # Job -> the last tick we handled of it: outlives the cursor, which
    # goes as soon as our view moves the job, while the lease may stay
    # with us a while longer (a forward delay) before we hand it on.
    _walked: dict[str, int] = attrs.field(init=False, factory=dict)
    _due: list[tuple[int, int, str]] = attrs.field(init=False, factory=list)  # heap of (due, tick, job); stale entries skipped
    _lookback: dict[str, int] = attrs.field(init=False, factory=dict)  # job -> ticks after this and up to our start wait for that
    # Job whose lease we acquired -> until when to wait for a rival's claims.
    _handover_until: dict[str, int] = attrs.field(init=False, factory=dict)
    _late: dict[str, int] = attrs.field(init=False, factory=dict)  # job -> the tick found late, for status

    @property
    def next_late_check(self) -> int:
        return self._next_late_check

    def next_due(self) -> int | None:
        return self._due[0][0] if self._due else None

    def late_jobs(self) -> dict[str, int]:
        return dict(self._late)

    # -- what placement decides ---------------------------------------------------------

    def walk(self, mine: dict[str, tuple[int, bool]]) -> None:
        """Walk these jobs' schedules (job -> (cursor to start from, may
        look back before our start)), and no others."""
        for job_id in list(self._cursors):
            if job_id not in mine:
                del self._cursors[job_id]
                self._lookback.pop(job_id, None)
        for job_id, (start, look_back) in mine.items():
            if job_id not in self._cursors:
                self._cursors[job_id] = start
                if look_back and start < self._local.started_at and not self._local.history_held:
                    # Ticks from before our start wait until we hold their
                    # records, and the later ones behind them (judge_lookback).
                    self._lookback[job_id] = start
                    self._cursors[job_id] = self._local.started_at
                else:
                    self._schedule_next(job_id)

    def walks(self, job_id: str) -> bool:
        return job_id in self._cursors

    def walked_to(self, job_id: str, cursor: int | None) -> int | None:
        """The last tick of a job we handled, or else ``cursor`` (a lease's):
        every one up to it has a record."""
        if job_id in self._lookback:
            return self._lookback[job_id]
        walked = [t for t in (self._cursors.get(job_id), self._walked.get(job_id), cursor) if t is not None]
        return max(walked, default=None)

    def wait_handover(self, job_id: str, until: int) -> None:
        self._handover_until[job_id] = until

    def end_handover(self, job_id: str) -> None:
        self._handover_until.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        """The job is no longer defined."""
        self._handover_until.pop(job_id, None)
        self._walked.pop(job_id, None)
        self._late.pop(job_id, None)

    def restart(self, job_id: str) -> None:
        """The job's timing changed: walk the new schedule from its start."""
        self._cursors.pop(job_id, None)
        self._walked.pop(job_id, None)

    # -- the walk --------------------------------------------------------------------------

    def fire_due(self, wall_ms: int, claims: Claimer) -> None:
        budget = self._local.config.catch_up_limit
        jobs = self._records.jobs
        while self._due and self._due[0][0] <= wall_ms and budget > 0:
            _, tick, job_id = heapq.heappop(self._due)
            cursor = self._cursors.get(job_id)
            entry = jobs.get(job_id)
            if cursor is None or entry is None or entry.spec.schedule is None or tick != entry.spec.schedule.next_after(cursor):
                continue  # stale: the job moved, changed, or this tick was handled
            budget -= 1
            self._cursors[job_id] = tick
            self._walked[job_id] = max(tick, self._walked.get(job_id, tick))
            self._schedule_next(job_id)
            self._on_tick(wall_ms, entry.spec, tick, claims)

    def judge_lookback(self, wall_ms: int, claims: Claimer) -> None:
        """Once we hold the records made before we started: handle the
        ticks from then that nobody recorded, once their old owner's claims
        have had their handover time too."""
        if not (self._local.history_held and self._lookback):
            return
        for job_id, start in list(self._lookback.items()):
            if self._handover_until.get(job_id, 0) > wall_ms:
                continue
            del self._lookback[job_id]
            entry = self._records.jobs.get(job_id)
            if entry is None or entry.spec.schedule is None or job_id not in self._cursors:
                continue
            for tick in entry.spec.schedule.ticks_between(start, self._local.started_at, self._local.config.catch_up_limit):
                self._on_tick(wall_ms, entry.spec, tick, claims)
            # Only now the ticks since our start: a job's ticks are handled
            # in order, so a recorded tick tells that all before it were.
            self._schedule_next(job_id)

    def _on_tick(self, wall_ms: int, spec: JobSpec, tick: int, claims: Claimer) -> None:
        local = self._local
        node = local.name if spec.mode == "all" else None
        run_id = tick_run_id(spec.id, tick, node)
        if local.store.get(RUNS, run_id, expired=True) is not None:
            # Handled already, by us or the job's previous owner; its record
            # may read as expired by a clock ahead of its writer's, but it
            # is held for as long as clocks may differ.
            return
        if wall_ms - tick > round(spec.result_ttl * 1000) - TICK_EXPIRY_MARGIN_MS:
            # So old that its record may have expired (a look-back drawn when
            # a lease was acquired, judged a handover or a catch-up later):
            # no record tells nothing, and running it could run it twice.
            return
        # owner: who decided, should the tick be recorded missed or skipped.
        record = RunRecord(id=run_id, job=spec.id, state=RunState.PENDING, owner=local.name, tick=tick, node=node, created=wall_ms)
        self.decide(wall_ms, spec, record, claims)

    def decide(self, wall_ms: int, spec: JobSpec, record: RunRecord, claims: Claimer, *, waited: bool = False) -> None:
        """Apply the job's policies to a due tick (``record``, pending, ours)
        and run it, record it missed or skipped, or (the node at its limit)
        defer it. A deferred tick (``waited``) is decided again, by the same
        rules, when it gets a slot: as if it had just become due."""
        local = self._local
        assert record.tick is not None
        tick, node = record.tick, record.node
        late = wall_ms - tick > round(spec.grace * 1000)
        if late:
            # A deferred tick's job may have been redefined meanwhile, without a schedule.
            backlog = spec.schedule is not None and spec.schedule.next_after(tick) <= wall_ms
            if spec.misfire == "skip" or (spec.misfire == "once" and backlog):
                local.stats.ticks_missed += 1
                reason = f"late by {(wall_ms - tick) / 1000:.1f} s, over the grace of {spec.grace:g} s"
                if waited:
                    reason += f", waiting for a free slot (at most {local.config.max_running_runs} runs at once on {local.name})"
                if spec.misfire == "once":
                    reason += "; a later tick runs instead"
                self._records.write(advance(record, RunEvent.MISS, wall_ms, error=reason), spec)
                return
        # Runs still going: a dead owner's claim is not one (its run will be
        # re-run), nor a pending retry or hand-back.
        previous = [
            r
            for r in self._records.unfinished.values()
            if r.job == spec.id
            and r.node == node
            and r.id != record.id
            and r.state is RunState.RUNNING
            and r.owner is not None
            and not self._view.failed(wall_ms, r.owner)
        ]
        if previous and spec.overlap == "forbid":
            local.stats.ticks_skipped += 1
            reason = f"{previous[0].id} was still running"
            self._records.write(advance(record, RunEvent.SKIP, wall_ms, error=reason), spec)
            return
        if spec.overlap == "replace":
            for old in previous:
                claims.cancel(wall_ms, old, spec, f"replaced by {record.id}")
        if not claims.room(urgent=True):
            claims.defer(wall_ms, record, spec)
            return
        local.stats.ticks_run += 1
        local.stats.ticks_late += late
        claims.start(wall_ms, record, spec, attempt=1)

    def _schedule_next(self, job_id: str) -> None:
        schedule = self._records.jobs[job_id].spec.schedule
        assert schedule is not None
        tick = schedule.next_after(self._cursors[job_id])
        due = tick
        handover_until = self._handover_until.get(job_id, 0)
        if tick < handover_until:
            # A claim made at the tick, or when the job reached its old
            # owner (no sooner than it reached us), has had the handover
            # time to arrive.
            handover = round(self._local.config.handover * 1000)
            due = max(tick + handover, handover_until)
        heapq.heappush(self._due, (due, tick, job_id))

    # -- late jobs --------------------------------------------------------------------------

    def check_late(self, wall_ms: int) -> None:
        if wall_ms >= self._next_late_check:
            self._next_late_check = wall_ms + round(self._local.config.late_check_interval * 1000)
            self._find_late(wall_ms)

    def _find_late(self, wall_ms: int) -> None:
        """Jobs whose last tick due beyond its grace has no record: no
        owner ran it (none eligible, or something is wrong)."""
        self._late.clear()
        for job_id, entry in self._records.jobs.items():
            spec = entry.spec
            if spec.schedule is None or spec.paused:
                continue
            tick = spec.schedule.previous_at_or_before(wall_ms - round(spec.grace * 1000))
            if tick is None or tick <= entry.since or wall_ms - tick > spec.result_ttl * 1000:
                continue
            node = self._local.name if spec.mode == "all" else None
            if self._records.record(tick_run_id(job_id, tick, node)) is None:
                self._late[job_id] = tick

    def footprint(self) -> dict[str, int]:
        return {"due": len(self._due), "handovers": len(self._handover_until), "walked": len(self._walked)}
