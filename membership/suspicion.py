"""Lifeguard's dynamic suspicion timeout.

When a member becomes suspect we start a timer; if the member has not
refuted the suspicion when it fires, we declare it dead. The timer starts
long (``max_timeout``) and shrinks towards ``min_timeout`` as *independent*
members confirm the suspicion: with ``k`` confirmations expected, after ``c``
of them the timeout is

    max(min, max - (max - min) * log(c + 1) / log(k + 1))

so a member that many others also cannot reach is declared dead quickly,
while one suspected by a single (perhaps unhealthy) accuser gets the full
time to refute. Confirmations count once per distinct accuser.

``Suspicion.for_cluster`` is how ``membership.core`` starts one, and
``detection_bound`` is the one answer to "how long may a crash go
undeclared" that the simulator's and the real-process chaos checks use:
both follow from the same timings, so they are defined here, once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from membership.config import MembershipConfig


@attrs.define
class Suspicion:
    incarnation: int
    accuser: str  # who raised it first
    started: float
    min_timeout: float
    max_timeout: float
    expected_confirmations: int
    accusers: set[str]

    @classmethod
    def start(
        cls, incarnation: int, accuser: str, now: float, min_timeout: float, max_timeout: float, k: int
    ) -> Suspicion:
        return cls(incarnation, accuser, now, min_timeout, max_timeout, k, {accuser})

    @classmethod
    def for_cluster(cls, config: MembershipConfig, members: int, incarnation: int, accuser: str, now: float) -> Suspicion:
        """The suspicion a member starts when ``members`` members are live
        (itself and the suspect included), by the config's timings."""
        return cls.start(
            incarnation,
            accuser,
            now,
            config.suspicion_min_timeout(members),
            config.suspicion_max_timeout(members),
            config.suspicion_confirmations(members),
        )

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``; True if it is a new, useful confirmation."""
        if self.confirmations >= self.expected_confirmations or accuser in self.accusers:
            return False
        self.accusers.add(accuser)
        return True

    def timeout(self) -> float:
        k = self.expected_confirmations
        if k < 1:
            return self.min_timeout
        fraction = math.log(self.confirmations + 1) / math.log(k + 1)
        return max(self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * fraction)

    def deadline(self) -> float:
        return self.started + self.timeout()


def detection_bound(config: MembershipConfig, members: int, observers: int | None = None, *, round_probes: int | None = None) -> float:
    """How long the ``observers`` live members of a cluster of ``members``
    (the crashed one counted) may take to declare a crashed member dead, by
    the config's timings.

    Each member probes the others in a shuffled round of ``round_probes``
    probe intervals (by default ``members - 1``, one per other member), so
    its next probe of the crashed one may be up to two rounds away: that is
    when the first observer suspects it and the last confirms. Then the
    suspicion's timer runs, as ``for_cluster`` starts it, shortened by as
    many confirmations as the other observers can give. With ``observers``
    None (not known) no confirmation is counted, and the timer is the
    longest a suspicion in such a cluster starts with, whatever
    confirmations it would expect.
    """
    probing = 2 * (members - 1 if round_probes is None else round_probes) * config.probe_interval
    if observers is None:
        return probing + config.suspicion_max_timeout(members)
    suspicion = Suspicion.for_cluster(config, members, 0, "first", 0.0)
    for other in range(observers - 1):
        suspicion.confirm(f"observer-{other}")
    return probing + suspicion.timeout()
