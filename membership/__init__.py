"""SWIM + Lifeguard membership as a pure protocol core (no I/O, no clock).

Drive a ``Membership`` with ``receive``/``tick``/``next_deadline``/
``take_effects``; see ``membership.core`` for the theory of operation and
``membership.state`` for the rule that orders member states.
"""

from membership.config import PROFILES, MembershipConfig, profile
from membership.core import Membership, MembershipStats
from membership.effects import Effect, Event, Send
from membership.state import Address, EventKind, Member, Status

__all__ = [
    "PROFILES",
    "Address",
    "Effect",
    "Event",
    "EventKind",
    "Member",
    "Membership",
    "MembershipConfig",
    "MembershipStats",
    "Send",
    "Status",
    "profile",
]
