"""A real ``peer agent`` whose gossip port is flooded with idle connections
still lets a new agent join through it. Processes are started through
``LocalCluster``, which kills them by PID when the test ends."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer.runtime.keys import generate_key
from peer.testing.cluster import LocalCluster, wait_for

TIMEOUT = 30.0  # generous: the machines running CI are shared and slow
IDLE = 100


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, profile="local", key=generate_key()) as local:
        yield local


# The attacker is another host than the agents (127.0.0.1): one source's
# flood must not cost the other sources their connections. The same source
# flooding and joining is tests/test_transport.py's (in process, no timing).
ATTACKER = "127.0.0.2"


class IdleFlood:
    """``IDLE`` idle connections to ``target``, each reopened once the agent closes it (issue 13's attack)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        held: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                while len(held) < IDLE:
                    try:
                        held.append(socket.create_connection(self.target, timeout=1.0, source_address=(ATTACKER, 0)))
                        self.opened += 1
                    except OSError:
                        break
                closed, _, _ = select.select(held, [], [], 0.05)  # readable: the agent closed it
                for sock in closed:
                    sock.close()
                    held.remove(sock)
        finally:
            for sock in held:
                sock.close()


def test_idle_connections_to_the_gossip_port_do_not_stop_a_join(cluster: LocalCluster) -> None:
    first = cluster.add()
    cluster.wait_api([first], TIMEOUT)
    with IdleFlood(first.bind) as flood:
        wait_for(lambda: flood.opened >= IDLE, TIMEOUT, "the idle connections to be open")
        second = cluster.add()  # joins through the first, whose port is flooded
        wait_for(lambda: cluster.converged({first.name: "alive", second.name: "alive"}), TIMEOUT, "the join through the flooded node")
        refused = first.call("/status")["transport"]["streams_refused"]
        assert refused["per_source"] > 0  # the flood cycled through its own slots
        metrics = first.call_text("/metrics")
        assert 'peer_transport_streams_refused_total{reason="per_source"}' in metrics
