"""The run record's transitions: one table, one function that applies it."""

from __future__ import annotations

import pytest

from peer.jobs.runs import TRANSITIONS, RunEvent, RunRecord, RunState, TransitionError, advance

PENDING = RunRecord(id="job@t", job="job", state=RunState.PENDING, owner="a", not_before=5, created=1)


def test_a_run_goes_from_claim_to_outcome() -> None:
    claim = advance(PENDING, RunEvent.CLAIM, 100, attempt=1, owner="b")
    assert (claim.state, claim.started, claim.owner, claim.not_before, claim.finished) == (RunState.RUNNING, 100, "b", None, None)
    done = advance(claim, RunEvent.SUCCEED, 250, result={"n": 1})
    assert (done.state, done.finished, done.result, done.error, done.started) == (RunState.SUCCEEDED, 250, {"n": 1}, None, 100)


def test_a_retry_and_a_hand_back_are_the_next_attempt() -> None:
    claim = advance(PENDING, RunEvent.CLAIM, 100, attempt=1, owner="b").evolve(progress=0.5)
    retry = advance(claim, RunEvent.RETRY, 200, not_before=900, error="boom")
    assert (retry.state, retry.attempt, retry.started, retry.progress, retry.not_before) == (RunState.PENDING, 2, None, None, 900)
    handed = advance(claim, RunEvent.HAND_BACK, 200, error="leaving")
    # A hand-back keeps the progress last reported: the next attempt's reader sees it.
    assert (handed.state, handed.attempt, handed.started, handed.progress) == (RunState.PENDING, 2, None, 0.5)


def test_every_event_is_refused_outside_its_sources() -> None:
    records = {state: PENDING.evolve(state=state) for state in RunState}
    for event, transition in TRANSITIONS.items():
        for state, record in records.items():
            if state in transition.sources:
                assert advance(record, event, 1).state is transition.target
            else:
                with pytest.raises(TransitionError, match=f"cannot {event.value} a {state.value} run"):
                    advance(record, event, 1)


def test_nothing_leaves_a_finished_state() -> None:
    for transition in TRANSITIONS.values():
        assert all(not state.finished for state in transition.sources)
        assert transition.target.finished == (transition.stamp == "finished")
