"""Stream abuse against a real agent: what strangers can make its gossip port hold.

    python bench/stream_abuse.py [--connections 64] [--seconds 15] [--quick] [--json]

One ``peer agent`` at a time, on 127.0.0.1, is attacked for ``--seconds`` by
``--connections`` concurrent connections, each from its own loopback address
(127.0.0.2, 127.0.0.3, ...: so the per-source limits do not do all the work),
each sending an 8 MiB frame as fast as loopback goes and starting again once
the agent closes it (issue 13's attack). Scenarios:

- ``keyed/legacy``: an agent with a key; the attack speaks the old stream
  format, a bare 4-byte length then the frame;
- ``keyed/forged``: an agent with a key; the attack sends a well-formed
  preamble announcing 8 MiB under a key that is not the cluster's;
- ``open/preamble``: an agent with no key (an open cluster), where a
  preamble proves nothing: the byte budget is what bounds its memory;
- ``idle``: an agent with a key; ``--connections`` x 4 idle connections
  reopened as they are closed, and the stream limits do the work.

Printed per scenario: the agent's RSS when idle, its peak (VmHWM) and its RSS
at the end of the attack, the frames started (header sent), the frames the agent took whole, the refusals counted in /status by
reason, the slowest /health answer during the attack, and whether the agent
kept its peer (a second agent, joined before the attack) alive.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from peer.runtime.keys import generate_key
from peer.runtime.stream_auth import NONCE_SIZE, PreambleSealer
from peer.runtime.wire import MAX_STREAM_FRAME, Keyring
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for

BODY = os.urandom(MAX_STREAM_FRAME)


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak) of a process, in MB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


def attack_header(kind: str) -> bytes:
    if kind == "legacy":
        return len(BODY).to_bytes(4, "big")
    keyring = Keyring([os.urandom(32)]) if kind == "forged" else None
    return PreambleSealer(keyring).seal(len(BODY), now_ms=int(time.time() * 1000), nonce=os.urandom(NONCE_SIZE))


def attacker(target: tuple[str, int], source: str, kind: str, stop: threading.Event, sent: list[int]) -> None:
    while not stop.is_set():
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((source, 0))
                sock.settimeout(2.0)
                sock.connect(target)
                if kind == "idle":
                    while not stop.is_set() and not sock.recv(1):
                        pass  # until the agent closes it
                    continue
                sock.sendall(attack_header(kind))
                sent[0] += 1
                sock.sendall(BODY)
                sock.recv(1)  # until the agent closes it
        except OSError:
            time.sleep(0.01)  # refused or reset: at once again


def run(scenario: str, connections: int, seconds: float, workdir: Path) -> dict[str, Any]:
    keyed = not scenario.startswith("open")
    kind = scenario.split("/")[-1]
    logs = workdir / scenario.replace("/", "-")
    logs.mkdir()
    with LocalCluster(logs, profile="local", key=generate_key() if keyed else None) as cluster:
        target = cluster.add()
        cluster.wait_api([target], 30)
        other = cluster.add()
        wait_for(lambda: cluster.converged({target.name: "alive", other.name: "alive"}), 30, "the pair to join")
        time.sleep(2)
        idle = memory(target.pid)["VmRSS"]
        stop, sent = threading.Event(), [0]
        count = connections * 4 if kind == "idle" else connections
        threads = [
            threading.Thread(target=attacker, args=(target.bind, f"127.0.0.{2 + i % 250}", kind, stop, sent), daemon=True)
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        slowest = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            slowest = max(slowest, health_time(target))
            time.sleep(0.2)
        during = memory(target.pid)
        stop.set()
        for thread in threads:
            thread.join(5)
        status = target.call("/status")
        refused = {reason: n for reason, n in status["transport"]["streams_refused"].items() if n}
        return {
            "scenario": scenario,
            "rss_idle_mb": round(idle, 1),
            "rss_peak_mb": round(during["VmHWM"], 1),
            "rss_end_mb": round(during["VmRSS"], 1),
            "frames_started": sent[0],
            "refused": refused,
            "streams_in": status["transport"]["streams_in"],
            "health_max_ms": round(slowest * 1000, 1),
            "peer_alive": cluster.converged({target.name: "alive", other.name: "alive"}),
        }


def health_time(agent: AgentProcess) -> float:
    start = time.perf_counter()
    agent.call("/health", timeout=5.0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true", help="8 connections for 3 s, for a smoke run")
    parser.add_argument("--scenario", action="append", help="keyed/legacy, keyed/forged, open/preamble, idle (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    connections, seconds = (8, 3.0) if args.quick else (args.connections, args.seconds)
    scenarios = args.scenario or ["keyed/legacy", "keyed/forged", "open/preamble", "idle"]
    with tempfile.TemporaryDirectory(prefix="stream-abuse-") as workdir:
        results = [run(scenario, connections, seconds, Path(workdir)) for scenario in scenarios]
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(f"{connections} attacking connections ({connections * 4} for idle), {seconds:g} s, 8 MiB frames")
    for result in results:
        print(
            f"{result['scenario']:>14}: RSS {result['rss_idle_mb']} MB idle, {result['rss_peak_mb']} peak, "
            f"{result['rss_end_mb']} end; {result['frames_started']} frames started, {result['streams_in']} delivered; "
            f"/health max {result['health_max_ms']} ms; peer alive {result['peer_alive']}; refused {result['refused']}"
        )


if __name__ == "__main__":
    main()
