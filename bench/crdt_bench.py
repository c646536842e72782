"""Replicated maps: what merging, gossip, digest sync and catch-up cost.

    python bench/crdt_bench.py [--quick]

Prints, for the record in BENCHMARKS.md:
- merge throughput: single-key deltas merged per second into a replica;
- delta bytes per mutation (a DeltaGossip message: a new key, an overwrite);
- digest sync of 10k and 100k keys with 0, 1, 100 and 10k differing keys:
  bytes, messages and round trips (sim.direct: the real codec, no network);
- catch-up on loopback: an agent process holding 100k keys and an empty
  agent on 127.0.0.1; seconds from the empty one's start (it joins, finds
  the cluster, asks for a digest sync) until it holds every key; and the CPU
  the same exchange costs in memory;
- memory per 100k entries (tracemalloc), and state bytes as replicated.
Wall-clock figures vary with the machine's load; run twice and compare.
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import time
import tracemalloc

import trio

from crdt.hlc import HLC
from crdt.messages import DeltaGossip, wire_size
from crdt.ormap import ORMap
from membership.state import Address
from peer.core.replication import ReplicationConfig, Replicator
from peer.runtime.agent import Agent
from peer.runtime.settings import Settings
from peer.testing.processes import Processes, free_port
from sim.direct import WALL_MS, sync

A: Address = ("10.0.0.1", 7946)
B: Address = ("10.0.0.2", 7946)
# The peer ``take_gossip`` is asked a packet for when dropping the queued
# gossip: with a limit of 1 every delta taken is retired, whoever it was for.
NOBODY: Address = ("10.0.0.9", 7946)


def pair() -> dict[Address, Replicator]:
    return {
        addr: Replicator(addr, name, ReplicationConfig(), maps=["m"], rng=random.Random(i), now=0.0)
        for i, (addr, name) in enumerate([(A, "a#1"), (B, "b#1")])
    }


def fill(replicator: Replicator, keys: list[str], value: object) -> None:
    for key in keys:
        replicator.put(WALL_MS, "m", key, value)
    replicator.take_gossip(10**9, 1, NOBODY)  # drop the queued gossip: not measured here


def merge_throughput(count: int) -> float:
    source = ORMap("a")
    clock = HLC("a")
    deltas = [source.put(f"key-{i % 10_000}", i, clock.now(WALL_MS + i)) for i in range(count)]
    target = ORMap("b")
    started = time.perf_counter()
    for delta in deltas:
        target.merge(delta, WALL_MS)
    return count / (time.perf_counter() - started)


def delta_bytes() -> tuple[int, int]:
    replica = ORMap("node-a#1795641243997")
    clock = HLC(replica.replica)
    first = replica.put("run:nightly-report:2026-11-25T03:00:00Z", {"state": "running", "owner": "node-a"}, clock.now(1))
    second = replica.put("run:nightly-report:2026-11-25T03:00:00Z", {"state": "succeeded", "owner": "node-a"}, clock.now(2))
    return wire_size(DeltaGossip("runs", first)), wire_size(DeltaGossip("runs", second))


def digest_sync(keys: int, differing: int) -> tuple[int, int, int]:
    nodes = pair()
    a, b = nodes[A], nodes[B]
    fill(a, [f"key-{i}" for i in range(keys)], "value")
    b.map("m").merge(a.map("m").state(), WALL_MS)
    fill(b, [f"key-{i}" for i in range(differing)], "changed")  # overwrites on b
    result = sync(nodes, a, B)
    assert a.map("m").root() == b.map("m").root()
    return result.bytes, result.messages, result.round_trips


def catch_up_in_memory(keys: int) -> tuple[float, int]:
    nodes = pair()
    a, b = nodes[A], nodes[B]
    fill(a, [f"key-{i}" for i in range(keys)], "value")
    started = time.process_time()
    result = sync(nodes, b, A)
    assert len(b.map("m")) == keys
    return time.process_time() - started, result.bytes


def _agent_settings(name: str, port: int = 0, seeds: tuple[str, ...] = ()) -> Settings:
    return Settings(name=name, bind=("127.0.0.1", port), api=("127.0.0.1", 0), seeds=seeds, profile="lan")


async def serve_full(port: int, keys: int) -> None:
    """The other process of the loopback catch-up: an agent holding ``keys``."""
    full = Agent(_agent_settings("full", port), None, maps=["m"])
    await full.bind()
    for i in range(keys):
        full.core.put(trio.current_time(), "m", f"key-{i}", "value")
    full.core.replicator.take_gossip(10**9, 1, NOBODY)
    async with trio.open_nursery() as nursery:
        await nursery.start(full.run)
        print("ready", flush=True)


async def catch_up_loopback(keys: int) -> float:
    """Seconds until an empty agent holds all ``keys`` of an agent in another
    process, from the moment it starts."""
    port = free_port()
    command = [sys.executable, __file__, "--serve-full", str(port), str(keys)]
    with Processes() as processes:
        server = processes.spawn(command, stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        empty = Agent(_agent_settings("empty", seeds=(f"127.0.0.1:{port}",)), None, maps=["m"])
        await empty.bind()
        replica = empty.core.replicator.map("m")
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            await nursery.start(empty.run)
            while len(replica) < keys:
                await trio.sleep(0.005)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        return elapsed


def memory_per(keys: int) -> tuple[int, int]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    replica = ORMap("a")
    clock = HLC("a")
    for i in range(keys):
        replica.put(f"key-{i}", {"n": i}, clock.now(WALL_MS))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used, replica.entry_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k keys only, for a smoke run")
    parser.add_argument("--serve-full", nargs=2, type=int, metavar=("PORT", "KEYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the agents' "open cluster" warnings
    if args.serve_full:
        trio.run(serve_full, *args.serve_full)
        return
    sizes = [10_000] if args.quick else [10_000, 100_000]

    print(f"merge throughput: {merge_throughput(100_000):,.0f} single-key deltas per second")
    new, overwrite = delta_bytes()
    print(f"delta bytes per mutation: {new} (new key), {overwrite} (overwrite)")
    print("\ndigest sync (bytes / messages / round trips)")
    print("| keys | 0 differ | 1 differs | 100 differ | 10k differ |")
    print("| ---: | --- | --- | --- | --- |")
    for keys in sizes:
        cells = [digest_sync(keys, differing) for differing in (0, 1, 100, 10_000)]
        print(f"| {keys:,} | " + " | ".join(f"{b:,} B / {m} / {r}" for b, m, r in cells) + " |")
    keys = sizes[-1]
    cpu, size = catch_up_in_memory(keys)
    print(f"\ncatch-up of {keys:,} keys: {cpu:.2f} s CPU in memory (both sides), {size / 1e6:.1f} MB sent")
    seconds = min(trio.run(catch_up_loopback, keys) for _ in range(3))
    print(f"catch-up of {keys:,} keys on loopback (two agent processes): {seconds:.2f} s (best of 3)")
    used, wire = memory_per(100_000)
    print(f"memory per 100k entries: {used / 1e6:.1f} MB in Python ({wire / 1e6:.1f} MB as replicated)")


if __name__ == "__main__":
    main()
