"""Replication messages and their plain-data wire form.

Like ``membership.messages``: each message is a frozen value with
``to_wire()`` (msgpack-native primitives, tag first) and ``from_wire()``,
which rebuilds it from untrusted primitives and raises ``MalformedState``
(nothing else) when anything is off: wrong types, out-of-range numbers,
oversized keys or values, entries outside their sync scope. Tags start at
32, clear of the membership protocol's, so one codec carries both.

    DeltaGossip   one map's delta, piggybacked on membership gossip
    SyncProbe     a digest node's children (hash, count): "do yours match?"
    SyncEntries   every entry under some digest nodes, and the sender's context
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import attrs
import msgpack

from crdt.context import CausalContext, Dot
from crdt.digest import DEPTH, FANOUT, Node
from crdt.hlc import Timestamp
from crdt.ormap import MAX_KEY_BYTES, Delta, Register, Registers

NAME_MAX = 128
HOST_MAX = 255
UINT63 = (1 << 63) - 1
MAX_ENTRIES = 200_000
MAX_REPLICAS = 100_000
MAX_CLOUD = 1_000_000


class MalformedState(ValueError):
    """Replicated state from the wire that does not describe valid state."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise MalformedState(what)


def _name(value: Any, what: str) -> str:
    _check(type(value) is str and 0 < len(value) <= NAME_MAX, f"{what}: expected a name of 1..{NAME_MAX} characters")
    return sys.intern(value)


def _uint(value: Any, what: str) -> int:
    _check(type(value) is int and 0 <= value <= UINT63, f"{what}: expected an integer in 0..2**63-1")
    return int(value)


def _list(value: Any, what: str, limit: int) -> list[Any]:
    _check(type(value) is list and len(value) <= limit, f"{what}: expected a list of at most {limit} items")
    return list(value)


def _addr(value: Any, what: str) -> tuple[str, int]:
    _check(type(value) is list and len(value) == 2, f"{what}: expected [host, port]")
    host, port = value
    _check(type(host) is str and 0 < len(host) <= HOST_MAX, f"{what}: bad host")
    _check(type(port) is int and 0 < port < 65536, f"{what}: bad port")
    return (sys.intern(host), port)


def _node(value: Any, what: str) -> Node:
    _check(type(value) is list and len(value) == 2, f"{what}: expected [level, index]")
    level, index = _uint(value[0], what), _uint(value[1], what)
    _check(level <= DEPTH and index < FANOUT**level, f"{what}: no such digest node")
    return (level, index)


def context_to_wire(context: CausalContext) -> list[Any]:
    return [sorted(context.vv.items()), sorted(context.cloud)]


def context_from_wire(value: Any) -> CausalContext:
    _check(type(value) is list and len(value) == 2, "context: expected [vv, cloud]")
    vv = {}
    for item in _list(value[0], "context.vv", MAX_REPLICAS):
        _check(type(item) is list and len(item) == 2, "context.vv: expected [replica, counter]")
        vv[_name(item[0], "context.vv replica")] = _uint(item[1], "context.vv counter")
    cloud = []
    for item in _list(value[1], "context.cloud", MAX_CLOUD):
        cloud.append(_dot(item, "context.cloud"))
    return CausalContext(vv, cloud)


def _dot(value: Any, what: str) -> Dot:
    _check(type(value) is list and len(value) == 2, f"{what}: expected [replica, counter]")
    return (_name(value[0], what), _uint(value[1], what))


def entries_to_wire(entries: dict[str, Registers]) -> list[Any]:
    return [
        [key, [[replica, counter, wall, ticks, node, value, expires]
               for (replica, counter), ((wall, ticks, node), value, expires) in registers.items()]]
        for key, registers in entries.items()
    ]


def entries_from_wire(value: Any) -> dict[str, Registers]:
    # The hot path of a catch-up (one call per received register): checks are
    # written out inline, and a message is only formatted on failure.
    entries: dict[str, Registers] = {}
    intern = sys.intern
    for item in _list(value, "entries", MAX_ENTRIES):
        if type(item) is not list or len(item) != 2:
            raise MalformedState("entry: expected [key, registers]")
        key, registers = item
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_BYTES or key in entries or type(registers) is not list:
            raise MalformedState(f"entry: expected a new key of 1..{MAX_KEY_BYTES} bytes and a list of registers")
        if not 0 < len(registers) <= 1024 or len(key.encode()) > MAX_KEY_BYTES:
            raise MalformedState(f"entry {key!r:.40}: expected 1..1024 registers and a key of at most {MAX_KEY_BYTES} bytes")
        parsed: Registers = {}
        for register in registers:
            if type(register) is not list or len(register) != 7:
                raise MalformedState("register: expected 7 fields")
            replica, counter, wall, ticks, node, value_, expires = register
            if not (
                type(replica) is str
                and 0 < len(replica) <= NAME_MAX
                and type(node) is str
                and 0 < len(node) <= NAME_MAX
                and type(counter) is int
                and 0 <= counter <= UINT63
                and type(wall) is int
                and 0 <= wall <= UINT63
                and type(ticks) is int
                and 0 <= ticks <= UINT63
                and (expires is None or type(expires) is int and 0 <= expires <= UINT63)
            ):
                raise MalformedState(f"register of {key!r:.40}: a field has the wrong type or range")
            dot = (intern(replica), counter)
            if dot in parsed:
                raise MalformedState(f"register of {key!r:.40}: the same dot twice")
            parsed[dot] = Register(Timestamp(wall, ticks, intern(node)), value_, expires)
        entries[intern(key)] = parsed
    return entries


