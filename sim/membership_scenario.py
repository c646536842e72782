"""Membership scenarios: N nodes, a fault schedule, and what to measure.

A run boots N simulated nodes (seeded from the first ``seeds`` of them),
applies the scenario's faults, and watches every membership event and every
view. It measures, against the ground truth the simulator knows:

- convergence: every running node's live view (checksum) equals the set of
  running members at their current incarnations; ``convergence_seconds``
  counts from the last disturbance (a boot, crash, leave, or the end of a
  partition, pause or clog) to the moment views last became and stayed equal;
- detection: per crashed node, seconds until the first and until the last
  running member declared it failed (and until it was first suspected);
- false positives: members declared failed while they ran, where no
  injected fault between the two nodes (within the time suspicion takes)
  explains it; and graceful leaves reported as failures;
- cost: frames and bytes per node per simulated second, codec drops.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from membership.config import MembershipConfig, profile
from membership.effects import Event
from membership.state import CHECKSUM_MODULUS, EventKind, Status, member_digest
from peer.runtime.wire import Codec, Keyring
from sim.clock import NodeClock
from sim.engine import Simulator
from sim.faults import Crash, Fault, Join, ScaleUp
from sim.network import Block, Conditions, Network
from sim.node import CoreFactory, Life, SimNode, membership_core
from sim.streams import SeedStreams

# The key every simulated node shares when the scenario is authenticated.
SIM_KEY = b"peer-simulator-cluster-key-32by!"
# A kill waiting for a run lands this long after the run started: well
# within the shortest work (50 ms), so the node dies mid-run.
KILL_AFTER_START = 0.01


def _fault_tuple(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(faults)


def _span(value: Iterable[float]) -> tuple[float, float]:
    low, high = value
    return float(low), float(high)


@attrs.frozen
class MembershipScenario:
    nodes: int = 20
    seed: int = 1
    duration: float = 60.0
    profile: str = "lan"
    # Settings that differ from the profile, e.g. {"reconnect_interval": 10.0}.
    overrides: dict[str, Any] = attrs.field(factory=dict)
    seeds: int = 1  # nodes 0..seeds-1 are everyone's seeds
    join_window: float = 1.0  # initial nodes boot at random times within it
    loss: float = 0.0
    duplicate: float = 0.0
    latency: float = 0.0005
    jitter: float = 0.0005
    drift: float = 0.0  # each node's clock runs fast or slow by up to this
    wall_skew: float = 0.0  # each node's wall clock is off by up to this many seconds
    authenticated: bool = True
    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_fault_tuple)
    # Seconds a started process takes before its core exists and joins
    # (imports, sockets, settings), drawn uniformly at every start; its
    # address answers nothing meanwhile. (0, 0): the core exists at once.
    boot_delay: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_span)

    def config(self) -> MembershipConfig:
        return attrs.evolve(profile(self.profile), **self.overrides)

    @property
    def slots(self) -> int:
        """Nodes the run builds: ``nodes`` started at the beginning, and a
        spare slot, stopped until then, for every node a ``ScaleUp`` adds."""
        return self.nodes + sum(f.count for f in self.faults if isinstance(f, ScaleUp))


@attrs.define
class MembershipResult:
    scenario: MembershipScenario
    sim_seconds: float
    wall_seconds: float
    converged: bool
    convergence_seconds: float | None
    false_positives: int
    failures_declared: int
    leaves_reported_failed: int
    crashed: list[str]
    detection_first_seconds: list[float | None]
    detection_all_seconds: list[float | None]
    suspicion_first_seconds: list[float | None]
    messages_per_node_second: float
    bytes_per_node_second: float
    drops: dict[str, int]
    network: dict[str, int]
    events: int
    last_event_seconds: float | None
    trace_hash: str

    def to_json(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "scenario": "membership",
            "nodes": s.nodes,
            "seed": s.seed,
            "profile": s.profile,
            "sim_seconds": self.sim_seconds,
            "wall_seconds": round(self.wall_seconds, 3),
            "sim_seconds_per_wall_second": round(self.sim_seconds / self.wall_seconds, 1) if self.wall_seconds else None,
            "converged": self.converged,
            "convergence_seconds": _round(self.convergence_seconds),
            "false_positives": self.false_positives,
            "failures_declared": self.failures_declared,
            "leaves_reported_failed": self.leaves_reported_failed,
            "crashed": self.crashed,
            "detection_first_seconds": [_round(x) for x in self.detection_first_seconds],
            "detection_all_seconds": [_round(x) for x in self.detection_all_seconds],
            "suspicion_first_seconds": [_round(x) for x in self.suspicion_first_seconds],
            "messages_per_node_second": round(self.messages_per_node_second, 2),
            "bytes_per_node_second": round(self.bytes_per_node_second, 1),
            "drops": self.drops,
            "network": self.network,
            "events": self.events,
            "last_event_seconds": _round(self.last_event_seconds),
            "trace_hash": self.trace_hash,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@attrs.frozen
class _Declaration:
    time: float
    observer: int
    subject: int
    incarnation: int
    accuser: int | None


class MembershipRun:
    """Runs one scenario; also the ``World`` its faults act on and the
    ``Observer`` its nodes report to."""

    def __init__(self, scenario: MembershipScenario, make_core: CoreFactory = membership_core) -> None:
        self.scenario = scenario
        self.config = scenario.config()
        self.sim = Simulator(scenario.seed)
        self.network = Network(
            self.sim,
            Conditions(
                latency=scenario.latency, jitter=scenario.jitter, loss=scenario.loss, duplicate=scenario.duplicate
            ),
        )
        keyring = Keyring((SIM_KEY,)) if scenario.authenticated else None
        clocks = self.sim.streams.get("clocks")
        self.nodes: list[SimNode] = []
        for index in range(scenario.slots):
            clock = NodeClock(
                offset=clocks.uniform(0, 10_000),  # monotonic epochs differ per machine
                drift=clocks.uniform(-scenario.drift, scenario.drift),
                wall_step=clocks.uniform(-scenario.wall_skew, scenario.wall_skew),
            )
            name = f"node-{index:04d}"
            addr = (f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", 7946)
            self.nodes.append(
                SimNode(self.sim, self.network, index, name, addr, self.config, clock, self._codec(keyring, clock), self, make_core)
            )
        self._index = {node.name: node.index for node in self.nodes}
        self.seed_addrs = [node.addr for node in self.nodes[: scenario.seeds]]
        # Ground truth and its checksum, maintained incrementally.
        self._member_incarnation: dict[int, int] = {}  # running members -> incarnation
        self._expected = 0
        self._observer_checksum: dict[int, int] = {}  # nodes whose views are checked
        self._checksum_counts: Counter[int] = Counter()
        self._converged_since: float | None = None
        self._converged_spans: list[tuple[float, float]] = []  # (from, until) all views equalled the truth
        self._last_disturbance = 0.0
        # What happened, for the metrics.
        self._failed: list[_Declaration] = []
        self._suspected: list[_Declaration] = []
        self._joined: list[_Declaration] = []  # a member (back) in an observer's live view
        self._crashes: list[tuple[int, float, int]] = []  # node, time, incarnation of the life that ended
        self._left_lives: set[tuple[int, int]] = set()  # (node, incarnation) of every graceful leave
        self._life_started: dict[int, float] = {}
        self._events = 0
        self._last_event: float | None = None
        self._started = False
        self._wall = 0.0
        # Process life the faults drive: restarts waiting for their process
        # to exit (node -> delay, then a new start), and callbacks waiting
        # for a node to be back and ready (a rolling restart's next step).
        self._exit_then_start: dict[int, float] = {}
        self._ready_waiters: dict[int, list[Callable[[], None]]] = {}
        self._boot_delays = self.sim.streams.get("boot-delay")
        # Kills waiting for a candidate to start a run: (candidates, restart
        # after, until when), and the kills that landed: (time, node, restart after).
        self._armed_kills: list[tuple[frozenset[int], float | None, float]] = []
        self.kills: list[tuple[float, int, float | None]] = []
        # When each rolling restart (by its start) had every node back and ready.
        self.roll_ends: dict[float, float] = {}

    # -- World -------------------------------------------------------------

    def _codec(self, keyring: Keyring | None, clock: NodeClock) -> Codec:
        # Stamps from the node's own wall clock, nonces from a stream of their own (deterministic).
        nonces = self.sim.streams.get("nonces")
        return Codec(keyring, wall_clock=lambda: clock.wall(self.sim.now), random_bytes=nonces.randbytes)

    def at(self, when: float, action: Any, *args: Any) -> None:
        self.sim.at(when, self._disturb, action, args)

    def _disturb(self, action: Any, args: tuple[Any, ...]) -> None:
        self._last_disturbance = self.sim.now
        action(*args)
        self._update_convergence()

    def boot(self, index: int) -> None:
        """Start the node's process: its core boots after the scenario's
        boot delay (at once without one)."""
        low, high = self.scenario.boot_delay
        node = self.nodes[index]
        if node.core is not None and node.life in (Life.UP, Life.PAUSED, Life.LEAVING):
            # A new process cannot bind the address of a running one: the
            # supervisor killed the old one first (a rejoin while the old
            # one still drains long runs, say).
            self.crash(index)
        if high <= 0:
            node.boot(self.seed_addrs)
            return
        token = node.starting()
        self.at(self.sim.now + self._boot_delays.uniform(low, high), self._booted, index, token)

    def _booted(self, index: int, token: int) -> None:
        node = self.nodes[index]
        if node.life is Life.BOOTING and node.boot_token == token:
            node.boot(self.seed_addrs)

    def restart(self, index: int, delay: float) -> bool:
        """Restart gracefully: leave, and once the process exited (its leave
        complete), start it again ``delay`` seconds later. False if the node
        was not up to restart."""
        node = self.nodes[index]
        if node.life is not Life.UP:
            return False
        self._exit_then_start[index] = delay
        node.leave()
        return True

    def rolling_restart(self, nodes: tuple[int, ...] | None, gap: float, delay: float) -> None:
        order = list(nodes) if nodes is not None else [node.index for node in self.nodes if node.life is Life.UP]
        self._roll(order, gap, delay, self.sim.now)

    def _roll(self, order: list[int], gap: float, delay: float, began: float) -> None:
        """Restart the first node of ``order`` that is up; the rest follow,
        ``gap`` seconds after it is ready again."""
        while order:
            index, rest = order[0], order[1:]
            if self.restart(index, delay):

                def next_turn(rest: list[int] = rest) -> None:
                    self.at(self.sim.now + gap, self._roll, rest, gap, delay, began)

                self._when_ready(index, next_turn)
                return
            order = rest
        self.roll_ends[began] = self.sim.now  # the deploy is over: a checker's fault window closes here

    def scale_up(self, count: int) -> None:
        """Start ``count`` spare slots that never ran, lowest index first."""
        spares = [node for node in self.nodes[self.scenario.nodes :] if node.boots == 0 and node.life is Life.STOPPED]
        for node in spares[:count]:
            self.boot(node.index)

    def scale_down(self, count: int) -> None:
        """``count`` up nodes leave for good: highest index first, seeds last."""
        seeds = self.scenario.seeds
        up = [node for node in self.nodes if node.life is Life.UP]
        up.sort(key=lambda node: (node.index < seeds, -node.index))
        for node in up[:count]:
            node.leave()

    def kill(self, candidates: frozenset[int], restart_after: float | None, patience: float) -> None:
        """kill -9 the candidate executing the most runs; if none is
        executing anything, wait (up to ``patience``) for one to start a run."""
        alive = [i for i in sorted(candidates) if i < len(self.nodes) and self.nodes[i].life in (Life.UP, Life.LEAVING)]
        busiest = max(alive, key=lambda i: (self.executing(i), -i), default=None)
        if busiest is not None and self.executing(busiest) > 0:
            self._kill_now(busiest, restart_after)
        else:
            self._armed_kills.append((candidates, restart_after, self.sim.now + patience))

    def executing(self, index: int) -> int:
        """How many runs the node is executing (none here: a jobs run knows)."""
        return 0

    def run_started(self, index: int) -> None:
        """A node started a run: a kill waiting for that lands a moment
        later (not within the core's call that started it)."""
        for kill in self._armed_kills:
            candidates, restart_after, until = kill
            if index in candidates and self.sim.now <= until:
                self._armed_kills.remove(kill)
                self.at(self.sim.now + KILL_AFTER_START, self._kill_if_running, index, restart_after)
                return

    def _kill_if_running(self, index: int, restart_after: float | None) -> None:
        if self.nodes[index].life in (Life.UP, Life.LEAVING):
            self._kill_now(index, restart_after)

    def _kill_now(self, index: int, restart_after: float | None) -> None:
        self.kills.append((self.sim.now, index, restart_after))
        self.crash(index)
        if restart_after is not None:
            self.at(self.sim.now + restart_after, self.boot, index)

    def ready(self, index: int) -> bool:
        """Is the node back and ready for work (here: up; a jobs run also
        waits for its scheduler)?"""
        return self.nodes[index].life is Life.UP

    def _when_ready(self, index: int, callback: Callable[[], None]) -> None:
        self._ready_waiters.setdefault(index, []).append(callback)
        self._check_ready(index)

    def _check_ready(self, index: int) -> None:
        if index in self._ready_waiters and self.ready(index):
            for callback in self._ready_waiters.pop(index):
                callback()

    def crash(self, index: int) -> None:
        node = self.nodes[index]
        if node.core is not None and node.life in (Life.UP, Life.PAUSED, Life.LEAVING):
            self._crashes.append((index, self.sim.now, node.core.incarnation))
        node.crash()

    def pause(self, index: int) -> None:
        self.nodes[index].pause()

    def resume(self, index: int) -> None:
        self.nodes[index].resume()

    def leave(self, index: int) -> None:
        self.nodes[index].leave()

    def block(self, block: Block) -> None:
        self.network.block(block)

    def unblock(self, block: Block) -> None:
        self.network.unblock(block)

    def step_clock(self, index: int, seconds: float) -> None:
        self.nodes[index].clock.wall_step += seconds

    def degrade(
        self, loss: float | None, duplicate: float | None, latency: float | None, jitter: float | None
    ) -> None:
        conditions, base = self.network.conditions, self.scenario
        conditions.loss = base.loss if loss is None else loss
        conditions.duplicate = base.duplicate if duplicate is None else duplicate
        conditions.latency = base.latency if latency is None else latency
        conditions.jitter = base.jitter if jitter is None else jitter

    def clog(self, index: int, until: float) -> None:
        self.network.clog(index, until)
        self.sim.at(until, self._disturb, lambda: None, ())  # its end is a disturbance too

    # -- Observer ----------------------------------------------------------

    def on_event(self, node: SimNode, event: Event) -> None:
        self._events += 1
        self._last_event = self.sim.now
        if event.kind in (EventKind.FAILED, EventKind.SUSPECT, EventKind.JOINED):
            subject = self._index.get(event.member.name)
            if subject is not None:
                log = {EventKind.FAILED: self._failed, EventKind.SUSPECT: self._suspected}.get(event.kind, self._joined)
                accuser = self._index.get(event.source) if event.source is not None else None
                log.append(_Declaration(self.sim.now, node.index, subject, event.member.incarnation, accuser))

    def on_view_change(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        index = node.index
        incarnation = self._member_incarnation.get(index)
        if incarnation is not None and incarnation != core.incarnation:
            self._set_expected(index, core.incarnation)
        old = self._observer_checksum.get(index)
        if old is not None and old != core.checksum:
            self._checksum_counts[old] -= 1
            self._checksum_counts[core.checksum] += 1
            self._observer_checksum[index] = core.checksum
        self._update_convergence()
        self._check_ready(index)

    def on_life(self, node: SimNode) -> None:
        index, life = node.index, node.life
        if life is Life.UP:
            assert node.core is not None
            if index not in self._member_incarnation:
                self._life_started[index] = self.sim.now
            self._set_expected(index, node.core.incarnation)
            self._add_observer(index, node.core.checksum)
        elif life is Life.PAUSED:
            self._remove_observer(index)
        elif life in (Life.CRASHED, Life.LEAVING):
            if life is Life.LEAVING:
                assert node.core is not None
                self._left_lives.add((index, node.core.incarnation))
            self._remove_observer(index)
            self._set_expected(index, None)
            self._life_started.pop(index, None)
        if life is Life.LEFT and index in self._exit_then_start:
            self.at(self.sim.now + self._exit_then_start.pop(index), self.boot, index)  # the process exited
        elif life is Life.CRASHED:
            self._exit_then_start.pop(index, None)  # killed while leaving: whoever crashed it restarts it
        self._check_ready(index)

    def _set_expected(self, index: int, incarnation: int | None) -> None:
        name = self.nodes[index].name
        old = self._member_incarnation.pop(index, None)
        if old is not None:
            self._expected -= member_digest(name, Status.ALIVE, old)
        if incarnation is not None:
            self._member_incarnation[index] = incarnation
            self._expected += member_digest(name, Status.ALIVE, incarnation)
        self._expected %= CHECKSUM_MODULUS

    def _add_observer(self, index: int, checksum: int) -> None:
        self._remove_observer(index)
        self._observer_checksum[index] = checksum
        self._checksum_counts[checksum] += 1

    def _remove_observer(self, index: int) -> None:
        old = self._observer_checksum.pop(index, None)
        if old is not None:
            self._checksum_counts[old] -= 1

    def _update_convergence(self) -> None:
        observers = len(self._observer_checksum)
        converged = observers > 0 and self._checksum_counts[self._expected] == observers
        if not converged:
            if self._converged_since is not None:
                self._converged_spans[-1] = (self._converged_since, self.sim.now)
            self._converged_since = None
        elif self._converged_since is None:
            self._converged_since = self.sim.now
            self._converged_spans.append((self.sim.now, math.inf))

    # -- running -----------------------------------------------------------

    def run(self) -> MembershipResult:
        """Run to the end of the scenario and measure."""
        self.run_until(self.scenario.duration)
        return self.measure()

    @property
    def converged_spans(self) -> list[tuple[float, float]]:
        """The stretches of time during which every running view equalled
        the truth (the last one may still be open: until infinity)."""
        return list(self._converged_spans)

    @property
    def converged_since(self) -> float | None:
        """Since when all running views have equalled the truth (None: they differ now)."""
        return self._converged_since

    def run_until(self, when: float) -> None:
        """Run up to simulated time ``when`` (to look at the views midway)."""
        if not self._started:
            self._start()
        started = time.perf_counter()
        self.sim.run_until(min(when, self.scenario.duration))
        self._wall += time.perf_counter() - started

    def _start(self) -> None:
        self._started = True
        late: set[int] = set()
        for fault in self.scenario.faults:
            if isinstance(fault, Join):
                late |= fault.nodes
        starts = self.sim.streams.get("boot")
        for node in self.nodes[: self.scenario.nodes]:  # spare slots wait for a ScaleUp
            if node.index not in late:
                self.at(starts.uniform(0, self.scenario.join_window), self.boot, node.index)
        for fault in self.scenario.faults:
            fault.schedule(self)

    def measure(self) -> MembershipResult:
        """The figures, as of the current simulated time."""
        scenario = self.scenario
        wall = self._wall
        n = scenario.nodes
        false_positive_subjects = {subject for _, subject in self.unexplained_failures()}
        leaves_failed = sum((d.subject, d.incarnation) in self._left_lives for d in self._failed)
        crashed, first, last, suspected = [], [], [], []
        for index, when, incarnation in self._crashes:
            crashed.append(self.nodes[index].name)
            first.append(self._first_after(self._failed, index, when, incarnation))
            suspected.append(self._first_after(self._suspected, index, when, incarnation))
            last.append(self._all_declared(index, when, incarnation))
        since = self._converged_since
        converged = since is not None
        convergence = max(0.0, since - self._last_disturbance) if since is not None else None
        stats = self.network.stats
        node_seconds = n * max(self.sim.now, 1e-9)
        drops: Counter[str] = Counter()
        for node in self.nodes:
            for reason, count in node.codec.drops.items():
                drops[reason.value] += count
        return MembershipResult(
            scenario=scenario,
            sim_seconds=self.sim.now,
            wall_seconds=wall,
            converged=converged,
            convergence_seconds=convergence,
            false_positives=len(false_positive_subjects),
            failures_declared=len(self._failed),
            leaves_reported_failed=leaves_failed,
            crashed=crashed,
            detection_first_seconds=first,
            detection_all_seconds=last,
            suspicion_first_seconds=suspected,
            messages_per_node_second=stats.frames / node_seconds,
            bytes_per_node_second=stats.bytes / node_seconds,
            drops=dict(sorted(drops.items())),
            network=attrs.asdict(stats),
            events=self._events,
            last_event_seconds=self._last_event,
            trace_hash=self.sim.trace_hash,
        )

    @property
    def disturbance_window(self) -> float:
        """How long after a fault ends it may still explain a failure
        declaration: the longest suspicion, a few probe rounds, a reconnect."""
        config = self.config
        return (
            config.suspicion_max_timeout(self.scenario.slots)
            + 5 * config.probe_interval
            + config.reconnect_interval
        )

    def unexplained_failures(self) -> list[tuple[float, int]]:
        """(time, subject) of every failure declared of a node that was
        running, had not left, and that no fault between it and the
        observer (or the accuser the observer believed) explains."""
        window = self.disturbance_window
        return [
            (d.time, d.subject)
            for d in self._failed
            if (d.subject, d.incarnation) not in self._left_lives
            and self._was_running(d.subject, d)
            and not self._explained(d, window)
        ]

    def believed_failed(self, observer: int, subject: int, since: float, until: float) -> bool:
        """Did ``observer`` declare ``subject`` failed between ``since`` and
        ``until`` on the word of a fault (a declaration ``_explained``: a
        partition, pause or clog between the subject and the observer or the
        accuser it believed), while the subject ran?"""
        window = self.disturbance_window
        return any(
            d.observer == observer and d.subject == subject and since <= d.time <= until
            and self._was_running(subject, d) and self._explained(d, window)
            for d in self._failed
        )

    @property
    def crashes(self) -> list[tuple[int, float]]:
        """(node, time) of every crash, in the order ``measure`` reports them."""
        return [(index, when) for index, when, _ in self._crashes]

    def _was_running(self, subject: int, declaration: _Declaration) -> bool:
        """Did ``subject`` run, in the life the declaration is about, at the
        time? (A crashed node, or an earlier life, is rightly declared dead.)"""
        for index, when, incarnation in self._crashes:
            if index == subject and incarnation >= declaration.incarnation and when <= declaration.time:
                return False
        return True

    def _explained(self, declaration: _Declaration, window: float) -> bool:
        """Did a fault cut the observer, or the accuser it believed, off from
        the subject at the time (or shortly before)?"""
        witnesses = [declaration.observer]
        if declaration.accuser is not None:
            witnesses.append(declaration.accuser)
        return any(
            fault.start <= declaration.time <= fault.end + window and fault.disturbs(witness, declaration.subject)
            for fault in self.scenario.faults
            for witness in witnesses
        )

    @staticmethod
    def _first_after(log: list[_Declaration], subject: int, when: float, incarnation: int) -> float | None:
        for declaration in log:
            if declaration.subject == subject and declaration.time >= when and declaration.incarnation <= incarnation:
                return declaration.time - when
        return None

    def crash_witnesses(self, subject: int, when: float) -> set[int]:
        """The nodes that must declare a node crashed at ``when`` failed:
        those running since before the crash, and still running."""
        return {
            index
            for index, started in self._life_started.items()
            if started <= when and index != subject and self.nodes[index].life is Life.UP
        }

    def _all_declared(self, subject: int, when: float, incarnation: int) -> float | None:
        """Seconds until every node running since before the crash (and
        still running) had declared ``subject`` failed."""
        witnesses = self.crash_witnesses(subject, when)
        latest = 0.0
        for observer in sorted(witnesses):
            if self._failed_already(observer, subject, when, incarnation):
                continue  # declared failed before it crashed (say, while cut off), and not seen since
            seen = [
                d.time
                for d in self._failed
                if d.observer == observer and d.subject == subject and d.time >= when and d.incarnation <= incarnation
            ]
            if not seen:
                return None
            latest = max(latest, min(seen) - when)
        return latest if witnesses else None

    def _failed_already(self, observer: int, subject: int, when: float, incarnation: int) -> bool:
        """Did ``observer`` hold ``subject`` failed at ``when``: its last word
        on it before then was a failure of this life or an earlier one?"""
        before = [
            d
            for d in self._failed + self._joined
            if d.observer == observer and d.subject == subject and d.time < when
        ]
        if not before:
            return False
        last = max(before, key=lambda d: d.time)
        return last in self._failed and last.incarnation <= incarnation


def run_membership(scenario: MembershipScenario) -> MembershipResult:
    return MembershipRun(scenario).run()


def crash_scenario_faults(nodes: int, count: int, at: float, restart_after: float | None, seed: int) -> list[Fault]:
    """``count`` distinct nodes, drawn from the seed's fault stream, crash at ``at``."""
    if count > nodes - 1:
        raise ValueError(f"cannot crash {count} of {nodes} nodes: at least one must survive")
    chosen = SeedStreams(seed).get("faults").sample(range(nodes), count)
    return [Crash(frozenset(chosen), at, restart_after)] if count else []

