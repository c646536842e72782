"""The records as this node holds them: the jobs, runs and updates maps as
the scheduler reads and writes them, and the runs it is running.

Theory of operation
-------------------
Every change of a key of the jobs, runs or updates map (written here,
merged, or expired) is loaded here, and this part keeps its tables in step
with the maps: the job definitions, the unfinished (pending and running)
records with when each was written, the latest tick of each job with an
outcome recorded, the pending runs by when they are due, each run's update
keys, the runs this node is running (``Execution``), and the claims of
ended lives it handed on (once each, while the record is unfinished).

Writes. An unfinished record (a pending run, a claim, progress) is soon
replaced by the run's outcome: its gossip waits ``gossip_hold`` (a second)
for that, so a short run spreads once, as its outcome; the nodes that must
know at once have it by push (``peer.jobs.claims``). Unfinished records
live until well past their timeout, finished ones for their job's result
TTL; a finished run's updates go (a retry gets them all again).

Conflicts. A record that reaches us and wins over our claim of a run we
are running (another node's claim, a newer attempt, a cancellation: the
runs map's precedence, ``peer.jobs.runs``, picks the same winner on every
node) stops ours. One that records our own attempt ``lost`` (a node took us
for failed) does not: our outcome, stamped later, supersedes it.

Updates and readers. Data sent to a run is an entry of the updates map,
delivered to the run in order once it runs here. A node where someone waits
on a run that has not finished there (``watch``) writes a reader mark in the
updates map, which the scheduler hands to the run's owner; the outcome goes
directly to every reader (and to the node the run was submitted through); a
mark that comes after the outcome is answered at once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from crdt.values import NotReplicable, replicated_form
from membership.messages import valid_name
from peer.jobs.declared import CodeRevision
from peer.jobs.definition import JobError, JobSpec
from peer.jobs.leases import Lease
from peer.jobs.local import JOBS, LEASES, RUNS, UPDATES, CancelRun, DeliverUpdate, Local, log
from peer.jobs.runs import (
    MAX_ERROR_CHARS,
    MAX_PROGRESS_BYTES,
    RunRecord,
    RunState,
    reader_of,
    run_of_update,
)

# How long a finished run of a job no longer defined stays readable.
DEFAULT_RESULT_TTL = 600.0


@attrs.define
class Execution:
    """A run this node is running."""

    record: RunRecord
    spec: JobSpec
    delivered: set[str] = attrs.Factory(set)
    progress_written: int = 0  # when progress was last written
    progress_due: int | None = None  # when to write progress reported since


@attrs.define
class JobEntry:
    spec: JobSpec
    since: int  # epoch ms the definition took effect: no tick before it is due
    code: CodeRevision | None = None  # the revision declared in code, for a job declared there (peer.jobs.declared)

    def to_wire(self) -> dict[str, Any]:
        """The jobs map's entry (``code`` is a key older peers ignore)."""
        wire: dict[str, Any] = {"spec": self.spec.to_wire(), "since": self.since}
        if self.code is not None:
            wire["code"] = self.code.to_wire()
        return wire

    def next_tick(self, now_ms: int) -> int | None:
        """Epoch ms of the job's next tick due after ``now_ms``; None for a
        job with no schedule, a paused one, or past the last year a cron
        schedule is computed for."""
        schedule = self.spec.schedule
        if schedule is None or self.spec.paused:
            return None
        try:
            return schedule.next_after(max(now_ms, self.since))
        except ValueError:
            return None


