"""Running one attempt of a job's target, and saying how it went.

The scheduler decides *when* a run starts; the runtime then awaits
``Executor.run`` in its nursery and records the returned ``Outcome`` in the
replicated runs map. The executor never decides anything about ownership:
it runs what it is given, for as long as it is allowed, and turns everything
that can go wrong with the job into an ``Outcome(ok=False, error=...)``. The
one thing it lets through is ``trio.Cancelled``: the scheduler cancels a run
that lost its claim or was replaced, and then every process the run started
is killed and reaped before the cancellation carries on.

Three kinds of target (``peer.jobs.targets``):

- ``CallTarget``: ``package.module:function`` (imported once, in a worker
  thread so a slow import does not stall the node's heartbeats) or a name
  registered by an embedding program. Coroutine functions run on trio, or on
  asyncio when the target's ``runtime`` says so or, with ``"auto"``, when
  their code refers to asyncio or an asyncio-only library (``peer.runtime.aio``
  has the rule, the loop they run on and how they are cancelled: in the
  agent, an asyncio loop of the executor's own in one thread; in an
  asyncio-embedded node, the program's loop); plain
  functions run in a worker thread that is abandoned on cancellation (Python
  cannot kill a thread; the run ends at once and the thread's eventual result
  is dropped). Worker threads come from a pool of at most ``max_threads``
  (the node's ``max_running_runs``): never a thread per run. An abandoned
  thread keeps its place until its function returns, so a run may wait for
  a thread (its timeout counting) while abandoned ones finish. A function with a parameter named ``run`` is given a
  ``RunContext``: progress reports, and the updates sent to the run.
- ``CommandTarget``: a child process in a session of its own, so killing its
  process group also kills whatever it started. Updates are written to its
  stdin one per line, ``PEER-PROGRESS <json>`` lines on its stdout are
  progress, and the tails of stdout and stderr make its result.
- ``HttpTarget``: one request with httpx on trio, so a cancelled or timed-out
  run closes its connection at once (the server sees the client go). A
  client per request, as the executor has no close hook and may serve
  several trio runs. 2xx is success, with result ``{"status", "body"}``
  (parsed JSON when the answer is JSON and whole, else the head of the
  text); any other status is a failure carrying that result. Redirects are
  followed as urllib followed them: all of 301/302/303/307/308 for GET and
  HEAD (a HEAD stays one, where urllib sent a GET), 301/302/303 for POST
  (sent again as a GET without the body), none for other methods, at most
  10, and only to http and https URLs; a redirect not followed is the
  answer.

Whatever a run returns must be plain msgpack data (map keys strings or
bytes, as the replicated maps require) and at most ``max_result_bytes``
packed, since it travels to every node. Updates reach the run through a
small buffer filled by a pump task, so that async code (``next_update``),
worker threads (``get_update``) and command stdin all read them the same
way; the buffer is bounded and, when full, the pump stops reading, which
leaves back-pressure to the sender's channel instead of dropping updates.
"""

from __future__ import annotations

import asyncio
import collections
import email.message
import errno
import functools
import importlib
import inspect
import json
import logging
import math
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import httpx
import msgpack
import trio

from crdt.values import Fault, NotReplicable, replicated_form
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget, Target, TargetPolicy
from peer.runtime import aio
from peer.runtime.exceptions import leaf_exceptions

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 4096
# The first line of an error is what a person reads in a listing; keep it short.
MAX_HEADLINE_BYTES = 512
TRACEBACK_FRAMES = 3
PROGRESS_PREFIX = b"PEER-PROGRESS "
# Worker threads for sync functions (and imports), unless told otherwise: the scheduler's default max_running_runs.
DEFAULT_MAX_THREADS = 64
# Updates taken from the caller's channel but not yet consumed by the run.
MAX_PENDING_UPDATES = 1024
# After a command exits, how long its output pipes may stay open (held by a
# background child) before we stop reading them.
OUTPUT_GRACE = 1.0
# A killed process is reaped at once; this only guards against one stuck in
# the kernel (uninterruptible sleep), so cancellation cannot hang for ever.
REAP_TIMEOUT = 5.0

_INTERNAL_DIRS = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (trio, sys.modules.get("outcome"))
    if module is not None and module.__file__
)


@attrs.frozen
class Outcome:
    """How one attempt went. ``result`` is plain msgpack data (already
    round-tripped, so tuples are lists: what every replica will read);
    ``error`` starts with one readable line, then maybe a short traceback."""

    ok: bool
    result: Any = None
    error: str | None = None
    timed_out: bool = False


