"""Overload: a node runs no more than it can bear, and says so.

    python bench/overload.py [--quick] [--nodes 3] [--runs 2000] [--seconds 5] [--flood 7000] [--threads 8]
                             [--max-pending-runs 5000]      # --quick: 300 sleepers of 2 s, a flood of 1500 over a bound of 1000

Agents are ``peer agent --profile lan`` with a cluster key and their default
back-pressure settings (``max_running_runs`` 64, ``max_pending_runs`` 5000
unless ``--max-pending-runs``),
on 127.0.0.1 through ``peer.testing.cluster.LocalCluster`` (every process
tracked by PID and killed when its ``with`` block ends).

sleepers. ``--runs`` one-offs of ``peer.testing.samples:sleep`` (a sync
function: a worker thread each while it runs) of ``--seconds`` each are
submitted round robin through the agents, by ``--threads`` client threads
(a 429 is retried after its ``Retry-After``). Every 0.2 s each agent's
``/proc/PID/status`` (``Threads``, ``VmRSS``) and ``/status`` (running,
queued) are read. Figures: the most threads and running runs per node, the
time until every run succeeded, runs that did not succeed, and the threads
per node before.

flood. ``--flood`` one-offs of ``peer.testing.samples:sleep`` for 600 s (so
nothing finishes: the backlog only grows) posted as fast as ``--threads``
client threads can to the first agent, with no retry. Figures: accepted,
refused (429), other errors, the submit rate, the agents' RSS before and
after, and their backlog and ``submits_refused`` counters at the end.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from peer.control.client import ClientError
from peer.runtime.addresses import format_address
from peer.runtime.keys import generate_key
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for

TIMEOUT = 60.0


def proc_status(pid: int) -> dict[str, int]:
    """``Threads`` and ``VmRSS`` (kB) of a process, from /proc."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                fields[key] = int(value.split()[0])
    return fields


class Sampler:
    """Reads every agent's threads, RSS, running and queued runs every 0.2 s, keeping the most."""

    def __init__(self, agents: list[AgentProcess]) -> None:
        self.agents = agents
        self.most: dict[str, dict[str, int]] = {a.name: {"threads": 0, "rss_kb": 0, "running": 0, "queued": 0} for a in agents}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for agent in self.agents:
                try:
                    proc = proc_status(agent.pid)
                    scheduler = agent.call("/status")["scheduler"]
                except (OSError, ClientError):
                    continue
                most = self.most[agent.name]
                for key, value in (
                    ("threads", proc["Threads"]), ("rss_kb", proc["VmRSS"]),
                    ("running", len(scheduler["running"])), ("queued", scheduler["queued"]),
                ):  # fmt: skip
                    most[key] = max(most[key], value)


def post_all(agents: list[AgentProcess], bodies: list[dict[str, Any]], threads: int, *, retry: bool) -> dict[str, Any]:
    """POST each body to /submit (round robin over ``agents``), from ``threads`` threads."""
    counts = {"accepted": 0, "refused": 0, "errors": 0}
    run_ids: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        return local.client

    def post(index: int) -> None:
        agent = agents[index % len(agents)]
        url = f"http://{format_address(agent.api)}/submit"
        while True:
            try:
                response = client().post(url, json=bodies[index])
            except httpx.HTTPError:
                with lock:
                    counts["errors"] += 1
                return
            with lock:
                if response.status_code == 200:
                    counts["accepted"] += 1
                    run_ids.append(response.json()["run"])
                    return
                if response.status_code == 429:
                    counts["refused"] += 1
                else:
                    counts["errors"] += 1
                    return
            if not retry:
                return
            time.sleep(float(response.headers.get("Retry-After", "1")))

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, range(len(bodies))))
    return {**counts, "seconds": time.monotonic() - started, "run_ids": run_ids}


