"""Small job functions for the tests, the demo and the benchmarks.

Each is a ``CallTarget`` away: ``CallTarget("peer.samples:echo", {"a": 1})``.
They are deterministic apart from the obvious (time, host name, pid). A
function with a ``run`` parameter is given the run's ``RunContext``;
``run.attempt`` counts from 1.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, NoReturn

import trio

if TYPE_CHECKING:
    from peer.executor import RunContext


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
