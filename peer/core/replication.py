"""Replicated maps over the membership layer: the sans-IO replication core.

Theory of operation
-------------------
A ``Replicator`` holds a node's replicas of named CRDT maps
(``crdt.ormap.ORMap``) and keeps them converging with the other live
members, in three ways:

1. Gossip. Every local write makes a small delta, queued in a
   transmit-limited broadcast queue (the membership layer's, one entry per
   key holding the join of its deltas) and piggybacked on the membership
   protocol's packets, which go to random members several times a second
   anyway. A node that receives a delta which was news to it passes it on,
   so writes spread as an epidemic. A delta too big for a packet is left to
   the digest sync.
2. Digest sync. Every ``sync_interval`` (and at once when a node finds the
   cluster, or lost members return: ``peer.core.node_core``), a node sends one
   random member a ``SyncProbe`` per map: the children of its
   digest tree's root (``crdt.digest``). The receiver compares them with its
   own, and for each differing child either descends (answers with that
   child's own children, and the roles swap) or, once the node is small on
   either side, settles: sends all its entries there (``SyncEntries``). The
   other side merges them and answers with a delta holding only what the
   sender lacked. Traffic follows the difference, not the state; large
   answers are split into chunks of whole digest nodes or keys. A sync that
   changed only a few keys repaired something gossip missed, and passes
   those keys on as gossip; a catch-up's many keys are not relayed.
3. Context exchange. When the roots match, the probe's causal context is
   taken in, which is what lets contexts compact (see ``crdt.ormap``).

Every received timestamp goes through the hybrid logical clock: a register
stamped further ahead than ``max_drift_ms`` is refused and counted. Every
received value new to us goes through its map's validator (injected by the
layer that knows the map's types), so an unreadable value (a broken, older
or hostile peer's) never enters a map, let alone wins a key's merge over a
readable one: it is refused and counted, its dot not recorded (the real
write, if the value was mangled on its way, is still taken when it comes),
and what came with it removes nothing under its key (see ``_admit``).
Expired entries are dropped every ``expire_interval``.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from crdt.context import CausalContext, Dot
from crdt.digest import DEPTH, FANOUT, ROOT, Node, children
from crdt.hlc import HLC, ClockDrift, Timestamp
from crdt.messages import (
    DeltaGossip,
    ReplicationMessage,
    SyncEntries,
    SyncProbe,
    wire_size,
)
from crdt.ormap import (
    Delta,
    ORMap,
    Precedence,
    Register,
    Registers,
    by_timestamp,
    delta_of,
)
from membership.broadcast import BroadcastQueue
from membership.effects import Send
from membership.state import Address
from membership.timers import Timers

# More unsent deltas than this is a backlog piggybacking will not clear
# soon: push them in a batch.
PUSH_BACKLOG = 16
# How many members a backlog batch goes to, and how soon after it builds up.
PUSH_FANOUT = 4
PUSH_DELAY = 0.02
# A push counts one transmission but never retires a delta: retiring is the
# membership layer's call, by its cluster-size-dependent limit.
PUSH_NEVER_RETIRES = 1 << 30

# Up to this many peers, a delta goes to each at most once (take_gossip).
TARGETED_GOSSIP_PEERS = 8

# A digest sync that changes at most this many keys passes them on as gossip.
RELAY_MAX_KEYS = 64

# A digest node holding more keys than this is sent as its children, so that
# chunks can be cut between them.
CHUNK_KEYS = 256

# The root summary a catch-up probe carries: it asks for everything.
EMPTY_SUMMARY = ((0, 0),) * FANOUT

# A map's check of a value received from a peer: can this node read it?
Validator = Callable[[Any], bool]


@attrs.frozen
class ReplicationConfig:
    sync_interval: float = 10.0  # digest comparison with one random member
    catch_up_jitter: float = 0.1  # a node that finds the cluster asks a member for its state within this
    catch_up_retry: float = 2.0  # then again this much later, until caught up
    settle_count: int = 16  # exchange entries once a differing node holds this few (both sides)
    chunk_bytes: int = 60_000  # bound on one SyncEntries or answer
    gossip_max_bytes: int = 1_000  # larger deltas wait for a sync
    expire_interval: float = 1.0
    max_drift_ms: int = 60_000


@attrs.define
class ReplicationStats:
    writes: int = 0
    deltas_gossiped: int = 0  # local deltas queued for gossip
    deltas_too_big: int = 0  # local deltas left to sync
    deltas_relayed: int = 0  # received deltas passed on
    backlog_pushes: int = 0  # batches of unsent deltas pushed over the reliable channel
    direct_pushes: int = 0  # entries handed to chosen members directly (a run to its assignee, a lease)
    deltas_received: int = 0
    keys_changed: int = 0  # keys changed by merging anything received
    syncs_started: int = 0
    syncs_in_sync: int = 0  # probes whose root matched
    probes_sent: int = 0
    entries_sent: int = 0
    entries_received: int = 0
    registers_refused: int = 0  # stamped too far in the future
    values_refused: int = 0  # received values their map's validator could not read
    malformed: int = 0  # well-formed messages that made no sense here (e.g. scope errors)
    expired: int = 0


class Replicator:
    def __init__(
        self,
        addr: Address,
        replica: str,
        config: ReplicationConfig,
        *,
        maps: Sequence[str],
        rng: random.Random,
        now: float,
        precedence: Mapping[str, Precedence] | None = None,
        validators: Mapping[str, Validator] | None = None,
        watch: Iterable[str] = (),
    ) -> None:
        self.addr = addr
        self.replica = replica
        self.config = config
        self.hlc = HLC(replica, max_drift_ms=config.max_drift_ms)
        self.stats = ReplicationStats()
        # The maps are declared up front: every sync compares all of them, and
        # a peer cannot make us create others.
        precedence = precedence or {}
        self.maps: dict[str, ORMap] = {name: ORMap(replica, precedence.get(name, by_timestamp)) for name in maps}
        self._validators: dict[str, Validator] = {name: check for name, check in (validators or {}).items() if name in maps}
        # Keys changed in the watched maps (by anyone, expiry included) since
        # the application last took them: how the scheduler learns of news
        # without scanning its maps.
        self._changes: dict[str, set[str]] = {name: set() for name in watch}
        self._rng = rng
        self._peers: list[Address] = []
        self._sources: list[Address] = []
        self._gossip: BroadcastQueue[DeltaGossip] = BroadcastQueue()
        self._effects: list[Send] = []
        self._timers: Timers[str] = Timers()
        self._now = now
        self._push_scheduled = False
        # Writes whose gossip waits (``put(hold=...)``): queue key ->
        # (until, map, key, delta), in the order they were held.
        self._held: dict[str, tuple[float, str, str, Delta]] = {}
        # Maps caught up: a catch-up brought every entry of a peer that was
        # caught up itself (the answer's scopes covered the whole tree: a map
        # written to all the time may never match), or our digest root
        # matched such a peer's; or we are the first node (caught_up_alone).
        # Two new nodes matching each other's empty maps catch nobody up.
        self.in_sync: set[str] = set()
        self._catch_up_peer: Address | None = None
        self._covered: dict[str, set[Node]] = {}  # map -> digest nodes the catch-up peer sent
        self._timers.schedule("sync", now + rng.uniform(0.5, 1.0) * config.sync_interval)
        self._timers.schedule("expire", now + config.expire_interval)

    # -- the driver's interface ---------------------------------------------------

    def receive(self, now: float, wall_ms: int, message: ReplicationMessage) -> None:
        self._now = now
        if message.map not in self.maps:
            self.stats.malformed += 1
            return
        if isinstance(message, DeltaGossip):
            self._on_delta(wall_ms, message.map, message.delta, relay=message.relay)
        elif isinstance(message, SyncProbe):
            self._on_probe(wall_ms, message)
        else:
            self._on_entries(wall_ms, message)

    def tick(self, now: float, wall_ms: int) -> None:
        self._now = now
        for key in self._timers.due(now):
            if key == "push":
                self._push_backlog()
            elif key == "sync":
                self._timers.schedule("sync", now + self._rng.uniform(0.75, 1.25) * self.config.sync_interval)
                if self._peers:
                    self._start_sync(self._rng.choice(self._peers))
            elif key == "catch_up" and self._peers and set(self.maps) - self.in_sync:
                # Until a member that holds the cluster's state answered
                # whole (the first one asked may be as new as we are), ask
                # another, preferring those that say they hold it.
                self._start_catch_up(self._rng.choice(self._sources or self._peers))
                self._timers.schedule("catch_up", now + self.config.catch_up_retry)
            elif key == "held":
                self._release_held(now)
            elif key == "expire":
                self._timers.schedule("expire", now + self.config.expire_interval)
                self._expire(wall_ms)

    def next_deadline(self) -> float:
        return self._timers.next_deadline()

    def take_effects(self) -> list[Send]:
        effects, self._effects = self._effects, []
        return effects

    def set_peers(self, peers: Sequence[Address], sources: Sequence[Address] = ()) -> None:
        """The live members to replicate with (not ourselves), and those of
        them that say they hold the cluster's state (to catch up from)."""
        self._peers = list(peers)
        self._sources = [peer for peer in sources if peer in set(self._peers)]
        if not self._peers:
            # Alone: no one will take these deltas. A member that turns up
            # later gets our state from the catch-up and digest sync, which
            # compare what is held, not what was queued.
            self._gossip.clear()
        elif len(self._peers) <= TARGETED_GOSSIP_PEERS:
            # A delta waiting only for members that left or died would
            # wait for good: it goes to no member twice.
            self._gossip.retarget(self._peers, len(self._peers))

    def sync_with(self, peer: Address) -> None:
        """Compare digests with ``peer`` now (a member that just joined)."""
        self._start_sync(peer)

    def catch_up(self, now: float) -> None:
        """We just found the cluster: ask one member for its every entry,
        soon, and another a little later while that brought us nothing
        whole (the member was new itself, or the answer was lost)."""
        self._timers.schedule("catch_up", now + self._rng.uniform(0, self.config.catch_up_jitter))

    def caught_up_alone(self) -> None:
        """We are the cluster's first node: what we hold is all there is,
        and we may catch others up."""
        self.in_sync.update(self.maps)

    def hand_off(self, peers: Sequence[Address]) -> None:
        """We are leaving: send what we wrote ourselves (it may be nowhere
        else yet: its gossip lost, or not sent) to these peers over the
        reliable channel, in chunks, and compare digests with them for the
        rest, while we still can."""
        for name, replica_map in sorted(self.maps.items()):
            for chunk in self._chunks(replica_map, replica_map.written_by(replica_map.replica)):
                for peer in peers:
                    self._send(peer, [DeltaGossip(name, chunk)], reliable=True)
        for peer in peers:
            self._start_sync(peer)

    def push(self, peers: Sequence[Address], map_name: str, keys: Iterable[str], *, reliable: bool = False) -> None:
        """Send these keys' entries to these peers now (they are gossiped
        as well). By datagram: a connection per push cost more than all
        the rest of a run; a lost one is a push that did not happen, and
        gossip and the digest sync still bring them. ``reliable``: over the
        stream channel, for an entry no gossip will bring (another node's
        write we may be the only one to hold)."""
        replica_map = self.map(map_name)
        deltas: list[Delta] = []
        for key in keys:
            # The delta its gossip would carry, when one waits: it also
            # says which older values of the key it replaced.
            queue_key = f"{map_name}\x00{key}"
            held = self._held.get(queue_key)
            queued = self._gossip.get(queue_key)
            if held is not None:
                deltas.append(held[3])
            elif queued is not None:
                deltas.append(queued.delta)
            elif registers := replica_map.registers(key):
                deltas.append(Delta({key: registers}, CausalContext(cloud=registers)))
        if not deltas:
            return
        delta = deltas[0] if len(deltas) == 1 else functools.reduce(Delta.join, deltas)
        message = DeltaGossip(map_name, delta, relay=False)
        self.stats.direct_pushes += 1
        for peer in peers:
            self._send(peer, [message], reliable=reliable)
        if len(self._peers) <= TARGETED_GOSSIP_PEERS:
            # Their gossip need not bring it to these peers again.
            for key in delta.entries:
                self._gossip.sent(f"{map_name}\x00{key}", peers, len(self._peers))

    def _chunks(self, replica_map: ORMap, entries: dict[str, Registers]) -> Iterable[Delta]:
        """``entries`` as deltas of about ``chunk_bytes`` each."""
        part: dict[str, Registers] = {}
        size = 0
        for key, registers in entries.items():
            entry_size = replica_map.wire_size_of(key)
            if part and size + entry_size > self.config.chunk_bytes:
                yield delta_of(part)
                part, size = {}, 0
            part[key] = registers
            size += entry_size
        if part:
            yield delta_of(part)

    # Piggybacking: the membership core tops its packets up from here.

    def has_gossip(self) -> bool:
        return bool(self._gossip)

    def take_gossip(self, budget: int, limit: int, target: Address) -> list[DeltaGossip]:
        """Deltas for one packet to ``target``; each is retired after
        ``limit`` packets. In a cluster of a few members, where the same
        member would often be picked again, none it had from us already,
        and a delta is retired once every peer had it; in a larger one,
        random picks rarely repeat, and the queue is not scanned for it."""
        if len(self._peers) > TARGETED_GOSSIP_PEERS:
            return self._gossip.take(budget, limit)
        return self._gossip.take(budget, limit, target=target, audience=len(self._peers))

    def footprint(self) -> dict[str, int]:
        """How many entries each table holds: the gossip backlog, the held
        writes, and per map (``runs.entries``, ``runs.tombstones``...) what
        ``ORMap.footprint`` lists. None may grow but with the live entries
        and the live members (``bench/soak.py`` watches them)."""
        sizes = {"gossip_backlog": len(self._gossip), "held_writes": len(self._held), "peers": len(self._peers)}
        for name, replica_map in self.maps.items():
            sizes.update({f"{name}.{table}": size for table, size in replica_map.footprint().items()})
        return sizes

    # -- the application's interface ----------------------------------------------

    def has_changes(self) -> bool:
        return any(self._changes.values())

    def take_changes(self) -> dict[str, set[str]]:
        """The keys of each watched map changed since the last call."""
        changes = {name: keys for name, keys in self._changes.items() if keys}
        for name in changes:
            self._changes[name] = set()
        return changes

    def map(self, name: str) -> ORMap:
        """A declared map; ``KeyError`` for any other name."""
        return self.maps[name]

    def put(
        self, wall_ms: int, map_name: str, key: str, value: Any, *, ttl: float | None = None, hold: float = 0.0
    ) -> Timestamp:
        """Write a key. With ``hold``, its gossip waits that many seconds
        unless the key is written again meanwhile: a value soon replaced
        (a run's claim, by its outcome) then spreads once, joined with its
        successor, instead of twice; one replaced by another node's write
        (a pending run, by its claimant's outcome) is not gossiped at all."""
        stamp = self.hlc.now(wall_ms)
        expires = None if ttl is None else stamp.wall + math.ceil(ttl * 1000)
        delta = self.map(map_name).put(key, value, stamp, expires=expires)
        self._note_changes(map_name, (key,))
        self.stats.writes += 1
        if hold > 0 and self._peers:
            self._hold(map_name, key, delta, self._now + hold)
        else:
            self._gossip_delta(map_name, key, delta)
        return stamp

    def remove(self, wall_ms: int, map_name: str, key: str) -> bool:
        delta = self.map(map_name).remove(key)
        if delta is None:
            return False
        self._note_changes(map_name, (key,))
        self.stats.writes += 1
        self._gossip_delta(map_name, key, delta)
        return True

    def get(self, wall_ms: int, map_name: str, key: str, *, expired: bool = False) -> Register | None:
        """A key's value; with ``expired``, also one that has expired but
        is still held (see ``_drop_before``)."""
        return self.map(map_name).get(key, None if expired else self.hlc.peek(wall_ms))

    def _drop_before(self, wall_ms: int) -> int:
        """Entries that expired before this are dropped (and their dots
        kept, so they never come back). An entry reads as absent from its
        expiry on, but is dropped only ``max_drift_ms`` later: a clock that
        far ahead (a stepped one, or one whose stamps pulled our hybrid
        clock ahead) would otherwise drop it early, and its drop, merged,
        would remove it everywhere while other clocks still owe it."""
        return self.hlc.peek(wall_ms) - self.config.max_drift_ms

    # -- gossip ----------------------------------------------------------------------

    def _hold(self, map_name: str, key: str, delta: Delta, until: float) -> None:
        queue_key = f"{map_name}\x00{key}"
        held = self._held.get(queue_key)
        if held is not None:
            # Joined, it keeps its place and its time: a key written every
            # moment (a run's progress) is still gossiped, once per hold.
            self._held[queue_key] = (held[0], map_name, key, held[3].join(delta))
            return
        self._held[queue_key] = (until, map_name, key, delta)
        if "held" not in self._timers:
            self._timers.schedule("held", until)

    def _release_held(self, now: float) -> None:
        """Gossip the held writes whose time has come (oldest first: every
        hold is as long, so the dict's order is the deadlines')."""
        while self._held:
            queue_key, (until, map_name, key, delta) = next(iter(self._held.items()))
            if until > now:
                self._timers.schedule("held", until)
                return
            del self._held[queue_key]
            live = self.map(map_name).registers(key)
            if any(dot in live for registers in delta.entries.values() for dot in registers):
                self._gossip_delta(map_name, key, delta)
            # else: replaced meanwhile (by news from another node, pushed to
            # us): whatever replaced it spreads instead.

    def _gossip_delta(self, map_name: str, key: str, delta: Delta, *, relayed: bool = False) -> None:
        queue_key = f"{map_name}\x00{key}"
        held = self._held.pop(queue_key, None)
        if held is not None:
            delta = held[3].join(delta)  # written again, or news of the key arrived: the held write goes too
        queued = self._gossip.get(queue_key)
        if queued is not None:
            # One queue entry per key, holding the join of its deltas: a
            # concurrent write must not push another out of the queue.
            delta = queued.delta.join(delta)
        if not self._peers:
            return  # alone: nobody to gossip to (see set_peers)
        message = DeltaGossip(map_name, delta)
        size = wire_size(message)
        if size > self.config.gossip_max_bytes:
            if not relayed:
                self.stats.deltas_too_big += 1
            return
        if relayed:
            self.stats.deltas_relayed += 1
        else:
            self.stats.deltas_gossiped += 1
        self._gossip.enqueue(queue_key, message, size)
        if self._gossip.fresh() > PUSH_BACKLOG and not self._push_scheduled and self._peers:
            self._push_scheduled = True
            self._timers.schedule("push", self._now + PUSH_DELAY)

    def _push_backlog(self) -> None:
        """Send the unsent deltas, a chunk's worth, to a few members over
        the reliable channel; they count as sent once (the rest of their
        transmissions still ride on packets), and the receivers relay what
        is news to them."""
        self._push_scheduled = False
        if not self._peers:
            return
        batch = self._gossip.take(self.config.chunk_bytes, PUSH_NEVER_RETIRES)
        if not batch:
            return
        self.stats.backlog_pushes += 1
        for peer in self._rng.sample(self._peers, min(PUSH_FANOUT, len(self._peers))):
            self._send(peer, list(batch), reliable=True)

    def _on_delta(self, wall_ms: int, map_name: str, delta: Delta, *, relay: bool = True) -> None:
        self.stats.deltas_received += 1
        delta, _ = self._admit(wall_ms, map_name, delta.entries, delta.context)
        changed = self.map(map_name).merge(delta, self._drop_before(wall_ms))
        self.stats.keys_changed += len(changed)
        self._note_changes(map_name, changed)
        if not relay:
            return  # a direct copy: its writer gossips it
        if len(delta.entries) == 1 and changed:
            # News to us is likely news to others: pass it on, as SWIM does
            # with claims, so it spreads as an epidemic rather than only from
            # its writer. Known news is not repeated, so this dies out.
            (key,) = delta.entries
            self._gossip_delta(map_name, key, delta, relayed=True)
        else:
            self._relay_changes(map_name, changed)

    def _relay_changes(self, map_name: str, keys: list[str]) -> None:
        """A digest sync that changed a few keys repaired what gossip missed
        (a lost delta, a healed split): what was news to us is likely news to
        others, so it goes on as gossip instead of waiting for their syncs.
        Many changed keys mean a catch-up (a new or restarted node), news to
        no one else: those are not relayed."""
        if not keys or len(keys) > RELAY_MAX_KEYS:
            return
        replica_map = self.map(map_name)
        for key in keys:
            registers = replica_map.registers(key)
            if registers:
                self._gossip_delta(map_name, key, Delta({key: registers}, CausalContext(cloud=registers)), relayed=True)

    def _admit(
        self, wall_ms: int, map_name: str, entries: dict[str, Registers], context: CausalContext
    ) -> tuple[Delta, frozenset[str]]:
        """What may be merged of entries received with ``context``, and the
        keys a refused value must leave as they are (in a scoped merge).
        A delta that held a refused value stands for its admitted registers
        only: its context would otherwise record the refused dot, and
        remove what the refused write replaced, under the key it was to win."""
        delta = self._admit_timestamps(wall_ms, entries, context)
        check = self._validators.get(map_name)
        if check is None:
            return delta, frozenset()
        known = self.maps[map_name].context
        refused: dict[str, set[Dot]] = {}
        for key, registers in delta.entries.items():
            for dot, register in registers.items():
                # A dot we have seen is never adopted again: only news is read.
                if dot not in known and not check(register.value):
                    refused.setdefault(key, set()).add(dot)
        if not refused:
            return delta, frozenset()
        self.stats.values_refused += sum(len(dots) for dots in refused.values())
        kept: dict[str, Registers] = {}
        for key, registers in delta.entries.items():
            dots = refused.get(key)
            kept_registers = {dot: r for dot, r in registers.items() if dots is None or dot not in dots}
            if kept_registers:
                kept[key] = kept_registers
        return delta_of(kept), frozenset(refused)

    def _admit_timestamps(self, wall_ms: int, entries: dict[str, Registers], context: CausalContext) -> Delta:
        """Observe every timestamp; drop registers from too far ahead."""
        newest = max((r.ts for registers in entries.values() for r in registers.values()), default=None)
        if newest is None:
            return Delta(entries, context)
        try:
            self.hlc.observe(newest, wall_ms)
            return Delta(entries, context)
        except ClockDrift:
            pass
        limit = wall_ms + self.config.max_drift_ms
        admitted: dict[str, Registers] = {}
        for key, registers in entries.items():
            kept = {dot: r for dot, r in registers.items() if r.ts.wall <= limit}
            self.stats.registers_refused += len(registers) - len(kept)
            if kept:
                admitted[key] = kept
        newest = max((r.ts for registers in admitted.values() for r in registers.values()), default=None)
        if newest is not None:
            self.hlc.observe(newest, wall_ms)
        return Delta(admitted, context)

    # -- digest sync -------------------------------------------------------------------

    def _start_sync(self, peer: Address, *, reliable: bool = False) -> None:
        self.stats.syncs_started += 1
        for name, replica_map in sorted(self.maps.items()):
            summary = tuple(replica_map.tree.children_summary(ROOT))
            probe = SyncProbe(name, self.addr, ROOT, summary, replica_map.context.copy(), True, caught_up=name in self.in_sync)
            self._send(peer, [probe], reliable)

    def _start_catch_up(self, peer: Address) -> None:
        """Ask ``peer`` for every entry of each map not caught up yet."""
        self.stats.syncs_started += 1
        self._catch_up_peer, self._covered = peer, {}
        for name in sorted(set(self.maps) - self.in_sync):
            self._send(peer, [SyncProbe(name, self.addr, ROOT, EMPTY_SUMMARY, None, False, True)], reliable=True)

    def _note_coverage(self, message: SyncEntries) -> None:
        """A chunk of the catch-up peer's answer: once the chunks' scopes
        cover the whole tree, we hold everything it held."""
        if message.reply_to != self._catch_up_peer or message.map in self.in_sync:
            return
        covered = self._covered.setdefault(message.map, set())
        covered.update(message.scope)
        if _covers(covered, ROOT):
            self.in_sync.add(message.map)
            del self._covered[message.map]

    def _on_probe(self, wall_ms: int, probe: SyncProbe) -> None:
        replica_map = self.map(probe.map)
        if probe.full:
            # A catch-up: only a node that holds the cluster's state can give
            # it (the asker tries another member otherwise).
            if probe.map in self.in_sync:
                self._send_entries(probe.reply_to, probe.map, replica_map, [ROOT])
            return
        mine = replica_map.tree.children_summary(probe.node)
        if probe.node == ROOT and mine == list(probe.children):
            self.stats.syncs_in_sync += 1
            if probe.caught_up:
                self.in_sync.add(probe.map)
            if probe.context is not None:
                replica_map.merge_context(probe.context)
            if probe.echo:
                caught_up = probe.map in self.in_sync
                answer = SyncProbe(probe.map, self.addr, ROOT, tuple(mine), replica_map.context.copy(), False, caught_up=caught_up)
                self._send(probe.reply_to, [answer])
            return
        settle: list[Node] = []
        probes: list[ReplicationMessage] = []
        for child, (my_hash, my_count), (their_hash, their_count) in zip(children(probe.node), mine, probe.children):
            if (my_hash, my_count) == (their_hash, their_count):
                continue
            small = my_count == 0 or their_count == 0 or my_count + their_count <= self.config.settle_count
            if small or child[0] == DEPTH:
                settle.append(child)
            else:
                summary = tuple(replica_map.tree.children_summary(child))
                probes.append(SyncProbe(probe.map, self.addr, child, summary))
        if probes:
            self.stats.probes_sent += len(probes)
            self._send(probe.reply_to, probes)
        if settle:
            self._send_entries(probe.reply_to, probe.map, replica_map, settle)

    def _send_entries(self, dst: Address, map_name: str, replica_map: ORMap, nodes: list[Node]) -> None:
        """Our entries under ``nodes``, in chunks of whole nodes, each asking
        for an answer."""
        pending = list(nodes)
        scope: list[Node] = []
        size = 0
        while pending:
            node = pending.pop(0)
            if replica_map.tree.summary(node)[1] > CHUNK_KEYS and node[0] < DEPTH:
                pending[0:0] = children(node)
                continue
            node_size = replica_map.wire_size([node])
            if scope and size + node_size > self.config.chunk_bytes:
                self._send_chunk(dst, map_name, replica_map, scope)
                scope, size = [], 0
            scope.append(node)
            size += node_size
        if scope:
            self._send_chunk(dst, map_name, replica_map, scope)

    def _send_chunk(self, dst: Address, map_name: str, replica_map: ORMap, scope: list[Node]) -> None:
        entries = replica_map.scope_state(scope)
        self.stats.entries_sent += len(entries)
        message = SyncEntries(map_name, self.addr, tuple(scope), entries, replica_map.context.copy())
        self._send(dst, [message], reliable=True)

    def _on_entries(self, wall_ms: int, message: SyncEntries) -> None:
        replica_map = self.map(message.map)
        self.stats.entries_received += len(message.entries)
        admitted, untouched = self._admit(wall_ms, message.map, message.entries, message.context)
        try:
            changed = replica_map.merge_scoped(
                admitted.entries, message.context, message.scope, self._drop_before(wall_ms), keep=untouched
            )
        except ValueError:
            self.stats.malformed += 1
            return
        self.stats.keys_changed += len(changed)
        self._note_changes(message.map, changed)
        self._relay_changes(message.map, changed)
        self._note_coverage(message)
        self._answer(message, replica_map)

    def _answer(self, message: SyncEntries, replica_map: ORMap) -> None:
        """What the sender lacks under its scope, now that we merged: our
        registers that differ from what it sent, and as context the dots it
        sent that we dropped. Split by keys into chunks."""
        ours = replica_map.scope_state(message.scope)
        held = {dot for registers in ours.values() for dot in registers}
        dead = [
            dot
            for registers in message.entries.values()
            for dot in registers
            if dot not in held and dot in replica_map.context  # seen and dropped, not refused
        ]
        differing = {key: registers for key, registers in ours.items() if message.entries.get(key) != registers}
        if not differing and not dead:
            return
        chunk: dict[str, Registers] = {}
        size = 0
        for key, registers in differing.items():
            entry_size = replica_map.wire_size_of(key)
            if chunk and size + entry_size > self.config.chunk_bytes:
                self._send(message.reply_to, [DeltaGossip(message.map, Delta(chunk, CausalContext()))], reliable=True)
                chunk, size = {}, 0
            chunk[key] = registers
            size += entry_size
        self.stats.entries_sent += len(differing)
        self._send(message.reply_to, [DeltaGossip(message.map, Delta(chunk, CausalContext(cloud=dead)))], reliable=True)

    # -- expiry and sending ---------------------------------------------------------------

    def _expire(self, wall_ms: int) -> None:
        now_ms = self._drop_before(wall_ms)
        for name, replica_map in self.maps.items():
            dropped = replica_map.expire(now_ms)
            self.stats.expired += len(dropped)
            self._note_changes(name, dropped)

    def _note_changes(self, map_name: str, keys: Iterable[str]) -> None:
        watched = self._changes.get(map_name)
        if watched is not None:
            watched.update(keys)

    def _send(self, dst: Address, messages: list[Any], reliable: bool = False) -> None:
        if not reliable and sum(wire_size(m) for m in messages) > self.config.gossip_max_bytes:
            reliable = True
        self._effects.append(Send(dst, tuple(messages), reliable))


def _covers(nodes: set[Node], node: Node) -> bool:
    """Do ``nodes`` cover every leaf under ``node``?"""
    if node in nodes:
        return True
    return node[0] < DEPTH and all(_covers(nodes, child) for child in children(node))
