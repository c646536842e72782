"""Memory soak: does a node's memory follow its live data?

    python bench/soak.py --agents 3 [--rate 20] [--ttl 30] [--minutes 30] [--quick]
    python bench/soak.py --embedded [--nodes 1] [--tracemalloc] [--quick]

Submits ``--rate`` one-offs a second (a function that returns at once) with
a result TTL of ``--ttl`` seconds for ``--minutes``, through the nodes in
turn, and waits on a ``--wait`` share of them through another node (as a
client collecting results does: reader marks, long-polls). Then it submits
nothing for one TTL plus the 60 s every expired entry is still held
(``ReplicationConfig.max_drift_ms``), so that every record has gone.

``--agents N`` starts N ``peer agent`` processes on 127.0.0.1 (one cluster,
with a key) and talks to their API; ``--embedded`` runs ``--nodes`` (1: a
lone node, no peers) ``peer.Node``s in this process, and measures this
process. Every ``--interval`` seconds it prints the elapsed time, the RSS of
each process, the run records each node holds, and the sizes of the tables
that once grew with every run (``GET /status``'s ``footprint``, also in
``/metrics`` as ``peer_footprint``): the gossip backlog, the expiry heap,
the tombstones (out-of-order dots of the causal contexts), the scheduler's
tables, the agent's tasks and threads.

At the end: each process's RSS once the first TTL (plus the margin) had
passed, when the records held had reached their steady state, against its
RSS at the end of the load and after the last TTL, when they were all gone;
the target is a difference within +10 MB over 30 minutes. ``--tracemalloc``
(embedded only) also prints the allocations that grew most between those two
moments, by traceback (it costs memory of its own: RSS is not comparable
with a run without it). ``--quick``: 3 minutes, a sample every 15 s.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio

import peer
from peer.control.client import ClientError, api_path
from peer.runtime.keys import generate_key
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for

# Expired entries are dropped this long after their expiry (the maps' drift margin).
DROP_MARGIN = 60.0
# The tables printed each interval: (part, table) in the footprint, and a short heading.
COLUMNS = (
    ("replication", "runs.entries", "runs"),
    ("replication", "gossip_backlog", "backlog"),
    ("replication", "held_writes", "held"),
    ("replication", "runs.expiry_heap", "heap"),
    ("replication", "runs.tombstones", "tomb"),
    ("replication", "updates.entries", "upd"),
    ("replication", "updates.tombstones", "updtomb"),
    ("scheduler", "unfinished", "unfin"),
    ("scheduler", "pending_due", "pdue"),
    ("agent", "run_waits", "waits"),
    ("agent", "tasks", "tasks"),
    ("agent", "threads", "thr"),
)
SAMPLE_FUNCTION = "peer.testing.samples:echo"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Report:
    """The samples, and the figures at the end."""

    def __init__(self, args: argparse.Namespace, names: Sequence[str]) -> None:
        self.args = args
        self.names = list(names)
        self.start = time.monotonic()
        self.baseline_at = args.ttl + DROP_MARGIN
        self.baseline: dict[str, float] | None = None
        self.end_of_load: dict[str, float] | None = None
        self.header_printed = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def sample(self, rss: dict[str, float], footprints: dict[str, dict[str, dict[str, int]]], phase: str) -> None:
        elapsed = self.elapsed()
        if not self.header_printed:
            heads = " ".join(f"{head:>7}" for _, _, head in COLUMNS)
            print(f"{'time':>6} {'phase':<6} {'node':<10} {'rss MB':>7} {heads}", flush=True)
            self.header_printed = True
        for name in self.names:
            footprint = footprints.get(name, {})
            cells = " ".join(f"{footprint.get(part, {}).get(table, '-'):>7}" for part, table, _ in COLUMNS)
            print(f"{elapsed:6.0f} {phase:<6} {name:<10} {rss.get(name, float('nan')):7.1f} {cells}", flush=True)
        if self.baseline is None and elapsed >= self.baseline_at:
            self.baseline = dict(rss)
            print(f"  -- first TTL (+{DROP_MARGIN:g} s margin) passed: baseline RSS taken", flush=True)

    def finish(self, rss: dict[str, float]) -> None:
        print(f"\nRSS (MB) per process: after the first TTL passed / at the end of the load / after the last TTL "
              f"(rate {self.args.rate:g}/s, ttl {self.args.ttl:g} s, {self.args.minutes:g} min of load)")
        for name in self.names:
            base = (self.baseline or {}).get(name, float("nan"))
            load = (self.end_of_load or {}).get(name, float("nan"))
            last = rss.get(name, float("nan"))
            print(f"  {name:<10} {base:7.1f} {load:7.1f} {last:7.1f}   difference after the last TTL: {last - base:+.1f} MB")


# -- agents --------------------------------------------------------------------------------


def soak_agents(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="peer-soak-") as workdir, LocalCluster(
        Path(workdir), profile="lan", key=generate_key(), extra_args=["--log-level", "warning"]
    ) as cluster:
        agents = cluster.add_mesh(args.agents)
        cluster.wait_api(agents, 60)
        wait_for(lambda: all(agent.answers_ready() for agent in agents), 60, "every agent ready", interval=0.2)
        report = Report(args, [agent.name for agent in agents])
        waiters = ThreadPoolExecutor(max_workers=4, thread_name_prefix="soak-wait")
        failures = {"submit": 0, "wait": 0}

        waiting = threading.BoundedSemaphore(64)  # waits in flight at most

        def await_result(agent: AgentProcess, run_id: str) -> None:
            try:
                agent.call(api_path("runs", run_id, query={"wait": 20}), timeout=25)
            except ClientError:
                failures["wait"] += 1
            finally:
                waiting.release()

        def sample(phase: str) -> None:
            rss = {agent.name: rss_mb(agent.pid) for agent in agents}
            footprints = {}
            for agent in agents:
                try:
                    footprints[agent.name] = agent.call("/status", timeout=10)["footprint"]
                except (ClientError, KeyError):
                    pass
            report.sample(rss, footprints, phase)

        def submit(i: int) -> None:
            agent = agents[i % len(agents)]
            body = {"id": "soak", "call": SAMPLE_FUNCTION, "kwargs": {"i": i}, "result_ttl": args.ttl}
            try:
                run_id = agent.call("/submit", method="POST", body=body)["run"]
            except ClientError:
                failures["submit"] += 1
                return
            if _waited(i, args.wait) and waiting.acquire(blocking=False):
                waiters.submit(await_result, agents[(i + 1) % len(agents)], run_id)

        _load(args, submit, sample)
        waiters.shutdown(wait=True)
        report.end_of_load = {agent.name: rss_mb(agent.pid) for agent in agents}
        _drain(args, sample)
        report.finish({agent.name: rss_mb(agent.pid) for agent in agents})
        print(f"  submits refused or failed: {failures['submit']}; waits that failed: {failures['wait']}")


def _load(args: argparse.Namespace, submit: Callable[[int], None], sample: Callable[[str], None]) -> None:
    """Submit at the rate for the minutes given, sampling every interval."""
    start = time.monotonic()
    next_sample = start
    for i in itertools.count():
        now = time.monotonic()
        if now >= next_sample:
            sample("load")
            next_sample += args.interval
        if now - start >= args.minutes * 60:
            return
        submit(i)
        delay = start + (i + 1) / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _drain(args: argparse.Namespace, sample: Callable[[str], None]) -> None:
    """Nothing more for one TTL and the drop margin: every record goes."""
    end = time.monotonic() + args.ttl + DROP_MARGIN + 2 * args.interval
    while time.monotonic() < end:
        time.sleep(min(args.interval, end - time.monotonic()))
        sample("drain")


# -- embedded -------------------------------------------------------------------------------


def noop(i: int) -> int:
    return i


def soak_embedded(args: argparse.Namespace) -> None:
    if args.tracemalloc:
        tracemalloc.start(25)
    trio.run(_soak_embedded, args)


async def _soak_embedded(args: argparse.Namespace) -> None:
    names = [f"soak-{index}" for index in range(args.nodes)]
    report = Report(args, names)
    pid = os.getpid()
    snapshots: list[tracemalloc.Snapshot] = []
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[peer.Node] = []
        for name in names:
            seeds = [nodes[0].address] if nodes else None
            node = peer.Node(name=name, bind="127.0.0.1:0", seeds=seeds, join_timeout=30)
            node.register(noop, "noop")
            nodes.append(await stack.enter_async_context(node))
        for node in nodes:
            await node.wait_ready(60)

        def sample(phase: str) -> None:
            footprints = {node.name: node.agent.footprint() for node in nodes}
            # One process: its RSS is shown on its first node's line.
            report.sample({names[0]: rss_mb(pid)}, footprints, phase)
            if args.tracemalloc and report.baseline is not None and not snapshots:
                gc.collect()
                snapshots.append(tracemalloc.take_snapshot())

        async def await_result(node: peer.Node, run_id: str) -> None:
            with contextlib.suppress(peer.UnknownRun, TimeoutError):
                await node.wait(run_id, timeout=20)

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            next_sample = start
            for i in itertools.count():
                now = trio.current_time()
                if now >= next_sample:
                    sample("load")
                    next_sample += args.interval
                if now - start >= args.minutes * 60:
                    break
                run_id = await nodes[i % len(nodes)].submit_with("noop", {"i": i}, id="soak", result_ttl=args.ttl)
                if _waited(i, args.wait):
                    nursery.start_soon(await_result, nodes[(i + 1) % len(nodes)], run_id)
                await trio.sleep_until(start + (i + 1) / args.rate)
        report.end_of_load = {names[0]: rss_mb(pid)}
        end = trio.current_time() + args.ttl + DROP_MARGIN + 2 * args.interval
        while trio.current_time() < end:
            await trio.sleep(min(args.interval, end - trio.current_time()))
            sample("drain")
        gc.collect()
        report.finish({names[0]: rss_mb(pid)})
        if snapshots:
            _print_growers(snapshots[0], tracemalloc.take_snapshot())


def _waited(i: int, share: float) -> bool:
    """Is the i-th run one of the ``share`` waited on (evenly spread)?"""
    return int((i + 1) * share) > int(i * share)


def _print_growers(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 10) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    total = sum(stat.size_diff for stat in stats)
    print(f"\ntraced allocations, after the last TTL against after the first: {total / 1e6:+.2f} MB; the top growers:")
    for stat in stats[:top]:
        print(f"  {stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks")
        frames = [frame for frame in stat.traceback if "site-packages" not in frame.filename][-4:] or list(stat.traceback)[-2:]
        for frame in frames:
            print(f"      {frame.filename}:{frame.lineno}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--agents", type=int, help="agent processes on 127.0.0.1")
    mode.add_argument("--embedded", action="store_true", help="peer.Node(s) in this process")
    parser.add_argument("--nodes", type=int, default=1, help="with --embedded: nodes in this process (1: a lone node)")
    parser.add_argument("--rate", type=float, default=20.0, help="one-offs submitted a second")
    parser.add_argument("--ttl", type=float, default=30.0, help="their result TTL, seconds")
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of load")
    parser.add_argument("--wait", type=float, default=0.2, help="share of runs waited on through another node")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--quick", action="store_true", help="3 minutes of load, a sample every 15 s")
    parser.add_argument("--tracemalloc", action="store_true", help="with --embedded: the top growers, by traceback")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.interval = 3.0, 15.0
    if args.tracemalloc and not args.embedded:
        parser.error("--tracemalloc traces this process: use it with --embedded")
    where = f"{args.agents} agents" if args.agents else f"{args.nodes} embedded node(s)"
    print(f"soak: {where}, "
          f"{args.rate:g} one-offs/s, ttl {args.ttl:g} s, {args.minutes:g} min, waits {args.wait:.0%}, "
          f"{threading.active_count()} threads at start", flush=True)
    if args.agents:
        soak_agents(args)
    else:
        soak_embedded(args)


if __name__ == "__main__":
    main()
