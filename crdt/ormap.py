"""An observed-remove map of last-writer-wins registers, as a delta-state CRDT.

Theory of operation
-------------------
State is a dot store plus a causal context (``crdt.context``): for each key,
the registers written to it, each tagged with the dot of the write that
made it; and the set of dots this replica has seen. A write to a key takes a
new dot and replaces every register of the key this replica has seen; a
remove replaces them with nothing. Each mutation returns a small delta: the
new register (if any) and, as its context, the dots it replaced plus its own.

Merging is the dot-store join, one rule for every case:

    a register survives if both sides hold it,
    or one side holds it and the other has not seen its dot.

So a register the other side has seen and dropped stays dropped (removes
win over the past), and a write the other side has not seen is kept (adds
win over concurrent removes). The join is commutative, associative and
idempotent, so replicas that receive the same deltas in any order, grouped
in any way, any number of times, end equal.

Concurrent writes leave several registers under a key; a read returns the
one with the greatest HLC timestamp (node id breaks ties), so every replica
reads the same value, and the next write replaces them all. A map may be
given another precedence, any total order on registers (``Precedence``):
the runs map ranks a finished run above a concurrent claim whatever their
timestamps (``peer.jobs.runs``).

Expiry: a register may carry an expiry in HLC wall time. A key whose winning
register has expired reads as absent, and ``expire(now)`` drops its
registers; their dots stay in the causal context, so a replica that still
holds them (a laggard, one back from a long absence) loses them at the next
exchange instead of bringing them back, and an expired register arriving
from anywhere is not adopted. The context compacts to one counter per
replica, so memory follows the live entries.

Tombstones, the rule: a removed or expired entry leaves no entry behind,
only its dots in the context, and a dot is never forgotten (that is what
keeps a slow peer from bringing a removed key back, however late it
speaks). Contiguous dots fold into their replica's counter; a dot seen out
of order waits in the cloud until the gap before it fills (the missing
write arrives, or a digest exchange whose roots match takes in the other's
whole context). So what stays is one counter per replica life, not one
per removal (``footprint``: ``context_replicas``, ``tombstones``).

Digest sync needs one caution: a replica may only take in another's whole
causal context when their entries are equal (the root digests match), else
it would claim to have seen dots it does not hold and refuse them later.
Scoped merges (``merge_scoped``) therefore use the sender's context only to
decide removals, and record only the dots they adopt or drop.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import attrs
import msgpack

from crdt.context import CausalContext, Dot
from crdt.digest import DEPTH, ROOT, HashTree, Node, Scope, hash64, key_position
from crdt.hlc import Timestamp
from crdt.values import Fault, NotReplicable, replicated_form

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 64 * 1024
# Stale items the expiry heap may hold beyond twice the entries before it is rebuilt.
EXPIRY_HEAP_SLACK = 1024


class Register(NamedTuple):
    """One write's value. A named tuple for the reason ``Timestamp`` is."""

    ts: Timestamp
    value: Any
    expires: int | None = None  # HLC wall ms; None: never

    def expired(self, now_ms: int) -> bool:
        return self.expires is not None and self.expires <= now_ms

    def to_wire(self) -> list[Any]:
        return [self.ts.wall, self.ts.counter, self.ts.node, self.value, self.expires]


Registers = dict[Dot, Register]


@attrs.frozen
class Delta:
    """Part of a map's state: registers by key, and the dots they stand for."""

    entries: dict[str, Registers]
    context: CausalContext

    def join(self, other: Delta) -> Delta:
        """A delta group: the effect of both, in either order."""
        entries: dict[str, Registers] = {}
        for key in dict.fromkeys([*self.entries, *other.entries]):  # ordered: deterministic bytes
            joined = join_registers(self.entries.get(key, {}), self.context, other.entries.get(key, {}), other.context)
            if joined:
                entries[key] = joined
        context = self.context.copy()
        context.merge(other.context)
        return Delta(entries, context)

    def size(self) -> int:
        return sum(len(registers) for registers in self.entries.values())


