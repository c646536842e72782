"""One node's protocols behind one sans-IO interface.

``NodeCore`` composes the membership core and the replication core (and,
later, the scheduler) so a driver, the trio runtime or the simulator,
drives one object: ``receive``, ``tick``, ``next_deadline``,
``take_effects``. It routes each message by its type, keeps the replication
layer's peers equal to the live members, lets replication deltas ride on
membership packets, starts a digest sync with one member as soon as it finds
the cluster (how a new or restarted node catches up), and pushes state to a
few members when leaving. Time comes in as ``now`` (monotonic seconds) and, for the hybrid
logical clock, from the injected ``wall_clock`` (seconds since the epoch).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from crdt.hlc import Timestamp
from crdt.messages import MESSAGE_TYPES as REPLICATION_TYPES
from crdt.ormap import Register
from membership.config import MembershipConfig
from membership.core import Membership
from membership.effects import Effect, Event
from membership.state import Address, EventKind, Member
from peer.replication import ReplicationConfig, Replicator

# Members a leaving node pushes its state to.
LEAVE_PUSH_PEERS = 2
# An incarnation this far above the last one seen is a new life (a restart:
# incarnations are boot times in ms), not refutations (which add one each).
NEW_LIFE_INCARNATION_GAP = 1_000


class NodeCore:
    def __init__(
        self,
        name: str,
        addr: Address,
        membership_config: MembershipConfig,
        replication_config: ReplicationConfig,
        *,
        maps: Sequence[str],
        rng: random.Random,
        now: float,
        wall_clock: Callable[[], float],
        incarnation: int = 1,
        meta: bytes = b"",
    ) -> None:
        self.name = name
        self._wall_clock = wall_clock
        # A replica id per life: a restarted node's new writes never reuse
        # the dots of its previous life.
        self.replicator = Replicator(
            addr, f"{name}#{incarnation}", replication_config, maps=maps, rng=random.Random(rng.getrandbits(64)), now=now
        )
        self.membership = Membership(
            name, addr, membership_config, rng=rng, now=now, incarnation=incarnation, meta=meta, piggyback=self.replicator
        )
        self._rng = random.Random(rng.getrandbits(64))
        self._now = now
        self._next_prompt_sync = now
        self._lives: dict[str, int] = {}  # member -> incarnation last seen live
        self._peers_version = -1
        self._alone = True
        self._sync_peers()

    # -- the driver's interface ---------------------------------------------------

    def receive(self, now: float, src: Address, message: Any, reliable: bool = False) -> None:
        self._now = now
        if type(message).TAG in REPLICATION_TYPES:
            self.replicator.receive(now, self._wall_ms(), message)
        else:
            self.membership.receive(now, src, message, reliable)

    def tick(self, now: float) -> None:
        self._now = now
        self.membership.tick(now)
        self.replicator.tick(now, self._wall_ms())

    def next_deadline(self) -> float:
        return min(self.membership.next_deadline(), self.replicator.next_deadline())

    def take_effects(self) -> list[Effect]:
        effects = self.membership.take_effects()
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
        self.membership.join(now, seeds)

    def leave(self, now: float) -> None:
        """Leave gracefully, first pushing our state to a few members so that
        nothing written here is lost with us."""
        self.replicator.sync_with_some(LEAVE_PUSH_PEERS)
        self.membership.leave(now)

    def set_meta(self, now: float, meta: bytes) -> None:
        self.membership.set_meta(now, meta)

    # -- replicated maps -----------------------------------------------------------------

    def put(self, now: float, map_name: str, key: str, value: Any, *, ttl: float | None = None) -> Timestamp:
        stamp = self.replicator.put(self._wall_ms(), map_name, key, value, ttl=ttl)
        self.membership.gossip_soon(now)
        return stamp

    def remove(self, now: float, map_name: str, key: str) -> bool:
        removed = self.replicator.remove(self._wall_ms(), map_name, key)
        self.membership.gossip_soon(now)
        return removed

    def get(self, map_name: str, key: str) -> Register | None:
        return self.replicator.get(self._wall_ms(), map_name, key)

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
        return self.membership.leaving

    @property
    def leave_complete(self) -> bool:
        return self.membership.leave_complete

    def live_members(self) -> list[Member]:
        return self.membership.live_members()

    # -- internals -------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _sync_peers(self) -> None:
        if self.membership.version == self._peers_version:
            return
        self._peers_version = self.membership.version
        peers = [m.addr for m in self.membership.live_members() if m.name != self.name]
        self.replicator.set_peers(peers)
        if self._alone and peers:
            # We just found the cluster (booted, restarted, or back from
            # isolation): catch up from one member now. Only nodes that were
            # alone ask, so a newcomer's state crosses the network once, not
            # once per member.
            self.replicator.catch_up(self._now)
        self._alone = not peers
