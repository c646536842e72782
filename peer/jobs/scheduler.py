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
token only one node holds, passed on explicitly:

- A cron job in mode ``one`` is walked by the holder of its lease
  (``peer.jobs.leases``): a live holder whose view moves the job elsewhere
  transfers the lease, with the last tick it handled, to the new owner,
  which goes on from there; only a gone holder's lease (failed, left, an
  ended life) is acquired, by the owner by view, which waits a handover
  time for a rival acquisition and then looks back over the ticks nobody
  recorded after the latest one with an outcome (a claim alone may have
  died with its holder, and earlier claims of the same moment with it).
- A pending run (a submit, a retry, a hand-back) names its assignee, the
  owner by its writer's view, and is sent to it directly; only the
  assignee claims it. Only when the assignee is gone does the run's owner
  by view take it over, as a re-run (attempt + 1: the assignee may have
  started it unseen), after a handover time if the ring just changed.

Ticks. The holder walks each job's schedule with a cursor. A tick that
already has a record was handled (by us or a previous holder); otherwise
the holder applies the job's policies: late by more than its grace, it is a
misfire (``skip``: recorded ``missed``; ``once``: only the last of a
backlog runs; ``all``: every one runs); with a previous run still going, the
overlap policy (``allow`` runs both; ``forbid`` records ``skipped``;
``replace`` cancels the old one).

Claims and conflicts. To run a tick or a pending run the node writes a
``running`` record (the claim) and starts it; the claim and the outcome are
also sent directly to the node that would take the run over if we died
(the next on the ring), since gossip may be slow. The gossip of an
unfinished record (pending, a claim) waits ``gossip_hold`` (a second) for
the outcome, so a short run spreads once, as its outcome. Should two claims meet
anyway (a failover under disagreeing views, a partition), the runs map's
precedence picks the same winner on every node and the loser cancels
(``peer.jobs.runs``). Duplicates are counted, never hidden.

Failover. Every ``scan_interval`` (and on each view change) a node looks
at the unfinished runs: a ``running`` record whose claimant is gone (dead,
left, unknown, or a life that ended: its node restarted since) is re-run
by the run's current owner as attempt + 1, up to ``max_failovers`` times
beyond the job's retries, then recorded ``lost``. A takeover's claim goes
to every live member directly (views are changing: any of them may be the
next to think the run is its own), and a node holding a claim of an ended
life hands it on while the life's grace runs (it may hold the only copy).

Outcomes where they are awaited. A submitted run names the node it came
through (``via``); a node where someone waits on a run that has not
finished there (``watch``) writes a reader mark in the updates map and
hands it to the run's owner. The outcome goes directly to both, besides
the successor; a mark that comes after the outcome is answered at once.

Handoff. ``drain`` makes the node ``draining``: it leaves the ring (its
leases go to their new owners at once, its pending runs to new assignees),
claims nothing new, lets its running runs finish for up to
``drain_timeout``, then cancels them and hands each back as a ``pending``
record assigned to its next owner. ``drained`` tells the node it may push
its state and leave.

Time: ``wall_ms`` (epoch milliseconds) for everything the cluster shares
(ticks, records); all of it is injected, as is randomness.
"""

from __future__ import annotations

import enum
import heapq
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs

from crdt.hlc import Timestamp
from crdt.ormap import Register
from crdt.values import NotReplicable, replicated_form
from membership.state import Member, Status
from peer.jobs.definition import JobError, JobSpec
from peer.jobs.leases import ACQUIRE, TRANSFER, Lease, same_life
from peer.jobs.ring import Ring
from peer.jobs.runs import (
    MAX_ERROR_CHARS,
    MAX_PROGRESS_BYTES,
    RunEvent,
    RunRecord,
    RunState,
    advance,
    reader_key,
    reader_of,
    run_of_update,
    submitted_run_id,
    tick_run_id,
    update_key,
)

log = logging.getLogger(__name__)

JOBS, RUNS, UPDATES, LEASES = "jobs", "runs", "updates", "leases"
# At most one new ring per this many milliseconds.
RING_REBUILD_MS = 100
# Called this much later than the scan interval allows, the node was frozen
# (SIGSTOP, a paused VM) or its clock jumped.
FROZEN_GAP_MS = 1_000
# How long a finished run of a job no longer defined stays readable.
DEFAULT_RESULT_TTL = 600.0
MAPS = (JOBS, RUNS, UPDATES, LEASES)
# A tick this close to its result TTL's end may have lost its record already
# (expiry is by the clock of the node that wrote it): it is not judged.
TICK_EXPIRY_MARGIN_MS = 5_000


class Role(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"

    @property
    def meta(self) -> bytes:
        """How the role travels in membership metadata."""
        return self.value.encode()


@attrs.frozen
class SchedulerConfig:
    settle: float = 2.0  # seconds a new node catches up before owning work...
    settle_max: float = 10.0  # ...and at most this long while its jobs map matches no member's
    drain_timeout: float = 30.0  # seconds a leaving node lets its runs finish
    scan_interval: float = 1.0  # seconds between looks for orphaned and pending runs
    progress_interval: float = 0.5  # at most one progress write per run this often
    max_failovers: int = 3  # re-runs after owner failures, beyond the job's retries
    catch_up_limit: int = 1000  # ticks per job handled in one go
    update_ttl: float = 3600.0  # seconds an update sent to a run is kept
    unfinished_ttl: float = 86400.0  # seconds an unfinished record lives past its timeout
    load_factor: float | None = None  # bounded loads (e.g. 1.1): no node above this x the mean
    handover: float = 1.5  # seconds a job's new owner waits for its old owner's last claims
    late_check_interval: float = 5.0  # seconds between looks for late jobs
    catch_up_window: float = 30.0  # at most this long a new node waits to hold older records before judging older ticks
    left_grace: float = 5.0  # seconds a left owner's last records get to arrive before its runs are re-run
    forward_delay: float = 0.25  # seconds a node holds a lease it was given but will not run before passing it on
    lease_ttl: float = 86400.0  # seconds a lease lives unless renewed (it is, at every transfer and acquisition)
    gossip_hold: float = 1.0  # seconds an unfinished record waits before it is gossiped (the outcome may replace it first)


# -- effects: what the driver must do ------------------------------------------------


@attrs.frozen
class StartRun:
    run_id: str
    attempt: int
    spec: JobSpec
    tick: int | None


@attrs.frozen
class CancelRun:
    run_id: str
    attempt: int
    reason: str


@attrs.frozen
class DeliverUpdate:
    run_id: str
    attempt: int
    data: Any


SchedulerEffect = StartRun | CancelRun | DeliverUpdate


class Store(Protocol):
    """The replicated maps, as the node offers them."""

    def put(self, map_name: str, key: str, value: Any, *, ttl: float | None = None, hold: float = 0.0) -> Timestamp:
        """Write; with ``hold``, gossip it only that many seconds later unless written again."""

    def remove(self, map_name: str, key: str) -> bool: ...

    def push(self, map_name: str, key: str, members: Sequence[str], *, reliable: bool = False) -> None:
        """Send the key's entry to these members directly, now (it is gossiped too); by
        datagram, or with ``reliable`` over the stream channel (loss cannot drop it)."""

    def get(self, map_name: str, key: str, *, expired: bool = False) -> Register | None:
        """A key's value; with ``expired``, also one that expired but is still held."""

    def items(self, map_name: str) -> Iterator[tuple[str, Register]]: ...