@attrs.define(eq=False)
class Records:
    _local: Local
    _jobs: dict[str, JobEntry] = attrs.field(init=False, factory=dict)
    _unfinished: dict[str, RunRecord] = attrs.field(init=False, factory=dict)  # pending and running records
    _pending: int = attrs.field(init=False, default=0)  # how many of them are pending: the cluster's backlog
    _written_at: dict[str, int] = attrs.field(init=False, factory=dict)  # unfinished run -> wall ms of its record's stamp
    # Job in mode one -> the latest tick of it with an outcome recorded.
    _latest_tick: dict[str, int] = attrs.field(init=False, factory=dict)
    _pending_due: list[tuple[int, str]] = attrs.field(init=False, factory=list)  # heap of (not before, run) of pending runs
    _running: dict[str, Execution] = attrs.field(init=False, factory=dict)
    _handed_on: set[str] = attrs.field(init=False, factory=set)  # claims of ended lives we handed on while their grace runs
    _updates: dict[str, set[str]] = attrs.field(init=False, factory=dict)  # run -> its update keys
    _watched: set[str] = attrs.field(init=False, factory=set)  # runs the driver wants to hear of (someone waits on them)
    _watched_changed: set[str] = attrs.field(init=False, factory=set)

    @property
    def jobs(self) -> Mapping[str, JobEntry]:
        return self._jobs

    @property
    def unfinished(self) -> Mapping[str, RunRecord]:
        return self._unfinished

    @property
    def running(self) -> Mapping[str, Execution]:
        return self._running

    @property
    def pending(self) -> int:
        """Pending runs in the runs map (anyone's): the cluster's backlog, as this node sees it."""
        return self._pending

    # -- jobs ------------------------------------------------------------------------------

    def load_job(self, job_id: str) -> tuple[JobEntry | None, JobEntry | None]:
        """The job's entry before and after this change of its definition."""
        register = self._local.store.get(JOBS, job_id)
        entry = None
        if register is not None:
            try:
                entry = job_entry_from_wire(register.value)
            except (JobError, KeyError, TypeError, ValueError):
                self._local.stats.bad_records += 1
                log.warning("job %r: unreadable definition from a peer; ignored", job_id)
        if entry is None:
            old = self._jobs.pop(job_id, None)
            self._latest_tick.pop(job_id, None)
        else:
            old = self._jobs.get(job_id)
            self._jobs[job_id] = entry
        return old, entry

    def spec_of(self, record: RunRecord) -> JobSpec | None:
        if record.spec is not None:
            try:
                return JobSpec.from_wire(record.spec)
            except JobError:
                self._local.stats.bad_records += 1
                return None
        entry = self._jobs.get(record.job)
        return None if entry is None else entry.spec

    def latest_tick(self, job_id: str) -> int:
        """The latest tick of a job in mode one with an outcome recorded; 0 if none."""
        return self._latest_tick.get(job_id, 0)

    # -- runs ------------------------------------------------------------------------------

    def record(self, run_id: str) -> RunRecord | None:
        register = self._local.store.get(RUNS, run_id)
        return None if register is None else parse_run(register.value)

    def records(self) -> Iterator[RunRecord]:
        for _, register in self._local.store.items(RUNS):
            record = parse_run(register.value)
            if record is not None:
                yield record

    def written_at(self, run_id: str) -> int | None:
        """Wall ms of an unfinished record's stamp."""
        return self._written_at.get(run_id)

    def recheck_pending(self, at: int, run_id: str) -> None:
        """Look at this pending run again at ``at``."""
        heapq.heappush(self._pending_due, (at, run_id))

    def pop_due_pending(self, wall_ms: int) -> str | None:
        """The next pending run due by ``wall_ms`` to look at (perhaps no longer pending)."""
        if self._pending_due and self._pending_due[0][0] <= wall_ms:
            _, run_id = heapq.heappop(self._pending_due)
            return run_id
        return None

    def next_pending(self) -> int | None:
        return self._pending_due[0][0] if self._pending_due else None

    def hand_on_once(self, run_id: str) -> bool:
        """Note that we hand on this claim of an ended life; False if we did already."""
        if run_id in self._handed_on:
            return False
        self._handed_on.add(run_id)
        return True

    def write(self, record: RunRecord, spec: JobSpec | None, *, spread_now: bool = False) -> None:
        """Write a record: unfinished ones live until well past their
        timeout; a finished run's updates go (a retry gets them all again).
        ``spread_now``: gossip an unfinished one at once, without its hold."""
        if record.state.finished:
            self._forget_updates(record.id)
            ttl = spec.result_ttl if spec is not None else DEFAULT_RESULT_TTL
        else:
            ttl = (spec.timeout if spec and spec.timeout else 0) + self._local.config.unfinished_ttl
        # An unfinished record (a pending run, a claim, progress) is soon
        # replaced by the run's outcome: its gossip waits for that, and a
        # short run spreads once. The nodes that must know at once (the
        # assignee, the one that would take the run over) have it by push.
        hold = 0.0 if record.state.finished or spread_now else self._local.config.gossip_hold
        if record.state.finished and record.tick is not None and record.node is None:
            self._spread_earlier_claims(record)
        try:
            self._local.store.put(RUNS, record.id, record.to_wire(), ttl=ttl, hold=hold)
        except ValueError as error:
            # Too big to replicate: keep the record, say why, drop the bulk.
            bounded_record = record.evolve(result=None, progress=None, error=bounded(f"{error}; {record.error or ''}"))
            self._local.store.put(RUNS, record.id, bounded_record.to_wire(), ttl=ttl, hold=hold)
        self.load_run(record.id)

    def _spread_earlier_claims(self, outcome: RunRecord) -> None:
        """An outcome of a tick tells a lease's next holder that every
        earlier tick was handled (the look-back of ``peer.jobs.placement``):
        our claims of earlier ticks of the job, still running (a catch-up,
        overlap ``allow``), must not wait their gossip hold behind it."""
        assert outcome.tick is not None
        for execution in list(self._running.values()):
            claim = execution.record
            if claim.job == outcome.job and claim.node is None and claim.tick is not None and claim.tick < outcome.tick:
                self.write(claim, execution.spec, spread_now=True)

    def load_run(self, run_id: str) -> None:
        if run_id in self._watched:
            self._watched_changed.add(run_id)
        register = self._local.store.get(RUNS, run_id)
        record = None if register is None else parse_run(register.value)
        if register is not None and record is None:
            self._local.stats.bad_records += 1  # counted once per change, not per read
        if record is not None and record.state.finished and record.tick is not None and record.node is None and record.job in self._jobs:
            self._latest_tick[record.job] = max(record.tick, self._latest_tick.get(record.job, 0))
        before = self._unfinished.get(run_id)
        self._pending -= before is not None and before.state is RunState.PENDING
        if record is None or record.state.finished:
            self._unfinished.pop(run_id, None)
            self._written_at.pop(run_id, None)
            self._handed_on.discard(run_id)
        else:
            assert register is not None
            self._unfinished[run_id] = record
            self._pending += record.state is RunState.PENDING
            self._written_at[run_id] = register.ts.wall
            if record.state is RunState.PENDING:
                heapq.heappush(self._pending_due, (record.not_before or 0, run_id))
        execution = self._running.get(run_id)
        if execution is None:
            return
        mine = execution.record
        name = self._local.name
        if record is not None and record.state is RunState.RUNNING and (record.owner, record.attempt) == (name, mine.attempt):
            return
        if record is not None and record.state is RunState.LOST and (record.owner, record.attempt) == (name, mine.attempt):
            # A node that took us for failed (a partition, a pause) gave up
            # on our run. We are not failed: our outcome, stamped later,
            # supersedes theirs (same attempt, both finished: the later wins).
            self._local.stats.lost_refuted += 1
            return
        # Another record won over our claim: theirs, a newer attempt, or a
        # cancellation. Stop ours; the winner's record stands.
        del self._running[run_id]
        self._local.stats.claims_lost += 1
        reason = (
            "its record was removed"
            if record is None
            else f"superseded by {record.state.value} (attempt {record.attempt}, {record.owner})"
        )
        self._local.effects.append(CancelRun(run_id, mine.attempt, reason))

    # -- executions: the runs we run ------------------------------------------------------

    def begin(self, execution: Execution) -> None:
        self._running[execution.record.id] = execution

    def stop(self, run_id: str) -> Execution | None:
        return self._running.pop(run_id, None)

    def execution(self, run_id: str, attempt: int) -> Execution | None:
        execution = self._running.get(run_id)
        if execution is None or execution.record.attempt != attempt:
            return None
        return execution

    def progress(self, wall_ms: int, run_id: str, attempt: int, value: Any) -> None:
        execution = self.execution(run_id, attempt)
        if execution is None:
            return
        try:
            value = replicated_form(value, MAX_PROGRESS_BYTES)
        except NotReplicable:  # not plain data, or too much: show what it was
            value = repr(value)[:200]
        execution.record = execution.record.evolve(progress=value)
        if execution.progress_due is None:
            # Progress is a rate-limited view: one write per interval at most.
            interval = round(self._local.config.progress_interval * 1000)
            execution.progress_due = max(wall_ms, execution.progress_written + interval)
            self.write_progress(wall_ms)

    def write_progress(self, wall_ms: int) -> None:
        for execution in self._running.values():
            if execution.progress_due is not None and execution.progress_due <= wall_ms:
                execution.progress_due = None
                execution.progress_written = wall_ms
                self.write(execution.record, execution.spec)

    # -- updates ---------------------------------------------------------------------------

    def load_update(self, key: str, *, deliver: bool = True) -> str:
        """Index an update by its run (and deliver it if the run is ours);
        the run's id."""
        store = self._local.store
        run_id = run_of_update(key)
        if store.get(UPDATES, key) is None:
            keys = self._updates.get(run_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._updates[run_id]
            return run_id
        self._updates.setdefault(run_id, set()).add(key)
        if deliver and run_id in self._running:
            self.deliver_updates(run_id)
        reader = reader_of(key)
        if reader is not None and reader != self._local.name:
            record = self.record(run_id)
            if record is not None and record.state.finished and record.owner == self._local.name:
                # A reader that asked once we had finished: its outcome, now;
                # and the mark goes, as the run's updates went when it finished.
                store.push(RUNS, run_id, [reader])
                store.remove(UPDATES, key)
        return run_id

    def readers(self, run_id: str) -> list[str]:
        """The nodes that asked for this run's outcome (``watch``)."""
        return sorted(node for key in self._updates.get(run_id, ()) if (node := reader_of(key)) is not None)

    def deliver_updates(self, run_id: str) -> None:
        """Give a running run every update it has not had, oldest first."""
        execution = self._running[run_id]
        fresh = []
        for key in self._updates.get(run_id, ()):
            if key in execution.delivered or reader_of(key) is not None:
                continue
            register = self._local.store.get(UPDATES, key)
            if register is not None and isinstance(register.value, Mapping) and "data" in register.value:
                fresh.append((register.ts, key, register.value["data"]))
        for _, key, data in sorted(fresh):
            execution.delivered.add(key)
            self._local.effects.append(DeliverUpdate(run_id, execution.record.attempt, data))

    def _forget_updates(self, run_id: str) -> None:
        for key in sorted(self._updates.pop(run_id, ())):
            self._local.store.remove(UPDATES, key)

    def watch(self, run_id: str) -> None:
        self._watched.add(run_id)

    def unwatch(self, run_id: str) -> None:
        self._watched.discard(run_id)
        self._watched_changed.discard(run_id)

    def take_watched_changes(self) -> set[str]:
        changed, self._watched_changed = self._watched_changed, set()
        return changed

    def footprint(self) -> dict[str, int]:
        return {
            "jobs": len(self._jobs),
            "unfinished": len(self._unfinished),
            "running": len(self._running),
            "updates": sum(len(keys) for keys in self._updates.values()),
            "pending_due": len(self._pending_due),
            "latest_ticks": len(self._latest_tick),
            "written_at": len(self._written_at),
            "watched": len(self._watched),
            "handed_on": len(self._handed_on),
        }


def job_entry_from_wire(value: Any) -> JobEntry:
    """A jobs map entry as stored; ``ValueError`` for anything else."""
    if not isinstance(value, Mapping) or "spec" not in value or "since" not in value:
        raise ValueError("a job entry is a map of spec and since")
    since = value["since"]
    if isinstance(since, bool) or not isinstance(since, int):
        raise ValueError("a job entry's since is epoch ms")
    return JobEntry(JobSpec.from_wire(value["spec"]), since, CodeRevision.from_wire(value.get("code")))


def readable_job(value: Any) -> bool:
    return _readable(job_entry_from_wire, value)


def readable_run(value: Any) -> bool:
    """A run record, whose names are fit for a log line: its id and job
    printable, and the nodes it names (owner, node, via) member names."""
    return _readable(RunRecord.from_wire, value) and _loggable_run(value)


def _loggable_run(value: Mapping[str, Any]) -> bool:
    return (
        value["id"].isprintable()
        and value["job"].isprintable()
        and all(value.get(field) is None or valid_name(value[field]) for field in ("owner", "node", "via"))
    )


def readable_lease(value: Any) -> bool:
    return _readable(Lease.from_wire, value) and valid_name(value["holder"])


def readable_update(value: Any) -> bool:
    """An update's data, or a reader's mark (``Scheduler``'s two writes)."""
    return isinstance(value, Mapping) and ("data" in value or isinstance(value.get("reader"), str))


def _readable(parse: Callable[[Any], Any], value: Any) -> bool:
    try:
        parse(value)
    except Exception:  # whatever a reader trips on in a peer's value, this node cannot read it
        return False
    return True


# Each map's check of a value from a peer (``peer.core.replication``): an
# unreadable value never enters the map, so it cannot win over a readable one.
READABLE: dict[str, Callable[[Any], bool]] = {
    JOBS: readable_job,
    RUNS: readable_run,
    LEASES: readable_lease,
    UPDATES: readable_update,
}


def parse_run(value: Any) -> RunRecord | None:
    """A record from the map; None for one a broken or newer peer wrote."""
    try:
        return RunRecord.from_wire(value)
    except ValueError:
        return None


def bounded(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 20] + " ... (truncated)"