class _Failure(Exception):
    """Ends a run as failed, from wherever in the executor it is found."""

    def __init__(self, error: str, result: Any = None) -> None:
        super().__init__(error)
        self.error = error
        self.result = result


class RunContext:
    """What a running job can see of its run: given to a callable that has a
    parameter named ``run``, and used by the executor for commands.

    ``progress`` can be called from the trio thread, an asyncio task or any
    other thread. Updates (``peer send RUN DATA``) are read with ``await
    next_update()`` in async code (trio or asyncio), ``get_update()`` in a
    worker thread, or ``updates_nowait()`` from any. Once no more updates can arrive -- the
    sender closed the channel, or the run is over (a sync function still
    running in an abandoned thread after a timeout) -- the blocking readers
    raise ``trio.EndOfChannel``, so such a thread can unwind.
    """

    def __init__(
        self,
        *,
        run_id: str,
        attempt: int,
        progress: Callable[[Any], None],
        max_progress_bytes: int = 64 * 1024,
    ) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self._report = progress
        self._max_progress_bytes = max_progress_bytes
        self._token = trio.lowlevel.current_trio_token()
        # One lock for the buffer and flags, shared by the trio thread and
        # worker threads; the condition wakes threads, the events wake tasks.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: collections.deque[Any] = collections.deque()
        self._ended = False  # no more updates will arrive
        self._closed = False  # the run is over: progress is dropped
        self._arrived = trio.Event()
        self._space = trio.Event()
        # asyncio tasks waiting in next_update: their loop and future.
        self._asyncio_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"RunContext(run_id={self.run_id!r}, attempt={self.attempt})"

    def progress(self, value: Any) -> None:
        """Report progress. ``value`` must be plain msgpack data (at most
        the result size limit); otherwise ``ValueError`` here, in the job,
        rather than a surprise later. Dropped once the run is over."""
        value = _replicable(value, self._max_progress_bytes, "progress value", ValueError)
        if self._in_trio_task():
            self._deliver_progress(value)
            return
        if aio.running_asyncio():
            # An asyncio task must not block its loop on trio: queued, in
            # order, ahead of the task's own end (which comes the same way).
            try:
                self._token.run_sync_soon(self._deliver_progress, value)
            except trio.RunFinishedError:
                pass
            return
        try:
            # With an explicit token the call runs as a system task, so it
            # works from any thread, abandoned or not.
            trio.from_thread.run_sync(self._deliver_progress, value, trio_token=self._token)
        except trio.RunFinishedError:
            pass

    async def next_update(self) -> Any:
        """Wait for the next update sent to this run (async functions, on
        trio or asyncio). Raises ``trio.EndOfChannel`` when no more can arrive."""
        if aio.running_asyncio():
            return await self._next_update_asyncio()
        while True:
            with self._lock:
                if (taken := self._take_locked()) is not None:
                    break
                arrived = self._arrived
            await arrived.wait()
        value, was_full = taken
        if was_full:
            self._free_space()
        return value

    async def _next_update_asyncio(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if (taken := self._take_locked()) is not None:
                    break
                waiter = (loop, loop.create_future())
                self._asyncio_waiters.append(waiter)
            try:
                await waiter[1]
            finally:
                with self._lock:
                    if waiter in self._asyncio_waiters:
                        self._asyncio_waiters.remove(waiter)
        value, was_full = taken
        if was_full:
            self._free_space_from_thread()
        return value

    def get_update(self, timeout: float | None = None) -> Any:
        """Block for the next update (sync functions, in their worker
        thread). Raises ``TimeoutError`` when none arrives within
        ``timeout`` seconds (``None``: wait as long as it takes), and
        ``trio.EndOfChannel`` when no more can arrive. Never call it on the
        trio thread: it would block the node (``RuntimeError``)."""
        if self._in_trio_task() or aio.running_asyncio():
            raise RuntimeError("get_update() blocks; in async code use `await run.next_update()`")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while (taken := self._take_locked()) is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no update within {timeout:g} s")
                self._changed.wait(remaining)
        value, was_full = taken
        if was_full:
            self._free_space_from_thread()
        return value

    def _take_locked(self) -> tuple[Any, bool] | None:
        """With the lock held: the next update and whether the buffer was
        full (the pump then waits for space), or None if none is pending;
        ``trio.EndOfChannel`` once none is pending and none can arrive."""
        if self._pending:
            was_full = len(self._pending) >= MAX_PENDING_UPDATES
            return self._pending.popleft(), was_full
        if self._ended:
            raise trio.EndOfChannel("no more updates for this run")
        return None

    def updates_nowait(self) -> list[Any]:
        """Every update received and not yet taken, without blocking (from
        async code or a worker thread); ``[]`` if none."""
        with self._lock:
            was_full = len(self._pending) >= MAX_PENDING_UPDATES
            values = list(self._pending)
            self._pending.clear()
        if was_full:
            if self._in_trio_task():
                self._free_space()
            else:
                self._free_space_from_thread()
        return values

    # -- the executor's side -------------------------------------------------

    async def _pump(self, updates: trio.abc.ReceiveChannel[Any]) -> None:
        """Move updates from the caller's channel into the buffer, pausing
        while the buffer is full."""
        try:
            async for value in updates:
                while True:
                    with self._lock:
                        if len(self._pending) < MAX_PENDING_UPDATES:
                            self._pending.append(value)
                            self._changed.notify_all()
                            break
                        space = self._space
                    await space.wait()
                self._wake_tasks()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        except Exception:  # a caller's odd channel must not take the run down
            log.exception("run %s: reading updates failed", self.run_id)
        finally:
            with self._lock:
                self._ended = True
                self._changed.notify_all()
            self._wake_tasks()

    def _close(self) -> None:
        """The run is over: wake every reader so it sees the end."""
        with self._lock:
            self._closed = True
            self._ended = True
            self._changed.notify_all()
        self._wake_tasks()

    def _wake_tasks(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()
        with self._lock:
            waiters, self._asyncio_waiters = self._asyncio_waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # its loop has closed: nobody waits
                pass

    def _free_space(self) -> None:
        self._space.set()
        self._space = trio.Event()

    def _free_space_from_thread(self) -> None:
        try:
            self._token.run_sync_soon(self._free_space)
        except trio.RunFinishedError:
            pass

    def _deliver_progress(self, value: Any) -> None:
        if not self._closed:
            self._report(value)

    def _in_trio_task(self) -> bool:
        """In a task of this run's trio run. Not an asyncio task of a guest
        run's host loop, which has the same thread and trio token."""
        try:
            if trio.lowlevel.current_trio_token() is not self._token:
                return False
            trio.lowlevel.current_task()
        except RuntimeError:
            return False
        return True


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@attrs.frozen
class _Resolved:
    function: Callable[..., Any]
    is_async: bool
    wants_run: bool
    signature: inspect.Signature | None
    needs: str | None = None  # for a coroutine function: what its code needs (aio.detect)


class Executor:
    """Runs targets. One per node; cheap to call concurrently.

    ``functions`` (and ``register``) name callables for ``CallTarget``s
    whose function has no colon. ``max_result_bytes`` bounds a result (and
    a progress value) packed; ``max_output_bytes`` bounds each of a
    command's stdout and stderr (the tail is kept) and an HTTP body (the
    head is kept). ``http_timeout`` is the connect, read and write timeout
    of HTTP requests in runs that have no timeout, so a silent server
    cannot hold a run for ever. ``policy`` is what this node agrees to
    run: a target outside it fails its run, saying which setting refused
    it, without running anything. ``max_threads`` bounds the worker threads
    of sync functions (the agent passes its ``max_running_runs``).

    ``host_loop``: where asyncio coroutines run; None (the default) is an
    asyncio loop of the executor's own, in one thread started on the first
    asyncio run and stopped by ``aclose`` (the agent calls it as it stops).
    An asyncio-embedded ``peer.Node`` sets it to the program's loop while it
    runs, which also makes asyncio the default for undecided coroutines.
    """

    def __init__(
        self,
        *,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        max_result_bytes: int = 64 * 1024,
        max_output_bytes: int = 64 * 1024,
        http_timeout: float = 300.0,
        policy: TargetPolicy | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads is at least 1, got {max_threads}")
        self.policy = policy or TargetPolicy()
        self.max_result_bytes = max_result_bytes
        self.max_threads = max_threads
        self.max_output_bytes = max_output_bytes
        self.http_timeout = http_timeout
        self._resolved: dict[str, _Resolved] = {}
        self._limiter: trio.CapacityLimiter | None = None
        self.host_loop: aio.HostLoop | None = None
        self._loop_thread = aio.LoopThread()
        for name, function in (functions or {}).items():
            self.register(name, function)

    def register(self, name: str, function: Callable[..., Any]) -> None:
        """Make ``function`` callable as ``CallTarget(name)``. Registering a
        name again replaces it."""
        if not name or ":" in name:
            raise ValueError(f"a registered name is not empty and has no colon, got {name!r}")
        if not callable(function):
            raise TypeError(f"{name!r}: {function!r} is not callable")
        self._resolved[name] = _describe_callable(function)

    @property
    def native_runtime(self) -> str:
        """Where an undecided coroutine runs: the node's own loop."""
        return "trio" if self.host_loop is None else "asyncio"

    async def aclose(self) -> None:
        """Stop the asyncio loop thread, if one was started (its tasks are
        cancelled and given ``aio.STOP_TIMEOUT`` to unwind). The executor
        stays usable: a later asyncio run starts a new one."""
        if self._loop_thread.running:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._loop_thread.close)

    async def run(
        self,
        target: Target,
        *,
        run_id: str,
        attempt: int,
        timeout: float | None,
        updates: trio.abc.ReceiveChannel[Any],
        progress: Callable[[Any], None],
    ) -> Outcome:
        """Run ``target`` once. Never raises for the job's failures; lets
        ``trio.Cancelled`` through (after killing any process). ``updates``
        is closed when the run ends."""
        context = RunContext(
            run_id=run_id, attempt=attempt, progress=progress, max_progress_bytes=self.max_result_bytes
        )
        outcome: Outcome | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(context._pump, updates)
                with trio.move_on_after(math.inf if timeout is None else max(0.0, timeout)):
                    outcome = await self._run_target(target, context, timeout)
                # The pump ends with its channel: cheaper than cancelling it
                # (trio describes every cancel), and no update comes after.
                await updates.aclose()
        except BaseExceptionGroup as group:
            # The nursery wraps even a plain cancellation in a group; callers
            # are promised a bare trio.Cancelled.
            _, rest = group.split(trio.Cancelled)
            if rest is None:
                raise leaf_exceptions(group)[0] from None
            raise
        finally:
            context._close()
        if outcome is None:
            return Outcome(ok=False, timed_out=True, error=f"timed out after {timeout:g} s")
        return outcome

    async def _run_target(self, target: Target, context: RunContext, timeout: float | None) -> Outcome:
        refusal = self.policy.refusal(target)
        if refusal is not None:
            log.warning("run %s refused: %s", context.run_id, refusal)
            return Outcome(ok=False, error=f"refused on this node: {refusal}")
        try:
            if isinstance(target, CallTarget):
                result = await self._call(target, context)
            elif isinstance(target, CommandTarget):
                result = await self._command(target, context)
            elif isinstance(target, HttpTarget):
                result = await self._http(target, timeout)
            else:
                raise _Failure(f"unknown target type: {type(target).__name__}")
        except _Failure as failure:
            return Outcome(ok=False, result=failure.result, error=failure.error)
        except Exception as error:  # a bug here must end as an outcome, not kill the node
            log.exception("executor failed on run %s", context.run_id)
            return Outcome(ok=False, error=_bounded(f"internal error: {_headline(error)}"))
        return Outcome(ok=True, result=result)

    # -- CallTarget ---------------------------------------------------------

    async def _call(self, target: CallTarget, context: RunContext) -> Any:
        resolved = await self._resolve(target.function)
        kwargs = dict(target.kwargs)
        if resolved.wants_run:
            if "run" in kwargs:
                raise _Failure(f"bad arguments for {target.function!r}: 'run' is reserved for the run context")
            kwargs["run"] = context
        if resolved.signature is not None:
            try:
                resolved.signature.bind(**kwargs)
            except TypeError as error:
                raise _Failure(f"bad arguments for {target.function!r}: {error}") from None
        runtime = "trio"
        try:
            if resolved.is_async:
                runtime = target.runtime if target.runtime != "auto" else resolved.needs or self.native_runtime
                value = await self._coroutine(runtime, functools.partial(resolved.function, **kwargs))
            else:
                # Wrapped in a list, because trio refuses a coroutine returned from a thread.
                [value] = await trio.to_thread.run_sync(
                    _in_a_list, functools.partial(resolved.function, **kwargs),
                    abandon_on_cancel=True,
                    limiter=self._threads(),
                )
                if inspect.iscoroutine(value):
                    # An async function behind a plain decorator: finish it where it needs.
                    runtime = aio.choose(target.runtime, value, self.native_runtime)
                    value = await self._coroutine(runtime, functools.partial(_given, value))
        # SystemExit too: a job's sys.exit() must not end the node.
        except (Exception, SystemExit) as error:  # noqa: BLE001 - every job failure is an outcome
            described = _describe_exception(error)
            advice = aio.hint(error, runtime)
            if advice is not None:
                headline, _, tail = described.partition("\n")
                described = _bounded(headline, f"{advice}\n{tail}".rstrip())
            raise _Failure(described) from None
        return _replicable(value, self.max_result_bytes, "result", _Failure)

    async def _coroutine(self, runtime: str, factory: Callable[[], Any]) -> Any:
        """Await the coroutine ``factory()`` makes, on trio or as an asyncio task."""
        if runtime == "trio":
            return await factory()
        host = self.host_loop or self._loop_thread.get()
        return await aio.run_coroutine(host, factory)

    async def _resolve(self, name: str) -> _Resolved:
        resolved = self._resolved.get(name)
        if resolved is not None:
            return resolved
        if ":" not in name:
            raise _Failure(f"no function registered as {name!r} (an importable one is 'package.module:function')")
        module_name, _, qualname = name.partition(":")
        if not module_name or not qualname:
            raise _Failure(f"cannot import {name!r}: expected 'package.module:function'")
        try:
            module = sys.modules.get(module_name)
            if module is None:
                # Module code can be slow (or block); keep it off the trio thread.
                module = await trio.to_thread.run_sync(
                    importlib.import_module, module_name, abandon_on_cancel=True, limiter=self._threads()
                )
            obj: Any = module
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - module code can raise anything
            raise _Failure(_bounded(f"cannot import {name!r}: {_headline(error)}")) from None
        if not callable(obj):
            raise _Failure(f"{name!r} is not callable: it is a {type(obj).__name__}")
        # Failures are not cached: a missing module may be installed later.
        resolved = self._resolved[name] = _describe_callable(obj)
        return resolved

    def _threads(self) -> trio.CapacityLimiter:
        # Jobs get their own limiter: long sync jobs must not use up trio's
        # default one, which the node needs for DNS lookups and file I/O.
        # Bounded: abandoned threads keep their token until they finish, so
        # the scheduler's limit on runs alone would not bound the threads.
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self.max_threads)
        return self._limiter

    # -- CommandTarget ------------------------------------------------------

    async def _command(self, target: CommandTarget, context: RunContext) -> Any:
        if not target.argv:
            raise _Failure("empty command")
        if target.shell:
            if len(target.argv) != 1:
                raise _Failure(f"a shell command is one string, got {len(target.argv)}")
            argv = ["/bin/sh", "-c", target.argv[0]]
        else:
            argv = list(target.argv)
        env = {**os.environ, **target.env} if target.env else None
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=target.cwd,
                # A session of its own: its pid is its process group, so one
                # killpg reaches whatever it spawned.
                start_new_session=True,
            )
        except FileNotFoundError as error:
            if target.cwd is not None and error.filename == target.cwd:
                raise _Failure(f"working directory not found: {target.cwd}") from None
            raise _Failure(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise _Failure(f"cannot execute {argv[0]}: permission denied") from None
        except (OSError, ValueError, TypeError) as error:
            raise _Failure(_bounded(f"cannot start {argv[0]}: {_headline(error)}")) from None
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        stdout = _Tail(self.max_output_bytes)
        stderr = _Tail(self.max_output_bytes)
        finished = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed_stdin, process.stdin, context)
                async with trio.open_nursery() as readers:
                    readers.start_soon(_read_stdout, process.stdout, stdout, context)
                    readers.start_soon(_read_stream, process.stderr, stderr)
                    await process.wait()
                    # Output normally ends with the process; a background
                    # child holding the pipes gets a moment, no more.
                    readers.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
                nursery.cancel_scope.cancel()
            finished = True
        finally:
            if not finished:
                # Timeout or cancellation (or a bug): the process and its
                # children go, now, and are reaped before we move on.
                _kill_group(process.pid)
                with trio.CancelScope(shield=True) as reaping:
                    reaping.deadline = trio.current_time() + REAP_TIMEOUT
                    await process.wait()
                if process.returncode is None:
                    log.warning("process %d of run %s did not die", process.pid, context.run_id)
            with trio.CancelScope(shield=True):
                for stream in (process.stdin, process.stdout, process.stderr):
                    await stream.aclose()
        code = process.returncode
        assert code is not None
        result = _replicable(
            _command_result(code, stdout.data(), stderr.data(), self.max_result_bytes),
            self.max_result_bytes,
            "result",
            _Failure,
        )
        if code == 0:
            return result
        if code < 0:
            try:
                headline = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                headline = f"killed by signal {-code}"
        else:
            headline = f"exit status {code}"
        last = _last_line(result["stderr"])
        raise _Failure(_bounded(f"{headline}: {last}" if last else headline), result)

    # -- HttpTarget ---------------------------------------------------------

    async def _http(self, target: HttpTarget, timeout: float | None) -> Any:
        scheme = urllib.parse.urlsplit(target.url).scheme.lower()
        if scheme not in ("http", "https"):
            # httpx refuses these too, but without saying which schemes it takes.
            raise _Failure(f"unsupported URL scheme {scheme!r} in {target.url!r}: only http and https")
        request_timeout = self.http_timeout if timeout is None else timeout
        response = await _http_exchange(target, request_timeout, self.max_output_bytes)
        body = _http_body(response, self.max_output_bytes)
        result: dict[str, Any] = {"status": response.status, "body": body}
        try:
            result = _replicable(result, self.max_result_bytes, "result", _Failure)
        except _Failure:
            # Parsed JSON too big (or with huge numbers): fall back to text.
            text = _head_text(response.text(), max(0, self.max_result_bytes - 64))
            result = _replicable({"status": response.status, "body": text}, self.max_result_bytes, "result", _Failure)
        if 200 <= response.status < 300:
            return result
        raise _Failure(_bounded(f"HTTP {response.status} {response.reason}".rstrip()), result)


