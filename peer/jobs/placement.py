"""Placement: the ring of eligible nodes, the owners it gives, and the leases
of the jobs in mode ``one``.

Theory of operation
-------------------
Cron jobs in mode ``one`` are placed on the eligible nodes
(``peer.jobs.view``) by consistent hashing (``peer.jobs.ring``); a
submitted run goes to its run id's owner on the ring; a run of a job in
mode ``all`` belongs to its node (``run_owner``). Every node computes the
same owners from the same view, so no leader hands work out. Views change
in bursts (a cluster starting, a split healing): one ring per burst
(``RING_REBUILD_MS``), not one per member; the previous ring is kept, with
when it changed, since a run's old owner may be claiming it still.

Owning a job by view is not enough to walk its schedule: a cron job in mode
``one`` is walked by the holder of its lease (``peer.jobs.leases``). A live
holder whose view moves the job elsewhere transfers the lease, with the
last tick it handled, to the new owner, which goes on from there; only a
gone holder's lease (failed, left, an ended life) is acquired, by the owner
by view, which waits a handover time for a rival acquisition and then looks
back over the ticks nobody recorded after the latest one with an outcome (a
claim alone may have died with its holder, and earlier claims of the same
moment with it). A lease handed to a node whose view differs from its
sender's waits ``forward_delay`` before it is passed on. Placing tells the
walk (``peer.jobs.ticks``) which jobs to walk, and from where.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from peer.jobs.leases import ACQUIRE, TRANSFER, Lease, same_life
from peer.jobs.local import LEASES, Local, Role, log
from peer.jobs.records import JobEntry, Records
from peer.jobs.ring import Ring
from peer.jobs.runs import RunRecord
from peer.jobs.ticks import Ticks
from peer.jobs.view import View

# At most one new ring per this many milliseconds.
RING_REBUILD_MS = 100


@attrs.define(eq=False)
class Placement:
    _local: Local
    _view: View
    _records: Records
    _ticks: Ticks
    _ring: Ring = attrs.field(init=False, factory=lambda: Ring(()))
    _previous_ring: Ring = attrs.field(init=False)  # before the last change, with when it changed:
    _ring_changed_at: int = attrs.field(init=False, default=0)  # a pending run's old owner may be claiming it still
    _owners: dict[str, str] = attrs.field(init=False, factory=dict)  # cron job in mode one -> owner
    _given_at: dict[str, int] = attrs.field(init=False, factory=dict)  # job whose lease was handed to us -> when it arrived
    _leases_changed: bool = attrs.field(init=False, default=False)
    _replace_at: int | None = attrs.field(init=False, default=None)  # when to place again: a lease we may pass on
    _stale: bool = attrs.field(init=False, default=True)
    _jobs_changed: bool = attrs.field(init=False, default=True)
    _placed_as: Role | None = attrs.field(init=False, default=None)

    @_previous_ring.default
    def _first_ring(self) -> Ring:
        return self._ring

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def previous_ring(self) -> Ring:
        return self._previous_ring

    @property
    def ring_changed_at(self) -> int:
        return self._ring_changed_at

    def owner(self, job_id: str) -> str | None:
        """Who runs the job's ticks (mode one), by this node's view."""
        return self._owners.get(job_id)

    def run_owner(self, record: RunRecord) -> str | None:
        if record.node is not None:
            return record.node
        if record.tick is not None and record.job in self._owners:
            return self._owners[record.job]
        return self._ring.owner(record.id)

    def mark_stale(self) -> None:
        """The view, our role or a job changed: place again."""
        self._stale = True

    def jobs_changed(self) -> None:
        self._stale = self._jobs_changed = True

    def recheck_leases(self) -> None:
        """A job ours by our view whose lease another holds: is that holder
        gone by now (a leave's grace passed)?"""
        if any(self._owners.get(job_id) == self._local.name and not self._ticks.walks(job_id) for job_id in self._owners):
            self._leases_changed = self._stale = True

    def forget(self, job_id: str, *, defined: bool) -> None:
        """The job is no longer defined (``defined``: it was, until now)."""
        if defined:
            self._local.store.remove(LEASES, job_id)  # a lease lives as long as its job
        self._given_at.pop(job_id, None)

    def deadlines(self) -> list[int]:
        deadlines = []
        if self._replace_at is not None:
            # No sooner than a debounced ring rebuild may run: a deadline
            # place() would only put off again is a busy loop (sim seed 38).
            deadlines.append(max(self._replace_at, self._ring_changed_at + RING_REBUILD_MS))
        if self._stale:
            deadlines.append(self._ring_changed_at + RING_REBUILD_MS)
        return deadlines

    def place(self, wall_ms: int) -> None:
        """Place again if something changed, or a lease we may pass on is due."""
        if self._stale or (self._replace_at is not None and wall_ms >= self._replace_at):
            self._place(wall_ms)

    def _place(self, wall_ms: int) -> None:
        """Recompute who owns what, settle the leases of the jobs in mode
        one (``peer.jobs.leases``), and start or stop walking schedules."""
        local = self._local
        self._stale = False
        eligible = tuple(sorted(self._view.eligible()))
        unchanged = eligible == self._ring.members and not self._jobs_changed and local.role is self._placed_as
        if unchanged and not self._leases_changed and (self._replace_at is None or wall_ms < self._replace_at):
            return  # a view change that moves no work (a suspicion, a refutation)
        if eligible != self._ring.members and wall_ms < self._ring_changed_at + RING_REBUILD_MS:
            # Views change in bursts (a cluster starting, a split healing):
            # one ring per burst, not one per member.
            self._stale = True
            return
        self._jobs_changed, self._leases_changed, self._placed_as, self._replace_at = False, False, local.role, None
        if eligible != self._ring.members:
            self._previous_ring, self._ring_changed_at = self._ring, wall_ms
            # From the last ring: a join or a leave then costs a few slices
            # of it, not a sort of every member's points.
            self._ring = Ring(eligible, load_factor=local.config.load_factor, previous=self._ring)
        jobs = self._records.jobs
        placed = sorted(
            job_id
            for job_id, entry in jobs.items()
            if entry.spec.schedule is not None and entry.spec.mode == "one" and not entry.spec.paused
        )
        self._owners = self._ring.assign(placed)
        mine: dict[str, tuple[int, bool]] = {}  # job -> (cursor to start from, may look back before our start)
        for job_id in placed:
            walk = self._settle_lease(wall_ms, job_id)
            if walk is not None:
                mine[job_id] = walk
        if local.role is Role.READY:
            for job_id, entry in jobs.items():
                if entry.spec.mode == "all" and entry.spec.schedule is not None and not entry.spec.paused:
                    # A node owes the ticks due while it is a member, no earlier.
                    mine[job_id] = (max(entry.since, local.ready_at), False)
        self._ticks.walk(mine)

    def _settle_lease(self, wall_ms: int, job_id: str) -> tuple[int, bool] | None:
        """Apply the lease rules (``peer.jobs.leases``) to a job in mode one:
        transfer it, acquire it, or wait for it. Where to start walking its
        schedule, if we walk it."""
        local = self._local
        entry = self._records.jobs[job_id]
        owner = self._owners.get(job_id)
        lease = self._lease(job_id)
        if lease is not None and self._holds(lease):
            if owner == local.name and local.role is Role.READY:
                if lease.how == TRANSFER and lease.cursor is not None:
                    return max(lease.cursor, entry.since), False
                return self._look_back_from(wall_ms, entry, lease), True
            if owner is None:
                return None  # nobody to give it to: keep it, walk nothing
            given_until = self._given_at.get(job_id, 0) + round(local.config.forward_delay * 1000)
            if wall_ms < given_until:
                # Handed to us by a node whose view differs from ours: give
                # the views a moment to agree before we pass it on.
                self._replace_at = given_until if self._replace_at is None else min(self._replace_at, given_until)
                return None
            self._transfer(wall_ms, job_id, lease, owner)
            return None
        if owner != local.name or local.role is not Role.READY:
            return None
        if lease is not None and not self._holder_gone(wall_ms, lease):
            return None  # its live holder hands it to us when its view agrees
        self._put_lease(wall_ms, job_id, Lease(local.name, local.life, None if lease is None else lease.cursor, ACQUIRE), [])
        lease = self._lease(job_id)
        assert lease is not None
        # A node whose view also makes it the owner may be acquiring it too:
        # the later write wins everywhere; wait to see which.
        self._ticks.wait_handover(job_id, wall_ms + round(local.config.handover * 1000))
        return self._look_back_from(wall_ms, entry, lease), True

    def _look_back_from(self, wall_ms: int, entry: JobEntry, lease: Lease) -> int:
        """Where an acquired lease's walk starts: as far back as records can
        still be seen, but after the last tick handed over, and after the
        latest tick of the job anyone recorded an outcome of: holders walk
        the schedule in order, and an outcome spreads together with its
        holder's claims of earlier ticks (``Records.write``), so every tick
        before it was handled and its record is out, even if it has not
        reached us yet (gossip is not sure to bring everything soon). A
        claim alone tells less: its holder, gone, may have claimed earlier
        ticks in the same moment and died before any copy left (wide seed
        296: a tick claimed with a later one in one catch-up, its direct
        copy lost under 25 % loss, the later one's arrived; the earlier
        never ran)."""
        start = max(entry.since, wall_ms - round(entry.spec.result_ttl * 1000), self._records.latest_tick(entry.spec.id))
        return start if lease.cursor is None else max(start, lease.cursor)

    def _transfer(self, wall_ms: int, job_id: str, lease: Lease, owner: str) -> None:
        member = self._view.member(owner)
        life = member.incarnation if member is not None else 0
        self._put_lease(wall_ms, job_id, Lease(owner, life, self._ticks.walked_to(job_id, lease.cursor), TRANSFER), [owner])
        self._ticks.end_handover(job_id)
        log.debug("lease of %s handed to %s", job_id, owner)

    def _put_lease(self, wall_ms: int, job_id: str, lease: Lease, push_to: Sequence[str]) -> None:
        store = self._local.store
        store.put(LEASES, job_id, lease.to_wire(), ttl=self._local.config.lease_ttl)
        if push_to:
            store.push(LEASES, job_id, push_to)
        self.load_lease(wall_ms, job_id)

    def _lease(self, job_id: str) -> Lease | None:
        register = self._local.store.get(LEASES, job_id)
        if register is None:
            return None
        try:
            return Lease.from_wire(register.value)
        except ValueError:
            return None  # garbage from a broken peer: the owner writes a good one over it

    def _holds(self, lease: Lease) -> bool:
        return lease.holder == self._local.name and same_life(lease.life, self._local.life)

    def _holder_gone(self, wall_ms: int, lease: Lease) -> bool:
        """Will the lease's holder never hand it over? Failed, gone, or a
        life that has ended (the node restarted since)."""
        if lease.holder == self._local.name:
            return True  # an earlier life of ours: this one did not get it
        if self._view.failed(wall_ms, lease.holder):
            return True
        member = self._view.member(lease.holder)
        return member is not None and not same_life(member.incarnation, lease.life)

    def load_lease(self, wall_ms: int, job_id: str) -> None:
        lease = self._lease(job_id)
        if lease is not None and lease.how == TRANSFER and self._holds(lease):
            self._given_at.setdefault(job_id, wall_ms)
        else:
            self._given_at.pop(job_id, None)
        self._leases_changed = self._stale = True

    def footprint(self) -> dict[str, int]:
        return {"leases_given": len(self._given_at)}
