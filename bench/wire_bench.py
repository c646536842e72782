"""The wire codec's cost: encode + decode per second, open, signed and encrypted.

    python bench/wire_bench.py [--seconds 2] [--quick] [--json]

Each mode encodes a batch of messages and decodes the frame with a second
codec holding the same key (so every keyed frame also passes the replay
cache, as on a node), for two payloads: a probe-sized datagram (a ping and
an ack) and a full gossip datagram (packed up to the lan packet budget with
alive claims, as the membership core sends them). It reports frames per
second (best of 3 runs of ``--seconds`` each, one core) and the frame's size.
Timings vary with the machine's load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Any

from membership.config import profile
from membership.messages import ENVELOPE_RESERVE, Ack, Alive, Ping
from peer.runtime.wire import Codec, Encryption, Keyring

KEY = bytes(range(32))


def payloads() -> dict[str, list[Any]]:
    budget = profile("lan").packet_budget - ENVELOPE_RESERVE
    gossip: list[Any] = []
    probe = Codec()
    for index in itertools.count():
        candidate = gossip + [Alive(f"node-{index:04d}", 1_700_000_000_000 + index, (f"10.0.{index // 250}.{index % 250}", 7946), b"")]
        if len(probe.encode(candidate)) - 2 > budget:
            break
        gossip = candidate
    return {"probe": [Ping(7, "node-0001", ("10.0.0.1", 7946)), Ack(6)], "gossip": gossip}


def codecs(mode: str) -> tuple[Codec, Codec]:
    if mode == "open":
        return Codec(), Codec()
    encryption = Encryption.ON if mode == "encrypted" else Encryption.OFF
    # A replay cache as large as the frames measured: the cost of a cache that never overflows.
    make = lambda: Codec(  # noqa: E731
        Keyring((KEY,)), encryption=encryption, wall_clock=time.time, random_bytes=os.urandom, replay_capacity=1 << 22
    )
    return make(), make()


def measure(mode: str, batch: list[Any], seconds: float) -> tuple[float, int]:
    best = 0.0
    size = 0
    for _ in range(3):
        sender, receiver = codecs(mode)
        count, started = 0, time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(200):
                frame = sender.encode(batch)
                result = receiver.decode(frame)
            count += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        assert isinstance(result, tuple), result
        best, size = max(best, count / (now - started)), len(frame)
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="0.3 s per run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else args.seconds
    rows = []
    for name, batch in payloads().items():
        for mode in ("open", "signed", "encrypted"):
            rate, size = measure(mode, batch, seconds)
            rows.append({"payload": name, "messages": len(batch), "mode": mode, "frames_per_second": round(rate), "bytes": size})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'payload':<8} {'msgs':>4} {'mode':<10} {'encode+decode/s':>16} {'bytes':>6}")
    for row in rows:
        print(f"{row['payload']:<8} {row['messages']:>4} {row['mode']:<10} {row['frames_per_second']:>16,} {row['bytes']:>6}")


if __name__ == "__main__":
    main()