@attrs.define
class SchedulerStats:
    ticks_run: int = 0  # ticks this node started
    ticks_late: int = 0  # of which started later than their grace
    ticks_missed: int = 0  # recorded missed (misfire policy)
    ticks_skipped: int = 0  # recorded skipped (overlap policy)
    runs_started: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0  # finished failed, after their last attempt
    retries: int = 0
    failovers: int = 0  # runs re-run after their owner failed
    claims_lost: int = 0  # runs cancelled because another claim won
    lost_refuted: int = 0  # our runs others recorded lost, taking us for failed: we ran on
    thaws: int = 0  # times we found we had been frozen (or our clock jumped), and read before claiming
    handed_back: int = 0
    lost: int = 0
    bad_records: int = 0  # records or definitions from peers that did not parse


@attrs.define
class Execution:
    """A run this node is running."""

    record: RunRecord
    spec: JobSpec
    delivered: set[str] = attrs.Factory(set)
    progress_written: int = 0  # when progress was last written
    progress_due: int | None = None  # when to write progress reported since


@attrs.define
class JobEntry:
    spec: JobSpec
    since: int  # epoch ms the definition took effect: no tick before it is due

    def next_tick(self, now_ms: int) -> int | None:
        """Epoch ms of the job's next tick due after ``now_ms``; None for a
        job with no schedule, a paused one, or past the last year a cron
        schedule is computed for."""
        schedule = self.spec.schedule
        if schedule is None or self.spec.paused:
            return None
        try:
            return schedule.next_after(max(now_ms, self.since))
        except ValueError:
            return None


