"""What the membership core asks its driver to do: plain values."""

from __future__ import annotations

import attrs

from membership.messages import Message
from membership.state import Address, EventKind, Member


@attrs.frozen(slots=True)
class Send:
    """Send ``messages`` to ``dst``: as one datagram, or over the reliable
    channel (a TCP stream in the runtime) when ``reliable``."""

    dst: Address
    messages: tuple[Message, ...]
    reliable: bool = False


@attrs.frozen(slots=True)
class Event:
    """A change in the membership view, for the layers above. ``source``
    names the member whose claim caused it, where one did (the accuser of a
    suspicion or failure)."""

    kind: EventKind
    member: Member
    source: str | None = None


Effect = Send | Event
