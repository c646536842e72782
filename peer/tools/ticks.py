"""Did every tick run once? ``python -m peer.tools.ticks``.

    python -m peer.tools.ticks JOURNAL --jobs JOBS_FILE [--job ID] [--since S] [--slack S] [--json]

Theory of operation. The journal is the ground truth of what ran: a file to
which ``peer.testing.samples:journal`` appends one line per execution (run id,
attempt, node, start time), from every agent that shares it (the compose
experiment's volume, ``docker-compose.yml``). The jobs file says which jobs
are cron jobs in mode ``one`` and when their ticks fall. For each such job
that journals, the ticks due from the first one in the journal (or from
``--since`` seconds ago) until ``--slack`` seconds ago (a tick due since may
not have started yet) are each looked up in the journal: a tick with no line
never ran, one with two or more lines ran more than once (each line's
attempt and node are shown: a higher attempt is a re-run after a failure or
a crash, not a duplicate of a graceful operation). Exit status 0 when every
tick ran once, 1 otherwise, 2 when there was nothing to check.

The agents' own records (``peer runs``) cannot show this: a run has one
record, whoever ran it and however often.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from peer.jobs.definition import JobError, JobSpec, load_jobs_file
from peer.jobs.runs import format_time, tick_run_id
from peer.jobs.targets import CallTarget
from peer.tools.chaos import JournalLine, read_journal

JOURNAL_CALL = "peer.testing.samples:journal"
DEFAULT_SLACK = 5.0  # seconds: a tick due more recently may not have started yet
MAX_TICKS = 1_000_000  # ticks judged per job, at most (11 days of @every 1s)
SHOWN = 20  # problem ticks listed per kind; the counts cover them all

EXIT_OK, EXIT_PROBLEM, EXIT_NOTHING = 0, 1, 2


@attrs.frozen
class JobTicks:
    """One job's ticks in the window, judged against the journal."""

    job: str
    schedule: str
    first_ms: int | None  # the first tick judged (None: none due)
    last_ms: int | None
    due: int
    once: int
    missing: tuple[str, ...]  # run ids of ticks with no execution
    repeated: dict[str, tuple[JournalLine, ...]]  # run id -> its executions (two or more)
    per_node: dict[str, int]  # executions in the window, per node

    @property
    def ok(self) -> bool:
        return not self.missing and not self.repeated

    def document(self) -> dict[str, Any]:
        return {
            "job": self.job, "schedule": self.schedule, "due": self.due, "once": self.once,
            "first": None if self.first_ms is None else format_time(self.first_ms),
            "last": None if self.last_ms is None else format_time(self.last_ms),
            "missing": list(self.missing),
            "repeated": {run: [attrs.asdict(line) for line in lines] for run, lines in self.repeated.items()},
            "per_node": self.per_node, "ok": self.ok,
        }  # fmt: skip


def journalled_jobs(specs: Sequence[JobSpec]) -> list[JobSpec]:
    """The cron jobs in mode ``one`` that journal their executions."""
    return [
        spec for spec in specs
        if spec.schedule is not None and spec.mode == "one" and isinstance(spec.target, CallTarget) and spec.target.function == JOURNAL_CALL
    ]  # fmt: skip


def judge(spec: JobSpec, lines: Sequence[JournalLine], *, now_ms: int, since_ms: int | None, slack_ms: int) -> JobTicks:
    """``spec``'s ticks after ``since_ms`` (None: from its first journalled
    tick, included) until ``now_ms - slack_ms``, against the journal."""
    assert spec.schedule is not None
    by_run: dict[str, list[JournalLine]] = defaultdict(list)
    for line in lines:
        if line.job == spec.id:
            by_run[line.run].append(line)
    ticks_seen = sorted(_tick_ms(run) for run in by_run)
    start = since_ms if since_ms is not None else (ticks_seen[0] - 1 if ticks_seen else None)
    due = [] if start is None else spec.schedule.ticks_between(start, now_ms - slack_ms, MAX_TICKS)
    missing: list[str] = []
    repeated: dict[str, tuple[JournalLine, ...]] = {}
    per_node: Counter[str] = Counter()
    for tick in due:
        run = tick_run_id(spec.id, tick)
        executions = by_run.get(run, [])
        per_node.update(line.node for line in executions)
        if not executions:
            missing.append(run)
        elif len(executions) > 1:
            repeated[run] = tuple(sorted(executions, key=lambda line: line.start_ms))
    return JobTicks(
        spec.id, spec.schedule.text, due[0] if due else None, due[-1] if due else None, len(due),
        len(due) - len(missing) - len(repeated), tuple(missing), repeated, dict(sorted(per_node.items())),
    )  # fmt: skip