# -- calls ------------------------------------------------------------------


def _describe_callable(function: Callable[..., Any]) -> _Resolved:
    try:
        signature: inspect.Signature | None = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none
        signature = None
    wants_run = signature is not None and "run" in signature.parameters and (
        # Passed by keyword, so a positional-only ``run`` is just a parameter.
        signature.parameters["run"].kind
        not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )
    # An object whose __call__ is async counts as async too.
    is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)
    needs = aio.detect(function) if is_async else None
    return _Resolved(function=function, is_async=is_async, wants_run=wants_run, signature=signature, needs=needs)


def _given(value: Any) -> Any:
    return value


def _in_a_list(function: Callable[[], Any]) -> list[Any]:
    return [function()]


def _replicable(value: Any, limit: float, what: str, error: Callable[[str], Exception]) -> Any:
    """``value`` as every replica will read it (``crdt.values``), or ``error(reason)``."""
    try:
        return replicated_form(value, limit)
    except NotReplicable as fault:
        if fault.fault is Fault.TOO_LARGE:
            raise error(f"{what} is {fault.size} bytes, over the limit of {limit}") from None
        if fault.fault is Fault.MAP_KEY:
            raise error(f"{what} is not serialisable: a map key is not a string") from None
        raise error(f"{what} is not serialisable: {_unpackable(value)}") from None


