"""The members as the scheduler sees them: who may own work, who is gone,
and which life of each node it is.

Theory of operation
-------------------
The driver hands the scheduler every membership view (``set_view``). From
it this part answers three questions for the others:

- Eligible: a node may own work when it is live and says it is ``ready``
  in its membership metadata (a node first spends ``settle`` seconds
  ``starting``, catching up the maps, and says ``draining`` when leaving).
  We count ourselves only while our own role is ``ready``.
- Failed: dead, or unknown once we have been up ``catch_up_window`` (before,
  we may just not have heard of it yet), or left ``left_grace`` ago (a node
  that left gracefully finished or handed back its runs first, but its last
  records may still be on their way).
- Lives: for each member, the incarnation its life began with and when we
  saw it begin. A record or a lease written by an ended life (the node
  restarted since) is not running anywhere: a restarted node starts empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from membership.state import Member, Status
from peer.jobs.leases import same_life
from peer.jobs.local import Local, Role


@attrs.define(eq=False)
class View:
    _local: Local
    _members: dict[str, Member] = attrs.field(init=False, factory=dict)
    # Member -> (incarnation its life began with, when we saw it).
    _lives: dict[str, tuple[int, int]] = attrs.field(init=False, factory=dict)
    _left_seen: dict[str, int] = attrs.field(init=False, factory=dict)  # member -> when we saw it had left

    def update(self, wall_ms: int, members: Sequence[Member]) -> None:
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

    def member(self, name: str) -> Member | None:
        return self._members.get(name)

    def life(self, name: str) -> tuple[int, int] | None:
        """The incarnation the member's current life began with, and when we saw it begin."""
        return self._lives.get(name)

    def eligible(self) -> list[str]:
        local = self._local
        names = [
            member.name
            for member in self._members.values()
            if member.name != local.name and member.status.is_live and member.meta == Role.READY.meta
        ]
        if local.role is Role.READY:
            names.append(local.name)
        return names

    def failed(self, wall_ms: int, name: str) -> bool:
        """Has this node gone, as far as the view says? Unknown counts as
        gone once we have been up ``catch_up_window`` (the members' table
        comes with our first state exchanges, and the dead stay in it for a
        day): before, we may just not have heard of it yet (wide seed 871:
        a node just back from a restart knew one member, and took the
        holder of every lease for gone). A node that left gracefully
        finished or handed back its runs first; its last records may still
        be on their way, so it counts as gone only ``left_grace`` after we
        saw it leave."""
        local = self._local
        if name == local.name:
            return False
        member = self._members.get(name)
        if member is None:
            return wall_ms >= local.started_at + round(local.config.catch_up_window * 1000)
        if member.status is Status.DEAD:
            return True
        left = self._left_seen.get(name)
        return left is not None and wall_ms >= left + round(local.config.left_grace * 1000)

    def live_others(self) -> list[str]:
        return sorted(name for name, member in self._members.items() if name != self._local.name and member.status.is_live)

    def footprint(self) -> dict[str, int]:
        return {"members_left": len(self._left_seen), "lives": len(self._lives)}