def _tick_ms(run: str) -> int:
    try:
        return JournalLine(run, 1, "", 0).tick
    except (IndexError, ValueError):
        return 0  # not a tick's run id (a submitted run): sorts first, judged by nothing


def format_report(results: Sequence[JobTicks]) -> str:
    out: list[str] = []
    for result in results:
        if result.due == 0:
            out.append(f"{result.job} ({result.schedule}, mode one): no tick due yet in the journal's window")
            continue
        assert result.first_ms is not None and result.last_ms is not None
        out.append(
            f"{result.job} ({result.schedule}, mode one): {result.due} ticks due from {format_time(result.first_ms)} "
            f"to {format_time(result.last_ms)}: {result.once} ran once, {len(result.repeated)} more than once, "
            f"{len(result.missing)} never"
        )
        for run, lines in list(result.repeated.items())[:SHOWN]:
            executions = ", ".join(f"attempt {line.attempt} on {line.node} at {format_time(line.start_ms)}" for line in lines)
            out.append(f"  ran {len(lines)} times: {run}: {executions}")
        for run in result.missing[:SHOWN]:
            out.append(f"  never ran: {run}")
        hidden = max(0, len(result.repeated) - SHOWN) + max(0, len(result.missing) - SHOWN)
        if hidden:
            out.append(f"  ... and {hidden} more (--json lists them all)")
        nodes = ", ".join(f"{node} {count}" for node, count in result.per_node.items())
        out.append(f"  executions per node: {nodes or 'none'}")
    verdict = all(result.ok for result in results) and any(result.due for result in results)
    out.append("OK: every tick ran exactly once" if verdict else "NOT OK" if any(result.due for result in results) else "nothing to check")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peer.tools.ticks", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("journal", type=Path, help="the journal file the jobs append to")
    parser.add_argument("--jobs", required=True, help="the agents' jobs file: the cron jobs in mode one calling " + JOURNAL_CALL)
    parser.add_argument("--job", action="append", help="judge only this job (repeatable; default: every such job)")
    parser.add_argument("--since", type=float, help="judge the ticks of the last S seconds (default: since each job's first line)")
    parser.add_argument(
        "--slack", type=float, default=DEFAULT_SLACK, help=f"leave out ticks due in the last S seconds (default {DEFAULT_SLACK:g})"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of the report")
    args = parser.parse_args(argv)
    try:
        specs = journalled_jobs(load_jobs_file(args.jobs))
    except JobError as error:
        print(f"ticks: error: {error}", file=sys.stderr)
        return EXIT_NOTHING
    if args.job:
        specs = [spec for spec in specs if spec.id in args.job]
    if not specs:
        print(f"ticks: error: no cron job in mode one calling {JOURNAL_CALL} to judge in {args.jobs}", file=sys.stderr)
        return EXIT_NOTHING
    now_ms = int(time.time() * 1000)
    since_ms = None if args.since is None else now_ms - int(args.since * 1000)
    lines = read_journal(args.journal)
    results = [judge(spec, lines, now_ms=now_ms, since_ms=since_ms, slack_ms=int(args.slack * 1000)) for spec in specs]
    if args.json:
        print(json.dumps({"jobs": [result.document() for result in results]}, indent=1))
    else:
        print(format_report(results))
    if not any(result.due for result in results):
        return EXIT_NOTHING
    return EXIT_OK if all(result.ok for result in results) else EXIT_PROBLEM


if __name__ == "__main__":
    raise SystemExit(main())
