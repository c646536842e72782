"""Faults a scenario injects, as plain data.

Each fault knows when it starts and ends, how to apply itself to a running
world (``schedule``), and which pairs of nodes it disturbs (``disturbs``): a
failure declared while it lasts (or shortly after), by or on the word of a
node it cut off from the subject, is explained rather than counted as a
false positive. Nodes are named by index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol, Union

import attrs

from sim.network import Block


class World(Protocol):
    """What faults act on (implemented by the scenario runners)."""

    def at(self, when: float, action: object, *args: object) -> None: ...

    def crash(self, index: int) -> None: ...

    def boot(self, index: int) -> None: ...

    def pause(self, index: int) -> None: ...

    def resume(self, index: int) -> None: ...

    def leave(self, index: int) -> None: ...

    def block(self, block: Block) -> None: ...

    def unblock(self, block: Block) -> None: ...

    def clog(self, index: int, until: float) -> None: ...

    def degrade(
        self, loss: float | None, duplicate: float | None, latency: float | None, jitter: float | None
    ) -> None: ...

    def step_clock(self, index: int, seconds: float) -> None: ...


def _indices(values: Iterable[int]) -> frozenset[int]:
    return frozenset(values)


@attrs.frozen
class Partition:
    """Packets between groups ``a`` and ``b`` are dropped from ``start`` for
    ``duration`` seconds; with ``one_way``, only those from ``a`` to ``b``."""

    a: frozenset[int] = attrs.field(converter=_indices)
    b: frozenset[int] = attrs.field(converter=_indices)
    start: float
    duration: float
    one_way: bool = False

    @property
    def end(self) -> float:
        return self.start + self.duration

    def schedule(self, world: World) -> None:
        blocks = [Block(self.a, self.b)] + ([] if self.one_way else [Block(self.b, self.a)])
        for block in blocks:
            world.at(self.start, world.block, block)
            world.at(self.end, world.unblock, block)

    def disturbs(self, x: int, y: int) -> bool:
        return (x in self.a and y in self.b) or (x in self.b and y in self.a)


@attrs.frozen
class Crash:
    """The nodes crash at ``at`` (all state lost); with ``restart_after``
    they boot again under the same names that many seconds later."""

    nodes: frozenset[int] = attrs.field(converter=_indices)
    at: float
    restart_after: float | None = None

    @property
    def start(self) -> float:
        return self.at

    @property
    def end(self) -> float:
        return self.at + (self.restart_after or 0.0)

    def schedule(self, world: World) -> None:
        for index in sorted(self.nodes):
            world.at(self.at, world.crash, index)
            if self.restart_after is not None:
                world.at(self.end, world.boot, index)

    def disturbs(self, x: int, y: int) -> bool:
        return False  # a crashed node really failed: declaring it so is right


@attrs.frozen
class Pause:
    """The processes stop (SIGSTOP) at ``start`` and continue ``duration``
    seconds later; packets to them queue meanwhile."""

    nodes: frozenset[int] = attrs.field(converter=_indices)
    start: float
    duration: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    def schedule(self, world: World) -> None:
        for index in sorted(self.nodes):
            world.at(self.start, world.pause, index)
            world.at(self.end, world.resume, index)

    def disturbs(self, x: int, y: int) -> bool:
        return x in self.nodes or y in self.nodes


@attrs.frozen
class Clog:
    """Every packet to or from the nodes is held until the clog ends."""

    nodes: frozenset[int] = attrs.field(converter=_indices)
    start: float
    duration: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    def schedule(self, world: World) -> None:
        for index in sorted(self.nodes):
            world.at(self.start, world.clog, index, self.end)

    def disturbs(self, x: int, y: int) -> bool:
        return x in self.nodes or y in self.nodes


@attrs.frozen
class _NodesAt:
    """Something that happens to ``nodes`` at one moment."""

    nodes: frozenset[int] = attrs.field(converter=_indices)
    at: float

    @property
    def start(self) -> float:
        return self.at

    @property
    def end(self) -> float:
        return self.at

    def schedule(self, world: World) -> None:
        action = self._action(world)
        for index in sorted(self.nodes):
            world.at(self.at, action, index)

    def _action(self, world: World) -> Callable[[int], None]:
        raise NotImplementedError

    def disturbs(self, x: int, y: int) -> bool:
        return False


@attrs.frozen
class Join(_NodesAt):
    """The nodes are not started with the others but boot at ``at``."""

    def _action(self, world: World) -> Callable[[int], None]:
        return world.boot


@attrs.frozen
class Leave(_NodesAt):
    """The nodes leave gracefully at ``at`` (SIGTERM); with ``rejoin_after``
    they start again under the same names that many seconds later."""

    rejoin_after: float | None = None

    def schedule(self, world: World) -> None:
        super().schedule(world)
        if self.rejoin_after is not None:
            for index in sorted(self.nodes):
                world.at(self.at + self.rejoin_after, world.boot, index)

    def _action(self, world: World) -> Callable[[int], None]:
        return world.leave


@attrs.frozen
class ClockStep(_NodesAt):
    """The nodes' wall clocks jump by ``seconds`` (backwards if negative) at
    ``at``, as after an NTP correction; monotonic clocks are unaffected."""

    seconds: float

    def _action(self, world: World) -> Callable[[int], None]:
        return lambda index: world.step_clock(index, self.seconds)


@attrs.frozen
class Degrade:
    """The network loses and duplicates datagrams at these rates for a while
    (and, when given, delays them by ``latency`` plus an exponential
    ``jitter``, which reorders them), then returns to the scenario's base
    conditions."""

    loss: float
    duplicate: float
    start: float
    duration: float
    latency: float | None = None
    jitter: float | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    def schedule(self, world: World) -> None:
        world.at(self.start, world.degrade, self.loss, self.duplicate, self.latency, self.jitter)
        world.at(self.end, world.degrade, None, None, None, None)

    def disturbs(self, x: int, y: int) -> bool:
        return False  # loss must not cause false failures: that is what is tested


Fault = Union[Partition, Crash, Pause, Clog, Join, Leave, Degrade, ClockStep]

_GROUP = r"(?:\d+(?:-\d+)?)(?:,\d+(?:-\d+)?)*"
_PARTITION = re.compile(rf"^(?P<a>{_GROUP})(?P<op>[|>])(?P<b>{_GROUP})@(?P<start>[\d.]+)\+(?P<duration>[\d.]+)$")
_HALF = re.compile(r"^half@(?P<start>[\d.]+)\+(?P<duration>[\d.]+)$")


def _group(text: str, nodes: int) -> frozenset[int]:
    members: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last or last >= nodes:
            raise ValueError(f"node range {part!r} is not within 0..{nodes - 1}")
        members.update(range(first, last + 1))
    return frozenset(members)


def parse_partition(spec: str, nodes: int) -> Partition:
    """Parse ``A|B@START+DURATION`` (two-way), ``A>B@START+DURATION``
    (packets from A to B dropped) or ``half@START+DURATION``; groups are
    comma-separated indices and ranges such as ``0-4,9``."""
    half = _HALF.match(spec)
    if half:
        a = frozenset(range(nodes // 2))
        return Partition(a, frozenset(range(nodes)) - a, float(half["start"]), float(half["duration"]))
    match = _PARTITION.match(spec)
    if not match:
        raise ValueError(
            f"bad partition {spec!r}: expected A|B@START+DURATION, A>B@START+DURATION or half@START+DURATION"
        )
    a, b = _group(match["a"], nodes), _group(match["b"], nodes)
    if a & b:
        raise ValueError(f"bad partition {spec!r}: the groups overlap")
    return Partition(a, b, float(match["start"]), float(match["duration"]), one_way=match["op"] == ">")
