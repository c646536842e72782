"""Member states, and the one rule that orders everything a node hears.

Theory of operation
-------------------
Every piece of membership news is a *claim*: "member M is in status S at
incarnation I". Claims about one member are totally ordered by the key

    (incarnation, status)        with  ALIVE < SUSPECT < DEAD < LEFT

and a node keeps, for every member, the greatest claim it has heard. A claim
replaces the current one if and only if its key is strictly greater. Taking a
maximum is commutative, associative and idempotent, so nodes that hear the
same claims in any order, any number of times, hold the same view: this is why
gossip converges, and why duplicated or reordered packets are harmless.

The SWIM rules all follow from that order:

- suspect(i) overrides alive(i), and only alive(i+1) overrides suspect(i).
  Only a member raises its own incarnation, so only the member itself can
  refute a suspicion (``refutation``).
- dead(i) overrides alive(i) and suspect(i): a failure sticks until the
  member itself comes back with a higher incarnation.
- left(i) overrides dead(i): a member that announced its leave is reported as
  left, never as failed, even if a failure claim races with its leave.
- a restarted member starts from a higher incarnation than it ever used
  before (see ``Membership``), so its new self outranks every claim about its
  old self, including the old self's death.

Two refinements live in the protocol core, not in the order: a member we do
not know yet can only be introduced by an alive claim (a stray suspect or dead
claim about a stranger carries no address), and a second-hand *dead* claim
learned in a full state exchange is applied as *suspect* so the member gets a
chance to refute it (memberlist does the same).

``TRANSITION_EVENTS`` below is the single table of what a change of a
member's status means to the layers above.
"""

from __future__ import annotations

import enum
import hashlib

import attrs

Address = tuple[str, int]


class Status(enum.IntEnum):
    """A member's status; the integer value is its rank in the claim order."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def is_live(self) -> bool:
        """Alive or suspect: still counted as a member of the cluster."""
        return self <= Status.SUSPECT


class EventKind(enum.Enum):
    """Membership changes reported to the layers above."""

    JOINED = "joined"  # entered the live view (from nothing, dead or left)
    SUSPECT = "suspect"  # alive -> suspect
    ALIVE = "alive"  # suspect -> alive: the member refuted the suspicion
    FAILED = "failed"  # live -> dead
    LEFT = "left"  # live -> left: a graceful leave
    UPDATED = "updated"  # alive -> alive with a new address or metadata


@attrs.frozen(slots=True)
class Member:
    """What one node believes about one member: a value, replaced on change."""

    name: str
    addr: Address
    incarnation: int
    status: Status
    meta: bytes = b""

    @property
    def key(self) -> tuple[int, int]:
        return (self.incarnation, self.status)


def supersedes(incarnation: int, status: Status, current: Member) -> bool:
    """The one rule: a claim replaces what we know iff its key is greater."""
    return (incarnation, status) > (current.incarnation, current.status)


# (old status or None for a stranger, new status) -> events emitted, in order.
# A missing pair emits nothing (for example dead -> dead at a higher
# incarnation, or a member we already consider gone going from dead to left).
TRANSITION_EVENTS: dict[tuple[Status | None, Status], tuple[EventKind, ...]] = {
    (None, Status.ALIVE): (EventKind.JOINED,),
    (None, Status.SUSPECT): (EventKind.JOINED, EventKind.SUSPECT),
    (Status.ALIVE, Status.SUSPECT): (EventKind.SUSPECT,),
    (Status.ALIVE, Status.DEAD): (EventKind.FAILED,),
    (Status.ALIVE, Status.LEFT): (EventKind.LEFT,),
    (Status.SUSPECT, Status.ALIVE): (EventKind.ALIVE,),
    (Status.SUSPECT, Status.DEAD): (EventKind.FAILED,),
    (Status.SUSPECT, Status.LEFT): (EventKind.LEFT,),
    (Status.DEAD, Status.ALIVE): (EventKind.JOINED,),
    (Status.DEAD, Status.SUSPECT): (EventKind.JOINED, EventKind.SUSPECT),
    (Status.LEFT, Status.ALIVE): (EventKind.JOINED,),
    (Status.LEFT, Status.SUSPECT): (EventKind.JOINED, EventKind.SUSPECT),
}


def transition_events(old: Member | None, new: Member) -> tuple[EventKind, ...]:
    """Events for replacing ``old`` by ``new`` (the table, plus UPDATED)."""
    old_status = old.status if old is not None else None
    if old is not None and old_status is Status.ALIVE and new.status is Status.ALIVE:
        changed = old.addr != new.addr or old.meta != new.meta
        return (EventKind.UPDATED,) if changed else ()
    return TRANSITION_EVENTS.get((old_status, new.status), ())


CHECKSUM_MODULUS = 1 << 64


def member_digest(name: str, status: Status, incarnation: int) -> int:
    """One live member's share of the membership checksum.

    The checksum of a view is the sum of its live members' digests modulo
    2**64: order-independent, and updated in O(1) when one member changes
    (Ringpop hashes a sorted list instead, which costs O(n log n) per change).
    """
    data = b"%s\x00%d\x00%d" % (name.encode(), status, incarnation)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