def join_registers(mine: Registers, my_context: CausalContext, theirs: Registers, their_context: CausalContext) -> Registers:
    """The dot-store join of one key's registers (the rule at the top)."""
    joined = {dot: register for dot, register in mine.items() if dot in theirs or dot not in their_context}
    for dot, register in theirs.items():
        if dot not in mine and dot not in my_context:
            joined[dot] = register
    return joined


# A total order on registers: the read value of a key is the greatest.
Precedence = Callable[[Register], Any]


def delta_of(entries: dict[str, Registers]) -> Delta:
    """A delta of these entries, standing for exactly their dots."""
    return Delta(entries, CausalContext(cloud=[dot for registers in entries.values() for dot in registers]))


def by_timestamp(register: Register) -> Timestamp:
    return register.ts


def winner(registers: Registers, precedence: Precedence = by_timestamp) -> Register:
    return max(registers.values(), key=precedence)


def entry_hash(key: str, registers: Registers) -> tuple[int, int]:
    """The entry's hash for the digest, and about how many bytes it takes on
    the wire. A dot names one write and its register never changes, so the
    key and its dots are enough to tell two entries apart."""
    digest = 0
    size = len(key) + 4
    prefix = key.encode() + b"\x00"
    for (replica, counter), register in registers.items():
        digest ^= hash64(prefix + replica.encode() + counter.to_bytes(8, "big"))
        size += len(replica) + len(register.ts.node) + 30 + _value_size(register.value)
    return digest, size


def _value_size(value: Any) -> int:
    if value is None or isinstance(value, (bool, int, float)):
        return 9
    if isinstance(value, (str, bytes)):
        return len(value) + 5
    return len(msgpack.packb(value))


def check_entry(key: str, value: Any) -> Any:
    """Refuse what could not be replicated, saying why; the value as every
    replica will see it (msgpack-native: tuples become lists)."""
    if not isinstance(key, str) or not 0 < len(key.encode()) <= MAX_KEY_BYTES:
        raise ValueError(f"a key is a string of 1..{MAX_KEY_BYTES} bytes, got {key!r:.80}")
    try:
        return replicated_form(value, MAX_VALUE_BYTES)
    except NotReplicable as error:
        if error.fault is Fault.UNSERIALISABLE:
            raise ValueError(f"value for {key!r} cannot be serialised: {error.detail}") from None
        if error.fault is Fault.TOO_LARGE:
            raise ValueError(f"value for {key!r} is {error.size} bytes; the limit is {MAX_VALUE_BYTES}") from None
        raise ValueError(f"value for {key!r}: map keys must be strings or bytes") from None


