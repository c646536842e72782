"""The simulated network between nodes.

Datagrams take a one-way delay of ``latency`` plus an exponential ``jitter``
(independent per packet, so packets reorder), and may be lost or duplicated.
Reliable messages model a fresh TCP connection: three one-way delays
(handshake and data), plus a retransmission timeout for each segment the
loss rate claims; they are never lost, only late, unless a partition or a
dead host stands in the way.

Faults: ``block`` drops every packet from one set of nodes to another (a
one-way partition; two blocks make a two-way one), ``clog`` holds every
packet to or from a node until a time, as a congested or frozen link would.
Every frame sent is fed to the trace hash.
"""

from __future__ import annotations

import struct
from typing import Protocol

import attrs

from membership.state import Address
from sim.engine import Simulator

_TRACE_SEND = struct.Struct("<dHH?I")


class Endpoint(Protocol):
    index: int

    def deliver(self, src: Address, frame: bytes, reliable: bool) -> None: ...


@attrs.define
class Conditions:
    latency: float = 0.0005
    jitter: float = 0.0005
    loss: float = 0.0
    duplicate: float = 0.0
    syn_timeout: float = 1.0  # a lost SYN waits for the initial RTO
    retransmit_timeout: float = 0.2  # a lost data segment waits for the minimum RTO


@attrs.define
class NetworkStats:
    frames: int = 0
    bytes: int = 0
    lost: int = 0
    duplicated: int = 0
    blocked: int = 0
    unreachable: int = 0


@attrs.frozen
class Block:
    """Packets from any node in ``src`` to any node in ``dst`` are dropped."""

    src: frozenset[int]
    dst: frozenset[int]


class Network:
    def __init__(self, sim: Simulator, conditions: Conditions) -> None:
        self.sim = sim
        self.conditions = conditions
        self.stats = NetworkStats()
        self._rng = sim.streams.get("network")
        self._endpoints: dict[Address, Endpoint] = {}
        self._blocks: list[Block] = []
        self._clogged_until: dict[int, float] = {}

    def attach(self, addr: Address, endpoint: Endpoint) -> None:
        self._endpoints[addr] = endpoint

    def block(self, block: Block) -> None:
        self._blocks.append(block)

    def unblock(self, block: Block) -> None:
        self._blocks.remove(block)

    def clog(self, index: int, until: float) -> None:
        self._clogged_until[index] = max(until, self._clogged_until.get(index, 0.0))

    def blocked(self, src: int, dst: int) -> bool:
        return any(src in b.src and dst in b.dst for b in self._blocks)

    def send(self, src_index: int, src_addr: Address, dst_addr: Address, frame: bytes, reliable: bool) -> None:
        sim, stats, rng, cond = self.sim, self.stats, self._rng, self.conditions
        stats.frames += 1
        stats.bytes += len(frame)
        endpoint = self._endpoints.get(dst_addr)
        dst_index = endpoint.index if endpoint is not None else 0xFFFF
        sim.record(_TRACE_SEND.pack(sim.now, src_index, dst_index, reliable, len(frame)) + frame)
        if endpoint is None:
            stats.unreachable += 1
            return
        if self._blocks and self.blocked(src_index, dst_index):
            stats.blocked += 1
            return
        if reliable:
            delay = 3 * (cond.latency + rng.expovariate(1 / cond.jitter)) if cond.jitter else 3 * cond.latency
            if cond.loss:
                if rng.random() < cond.loss:
                    delay += cond.syn_timeout
                retries = 0
                while retries < 8 and rng.random() < cond.loss:
                    delay += cond.retransmit_timeout * 2**retries
                    retries += 1
            self._schedule(src_index, endpoint, src_addr, frame, True, delay)
            return
        if cond.loss and rng.random() < cond.loss:
            stats.lost += 1
            return
        self._schedule(src_index, endpoint, src_addr, frame, False, self._datagram_delay())
        if cond.duplicate and rng.random() < cond.duplicate:
            stats.duplicated += 1
            self._schedule(src_index, endpoint, src_addr, frame, False, self._datagram_delay())

    def _datagram_delay(self) -> float:
        cond = self.conditions
        return cond.latency + self._rng.expovariate(1 / cond.jitter) if cond.jitter else cond.latency

    def _schedule(
        self, src_index: int, endpoint: Endpoint, src_addr: Address, frame: bytes, reliable: bool, delay: float
    ) -> None:
        when = self.sim.now + delay
        if self._clogged_until:
            when = max(when, self._clogged_until.get(src_index, 0.0), self._clogged_until.get(endpoint.index, 0.0))
        self.sim.at(when, endpoint.deliver, src_addr, frame, reliable)
