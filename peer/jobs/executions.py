"""What counts as a duplicate execution of a run: the one rule every checker uses.

The design promises that every run executes at least once, and exactly once
with stable membership and across graceful operations; a second execution
is allowed only as a re-run of what a crashed node was running, or had
finished without anyone else hearing of it. So an execution of a run is a
*duplicate* when it started

- while an earlier execution of the same run was still going on, or
- after an earlier execution had succeeded, unless that success died with
  its node before any other node knew of it (running it again is
  at-least-once doing its job).

An earlier execution that stopped without success before the later one
started (it failed, was cancelled, or its node died running it) leaves
room for the later one: that is a retry or a failover, not a duplicate.

Two checkers count duplicates: the simulator (``sim.jobs_scenario``), which
knows each execution's end and outcome, and the real-process chaos harness
(``peer.tools.chaos``), which has only a journal of starts and its own
record of kills. Each maps its records onto ``Execution`` and counts with
``find_duplicates``, so the two cannot drift apart. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import attrs


@attrs.frozen
class Execution:
    """One execution of a run, as a checker saw it. Times may be in any
    unit, as long as it is the same for every execution compared."""

    run: str
    start: float
    # When it stopped running: finished, cancelled, or its node died. None:
    # it had not stopped when the checker looked.
    end: float | None = None
    succeeded: bool = False
    # Its success died with its node before any other node knew of it.
    success_lost: bool = False

    def rules_out_rerun_at(self, start: float) -> bool:
        """Does this execution make one of its run starting at ``start``
        (no earlier than this one) a duplicate?"""
        going_on = self.end is None or self.end > start
        return going_on or (self.succeeded and not self.success_lost)


def find_duplicates(executions: Sequence[Execution]) -> list[tuple[int, int]]:
    """Every duplicate among ``executions``, as (its index, the index of the
    first earlier execution of its run that rules it out). Runs come in the
    order they first appear; within a run, executions in the order they
    started (those that started at once, in the order given), which is also
    what "earlier" means."""
    by_run: dict[str, list[int]] = defaultdict(list)
    for index, execution in enumerate(executions):
        by_run[execution.run].append(index)
    found: list[tuple[int, int]] = []
    for indices in by_run.values():
        ordered = sorted(indices, key=lambda index: executions[index].start)
        for position, index in enumerate(ordered):
            start = executions[index].start
            earlier = next((other for other in ordered[:position] if executions[other].rules_out_rerun_at(start)), None)
            if earlier is not None:
                found.append((index, earlier))
    return found