def _unpackable(value: Any) -> str:
    """The type name of the first part of ``value`` msgpack refuses."""
    seen = 0
    stack = [value]
    while stack and seen < 10_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            children = [part for pair in item.items() for part in pair]
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            try:
                msgpack.packb(item)
            except OverflowError:
                return f"{type(item).__name__} out of range"
            except (TypeError, ValueError):
                return type(item).__name__
            continue
        stack.extend(reversed(children))
    return type(value).__name__


def _headline(error: BaseException) -> str:
    try:
        message = str(error).strip().splitlines()
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the report
        message = ["<unprintable>"]
    name = type(error).__name__
    return f"{name}: {message[0]}" if message else name


def _describe_exception(error: BaseException) -> str:
    """``TypeName: message``, then the last few frames that are not trio's
    or ours."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename != __file__ and not frame.filename.startswith(_INTERNAL_DIRS)
    ][-TRACEBACK_FRAMES:]
    if not frames:
        return _bounded(_headline(error))
    # A huge message must not push the frames out: bound it on its own.
    last = _head_text("".join(traceback.format_exception_only(type(error), error)), MAX_ERROR_BYTES // 4)
    tail = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) + last
    return _bounded(_headline(error), tail.rstrip())


def _bounded(headline: str, tail: str = "") -> str:
    """At most MAX_ERROR_BYTES: the headline (itself bounded) and as much
    of the end of ``tail`` as fits."""
    headline = _head_text(headline, MAX_HEADLINE_BYTES)
    if not tail:
        return headline
    room = MAX_ERROR_BYTES - len(headline.encode()) - 5
    if len(tail.encode()) > room:
        tail = "…" + _tail_text(tail, room - 3)
    return f"{headline}\n{tail}"


# -- commands -----------------------------------------------------------------


class _Tail:
    """The last ``limit`` bytes written."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def add(self, data: bytes | bytearray) -> None:
        self._buffer += data
        if len(self._buffer) > self.limit:
            del self._buffer[: len(self._buffer) - self.limit]

    def data(self) -> bytes:
        return bytes(self._buffer)


