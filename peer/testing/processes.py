"""Child processes and loopback ports, for tests, benchmarks and tools.

One way to pick ports and to start, wait for and stop processes, for
``LocalCluster`` (peer agents), the benchmarks and the tests:

- ports free for both UDP and TCP (a peer agent binds both on one port),
  below the kernel's ephemeral range, and never the same one twice from one
  ``Ports``: a port free now may be one handed out already to a process
  that has not bound it yet;
- every process started through a ``Processes`` is tracked by PID and
  killed (SIGKILL, then reaped) on the way out, whatever happened, so that
  no test or benchmark leaves one behind;
- signals, waits and kills by PID that do not mind a process that has
  exited already.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

LOOPBACK = "127.0.0.1"


# -- ports ---------------------------------------------------------------------------


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Can both a UDP and a TCP socket bind ``port`` on ``host`` right now?"""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP on ``host`` right now, below the
    ephemeral range: a port from that range may be taken, while its agent
    is down, by another agent's outgoing connection, and the agent could
    not restart on it (found by ``peer.tools.chaos``)."""
    low = max(1024, min(_ephemeral_low(), 65536) - 12_000)
    high = max(low + 1, min(_ephemeral_low(), 65536) - 1)
    rng = random.Random()
    for _attempt in range(200):
        port = rng.randrange(low, high)
        if port_free(port, host):
            return port
    raise OSError(f"no port free for both UDP and TCP on {host} in {low}-{high}")


class Ports:
    """Hands out free ports (``port_free``), never the same one twice.

    By default at random below the ephemeral range (``free_port``). Given
    ``start`` and ``stop``, upward from ``start``: a run of a benchmark then
    gets fresh ports (no lingering sockets of the previous run), in a range
    of its own."""

    def __init__(self, start: int | None = None, stop: int | None = None) -> None:
        if (start is None) != (stop is None):
            raise ValueError("give both start and stop, or neither")
        self._next, self._stop = start, stop
        self._issued: set[int] = set()

    def take(self, host: str = LOOPBACK) -> int:
        if self._next is None or self._stop is None:
            while (port := free_port(host)) in self._issued:
                pass
        else:
            while self._next < self._stop and (self._next in self._issued or not port_free(self._next, host)):
                self._next += 1
            if self._next >= self._stop:
                raise OSError(f"no free port left below {self._stop}")
            port, self._next = self._next, self._next + 1
        self._issued.add(port)
        return port

    def claim(self, port: int) -> None:
        """A port chosen elsewhere: never hand it out."""
        self._issued.add(port)


# -- one process -----------------------------------------------------------------------


def is_running(process: subprocess.Popen[Any] | None) -> bool:
    return process is not None and process.poll() is None


def send_signal(process: subprocess.Popen[Any], signum: int) -> None:
    """Signal the process by PID, if it still runs."""
    if is_running(process):
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass  # it exited between the look and the signal


def wait(process: subprocess.Popen[Any], timeout: float | None) -> int | None:
    """The exit code, or None if it still runs after ``timeout`` seconds."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def kill(process: subprocess.Popen[Any], timeout: float | None = None) -> int | None:
    """SIGKILL (the crash of a server) and reap: its exit code, or None if
    it is still not gone after ``timeout`` seconds (None: wait as long as
    it takes)."""
    send_signal(process, signal.SIGKILL)
    return wait(process, timeout)


# -- every process -----------------------------------------------------------------------


class Processes:
    """Every child process started through it, so that all of them die on
    the way out: ``kill_all``, which leaving the ``with`` block calls,
    whatever happened. Safe to use from several threads.

    ``new_session``: each child in a session of its own, so that a Ctrl-C
    in the terminal reaches this program only (a SIGINT would make a Serf
    agent leave). ``reap_timeout``: how long each kill waits for the child
    to be gone (None: as long as it takes)."""

    def __init__(self, *, new_session: bool = False, reap_timeout: float | None = None) -> None:
        self.new_session = new_session
        self.reap_timeout = reap_timeout
        self._all: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def spawn(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` (``popen``: more arguments for ``subprocess.Popen``)."""
        process = subprocess.Popen(list(argv), start_new_session=self.new_session, **popen)
        with self._lock:
            self._all.append(process)
        return process

    def kill(self, process: subprocess.Popen[Any]) -> int | None:
        return kill(process, self.reap_timeout)

    def kill_all(self) -> None:
        with self._lock:
            processes, self._all = self._all, []
        for process in processes:
            self.kill(process)
