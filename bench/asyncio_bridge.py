"""The cost of the asyncio bridge: peer.Node in an asyncio program (a trio
guest run on the program's loop) against the same node in a trio program.

    python bench/asyncio_bridge.py [--reps 5] [--ops 100] [--nodes 1,3] [--inflight 50] [--json]   # about 1 minute
    python bench/asyncio_bridge.py --quick                                                         # about 15 s

roundtrip. For each cluster size, ``--reps`` repetitions; in each, a trio
program (``trio.run``) and an asyncio program (``asyncio.run``), in
alternating order, each start the same nodes on 127.0.0.1 (profile local,
the same settings), wait until all are ready, warm up, then time ``--ops``
sequential ``await node.submit(noop)`` + ``await node.result(run_id)`` from
the first node (``noop`` is an ``async def`` returning 1: it runs on trio in
the trio program, as an asyncio task on the program's loop in the asyncio
one, each where the node runs; with 3 nodes most runs execute on another
node, so the result crosses the network). Printed: median and p95 per
round trip, pooled over repetitions, and asyncio / trio. The issue's target
is within 1.2x.

jobs not blocked. In an asyncio program with one node: an asyncio job that
measures how late its own ``asyncio.sleep(0.01)`` wakes, run ``--ops``
times (a) alone, (b) while ``--inflight`` submit + result round trips are
in flight from other tasks of the program, (c) while a sync job blocks its
worker thread. Printed: median and p95 of the lateness in each case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import peer
from peer.jobs.scheduler import SchedulerConfig

FAST = {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}
QUICK = SchedulerConfig(settle=0.2, settle_max=2.0, handover=0.2, scan_interval=0.2, drain_timeout=5.0)
WARMUP = 10
TIMEOUT = 30.0


async def noop() -> int:
    return 1


async def late_sleep() -> float:
    """How late ``asyncio.sleep(0.01)`` woke, in seconds."""
    started = time.perf_counter()
    await asyncio.sleep(0.01)
    return time.perf_counter() - started - 0.01


def blocking(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def make_node(index: int, seeds: list[str] | None = None) -> peer.Node:
    node = peer.Node(name=f"n{index}", bind="127.0.0.1:0", seeds=seeds, profile="local", membership=FAST, scheduler=QUICK)
    for function in (noop, late_sleep, blocking):
        node.function(function)
    return node


async def roundtrips(count: int, ops: int, sleep: Callable[[float], Awaitable[Any]]) -> list[float]:
    """Start ``count`` nodes (the first is every other's seed) and time
    ``ops`` round trips from the first. Library-neutral: only node methods."""
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(make_node(0))
        nodes = [first] + [await stack.enter_async_context(make_node(i, [first.address])) for i in range(1, count)]
        for node in nodes:
            await node.wait_ready(TIMEOUT)
        while any(len(node.live_members()) != count for node in nodes):
            await sleep(0.02)
        for _ in range(WARMUP):
            await first.result(await first.submit(noop), timeout=TIMEOUT)
        times = []
        for _ in range(ops):
            started = time.perf_counter()
            await first.result(await first.submit(noop), timeout=TIMEOUT)
            times.append(time.perf_counter() - started)
        return times


def trio_roundtrips(count: int, ops: int) -> list[float]:
    return trio.run(roundtrips, count, ops, trio.sleep)


def asyncio_roundtrips(count: int, ops: int) -> list[float]:
    return asyncio.run(roundtrips(count, ops, asyncio.sleep))


async def lateness(ops: int, inflight: int) -> dict[str, list[float]]:
    node = make_node(0)
    results: dict[str, list[float]] = {}
    async with node:
        await node.wait_ready(TIMEOUT)

        async def probes() -> list[float]:
            return [float(await node.result(await node.submit(late_sleep), timeout=TIMEOUT)) for _ in range(ops)]

        results["alone"] = await probes()

        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                await node.result(await node.submit(noop), timeout=TIMEOUT)

        loaders = [asyncio.create_task(load()) for _ in range(inflight)]
        await asyncio.sleep(0.2)
        results[f"{inflight} round trips in flight"] = await probes()
        stop.set()
        await asyncio.gather(*loaders)

        blocker = await node.submit_with(blocking, {"seconds": 3600.0}, timeout=60)
        while (record := node.run(blocker)) is None or record.state.value != "running":
            await asyncio.sleep(0.01)
        results["a sync job blocking its thread"] = await probes()
        assert node.run(blocker).state.value == "running"  # type: ignore[union-attr]
    return results


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000,
        "n": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ops", type=int, default=100)
    parser.add_argument("--nodes", default="1,3")
    parser.add_argument("--inflight", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="--reps 2 --ops 30 --inflight 20")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.ops, args.inflight = 2, 30, 20
    report: dict[str, Any] = {"roundtrip": {}, "lateness": {}}
    for count in [int(n) for n in args.nodes.split(",")]:
        pooled: dict[str, list[float]] = {"trio": [], "asyncio": []}
        for rep in range(args.reps):
            order = ("trio", "asyncio") if rep % 2 == 0 else ("asyncio", "trio")
            for library in order:
                run = trio_roundtrips if library == "trio" else asyncio_roundtrips
                pooled[library] += run(count, args.ops)
        row: dict[str, Any] = {library: summary(values) for library, values in pooled.items()}
        row["ratio_median"] = row["asyncio"]["median_ms"] / row["trio"]["median_ms"]
        row["ratio_p95"] = row["asyncio"]["p95_ms"] / row["trio"]["p95_ms"]
        report["roundtrip"][f"{count} node(s)"] = row
    for case, values in asyncio.run(lateness(args.ops, args.inflight)).items():
        report["lateness"][case] = summary(values)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"submit + result round trip, {args.reps} reps x {args.ops} ops, pooled (ms)")
    print(f"{'cluster':<12} {'trio med':>9} {'trio p95':>9} {'aio med':>9} {'aio p95':>9} {'ratio med':>10} {'ratio p95':>10}")
    for name, row in report["roundtrip"].items():
        print(
            f"{name:<12} {row['trio']['median_ms']:>9.2f} {row['trio']['p95_ms']:>9.2f} {row['asyncio']['median_ms']:>9.2f}"
            f" {row['asyncio']['p95_ms']:>9.2f} {row['ratio_median']:>9.2f}x {row['ratio_p95']:>9.2f}x"
        )
    print(f"\nlateness of an asyncio job's asyncio.sleep(0.01), {args.ops} probes (ms)")
    for case, row in report["lateness"].items():
        print(f"  {case:<34} median {row['median_ms']:6.2f}  p95 {row['p95_ms']:6.2f}")
    print(f"\n(threads alive at the end: {threading.active_count()})")


if __name__ == "__main__":
    main()