@attrs.frozen(slots=True)
class DeltaGossip:
    """One map's delta. ``relay`` False: handed to chosen members directly
    (its writer gossips it too), not to be passed on as news. The flag
    travels only when False, so a node that does not know it only refuses
    those direct copies."""

    TAG: ClassVar[int] = 32
    map: str
    delta: Delta
    relay: bool = True
    # A delta is gossiped several times: its wire form is made once.
    _wire: list[Any] | None = attrs.field(default=None, init=False, eq=False, repr=False)

    def to_wire(self) -> list[Any]:
        if self._wire is None:
            wire = [self.TAG, self.map, entries_to_wire(self.delta.entries), context_to_wire(self.delta.context)]
            object.__setattr__(self, "_wire", wire if self.relay else [*wire, False])
        assert self._wire is not None
        return self._wire

    @classmethod
    def from_wire(cls, f: list[Any]) -> DeltaGossip:
        _check(len(f) in (4, 5), "delta: expected 4 or 5 fields")
        relay = True if len(f) == 4 else f[4]
        _check(type(relay) is bool, "delta.relay: expected a boolean")
        return cls(_name(f[1], "delta.map"), Delta(entries_from_wire(f[2]), context_from_wire(f[3])), relay)


@attrs.frozen(slots=True)
class SyncProbe:
    """The sender's summary of the children of ``node``; at the root it also
    carries the sender's context, for the receiver to take in if the
    summaries match (then, when ``echo``, it answers with its own)."""

    TAG: ClassVar[int] = 33
    map: str
    reply_to: tuple[str, int]
    node: Node
    children: tuple[tuple[int, int], ...]  # (hash, count) per child
    context: CausalContext | None = None
    echo: bool = False
    full: bool = False  # a catch-up: answer with every entry, in chunks whose scopes cover the root
    caught_up: bool = False  # the sender holds the cluster's state of this map (a match then catches us up)

    def to_wire(self) -> list[Any]:
        context = None if self.context is None else context_to_wire(self.context)
        children = [value for pair in self.children for value in pair]
        return [
            self.TAG, self.map, list(self.reply_to), list(self.node), children, context, self.echo, self.full, self.caught_up,
        ]

    @classmethod
    def from_wire(cls, f: list[Any]) -> SyncProbe:
        _check(len(f) == 9, "probe: expected 9 fields")
        node = _node(f[3], "probe.node")
        _check(node[0] < DEPTH, "probe.node: a leaf has no children")
        flat = _list(f[4], "probe.children", 2 * FANOUT)
        _check(len(flat) == 2 * FANOUT, "probe.children: expected one (hash, count) per child")
        values = [_uint(value, "probe.children") if i % 2 else _hash(value) for i, value in enumerate(flat)]
        children = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
        context = None if f[5] is None else context_from_wire(f[5])
        _check(type(f[6]) is bool, "probe.echo: expected a boolean")
        _check(type(f[7]) is bool, "probe.full: expected a boolean")
        _check(type(f[8]) is bool, "probe.caught_up: expected a boolean")
        return cls(_name(f[1], "probe.map"), _addr(f[2], "probe.reply_to"), node, children, context, f[6], f[7], f[8])


def _hash(value: Any) -> int:
    _check(type(value) is int and 0 <= value < 1 << 64, "probe.children: expected a 64-bit hash")
    return int(value)


@attrs.frozen(slots=True)
class SyncEntries:
    """Every entry the sender holds under the ``scope`` nodes, with its
    context (for the receiver's removals); answered with a delta."""

    TAG: ClassVar[int] = 34
    map: str
    reply_to: tuple[str, int]
    scope: tuple[Node, ...]
    entries: dict[str, Registers]
    context: CausalContext

    def to_wire(self) -> list[Any]:
        return [
            self.TAG,
            self.map,
            list(self.reply_to),
            [list(node) for node in self.scope],
            entries_to_wire(self.entries),
            context_to_wire(self.context),
        ]

    @classmethod
    def from_wire(cls, f: list[Any]) -> SyncEntries:
        _check(len(f) == 6, "entries: expected 6 fields")
        scope = tuple(_node(node, "entries.scope") for node in _list(f[3], "entries.scope", 4096))
        _check(bool(scope), "entries.scope: empty")
        entries = entries_from_wire(f[4])  # that they lie in scope, the map checks as it merges
        return cls(_name(f[1], "entries.map"), _addr(f[2], "entries.reply_to"), scope, entries, context_from_wire(f[5]))


ReplicationMessage = DeltaGossip | SyncProbe | SyncEntries
MESSAGE_TYPES: dict[int, type[ReplicationMessage]] = {cls.TAG: cls for cls in (DeltaGossip, SyncProbe, SyncEntries)}


def from_wire(obj: Any) -> ReplicationMessage:
    _check(type(obj) is list and bool(obj), "expected a non-empty list")
    cls = MESSAGE_TYPES.get(obj[0]) if type(obj[0]) is int else None
    _check(cls is not None, f"unknown replication message tag {obj[0]!r:.20}")
    return cls.from_wire(obj)  # type: ignore[union-attr]


def wire_size(message: ReplicationMessage) -> int:
    return len(msgpack.packb(message.to_wire()))
