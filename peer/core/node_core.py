"""One node's protocols behind one sans-IO interface.

``NodeCore`` composes the membership core, the replication core and (when
given a ``SchedulerConfig``) the scheduler, so a driver, the trio runtime
or the simulator, drives one object: ``receive``, ``tick``,
``next_deadline``, ``take_effects``. It routes each message by its type,
keeps the replication layer's peers equal to the live members, lets
replication deltas ride on membership packets, starts a digest sync with
one member as soon as it finds the cluster (how a new or restarted node
catches up), feeds the scheduler the view and the changes to its maps,
publishes the scheduler's role in the membership metadata, and leaves in
two steps: drain the scheduler, then push state to a few members and leave. Time comes in as ``now`` (monotonic seconds) and, for the hybrid
logical clock, from the injected ``wall_clock`` (seconds since the epoch).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from crdt.hlc import Timestamp
from crdt.messages import MESSAGE_TYPES as REPLICATION_TYPES
from crdt.ormap import Register
from membership.config import MembershipConfig
from membership.core import Membership
from membership.effects import Effect, Event
from membership.state import Address, EventKind, Member, Status
from peer.core.replication import ReplicationConfig, Replicator
from peer.jobs.leases import NEW_LIFE_INCARNATION_GAP
from peer.jobs.records import READABLE
from peer.jobs.runs import precedence
from peer.jobs.scheduler import JOBS, RUNS, Role, Scheduler, SchedulerConfig, SchedulerEffect
from peer.jobs.scheduler import MAPS as SCHEDULER_MAPS

# Members a leaving node hands its writes to: enough that some are on its
# side of a partition it may not know of yet (chaos seed 90).
LEAVE_PUSH_PEERS = 4


# The roles of members that hold the cluster's state (a starting one may not yet).
STATE_HOLDERS = (Role.READY.meta, Role.DRAINING.meta)


class NodeCore:
    def __init__(
        self,
        name: str,
        addr: Address,
        membership_config: MembershipConfig,
        replication_config: ReplicationConfig,
        *,
        maps: Sequence[str] = (),
        rng: random.Random,
        now: float,
        wall_clock: Callable[[], float],
        incarnation: int = 1,
        meta: bytes = b"",
        scheduler: SchedulerConfig | None = None,
    ) -> None:
        self.name = name
        self._wall_clock = wall_clock
        if scheduler is not None:
            maps = [*SCHEDULER_MAPS, *(m for m in maps if m not in SCHEDULER_MAPS)]
        # A replica id per life: a restarted node's new writes never reuse
        # the dots of its previous life.
        self.replicator = Replicator(
            addr,
            f"{name}#{incarnation}",
            replication_config,
            maps=maps,
            rng=random.Random(rng.getrandbits(64)),
            now=now,
            precedence={RUNS: precedence} if scheduler is not None else None,
            validators=READABLE if scheduler is not None else None,
            watch=SCHEDULER_MAPS if scheduler is not None else (),
        )
        self.scheduler: Scheduler | None = None
        if scheduler is not None:
            self.scheduler = Scheduler(
                name, scheduler, _Maps(self), rng=random.Random(rng.getrandbits(64)), wall_ms=self.wall_ms(),
                life=incarnation,
            )
            meta = self.scheduler.role.meta
        self.membership = Membership(
            name, addr, membership_config, rng=rng, now=now, incarnation=incarnation, meta=meta, piggyback=self.replicator
        )
        self._rng = random.Random(rng.getrandbits(64))
        self._advance(now)
        self._next_prompt_sync = now
        self._lives: dict[str, int] = {}  # member -> incarnation last seen live
        self._peers_version = -1
        self._alone = True
        self._leave_requested = False
        self._seeded = False  # given seeds other than ourselves (join)
        self._view_version = -1
        self._first_as_of = (-1, True)  # (view version, _first() then)
        self._sync_peers()

    # -- the driver's interface ---------------------------------------------------

    def receive(self, now: float, src: Address, message: Any, reliable: bool = False) -> None:
        self._advance(now)
        if type(message).TAG in REPLICATION_TYPES:
            self.replicator.receive(now, self.wall_ms(), message)
        else:
            self.membership.receive(now, src, message, reliable)

    def tick(self, now: float) -> None:
        self._advance(now)
        self.membership.tick(now)
        self.replicator.tick(now, self.wall_ms())
        if self.replicator.has_gossip():
            self.membership.gossip_soon(now)  # held writes were released
        self._drive_scheduler()

    def next_deadline(self) -> float:
        deadline = min(self.membership.next_deadline(), self.replicator.next_deadline())
        if self.scheduler is not None:
            # The scheduler keeps wall time (ticks are wall-clock times), in
            # whole milliseconds: a millisecond more, so that the wall clock
            # has surely reached the deadline when we are called (a drifting
            # clock otherwise wakes us a hair early, for nothing).
            wall_ms = self._wall_ms_at_now
            deadline = min(deadline, self._now + (max(0, self.scheduler.next_deadline() - wall_ms) + 1) / 1000)
        return deadline

    def take_effects(self) -> list[Effect | SchedulerEffect]:
        if self._scheduler_stale():
            self._drive_scheduler()
        effects: list[Effect | SchedulerEffect] = []
        effects.extend(self.membership.take_effects())
        self._sync_peers()
        returned = [e.member for e in effects if isinstance(e, Event) and self._returned(e)]
        if returned and self._now >= self._next_prompt_sync:
            # Members we had lost came back (a partition healed, a pause
            # ended): their writes and ours diverged, so compare now rather
            # than at the next periodic sync. Once per half interval at most:
            # a healed split returns many members at once.
            self._next_prompt_sync = self._now + self.replicator.config.sync_interval / 2
            self.replicator.sync_with(self._rng.choice(returned).addr)
        effects.extend(self.replicator.take_effects())
        if self.scheduler is not None:
            effects.extend(self.scheduler.take_effects())
        return effects

    def _returned(self, event: Event) -> bool:
        """Is this the return of a member's same life? A restarted process
        has a new incarnation (its boot time in ms, far above the old one)
        and starts empty: it catches up by itself, so nobody need push to it;
        refutations bump the incarnation by one at a time."""
        member = event.member
        before = self._lives.get(member.name)
        if member.status.is_live:
            self._lives[member.name] = member.incarnation
        return (
            event.kind is EventKind.JOINED
            and before is not None
            and member.incarnation - before < NEW_LIFE_INCARNATION_GAP
        )

    def join(self, now: float, seeds: Iterable[Address]) -> None:
        seeds = list(seeds)
        # With seeds to find, we are not a cluster's first node while we
        # know nobody: we have not found the cluster yet.
        self._seeded = self._seeded or any(addr != self.addr for addr in seeds)
        self.membership.join(now, seeds)

    def leave(self, now: float) -> None:
        """Leave gracefully: let the scheduler hand its work over, then push
        our state to a few members, so that nothing written here is lost
        with us, and leave."""
        self._advance(now)
        self._leave_requested = True
        if self.scheduler is not None:
            self.scheduler.drain(self.wall_ms())
        self._drive_scheduler()

    def _drive_scheduler(self) -> None:
        """Bring the scheduler up to date: the view, changes to its maps,
        its timers; publish its role; leave once it has drained."""
        scheduler = self.scheduler
        if scheduler is not None:
            wall_ms = self.wall_ms()
            if self.membership.version != self._view_version:
                self._view_version = self.membership.version
                scheduler.set_view(wall_ms, self.membership.members())
            changes = self.replicator.take_changes()
            if changes:
                scheduler.on_changes(wall_ms, changes)
            in_sync = self.replicator.in_sync
            first = self._first()
            joined = not (self._alone and self._seeded)
            scheduler.tick(
                wall_ms, caught_up=first or JOBS in in_sync, history_caught_up=first or RUNS in in_sync, joined=joined
            )
            me = self.membership.member(self.name)
            if me is not None and not self.membership.leaving and me.meta != scheduler.role.meta:
                self.membership.set_meta(self._now, scheduler.role.meta)
        if scheduler is None and self._alone or scheduler is not None and scheduler.role is Role.READY and self._first():
            # We became ready as the first node (or, with no scheduler, are
            # alone): what we hold is all there is, and we catch others up.
            self.replicator.caught_up_alone()
        if self._leave_requested and not self.membership.leaving and (scheduler is None or scheduler.drained):
            self.replicator.hand_off(self._hand_off_peers())
            self.membership.leave(self._now)

    def _advance(self, now: float) -> None:
        self._now = now
        self._wall_ms_at_now = self.wall_ms()

    def _scheduler_stale(self) -> bool:
        """Has anything happened that the scheduler must hear of before the
        effects go out: a view change, news in its maps, a deadline of its,
        a leave? Most frames bring nothing of the kind (a probe, a delta
        known already); ``tick`` drives it whatever happened."""
        scheduler = self.scheduler
        return (
            scheduler is None
            or self._leave_requested
            or self.membership.version != self._view_version
            or self.replicator.has_changes()
            or scheduler.next_deadline() <= self.wall_ms()
        )

    def _first(self) -> bool:
        """Are we among the first nodes of a cluster: alone with no seed to
        find, or seeing no member that holds the cluster's state (every
        other one is starting, as in a cluster started cold)? Then nobody
        can catch us up."""
        if self._alone and self._seeded:
            return False  # still looking for the cluster
        version = self.membership.version
        if self._first_as_of[0] != version:
            first = not any(m.status.is_live and m.meta in STATE_HOLDERS for m in self.membership.members() if m.name != self.name)
            self._first_as_of = (version, first)
        return self._first_as_of[1]

    def _hand_off_peers(self) -> list[Address]:
        """Whom a leaving node gives its writes to: members it holds alive
        before suspects (which may be cut off from us), at random."""
        others = [m for m in self.membership.live_members() if m.name != self.name]
        self._rng.shuffle(others)
        others.sort(key=lambda m: m.status is not Status.ALIVE)
        return [m.addr for m in others[:LEAVE_PUSH_PEERS]]

    def set_meta(self, now: float, meta: bytes) -> None:
        self.membership.set_meta(now, meta)

    # -- replicated maps -----------------------------------------------------------------

    def put(
        self, now: float, map_name: str, key: str, value: Any, *, ttl: float | None = None, hold: float = 0.0
    ) -> Timestamp:
        stamp = self.replicator.put(self.wall_ms(), map_name, key, value, ttl=ttl, hold=hold)
        self.membership.gossip_soon(now)
        return stamp

    def remove(self, now: float, map_name: str, key: str) -> bool:
        removed = self.replicator.remove(self.wall_ms(), map_name, key)
        self.membership.gossip_soon(now)
        return removed

    def get(self, map_name: str, key: str, *, expired: bool = False) -> Register | None:
        return self.replicator.get(self.wall_ms(), map_name, key, expired=expired)

    def push(self, map_name: str, key: str, members: Sequence[str], *, reliable: bool = False) -> None:
        """Hand a key's entry to these members directly (a run to the node
        that is to claim it, a lease to its new holder), not waiting for
        gossip to bring it; members this node does not know are skipped."""
        addresses = [m.addr for m in (self.membership.member(name) for name in members) if m is not None and m.name != self.name]
        if addresses:
            self.replicator.push(addresses, map_name, [key], reliable=reliable)

    # -- the membership view, for drivers and observers ---------------------------------

    @property
    def addr(self) -> Address:
        return self.membership.addr

    @property
    def incarnation(self) -> int:
        return self.membership.incarnation

    @property
    def checksum(self) -> int:
        return self.membership.checksum

    @property
    def version(self) -> int:
        return self.membership.version

    @property
    def leaving(self) -> bool:
        return self._leave_requested or self.membership.leaving

    @property
    def leave_complete(self) -> bool:
        return self.membership.leave_complete

    def live_members(self) -> list[Member]:
        return self.membership.live_members()

    def wall_ms(self) -> int:
        """Wall-clock time, epoch milliseconds: what the maps and the
        scheduler go by."""
        return int(self._wall_clock() * 1000)

    # -- internals -------------------------------------------------------------------------

    def _sync_peers(self) -> None:
        if self.membership.version == self._peers_version:
            return
        self._peers_version = self.membership.version
        others = [m for m in self.membership.live_members() if m.name != self.name]
        peers = [m.addr for m in others]
        self.replicator.set_peers(peers, sources=[m.addr for m in others if m.meta in STATE_HOLDERS])
        if self._alone and peers:
            # We just found the cluster (booted, restarted, or back from
            # isolation): catch up from one member now. Only nodes that were
            # alone ask, so a newcomer's state crosses the network once, not
            # once per member.
            self.replicator.catch_up(self._now)
        self._alone = not peers


class _Maps:
    """The replicated maps as the scheduler sees them (``scheduler.Store``):
    writes go through the node, so they are gossiped soon."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core

    def put(self, map_name: str, key: str, value: Any, *, ttl: float | None = None, hold: float = 0.0) -> Timestamp:
        return self._core.put(self._core._now, map_name, key, value, ttl=ttl, hold=hold)

    def remove(self, map_name: str, key: str) -> bool:
        return self._core.remove(self._core._now, map_name, key)

    def get(self, map_name: str, key: str, *, expired: bool = False) -> Register | None:
        return self._core.get(map_name, key, expired=expired)

    def push(self, map_name: str, key: str, members: Sequence[str], *, reliable: bool = False) -> None:
        self._core.push(map_name, key, members, reliable=reliable)

    def items(self, map_name: str) -> Iterator[tuple[str, Register]]:
        return self._core.replicator.map(map_name).items(self._core.replicator.hlc.peek(self._core.wall_ms()))
