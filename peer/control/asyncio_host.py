"""A ``peer.Node`` in an asyncio program: the node as a trio guest run.

Theory of operation
-------------------
The node is a trio program (the agent, its transport, the scheduler's
timers), and an asyncio program holds it with the same ``async with
peer.Node(...) as node`` as a trio program does: ``Node.__aenter__`` sees
asyncio (``sniffio``) and starts the node as a trio *guest run* on the
program's own loop (``trio.lowlevel.start_guest_run``): trio's scheduler
runs in callbacks of the asyncio loop (``call_soon`` /
``call_soon_threadsafe``), on the program's thread, and trio's own I/O wait
(epoll) runs in a helper thread that hands each batch of events back to
the loop. Every node method is then awaitable from asyncio code.

Why a guest run rather than the node in a thread of its own (a second event
loop): one thread means one place for everything. Job functions written
for asyncio run as tasks on the program's loop (``peer.runtime.aio``:
``HostLoop``), so they use the program's connection pools, locks and
queues, which belong to that loop and could not be touched from another
thread; the sync methods (``members``, ``jobs``, ``run``...) read the
node's state directly, with no lock, because nothing else runs while they
do; and no second thread holds a copy of the program's state. What it
costs:

- The node shares the program's thread. A coroutine that blocks the loop
  (CPU work, a sync call) delays the node too: heartbeats, probe answers and
  job starts wait for the loop, and a block longer than the membership
  timeouts gets the node suspected, as a stalled ``peer agent`` would be.
  Sync job functions still run in worker threads, never on the loop.
- Each time trio waits for I/O or a timer, one hop to the helper thread and
  one back (``call_soon_threadsafe``): tens of microseconds, paid by the
  node's own work (``bench/asyncio_bridge.py`` measures a submit + result
  round trip against the same from a trio program).
- Each call of an ``async def`` node method from asyncio is a trio task
  (``GuestRun.call``): handed to trio through its token, its outcome set on
  an asyncio future; one wake-up of trio per call. Except the calls of a
  round trip (submit, submit_with, result, wait, watch: below, the fast
  path), which run in the caller's own task.
- A round trip from asyncio with an asyncio job costs at least one of
  those hops, whatever else is cut: trio, idle in its I/O thread when the
  caller submits, must be woken to start the run (the flush). Each hop is
  a thread switch each way (the I/O thread takes the GIL to return from
  epoll, then wakes the loop): 0.1-0.2 ms on a busy 2-core machine,
  against none in a trio program. A second one, when trio parks again
  while the job's task runs on the loop and is woken by its end, is
  avoided for a task that ends within a few loop iterations: trio awaits
  it by ticking first (``peer.runtime.aio.GUEST_SPIN_TICKS``), which costs
  a slower task those few ticks.

How calls cross, and how cancellation goes each way:

- asyncio -> trio: ``@bridged`` (applied in ``node.py`` to every ``async
  def`` method of ``Node`` and to ``watch``'s ``__anext__``) runs the method
  as it is when called from trio, and from an asyncio task hands it to
  ``GuestRun.call``: a trio task in the guest's calls nursery, in a cancel
  scope of its own. Cancelling the asyncio caller cancels that scope; the
  caller's ``CancelledError`` goes on once the trio side has unwound (up
  to ``CALL_UNWIND`` seconds). Exceptions come out as themselves
  (``RunFailed``, ``TimeoutError``...); a call cut short because the node
  stopped is a ``RuntimeError`` saying so.
- The fast path (``@inlined``, on ``submit``, ``submit_with``, ``result``,
  ``wait`` and ``watch``'s ``__anext__``): from an asyncio task on the
  node's own loop (``GuestRun.here``) the method runs in that task, the
  same code as under trio. This is sound because that task runs on the
  node's thread between two trio ticks: no trio task is mid-step, so the
  node's synchronous state (the scheduler) may be read and changed as a
  trio task does between two checkpoints. What differs is only what it
  waits with: ``submit`` queues the run as ``Agent.submit`` does
  (``Agent.submit_soon``: the same ``scheduler.submit``, so the same
  ``BacklogFull``; the run id at once) and asks trio to carry out the
  effects just after (``Agent.flush_soon``, one wake-up, not awaited);
  ``wait`` (hence ``result``) reads the record as under trio, and between
  two looks waits on an asyncio future registered with the agent
  (``Agent.on_run_change``, the registration trio waiters use), woken by
  the same change of the run's record in the same trio tick, or after the
  same periodic recheck (``RUN_WAIT_RECHECK``) by a loop timer, and at once
  when the node stops (``Agent.release_run_waits``). Deadlines are on
  trio's clock in both (``trio.current_time()`` works on the loop's thread
  of a guest run). Exceptions (``RunFailed``, ``UnknownRun``,
  ``TimeoutError``, ``JobError``...) are raised by the same lines.
  Cancelling the caller cancels its wait, which takes its registration
  back. From a task of another loop or thread, these go the slow way.
- trio -> asyncio: asyncio job functions (``peer.runtime.aio.run_coroutine``):
  an asyncio task on this loop, created in a copy of the context the
  program entered the node in (not the trio task's: ``sniffio``, anyio and
  httpx inside it must see asyncio, and the program's context variables
  carry over); trio's cancellation (timeout, lost claim) cancels the task.
  ``RunContext.progress`` from such a task is queued to trio without
  blocking, and ``await run.next_update()`` waits on an asyncio future.
- Lifetime, as under trio. Leaving the block, however it ends (normally,
  an exception, ``CancelledError``), hands that exit to the trio side, which
  leaves gracefully (drain, leave gossip; bounded) and then finishes the
  guest run; the body's exception then comes out as itself. The node's own
  failure (``peer.JoinFailed``) cancels the task that entered the node (the
  body sees ``CancelledError``), and the failure comes out of the ``async
  with`` in place of that cancellation (which is taken back with
  ``Task.uncancel``, so an enclosing ``asyncio.timeout`` is not confused).
  Entering cannot be cancelled half-way, as under trio: a cancellation
  during the join is delivered once the node runs, which then leaves.
- Ctrl-C. Under ``asyncio.run`` the SIGINT handler is asyncio's (trio
  installs its own only where none is): the first Ctrl-C cancels the main
  task, so the body is cancelled and the node leaves gracefully (up to
  about ``drain_timeout`` + 5 s). A second Ctrl-C makes ``asyncio.run``
  raise ``KeyboardInterrupt`` and cancel the remaining tasks; the exit,
  cancelled while leaving, stops the node where it is (as a second
  interrupt does under trio) and waits up to ``STOP_GRACE`` seconds for the
  guest run to end before the loop closes. Other members see it fail
  rather than leave.

The guest run is started with ``host_uses_signal_set_wakeup_fd=True``:
asyncio owns ``signal.set_wakeup_fd`` (its ``add_signal_handler``, which
uvicorn uses), and trio must not take it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

import trio

from peer.runtime import aio
from peer.runtime.exceptions import leaf_exceptions

if TYPE_CHECKING:
    from peer.control.node import Node
    from peer.runtime.agent import Agent

log = logging.getLogger("peer.node")

# After its asyncio caller is cancelled, how long a node call may take to unwind on trio.
CALL_UNWIND = 5.0
# A second cancellation while leaving stops the node at once; how long its trio side may then take.
STOP_GRACE = 5.0

P = ParamSpec("P")
R = TypeVar("R")


class _HasGuest(Protocol):
    @property
    def _guest(self) -> GuestRun | None: ...


S = TypeVar("S", bound=_HasGuest)


def bridged(method: Callable[Concatenate[S, P], Awaitable[R]]) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Make an ``async def`` method of ``Node`` (or of an object with a
    ``_guest`` property) awaitable from asyncio: from a trio task (a trio
    program, or inside the guest run) it runs as it is; from an asyncio task
    it runs as a trio task of the node's guest run (``GuestRun.call``)."""

    @functools.wraps(method)
    async def crossing(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        guest = self._guest
        if guest is None or not aio.running_asyncio():
            return await method(self, *args, **kwargs)
        return await guest.call(functools.partial(method, self, *args, **kwargs))

    return crossing


def inlined(method: Callable[Concatenate[S, P], Awaitable[R]]) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """``bridged``, with a fast path for a method written for both
    libraries: its body only reads and changes the node's synchronous state,
    reads ``trio.current_time()``, and awaits nothing but the waits that
    work on both (``Node._run_changed``; ``Agent.submit_soon`` in place of
    ``Agent.submit``). From an asyncio task on the node's own loop
    (``GuestRun.here``) it runs in that task: the same code, no crossing.
    From anywhere else, as ``bridged``."""

    @functools.wraps(method)
    async def crossing(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        guest = self._guest
        if guest is None or not aio.running_asyncio() or guest.here():
            return await method(self, *args, **kwargs)
        return await guest.call(functools.partial(method, self, *args, **kwargs))

    return crossing


class _Call:
    """One node call from asyncio, while it runs on trio."""

    __slots__ = ("cancelled", "done", "error", "function", "scope", "unwound", "value")

    def __init__(self, function: Callable[[], Awaitable[Any]], done: asyncio.Future[None]) -> None:
        self.function = function
        self.done = done
        self.unwound: asyncio.Future[None] | None = None
        self.scope: trio.CancelScope | None = None
        self.cancelled = False
        self.value: Any = None
        self.error: BaseException | None = None

    def settle(self) -> None:  # on the loop's thread, in a trio tick
        for future in (self.done, self.unwound):
            if future is not None and not future.done():
                future.set_result(None)

    def cancel(self) -> None:  # a trio callback
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class GuestRun:
    """The trio side of a node entered from asyncio, and the async context
    manager ``Node`` uses as its lifetime there (in place of ``Node._life``)."""

    def __init__(self, node: Node, lifetime: Callable[[], contextlib.AbstractAsyncContextManager[None]]) -> None:
        self._node = node
        self._lifetime = lifetime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host_task: asyncio.Task[Any] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._calls: trio.Nursery | None = None
        self._exit_request = trio.Event()
        self._exit_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None] = (None, None, None)
        self._ready: asyncio.Future[None] | None = None  # entered, or finished first
        self._finished: asyncio.Future[None] | None = None
        self._entered = False
        self._outcome: tuple[bool, Any] | None = None  # (ok, value or exception) of the guest run
        self._host_cancelled = False  # we cancelled the host task because the node failed
        self._running = False
        self._keeper: _Keeper | None = None

    @property
    def running(self) -> bool:
        return self._running

    # -- the asyncio side ----------------------------------------------------------------

    async def __aenter__(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._host_task = asyncio.current_task()
        self._ready = loop.create_future()
        self._finished = loop.create_future()
        host = aio.HostLoop(loop, contextvars.copy_context())
        keeper = self._keeper = await _Keeper.of(loop)
        self._token = keeper.token
        self._running = True
        keeper.add(self, host)
        cancelled: asyncio.CancelledError | None = None
        while not self._ready.done():
            try:
                await asyncio.shield(self._ready)
            except asyncio.CancelledError as error:
                cancelled = error  # delivered once the node runs: entering is not cut half-way
        if not self._entered:
            await self._run_over()
            self._result()  # the entry's error (BindError...)
        if cancelled is not None:
            await self.__aexit__(type(cancelled), cancelled, cancelled.__traceback__)
            raise cancelled

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._finished is not None and self._token is not None
        try:
            self._token.run_sync_soon(self._request_exit, (exc_type, exc, tb))
        except trio.RunFinishedError:
            pass  # it has finished already (the node failed)
        # Whether our own cancellation (for the node's failure) has reached the task.
        delivered = isinstance(exc, asyncio.CancelledError)
        stopping = False
        while not self._finished.done():
            try:
                await asyncio.shield(self._finished)
            except asyncio.CancelledError:
                if self._host_cancelled and not delivered:
                    delivered = True  # ours: the failure comes out below, in its place
                    continue
                if stopping:
                    raise
                # Cancelled while leaving (a second Ctrl-C): stop where it is.
                stopping = True
                log.warning("node %s: cancelled while leaving; stopping it now", self._node.name)
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(self._stop_now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._finished), STOP_GRACE)
                raise
        await self._run_over()
        if self._host_cancelled:
            if not delivered:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)  # take the pending cancellation, or it hits the program's next await
            self._host_cancelled = False
            if self._host_task is not None:
                self._host_task.uncancel()
        return bool(self._result())

    def here(self) -> bool:
        """True in an asyncio task on this guest's loop, while it runs: on the
        node's thread between two trio ticks, where no trio task is
        mid-step, so the node's state may be read and changed directly, as
        a trio task does between two checkpoints."""
        return self._running and asyncio._get_running_loop() is self._loop and aio.running_asyncio()

    async def run_changed(self, agent: Agent, run_id: str, at_most: float) -> None:
        """``Agent.run_changed`` for an asyncio task on this loop (``here``):
        the same registration (``Agent.on_run_change``), woken by the same
        change or after ``at_most`` seconds, on an asyncio future; the
        first waiter's reader mark is flushed by trio (``flush_soon``)."""
        assert self._loop is not None
        woken = self._loop.create_future()

        def wake() -> None:  # on this thread: from a trio tick, or the timer
            if not woken.done():
                woken.set_result(None)

        timer = self._loop.call_later(max(0.0, at_most), wake)
        try:
            if agent.on_run_change(run_id, wake):
                agent.flush_soon()
            await woken
        finally:
            timer.cancel()
            agent.off_run_change(run_id, wake)

    async def call(self, function: Callable[[], Awaitable[R]]) -> R:
        """Await ``function()`` as a trio task of the guest run, from an
        asyncio task on its loop."""
        if not self._running or self._token is None or self._loop is None:
            raise RuntimeError(f"node {self._node.name!r} is not running: use `async with node:`")
        call = _Call(function, self._loop.create_future())
        try:
            self._token.run_sync_soon(self._start_call, call)
        except trio.RunFinishedError:
            raise RuntimeError(f"node {self._node.name!r} has stopped") from None
        try:
            await call.done
        except asyncio.CancelledError:
            # Our caller is cancelled: so is the trio call, which then unwinds.
            call.unwound = self._loop.create_future()
            try:
                self._token.run_sync_soon(call.cancel)
            except trio.RunFinishedError:
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.unwound, CALL_UNWIND)
            raise
        if call.error is not None:
            raise call.error
        return call.value

    def _result(self) -> Any:
        assert self._outcome is not None
        ok, value = self._outcome
        if ok:
            return value
        raise value

    async def _run_over(self) -> None:
        """The last node of the loop has finished: wait for the guest run to
        end too, so that it never outlives the program's nodes (nor the loop)."""
        keeper = self._keeper
        if keeper is not None and keeper.closing and not keeper.finished.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(keeper.finished), STOP_GRACE)

    def _settle(self, ok: bool, value: Any) -> None:  # on the loop's thread
        if self._outcome is not None:
            return
        self._running = False
        self._outcome = (ok, value)
        for future in (self._ready, self._finished):
            if future is not None and not future.done():
                future.set_result(None)

    # -- the trio side ---------------------------------------------------------------------

    async def _task(self, host: aio.HostLoop) -> None:
        """The node's life as a task of the keeper's nursery: whatever
        happens is handed to the asyncio side, never to its siblings."""
        try:
            self._settle(True, await self._main(host))
        except trio.Cancelled as cancelled:  # the keeper's run is ending under it (trio's KeyboardInterrupt)
            self._settle(False, RuntimeError(f"node {self._node.name!r}: its trio run was cancelled"))
            raise cancelled from None
        except BaseException as error:  # noqa: BLE001 - handed to the asyncio side
            self._settle(False, error)

    async def _main(self, host: aio.HostLoop) -> Any:
        executor = self._node.executor
        previous, executor.host_loop = executor.host_loop, host
        try:
            async with trio.open_nursery() as calls:
                self._calls = calls
                result = await self._live()
                calls.cancel_scope.cancel()  # what is still running was cut by the node's stop
            return result
        except BaseExceptionGroup as group:
            leaves = leaf_exceptions(group)
            if len(leaves) != 1:
                raise
            failure = leaves[0]
        finally:
            executor.host_loop = previous
        raise failure

    async def _live(self) -> Any:
        lifetime = self._lifetime()
        await lifetime.__aenter__()
        self._entered = True
        assert self._ready is not None
        self._ready.set_result(None)
        try:
            await self._exit_request.wait()
            exc_info = self._exit_info
        except BaseException as error:  # noqa: BLE001 - the node failed (its nursery cancels us), or trio's KeyboardInterrupt
            self._cancel_host()
            exc_info = (type(error), error, error.__traceback__)
        return await lifetime.__aexit__(*exc_info)

    def _cancel_host(self) -> None:
        task = self._host_task
        if task is not None and not task.done() and not self._exit_request.is_set():
            self._host_cancelled = True
            task.cancel()

    def _request_exit(
        self, exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        if not self._exit_request.is_set():
            self._exit_info = exc_info
            self._exit_request.set()

    def _stop_now(self) -> None:
        scope = self._node._agent_scope
        if scope is not None:
            scope.cancel()

    def _start_call(self, call: _Call) -> None:
        try:
            assert self._calls is not None
            self._calls.start_soon(self._run_call, call)
        except RuntimeError:  # the calls nursery has closed: the node is stopping
            call.error = RuntimeError(f"node {self._node.name!r} has stopped")
            call.settle()

    async def _run_call(self, call: _Call) -> None:
        try:
            with trio.CancelScope() as scope:
                call.scope = scope
                if call.cancelled:
                    scope.cancel()
                try:
                    call.value = await call.function()
                except trio.Cancelled:
                    raise
                except BaseException as error:  # noqa: BLE001 - raised on the asyncio side
                    call.error = error
        except trio.Cancelled:
            call.error = RuntimeError(f"node {self._node.name!r} stopped while the call was running")
            raise
        finally:
            call.settle()


# The keeper of the trio guest run of this thread (one trio run per thread).
_KEEPER: trio.lowlevel.RunVar[_Keeper] = trio.lowlevel.RunVar("peer_guest_keeper")


class _Keeper:
    """The one trio guest run on an asyncio loop, shared by the nodes a
    program holds there (trio allows one run per thread): started by the
    first node entered, its nursery runs each node's life as a task, and it
    ends once the last node has finished, so no trio run outlives them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.token: trio.lowlevel.TrioToken | None = None
        self.closing = False
        self.finished: asyncio.Future[None] = loop.create_future()
        self._nursery: trio.Nursery | None = None
        self._pending: list[tuple[GuestRun, aio.HostLoop]] = []
        self._guests: set[GuestRun] = set()
        self._idle = trio.Event()

    @classmethod
    async def of(cls, loop: asyncio.AbstractEventLoop) -> _Keeper:
        """The keeper of this loop's guest run, started if there is none."""
        while trio.lowlevel.in_trio_run():
            try:
                keeper: _Keeper | None = _KEEPER.get()
            except LookupError:
                keeper = None
            if keeper is None or keeper.loop is not loop:
                raise RuntimeError("this thread already runs a trio run that is not peer's; enter the node from trio instead")
            if not keeper.closing:
                return keeper
            await asyncio.shield(keeper.finished)  # the last node just left: a new run, once this one is over
            await asyncio.sleep(0)
        keeper = _Keeper(loop)
        trio.lowlevel.start_guest_run(
            keeper._main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=keeper._done,
            host_uses_signal_set_wakeup_fd=True,
        )
        _KEEPER.set(keeper)  # the run exists now (its runner is this thread's), though its main task has not started
        keeper.token = trio.lowlevel.current_trio_token()
        return keeper

    def add(self, guest: GuestRun, host: aio.HostLoop) -> None:
        self._guests.add(guest)
        assert self.token is not None
        self.token.run_sync_soon(self._start, guest, host)

    def _start(self, guest: GuestRun, host: aio.HostLoop) -> None:
        if self._nursery is None:
            self._pending.append((guest, host))
        else:
            self._nursery.start_soon(self._life, guest, host)

    async def _life(self, guest: GuestRun, host: aio.HostLoop) -> None:
        try:
            await guest._task(host)
        finally:
            self._guests.discard(guest)
            if not self._guests:
                self.closing = True
                self._idle.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for guest, host in self._pending:
                nursery.start_soon(self._life, guest, host)
            self._pending.clear()
            await self._idle.wait()

    def _done(self, outcome: Any) -> None:  # trio's done_callback, on the loop's thread
        self.closing = True
        try:
            outcome.unwrap()
            error: BaseException = RuntimeError("the trio guest run ended before the node")
        except BaseException as failure:  # noqa: BLE001 - handed to each node still waiting
            error = failure
        for guest in self._guests:
            guest._settle(False, error)
        if not self.finished.done():
            self.finished.set_result(None)