async def _read_stream(stream: trio.abc.ReceiveStream, tail: _Tail) -> None:
    async for chunk in stream:
        tail.add(chunk)


async def _read_stdout(stream: trio.abc.ReceiveStream, tail: _Tail, context: RunContext) -> None:
    """Keep the tail of stdout, taking out ``PEER-PROGRESS`` lines."""
    line = bytearray()
    # True while inside a line too long to buffer: its rest is plain output
    # even if it happens to look like a progress line.
    overlong = False
    async for chunk in stream:
        line += chunk
        while (end := line.find(b"\n")) >= 0:
            # A line longer than the output bound is output, however it
            # arrived: progress is a short line.
            if overlong or end >= tail.limit:
                tail.add(line[: end + 1])
                overlong = False
            else:
                _stdout_line(bytes(line[: end + 1]), tail, context)
            del line[: end + 1]
        if len(line) > tail.limit:
            tail.add(line)
            line.clear()
            overlong = True
    if line:
        if overlong:
            tail.add(line)
        else:
            _stdout_line(bytes(line), tail, context)


def _stdout_line(line: bytes, tail: _Tail, context: RunContext) -> None:
    if not line.startswith(PROGRESS_PREFIX):
        tail.add(line)
        return
    text = line[len(PROGRESS_PREFIX) :].decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    try:
        context.progress(value)
    except Exception as error:  # noqa: BLE001 - a bad progress line, or a bug in the callback
        log.warning("run %s: progress dropped: %s", context.run_id, _headline(error))


