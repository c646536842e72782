"""A simulated peer process: the membership core behind the real codec.

``SimNode`` is the simulator's thin driver, the counterpart of the trio
runtime: it decodes frames with ``peer.runtime.wire.Codec``, feeds the core with its
own clock's time, encodes what the core sends and hands it to the network,
and wakes the core at its next deadline. It also plays the process's life:
process start (``starting``: the process runs its imports and binds its
sockets, its address answers nothing yet), boot (the core exists and
joins), crash (all state lost), restart under the same name, pause
(SIGSTOP: timers stop, packets queue in the socket buffer), graceful leave.
"""

from __future__ import annotations

import enum
import math
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from membership.config import MembershipConfig
from membership.core import Membership
from membership.effects import Event, Send
from membership.state import Address, Member
from peer.core.node_core import NodeCore
from peer.core.replication import ReplicationConfig
from peer.jobs.scheduler import SchedulerConfig
from peer.runtime.wire import Codec, Dropped
from sim.clock import NodeClock
from sim.engine import Simulator
from sim.network import Network

T = TypeVar("T")

# What a paused process's sockets hold before the kernel drops (Linux's
# default UDP receive buffer, and a listen backlog).
PAUSED_DATAGRAM_BYTES = 212_992
PAUSED_STREAMS = 128

_TRACE_LIFE = struct.Struct("<dHB")


class Life(enum.Enum):
    STOPPED = 0  # not started yet, or exited after leaving
    UP = 1
    PAUSED = 2
    CRASHED = 3
    LEAVING = 4
    LEFT = 5
    BOOTING = 6  # the process started; its core is not built yet (nothing answers)


class DrivenCore(Protocol):
    """What the driver needs of a core: ``Membership``, or ``peer.core.node_core.NodeCore``."""

    @property
    def incarnation(self) -> int: ...

    @property
    def checksum(self) -> int: ...

    @property
    def version(self) -> int: ...

    @property
    def leave_complete(self) -> bool: ...

    def receive(self, now: float, src: Address, message: Any, reliable: bool = False) -> None: ...

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float: ...

    def take_effects(self) -> Sequence[Any]: ...  # Effect, and the scheduler's

    def join(self, now: float, seeds: Iterable[Address]) -> None: ...

    def leave(self, now: float) -> None: ...

    def set_meta(self, now: float, meta: bytes) -> None: ...

    def live_members(self) -> list[Member]: ...


# (node, its random stream, local time, incarnation) -> a fresh core for a boot.
CoreFactory = Callable[["SimNode", random.Random, float, int], DrivenCore]


def membership_core(node: SimNode, rng: random.Random, now: float, incarnation: int) -> DrivenCore:
    return Membership(node.name, node.addr, node.config, rng=rng, now=now, incarnation=incarnation)


def node_core_of(core: DrivenCore | None) -> NodeCore:
    """The ``NodeCore`` a scenario built its nodes with (``node_core``)."""
    assert isinstance(core, NodeCore)
    return core


def node_core(
    node: SimNode,
    rng: random.Random,
    now: float,
    incarnation: int,
    replication: ReplicationConfig,
    *,
    maps: Sequence[str] = (),
    scheduler: SchedulerConfig | None = None,
) -> NodeCore:
    """The whole node's core (``peer.core.node_core.NodeCore``) on the node's clocks."""
    return NodeCore(
        node.name,
        node.addr,
        node.config,
        replication,
        maps=maps,
        rng=rng,
        now=now,
        wall_clock=lambda: node.clock.wall(node.sim.now),
        incarnation=incarnation,
        scheduler=scheduler,
    )


class Observer(Protocol):
    def on_event(self, node: SimNode, event: Event) -> None: ...

    def on_view_change(self, node: SimNode) -> None: ...

    def on_life(self, node: SimNode) -> None: ...


