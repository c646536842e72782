"""Ports and child processes for test tooling (``peer.testing.processes``):
ports free for UDP and TCP, never handed out twice; every process killed by
PID on the way out, whatever happened."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from peer.testing.processes import (
    Ports,
    Processes,
    free_port,
    kill,
    port_free,
    send_signal,
    wait,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_a_port_is_free_only_when_neither_udp_nor_tcp_holds_it(kind: int) -> None:
    port = free_port()
    assert port_free(port)
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))
        assert not port_free(port)
    assert port_free(port)


def test_ports_are_never_handed_out_twice() -> None:
    ports = Ports()
    claimed = free_port()
    ports.claim(claimed)
    taken = [ports.take() for _ in range(50)]
    assert len(set(taken)) == len(taken) and claimed not in taken


def test_ports_in_a_range_go_upward_and_skip_what_is_held() -> None:
    start = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", start))
        ports = Ports(start, start + 3)
        assert ports.take() in (start + 1, start + 2)
    with pytest.raises(OSError, match="no free port left"):
        Ports(start, start).take()


def test_every_process_is_killed_on_the_way_out_even_on_failure() -> None:
    with pytest.raises(RuntimeError), Processes() as processes:
        children = [processes.spawn(SLEEPER, stdin=subprocess.DEVNULL) for _ in range(2)]
        raise RuntimeError("the test failed")
    assert [child.poll() for child in children] == [-signal.SIGKILL, -signal.SIGKILL]


def test_signals_waits_and_kills_do_not_mind_an_exited_process() -> None:
    with Processes() as processes:
        child = processes.spawn(SLEEPER)
        assert wait(child, 0.05) is None  # still running
        send_signal(child, signal.SIGTERM)
        assert wait(child, 30.0) == -signal.SIGTERM
        send_signal(child, signal.SIGTERM)  # gone: nothing to do
        assert kill(child) == -signal.SIGTERM
        done = processes.spawn([sys.executable, "-c", "pass"])
        assert wait(done, 30.0) == 0 and processes.kill(done) == 0
