"""Small job functions for the tests, the demo and the benchmarks.

Each is a ``CallTarget`` away: ``CallTarget("peer.testing.samples:echo", {"a": 1})``.
They are deterministic apart from the obvious (time, host name, pid). A
function with a ``run`` parameter is given the run's ``RunContext``;
``run.attempt`` counts from 1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

import sniffio
import trio

if TYPE_CHECKING:
    from peer.runtime.executor import RunContext


def echo(**kwargs: Any) -> dict[str, Any]:
    """Return the keyword arguments it was given."""
    return kwargs


def sleep(seconds: float, result: Any = None) -> Any:
    """Block a worker thread for ``seconds``, then return ``result``."""
    time.sleep(seconds)
    return result


async def async_sleep(seconds: float, result: Any = None) -> Any:
    """Sleep on trio for ``seconds``, then return ``result``."""
    await trio.sleep(seconds)
    return result


async def asyncio_report(run: RunContext, steps: int = 3, delay: float = 0.05, updates: int = 0) -> dict[str, Any]:
    """An asyncio coroutine (``runtime = "auto"`` finds it: it uses
    ``asyncio.sleep``): ``steps`` sleeps of ``delay`` s, reporting
    ``{"step": n, "of": steps}`` after each, then ``updates`` updates read;
    returns them, the async library it ran under and its thread's name."""
    for step in range(steps):
        await asyncio.sleep(delay)
        run.progress({"step": step + 1, "of": steps})
    received = [await run.next_update() for _ in range(updates)]
    return {
        "steps": steps,
        "updates": received,
        "library": sniffio.current_async_library(),
        "thread": threading.current_thread().name,
    }


async def asyncio_sleep(seconds: float, path: str | None = None) -> str:
    """``asyncio.sleep(seconds)``; if cancelled first (a timeout), appends
    ``cancelled`` to the file ``path``, so a test sees the task unwind."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if path is not None:
            with open(path, "a") as file:
                file.write("cancelled\n")
        raise
    return "slept"


def fail(message: str = "failed on purpose") -> NoReturn:
    """Raise ``RuntimeError(message)``."""
    raise RuntimeError(message)


async def count_updates(run: RunContext, expected: int) -> list[Any]:
    """Wait for ``expected`` updates, reporting ``{"received": n, "of":
    expected}`` after each; return them in order."""
    received: list[Any] = []
    while len(received) < expected:
        received.append(await run.next_update())
        run.progress({"received": len(received), "of": expected})
    return received


def collect_updates(run: RunContext, expected: int, timeout: float | None = None) -> list[Any]:
    """``count_updates`` for a worker thread: block for each update (at most
    ``timeout`` seconds each, then ``TimeoutError``)."""
    received: list[Any] = []
    while len(received) < expected:
        received.append(run.get_update(timeout))
        run.progress({"received": len(received), "of": expected})
    return received


def report(run: RunContext, steps: int = 3, delay: float = 0.2) -> dict[str, Any]:
    """Tick ``steps`` times, ``delay`` seconds apart, reporting ``{"step":
    n, "of": steps}``; return who ran it."""
    for step in range(1, steps + 1):
        time.sleep(delay)
        run.progress({"step": step, "of": steps})
    return {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "steps": steps,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def flaky(run: RunContext, fail_times: int) -> dict[str, Any]:
    """Fail on attempts 1..``fail_times``, then succeed: for retries."""
    if run.attempt <= fail_times:
        raise RuntimeError(f"attempt {run.attempt} fails on purpose (first {fail_times} do)")
    return {"attempt": run.attempt}


# The environment variable ``journal`` reads the node's name from (``LocalCluster``
# sets it for every agent it starts); without it, the line says ``pid-<pid>``.
NODE_ENV = "PEER_NAME"


async def journal(run: RunContext, path: str, sleep: float = 0.0, updates: int = 0) -> dict[str, Any]:
    """Append one line to ``path`` when the run starts, then wait for
    ``updates`` updates and ``sleep`` seconds; return who ran it and the
    updates.

    The line is ``RUN_ID ATTEMPT NODE START_MS``, written with one
    ``os.write`` to a file opened with ``O_APPEND``, so lines from
    concurrent runs, in any process on this machine, never interleave: the
    file is a record of executions kept outside the system under test, for
    tests to count runs per run id. The node is ``$PEER_NAME``, else the pid.
    """
    node = os.environ.get(NODE_ENV) or f"pid-{os.getpid()}"
    line = f"{run.run_id} {run.attempt} {node} {int(time.time() * 1000)}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    received: list[Any] = []
    while len(received) < updates:
        received.append(await run.next_update())
        run.progress({"received": len(received), "of": updates})
    if sleep > 0:
        await trio.sleep(sleep)
    return {"run": run.run_id, "attempt": run.attempt, "node": node, "updates": received}


# -- for ``peer demo`` ---------------------------------------------------------------

_tick_counts: dict[str, int] = {}
_tick_lock = threading.Lock()


def node_name() -> str:
    """The name of the agent running this function: ``$PEER_NAME``, else the
    ``--name`` it was started with, else the host name."""
    name = os.environ.get(NODE_ENV)
    if name:
        return name
    argv = sys.argv
    for index, argument in enumerate(argv):
        if argument == "--name" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--name="):
            return argument.partition("=")[2]
    return socket.gethostname()


def tick(run: RunContext, work: float = 0.0) -> dict[str, Any]:
    """A cron job's tick: work for ``work`` seconds, then say which node ran
    it and how many runs of this job that process has run (``count``)."""
    job = run.run_id.partition("@")[0]
    with _tick_lock:
        count = _tick_counts[job] = _tick_counts.get(job, 0) + 1
    if work > 0:
        time.sleep(work)
    return {"node": node_name(), "count": count}


async def wait_for_update(run: RunContext) -> dict[str, Any]:
    """Wait for one update (``peer send RUN DATA``); return it and the node
    that received it."""
    run.progress({"waiting": "for an update"})
    update = await run.next_update()
    return {"update": update, "node": node_name()}


def total(numbers: list[float]) -> dict[str, Any]:
    """The sum of ``numbers``, and the node that added them up."""
    return {"sum": sum(numbers), "node": node_name()}
