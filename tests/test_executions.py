"""The one rule of what counts as a duplicate execution (``peer.jobs.executions``),
and how the real-process chaos harness maps its journal onto it."""

from __future__ import annotations

from peer.jobs.executions import Execution, find_duplicates
from peer.tools.chaos import JournalLine, journal_execution

RUN = "job@2026-01-01T00:00:00Z"


def test_a_start_while_another_execution_is_going_on_is_a_duplicate() -> None:
    going = Execution(RUN, 1.0)  # not stopped yet
    running = Execution(RUN, 1.0, end=5.0)
    assert find_duplicates([going, Execution(RUN, 2.0)]) == [(1, 0)]
    assert find_duplicates([running, Execution(RUN, 4.9)]) == [(1, 0)]
    # The first one stopped (without success) as the second started: a re-run, not a duplicate.
    assert find_duplicates([running, Execution(RUN, 5.0)]) == []


def test_a_start_after_a_success_is_a_duplicate_unless_the_success_died_unseen() -> None:
    succeeded = Execution(RUN, 1.0, end=2.0, succeeded=True)
    assert find_duplicates([succeeded, Execution(RUN, 10.0)]) == [(1, 0)]
    lost = Execution(RUN, 1.0, end=2.0, succeeded=True, success_lost=True)
    assert find_duplicates([lost, Execution(RUN, 10.0)]) == []
    # Lost or not, a success still running when the next one starts is overlapped.
    assert find_duplicates([lost, Execution(RUN, 1.5)]) == [(1, 0)]


def test_a_retry_after_a_failure_or_a_death_is_not_a_duplicate() -> None:
    failed = Execution(RUN, 1.0, end=2.0)
    retried = Execution(RUN, 3.0, end=4.0, succeeded=True)
    assert find_duplicates([failed, retried]) == []
    # A third start after the retry succeeded is one, and names the retry.
    assert find_duplicates([failed, retried, Execution(RUN, 6.0)]) == [(2, 1)]


def test_executions_are_ordered_by_start_and_runs_kept_apart() -> None:
    other = Execution("other@2026-01-01T00:00:00Z", 0.0)  # going on, but another run
    later = Execution(RUN, 7.0)
    first = Execution(RUN, 1.0, end=2.0, succeeded=True)
    # Given out of order: the later one is the duplicate, of the first; the other run has none.
    assert find_duplicates([other, later, first]) == [(1, 2)]
    # Two that start at once: the one given first counts as earlier.
    a, b = Execution(RUN, 1.0), Execution(RUN, 1.0)
    assert find_duplicates([a, b]) == [(1, 0)]
    assert find_duplicates([]) == []


def test_the_first_earlier_execution_that_rules_one_out_is_named() -> None:
    failed = Execution(RUN, 1.0, end=2.0)
    going = Execution(RUN, 3.0)
    succeeded = Execution(RUN, 4.0, end=4.5, succeeded=True)
    found = find_duplicates([failed, going, succeeded, Execution(RUN, 6.0)])
    assert found == [(2, 1), (3, 1)]


def test_a_journal_line_returned_at_once_unless_its_node_was_killed_after_it_started() -> None:
    line = JournalLine(RUN, 1, "a", 1000)
    assert journal_execution(line, []) == Execution(RUN, 1000, end=1000, succeeded=True)
    assert journal_execution(line, [500]) == Execution(RUN, 1000, end=1000, succeeded=True)  # killed before: no matter
    # Killed at its start or after it: it may have run until the first such kill, and not succeeded.
    assert journal_execution(line, [4000, 1000, 500]) == Execution(RUN, 1000, end=1000)
    assert journal_execution(line, [4000, 2500]) == Execution(RUN, 1000, end=2500)
