"""The trio runtime in-process: two agents on 127.0.0.1, hostile input, leave."""

from __future__ import annotations

import os
import socket
import struct
import time

import attrs
import trio

from membership.messages import Ping
from peer.control.client import call
from peer.control.server import HttpControlPlane
from peer.runtime.agent import Agent
from peer.runtime.settings import Settings
from peer.runtime.wire import VERSION, Codec, Keyring

FAST = {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}


def settings(name: str, seeds: tuple[str, ...] = ()) -> Settings:
    return Settings(
        name=name, bind=("127.0.0.1", 0), api=("127.0.0.1", 0), seeds=seeds, profile="local", membership=FAST
    )


async def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_agents_join_survive_garbage_and_leave() -> None:
    a = Agent(settings("a"), None, control_plane=HttpControlPlane())
    await a.bind()
    b = Agent(settings("b", seeds=(f"127.0.0.1:{a.transport.port}",)), None, control_plane=HttpControlPlane())
    await b.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await wait_until(lambda: a.membership.live_count == 2 and b.membership.live_count == 2)
        # Ready once settled: joined, and the scheduler caught up (settle, 2 s).
        await wait_until(lambda: a.ready and b.ready)

        # Hostile input: every kind is dropped and counted; nothing raises.
        target = ("127.0.0.1", a.transport.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(bytes([VERSION, 0]) + b"garbage", target)  # malformed body
            udp.sendto(b"\x07\x00\x90", target)  # unknown version
            signed = Codec(Keyring([b"k" * 32]), wall_clock=time.time, random_bytes=os.urandom).encode([Ping(1, "a", ("127.0.0.1", 1))])
            udp.sendto(signed, target)  # signed, but this cluster has no key
        with socket.create_connection(target) as tcp:
            tcp.sendall(struct.pack(">I", 100) + bytes(100))  # an older peer's length-prefixed stream: no preamble
        with socket.create_connection(target) as tcp:
            tcp.sendall(b"PEER\x02")  # ends inside the preamble
        refused = {"bad_preamble": 1, "truncated": 1}
        await wait_until(
            lambda: a.drops() == {"malformed": 1, "unknown_version": 1, "bad_mac": 1, "oversized": 0, "plaintext": 0, "stale": 0,
                                  "replayed": 0, "handler_error": 0}
            and {reason: n for reason, n in a.transport.stats.streams_refused.items() if n} == refused
        )

        # The control API, as a client sees it.
        status = await trio.to_thread.run_sync(call, a.api_address, "/status")
        assert status["members"] == {"alive": 2, "suspect": 0, "dead": 0, "left": 0}
        assert status["drops"]["bad_mac"] == 1 and status["transport"]["streams_refused"]["bad_preamble"] == 1

        await b.leave()
        await wait_until(lambda: a.membership.member("b") is not None and a.membership.member("b").status.name == "LEFT")  # type: ignore[union-attr]
        assert a.events["failed"] == 0 and a.events["left"] == 1
        with trio.fail_after(5):
            await a.leave()


async def test_advertised_address_is_what_the_core_gossips() -> None:
    agent = Agent(attrs.evolve(settings("nat"), advertise=("127.0.0.9", 0)), None)
    await agent.bind()
    try:
        # Port 0 in --advertise means "the port we bound".
        assert agent.advertise == ("127.0.0.9", agent.transport.port) == agent.core.addr
        assert agent.membership.member("nat").addr == agent.advertise  # type: ignore[union-attr]
    finally:
        agent.close()


async def test_replicated_map_over_real_sockets() -> None:
    a = Agent(settings("a"), None, control_plane=HttpControlPlane(), maps=["data"])
    await a.bind()
    for i in range(300):
        await a.put("data", f"key-{i}", {"n": i})
    b = Agent(settings("b", seeds=(f"127.0.0.1:{a.transport.port}",)), None, control_plane=HttpControlPlane(), maps=["data"])
    await b.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        # b starts empty and catches up through a digest sync when it joins.
        await wait_until(lambda: len(b.core.replicator.map("data")) == 300)
        assert b.get("data", "key-7") == {"n": 7}
        await a.put("data", "fresh", "gossiped")  # small deltas ride on gossip
        await b.remove("data", "key-7")
        await wait_until(lambda: b.get("data", "fresh") == "gossiped" and a.get("data", "key-7") is None)
        assert a.core.replicator.map("data").root() == b.core.replicator.map("data").root()
        status = await trio.to_thread.run_sync(call, a.api_address, "/status")
        assert status["replication"]["writes"] == 301
        # Both found the cluster; one asks for a sync (the other, synced with first, usually does not).
        assert status["replication"]["syncs_started"] + b.core.replicator.stats.syncs_started >= 1
        await b.leave()
        await a.leave()
