"""The trio runtime: one node's protocol cores on real sockets.

``Agent`` is a thin driver, the counterpart of the simulator's ``SimNode``:
it decodes frames with ``peer.runtime.wire.Codec`` and hands the messages to the
node's core (``peer.core.node_core.NodeCore``: membership, replication of the
scheduler's maps and any the agent declares, and the scheduler) with trio's
clock as ``now``; it wakes the core at ``next_deadline()``; after every call
into the core it carries out the effects (``Send`` as a datagram, or as a
stream frame when reliable or too big for a datagram; ``Event`` to the log
and the counters; ``StartRun`` as a task running the job's target with
``peer.runtime.executor``, which it reports back when done; ``CancelRun`` and
``DeliverUpdate`` to that task). No protocol or scheduling decision is made
here.

Around the core, the agent does what a process must: resolve seeds (again
every ``dns_interval`` while any is a name, and join whatever new addresses
appear), give up with a clear error when no seed answers within
``join_timeout``, leave gracefully on request, and serve the control plane it is given
(``ControlPlane``: the HTTP API of ``peer.control.api``; the runtime never
imports the layer above it). Its incarnation is its boot time in milliseconds, so a node
restarted under the same name rejoins as itself and outranks every claim
about its previous life.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from membership.core import Membership
from membership.effects import Event, Send
from membership.state import Address, EventKind, Status
from peer.core.node_core import NodeCore
from peer.core.replication import ReplicationConfig
from peer.jobs.definition import JobSpec
from peer.jobs.runs import RunRecord
from peer.jobs.scheduler import CancelRun, DeliverUpdate, Role, Scheduler, SchedulerConfig, StartRun
from peer.runtime.addresses import format_address, is_ip, is_ipv6, is_wildcard
from peer.runtime.executor import Executor, Outcome
from peer.runtime.seeds import Lookup, SeedResolver, parse_seed, system_lookup
from peer.runtime.settings import Settings
from peer.runtime.transport import StreamRefusal, Transport
from peer.runtime.wire import Codec, Dropped, DropReason, Encryption, FrameTooLarge, Keyring

log = logging.getLogger("peer.agent")

# How long, after leaving, in-flight API requests (a `peer leave` waiting for
# its answer) get before the process stops.
API_DRAIN_SECONDS = 2.0

# At most one warning per interval about frames signed with another key.
KEY_WARNING_INTERVAL = 60.0
# Drops that mean a peer is set up differently: warned about (at most once an interval).
_MISCONFIGURED = frozenset({DropReason.BAD_MAC, DropReason.STALE, DropReason.PLAINTEXT})

_EVENT_LEVEL = {EventKind.FAILED: logging.WARNING}


# The largest result a run may return (packed): its record, with the run's
# other fields, must stay under the replicated maps' 64 KiB per value.
MAX_RESULT_BYTES = 60 * 1024

# A caller waiting on a run is woken by each change of its record, and
# looks again at least this often anyway.
RUN_WAIT_RECHECK = 1.0


@attrs.define
class _RunTask:
    """A run this agent is running: its attempt, how to stop it, where its
    updates go."""

    attempt: int
    scope: trio.CancelScope
    updates: trio.MemorySendChannel[Any]


class AgentError(Exception):
    """The agent cannot go on; the message is one line a person can act on."""


class JoinFailed(AgentError):
    pass


class ControlPlane(Protocol):
    """A server the agent runs beside the node (the HTTP control API): bound
    with the node's sockets, so a port in use (``BindError``) or a setting it
    cannot use (``ConfigError``: its token, its TLS files) fails the start,
    and served until the agent stops; ``serve`` calls ``agent.api_drained()``
    when done. ``bind`` decides where it may listen: ``settings.api``."""

    def bind(self, settings: Settings) -> socket.socket: ...

    async def serve(self, agent: Agent, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None: ...


class Agent:
    def __init__(
        self,
        settings: Settings,
        keyring: Keyring | None,
        *,
        lookup: Lookup = system_lookup,
        rng: random.Random | None = None,
        maps: Sequence[str] = (),
        replication: ReplicationConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        executor: Executor | None = None,
        jobs: Sequence[JobSpec] = (),
        control_plane: ControlPlane | None = None,
    ) -> None:
        self.settings = settings
        self.control_plane = control_plane  # None: no control API is served (an embedded node's default)
        self.name = settings.name
        self.config = settings.membership_config()
        settings.check_encryption(keyring is not None)
        self.codec = Codec(keyring, encryption=Encryption(settings.encrypt), wall_clock=time.time, random_bytes=os.urandom)
        self.transport = Transport(
            settings.bind, max_stream_frame=self.codec.max_stream, keyring=keyring, on_refused=self._on_stream_refused
        )
        self.resolver = SeedResolver(
            [parse_seed(seed) for seed in settings.seeds], hosts_file=settings.hosts_file, lookup=lookup
        )
        self.rng = rng or random.Random()
        self.advertise: Address = settings.bind
        self.started_at = time.time()
        self.seed_addresses: list[Address] = []
        self.handler_errors = 0  # messages the core refused with an exception (a bug, counted)
        self.events: Counter[str] = Counter()
        self.maps = tuple(maps)
        self.replication_config = replication or ReplicationConfig()
        self.scheduler_config = scheduler or settings.scheduler_config()
        # A result must fit in its run record, itself a replicated value of at most 64 KiB.
        # Worker threads of sync functions: as many as runs may run at once.
        self.executor = executor or Executor(max_result_bytes=MAX_RESULT_BYTES, max_threads=self.scheduler_config.max_running_runs)
        if settings.target_policy().restricts:
            # The node's allow-lists hold for whatever executor it is given.
            self.executor.policy = settings.target_policy()
        self.initial_jobs = tuple(jobs)
        self._runs: dict[str, _RunTask] = {}
        self._run_waits: dict[str, list[Callable[[], object]]] = {}  # run -> called at its next change
        self._token: trio.lowlevel.TrioToken | None = None  # for flush_soon
        self._flush_requested = False
        self._outbox: dict[Address, list[tuple[Any, ...]]] = {}  # datagrams for the next scheduler pass
        self._outbox_filled = trio.Event()
        self._core: NodeCore | None = None
        self._api_socket: socket.socket | None = None  # handed to the API server by run()
        self.api_address: Address = settings.api
        self._nursery: trio.Nursery | None = None
        self._armed_deadline = math.inf
        self._next_key_warning = -math.inf
        self._rearm = trio.Event()
        self._joined = trio.Event()
        self._left = trio.Event()
        self.stopping = trio.Event()  # the API's shutdown trigger

    @property
    def core(self) -> NodeCore:
        assert self._core is not None, "bind() first"
        return self._core

    @property
    def membership(self) -> Membership:
        return self.core.membership

    @property
    def scheduler(self) -> Scheduler:
        scheduler = self.core.scheduler
        assert scheduler is not None
        return scheduler

    @property
    def keyed(self) -> bool:
        return self.codec.keyring is not None

    @property
    def leaving(self) -> bool:
        return self.core.leaving

    @property
    def ready(self) -> bool:
        """Part of a cluster (or meant to be alone: no seed to join), not
        leaving, and taking work: the scheduler has caught up and says
        ``ready``, so the node will not run what another runs or has run.
        A readiness probe's answer."""
        joined = self._joined.is_set() or not self.seed_addresses
        return joined and not self.core.leaving and self.scheduler.role is Role.READY

    # -- life -----------------------------------------------------------------

    async def bind(self) -> None:
        """Bind the node's sockets and the API's; raises ``BindError``."""
        await self.transport.bind()
        if self.control_plane is not None:
            try:
                self._api_socket = self.control_plane.bind(self.settings)
            except BaseException:  # BindError, or a ConfigError for its token or TLS files
                self.transport.close()
                raise
            host, port = self._api_socket.getsockname()[:2]
            self.api_address = (str(host), int(port))  # the bound port, if 0 was asked
        self.advertise = self._advertised_address()
        self._core = NodeCore(
            self.name,
            self.advertise,
            self.config,
            self.replication_config,
            maps=self.maps,
            rng=self.rng,
            now=trio.current_time(),
            wall_clock=time.time,
            incarnation=int(time.time() * 1000),
            scheduler=self.scheduler_config,
        )
        self.scheduler.define_when_ready(self.initial_jobs)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the node has left (``leave()``); ``bind()`` first."""
        assert self._core is not None, "bind() first"
        self._token = trio.lowlevel.current_trio_token()
        if not self.keyed:
            log.warning(
                "no cluster key: this cluster is OPEN, anyone who can reach %s can join it and "
                "forge membership (give one with --key-file or PEER_KEY; make one with `peer keygen`)",
                format_address(self.advertise),
                extra={"node": self.name},
            )
        if not self.resolver.seeds:
            # Nothing tells a seedless node's restart from a first start: it
            # counts on its old cluster's members finding it (rejoin_window).
            log.info(
                "no seeds: this node starts a new cluster, or waits to be found by its own "
                "(give every agent the same --seeds list where nodes restart; its own address in it is skipped)",
                extra={"node": self.name},
            )
        log.info(
            "node %s up at %s (bind %s, api %s, profile %s, incarnation %d)",
            self.name,
            format_address(self.advertise),
            format_address(self.settings.bind),
            f"{'https' if self.settings.api_tls_cert else 'http'}://{format_address(self.api_address)}"
            if self._api_socket is not None
            else "none",
            self.settings.profile,
            self.core.incarnation,
            extra={"node": self.name},
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.transport.serve, self._on_frame)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._send_outbox)
                serving = self.control_plane is not None and self._api_socket is not None
                if serving:
                    assert self.control_plane is not None and self._api_socket is not None
                    await nursery.start(self.control_plane.serve, self, self._api_socket)
                await self._resolve_and_join()
                nursery.start_soon(self._seed_loop)
                if self.settings.join_timeout > 0:
                    nursery.start_soon(self._watch_join)
                task_status.started()
                await self._left.wait()
                log.info("left the cluster", extra={"node": self.name})
                self.stopping.set()
                if serving:
                    with trio.move_on_after(API_DRAIN_SECONDS):
                        await trio.sleep_forever()  # the control plane's serve returns once drained; then cancel
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.close()
            await self.executor.aclose()  # the asyncio jobs' loop thread, if one was started

    def close(self) -> None:
        """Release the sockets (``run()`` does this when it ends)."""
        self.transport.close()
        if self._api_socket is not None:
            self._api_socket.close()

    async def leave(self) -> None:
        """Leave gracefully (others see ``left``, never ``failed``) and wait
        until the leave has been gossiped; ``run()`` then returns."""
        if not self.core.leaving:
            running = len(self.scheduler.running())
            if running:
                log.info(
                    "leaving the cluster: letting %d running job(s) finish for up to %g s, then handing them "
                    "back (signal again to stop at once)",
                    running,
                    self.scheduler_config.drain_timeout,
                    extra={"node": self.name},
                )
            else:
                log.info("leaving the cluster", extra={"node": self.name})
            self.core.leave(trio.current_time())
            await self._flush()
        await self._left.wait()

    async def put(self, map_name: str, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Write to a replicated map (one the agent was created with)."""
        self.core.put(trio.current_time(), map_name, key, value, ttl=ttl)
        await self._flush()

    async def remove(self, map_name: str, key: str) -> bool:
        removed = self.core.remove(trio.current_time(), map_name, key)
        await self._flush()
        return removed

    def get(self, map_name: str, key: str) -> Any:
        """The value in a replicated map, or None."""
        register = self.core.get(map_name, key)
        return None if register is None else register.value

    # -- jobs: what the control API and the embedding API call ------------------------

    async def define_job(self, spec: JobSpec) -> bool:
        """Define or redefine a job; False if it was defined so already."""
        changed = self.scheduler.add_job(self.core.wall_ms(), spec)
        await self._flush()
        return changed

    def declare_job(self, spec: JobSpec) -> None:
        """A job declared in code (``peer.jobs.declared``): the scheduler
        applies it once settled, and the timer loop sends what it writes."""
        self.scheduler.declare(self.core.wall_ms(), spec)
        self._rearm.set()

    async def remove_job(self, job_id: str) -> bool:
        removed = self.scheduler.remove_job(job_id)
        await self._flush()
        return removed

    async def pause_job(self, job_id: str, paused: bool) -> JobSpec:
        """``KeyError`` for an unknown job."""
        spec = self.scheduler.set_paused(self.core.wall_ms(), job_id, paused)
        await self._flush()
        return spec

    async def submit(self, spec: JobSpec) -> str:
        """Run ``spec`` once, somewhere in the cluster; the run id."""
        run_id = self.scheduler.submit(self.core.wall_ms(), spec)
        await self._flush()
        return run_id

    async def send(self, run_id: str, data: Any) -> None:
        """``KeyError`` for an unknown run, ``ValueError`` for a finished one."""
        self.scheduler.send(run_id, data)
        await self._flush()

    async def wait_for_run(self, run_id: str, timeout: float) -> RunRecord | None:
        """The run's record once finished, or as it is when ``timeout`` passes
        (None if the run is unknown by then)."""
        with trio.move_on_after(timeout):
            while True:
                record = self.scheduler.record(run_id)
                if record is not None and record.state.finished:
                    return record
                await self.run_changed(run_id)
        return self.scheduler.record(run_id)

    def submit_soon(self, spec: JobSpec) -> str:
        """``submit`` for a caller outside trio on the trio thread (an asyncio
        task of a guest run): the run is queued at once, exactly as
        ``submit`` queues it (``BacklogFull`` the same), and a trio task
        flushes its effects soon after (``flush_soon``)."""
        run_id = self.scheduler.submit(self.core.wall_ms(), spec)
        self.flush_soon()
        return run_id

    def flush_soon(self) -> None:
        """Have a trio task carry out the core's effects soon, for a caller
        that changed the core from outside trio on the trio thread (an
        asyncio task of a guest run, between two trio ticks, when no trio
        task is mid-step: ``peer.control.asyncio_host``). Requests made
        before that flush starts share it."""
        if self._flush_requested or self._token is None:
            return
        self._flush_requested = True
        try:
            self._token.run_sync_soon(self._start_flush)
        except trio.RunFinishedError:
            pass  # the node has stopped: nothing is carried out any more

    def _start_flush(self) -> None:
        self._flush_requested = False
        if self._nursery is not None:
            self._nursery.start_soon(self._flush)

    async def run_changed(self, run_id: str, *, at_most: float = RUN_WAIT_RECHECK) -> None:
        """Return once the run's record has changed on this node (it arrived,
        was written, or expired), or after ``at_most`` seconds: callers look
        again either way, so nothing is missed if the node stops meanwhile."""
        event = trio.Event()
        wake = event.set
        asked = self.on_run_change(run_id, wake)
        try:
            with trio.move_on_after(at_most):
                if asked:
                    await self._flush()  # its reader mark goes out now
                await event.wait()
        finally:
            self.off_run_change(run_id, wake)

    def on_run_change(self, run_id: str, wake: Callable[[], object]) -> bool:
        """Call ``wake()`` once, on the trio thread, at the run's next change
        on this node (or when the node stops: ``release_run_waits``); take
        it back with ``off_run_change`` (the same object) once done waiting,
        woken or not. The run's first waiter watches it (``Scheduler.watch``),
        which may ask for its outcome: then True, and the caller flushes that
        reader mark (``_flush``, ``flush_soon``). Synchronous: a trio task,
        or an asyncio task of a guest run."""
        waits = self._run_waits.get(run_id)
        asked = False
        if waits is None:
            waits = self._run_waits[run_id] = []
            asked = self.scheduler.watch(run_id)
        waits.append(wake)
        return asked

    def off_run_change(self, run_id: str, wake: Callable[[], object]) -> None:
        waits = self._run_waits.get(run_id)
        if waits is None or not any(waiting is wake for waiting in waits):
            return  # woken: the list was handed out (a new one may have started since)
        waits[:] = [waiting for waiting in waits if waiting is not wake]
        if not waits:
            del self._run_waits[run_id]
            self.scheduler.unwatch(run_id)

    def _wake_run_waits(self) -> None:
        for run_id in self.scheduler.take_watched_changes():
            waits = self._run_waits.pop(run_id, None)
            if waits is not None:
                self.scheduler.unwatch(run_id)
                for wake in waits:
                    wake()

    def release_run_waits(self) -> None:
        """The node has stopped: wake every waiter now, so it looks again
        and sees that, rather than at its next periodic look."""
        waits, self._run_waits = self._run_waits, {}
        for run_id, wakes in waits.items():
            self.scheduler.unwatch(run_id)
            for wake in wakes:
                wake()

    def api_drained(self) -> None:
        """Called by the API server once it stopped: nothing is left to wait for."""
        if self._nursery is not None and self._left.is_set():
            self._nursery.cancel_scope.cancel()

    # -- driving the core -------------------------------------------------------

    async def _on_frame(self, src: Address, frame: bytes, reliable: bool) -> None:
        messages = self.codec.decode(frame, stream=reliable)
        if isinstance(messages, Dropped):
            self._report_drop(src, messages)
            return
        now = trio.current_time()
        for message in messages:
            try:
                self.core.receive(now, src, message, reliable)
            except Exception:  # the node never crashes on input; a bug is logged and counted
                self.handler_errors += 1
                log.exception("the node's core failed on %r from %s", message, format_address(src))
        await self._flush()

    def _report_drop(self, src: Address, dropped: Dropped) -> None:
        level = logging.DEBUG
        if dropped.reason in _MISCONFIGURED:
            # Another key, a clock off, or encryption off on a peer: worth a warning, not a flood.
            now = trio.current_time()
            if now >= self._next_key_warning:
                self._next_key_warning = now + KEY_WARNING_INTERVAL
                level = logging.WARNING
        log.log(
            level,
            "dropped a frame from %s: %s (%s)",
            format_address(src),
            dropped.reason.value,
            dropped.detail,
            extra={"node": self.name},
        )

    def _on_stream_refused(self, src: Address, reason: StreamRefusal) -> None:
        if reason is StreamRefusal.BAD_MAC:  # a stream's preamble under another key: as a frame's
            self._report_drop(src, Dropped(DropReason.BAD_MAC, "stream preamble MAC matches no key in the keyring"))

    async def _timer_loop(self) -> None:
        while True:
            self._rearm = trio.Event()
            self._armed_deadline = self.core.next_deadline()
            with trio.move_on_at(self._armed_deadline):
                await self._rearm.wait()
            self.core.tick(trio.current_time())
            await self._flush()

    async def _flush(self) -> None:
        core = self.core
        for effect in core.take_effects():
            if isinstance(effect, Send):
                await self._send(effect)
            elif isinstance(effect, Event):
                self._on_event(effect)
            elif isinstance(effect, StartRun):
                self._start_run(effect)
            elif isinstance(effect, CancelRun):
                self._cancel_run(effect)
            else:
                self._deliver_update(effect)
        if core.membership.live_count > 1 and not self._joined.is_set():
            self._joined.set()
        if core.leaving and core.leave_complete:
            self._left.set()
        if self._run_waits:
            self._wake_run_waits()
        if core.next_deadline() < self._armed_deadline:
            self._rearm.set()

    async def _send(self, send: Send) -> None:
        if not send.reliable:
            if self._nursery is not None and not self.core.leaving:
                # Datagrams wait for the scheduler's next pass: what other
                # tasks send meanwhile to the same member (a burst of
                # submits, each handing its run on) shares their packets.
                self._outbox.setdefault(send.dst, []).append(send.messages)
                self._outbox_filled.set()
                return
            await self._send_datagrams(send.dst, [send.messages])
            return
        await self._send_stream(send)

    async def _send_outbox(self) -> None:
        while True:
            await self._outbox_filled.wait()
            self._outbox_filled = trio.Event()
            outbox, self._outbox = self._outbox, {}
            for dst, batches in outbox.items():
                await self._send_datagrams(dst, batches)

    async def _send_datagrams(self, dst: Address, batches: list[tuple[Any, ...]]) -> None:
        """Each batch of messages as one datagram, consecutive ones joined
        while they fit the packet budget; a batch too big for a datagram
        goes by stream."""
        frame: bytes | None = None
        joined: list[Any] = []
        for messages in batches:
            try:
                candidate = self.codec.encode([*joined, *messages])
            except FrameTooLarge:
                candidate = None
            if candidate is not None and len(candidate) <= self.config.packet_budget:
                frame, joined = candidate, [*joined, *messages]
                continue
            if frame is not None:
                await self.transport.send_datagram(dst, frame)
            try:
                frame, joined = self.codec.encode(messages), list(messages)
            except FrameTooLarge:
                frame, joined = None, []  # too big for a datagram: the stream channel takes it whole
                await self._send_stream(Send(dst, messages, True))
        if frame is not None:
            await self.transport.send_datagram(dst, frame)

    async def _send_stream(self, send: Send) -> None:
        try:
            frame = self.codec.encode(send.messages, stream=True)
        except FrameTooLarge as error:
            log.error("cannot send to %s: %s", format_address(send.dst), error, extra={"node": self.name})
            return
        if self._nursery is None or self.stopping.is_set():
            return  # the node has left (while a leave() was still sending): nothing goes out any more
        self.transport.start_stream(self._nursery, send.dst, frame)
        # Let the stream go out before encoding the next one: a catch-up's
        # chunks then reach the other side while we still encode.
        await trio.sleep(0)

    def _on_event(self, event: Event) -> None:
        member = event.member
        kind = event.kind.value
        self.events[kind] += 1
        because = f" (reported by {event.source})" if event.source and event.source != member.name else ""
        log.log(
            _EVENT_LEVEL.get(event.kind, logging.INFO),
            "member %s %s at %s, incarnation %d%s",
            member.name,
            kind,
            format_address(member.addr),
            member.incarnation,
            because,
            extra={"node": self.name, "event": kind, "member": member.name},
        )

    # -- runs -------------------------------------------------------------------

    def _start_run(self, start: StartRun) -> None:
        send_updates, updates = trio.open_memory_channel[Any](math.inf)
        task = _RunTask(start.attempt, trio.CancelScope(), send_updates)
        previous = self._runs.get(start.run_id)
        if previous is not None:
            previous.scope.cancel()
        self._runs[start.run_id] = task
        assert self._nursery is not None
        self._nursery.start_soon(self._run_job, start, task, updates)

    async def _run_job(self, start: StartRun, task: _RunTask, updates: trio.MemoryReceiveChannel[Any]) -> None:
        extra = {"node": self.name, "event": "run", "run": start.run_id}
        log.debug("run %s started (attempt %d)", start.run_id, start.attempt, extra=extra)
        outcome: Outcome | None = None
        with task.scope:
            try:
                outcome = await self.executor.run(
                    start.spec.target,
                    run_id=start.run_id,
                    attempt=start.attempt,
                    timeout=start.spec.timeout,
                    updates=updates,
                    progress=lambda value: self._on_progress(start.run_id, start.attempt, value),
                )
            except Exception as error:  # an executor bug must not take the node down
                log.exception("run %s: the executor failed", start.run_id, extra=extra)
                outcome = Outcome(ok=False, error=f"internal error running the job: {error!r}")
        if self._runs.get(start.run_id) is task:
            del self._runs[start.run_id]
        if outcome is None:
            log.info("run %s cancelled", start.run_id, extra=extra)
            return
        # A failure is worth a line at the default level; a success, with a
        # job that may run every second, is what /runs and /metrics are for.
        log.log(
            logging.DEBUG if outcome.ok else logging.WARNING,
            "run %s %s%s",
            start.run_id,
            "succeeded" if outcome.ok else "failed",
            "" if outcome.ok else f": {(outcome.error or '').splitlines()[0] if outcome.error else ''}",
            extra=extra,
        )
        self.scheduler.run_finished(self.core.wall_ms(), start.run_id, start.attempt, outcome.ok, outcome.result, outcome.error)
        await self._flush()

    def _on_progress(self, run_id: str, attempt: int, value: Any) -> None:
        self.scheduler.run_progress(self.core.wall_ms(), run_id, attempt, value)
        self._rearm.set()  # the timer loop writes it out

    def _cancel_run(self, cancel: CancelRun) -> None:
        task = self._runs.get(cancel.run_id)
        if task is not None and task.attempt == cancel.attempt:
            log.info("cancelling run %s: %s", cancel.run_id, cancel.reason, extra={"node": self.name, "run": cancel.run_id})
            task.scope.cancel()

    def _deliver_update(self, update: DeliverUpdate) -> None:
        task = self._runs.get(update.run_id)
        if task is not None and task.attempt == update.attempt:
            try:
                task.updates.send_nowait(update.data)
            except trio.BrokenResourceError:
                pass  # the run has just ended: its updates channel closed with it

    # -- seeds ------------------------------------------------------------------

    async def _resolve_and_join(self) -> None:
        addresses = [addr for addr in await self.resolver.resolve() if addr != self.advertise]
        if set(addresses) == set(self.seed_addresses) or self.core.leaving:
            return
        new = [addr for addr in addresses if addr not in self.seed_addresses]
        self.seed_addresses = addresses
        if new:
            log.info("joining through %s", ", ".join(map(format_address, addresses)), extra={"node": self.name})
        self.core.join(trio.current_time(), addresses)
        await self._flush()

    async def _seed_loop(self) -> None:
        names = any(not is_ip(seed.host) for seed in self.resolver.seeds)
        if not names or self.settings.dns_interval <= 0:
            return
        while True:
            await trio.sleep(self.settings.dns_interval)
            await self._resolve_and_join()

    async def _watch_join(self) -> None:
        with trio.move_on_after(self.settings.join_timeout):
            await self._joined.wait()
            return
        static = [seed for seed in self.resolver.seeds if not seed.dns]
        if not self.seed_addresses and not static:
            return  # only DNS seeds, and nobody there yet: we are the first node
        raise JoinFailed(self._join_failure())

    def _join_failure(self) -> str:
        tried = ", ".join(map(format_address, self.seed_addresses)) or "no address: the seeds did not resolve"
        rejected = self.drops()[DropReason.BAD_MAC.value]
        key = f"{rejected} frames came with a bad MAC: " if rejected else ""
        stale, plaintext = self.codec.drops[DropReason.STALE], self.codec.drops[DropReason.PLAINTEXT]
        key += f"{stale} frames were stamped too far from this node's clock (are the clocks synchronised?): " if stale else ""
        key += f"{plaintext} frames were not encrypted (is encrypt on everywhere?): " if plaintext else ""
        return (
            f"no seed answered within {self.settings.join_timeout:g}s (tried {tried}); {key}check --seeds, "
            "that the seeds run and that this node has the cluster's key, or raise --join-timeout (0 waits forever)"
        )

    def _advertised_address(self) -> Address:
        if self.settings.advertise is not None:
            host, port = self.settings.advertise
            return host, port or self.transport.port
        host = self.settings.bind[0]
        if is_wildcard(host):
            host = _outward_ip(is_ipv6(host))
        return host, self.transport.port

    # -- reading ------------------------------------------------------------------

    def member_counts(self) -> dict[str, int]:
        counts = {status.name.lower(): 0 for status in Status}
        for member in self.membership.members():
            counts[member.status.name.lower()] += 1
        return counts

    def drops(self) -> dict[str, int]:
        drops = {reason.value: count for reason, count in self.codec.drops.items()}
        drops["bad_mac"] += self.transport.stats.streams_refused["bad_mac"]  # streams refused by their preamble's MAC
        drops["handler_error"] = self.handler_errors
        return drops

    def footprint(self) -> dict[str, dict[str, int]]:
        """How many entries each of the node's tables holds, by part: none
        may grow but with live data (the runs held, the members), which is
        what ``bench/soak.py`` checks over hours; ``/status`` and
        ``/metrics`` show them. ``tasks`` and ``threads`` count the agent's
        trio tasks and the process's threads (runs of sync functions)."""
        return {
            "replication": self.core.replicator.footprint(),
            "scheduler": self.scheduler.footprint(),
            "agent": {
                "run_tasks": len(self._runs),
                "run_waits": len(self._run_waits),
                "outbox": sum(len(batches) for batches in self._outbox.values()),
                "tasks": len(self._nursery.child_tasks) if self._nursery is not None else 0,
                "threads": threading.active_count(),
            },
        }

    def stats(self) -> dict[str, Any]:
        return {
            "membership": attrs.asdict(self.membership.stats),
            "replication": attrs.asdict(self.core.replicator.stats),
            "transport": attrs.asdict(self.transport.stats),
            "drops": self.drops(),
            "events": {kind.value: self.events[kind.value] for kind in EventKind},
        }


def _outward_ip(ipv6: bool) -> str:
    """The address this machine would use to reach others (no packet is sent);
    loopback when it has no route."""
    family, probe, fallback = (
        (socket.AF_INET6, "fd00::1", "::1") if ipv6 else (socket.AF_INET, "10.255.255.255", "127.0.0.1")
    )
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
            return str(sock.getsockname()[0])
        except OSError:
            log.warning("cannot tell this machine's address; advertising %s (set --advertise)", fallback)
            return fallback
