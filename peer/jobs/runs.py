"""Runs: one execution of a job, as a record in the replicated runs map.

Theory of operation
-------------------
A run is named by what it runs and when it was due, never by who runs it or
by anyone's clock reading: ``report@2026-11-25T23:00:00Z`` is the 23:00 tick
of the cron job ``report`` on every node; ``backup@...@node-3`` is node-3's
run of a job in mode ``all``; a submitted one-off is ``job@<submit time>-<random>``.
So two nodes that both think they own a tick write to the same key, and the
conflict is visible instead of becoming two runs.

A run's record moves through these states, by the events of ``TRANSITIONS``
(the one table of what may follow what; ``advance`` is the one way a
record changes state)::

    pending --claim--> running --succeed/fail/cancel/lose--> succeeded | failed | cancelled | lost
       ^  |               |  ^
       |  |               |  '-- claim (a takeover: attempt + 1)
       '--+-retry/hand-back'
          '--miss/skip/lose--> missed | skipped | lost  (never started)

Every state change is a new write of the whole record. Two writes made
without seeing each other (two claims after a membership change, a claim
against a result not yet received) are both kept by the CRDT, and every
node reads the same winner by one rule, ``PRECEDENCE`` below:

    a higher attempt wins; within an attempt, a later phase wins
    (pending < running < finished); between two running claims of one
    attempt, the claimant ranking higher for the run wins (``peer.jobs.ring.rank``,
    the same on every node whatever its view); then the later timestamp.

So a result is never overwritten by a stale claim, a re-run (attempt + 1)
supersedes the lost owner's record, and a claimant that loses cancels its
run. A finished record expires after the job's result TTL, everywhere.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from crdt.ormap import Register
from peer.jobs.ring import rank


class RunState(enum.Enum):
    PENDING = "pending"  # waiting for its owner: submitted, a retry, or handed back
    RUNNING = "running"  # claimed by its owner, who is running it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # after its last attempt
    CANCELLED = "cancelled"  # replaced by a newer tick, or cancelled by a user
    LOST = "lost"  # its owner vanished too many times, or its node left (mode all)
    MISSED = "missed"  # a tick found later than its grace, not run (misfire policy)
    SKIPPED = "skipped"  # a tick not run because the previous one was still running

    @property
    def phase(self) -> int:
        return PHASE[self]

    @property
    def finished(self) -> bool:
        return PHASE[self] == FINISHED


PENDING_PHASE, RUNNING_PHASE, FINISHED = 0, 1, 2
PHASE: Mapping[RunState, int] = {
    RunState.PENDING: PENDING_PHASE,
    RunState.RUNNING: RUNNING_PHASE,
    RunState.SUCCEEDED: FINISHED,
    RunState.FAILED: FINISHED,
    RunState.CANCELLED: FINISHED,
    RunState.LOST: FINISHED,
    RunState.MISSED: FINISHED,
    RunState.SKIPPED: FINISHED,
}

class RunEvent(enum.Enum):
    """What happens to a run, as the scheduler decides it."""

    CLAIM = "claim"  # its owner starts it (a pending run, a tick, or a takeover of a failed claimant's)
    SUCCEED = "succeed"
    FAIL = "fail"  # after its last attempt
    RETRY = "retry"  # failed with attempts left: pending again, attempt + 1
    HAND_BACK = "hand back"  # its claimant leaves or has restarted: pending again, attempt + 1
    CANCEL = "cancel"  # replaced by a newer tick (overlap policy replace)
    LOSE = "lose"  # its job was removed, its node left or failed, or it failed over too often
    MISS = "miss"  # a tick found later than its grace (misfire policy)
    SKIP = "skip"  # a tick due while the previous one still runs (overlap policy forbid)


@attrs.frozen
class Transition:
    sources: frozenset[RunState]  # the states the event may happen in
    target: RunState
    stamp: str | None = None  # the field that takes the time of the event
    clears: tuple[str, ...] = ()  # fields the new state leaves empty
    next_attempt: bool = False


_UNFINISHED = frozenset({RunState.PENDING, RunState.RUNNING})
TRANSITIONS: Mapping[RunEvent, Transition] = {
    RunEvent.CLAIM: Transition(_UNFINISHED, RunState.RUNNING, "started", ("finished", "progress", "not_before")),
    RunEvent.SUCCEED: Transition(frozenset({RunState.RUNNING}), RunState.SUCCEEDED, "finished", ("error",)),
    RunEvent.FAIL: Transition(frozenset({RunState.RUNNING}), RunState.FAILED, "finished"),
    RunEvent.RETRY: Transition(frozenset({RunState.RUNNING}), RunState.PENDING, None, ("started", "progress"), next_attempt=True),
    RunEvent.HAND_BACK: Transition(frozenset({RunState.RUNNING}), RunState.PENDING, None, ("started",), next_attempt=True),
    RunEvent.CANCEL: Transition(frozenset({RunState.RUNNING}), RunState.CANCELLED, "finished"),
    RunEvent.LOSE: Transition(_UNFINISHED, RunState.LOST, "finished"),
    RunEvent.MISS: Transition(frozenset({RunState.PENDING}), RunState.MISSED, "finished"),
    RunEvent.SKIP: Transition(frozenset({RunState.PENDING}), RunState.SKIPPED, "finished"),
}


class TransitionError(Exception):
    """A transition the table does not allow: a bug in the scheduler."""


def advance(record: RunRecord, event: RunEvent, wall_ms: int, **changes: Any) -> RunRecord:
    """The record after ``event`` at ``wall_ms``: the table's target state,
    its stamp and cleared fields, attempt + 1 where it says so, then
    ``changes`` (what the caller knows: a result, an error, a new attempt)."""
    transition = TRANSITIONS[event]
    if record.state not in transition.sources:
        allowed = ", ".join(sorted(state.value for state in transition.sources))
        raise TransitionError(f"{record.id}: cannot {event.value} a {record.state.value} run (only {allowed})")
    fields: dict[str, Any] = {field: None for field in transition.clears}
    if transition.stamp is not None:
        fields[transition.stamp] = wall_ms
    if transition.next_attempt:
        fields["attempt"] = record.attempt + 1
    return attrs.evolve(record, state=transition.target, **{**fields, **changes})


# Bounds on what a record carries, so that it fits a replicated value.
MAX_ERROR_CHARS = 4000
MAX_PROGRESS_BYTES = 4096


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r:.40}")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r:.40}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r:.40}")
    return value


def _attempt(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an attempt number >= 1, got {value!r:.40}")
    return value


@attrs.frozen
class RunRecord:
    id: str = attrs.field(converter=_str)
    job: str = attrs.field(converter=_str)
    state: RunState = attrs.field(converter=RunState)
    attempt: int = attrs.field(default=1, converter=_attempt)
    owner: str | None = attrs.field(default=None, converter=_optional_str)
    tick: int | None = attrs.field(default=None, converter=_optional_int)  # scheduled time, epoch ms
    node: str | None = attrs.field(default=None, converter=_optional_str)  # mode "all": the node it runs on
    created: int | None = attrs.field(default=None, converter=_optional_int)
    not_before: int | None = attrs.field(default=None, converter=_optional_int)
    started: int | None = attrs.field(default=None, converter=_optional_int)
    finished: int | None = attrs.field(default=None, converter=_optional_int)
    progress: Any = None
    result: Any = None
    error: str | None = attrs.field(default=None, converter=_optional_str)
    spec: Mapping[str, Any] | None = None  # a submitted run's job definition, as submitted
    via: str | None = attrs.field(default=None, converter=_optional_str)  # the node it was submitted through

    def to_wire(self) -> dict[str, Any]:
        wire = attrs.asdict(self, recurse=False)
        wire["state"] = self.state.value
        return {key: value for key, value in wire.items() if value is not None}

    @classmethod
    def from_wire(cls, data: Any) -> RunRecord:
        """A record as stored; ``ValueError`` for anything else (a peer may
        run another version, or be broken)."""
        if not isinstance(data, Mapping):
            raise ValueError("a run record is a map")
        fields = attrs.fields_dict(cls)
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"unknown run record fields: {sorted(map(str, unknown))}")
        if data.get("spec") is not None and not isinstance(data["spec"], Mapping):
            raise ValueError("a run record's spec is a map")
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(str(error)) from None

    def evolve(self, **changes: Any) -> RunRecord:
        return attrs.evolve(self, **changes)


def precedence(register: Register) -> tuple[int, int, int, Any]:
    """The rule at the top, as the runs map's order on concurrent records.
    Garbage (from a broken peer) ranks lowest, so it never hides a record."""
    value = register.value
    try:
        state = RunState(value["state"])
        attempt = value["attempt"]
        if not isinstance(attempt, int):
            raise TypeError
        claimant = rank(value["id"], value["owner"]) if state is RunState.RUNNING else 0
    except (KeyError, TypeError, ValueError):
        return (-1, -1, 0, register.ts)
    return (attempt, PHASE[state], claimant, register.ts)


# -- names -----------------------------------------------------------------------------


def format_time(ms: int) -> str:
    """Epoch ms as UTC ISO 8601, to the second unless it has milliseconds."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_run_id(job: str, tick_ms: int, node: str | None = None) -> str:
    """The run of a cron tick: the same name on every node."""
    name = f"{job}@{format_time(tick_ms)}"
    return f"{name}@{node}" if node is not None else name


def submitted_run_id(job: str, wall_ms: int, rng: random.Random) -> str:
    """A submitted run: its submit time, and a random part so that two
    submits in one millisecond, anywhere, are two runs."""
    return f"{job}@{format_time(wall_ms)}-{rng.getrandbits(24):06x}"


def update_key(run_id: str, rng: random.Random) -> str:
    """A key in the updates map for one update sent to a run."""
    return f"{run_id}/{rng.getrandbits(48):012x}"


def run_of_update(key: str) -> str:
    return key.rpartition("/")[0]


# An entry of the updates map that is no update: a node where someone waits
# for the run's outcome ("readers"), to which the outcome is handed directly.
READER_MARK = "reader:"


def reader_key(run_id: str, node: str) -> str:
    return f"{run_id}/{READER_MARK}{node}"


def reader_of(key: str) -> str | None:
    """The node a reader mark names; None for a real update."""
    mark = key.rpartition("/")[2]
    return mark[len(READER_MARK):] if mark.startswith(READER_MARK) else None
