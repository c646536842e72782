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
from typing import Protocol

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

    def restart(self, index: int, delay: float) -> bool: ...  # False if the node was not up to restart

    def rolling_restart(self, nodes: tuple[int, ...] | None, gap: float, delay: float) -> None: ...

    def scale_up(self, count: int) -> None: ...

    def scale_down(self, count: int) -> None: ...

    def kill(self, candidates: frozenset[int], restart_after: float | None, patience: float) -> None: ...


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
class Kill:
    """kill -9 during a run: at ``at``, the candidate (up or draining) that
    is executing the most runs crashes (ties: the lowest index); if none is
    executing anything, the first candidate to start a run within
    ``patience`` seconds crashes a moment later, mid-run (nobody, if none
    does). Which node that is can only be known as the run goes (the world
    records it), which is the point: a kill drawn ahead of time mostly
    lands between runs. With ``restart_after`` the node boots again under
    the same name that many seconds later, as a supervisor restarts it."""

    candidates: frozenset[int] = attrs.field(converter=_indices)
    at: float
    restart_after: float | None = None
    patience: float = 10.0

    @property
    def start(self) -> float:
        return self.at

    @property
    def end(self) -> float:
        """The latest the killed node is back (a lower bound of nothing: the
        kill may land up to ``patience`` late)."""
        return self.at + self.patience + (self.restart_after or 0.0)

    def schedule(self, world: World) -> None:
        world.at(self.at, world.kill, self.candidates, self.restart_after, self.patience)

    def disturbs(self, x: int, y: int) -> bool:
        return False  # a killed node really failed: declaring it so is right


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


class _AtOneMoment:
    """A fault of one moment, ``at``: it starts and ends then, and no pair
    of nodes has cause to take the other for failed because of it."""

    at: float

    @property
    def start(self) -> float:
        return self.at

    @property
    def end(self) -> float:
        return self.at

    def disturbs(self, x: int, y: int) -> bool:
        return False


@attrs.frozen
class _NodesAt(_AtOneMoment):
    """Something that happens to ``nodes`` at one moment."""

    nodes: frozenset[int] = attrs.field(converter=_indices)
    at: float

    def schedule(self, world: World) -> None:
        action = self._action(world)
        for index in sorted(self.nodes):
            world.at(self.at, action, index)

    def _action(self, world: World) -> Callable[[int], None]:
        raise NotImplementedError


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
class Restart(_NodesAt):
    """The nodes restart gracefully under the same names at ``at``, as a
    deploy or ``systemctl restart`` does: SIGTERM (drain, hand off, leave),
    the process exits once its leave is complete, and a new process starts
    ``delay`` seconds after that (and then boots, as every start does).
    ``end`` is a lower bound: how long the drain takes is the run's to say."""

    delay: float = 0.5

    @property
    def end(self) -> float:
        return self.at + self.delay

    def _action(self, world: World) -> Callable[[int], None]:
        def restart(index: int) -> None:
            world.restart(index, self.delay)  # a node not up then is skipped

        return restart


def _order(values: Iterable[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


@attrs.frozen
class RollingRestart:
    """A deploy: from ``at``, the nodes (``None``: every node running then,
    by index) are restarted one after another as ``Restart`` does; each
    next one waits until the previous one is back with its scheduler
    ready (as a deploy tool waits on a readiness probe), then ``gap``
    seconds more. A node not running at its turn is skipped; one that dies
    during its turn holds the rest back until it is ready again. ``end``
    is a lower bound (the run knows when the last one was ready)."""

    at: float
    nodes: tuple[int, ...] | None = attrs.field(default=None, converter=_order)
    gap: float = 2.0
    delay: float = 0.5

    @property
    def start(self) -> float:
        return self.at

    @property
    def end(self) -> float:
        return self.at + self.delay

    def schedule(self, world: World) -> None:
        world.at(self.at, world.rolling_restart, self.nodes, self.gap, self.delay)

    def disturbs(self, x: int, y: int) -> bool:
        return False  # graceful: a leave is never a failure


@attrs.frozen
class ScaleUp(_AtOneMoment):
    """``count`` more nodes start at ``at``: spare slots of the scenario
    (indices from ``nodes`` on), which stay stopped until then."""

    count: int
    at: float

    def schedule(self, world: World) -> None:
        world.at(self.at, world.scale_up, self.count)


@attrs.frozen
class ScaleDown(_AtOneMoment):
    """``count`` running nodes leave gracefully at ``at`` and do not come
    back: the highest indices first, seed nodes last (as a StatefulSet
    scales down)."""

    count: int
    at: float

    def schedule(self, world: World) -> None:
        world.at(self.at, world.scale_down, self.count)


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


Fault = (
    Partition | Crash | Pause | Clog | Join | Leave | Degrade | ClockStep | Restart | RollingRestart | ScaleUp | ScaleDown | Kill
)

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


_AT = re.compile(r"^(?P<what>[\d,\-]+)@(?P<at>[\d.]+)$")


def _split_at(spec: str, form: str) -> tuple[str, float]:
    match = _AT.match(spec)
    if not match:
        raise ValueError(f"bad {spec!r}: expected {form}")
    return match["what"], float(match["at"])


def parse_scale(spec: str) -> tuple[int, float]:
    """Parse ``K@AT``: how many nodes, and when."""
    count, at = _split_at(spec, "K@AT")
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"bad {spec!r}: expected K@AT with K a positive integer")
    return int(count), at


def parse_restart(spec: str, nodes: int, delay: float) -> Restart:
    """Parse ``NODES@AT`` (``2@30``, ``0-2,5@30``): those nodes restart
    gracefully at once, at AT."""
    group, at = _split_at(spec, "NODES@AT (say 2@30 or 0-2@30)")
    return Restart(_group(group, nodes), at, delay)


def parse_rolling_restart(spec: str, nodes: int, gap: float, delay: float) -> RollingRestart:
    """Parse ``AT`` (every node running then, by index) or ``I,J,...@AT``
    (those nodes, in that order)."""
    if "@" not in spec:
        try:
            return RollingRestart(float(spec), None, gap, delay)
        except ValueError:
            raise ValueError(f"bad rolling restart {spec!r}: expected AT or I,J,...@AT") from None
    order, at = _split_at(spec, "AT or I,J,...@AT")
    indices = tuple(int(part) for part in order.split(",") if part.isdigit())
    if len(indices) != len(order.split(",")) or any(i >= nodes for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"bad rolling restart {spec!r}: expected distinct indices within 0..{nodes - 1}, comma-separated")
    return RollingRestart(at, indices, gap, delay)
