"""``peer demo``: a local cluster of real agents, shown at work.

Starts N ``peer agent`` processes on 127.0.0.1 with a fresh cluster key, then
walks through what the membership layer is for, timing each step: the nodes
join through one seed and converge; one is killed with SIGKILL and the others
declare it failed; one leaves gracefully (SIGTERM) and the others see it
left, not failed; the killed one restarts under its name and rejoins as
itself. Every process is stopped at the end, whatever happens.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from peer.cli import format_table
from peer.keys import generate_key
from peer.localcluster import AgentProcess, LocalCluster, wait_for

STEP_TIMEOUT = 60.0


def run(nodes: int, *, keep: bool = False, out: TextIO = sys.stdout) -> int:
    if nodes < 3:
        out.write("peer demo needs at least 3 nodes\n")
        return 1

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    with tempfile.TemporaryDirectory(prefix="peer-demo-") as workdir, LocalCluster(
        Path(workdir), prefix="node-", profile="lan", key=generate_key()
    ) as cluster:
        say(f"Starting {nodes} agents on 127.0.0.1 (profile lan, a fresh cluster key; logs in {workdir})")
        started = time.monotonic()
        agents = [cluster.add() for _ in range(nodes)]
        cluster.wait_api(agents, STEP_TIMEOUT)
        everyone = {agent.name: "alive" for agent in agents}
        wait_for(lambda: cluster.converged(everyone), STEP_TIMEOUT, "the cluster to converge")
        say(f"  all {nodes} agents see each other {time.monotonic() - started:.1f}s after starting\n")
        show_members(agents[0], say)

        victim, leaver = agents[-2], agents[-1]
        others = [agent for agent in agents if agent not in (victim, leaver)]
        say(f"\nkill -9 {victim.name} (pid {victim.pid}) ...")
        killed = time.monotonic()
        victim.kill()
        first, last = time_until_all(cluster, others + [leaver], victim.name, "dead")
        say(f"  first agent declared it failed after {first - killed:.1f}s, the last after {last - killed:.1f}s")

        say(f"\nSIGTERM {leaver.name}: a graceful leave ...")
        stopped = time.monotonic()
        leaver.signal(15)
        code = leaver.wait(STEP_TIMEOUT)
        _, last = time_until_all(cluster, others, leaver.name, "left")
        say(f"  it exited with status {code}; every agent saw it leave after {last - stopped:.1f}s (left, not failed)")

        say(f"\nrestart {victim.name} under the same name ...")
        restarted = time.monotonic()
        victim.start()
        _, last = time_until_all(cluster, others + [victim], victim.name, "alive")
        say(f"  it rejoined as itself, with a new incarnation, after {last - restarted:.1f}s\n")
        show_members(agents[0], say)
        if keep:
            say(f"\nThe cluster keeps running; try `peer members --api {agents[0].api[0]}:{agents[0].api[1]}`. Ctrl-C stops it.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        say("\nStopping every agent gracefully ...")
        for agent in cluster.running():
            agent.signal(15)
        for agent in cluster.agents.values():
            agent.wait(STEP_TIMEOUT)
        say("done.")
    return 0


def show_members(agent: AgentProcess, say: Callable[[str], None]) -> None:
    document = agent.call("/members")
    rows = [("NAME", "ADDRESS", "STATUS", "INCARNATION")]
    rows += [(m["name"], m["addr"], m["status"], str(m["incarnation"])) for m in document["members"]]
    say(f"$ peer members   (as {agent.name} sees the cluster)")
    say(format_table(rows))


def time_until_all(cluster: LocalCluster, agents: list[AgentProcess], name: str, status: str) -> tuple[float, float]:
    """Poll until every agent in ``agents`` sees ``name`` with ``status``;
    the monotonic times the first and the last one did."""
    seen: dict[str, float] = {}

    def everyone() -> bool:
        for agent_name, view in cluster.views(agents).items():
            if view.get(name) == status and agent_name not in seen:
                seen[agent_name] = time.monotonic()
        return len(seen) == len(agents)

    wait_for(everyone, STEP_TIMEOUT, f"every agent to see {name} {status}")
    return min(seen.values()), max(seen.values())
