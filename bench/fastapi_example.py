"""The FastAPI example under a crash: does every tick run once, is every result readable?

    python bench/fastapi_example.py [--duration S] [--kill-at S] [--down S] [--submit-every S] [--quick] [--keep DIR]

Issue 14's target for ``examples/fastapi``: three uvicorn replicas of the app, each
embedding a node (``peer.testing.services.FastApiReplicas``: 127.0.0.1, profile
``lan``, a cluster key, every process tracked by PID and killed at the end,
whatever happened). Its cron job ``heartbeat`` (``@every 1s``, mode ``one``)
appends a JSON line per execution to its replica's journal, outside the nodes.
Once every replica answers ``/health`` 200, for ``--duration`` seconds (60):

- every ``--submit-every`` seconds (3) a one-off ``summarize`` is submitted
  (``POST /jobs/summarize``) through the next running replica in turn;
- at ``--kill-at`` seconds (20), the replica that ran the latest tick (the cron
  job's lease holder) is ``kill -9``ed, and ``--down`` seconds (3) later
  started again under the same name and ports.

Then, with every replica up, each submitted run's result is read through every
replica (``GET /results/{run}?wait=30``), and the journals are counted. Ticks
are those of the schedule from 3 s after the start to 3 s before the end (not
owed yet / maybe not journalled yet). Printed: ticks due, how many ran once,
twice, never (listed); second executions split into those the README allows
after a ``kill -9`` (a re-run of what the killed replica was running or had
finished unseen: ``peer.tools.chaos.duplicates``) and duplicates; how late the
ticks around the kill started; and the results readable from every replica.
Exit status 1 if a tick never ran, a duplicate was found, or a result was not
readable everywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from peer.runtime.keys import generate_key
from peer.testing.services import FastApiReplica, FastApiReplicas
from peer.tools.chaos import JournalLine, duplicates, ticks_between

EVERY_MS = 1000
MARGIN_MS = 3000
READY_TIMEOUT = 90.0


def now_ms() -> int:
    return int(time.time() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of running, from all ready (60)")
    parser.add_argument("--kill-at", type=float, default=20.0, help="seconds in, kill -9 the lease holder (20)")
    parser.add_argument("--down", type=float, default=3.0, help="seconds before it is started again (3)")
    parser.add_argument("--submit-every", type=float, default=3.0, help="seconds between one-offs (3)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 s, the kill at 8 s")
    parser.add_argument("--keep", type=Path, help="work in this folder (journals, logs) and leave it")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.kill_at = 20.0, 8.0
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="fastapi-example-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.replicas} replicas, @every 1s for {args.duration:g} s, kill -9 at {args.kill_at:g} s, "
          f"back {args.down:g} s later; work in {workdir}")  # fmt: skip

    with FastApiReplicas(workdir, args.replicas, key=generate_key()) as replicas:
        launched = time.monotonic()
        replicas.start()
        replicas.wait_ready(READY_TIMEOUT)
        print(f"ready: all {args.replicas} answer /health 200 after {time.monotonic() - launched:.1f} s")
        began = now_ms()
        submitted: dict[str, tuple[str, float]] = {}  # run -> (via, expected total)
        refused: list[str] = []
        victim: FastApiReplica | None = None
        killed_at = restarted_at = 0
        turn = 0
        next_submit = time.monotonic()
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < args.duration:
            if victim is None and elapsed >= args.kill_at:
                latest = max(replicas.journal(), key=lambda line: line["tick_ms"])
                victim = next(replica for replica in replicas if replica.name == latest["node"])
                killed_at = now_ms()
                victim.kill()
                print(f"{elapsed:5.1f} s  kill -9 {victim.name} (it ran tick {latest['tick']})")
            if victim is not None and not restarted_at and elapsed >= args.kill_at + args.down:
                victim.start()
                restarted_at = now_ms()
                print(f"{elapsed:5.1f} s  restarted {victim.name}")
            if time.monotonic() >= next_submit:
                up = [replica for replica in replicas if replica.running and (replica is not victim or replica.ready())]
                replica = up[turn % len(up)]
                turn += 1
                numbers = [float(turn), 2.0, 0.5]
                try:
                    submitted[replica.submit(numbers, delay=0.5)] = (replica.name, sum(numbers))
                except Exception as error:  # noqa: BLE001 - counted and shown, not hidden
                    refused.append(f"{replica.name}: {error}")
                next_submit += args.submit_every
            time.sleep(0.05)
        ended = now_ms()
        if victim is not None:
            replicas.wait_ready(READY_TIMEOUT, [victim])
        print(f"ran {args.duration:g} s; reading {len(submitted)} results through each replica")

        unreadable: list[str] = []
        for run_id, (via, total) in submitted.items():
            for replica in replicas:
                response = replica.result(run_id, wait=30)
                body: dict[str, Any] = response.json() if response.headers.get("content-type") == "application/json" else {}
                if response.status_code != 200 or body.get("result", {}).get("total") != total:
                    unreadable.append(f"{run_id} (via {via}) through {replica.name}: {response.status_code} {response.text[:200]}")
        time.sleep(MARGIN_MS / 1000 + 1)
        lines = replicas.journal()

    ticks = ticks_between(began + MARGIN_MS, ended - MARGIN_MS, EVERY_MS)
    counts = Counter(line["tick_ms"] for line in lines)
    per_tick = Counter(counts[tick] for tick in ticks)
    missing = [tick for tick in ticks if counts[tick] == 0]
    deaths = {victim.name: [killed_at]} if victim is not None else {}
    journal = [JournalLine(line["run"], line["attempt"], line["node"], line["start_ms"]) for line in lines]
    dupes = [pair for pair in duplicates(journal, deaths) if pair[0].tick in ticks]
    twice = sum(n - 1 for tick, n in counts.items() if tick in ticks and n > 1)
    reruns = twice - len(dupes)
    around = [line for line in lines if line["tick_ms"] in ticks and killed_at - EVERY_MS <= line["tick_ms"] <= restarted_at + 10_000]
    late = sorted((line["start_ms"] - line["tick_ms"]) / 1000 for line in lines if line["tick_ms"] in ticks)
    first_by: dict[int, dict[str, Any]] = {}
    for line in sorted(lines, key=lambda line: line["start_ms"]):
        first_by.setdefault(line["tick_ms"], line)
    on = Counter(first_by[tick]["node"] for tick in ticks if tick in first_by)

    print()
    print(f"ticks due                {len(ticks)}")
    print(f"  ran once               {per_tick[1]}")
    print(f"  ran twice or more      {sum(n for count, n in per_tick.items() if count > 1)}"
          f"  ({reruns} re-runs allowed after the kill, {len(dupes)} duplicates)")  # fmt: skip
    clock = [time.strftime("%H:%M:%S", time.gmtime(tick / 1000)) for tick in missing]
    print(f"  never ran              {len(missing)}" + (f": {clock} UTC" if missing else ""))
    print(f"  run by replica         {dict(sorted(on.items()))}")
    if late:
        print(f"start after its tick     median {statistics.median(late):.3f} s, max {late[-1]:.3f} s")
    if around:
        worst = max(around, key=lambda line: line["start_ms"] - line["tick_ms"])
        print(f"  around the kill        {len(around)} executions, latest start {(worst['start_ms'] - worst['tick_ms']) / 1000:.1f} s "
              f"after its tick (on {worst['node']})")  # fmt: skip
    print(f"one-offs submitted       {len(submitted)} ({len(refused)} refused)")
    print(f"  readable everywhere    {len(submitted) - len({entry.split(' ')[0] for entry in unreadable})} of {len(submitted)}"
          f" (through each of {args.replicas} replicas)")  # fmt: skip
    for entry in refused + unreadable + [f"duplicate: {d.run} on {d.node} after {e.node}" for d, e in dupes]:
        print(f"    {entry}")
    print(json.dumps({
        "ticks": len(ticks), "once": per_tick[1], "twice": twice, "reruns": reruns, "duplicates": len(dupes),
        "missing": len(missing), "submitted": len(submitted), "refused": len(refused), "unreadable": len(unreadable),
    }))  # fmt: skip
    return 1 if missing or dupes or unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
