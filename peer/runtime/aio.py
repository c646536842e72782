"""asyncio job functions, run from the trio runtime.

Theory of operation
-------------------
The node is a trio program, and an ``async def`` job function runs on trio
unless it needs asyncio. One written for asyncio (``asyncio.sleep``, aiohttp,
asyncpg, a connection pool made on the program's loop) cannot run as a trio
task: awaiting an asyncio future inside trio fails ("trio.run received
unrecognized yield message"), and with no asyncio loop running at all,
``asyncio.get_running_loop()`` fails first ("no running event loop"). So such
a function runs as an asyncio *task* on an asyncio *loop*, and the trio side
awaits its outcome:

- In ``peer agent`` (and a trio-embedded ``peer.Node``) that loop is the
  executor's own ``LoopThread``: one asyncio loop in one daemon thread,
  started on the first asyncio run and stopped when the agent stops
  (``Executor.close``). One thread for every asyncio run, not a thread per
  run: asyncio tasks interleave as they would in any asyncio program, and a
  job that blocks that loop delays the other asyncio jobs (never the node's
  heartbeats, which stay on trio). Each task starts in a fresh context.
- In an asyncio-embedded ``peer.Node`` (``peer.control.asyncio_host``) the
  node runs as a trio guest on the program's own loop, and the loop given
  here is that one (``HostLoop``): the task runs on the program's loop, in a
  copy of the context the program entered the node in (so ``sniffio``,
  anyio and httpx inside it see asyncio, and the program's context
  variables carry over), and it can use whatever the program made on that
  loop: pools, locks, queues.

``run_coroutine`` starts the task on the loop (``call_soon_threadsafe``: from
the trio thread to the loop thread, or later on the same thread in guest
mode) and waits on a ``trio.Event`` that the task's done callback sets
through the trio token, so the wake-up is ordered after everything the task
sent to trio before it ended (its progress reports); in a guest run, trio
first awaits it for a few ticks (``GUEST_SPIN_TICKS``) rather than parking in
its I/O thread at once, so a task that ends right away does not pay the
thread switches of waking it. When the trio side is
cancelled (the run's timeout, a lost claim, a replaced run), the asyncio task
is cancelled (it sees ``asyncio.CancelledError`` at its await, and may clean
up in ``finally``), and the trio side waits up to ``CANCEL_GRACE`` seconds for
it to finish, shielded, before letting the cancellation go on; a task that
ignores its cancellation for longer is left to finish alone and its result
dropped, as an abandoned worker thread's is.

Which runtime an ``async def`` gets when its job says ``runtime = "auto"``
(``choose``): what the function refers to decides. The global names its code
uses (nested functions included) are looked up in its module; a module or an
object from ``asyncio`` or an asyncio-only library (``ASYNCIO_LIBRARIES``)
votes asyncio, one from ``trio`` votes trio. One side only: that runtime.
Neither or both: the same vote over everything the function's module
imported. Still undecided -- a coroutine that awaits only library-neutral
code (anyio, httpx, other coroutines of its own) -- it runs where the node
itself runs: trio in ``peer agent`` and a trio-embedded node, asyncio in an
asyncio-embedded node. The rule can be wrong for code that reaches asyncio
through a helper module the function's own module does not import; then the
run fails with the usual error, and ``hint`` adds what to set
(``runtime = "asyncio"``, or ``"trio"`` for the opposite mistake).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import attrs
import sniffio
import trio

log = logging.getLogger(__name__)

# How long a cancelled asyncio task may take to unwind before the run moves on without it.
CANCEL_GRACE = 5.0
# In a guest run, how many trio ticks an asyncio job is awaited by ticking before trio parks (run_coroutine).
GUEST_SPIN_TICKS = 6
# How long stopping the executor's loop thread waits for its tasks and the thread.
STOP_TIMEOUT = 5.0

# Top-level packages whose coroutines need an asyncio loop.
ASYNCIO_LIBRARIES = frozenset({
    "asyncio", "uvloop", "aiohttp", "asyncpg", "aiofiles", "aiosqlite", "aiomysql", "aiopg", "aioredis",
    "motor", "aiokafka", "aio_pika", "aiormq", "aiobotocore", "aioboto3", "databases", "tortoise", "aiosmtplib",
    "aiodns", "aiocache", "aiozk", "websockets", "fastapi", "starlette", "uvicorn", "sanic", "quart", "tornado",
})  # fmt: skip
# Qualified modules that are asyncio-only inside a neutral package.
ASYNCIO_MODULES = frozenset({"redis.asyncio", "sqlalchemy.ext.asyncio", "grpc.aio", "elasticsearch._async"})
TRIO_LIBRARIES = frozenset({"trio", "trio_websocket", "trio_asyncio", "pytest_trio"})


@attrs.frozen
class HostLoop:
    """An asyncio loop that asyncio job functions run on, and the context
    their tasks start in (a copy of it each)."""

    loop: asyncio.AbstractEventLoop
    context: contextvars.Context = attrs.field(factory=contextvars.Context)


class LoopThread:
    """An asyncio loop of its own in one daemon thread, started by ``get``
    and stopped by ``close`` (then ``get`` starts a new one)."""

    def __init__(self, name: str = "peer-asyncio") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._host: HostLoop | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> HostLoop:
        with self._lock:
            if self._host is None or self._host.loop.is_closed():
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(target=_serve, args=(loop, started), name=self._name, daemon=True)
                thread.start()
                started.wait()
                self._host, self._thread = HostLoop(loop), thread
            return self._host

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Cancel the tasks still on the loop, let them unwind (up to
        ``STOP_TIMEOUT``), stop the loop and the thread. Blocks: call it
        from a thread that may block."""
        with self._lock:
            host, thread = self._host, self._thread
            self._host = self._thread = None
        if host is None or thread is None:
            return
        try:
            host.loop.call_soon_threadsafe(_stop, host.loop)
        except RuntimeError:  # closed already
            return
        thread.join(STOP_TIMEOUT + 1.0)
        if thread.is_alive():
            log.warning("the asyncio job loop did not stop within %g s; leaving its thread", STOP_TIMEOUT)


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _stop(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        loop.stop()
        return
    waiting = asyncio.ensure_future(asyncio.wait(tasks, timeout=STOP_TIMEOUT), loop=loop)
    waiting.add_done_callback(lambda _: loop.stop())


class _Run:
    """One coroutine on an asyncio loop, seen from trio."""

    def __init__(self, host: HostLoop, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self.host = host
        self.factory = factory
        self.token = trio.lowlevel.current_trio_token()
        self.done = trio.Event()
        self.task: asyncio.Task[Any] | None = None
        self.error: BaseException | None = None  # the factory failed: nothing was started

    def start(self) -> None:  # on the loop's thread
        try:
            coroutine = self.factory()
            self.task = self.host.loop.create_task(coroutine, context=self.host.context.copy())
        except BaseException as error:  # noqa: BLE001 - reported to the trio side
            self.error = error
            self._finished()
            return
        self.task.add_done_callback(lambda _: self._finished())

    def cancel(self) -> None:  # on the loop's thread
        if self.task is not None:
            self.task.cancel()

    def _finished(self) -> None:
        try:
            self.token.run_sync_soon(self.done.set)
        except trio.RunFinishedError:
            pass  # the node has gone; nobody waits


async def run_coroutine(host: HostLoop, factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``factory()`` as a task on ``host``'s loop and give its result
    (or raise its exception). A trio cancellation cancels the task and
    waits (shielded, up to ``CANCEL_GRACE``) for it to unwind, then carries
    on. An asyncio cancellation that did not come from here is a
    ``RuntimeError`` saying so."""
    run = _Run(host, factory)
    guest = asyncio._get_running_loop() is host.loop
    try:
        if guest:
            host.loop.call_soon(run.start)  # a guest run: the loop's own thread, no need to wake it
        else:
            host.loop.call_soon_threadsafe(run.start)
    except RuntimeError as error:  # the loop is closed
        raise RuntimeError(f"the asyncio loop is gone: {error}") from None
    try:
        if guest:
            # Idle, a guest run parks in its I/O thread, and the task's end
            # would then cost two thread switches to wake it: a task that
            # ends at once (a few loop iterations) is awaited by ticking.
            for _ in range(GUEST_SPIN_TICKS):
                if run.done.is_set():
                    break
                await trio.lowlevel.checkpoint()
        await run.done.wait()
    except trio.Cancelled:
        with trio.CancelScope(shield=True) as grace:
            grace.deadline = trio.current_time() + CANCEL_GRACE
            try:
                host.loop.call_soon_threadsafe(run.cancel)
            except RuntimeError:
                pass  # the loop closed under it: nothing left to cancel
            else:
                await run.done.wait()
        if grace.cancelled_caught:
            log.warning("an asyncio job did not unwind within %g s of its cancellation; leaving it", CANCEL_GRACE)
        raise
    if run.error is not None:
        raise run.error
    assert run.task is not None
    if run.task.cancelled():
        raise RuntimeError("the asyncio task was cancelled (not by peer: by the program or the function itself)")
    return run.task.result()


# -- which runtime ------------------------------------------------------------------------


def library_of(value: Any) -> str | None:
    """``"asyncio"``, ``"trio"`` or None: which loop ``value`` (a module, or
    an object from one) needs."""
    name: Any = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    if not isinstance(name, str):
        return None
    root = name.partition(".")[0]
    if root in ASYNCIO_LIBRARIES or any(name == module or name.startswith(module + ".") for module in ASYNCIO_MODULES):
        return "asyncio"
    if root in TRIO_LIBRARIES:
        return "trio"
    return None


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _names(constant)


def _vote(values: Iterator[Any]) -> str | None:
    seen = {library for library in map(library_of, values) if library is not None}
    return seen.pop() if len(seen) == 1 else None


def detect(function: Any) -> str | None:
    """What ``function`` (a coroutine function, or a coroutine) needs, by
    the rule above: ``"asyncio"``, ``"trio"``, or None (undecided)."""
    target = inspect.unwrap(function) if callable(function) and not inspect.iscoroutine(function) else function
    code: Any
    namespace: Any
    if inspect.iscoroutine(target):
        code, namespace = target.cr_code, (target.cr_frame.f_globals if target.cr_frame is not None else {})
    else:
        if not inspect.isfunction(target) and not inspect.ismethod(target):
            target = type(target).__call__  # an object with an async __call__
        target = getattr(target, "__func__", target)
        code = getattr(target, "__code__", None)
        namespace = getattr(target, "__globals__", None)
        if code is None or namespace is None:
            return None
    used = _vote(namespace[name] for name in dict.fromkeys(_names(code)) if name in namespace)
    if used is not None:
        return used
    return _vote(iter(list(namespace.values())))


def choose(runtime: str, function: Any, native: str) -> str:
    """The runtime a coroutine runs on: ``runtime`` unless ``"auto"``; then
    ``detect``'s answer, else ``native`` (where the node itself runs)."""
    if runtime != "auto":
        return runtime
    return detect(function) or native


# What running a coroutine on the other library typically raises.
_NEEDS_ASYNCIO = ("no running event loop", "unrecognized yield message", "no current event loop")
_NEEDS_TRIO = ("must be called from async context", "task got bad yield", "unknown async library", "not in a trio")


def hint(error: BaseException, ran_on: str) -> str | None:
    """A line saying which ``runtime`` to set, when ``error`` looks like a
    coroutine run on the wrong library (ran on ``ran_on``)."""
    texts: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(texts) < 8:
        texts.append(f"{type(cause).__name__}: {cause}".lower())
        cause = cause.__cause__ or cause.__context__
    text = " ".join(texts)
    if ran_on == "trio" and any(marker in text for marker in _NEEDS_ASYNCIO):
        return 'hint: this coroutine needs asyncio and ran on trio; set runtime = "asyncio" on the job'
    if ran_on == "asyncio" and any(marker in text for marker in _NEEDS_TRIO):
        return 'hint: this coroutine needs trio and ran on asyncio; set runtime = "trio" on the job'
    return None


def running_asyncio() -> bool:
    """True in an asyncio task (on any thread), False in a trio task or a
    plain thread; what ``sniffio`` says, which trio's guest ticks set."""
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False