class ORMap:
    def __init__(self, replica: str, precedence: Precedence = by_timestamp) -> None:
        self.replica = replica
        self.precedence = precedence
        self.context = CausalContext()
        self._store: dict[str, Registers] = {}
        self._dot_keys: dict[Dot, str] = {}
        self._hashes: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self.entry_bytes = 0  # the sum of _sizes: about what the entries take on the wire
        self._positions: dict[str, int] = {}
        self.tree = HashTree()
        self._expiry: list[tuple[int, str]] = []  # heap of (expires, key); stale items skipped
        self.expired = 0  # keys dropped by expiry

    # -- reading ----------------------------------------------------------------

    def get(self, key: str, now_ms: int | None) -> Register | None:
        """The key's winning register, unless it expired by ``now_ms``
        (None: held, expired or not, until ``expire`` drops it)."""
        registers = self._store.get(key)
        if not registers:
            return None
        register = winner(registers, self.precedence)
        return None if now_ms is not None and register.expired(now_ms) else register

    def items(self, now_ms: int) -> Iterator[tuple[str, Register]]:
        for key, registers in self._store.items():
            register = winner(registers, self.precedence)
            if not register.expired(now_ms):
                yield key, register

    def __len__(self) -> int:
        """Keys held, expired-but-not-yet-dropped included."""
        return len(self._store)

    def registers(self, key: str) -> Registers:
        return dict(self._store.get(key, {}))

    # A key's registers dict is replaced on every change, never changed in
    # place, so the readers below share it rather than copy it.

    def state(self) -> Delta:
        """The whole state, as a delta."""
        return Delta(dict(self._store), self.context.copy())

    def scope_state(self, nodes: Iterable[Node]) -> dict[str, Registers]:
        """The entries under the given digest nodes."""
        store = self._store
        return {key: store[key] for node in nodes for key in self.tree.keys_under(node)}

    def written_by(self, replica: str) -> dict[str, Registers]:
        """The entries holding a register this replica wrote: on a node about
        to leave, what may be nowhere else yet."""
        return {key: registers for key, registers in self._store.items() if any(dot[0] == replica for dot in registers)}

    def wire_size_of(self, key: str) -> int:
        return self._sizes.get(key, 0)

    def wire_size(self, nodes: Iterable[Node]) -> int:
        """About how many bytes the entries under ``nodes`` take on the wire."""
        sizes = self._sizes
        return sum(sizes[key] for node in nodes for key in self.tree.keys_under(node))

    # -- mutating ---------------------------------------------------------------

    def put(self, key: str, value: Any, ts: Timestamp, *, expires: int | None = None) -> Delta:
        value = check_entry(key, value)
        dot = self.context.next_dot(self.replica)
        replaced = CausalContext(cloud=[*self._store.get(key, {}), dot])
        register = Register(ts, value, expires)
        self._set(key, {dot: register})
        return Delta({key: {dot: register}}, replaced)

    def remove(self, key: str) -> Delta | None:
        registers = self._store.get(key)
        if not registers:
            return None
        self._set(key, {})
        return Delta({}, CausalContext(cloud=registers))

    def merge(self, delta: Delta, now_ms: int) -> list[str]:
        """Join a delta (or a whole state) into ours; the keys whose
        registers changed."""
        dot_keys = self._dot_keys
        covered = {dot_keys[dot] for dot in delta.context.cloud if dot in dot_keys}
        for replica, top in delta.context.vv.items():
            if top <= len(dot_keys):  # a delta's few dots: look each up
                covered.update(dot_keys[(replica, n)] for n in range(1, top + 1) if (replica, n) in dot_keys)
            else:  # a whole state's context: scan what we hold
                covered.update(key for (r, n), key in dot_keys.items() if r == replica and n <= top)
        # In a fixed order (sets of strings iterate by hash, which varies
        # between processes), so replicas and simulations are deterministic.
        affected = [*delta.entries, *sorted(covered.difference(delta.entries))]
        changed = self._join_keys(affected, delta.entries, delta.context, now_ms)
        self.context.merge(delta.context)
        return changed

    def merge_scoped(
        self,
        entries: Mapping[str, Registers],
        context: CausalContext,
        scope: Iterable[Node],
        now_ms: int,
        *,
        keep: Collection[str] = (),
    ) -> list[str]:
        """Join another replica's entries under ``scope`` (all of them that
        it holds there); its context decides removals only. Keys in
        ``keep`` are left as they are (the caller refused what came for
        them, so their absence from ``entries`` means nothing)."""
        scope = list(scope)
        affected = dict.fromkeys(entries)
        for node in scope:
            affected.update(dict.fromkeys(self.tree.keys_under(node)))
        for key in keep:
            affected.pop(key, None)
        within = Scope(scope)
        positions = {key: key_position(key) for key in entries}
        for key, position in positions.items():
            if position not in within:
                raise ValueError(f"entry {key!r} lies outside the scope it came with")
        return self._join_keys(affected, entries, context, now_ms, positions)

    def merge_context(self, context: CausalContext) -> None:
        """Take in a replica's whole context: only when our entries equal
        the ones it had along with that context."""
        self.context.merge(context)

    def expire(self, now_ms: int) -> list[str]:
        """Drop keys whose winning register has expired; which."""
        dropped = []
        heap = self._expiry
        while heap and heap[0][0] <= now_ms:
            _, key = heapq.heappop(heap)
            registers = self._store.get(key)
            if registers and winner(registers, self.precedence).expired(now_ms):
                self._set(key, {})
                dropped.append(key)
        self.expired += len(dropped)
        if len(heap) > 2 * len(self._store) + EXPIRY_HEAP_SLACK:
            self._rebuild_expiry()  # the keys went, their later items stayed
        return dropped

    def _rebuild_expiry(self) -> None:
        """Drop the heap's stale items: those of keys since rewritten or
        dropped. A key rewritten with a later expiry (a run's claim, then
        its outcome) leaves its earlier item behind, and an unfinished
        record's lives a day: without this the heap would hold a day of
        writes, and their keys, after the entries themselves are gone.
        Rebuilt once more than twice the keys held (and a slack): each
        rebuild drops more stale items than it keeps, so its cost is O(1)
        per write."""
        self._expiry = [
            (expires, key)
            for key, registers in self._store.items()
            if (expires := winner(registers, self.precedence).expires) is not None
        ]
        heapq.heapify(self._expiry)

    def footprint(self) -> dict[str, int]:
        """How much this replica holds, by table: none may grow but with the
        live entries (``tombstones`` are the context's out-of-order dots,
        what removals and expiries leave until the gaps before them fill)."""
        return {
            "entries": len(self._store),
            "expiry_heap": len(self._expiry),
            "context_replicas": len(self.context.vv),
            "tombstones": self.context.dots() - len(self.context.vv),
        }

    # -- the one place that changes the store -----------------------------------

    def _join_keys(
        self,
        keys: Iterable[str],
        entries: Mapping[str, Registers],
        context: CausalContext,
        now_ms: int,
        positions: Mapping[str, int] | None = None,
    ) -> list[str]:
        changed = []
        my_context = self.context
        store = self._store
        for key in keys:
            mine = store.get(key)
            theirs = entries.get(key, {})
            if mine is None:  # the common case of a catch-up: a key new to us
                mine = {}
                joined = {dot: register for dot, register in theirs.items() if dot not in my_context}
            else:
                joined = join_registers(mine, my_context, theirs, context)
            for dot, register in list(joined.items()):
                if dot not in mine:
                    my_context.add(dot)
                    if register.expires is not None and register.expires <= now_ms:
                        del joined[dot]  # seen, but dead on arrival: never adopted
            if joined != mine:
                self._set(key, joined, positions.get(key) if positions else None)
                changed.append(key)
        return changed

    def _set(self, key: str, registers: Registers, position: int | None = None) -> None:
        old = self._store.get(key)
        for dot in old or ():
            del self._dot_keys[dot]
        if position is None:
            position = self._positions.get(key)
        if position is None:
            position = key_position(key)
        new_hash, size = entry_hash(key, registers) if registers else (None, 0)
        self.tree.update(key, position, self._hashes.get(key), new_hash)
        if new_hash is not None:
            self._store[key] = registers
            self._hashes[key] = new_hash
            self.entry_bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size
            self._positions[key] = position
            for dot in registers:
                self._dot_keys[dot] = key
            expires = (next(iter(registers.values())) if len(registers) == 1 else winner(registers, self.precedence)).expires
            if expires is not None:
                heapq.heappush(self._expiry, (expires, key))
                if len(self._expiry) > 2 * len(self._store) + EXPIRY_HEAP_SLACK:
                    self._rebuild_expiry()
        else:
            self._store.pop(key, None)
            self._hashes.pop(key, None)
            self.entry_bytes -= self._sizes.pop(key, 0)
            self._positions.pop(key, None)

    def __eq__(self, other: object) -> bool:
        """Same entries and same causal context (compacted)."""
        if not isinstance(other, ORMap):
            return NotImplemented
        return self._store == other._store and self.context == other.context

    __hash__ = None  # type: ignore[assignment]

    def root(self) -> tuple[int, int]:
        return self.tree.summary(ROOT)


assert DEPTH >= 1