class SimNode:
    def __init__(
        self,
        sim: Simulator,
        network: Network,
        index: int,
        name: str,
        addr: Address,
        config: MembershipConfig,
        clock: NodeClock,
        codec: Codec,
        observer: Observer,
        make_core: CoreFactory = membership_core,
    ) -> None:
        self.sim = sim
        self.network = network
        self.index = index
        self.name = name
        self.addr = addr
        self.config = config
        self.clock = clock
        self.codec = codec
        self.observer = observer
        self.make_core = make_core
        self.life = Life.STOPPED
        self.core: DrivenCore | None = None
        self.boots = 0
        self.boot_token = 0  # names the pending boot of a starting process
        self.seeds: tuple[Address, ...] = ()
        self._wake_local = math.inf  # the local deadline a pending wake-up is for
        self._wake_token = 0
        self._inbox: list[tuple[Address, bytes, bool]] = []
        self._inbox_bytes = 0
        self._inbox_streams = 0
        self._reported_version = -1  # the core's view version the observer last saw
        network.attach(addr, self)

    @property
    def running(self) -> bool:
        """Up or leaving: the process runs and its core answers."""
        return self.life is Life.UP or self.life is Life.LEAVING

    def _now(self) -> float:
        return self.clock.monotonic(self.sim.now)

    # -- life ------------------------------------------------------------

    def boot(self, seeds: Sequence[Address]) -> None:
        """Start (or restart) the process with a fresh core. Its incarnation
        is its wall-clock boot time in ms, above anything its old self used."""
        self.boots += 1
        self.seeds = tuple(seeds)
        rng = self.sim.streams.get(f"node/{self.name}/{self.boots}")
        now = self._now()
        incarnation = int(self.clock.wall(self.sim.now) * 1000)
        self.core = self.make_core(self, rng, now, incarnation)
        self._set_life(Life.UP)
        self.core.join(now, self.seeds)
        self._flush()

    def starting(self) -> int:
        """The process was started and is booting (imports, binding, reading
        its settings): no core yet, so its address answers nothing. Whatever
        ran before under this name is gone. The token names this start: a
        boot still pending under an older token (a crash came since) is void."""
        self.core = None
        self._wake_token += 1
        self._wake_local = math.inf
        self._inbox, self._inbox_bytes, self._inbox_streams = [], 0, 0
        self.boot_token += 1
        self._set_life(Life.BOOTING)
        return self.boot_token

    def crash(self) -> None:
        self.boot_token += 1  # a process killed while booting never boots
        self.core = None
        self._wake_token += 1
        self._wake_local = math.inf
        self._inbox, self._inbox_bytes, self._inbox_streams = [], 0, 0
        self._set_life(Life.CRASHED)

    def pause(self) -> None:
        if self.life is Life.UP:
            self._set_life(Life.PAUSED)

    def resume(self) -> None:
        if self.life is not Life.PAUSED:
            return
        self._set_life(Life.UP)
        inbox, self._inbox, self._inbox_bytes, self._inbox_streams = self._inbox, [], 0, 0
        for src, frame, reliable in inbox:
            self.deliver(src, frame, reliable)
        self._tick()

    def leave(self) -> None:
        if self.life is not Life.UP:
            return
        assert self.core is not None
        self._set_life(Life.LEAVING)
        self.core.leave(self._now())
        self._flush()

    def apply(self, action: Callable[[DrivenCore, float], T]) -> T:
        """Call into the running core (a write, say) and carry out its effects."""
        assert self.core is not None and self.running
        result = action(self.core, self._now())
        self._flush()
        return result

    def set_meta(self, meta: bytes) -> None:
        if self.running:
            assert self.core is not None
            self.core.set_meta(self._now(), meta)
            self._flush()

    def _set_life(self, life: Life) -> None:
        self.life = life
        self._reported_version = -1
        self.sim.record(_TRACE_LIFE.pack(self.sim.now, self.index, life.value))
        self.observer.on_life(self)

    # -- driving the core --------------------------------------------------

    def deliver(self, src: Address, frame: bytes, reliable: bool) -> None:
        if self.life is Life.UP or self.life is Life.LEAVING:
            messages = self.codec.decode(frame, stream=reliable)
            if isinstance(messages, Dropped):
                return
            core = self.core
            assert core is not None
            now = self._now()
            for message in messages:
                core.receive(now, src, message, reliable)
            self._flush()
        elif self.life is Life.PAUSED:
            if reliable:
                if self._inbox_streams >= PAUSED_STREAMS:
                    return
                self._inbox_streams += 1
            else:
                if self._inbox_bytes + len(frame) > PAUSED_DATAGRAM_BYTES:
                    return
                self._inbox_bytes += len(frame)
            self._inbox.append((src, frame, reliable))

    def _wake(self, token: int) -> None:
        if token == self._wake_token and self.running:
            self._tick(self._wake_local)

    def _tick(self, deadline: float = -math.inf) -> None:
        assert self.core is not None
        # Never hand the core a time before the deadline it woke for:
        # converting through a drifting clock may round a hair short.
        now = max(self._now(), deadline)
        self._wake_local = math.inf
        self.core.tick(now)
        self._flush()

    def _flush(self) -> None:
        core = self.core
        assert core is not None
        for effect in core.take_effects():
            if isinstance(effect, Send):
                frame = self.codec.encode(effect.messages, stream=effect.reliable)
                self.network.send(self.index, self.addr, effect.dst, frame, effect.reliable)
            else:
                self.observer.on_event(self, effect)
        if self.life is Life.LEAVING and core.leave_complete:
            self._set_life(Life.LEFT)  # the process exits
            return
        if core.version != self._reported_version:
            self._reported_version = core.version
            self.observer.on_view_change(self)
        deadline = core.next_deadline()
        if deadline != self._wake_local:
            # Re-arm; a wake-up already scheduled (say for a probe timeout an
            # ack just cancelled) is then dropped by its stale token.
            self._wake_local = deadline
            self._wake_token += 1
            if deadline != math.inf:
                self.sim.at(self.clock.to_global(deadline), self._wake, self._wake_token)
