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
"""

from __future__ import annotations

import math

import attrs


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
