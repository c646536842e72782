"""Leases: which node walks a cron job's schedule, handed from hand to hand.

Theory of operation
-------------------
Consistent hashing tells each node who *should* own a job in mode ``one``,
by its own view of the ready members. Views differ for a moment whenever
membership changes (a node starts, drains, restarts), and a rule that says
"run it if your view makes you the owner" then lets two nodes run the same
tick: the old owner, not yet aware of the change, and the new one, which
cannot tell from the runs map alone what the old one ran last (that record
may still be on its way). Waiting a fixed handover time for it only hides
the race while gossip is quick.

So a job's schedule is walked by the node holding its lease, and a live
holder gives its lease away explicitly. The ``leases`` map holds, per job,
one ``Lease``: the holder (name and life: the incarnation it booted with, so
that a restarted node is never mistaken for its previous life), and the
cursor, the last tick the job's schedule was walked to. The rules:

- A node walks a job's ticks only while it holds the job's lease and is its
  owner by its own view (and is ready).
- A holder whose view makes another node the owner (a node became ready, or
  the holder is draining) *transfers*: it stops walking, writes the lease
  naming the new owner with its cursor, and sends it to that node directly.
  The new owner continues from the cursor: the ticks up to it were handled,
  and it judges the ones after by their records, which the old holder
  could only have written before it let go. A transfer never races a claim.
- A lease whose holder is gone (failed, left, unknown, or an earlier life
  of a restarted node) or that does not exist (a new job) is *acquired* by
  the job's owner by view: it writes itself as holder, waits a handover time
  in which a concurrent acquisition by a node with another view wins or
  loses by the map's order (the later write wins everywhere), then looks
  back from the cursor over the ticks whose records can still be seen, and
  runs those nobody recorded. Only here can a tick run twice: a re-run of
  what the failed holder ran unseen.
- A node that receives a lease it will not run (its view differs from the
  sender's) passes it on, but not sooner than ``forward_delay`` after it
  arrived, so two nodes with different views do not bounce it at network
  speed while their views converge.

A lease lives as long as its job; one whose job was removed is removed.
"""

from __future__ import annotations

from typing import Any

import attrs

# An incarnation this far above a life's first one is a new life (a restart:
# incarnations are boot times in ms), not refutations (which add one each).
NEW_LIFE_INCARNATION_GAP = 1_000

TRANSFER, ACQUIRE = "transfer", "acquire"


def same_life(incarnation: int, life: int) -> bool:
    """Is a member seen at ``incarnation`` the life that began at ``life``?"""
    return 0 <= incarnation - life < NEW_LIFE_INCARNATION_GAP


@attrs.frozen
class Lease:
    holder: str
    life: int  # the holder's incarnation when it was given the lease
    cursor: int | None  # epoch ms: every tick up to this one was handled
    how: str  # TRANSFER (handed over by the previous holder) or ACQUIRE

    def to_wire(self) -> dict[str, Any]:
        return {"holder": self.holder, "life": self.life, "cursor": self.cursor, "how": self.how}

    @classmethod
    def from_wire(cls, value: Any) -> Lease:
        """``ValueError`` for anything a broken or newer peer may write."""
        try:
            holder, life, cursor, how = value["holder"], value["life"], value["cursor"], value["how"]
        except (KeyError, TypeError):
            raise ValueError("a lease is a map of holder, life, cursor and how") from None
        if not isinstance(holder, str) or not holder:
            raise ValueError("a lease's holder is a name")
        if isinstance(life, bool) or not isinstance(life, int):
            raise ValueError("a lease's life is an incarnation")
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int)):
            raise ValueError("a lease's cursor is epoch ms")
        if how not in (TRANSFER, ACQUIRE):
            raise ValueError(f"a lease is got by {TRANSFER} or {ACQUIRE}")
        return cls(holder, life, cursor, how)
