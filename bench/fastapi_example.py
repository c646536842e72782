"""The FastAPI example under a crash and a rollout: does every tick run once, is every result
readable, does the cron job's new definition roll out once?

    python bench/fastapi_example.py [--duration S] [--kill-at S] [--down S] [--submit-every S]
                                    [--no-rollout] [--no-old-restart] [--quick] [--keep DIR]

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
Then (unless ``--no-rollout``) a rolling deploy of version 2 of the app
(``APP_VERSION=2``: the cron job's definition carries it), as a deploy does it
(``FastApiReplicas.roll``): each replica in turn sent SIGTERM (uvicorn shuts
down, the node leaves), its exit waited for (within the drain timeout + 10 s),
started again on version 2 and waited for until ready; once the first runs
version 2 and a tick has run with its definition, the last replica still on
version 1 is restarted on version 1 (unless ``--no-old-restart``): an old
replica starting in the middle of the rollout. 5 s after the last is ready,
the ticks from the end of the first phase's window to 3 s before that are
counted: due, once, twice, never; the tick where the definition switched to
version 2 and whether any later one ran with version 1's (the README: it
switches once and never goes back); the ticks that ran on version 1's code
with version 2's definition; and each stop's exit.

Exit status 1 if a tick never ran, a duplicate was found, a result was not
readable everywhere, the definition went back to version 1, or a stop was not
clean (SIGTERM answered by a complete shutdown, the node seen leaving, the exit
within the timeout).
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
from peer.testing.services import FastApiReplica, FastApiReplicas, RollStep
from peer.tools.chaos import JournalLine, duplicates, ticks_between

EVERY_MS = 1000
MARGIN_MS = 3000
READY_TIMEOUT = 90.0
ROLL_TAIL = 5.0  # seconds of ticks after the last replica of the rollout is ready


def now_ms() -> int:
    return int(time.time() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of running, from all ready (60)")
    parser.add_argument("--kill-at", type=float, default=20.0, help="seconds in, kill -9 the lease holder (20)")
    parser.add_argument("--down", type=float, default=3.0, help="seconds before it is started again (3)")
    parser.add_argument("--submit-every", type=float, default=3.0, help="seconds between one-offs (3)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rollout", action=argparse.BooleanOptionalAction, default=True, help="then roll version 2 out (on)")
    parser.add_argument("--old-restart", action=argparse.BooleanOptionalAction, default=True,
                        help="restart an old replica midway through the rollout (on)")  # fmt: skip
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
        steps: list[RollStep] = []
        roll_ended = ended
        if args.rollout:
            print(f"rolling version 2 out to {args.replicas} replicas"
                  + (", an old one restarting midway" if args.old_restart else ""))  # fmt: skip
            steps = replicas.roll("2", ready_timeout=READY_TIMEOUT, old_restart_after=1 if args.old_restart else None)
            time.sleep(ROLL_TAIL)
            roll_ended = now_ms()
        time.sleep(MARGIN_MS / 1000 + 1)
        lines = replicas.journal()
        stop_timeout = replicas.drain_timeout + 10.0

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
    summary: dict[str, Any] = {
        "ticks": len(ticks), "once": per_tick[1], "twice": twice, "reruns": reruns, "duplicates": len(dupes),
        "missing": len(missing), "submitted": len(submitted), "refused": len(refused), "unreadable": len(unreadable),
    }  # fmt: skip
    failed = bool(missing or dupes or unreadable)
    if args.rollout:
        rollout = report_rollout(lines, steps, ticks_between(ended - MARGIN_MS, roll_ended - MARGIN_MS, EVERY_MS), deaths, stop_timeout)
        summary["rollout"] = rollout
        failed = failed or bool(rollout["missing"] or rollout["duplicates"] or rollout["reverted"] or rollout["switched_at"] is None)
        failed = failed or rollout["unclean_stops"] > 0
    print(json.dumps(summary))
    return 1 if failed else 0


def report_rollout(
    lines: list[dict[str, Any]], steps: list[RollStep], ticks: list[int], deaths: dict[str, list[int]], stop_timeout: float
) -> dict[str, Any]:
    """Print the rollout's figures; return them for the summary line."""
    began = steps[0].stopped_ms
    counts = Counter(line["tick_ms"] for line in lines if line["tick_ms"] in ticks)
    per_tick = Counter(counts[tick] for tick in ticks)
    missing = [tick for tick in ticks if counts[tick] == 0]
    journal = [JournalLine(line["run"], line["attempt"], line["node"], line["start_ms"]) for line in lines]
    dupes = [pair for pair in duplicates(journal, deaths) if pair[0].tick in ticks]
    twice = sum(n - 1 for n in counts.values() if n > 1)
    new = sorted(line["tick_ms"] for line in lines if line["version"] == "2")
    switched_at = new[0] if new else None
    reverted = sorted(
        {line["tick_ms"] for line in lines if switched_at is not None and line["tick_ms"] > switched_at and line["version"] != "2"}
    )
    mixed = [line for line in lines if line["version"] == "2" and line["code"] == "1"]
    first_ready = next((step.ready_ms for step in steps if step.version == "2"), None)

    print()
    took = (steps[-1].ready_ms - began) / 1000
    print(f"rollout to version 2     {len(steps)} restarts in {took:.1f} s (SIGTERM of the first to the last ready)")
    for step in steps:
        code = "still running: killed" if step.exit_code is None else str(step.exit_code)
        print(f"  {step.name} {step.old_version} -> {step.version}   "
              f"SIGTERM at {(step.stopped_ms - began) / 1000:5.1f} s, exit {code} after {step.exit_s:.2f} s "
              f"(timeout {stop_timeout:g} s), shutdown {'complete' if step.graceful else 'NOT complete'}, "
              f"{'seen leaving' if step.left else 'NOT seen leaving'}; ready {step.ready_s:.1f} s after its start")  # fmt: skip
    print(f"ticks due                {len(ticks)} (from the first phase's last to 3 s before the end)")
    print(f"  ran once               {per_tick[1]}")
    print(f"  ran twice or more      {sum(n for count, n in per_tick.items() if count > 1)}  ({len(dupes)} duplicates)")
    print(f"  never ran              {len(missing)}")
    by = Counter(f"{line['node']} on v{line['code']}" for line in lines if line["tick_ms"] in ticks)
    print(f"  run by replica         {dict(sorted(by.items()))}")
    if switched_at is None:
        print("definition switched      NEVER: no tick ran with version 2's definition")
    else:
        clock = time.strftime("%H:%M:%S", time.gmtime(switched_at / 1000))
        after = f", {(switched_at - first_ready) / 1000:+.1f} s from the first version-2 replica ready" if first_ready else ""
        print(f"definition switched      at the tick of {clock} UTC ({(switched_at - began) / 1000:.1f} s into the rollout{after})")
    print(f"  ticks after it on v1's {len(reverted)}" + (f": {reverted}" if reverted else " (it never went back)"))
    old_restart = [step for step in steps if step.version == step.old_version]
    if old_restart and switched_at is not None:
        old = old_restart[0]
        print(f"  old replica restarted  {old.name} on version {old.version}, SIGTERM {(old.stopped_ms - switched_at) / 1000:.1f} s "
              f"after the switch; ready {(old.ready_ms - began) / 1000:.1f} s into the rollout")  # fmt: skip
    print(f"  on old code, new def   {len(mixed)} executions (version 1's code running version 2's definition)"
          + (f", on {dict(sorted(Counter(line['node'] for line in mixed).items()))}" if mixed else ""))  # fmt: skip
    unclean = [step for step in steps if not step.clean]
    exits = dict(sorted(Counter(str(step.exit_code) for step in steps).items()))
    print(f"  stops                  {len(steps) - len(unclean)} of {len(steps)} clean; exit statuses {exits} "
          f"(-15: uvicorn re-raises the SIGTERM it handled, after a complete shutdown)")  # fmt: skip
    for entry in [f"duplicate: {d.run} on {d.node} after {e.node}" for d, e in dupes] + [f"unclean stop: {step}" for step in unclean]:
        print(f"    {entry}")
    return {
        "ticks": len(ticks), "once": per_tick[1], "twice": twice, "duplicates": len(dupes), "missing": len(missing),
        "switched_at": switched_at, "reverted": len(reverted), "old_code_new_definition": len(mixed),
        "exits": [step.exit_code for step in steps], "unclean_stops": len(unclean),
        "exit_s_max": round(max(step.exit_s for step in steps), 2),
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
