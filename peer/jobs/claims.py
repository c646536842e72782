"""Claims: starting runs, pending runs, failover, and the drain's hand-back.

Theory of operation
-------------------
Claims and conflicts. To run a tick (``peer.jobs.ticks``) or a pending run
the node writes a ``running`` record (the claim) and starts it; the claim
and the outcome are also sent directly to the node that would take the run
over if we died (the next on the ring), since gossip may be slow. The
gossip of an unfinished record waits for the outcome (``peer.jobs.records``).
Should two claims meet anyway (a failover under disagreeing views, a
partition), the runs map's precedence picks the same winner on every node
and the loser cancels (``peer.jobs.runs``). Duplicates are counted, never
hidden.

Pending runs. A pending run (a submit, a retry, a hand-back) names its
assignee, the owner by its writer's view, and is sent to it directly; only
the assignee claims it. Only when the assignee is gone does the run's owner
by view take it over, as a re-run (attempt + 1: the assignee may have
started it unseen), after a handover time if the ring just changed.

Failover. Every ``scan_interval`` (and on each view change) a node looks
at the unfinished runs: a ``running`` record whose claimant is gone (dead,
left, unknown, or a life that ended: its node restarted since) is re-run
by the run's current owner as attempt + 1, up to ``max_failovers`` times
beyond the job's retries, then recorded ``lost``. A takeover's claim goes
to every live member directly (views are changing: any of them may be the
next to think the run is its own), and a node holding a claim of an ended
life hands it on while the life's grace runs (it may hold the only copy).

Freezes. Called much later than the scan interval allows, the node was
frozen (SIGSTOP, a paused VM) or its clock jumped: what others wrote
meanwhile is in its inbox still, so it claims nothing for a handover time.

Back-pressure. A node runs at most ``max_running_runs`` runs at once. A
run that is due here when the node is at its limit is not claimed: it stays
``pending`` in the runs map, assigned to this node, and waits in a local
queue for a slot (a tick first gets its pending record, so it is handled
for the walk of its schedule and outlives us: if we die, its owner by view
takes it over, as it takes over any pending run of a failed assignee).
Nothing is lost, run twice or recorded missed for waiting: the run is the
node's still, claimed when a slot frees, and another node takes it only
when this one is gone (draining hands its pending runs on). The queue is
ordered ticks and takeovers first (they are due at a time; a flood of
submits must not starve the cron jobs), then by when each became due; and
other runs leave a quarter of the slots (``reserved_slots``) to ticks and
takeovers, so that long one-offs filling every slot cannot stop the cron
jobs until one of them ends (the abuse harness's flood of 2,000 one-offs
of a minute did: no tick ran for its 45 s). It
holds at most ``max_queued_runs``, and a run beyond it waits in the runs map
only, found by the next scan (at once, when the queue runs dry). A tick is
decided again when it gets its slot, as if it had just become due: its
misfire policy may record it ``missed``, with the wait as the reason (a
demanding user set a grace for exactly this: past it, ``skip`` means skip);
its overlap policy applies then too.

Handoff. ``drain`` makes the node ``draining``: it leaves the ring (its
leases go to their new owners at once, its pending runs to new assignees),
claims nothing new, lets its running runs finish for up to
``drain_timeout``, then cancels them and hands each back as a ``pending``
record assigned to its next owner. ``drained`` tells the node it may push
its state and leave.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import attrs

from peer.jobs.definition import JobSpec
from peer.jobs.local import RUNS, CancelRun, Local, Role, StartRun, log
from peer.jobs.placement import Placement
from peer.jobs.records import Execution, Records, bounded
from peer.jobs.runs import RunEvent, RunRecord, RunState, advance
from peer.jobs.ticks import Ticks
from peer.jobs.view import View

# Called this much later than the scan interval allows, the node was frozen
# (SIGSTOP, a paused VM) or its clock jumped.
FROZEN_GAP_MS = 1_000

# The queue's classes: ticks and takeovers, then the rest.
_URGENT, _OTHER = 0, 1


def _urgent(record: RunRecord) -> bool:
    """A tick (due at a time) or a takeover of a running record."""
    return record.tick is not None or record.state is RunState.RUNNING


def reserved_slots(max_running_runs: int) -> int:
    """The slots only ticks and takeovers may take: a quarter (none below 4)."""
    return max_running_runs // 4


@attrs.define(eq=False)
class Claims:
    _local: Local
    _view: View
    _records: Records
    _ticks: Ticks
    _placement: Placement
    _next_scan: int
    _thawing_until: int = attrs.field(init=False, default=0)  # after a freeze, claim nothing before this
    _drain_deadline: int | None = attrs.field(init=False, default=None)
    # Back-pressure: due runs of ours waiting for a slot, a heap of (0 for a
    # tick or a takeover, 1 for the rest; when due; run), and its members.
    _waiting: list[tuple[int, int, str]] = attrs.field(init=False, factory=list)
    _queued: set[str] = attrs.field(init=False, factory=set)
    _overflowed: bool = attrs.field(init=False, default=False)  # a due run found the queue full

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def room(self, *, urgent: bool = False) -> bool:
        """Is a slot free for a run: any slot for a tick or a takeover
        (``urgent``), all but the reserved ones for any other run?"""
        config = self._local.config
        limit = config.max_running_runs if urgent else config.max_running_runs - reserved_slots(config.max_running_runs)
        return len(self._records.running) < limit

    def _room_for_head(self) -> bool:
        return bool(self._waiting) and self.room(urgent=self._waiting[0][0] == _URGENT)

    def scan_soon(self) -> None:
        self._next_scan = 0

    def notice_freeze(self, wall_ms: int, last_tick: int) -> None:
        """``last_tick``: when the driver called last."""
        local = self._local
        if wall_ms - last_tick > round(local.config.scan_interval * 1000) + FROZEN_GAP_MS:
            # What others wrote while we were frozen (claims, results) is in
            # our inbox still: read it before claiming anything, as a new
            # owner waits for an old owner's claims.
            self._thawing_until = wall_ms + round(local.config.handover * 1000)
            local.stats.thaws += 1

    def deadlines(self, last_tick: int) -> list[int]:
        """When the claims want the driver back."""
        role = self._local.role
        claims = [self._next_scan]
        due = self._ticks.next_due()
        if due is not None:
            claims.append(due)
        pending = self._records.next_pending()
        if pending is not None:
            claims.append(pending)
        if self._room_for_head():
            claims.append(last_tick)  # a slot freed: the queue's head, now
        if role is Role.STARTING:
            claims = []  # nothing to claim (see claim)
        elif self._thawing_until > last_tick:
            claims = [self._thawing_until]  # thawing: nothing before (draining too: chaos seed 471 spun)
        elif role is Role.DRAINING:
            claims = [self._next_scan]  # only to pass on what was assigned to us
        if self._drain_deadline is not None and self._records.running:
            claims.append(self._drain_deadline)
        return claims

    def claim(self, wall_ms: int) -> None:
        """Run what is due: ticks, the ticks from before our start, pending
        runs and failovers (by the scan); nothing while thawing."""
        if wall_ms < self._thawing_until:
            return
        local = self._local
        if local.role is not Role.READY:
            # Draining claims nothing new, even before the debounced ring
            # rebuild drops our cursors: a run started now could outlive
            # the node, which may be leaving already (chaos seed 231). It
            # only passes on what was assigned to it.
            if local.role is Role.DRAINING and wall_ms >= self._next_scan:
                self._next_scan = wall_ms + round(local.config.scan_interval * 1000)
                self._scan(wall_ms)
            return
        # The runs that waited for a slot go first, then the ticks due now
        # (which, at the limit, queue behind them).
        self._dequeue(wall_ms)
        self._ticks.fire_due(wall_ms, self)
        self._ticks.judge_lookback(wall_ms, self)
        records = self._records
        while (run_id := records.pop_due_pending(wall_ms)) is not None:
            # A submit, a retry or a hand-back is due: look at it now (the
            # scan, which looks at every unfinished run, is for failovers:
            # once per scan interval, not once per run in a burst).
            record = records.unfinished.get(run_id)
            if record is not None and record.state is RunState.PENDING and run_id not in records.running:
                if (record.not_before or 0) <= wall_ms:
                    self._consider_pending(wall_ms, record, self._placement.run_owner(record))
        if wall_ms >= self._next_scan:
            self._next_scan = wall_ms + round(local.config.scan_interval * 1000)
            self._scan(wall_ms)

    # -- the driver's reports and the application's requests --------------------------------

    def finish(self, wall_ms: int, run_id: str, attempt: int, ok: bool, result: Any = None, error: str | None = None) -> None:
        records, stats = self._records, self._local.stats
        execution = records.execution(run_id, attempt)
        if execution is None:
            return  # cancelled meanwhile: its record was already decided
        records.stop(run_id)
        record, spec = execution.record, execution.spec
        readers = records.readers(run_id)  # before the outcome's write forgets them
        if ok:
            stats.runs_succeeded += 1
            finished = advance(record, RunEvent.SUCCEED, wall_ms, result=result)
            records.write(finished, spec)
            self._back_up(finished, also=readers)
        elif attempt <= spec.retries:  # a draining node too: the retry goes to the next owner
            stats.retries += 1
            retry_at = wall_ms + round(spec.retry_delay(attempt + 1) * 1000)
            self.assign(
                advance(record, RunEvent.RETRY, wall_ms, not_before=retry_at, result=result, error=bounded(error)),
                spec,
            )
        else:
            stats.runs_failed += 1
            failed = advance(record, RunEvent.FAIL, wall_ms, result=result, error=bounded(error))
            records.write(failed, spec)
            self._back_up(failed, also=readers)

    def drain(self, wall_ms: int) -> None:
        self._drain_deadline = wall_ms + round(self._local.config.drain_timeout * 1000)

    def hand_back_when_due(self, wall_ms: int) -> None:
        if self._drain_deadline is not None and wall_ms >= self._drain_deadline:
            self._hand_back(wall_ms)

    # -- claims, failover, pending runs ----------------------------------------------------

    def _scan(self, wall_ms: int) -> None:
        local, records = self._local, self._records
        if local.role is Role.DRAINING:
            self._reassign_pending(wall_ms)
            return
        if local.role is not Role.READY:
            return
        self._placement.recheck_leases()
        for record in list(records.unfinished.values()):
            if record.id not in records.running:
                self._look_at(wall_ms, record)

    def _look_at(self, wall_ms: int, record: RunRecord) -> None:
        """An unfinished run not running here: take it over, or claim it, if that is ours to do."""
        owner = self._placement.run_owner(record)
        if record.state is RunState.RUNNING:
            if record.owner is not None and self._claim_outlived(wall_ms, record):
                self._take_over(wall_ms, record, owner)
        elif (record.not_before or 0) <= wall_ms:
            self._consider_pending(wall_ms, record, owner)

    # -- back-pressure ----------------------------------------------------------------------

    def defer(self, wall_ms: int, record: RunRecord, spec: JobSpec) -> None:
        """A tick due at the limit: pending, ours, written (so its walk
        moves on and it outlives us: handed to our successor for it), then
        queued for a slot."""
        if record.id not in self._records.unfinished:
            self._records.write(record, spec)
            self._back_up(record)
        self._enqueue(record)

    def _enqueue(self, record: RunRecord) -> None:
        if record.id in self._queued:
            return
        if len(self._waiting) >= self._local.config.max_queued_runs:
            self._overflowed = True  # it waits in the runs map: the scan finds it again
            return
        due = record.tick if record.tick is not None else record.not_before or record.created or 0
        heapq.heappush(self._waiting, (_URGENT if _urgent(record) else _OTHER, due, record.id))
        self._queued.add(record.id)
        self._local.stats.runs_queued += 1

    def _dequeue(self, wall_ms: int) -> None:
        """Slots free: claim what waited for them, in the queue's order. An
        entry is looked at afresh: the run may have finished, moved to
        another node, or been taken over meanwhile."""
        records = self._records
        while self._room_for_head():
            _, _, run_id = heapq.heappop(self._waiting)
            self._queued.discard(run_id)
            record = records.unfinished.get(run_id)
            if record is not None and run_id not in records.running:
                self._look_at(wall_ms, record)
        if not self._waiting and self._overflowed:
            self._overflowed = False
            self.scan_soon()  # the runs that found the queue full: look for them now, not at the next scan

    def _claim_outlived(self, wall_ms: int, record: RunRecord) -> bool:
        """Is this running record's claimant gone: failed, or a life that
        has ended (its node restarted since it claimed)? A restarted node
        starts empty: the claim is not running anywhere. Its previous life
        may have finished the run, though, its last record still on its
        way: a claim of an ended life is re-run only once its record had
        ``left_grace`` to arrive, and (ours) once we hold the cluster's runs."""
        local = self._local
        owner = record.owner
        assert owner is not None
        grace = round(local.config.left_grace * 1000)
        if owner == local.name:
            return local.history_held and wall_ms >= local.started_at + grace
        if self._view.failed(wall_ms, owner):
            return True
        life = self._view.life(owner)
        if not self._life_ended(owner, record):
            return False
        assert life is not None
        if wall_ms < life[1] + grace:
            # Not yet: but we may be the only node holding this claim (its
            # direct copy), and die before the grace ends. Hand it on to
            # the node that would take the run over from us, once.
            if self._records.hand_on_once(record.id):
                # Over the stream channel: no gossip carries another
                # node's direct copy, so a lost datagram would lose it
                # (wide seed 792, under 20 % loss, then we left).
                self._back_up(record, after=local.name, reliable=True)
            return False
        return True

    def _life_ended(self, owner: str, record: RunRecord) -> bool:
        """Was the record written by a life of ``owner`` that has ended (it
        restarted since)?"""
        life = self._view.life(owner)
        written = self._records.written_at(record.id)
        return life is not None and written is not None and written < life[0]

    def _consider_pending(self, wall_ms: int, record: RunRecord, owner: str | None) -> None:
        """A due pending run goes to the node it names (its assignee); only
        if that node is gone does the run's owner by our view take it, as a
        re-run (attempt + 1: the assignee may have started it unseen)."""
        local = self._local
        assignee = record.owner
        if assignee is None:
            # Written when its writer saw no ready node: the owner by our
            # view claims it, once an old owner's claims had time to arrive.
            if owner == local.name and not self._old_owner_may_claim(wall_ms, record):
                self._start_pending(wall_ms, record, record.attempt)
        elif assignee == local.name:
            written = self._records.written_at(record.id)
            if (wall_ms if written is None else written) >= local.started_at:
                self._start_pending(wall_ms, record, record.attempt)
            elif local.history_held:
                # Assigned to an earlier life of ours, which may have
                # started it before it died.
                self._take_over(wall_ms, record, local.name)
        elif owner == local.name and self._view.failed(wall_ms, assignee):
            self._take_over(wall_ms, record, owner)

    def _start_pending(self, wall_ms: int, record: RunRecord, attempt: int) -> None:
        spec = self._records.spec_of(record)
        if spec is None:
            self._records.write(advance(record, RunEvent.LOSE, wall_ms, error="its job was removed"), None)
        elif not self.room(urgent=_urgent(record)):
            self._enqueue(record)
        elif record.tick is not None and record.attempt == 1:
            # A tick that waited for a slot (a pending tick of attempt 1 was
            # never started): its policies decide now, as for a tick just due.
            self._ticks.decide(wall_ms, spec, record, self, waited=True)
        else:
            self.start(wall_ms, record, spec, attempt=attempt)

    def _reassign_pending(self, wall_ms: int) -> None:
        """Draining: pending runs assigned to us go to their owners by our
        view (which no longer holds us)."""
        name, records = self._local.name, self._records
        for record in list(records.unfinished.values()):
            if record.state is RunState.PENDING and record.owner == name and self._placement.run_owner(record) not in (None, name):
                self.assign(record.evolve(error=record.error or f"handed on by {name}, leaving"), records.spec_of(record))

    def assign(self, record: RunRecord, spec: JobSpec | None) -> None:
        """Write a pending record naming the node that is to claim it (the
        run's owner by our view), and hand it directly to that node and to
        the next on the ring for it, so it outlives us at once."""
        assignee = self._placement.run_owner(record)
        record = record.evolve(owner=assignee)
        self._records.write(record, spec)
        self._back_up(record, also=[] if assignee is None else [assignee])

    def _old_owner_may_claim(self, wall_ms: int, record: RunRecord) -> bool:
        """Did this run just become ours by a change of the ring (a node
        became ready, we did), from a live node whose view may lag ours and
        which may have claimed it meanwhile? Then wait out the handover, so
        its claim reaches us first (a node just ready, say, that would re-run
        a failed node's run another node already re-ran)."""
        placement = self._placement
        until = placement.ring_changed_at + round(self._local.config.handover * 1000)
        if wall_ms >= until or record.node is not None:
            return False
        previous = placement.previous_ring.owner(record.job if record.tick is not None else record.id)
        if previous is None or previous == self._local.name or self._view.failed(wall_ms, previous):
            return False
        self._records.recheck_pending(until, record.id)
        return True

    def _take_over(self, wall_ms: int, record: RunRecord, owner: str | None) -> None:
        """A running record whose owner failed (or is a previous life of
        ours): re-run it if it is ours now."""
        local, records = self._local, self._records
        if record.node is not None and record.node != local.name:
            # A node's own run of a job in mode all: nobody else can run it.
            if owner is None or self._placement.ring.owner(record.id) != local.name:
                return
            local.stats.lost += 1
            error = f"its node {record.node} failed"
            records.write(advance(record, RunEvent.LOSE, wall_ms, error=error), records.spec_of(record))
            return
        if owner != local.name:
            if record.owner == local.name:
                # Claimed by a previous life of ours, and someone else's now.
                error = f"handed back by {local.name}, which restarted while running it"
                self.assign(advance(record, RunEvent.HAND_BACK, wall_ms, error=error), records.spec_of(record))
            return
        if self._old_owner_may_claim(wall_ms, record):
            return
        spec = records.spec_of(record)
        if spec is None or record.attempt > spec.retries + local.config.max_failovers:
            local.stats.lost += 1
            error = "its job was removed" if spec is None else f"its owner {record.owner} failed on attempt {record.attempt}"
            records.write(advance(record, RunEvent.LOSE, wall_ms, error=error), spec)
            return
        if not self.room(urgent=True):
            self._enqueue(record)  # still the failed claimant's: taken over when a slot frees
            return
        local.stats.failovers += 1
        log.info("re-running %s (attempt %d): its owner %s failed", record.id, record.attempt + 1, record.owner)
        self.start(wall_ms, record, spec, attempt=record.attempt + 1, takeover=True)

    def start(self, wall_ms: int, record: RunRecord, spec: JobSpec, *, attempt: int, takeover: bool = False) -> None:
        local, records = self._local, self._records
        claim = advance(record, RunEvent.CLAIM, wall_ms, attempt=attempt, owner=local.name)
        local.stats.runs_started += 1
        records.begin(Execution(claim, spec, progress_written=wall_ms))
        records.write(claim, spec)
        # A takeover happens while views change (a node failed, others may
        # be joining): any member may be the next to think the run is its
        # own, and must hear of this claim before it does. Rare, so told to
        # every live member directly rather than to gossip's luck.
        self._back_up(claim, also=self._view.live_others() if takeover else ())
        local.effects.append(StartRun(record.id, attempt, spec, record.tick))
        records.deliver_updates(record.id)

    def cancel(self, wall_ms: int, record: RunRecord, spec: JobSpec | None, reason: str) -> None:
        execution = self._records.stop(record.id)
        if execution is not None:
            self._local.effects.append(CancelRun(record.id, execution.record.attempt, reason))
        self._records.write(advance(record, RunEvent.CANCEL, wall_ms, error=reason), spec)

    def _hand_back(self, wall_ms: int) -> None:
        """The drain deadline passed: give the runs still going to their
        next owners, to re-run."""
        local, records = self._local, self._records
        self._drain_deadline = None
        for run_id, execution in list(records.running.items()):
            records.stop(run_id)
            record, spec = execution.record, execution.spec
            local.effects.append(CancelRun(run_id, record.attempt, "the node is leaving"))
            local.stats.handed_back += 1
            if record.node is not None:
                records.write(advance(record, RunEvent.LOSE, wall_ms, error="its node left"), spec)
            else:
                error = f"handed back by {local.name}, leaving"
                self.assign(advance(record, RunEvent.HAND_BACK, wall_ms, error=error), spec)

    def _back_up(self, record: RunRecord, *, also: Sequence[str] = (), after: str | None = None, reliable: bool = False) -> None:
        """Hand a record we wrote (a claim, an outcome, an assignment)
        directly to the node that would take the run over if its owner
        (or ``after``) died: the next on the ring for it; and to ``also``.
        Gossip may be slow to reach it, and it must neither re-run what we
        ran nor lose it. An outcome also goes to the node the run was
        submitted through, where its submitter likely waits for it."""
        name = self._local.name
        key = record.job if record.tick is not None and record.node is None else record.id
        owner = after or record.owner or name
        successor = next((other for other in self._placement.ring.preference(key, 2) if other != owner), None)
        via = record.via if record.state.finished else None
        members = {member for member in (successor, via, *also) if member is not None and member != name}
        if members:
            self._local.store.push(RUNS, record.id, sorted(members), reliable=reliable)