def sleepers(cluster: LocalCluster, agents: list[AgentProcess], args: argparse.Namespace) -> None:
    before = {a.name: proc_status(a.pid) for a in agents}
    bodies = [
        {"id": f"sleeper-{i}", "call": "peer.testing.samples:sleep", "kwargs": {"seconds": args.seconds}, "result_ttl": 600}
        for i in range(args.runs)
    ]
    started = time.monotonic()
    with Sampler(agents) as sampler:
        posted = post_all(agents, bodies, args.threads, retry=True)

        def all_done() -> dict[str, Any] | None:
            states = {state: agents[0].call(f"/runs?state={state}&limit=1")["total"] for state in ("pending", "running")}
            return states if sum(states.values()) == 0 else None

        wait_for(all_done, args.runs * args.seconds + TIMEOUT, "every sleeper to finish", interval=0.5)
        elapsed = time.monotonic() - started
    succeeded = agents[0].call("/runs?state=succeeded&limit=1")["total"]
    print(f"sleepers: {args.runs} sync one-offs of {args.seconds:g} s on {len(agents)} agents (max_running_runs 64)")
    print(
        f"  submitted in {posted['seconds']:.1f} s: accepted {posted['accepted']}, "
        f"429s retried {posted['refused']}, errors {posted['errors']}"
    )
    print(f"  all finished after {elapsed:.1f} s; succeeded {succeeded} of {args.runs}")
    for agent in agents:
        most = sampler.most[agent.name]
        print(
            f"  {agent.name}: threads {before[agent.name]['Threads']} before, at most {most['threads']}; "
            f"running at most {most['running']}, queued at most {most['queued']}; "
            f"RSS {before[agent.name]['VmRSS'] / 1024:.0f} -> at most {most['rss_kb'] / 1024:.0f} MiB"
        )


def flood(cluster: LocalCluster, agents: list[AgentProcess], args: argparse.Namespace) -> None:
    before = {a.name: proc_status(a.pid)["VmRSS"] for a in agents}
    bodies = [
        {"id": f"flood-{i}", "call": "peer.testing.samples:sleep", "kwargs": {"seconds": 600}, "timeout": 900}
        for i in range(args.flood)
    ]
    posted = post_all(agents[:1], bodies, args.threads, retry=False)
    time.sleep(3)  # the last deltas spread
    after = {a.name: proc_status(a.pid)["VmRSS"] for a in agents}
    rate = (posted["accepted"] + posted["refused"]) / posted["seconds"]
    print(f"flood: {args.flood} submits of 600 s sleepers to {agents[0].name}, {args.threads} client threads, no retry")
    print(
        f"  accepted {posted['accepted']}, refused (429) {posted['refused']}, errors {posted['errors']}, "
        f"in {posted['seconds']:.1f} s ({rate:.0f}/s answered)"
    )
    for agent in agents:
        scheduler = agent.call("/status")["scheduler"]
        print(
            f"  {agent.name}: RSS {before[agent.name] / 1024:.0f} -> {after[agent.name] / 1024:.0f} MiB "
            f"(+{(after[agent.name] - before[agent.name]) / 1024:.0f}); backlog {scheduler['backlog']}/{scheduler['max_pending_runs']}, "
            f"running {len(scheduler['running'])}, queued {scheduler['queued']}, submits_refused {scheduler['stats']['submits_refused']}"
        )


def eligible(agents: list[AgentProcess], count: int) -> bool:
    return all(agent.call("/status")["scheduler"]["eligible"] == count for agent in agents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 sleepers of 2 s, a flood of 1500 over a bound of 1000")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--flood", type=int, default=7000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-pending-runs", type=int, default=5000, help="the agents' bound on the backlog")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.flood, args.max_pending_runs = 300, 2.0, 1500, 1000
    parts: list[Callable[[LocalCluster, list[AgentProcess], argparse.Namespace], None]] = [sleepers, flood]
    for part in parts:
        with tempfile.TemporaryDirectory() as workdir, LocalCluster(Path(workdir), profile="lan", key=generate_key()) as cluster:
            agents = [cluster.add(extra_args=["--max-pending-runs", str(args.max_pending_runs)]) for _ in range(args.nodes)]
            cluster.wait_api(agents, TIMEOUT)
            wait_for(functools.partial(eligible, agents, args.nodes), TIMEOUT, "every agent eligible")
            part(cluster, agents, args)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