async def _feed_stdin(stream: trio.abc.SendStream, context: RunContext) -> None:
    """Write each update as a line, until the updates end (then close stdin,
    so a reader sees EOF) or the process stops reading."""
    try:
        while True:
            try:
                value = await context.next_update()
            except trio.EndOfChannel:
                await stream.aclose()
                return
            await stream.send_all(_update_line(value))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the process closed its stdin or exited: updates have nowhere to go


def _update_line(value: Any) -> bytes:
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        data = json.dumps(value, default=repr).encode()
    return data if data.endswith(b"\n") else data + b"\n"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is already gone
    except PermissionError:  # a setuid child; kill what we can
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _command_result(code: int, out: bytes, err: bytes, limit: int) -> dict[str, Any]:
    """The exit code and the output tails, cut further if need be so the
    whole fits in ``limit`` bytes packed; stderr's tail is cut last."""
    stdout = out.decode("utf-8", errors="replace").encode()
    stderr = err.decode("utf-8", errors="replace").encode()
    # Map, keys, a 64-bit int and two 5-byte string headers.
    budget = max(0, limit - len(msgpack.packb({"exit_code": code, "stdout": "", "stderr": ""})) - 8)
    if len(stdout) + len(stderr) > budget:
        half = budget // 2
        if len(stderr) <= half:
            stdout = stdout[len(stdout) - (budget - len(stderr)) :]
        elif len(stdout) <= half:
            stderr = stderr[len(stderr) - (budget - len(stdout)) :]
        else:
            stdout, stderr = stdout[len(stdout) - half :], stderr[len(stderr) - (budget - half) :]
    return {
        "exit_code": code,
        # Cutting may split a character at the start; drop the pieces.
        "stdout": stdout.decode("utf-8", errors="ignore"),
        "stderr": stderr.decode("utf-8", errors="ignore"),
    }


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _head_text(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def _tail_text(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[len(data) - limit :].decode("utf-8", errors="ignore")


# -- HTTP -------------------------------------------------------------------


@attrs.frozen
class _Response:
    status: int
    reason: str
    content_type: str
    charset: str
    data: bytes  # at most limit + 1 bytes: one more says it was cut

    def text(self) -> str:
        try:
            return self.data.decode(self.charset, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.data.decode("utf-8", errors="replace")


# The redirects urllib followed, by method; httpx on its own would follow
# every one, and send a POST's body again on 307 and 308.
_REDIRECTS_FOLLOWED: dict[str, frozenset[int]] = {
    "GET": frozenset({301, 302, 303, 307, 308}),
    "HEAD": frozenset({301, 302, 303, 307, 308}),
    "POST": frozenset({301, 302, 303}),
}
MAX_REDIRECTS = 10


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, as urllib used (httpx's own default is
    certifi's). Built once, as loading it takes tens of milliseconds, and
    shared: unlike a client, a context belongs to no trio run."""
    return ssl.create_default_context()


async def _http_exchange(target: HttpTarget, timeout: float, limit: int) -> _Response:
    """One request, following redirects as urllib did. Error answers are
    answers. On cancellation the client's connection closes on the way
    out, so the server sees the request abandoned."""
    data = None
    if target.body is not None:
        try:
            data = json.dumps(target.body).encode()
        except (TypeError, ValueError) as error:
            raise _Failure(_bounded(f"request body is not JSON: {_headline(error)}")) from None
    try:
        # No compression unless the target asks, as with urllib: the size
        # limit then counts what the server sent, and a small compressed
        # answer cannot inflate in memory past it.
        headers = httpx.Headers({"Accept-Encoding": "identity"})
        headers.update(target.headers)
        if data is not None and "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        # A client of its own: a client's connections belong to the trio run
        # that opened them, and an executor may serve several runs with no
        # hook to close a shared client (urllib connected per request too).
        async with httpx.AsyncClient(verify=_tls_context(), timeout=timeout) as client:
            request = client.build_request(target.method.upper(), target.url, headers=headers, content=data)
            redirects = 0
            while True:
                response = await client.send(request, stream=True)
                try:
                    following = _redirect(request, response) if redirects < MAX_REDIRECTS else None
                    if following is None:
                        return await _read_response(response, limit)
                finally:
                    await response.aclose()
                request = following
                redirects += 1
    except httpx.ConnectTimeout:
        raise _Failure(f"cannot reach {target.url}: timed out") from None
    except httpx.TimeoutException:
        raise _Failure(f"no response from {target.url} within {timeout:g} s") from None
    except httpx.ConnectError as error:
        raise _Failure(_bounded(f"cannot reach {target.url}: {_os_reason(error)}")) from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as error:
        raise _Failure(_bounded(f"HTTP request to {target.url} failed: {_headline(error)}")) from None


def _redirect(request: httpx.Request, response: httpx.Response) -> httpx.Request | None:
    """The request that follows ``response``, or None when urllib would
    not have followed it."""
    following = response.next_request
    if (
        following is None
        or response.status_code not in _REDIRECTS_FOLLOWED.get(request.method, ())
        or following.url.scheme not in ("http", "https")
    ):
        return None
    if following.method != request.method:
        # Turned into a GET without the body: its type goes with it.
        following.headers.pop("Content-Type", None)
    return following


async def _read_response(response: httpx.Response, limit: int) -> _Response:
    """The status and at most ``limit`` + 1 bytes of the body (decompressed
    when the target asked for compression)."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            break
    # Parsed as urllib parsed it: no type means text/plain.
    header = email.message.Message()
    if "Content-Type" in response.headers:
        header["Content-Type"] = response.headers["Content-Type"]
    return _Response(
        status=response.status_code,
        reason=response.reason_phrase,
        content_type=header.get_content_type(),
        charset=header.get_content_charset() or "utf-8",
        data=bytes(data[: limit + 1]),
    )


def _http_body(response: _Response, limit: int) -> Any:
    """Parsed JSON when the answer says it is JSON and came whole; else the
    start of the text."""
    whole = len(response.data) <= limit
    is_json = response.content_type == "application/json" or response.content_type.endswith("+json")
    if is_json and whole:
        try:
            return json.loads(response.text())
        except ValueError:
            pass
    return _head_text(response.text(), limit)


def _os_reason(error: BaseException) -> str:
    """What the OS said ("Connection refused", "Name or service not
    known"), found inside the wrappers of httpx, httpcore and trio (which
    groups one error per address tried, each with the address in its text)."""
    reason = str(error)
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            # A known errno's own words, without trio's "Error connecting to ...";
            # DNS errors (negative codes) keep theirs.
            code = cause.errno
            reason = os.strerror(code) if code is not None and code in errno.errorcode else cause.strerror
        if isinstance(cause, BaseExceptionGroup):
            cause = leaf_exceptions(cause)[0]
        else:
            cause = cause.__cause__ or cause.__context__
    return reason