class Scheduler:
    def __init__(
        self, name: str, config: SchedulerConfig, store: Store, *, rng: random.Random, wall_ms: int, life: int = 1
    ) -> None:
        self.name = name
        self.life = life  # our incarnation at boot: names this life in the leases we hold
        self.config = config
        self.stats = SchedulerStats()
        self._store = store
        self._rng = rng
        self.role = Role.STARTING
        self._started_at = wall_ms
        self._last_tick = wall_ms
        self._ready_at = wall_ms + round(config.settle * 1000)
        # Until we can vouch we hold the run records made before we started
        # (our runs map matched a member's, or the catch-up window passed),
        # ticks from before our start wait: one without a record may have run.
        self._history_held = False
        self._thawing_until = 0  # after a freeze, claim nothing before this
        self._lookback: dict[str, int] = {}  # job -> ticks after this and up to our start wait for that
        self._left_seen: dict[str, int] = {}  # member -> when we saw it had left
        self._drain_deadline: int | None = None
        self._members: dict[str, Member] = {}
        self._jobs: dict[str, JobEntry] = {}
        self._ring = Ring(())
        self._previous_ring = self._ring  # before the last change, with when it changed:
        self._ring_changed_at = 0  # a pending run's old owner may be claiming it still
        self._owners: dict[str, str] = {}  # cron job in mode one -> owner
        self._cursors: dict[str, int] = {}  # job I schedule -> last tick handled
        # Job -> the last tick we handled of it: outlives the cursor, which
        # goes as soon as our view moves the job, while the lease may stay
        # with us a while longer (a forward delay) before we hand it on.
        self._walked: dict[str, int] = {}
        self._due: list[tuple[int, int, str]] = []  # heap of (due, tick, job); stale entries skipped
        self._pending_due: list[tuple[int, str]] = []  # heap of (not before, run) of pending runs
        self._handover_until: dict[str, int] = {}  # job whose lease we acquired -> until when to wait for a rival's
        self._given_at: dict[str, int] = {}  # job whose lease was handed to us -> when it arrived
        self._leases_changed = False
        self._replace_at: int | None = None  # when to place again: a lease we may pass on
        self._written_at: dict[str, int] = {}  # unfinished run -> wall ms of its record's stamp
        self._latest_tick: dict[str, int] = {}  # job in mode one -> the latest tick of it with an outcome recorded
        self._lives: dict[str, tuple[int, int]] = {}  # member -> (incarnation its life began with, when we saw it)
        self._next_late_check = wall_ms
        self._unfinished: dict[str, RunRecord] = {}  # pending and running records
        self._updates: dict[str, set[str]] = {}  # run -> its update keys
        self._running: dict[str, Execution] = {}
        self._effects: list[SchedulerEffect] = []
        self._placement_stale = True
        self._jobs_changed = True
        self._placed_as: Role | None = None
        self._next_scan = wall_ms
        self._late: dict[str, int] = {}  # job -> the tick found late, for status
        self._defined_when_ready: list[JobSpec] = []
        self._watched: set[str] = set()  # runs the driver wants to hear of (someone waits on them)
        self._watched_changed: set[str] = set()
        self._handed_on: set[str] = set()  # claims of ended lives we handed on while their grace runs

    # -- the driver's interface -----------------------------------------------------

    def set_view(self, wall_ms: int, members: Sequence[Member]) -> None:
        """The membership view changed."""
        self._members = {member.name: member for member in members}
        for member in members:
            life = self._lives.get(member.name)
            if life is None or not same_life(member.incarnation, life[0]):
                self._lives[member.name] = (member.incarnation, wall_ms)
            if member.status is Status.LEFT:
                self._left_seen.setdefault(member.name, wall_ms)
            else:
                self._left_seen.pop(member.name, None)
        for name in self._lives.keys() - self._members.keys():
            del self._lives[name]
        self._placement_stale = True
        self._next_scan = 0

    def on_changes(self, wall_ms: int, changes: Mapping[str, set[str]]) -> None:
        """Keys of our maps changed (written here, merged, or expired)."""
        for job_id in sorted(changes.get(JOBS, ())):
            self._load_job(job_id)
        for run_id in sorted(changes.get(RUNS, ())):
            self._load_run(run_id)
        for job_id in sorted(changes.get(LEASES, ())):
            self._load_lease(wall_ms, job_id)
        runs = {self._load_update(key, deliver=False) for key in sorted(changes.get(UPDATES, ()))}
        for run_id in sorted(runs & self._running.keys()):
            # Once all of a batch is in: updates that came in one packet go in order.
            self._deliver_updates(run_id)

    def tick(self, wall_ms: int, caught_up: bool = True, history_caught_up: bool = True, joined: bool = True) -> None:
        """``caught_up``: the node holds the cluster's job definitions (its
        jobs map matched a member's), or it is alone; ``history_caught_up``:
        the same of its runs map; ``joined``: it has found its cluster, or
        has none to find (no seeds): a node that has not never turns ready,
        however long it waits (it would own every job, beside a cluster it
        cannot reach)."""
        if wall_ms - self._last_tick > round(self.config.scan_interval * 1000) + FROZEN_GAP_MS:
            # What others wrote while we were frozen (claims, results) is in
            # our inbox still: read it before claiming anything, as a new
            # owner waits for an old owner's claims.
            self._thawing_until = wall_ms + round(self.config.handover * 1000)
            self.stats.thaws += 1
        self._last_tick = wall_ms
        # Judged no sooner than our settle time: before a node has found the
        # cluster it looks alone, and a lone node holds all there is.
        if not self._history_held and wall_ms >= self._ready_at and (
            history_caught_up or wall_ms >= self._started_at + round(self.config.catch_up_window * 1000)
        ):
            self._history_held = True
        if self.role is Role.STARTING and joined and wall_ms >= self._ready_at and (
            caught_up or wall_ms >= self._started_at + round(self.config.settle_max * 1000)
        ):
            self.role = Role.READY
            self._placement_stale = True
            self._next_scan = 0
            for spec in self._defined_when_ready:
                self.add_job(wall_ms, spec)
            self._defined_when_ready.clear()
        if self._placement_stale or (self._replace_at is not None and wall_ms >= self._replace_at):
            self._place(wall_ms)
        if wall_ms >= self._next_late_check:
            self._next_late_check = wall_ms + round(self.config.late_check_interval * 1000)
            self._find_late(wall_ms)
        if wall_ms >= self._thawing_until:
            self._claim(wall_ms)
        self._write_progress(wall_ms)
        if self._drain_deadline is not None and wall_ms >= self._drain_deadline:
            self._hand_back(wall_ms)

    def _claim(self, wall_ms: int) -> None:
        """Run what is due: ticks, the ticks from before our start, pending
        runs and failovers (by the scan)."""
        if self.role is not Role.READY:
            # Draining claims nothing new, even before the debounced ring
            # rebuild drops our cursors: a run started now could outlive
            # the node, which may be leaving already (chaos seed 231). It
            # only passes on what was assigned to it.
            if self.role is Role.DRAINING and wall_ms >= self._next_scan:
                self._next_scan = wall_ms + round(self.config.scan_interval * 1000)
                self._scan(wall_ms)
            return
        self._fire_due_ticks(wall_ms)
        if self._history_held and self._lookback:
            self._judge_lookback(wall_ms)
        while self._pending_due and self._pending_due[0][0] <= wall_ms:
            # A submit, a retry or a hand-back is due: look at it now (the
            # scan, which looks at every unfinished run, is for failovers:
            # once per scan interval, not once per run in a burst).
            _, run_id = heapq.heappop(self._pending_due)
            record = self._unfinished.get(run_id)
            if record is not None and record.state is RunState.PENDING and run_id not in self._running:
                if (record.not_before or 0) <= wall_ms:
                    self._consider_pending(wall_ms, record, self._run_owner(record))
        if wall_ms >= self._next_scan:
            self._next_scan = wall_ms + round(self.config.scan_interval * 1000)
            self._scan(wall_ms)

    def next_deadline(self) -> int:
        """Epoch ms of the next thing to do."""
        claims = [self._next_scan]
        if self._due:
            claims.append(self._due[0][0])
        if self._pending_due:
            claims.append(self._pending_due[0][0])
        if self.role is Role.STARTING:
            claims = []  # nothing to claim (see _claim)
        elif self._thawing_until > self._last_tick:
            claims = [self._thawing_until]  # thawing: nothing before (draining too: chaos seed 471 spun)
        elif self.role is Role.DRAINING:
            claims = [self._next_scan]  # only to pass on what was assigned to us
        deadlines = [*claims, self._next_late_check]
        if self._replace_at is not None:
            # No sooner than a debounced ring rebuild may run: a deadline
            # _place() would only put off again is a busy loop (sim seed 38).
            deadlines.append(max(self._replace_at, self._ring_changed_at + RING_REBUILD_MS))
        if self._placement_stale:
            deadlines.append(self._ring_changed_at + RING_REBUILD_MS)
        if self.role is Role.STARTING:
            # Past its settle time, a node waiting to catch up is woken by
            # the messages that bring it; at the latest, at settle_max.
            settle_max = self._started_at + round(self.config.settle_max * 1000)
            deadlines.append(self._ready_at if self._ready_at > self._last_tick else settle_max)
        if self._drain_deadline is not None and self._running:
            deadlines.append(self._drain_deadline)
        deadlines.extend(e.progress_due for e in self._running.values() if e.progress_due is not None)
        return min(deadlines)

    def take_effects(self) -> list[SchedulerEffect]:
        effects, self._effects = self._effects, []
        return effects

    # -- what the driver reports -------------------------------------------------------

    def run_progress(self, wall_ms: int, run_id: str, attempt: int, value: Any) -> None:
        execution = self._execution(run_id, attempt)
        if execution is None:
            return
        try:
            value = replicated_form(value, MAX_PROGRESS_BYTES)
        except NotReplicable:  # not plain data, or too much: show what it was
            value = repr(value)[:200]
        execution.record = execution.record.evolve(progress=value)
        if execution.progress_due is None:
            # Progress is a rate-limited view: one write per interval at most.
            interval = round(self.config.progress_interval * 1000)
            execution.progress_due = max(wall_ms, execution.progress_written + interval)
            self._write_progress(wall_ms)

    def run_finished(self, wall_ms: int, run_id: str, attempt: int, ok: bool, result: Any = None, error: str | None = None) -> None:
        execution = self._execution(run_id, attempt)
        if execution is None:
            return  # cancelled meanwhile: its record was already decided
        del self._running[run_id]
        record, spec = execution.record, execution.spec
        readers = self._readers(run_id)  # before the outcome's write forgets them
        if ok:
            self.stats.runs_succeeded += 1
            finished = advance(record, RunEvent.SUCCEED, wall_ms, result=result)
            self._write(finished, spec)
            self._back_up(finished, also=readers)
        elif attempt <= spec.retries:  # a draining node too: the retry goes to the next owner
            self.stats.retries += 1
            retry_at = wall_ms + round(spec.retry_delay(attempt + 1) * 1000)
            self._assign(
                advance(record, RunEvent.RETRY, wall_ms, not_before=retry_at, result=result, error=_bounded(error)),
                spec,
            )
        else:
            self.stats.runs_failed += 1
            failed = advance(record, RunEvent.FAIL, wall_ms, result=result, error=_bounded(error))
            self._write(failed, spec)
            self._back_up(failed, also=readers)

    # -- the application's interface ---------------------------------------------------

    def add_job(self, wall_ms: int, spec: JobSpec) -> bool:
        """Define or redefine a job; False if it was already defined so."""
        wire = spec.to_wire()
        current = self._jobs.get(spec.id)
        if current is not None and current.spec.to_wire() == wire:
            return False
        since = wall_ms
        if current is not None and _same_timing(current.spec, spec):
            since = current.since  # an unrelated change does not restart its schedule
        self._store.put(JOBS, spec.id, {"spec": wire, "since": since})
        self._load_job(spec.id)
        return True

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
        entry = self._jobs.get(job_id)
        if entry is None:
            raise KeyError(job_id)
        if entry.spec.paused != paused:
            spec = attrs.evolve(entry.spec, paused=paused)
            # Resuming starts the schedule afresh: ticks due while paused are not owed.
            self._store.put(JOBS, job_id, {"spec": spec.to_wire(), "since": wall_ms})
            self._load_job(job_id)
        return self._jobs[job_id].spec

    def submit(self, wall_ms: int, spec: JobSpec, *, run_at: int | None = None) -> str:
        """Queue one run of ``spec`` now (or at ``run_at``); its run id."""
        run_id = submitted_run_id(spec.id, wall_ms, self._rng)
        record = RunRecord(
            id=run_id, job=spec.id, state=RunState.PENDING, created=wall_ms,
            not_before=run_at if run_at is not None else wall_ms, spec=spec.to_wire(), via=self.name,
        )
        self._assign(record, spec)  # ours to run, perhaps: its due entry looks at once
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
        self._load_update(key)
        return key

    def drain(self, wall_ms: int) -> None:
        """Start leaving: see the handoff paragraph at the top."""
        if self.role is Role.DRAINING:
            return
        self.role = Role.DRAINING
        self._drain_deadline = wall_ms + round(self.config.drain_timeout * 1000)
        self._placement_stale = True

    @property
    def drained(self) -> bool:
        return self.role is Role.DRAINING and not self._running

    def watch(self, run_id: str) -> None:
        """Note every change of this run's record here, for
        ``take_watched_changes`` (someone waits on it). Unless the run has
        finished, or its outcome comes here anyway (we run it, or it was
        submitted through us), ask for it: a reader mark in the updates
        map, handed to the run's owner, which hands the outcome to every
        reader directly when it has one."""
        self._watched.add(run_id)
        record = self.record(run_id)
        if record is not None and (record.state.finished or self.name in (record.via, record.owner)):
            return
        key = reader_key(run_id, self.name)
        if self._store.get(UPDATES, key) is None:
            self._store.put(UPDATES, key, {"reader": self.name}, ttl=self.config.update_ttl)
            self._load_update(key)
        # To whoever runs it (again at each change the waiter sees: it may
        # change hands); a run not heard of yet is a one-off submitted
        # elsewhere, on its way to the owner of its id on the ring.
        owner = self._ring.owner(run_id) if record is None else record.owner
        if owner is not None and owner != self.name:
            self._store.push(UPDATES, key, [owner])

    def unwatch(self, run_id: str) -> None:
        self._watched.discard(run_id)
        self._watched_changed.discard(run_id)

    def take_watched_changes(self) -> set[str]:
        """The watched runs whose record changed since the last call."""
        changed, self._watched_changed = self._watched_changed, set()
        return changed

    # -- reading, for the API -------------------------------------------------------

    def jobs(self) -> dict[str, JobEntry]:
        return dict(self._jobs)

    def job_owner(self, job_id: str) -> str | None:
        """Who runs the job's ticks (mode one), by this node's view."""
        return self._owners.get(job_id)

    def runs_ticks_of(self, spec: JobSpec) -> str | None:
        """Who runs the job's ticks by this node's view: a node, ``all``
        (mode all), or None (no schedule, paused, or no eligible node)."""
        if spec.schedule is None or spec.paused:
            return None
        return "all" if spec.mode == "all" else self.job_owner(spec.id)

    def record(self, run_id: str) -> RunRecord | None:
        register = self._store.get(RUNS, run_id)
        return None if register is None else _parse_run(register.value)

    def records(self) -> Iterator[RunRecord]:
        for _, register in self._store.items(RUNS):
            record = _parse_run(register.value)
            if record is not None:
                yield record

    def running(self) -> dict[str, RunRecord]:
        return {run_id: execution.record for run_id, execution in self._running.items()}

    def eligible(self) -> tuple[str, ...]:
        return self._ring.members

    def footprint(self) -> dict[str, int]:
        """How many entries each of this node's own tables holds: none may
        grow without bound (checked by the chaos campaigns)."""
        return {
            "jobs": len(self._jobs),
            "unfinished": len(self._unfinished),
            "running": len(self._running),
            "updates": sum(len(keys) for keys in self._updates.values()),
            "due": len(self._due),
            "pending_due": len(self._pending_due),
            "members_left": len(self._left_seen),
            "handovers": len(self._handover_until),
            "leases_given": len(self._given_at),
            "latest_ticks": len(self._latest_tick),
            "walked": len(self._walked),
            "lives": len(self._lives),
            "written_at": len(self._written_at),
            "watched": len(self._watched),
            "handed_on": len(self._handed_on),
        }

    def late_jobs(self) -> dict[str, int]:
        """Jobs whose latest tick due by more than its grace has no record
        (job -> that tick): found by the last scan."""
        return dict(self._late)

    # -- placement -------------------------------------------------------------------------

    def _eligible(self) -> list[str]:
        names = [
            member.name
            for member in self._members.values()
            if member.name != self.name and member.status.is_live and member.meta == Role.READY.meta
        ]
        if self.role is Role.READY:
            names.append(self.name)
        return names

    def _place(self, wall_ms: int) -> None:
        """Recompute who owns what, settle the leases of the jobs in mode
        one (``peer.jobs.leases``), and start or stop walking schedules."""
        self._placement_stale = False
        eligible = tuple(sorted(self._eligible()))
        unchanged = eligible == self._ring.members and not self._jobs_changed and self.role is self._placed_as
        if unchanged and not self._leases_changed and (self._replace_at is None or wall_ms < self._replace_at):
            return  # a view change that moves no work (a suspicion, a refutation)
        if eligible != self._ring.members and wall_ms < self._ring_changed_at + RING_REBUILD_MS:
            # Views change in bursts (a cluster starting, a split healing):
            # one ring per burst, not one per member.
            self._placement_stale = True
            return
        self._jobs_changed, self._leases_changed, self._placed_as, self._replace_at = False, False, self.role, None
        if eligible != self._ring.members:
            self._previous_ring, self._ring_changed_at = self._ring, wall_ms
            self._ring = Ring(eligible, load_factor=self.config.load_factor)
        placed = sorted(
            job_id
            for job_id, entry in self._jobs.items()
            if entry.spec.schedule is not None and entry.spec.mode == "one" and not entry.spec.paused
        )
        self._owners = self._ring.assign(placed)
        mine: dict[str, tuple[int, bool]] = {}  # job -> (cursor to start from, may look back before our start)
        for job_id in placed:
            walk = self._settle_lease(wall_ms, job_id)
            if walk is not None:
                mine[job_id] = walk
        if self.role is Role.READY:
            for job_id, entry in self._jobs.items():
                if entry.spec.mode == "all" and entry.spec.schedule is not None and not entry.spec.paused:
                    # A node owes the ticks due while it is a member, no earlier.
                    mine[job_id] = (max(entry.since, self._ready_at), False)
        for job_id in list(self._cursors):
            if job_id not in mine:
                del self._cursors[job_id]
                self._lookback.pop(job_id, None)
        for job_id, (start, look_back) in mine.items():
            if job_id not in self._cursors:
                self._cursors[job_id] = start
                if look_back and start < self._started_at and not self._history_held:
                    # Ticks from before our start wait until we hold their
                    # records, and the later ones behind them (_judge_lookback).
                    self._lookback[job_id] = start
                    self._cursors[job_id] = self._started_at
                else:
                    self._schedule_next(job_id)

    def _settle_lease(self, wall_ms: int, job_id: str) -> tuple[int, bool] | None:
        """Apply the lease rules (``peer.jobs.leases``) to a job in mode one:
        transfer it, acquire it, or wait for it. Where to start walking its
        schedule, if we walk it."""
        entry = self._jobs[job_id]
        owner = self._owners.get(job_id)
        lease = self._lease(job_id)
        if lease is not None and self._holds(lease):
            if owner == self.name and self.role is Role.READY:
                if lease.how == TRANSFER and lease.cursor is not None:
                    return max(lease.cursor, entry.since), False
                return self._look_back_from(wall_ms, entry, lease), True
            if owner is None:
                return None  # nobody to give it to: keep it, walk nothing
            given_until = self._given_at.get(job_id, 0) + round(self.config.forward_delay * 1000)
            if wall_ms < given_until:
                # Handed to us by a node whose view differs from ours: give
                # the views a moment to agree before we pass it on.
                self._replace_at = given_until if self._replace_at is None else min(self._replace_at, given_until)
                return None
            self._transfer(wall_ms, job_id, lease, owner)
            return None
        if owner != self.name or self.role is not Role.READY:
            return None
        if lease is not None and not self._holder_gone(wall_ms, lease):
            return None  # its live holder hands it to us when its view agrees
        self._put_lease(wall_ms, job_id, Lease(self.name, self.life, None if lease is None else lease.cursor, ACQUIRE), [])
        lease = self._lease(job_id)
        assert lease is not None
        # A node whose view also makes it the owner may be acquiring it too:
        # the later write wins everywhere; wait to see which.
        self._handover_until[job_id] = wall_ms + round(self.config.handover * 1000)
        return self._look_back_from(wall_ms, entry, lease), True

    def _look_back_from(self, wall_ms: int, entry: JobEntry, lease: Lease) -> int:
        """Where an acquired lease's walk starts: as far back as records can
        still be seen, but after the last tick handed over, and after the
        latest tick of the job anyone recorded an outcome of: holders walk
        the schedule in order, and an outcome spreads together with its
        holder's claims of earlier ticks (``_write``), so every tick before
        it was handled and its record is out, even if it has not reached us
        yet (gossip is not sure to bring everything soon). A claim alone
        tells less: its holder, gone, may have claimed earlier ticks in the
        same moment and died before any copy left (wide seed 296: a tick
        claimed with a later one in one catch-up, its direct copy lost under
        25 % loss, the later one's arrived; the earlier never ran)."""
        start = max(entry.since, wall_ms - round(entry.spec.result_ttl * 1000), self._latest_tick.get(entry.spec.id, 0))
        return start if lease.cursor is None else max(start, lease.cursor)

    def _transfer(self, wall_ms: int, job_id: str, lease: Lease, owner: str) -> None:
        member = self._members.get(owner)
        life = member.incarnation if member is not None else 0
        self._put_lease(wall_ms, job_id, Lease(owner, life, self._walked_to(job_id, lease), TRANSFER), [owner])
        self._handover_until.pop(job_id, None)
        log.debug("lease of %s handed to %s", job_id, owner)

    def _walked_to(self, job_id: str, lease: Lease) -> int | None:
        """The last tick of a job we handled: every one up to it has a record."""
        if job_id in self._lookback:
            return self._lookback[job_id]
        walked = [t for t in (self._cursors.get(job_id), self._walked.get(job_id), lease.cursor) if t is not None]
        return max(walked, default=None)

    def _put_lease(self, wall_ms: int, job_id: str, lease: Lease, push_to: Sequence[str]) -> None:
        self._store.put(LEASES, job_id, lease.to_wire(), ttl=self.config.lease_ttl)
        if push_to:
            self._store.push(LEASES, job_id, push_to)
        self._load_lease(wall_ms, job_id)

    def _lease(self, job_id: str) -> Lease | None:
        register = self._store.get(LEASES, job_id)
        if register is None:
            return None
        try:
            return Lease.from_wire(register.value)
        except ValueError:
            return None  # garbage from a broken peer: the owner writes a good one over it

    def _holds(self, lease: Lease) -> bool:
        return lease.holder == self.name and same_life(lease.life, self.life)

    def _holder_gone(self, wall_ms: int, lease: Lease) -> bool:
        """Will the lease's holder never hand it over? Failed, gone, or a
        life that has ended (the node restarted since)."""
        if lease.holder == self.name:
            return True  # an earlier life of ours: this one did not get it
        if self._failed(wall_ms, lease.holder):
            return True
        member = self._members.get(lease.holder)
        return member is not None and not same_life(member.incarnation, lease.life)

    def _load_lease(self, wall_ms: int, job_id: str) -> None:
        lease = self._lease(job_id)
        if lease is not None and lease.how == TRANSFER and self._holds(lease):
            self._given_at.setdefault(job_id, wall_ms)
        else:
            self._given_at.pop(job_id, None)
        self._leases_changed = self._placement_stale = True

    def _schedule_next(self, job_id: str) -> None:
        schedule = self._jobs[job_id].spec.schedule
        assert schedule is not None
        tick = schedule.next_after(self._cursors[job_id])
        due = tick
        handover_until = self._handover_until.get(job_id, 0)
        if tick < handover_until:
            # A claim made at the tick, or when the job reached its old
            # owner (no sooner than it reached us), has had the handover
            # time to arrive.
            handover = round(self.config.handover * 1000)
            due = max(tick + handover, handover_until)
        heapq.heappush(self._due, (due, tick, job_id))

    def _run_owner(self, record: RunRecord) -> str | None:
        if record.node is not None:
            return record.node
        if record.tick is not None and record.job in self._owners:
            return self._owners[record.job]
        return self._ring.owner(record.id)

    def _failed(self, wall_ms: int, name: str) -> bool:
        """Has this node gone, as far as the view says? Unknown counts as
        gone once we have been up ``catch_up_window`` (the members' table
        comes with our first state exchanges, and the dead stay in it for a
        day): before, we may just not have heard of it yet (wide seed 871:
        a node just back from a restart knew one member, and took the
        holder of every lease for gone). A node that left gracefully
        finished or handed back its runs first; its last records may still
        be on their way, so it counts as gone only ``left_grace`` after we
        saw it leave."""
        if name == self.name:
            return False
        member = self._members.get(name)
        if member is None:
            return wall_ms >= self._started_at + round(self.config.catch_up_window * 1000)
        if member.status is Status.DEAD:
            return True
        left = self._left_seen.get(name)
        return left is not None and wall_ms >= left + round(self.config.left_grace * 1000)

    # -- ticks --------------------------------------------------------------------------------

    def _fire_due_ticks(self, wall_ms: int) -> None:
        budget = self.config.catch_up_limit
        while self._due and self._due[0][0] <= wall_ms and budget > 0:
            _, tick, job_id = heapq.heappop(self._due)
            cursor = self._cursors.get(job_id)
            entry = self._jobs.get(job_id)
            if cursor is None or entry is None or entry.spec.schedule is None or tick != entry.spec.schedule.next_after(cursor):
                continue  # stale: the job moved, changed, or this tick was handled
            budget -= 1
            self._cursors[job_id] = tick
            self._walked[job_id] = max(tick, self._walked.get(job_id, tick))
            self._schedule_next(job_id)
            self._on_tick(wall_ms, entry.spec, tick)

    def _judge_lookback(self, wall_ms: int) -> None:
        """We hold the records made before we started: handle the ticks
        from then that nobody recorded, once their old owner's claims have
        had their handover time too."""
        for job_id, start in list(self._lookback.items()):
            if self._handover_until.get(job_id, 0) > wall_ms:
                continue
            del self._lookback[job_id]
            entry = self._jobs.get(job_id)
            if entry is None or entry.spec.schedule is None or job_id not in self._cursors:
                continue
            for tick in entry.spec.schedule.ticks_between(start, self._started_at, self.config.catch_up_limit):
                self._on_tick(wall_ms, entry.spec, tick)
            # Only now the ticks since our start: a job's ticks are handled
            # in order, so a recorded tick tells that all before it were.
            self._schedule_next(job_id)

    def _on_tick(self, wall_ms: int, spec: JobSpec, tick: int) -> None:
        node = self.name if spec.mode == "all" else None
        run_id = tick_run_id(spec.id, tick, node)
        if self._store.get(RUNS, run_id, expired=True) is not None:
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
        record = RunRecord(id=run_id, job=spec.id, state=RunState.PENDING, owner=self.name, tick=tick, node=node, created=wall_ms)
        late = wall_ms - tick > round(spec.grace * 1000)
        if late:
            assert spec.schedule is not None
            backlog = spec.schedule.next_after(tick) <= wall_ms
            if spec.misfire == "skip" or (spec.misfire == "once" and backlog):
                self.stats.ticks_missed += 1
                reason = f"late by {(wall_ms - tick) / 1000:.1f} s, over the grace of {spec.grace:g} s"
                if spec.misfire == "once":
                    reason += "; a later tick runs instead"
                self._write(advance(record, RunEvent.MISS, wall_ms, error=reason), spec)
                return
        # Runs still going: a dead owner's claim is not one (its run will be
        # re-run), nor a pending retry or hand-back.
        previous = [
            r
            for r in self._unfinished.values()
            if r.job == spec.id
            and r.node == node
            and r.id != run_id
            and r.state is RunState.RUNNING
            and r.owner is not None
            and not self._failed(wall_ms, r.owner)
        ]
        if previous and spec.overlap == "forbid":
            self.stats.ticks_skipped += 1
            reason = f"{previous[0].id} was still running"
            self._write(advance(record, RunEvent.SKIP, wall_ms, error=reason), spec)
            return
        if spec.overlap == "replace":
            for old in previous:
                self._cancel(wall_ms, old, spec, f"replaced by {run_id}")
        self.stats.ticks_run += 1
        self.stats.ticks_late += late
        self._start(wall_ms, record, spec, attempt=1)

    # -- claims, failover, pending runs ----------------------------------------------------

    def _scan(self, wall_ms: int) -> None:
        if self.role is Role.DRAINING:
            self._reassign_pending(wall_ms)
            return
        if self.role is not Role.READY:
            return
        if any(self._owners.get(job_id) == self.name and job_id not in self._cursors for job_id in self._owners):
            # A job ours by our view whose lease another holds: is that
            # holder gone by now (a leave's grace passed)?
            self._leases_changed = self._placement_stale = True
        for record in list(self._unfinished.values()):
            if record.id in self._running:
                continue
            owner = self._run_owner(record)
            if record.state is RunState.RUNNING:
                if record.owner is not None and self._claim_outlived(wall_ms, record):
                    self._take_over(wall_ms, record, owner)
            elif (record.not_before or 0) <= wall_ms:
                self._consider_pending(wall_ms, record, owner)

    def _claim_outlived(self, wall_ms: int, record: RunRecord) -> bool:
        """Is this running record's claimant gone: failed, or a life that
        has ended (its node restarted since it claimed)? A restarted node
        starts empty: the claim is not running anywhere. Its previous life
        may have finished the run, though, its last record still on its
        way: a claim of an ended life is re-run only once its record had
        ``left_grace`` to arrive, and (ours) once we hold the cluster's runs."""
        owner = record.owner
        assert owner is not None
        grace = round(self.config.left_grace * 1000)
        if owner == self.name:
            return self._history_held and wall_ms >= self._started_at + grace
        if self._failed(wall_ms, owner):
            return True
        life = self._lives.get(owner)
        if not self._life_ended(owner, record):
            return False
        assert life is not None
        if wall_ms < life[1] + grace:
            # Not yet: but we may be the only node holding this claim (its
            # direct copy), and die before the grace ends. Hand it on to
            # the node that would take the run over from us, once.
            if record.id not in self._handed_on:
                # Over the stream channel: no gossip carries another
                # node's direct copy, so a lost datagram would lose it
                # (wide seed 792, under 20 % loss, then we left).
                self._handed_on.add(record.id)
                self._back_up(record, after=self.name, reliable=True)
            return False
        return True

    def _life_ended(self, owner: str, record: RunRecord) -> bool:
        """Was the record written by a life of ``owner`` that has ended (it
        restarted since)?"""
        life = self._lives.get(owner)
        written = self._written_at.get(record.id)
        return life is not None and written is not None and written < life[0]

    def _consider_pending(self, wall_ms: int, record: RunRecord, owner: str | None) -> None:
        """A due pending run goes to the node it names (its assignee); only
        if that node is gone does the run's owner by our view take it, as a
        re-run (attempt + 1: the assignee may have started it unseen)."""
        assignee = record.owner
        if assignee is None:
            # Written when its writer saw no ready node: the owner by our
            # view claims it, once an old owner's claims had time to arrive.
            if owner == self.name and not self._old_owner_may_claim(wall_ms, record):
                self._start_pending(wall_ms, record, record.attempt)
        elif assignee == self.name:
            if self._written_at.get(record.id, wall_ms) >= self._started_at:
                self._start_pending(wall_ms, record, record.attempt)
            elif self._history_held:
                # Assigned to an earlier life of ours, which may have
                # started it before it died.
                self._take_over(wall_ms, record, self.name)
        elif owner == self.name and self._failed(wall_ms, assignee):
            self._take_over(wall_ms, record, owner)

    def _start_pending(self, wall_ms: int, record: RunRecord, attempt: int) -> None:
        spec = self._spec_of(record)
        if spec is None:
            self._write(advance(record, RunEvent.LOSE, wall_ms, error="its job was removed"), None)
        else:
            self._start(wall_ms, record, spec, attempt=attempt)

    def _reassign_pending(self, wall_ms: int) -> None:
        """Draining: pending runs assigned to us go to their owners by our
        view (which no longer holds us)."""
        for record in list(self._unfinished.values()):
            if record.state is RunState.PENDING and record.owner == self.name and self._run_owner(record) not in (None, self.name):
                self._assign(record.evolve(error=record.error or f"handed on by {self.name}, leaving"), self._spec_of(record))

    def _assign(self, record: RunRecord, spec: JobSpec | None) -> None:
        """Write a pending record naming the node that is to claim it (the
        run's owner by our view), and hand it directly to that node and to
        the next on the ring for it, so it outlives us at once."""
        assignee = self._run_owner(record)
        record = record.evolve(owner=assignee)
        self._write(record, spec)
        self._back_up(record, also=[] if assignee is None else [assignee])

    def _old_owner_may_claim(self, wall_ms: int, record: RunRecord) -> bool:
        """Did this run just become ours by a change of the ring (a node
        became ready, we did), from a live node whose view may lag ours and
        which may have claimed it meanwhile? Then wait out the handover, so
        its claim reaches us first (a node just ready, say, that would re-run
        a failed node's run another node already re-ran)."""
        until = self._ring_changed_at + round(self.config.handover * 1000)
        if wall_ms >= until or record.node is not None:
            return False
        previous = self._previous_ring.owner(record.job if record.tick is not None else record.id)
        if previous is None or previous == self.name or self._failed(wall_ms, previous):
            return False
        heapq.heappush(self._pending_due, (until, record.id))
        return True

    def _take_over(self, wall_ms: int, record: RunRecord, owner: str | None) -> None:
        """A running record whose owner failed (or is a previous life of
        ours): re-run it if it is ours now."""
        if record.node is not None and record.node != self.name:
            # A node's own run of a job in mode all: nobody else can run it.
            if owner is None or self._ring.owner(record.id) != self.name:
                return
            self.stats.lost += 1
            error = f"its node {record.node} failed"
            self._write(advance(record, RunEvent.LOSE, wall_ms, error=error), self._spec_of(record))
            return
        if owner != self.name:
            if record.owner == self.name:
                # Claimed by a previous life of ours, and someone else's now.
                error = f"handed back by {self.name}, which restarted while running it"
                self._assign(advance(record, RunEvent.HAND_BACK, wall_ms, error=error), self._spec_of(record))
            return
        if self._old_owner_may_claim(wall_ms, record):
            return
        spec = self._spec_of(record)
        if spec is None or record.attempt > spec.retries + self.config.max_failovers:
            self.stats.lost += 1
            error = "its job was removed" if spec is None else f"its owner {record.owner} failed on attempt {record.attempt}"
            self._write(advance(record, RunEvent.LOSE, wall_ms, error=error), spec)
            return
        self.stats.failovers += 1
        log.info("re-running %s (attempt %d): its owner %s failed", record.id, record.attempt + 1, record.owner)
        self._start(wall_ms, record, spec, attempt=record.attempt + 1, takeover=True)

    def _start(self, wall_ms: int, record: RunRecord, spec: JobSpec, *, attempt: int, takeover: bool = False) -> None:
        claim = advance(record, RunEvent.CLAIM, wall_ms, attempt=attempt, owner=self.name)
        self.stats.runs_started += 1
        self._running[record.id] = Execution(claim, spec, progress_written=wall_ms)
        self._write(claim, spec)
        # A takeover happens while views change (a node failed, others may
        # be joining): any member may be the next to think the run is its
        # own, and must hear of this claim before it does. Rare, so told to
        # every live member directly rather than to gossip's luck.
        self._back_up(claim, also=self._live_others() if takeover else ())
        self._effects.append(StartRun(record.id, attempt, spec, record.tick))
        self._deliver_updates(record.id)

    def _cancel(self, wall_ms: int, record: RunRecord, spec: JobSpec | None, reason: str) -> None:
        execution = self._running.pop(record.id, None)
        if execution is not None:
            self._effects.append(CancelRun(record.id, execution.record.attempt, reason))
        self._write(advance(record, RunEvent.CANCEL, wall_ms, error=reason), spec)

    def _hand_back(self, wall_ms: int) -> None:
        """The drain deadline passed: give the runs still going to their
        next owners, to re-run."""
        self._drain_deadline = None
        for run_id, execution in list(self._running.items()):
            del self._running[run_id]
            record, spec = execution.record, execution.spec
            self._effects.append(CancelRun(run_id, record.attempt, "the node is leaving"))
            self.stats.handed_back += 1
            if record.node is not None:
                self._write(advance(record, RunEvent.LOSE, wall_ms, error="its node left"), spec)
            else:
                error = f"handed back by {self.name}, leaving"
                self._assign(advance(record, RunEvent.HAND_BACK, wall_ms, error=error), spec)

    def _find_late(self, wall_ms: int) -> None:
        """Jobs whose last tick due beyond its grace has no record: no
        owner ran it (none eligible, or something is wrong)."""
        self._late.clear()
        for job_id, entry in self._jobs.items():
            spec = entry.spec
            if spec.schedule is None or spec.paused:
                continue
            tick = spec.schedule.previous_at_or_before(wall_ms - round(spec.grace * 1000))
            if tick is None or tick <= entry.since or wall_ms - tick > spec.result_ttl * 1000:
                continue
            node = self.name if spec.mode == "all" else None
            if self.record(tick_run_id(job_id, tick, node)) is None:
                self._late[job_id] = tick

    # -- records ---------------------------------------------------------------------------

    def _execution(self, run_id: str, attempt: int) -> Execution | None:
        execution = self._running.get(run_id)
        if execution is None or execution.record.attempt != attempt:
            return None
        return execution

    def _write(self, record: RunRecord, spec: JobSpec | None, *, spread_now: bool = False) -> None:
        """Write a record: unfinished ones live until well past their
        timeout; a finished run's updates go (a retry gets them all again).
        ``spread_now``: gossip an unfinished one at once, without its hold."""
        if record.state.finished:
            self._forget_updates(record.id)
            ttl = spec.result_ttl if spec is not None else DEFAULT_RESULT_TTL
        else:
            ttl = (spec.timeout if spec and spec.timeout else 0) + self.config.unfinished_ttl
        # An unfinished record (a pending run, a claim, progress) is soon
        # replaced by the run's outcome: its gossip waits for that, and a
        # short run spreads once. The nodes that must know at once (the
        # assignee, the one that would take the run over) have it by push.
        hold = 0.0 if record.state.finished or spread_now else self.config.gossip_hold
        if record.state.finished and record.tick is not None and record.node is None:
            self._spread_earlier_claims(record)
        try:
            self._store.put(RUNS, record.id, record.to_wire(), ttl=ttl, hold=hold)
        except ValueError as error:
            # Too big to replicate: keep the record, say why, drop the bulk.
            bounded = record.evolve(result=None, progress=None, error=_bounded(f"{error}; {record.error or ''}"))
            self._store.put(RUNS, record.id, bounded.to_wire(), ttl=ttl, hold=hold)
        self._load_run(record.id)

    def _spread_earlier_claims(self, outcome: RunRecord) -> None:
        """An outcome of a tick tells a lease's next holder that every
        earlier tick was handled (``_look_back_from``): our claims of
        earlier ticks of the job, still running (a catch-up, overlap
        ``allow``), must not wait their gossip hold behind it."""
        assert outcome.tick is not None
        for execution in list(self._running.values()):
            claim = execution.record
            if claim.job == outcome.job and claim.node is None and claim.tick is not None and claim.tick < outcome.tick:
                self._write(claim, execution.spec, spread_now=True)

    def _back_up(self, record: RunRecord, *, also: Sequence[str] = (), after: str | None = None, reliable: bool = False) -> None:
        """Hand a record we wrote (a claim, an outcome, an assignment)
        directly to the node that would take the run over if its owner
        (or ``after``) died: the next on the ring for it; and to ``also``.
        Gossip may be slow to reach it, and it must neither re-run what we
        ran nor lose it. An outcome also goes to the node the run was
        submitted through, where its submitter likely waits for it."""
        key = record.job if record.tick is not None and record.node is None else record.id
        owner = after or record.owner or self.name
        successor = next((name for name in self._ring.preference(key, 2) if name != owner), None)
        via = record.via if record.state.finished else None
        members = {name for name in (successor, via, *also) if name is not None and name != self.name}
        if members:
            self._store.push(RUNS, record.id, sorted(members), reliable=reliable)

    def _write_progress(self, wall_ms: int) -> None:
        for execution in self._running.values():
            if execution.progress_due is not None and execution.progress_due <= wall_ms:
                execution.progress_due = None
                execution.progress_written = wall_ms
                self._write(execution.record, execution.spec)

    def _load_job(self, job_id: str) -> None:
        register = self._store.get(JOBS, job_id)
        entry = None
        if register is not None:
            try:
                value = register.value
                entry = JobEntry(JobSpec.from_wire(value["spec"]), int(value["since"]))
            except (JobError, KeyError, TypeError, ValueError):
                self.stats.bad_records += 1
                log.warning("job %r: unreadable definition from a peer; ignored", job_id)
        if entry is None:
            if self._jobs.pop(job_id, None) is not None:
                self._store.remove(LEASES, job_id)  # a lease lives as long as its job
            self._handover_until.pop(job_id, None)
            self._given_at.pop(job_id, None)
            self._latest_tick.pop(job_id, None)
            self._walked.pop(job_id, None)
            self._late.pop(job_id, None)
        else:
            old = self._jobs.get(job_id)
            self._jobs[job_id] = entry
            if old is not None and (not _same_timing(old.spec, entry.spec) or old.since != entry.since):
                self._cursors.pop(job_id, None)  # walk the new schedule from its start
                self._walked.pop(job_id, None)
        self._placement_stale = self._jobs_changed = True

    def _load_run(self, run_id: str) -> None:
        if run_id in self._watched:
            self._watched_changed.add(run_id)
        register = self._store.get(RUNS, run_id)
        record = None if register is None else _parse_run(register.value)
        if register is not None and record is None:
            self.stats.bad_records += 1  # counted once per change, not per read
        if record is not None and record.state.finished and record.tick is not None and record.node is None and record.job in self._jobs:
            self._latest_tick[record.job] = max(record.tick, self._latest_tick.get(record.job, 0))
        if record is None or record.state.finished:
            self._unfinished.pop(run_id, None)
            self._written_at.pop(run_id, None)
            self._handed_on.discard(run_id)
        else:
            assert register is not None
            self._unfinished[run_id] = record
            self._written_at[run_id] = register.ts.wall
            if record.state is RunState.PENDING:
                heapq.heappush(self._pending_due, (record.not_before or 0, run_id))
        execution = self._running.get(run_id)
        if execution is None:
            return
        mine = execution.record
        if record is not None and record.state is RunState.RUNNING and (record.owner, record.attempt) == (self.name, mine.attempt):
            return
        if record is not None and record.state is RunState.LOST and (record.owner, record.attempt) == (self.name, mine.attempt):
            # A node that took us for failed (a partition, a pause) gave up
            # on our run. We are not failed: our outcome, stamped later,
            # supersedes theirs (same attempt, both finished: the later wins).
            self.stats.lost_refuted += 1
            return
        # Another record won over our claim: theirs, a newer attempt, or a
        # cancellation. Stop ours; the winner's record stands.
        del self._running[run_id]
        self.stats.claims_lost += 1
        reason = "its record was removed" if record is None else f"superseded by {record.state.value} (attempt {record.attempt}, {record.owner})"
        self._effects.append(CancelRun(run_id, mine.attempt, reason))

    def _spec_of(self, record: RunRecord) -> JobSpec | None:
        if record.spec is not None:
            try:
                return JobSpec.from_wire(record.spec)
            except JobError:
                self.stats.bad_records += 1
                return None
        entry = self._jobs.get(record.job)
        return None if entry is None else entry.spec

    # -- updates ---------------------------------------------------------------------------

    def _load_update(self, key: str, *, deliver: bool = True) -> str:
        """Index an update by its run (and deliver it if the run is ours);
        the run's id."""
        run_id = run_of_update(key)
        if self._store.get(UPDATES, key) is None:
            keys = self._updates.get(run_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._updates[run_id]
            return run_id
        self._updates.setdefault(run_id, set()).add(key)
        if deliver and run_id in self._running:
            self._deliver_updates(run_id)
        reader = reader_of(key)
        if reader is not None and reader != self.name:
            record = self.record(run_id)
            if record is not None and record.state.finished and record.owner == self.name:
                # A reader that asked once we had finished: its outcome, now;
                # and the mark goes, as the run's updates went when it finished.
                self._store.push(RUNS, run_id, [reader])
                self._store.remove(UPDATES, key)
        return run_id

    def _live_others(self) -> list[str]:
        return sorted(name for name, member in self._members.items() if name != self.name and member.status.is_live)

    def _readers(self, run_id: str) -> list[str]:
        """The nodes that asked for this run's outcome (``watch``)."""
        return sorted(node for key in self._updates.get(run_id, ()) if (node := reader_of(key)) is not None)

    def _deliver_updates(self, run_id: str) -> None:
        """Give a running run every update it has not had, oldest first."""
        execution = self._running[run_id]
        fresh = []
        for key in self._updates.get(run_id, ()):
            if key in execution.delivered or reader_of(key) is not None:
                continue
            register = self._store.get(UPDATES, key)
            if register is not None and isinstance(register.value, Mapping) and "data" in register.value:
                fresh.append((register.ts, key, register.value["data"]))
        for _, key, data in sorted(fresh):
            execution.delivered.add(key)
            self._effects.append(DeliverUpdate(run_id, execution.record.attempt, data))

    def _forget_updates(self, run_id: str) -> None:
        for key in sorted(self._updates.pop(run_id, ())):
            self._store.remove(UPDATES, key)


def _parse_run(value: Any) -> RunRecord | None:
    """A record from the map; None for one a broken or newer peer wrote."""
    try:
        return RunRecord.from_wire(value)
    except ValueError:
        return None


def _same_timing(a: JobSpec, b: JobSpec) -> bool:
    return (a.schedule, a.mode, a.paused) == (b.schedule, b.mode, b.paused)


def _bounded(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 20] + " ... (truncated)"
