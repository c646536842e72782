"""What a replicated value may be, checked in one place.

A value travels as msgpack, so every replica reads what a msgpack round trip
gives (tuples become lists, map keys must be strings or bytes), and it must
fit its budget (a map's register, a run's result or progress). Writers check
before they write, so a value that could not reach the other replicas is
refused where it was made, with a reason that names the fault.
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack


class Fault(enum.Enum):
    UNSERIALISABLE = "unserialisable"  # a part msgpack cannot encode
    TOO_LARGE = "too large"  # encoded, over the limit
    MAP_KEY = "map key"  # a map key other than a string or bytes


class NotReplicable(ValueError):
    def __init__(self, fault: Fault, detail: str = "", size: int = 0) -> None:
        super().__init__(f"{fault.value}: {detail or size}")
        self.fault = fault
        self.detail = detail  # msgpack's own words, for an unserialisable value
        self.size = size  # encoded bytes, for one too large


def replicated_form(value: Any, limit: float) -> Any:
    """``value`` as every replica will read it; ``NotReplicable`` if msgpack
    cannot carry it or it encodes to more than ``limit`` bytes."""
    try:
        packed = msgpack.packb(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise NotReplicable(Fault.UNSERIALISABLE, detail=str(error)) from None
    if len(packed) > limit:
        raise NotReplicable(Fault.TOO_LARGE, size=len(packed))
    try:
        return msgpack.unpackb(packed, strict_map_key=True)
    except ValueError:
        raise NotReplicable(Fault.MAP_KEY) from None
