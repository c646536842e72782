"""The scheduler core on its own: one node, its maps in memory, time by hand.

Several nodes (claims from different views, failover, handoff across the
cluster) are the simulator's business: tests/test_sim_jobs.py.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.hlc import HLC, Timestamp
from crdt.ormap import ORMap, Register
from membership.state import Member, Status
from peer.jobs.cron import parse_schedule
from peer.jobs.definition import JobSpec
from peer.jobs.ring import Ring, rank
from peer.jobs.runs import RunRecord, RunState, precedence, reader_key, tick_run_id
from peer.jobs.scheduler import (
    JOBS,
    LEASES,
    RUNS,
    UPDATES,
    BacklogFull,
    CancelRun,
    DeliverUpdate,
    Role,
    Scheduler,
    SchedulerConfig,
    StartRun,
)
from peer.jobs.targets import CallTarget

T0 = 1_800_000_000_000  # a round epoch ms: ticks of @every 2s fall on even seconds


class Maps:
    """The node's replicated maps, without the replication."""

    def __init__(self, replica: str = "me#1") -> None:
        self.maps = {JOBS: ORMap(replica), RUNS: ORMap(replica, precedence), UPDATES: ORMap(replica), LEASES: ORMap(replica)}
        self.pushed: list[tuple[str, str, tuple[str, ...]]] = []
        self.held: list[tuple[str, str, float]] = []  # (map, key, gossip hold) of every write
        self.hlc = HLC(replica)
        self.wall_ms = T0
        self.changes: dict[str, set[str]] = defaultdict(set)

    def put(self, map_name: str, key: str, value: Any, *, ttl: float | None = None, hold: float = 0.0) -> Timestamp:
        stamp = self.hlc.now(self.wall_ms)
        expires = None if ttl is None else stamp.wall + round(ttl * 1000)
        self.maps[map_name].put(key, value, stamp, expires=expires)
        self.changes[map_name].add(key)
        self.held.append((map_name, key, hold))
        return stamp

    def remove(self, map_name: str, key: str) -> bool:
        self.changes[map_name].add(key)
        return self.maps[map_name].remove(key) is not None

    def get(self, map_name: str, key: str, *, expired: bool = False) -> Register | None:
        return self.maps[map_name].get(key, None if expired else self.wall_ms)

    def push(self, map_name: str, key: str, members: Any, *, reliable: bool = False) -> None:
        self.pushed.append((map_name, key, tuple(members)))

    def items(self, map_name: str) -> Iterator[tuple[str, Register]]:
        return self.maps[map_name].items(self.wall_ms)

    def merge_from(self, other: Maps, map_name: str, key: str) -> None:
        """What replication does when another node's write arrives."""
        self.maps[map_name].merge(other.maps[map_name].state(), self.wall_ms)
        self.changes[map_name].add(key)

    def take_changes(self) -> dict[str, set[str]]:
        changes, self.changes = dict(self.changes), defaultdict(set)
        return changes


@attrs.define
class Node:
    scheduler: Scheduler
    maps: Maps
    effects: list[Any] = attrs.Factory(list)
    history_caught_up: bool = True  # its runs map matched a member's

    def advance(self, to_ms: int) -> None:
        """Run the scheduler's timers up to ``to_ms``, as a driver would."""
        while True:
            self._drive()
            deadline = self.scheduler.next_deadline()
            if deadline > to_ms:
                break
            self.maps.wall_ms = max(self.maps.wall_ms, deadline)
        self.maps.wall_ms = to_ms
        self._drive()

    def _drive(self) -> None:
        changes = self.maps.take_changes()
        if changes:
            self.scheduler.on_changes(self.maps.wall_ms, changes)
        self.scheduler.tick(self.maps.wall_ms, history_caught_up=self.history_caught_up)
        self.effects.extend(self.scheduler.take_effects())

    def take(self, kind: type) -> list[Any]:
        taken = [e for e in self.effects if isinstance(e, kind)]
        self.effects = [e for e in self.effects if not isinstance(e, kind)]
        return taken

    def finish(self, start: StartRun, ok: bool = True, result: Any = "done", error: str | None = None) -> None:
        self.scheduler.run_finished(self.maps.wall_ms, start.run_id, start.attempt, ok, result, error)
        self._drive()


def member(name: str, status: Status = Status.ALIVE, meta: bytes = Role.READY.meta) -> Member:
    return Member(name, ("127.0.0.1", 1), 1, status, meta)


def make_node(config: SchedulerConfig | None = None, *, others: tuple[Member, ...] = ()) -> Node:
    maps = Maps()
    scheduler = Scheduler("me", config or SchedulerConfig(settle=1.0), maps, rng=random.Random(7), wall_ms=T0)
    scheduler.set_view(T0, [member("me", meta=Role.STARTING.meta), *others])
    return Node(scheduler, maps)


def cron(job_id: str = "job", every: str = "2s", **fields: Any) -> JobSpec:
    return JobSpec(id=job_id, target=CallTarget("peer.testing.samples:echo"), schedule=parse_schedule(f"@every {every}"), **fields)


def one_off(job_id: str = "once", **fields: Any) -> JobSpec:
    return JobSpec(id=job_id, target=CallTarget("peer.testing.samples:echo"), schedule=None, **fields)


def record(node: Node, run_id: str) -> RunRecord:
    found = node.scheduler.record(run_id)
    assert found is not None, run_id
    return found


def recorded_elsewhere(node: Node, tick: int, state: RunState, owner: str = "other") -> str:
    """Another node's record of a tick of ``job``, written at the tick,
    brought to us by replication now: its run id."""
    run_id = tick_run_id("job", tick)
    other = Maps(f"{owner}#1")
    other.wall_ms = tick
    other.put(RUNS, run_id, RunRecord(id=run_id, job="job", state=state, owner=owner, tick=tick).to_wire())
    node.maps.merge_from(other, RUNS, run_id)
    return run_id


# -- ticks -----------------------------------------------------------------------------


def test_a_lone_node_settles_then_runs_each_tick_once_and_keeps_the_result() -> None:
    node = make_node()
    node.scheduler.define_when_ready([cron(overlap="allow")])
    node.advance(T0 + 900)
    assert node.scheduler.role is Role.STARTING and not node.effects
    node.advance(T0 + 6_500)
    assert node.scheduler.role is Role.READY
    starts = node.take(StartRun)
    # Ticks after the job took effect (at settle, T0+1000): T0+2000, +4000, +6000.
    assert [s.run_id for s in starts] == [tick_run_id("job", T0 + ms) for ms in (2_000, 4_000, 6_000)]
    assert {s.attempt for s in starts} == {1}
    node.finish(starts[0], result={"answer": 42})
    done = record(node, starts[0].run_id)
    assert (done.state, done.result, done.owner, done.tick) == (RunState.SUCCEEDED, {"answer": 42}, "me", T0 + 2_000)
    assert record(node, starts[1].run_id).state is RunState.RUNNING
    # The result expires with the job's result TTL, here the default 10 minutes.
    node.advance(done.finished + 599_000)  # type: ignore[operator]
    assert node.scheduler.record(starts[0].run_id) is not None
    node.maps.wall_ms = done.finished + 600_001  # type: ignore[operator]
    assert node.scheduler.record(starts[0].run_id) is None


def test_a_tick_that_already_has_a_record_is_not_run_again() -> None:
    node = make_node()
    node.advance(T0 + 1_000)
    node.scheduler.add_job(node.maps.wall_ms, cron(overlap="allow"))
    node.advance(T0 + 2_400)  # a job new to us: its first tick waits the handover (1.5 s) for a rival holder
    assert node.take(StartRun) == []
    recorded_elsewhere(node, T0 + 2_000, RunState.SUCCEEDED)
    node.advance(T0 + 6_000)
    assert [s.tick for s in node.take(StartRun)] == [T0 + 4_000, T0 + 6_000]


def test_an_acquired_job_is_walked_on_after_its_latest_recorded_tick() -> None:
    """Holders walk a schedule in order: a recorded tick says every earlier
    one was handled, even one whose record has not reached us."""
    node = make_node()
    node.advance(T0 + 1_000)
    recorded_elsewhere(node, T0 + 4_000, RunState.SUCCEEDED)
    node.scheduler.add_job(node.maps.wall_ms, cron(overlap="allow"))
    node.advance(T0 + 6_000)
    assert [s.tick for s in node.take(StartRun)] == [T0 + 6_000]


def test_a_gone_holders_claim_does_not_bound_the_look_back() -> None:
    """Wide seed 296: a holder claimed two overdue ticks at once and was
    killed; only the later claim reached us. The earlier tick has no record
    anywhere: it runs, and the later claim is re-run as a failover."""
    node = make_node(others=(member("gone", Status.DEAD),))
    node.advance(T0 + 1_000)
    recorded_elsewhere(node, T0 + 4_000, RunState.RUNNING, owner="gone")
    node.scheduler.add_job(node.maps.wall_ms, cron(overlap="allow"))
    node.advance(T0 + 6_000)
    starts = {(s.tick, s.attempt) for s in node.take(StartRun)}
    assert starts == {(T0 + 2_000, 1), (T0 + 4_000, 2), (T0 + 6_000, 1)}


def test_an_outcome_of_a_tick_spreads_with_our_claims_of_earlier_ones() -> None:
    """An outcome bounds the next holder's look-back: an earlier claim of
    ours still running must not wait its gossip hold behind it."""
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="allow"))
    node.advance(T0 + 4_000)
    first, second = node.take(StartRun)
    assert (RUNS, first.run_id, node.scheduler.config.gossip_hold) in node.maps.held
    node.maps.held.clear()
    node.finish(second)
    assert node.maps.held[:2] == [(RUNS, first.run_id, 0.0), (RUNS, second.run_id, 0.0)]
    assert record(node, first.run_id).state is RunState.RUNNING


def test_ticks_from_before_a_new_nodes_start_wait_until_it_holds_their_records() -> None:
    """A cluster forming: the job was defined before we started, and its
    holder then lost it to us before running its last ticks. We run those
    once our runs map has caught up, and not a tick whose record that
    brought; never before (the record may be on its way); and the ticks
    since our start only after them, in order."""
    node = make_node(SchedulerConfig(settle=1.0))
    node.history_caught_up = False
    other = Maps("other#1")
    other.wall_ms = T0 - 5_000
    other.put(JOBS, "job", {"spec": cron(overlap="allow").to_wire(), "since": T0 - 5_000})
    node.maps.merge_from(other, JOBS, "job")
    node.advance(T0 + 3_600)  # ready at +1 s; a job new to us waits a handover (1.5 s)
    assert node.take(StartRun) == []
    ran = tick_run_id("job", T0 - 4_000)
    other.put(RUNS, ran, RunRecord(id=ran, job="job", state=RunState.SUCCEEDED, owner="other", tick=T0 - 4_000).to_wire())
    node.maps.merge_from(other, RUNS, ran)
    node.history_caught_up = True
    node.advance(T0 + 3_700)
    assert [s.tick for s in node.take(StartRun)] == [T0 - 2_000, T0, T0 + 2_000]


def test_without_catching_up_older_ticks_are_judged_after_the_catch_up_window() -> None:
    node = make_node(SchedulerConfig(settle=1.0, catch_up_window=10.0))
    node.history_caught_up = False
    other = Maps("other#1")
    other.wall_ms = T0 - 3_000
    other.put(JOBS, "job", {"spec": cron(overlap="allow").to_wire(), "since": T0 - 3_000})
    node.maps.merge_from(other, JOBS, "job")
    node.advance(T0 + 9_900)
    assert node.take(StartRun) == []
    node.advance(T0 + 10_000)
    assert [s.tick for s in node.take(StartRun)] == [T0 + ms for ms in range(-2_000, 10_001, 2_000)]


@pytest.mark.parametrize(
    ("misfire", "runs", "missed"),
    [("skip", [], 6), ("once", [T0 + 12_000], 5), ("all", [T0 + ms for ms in range(2_000, 13_000, 2_000)], 0)],
)
def test_misfire_policies_for_ticks_found_late(misfire: str, runs: list[int], missed: int) -> None:
    # The job took effect at T0; the node only gets to it 11 s later (its
    # owner was gone, say), with a grace of 0.5 s.
    node = make_node(SchedulerConfig(settle=0.0))
    node.maps.put(JOBS, "job", {"spec": cron(misfire=misfire, grace=0.5, overlap="allow").to_wire(), "since": T0})
    node.maps.wall_ms = T0 + 11_000
    # Ticks found at start wait out the handover (1.5 s): until T0 + 12.5 s,
    # and the one at T0 + 12 s until T0 + 13.5 s; all of them late.
    node.advance(T0 + 13_600)
    started = [s.tick for s in node.take(StartRun)]
    assert started == runs
    states = [r.state for r in node.scheduler.records()]
    assert states.count(RunState.MISSED) == missed
    assert node.scheduler.stats.ticks_missed == missed
    for r in node.scheduler.records():
        if r.state is RunState.MISSED:
            assert "over the grace of 0.5 s" in (r.error or "")


def test_overlap_forbid_records_a_skipped_tick() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="forbid"))
    node.advance(T0 + 4_000)
    starts = node.take(StartRun)
    assert [s.tick for s in starts] == [T0 + 2_000]
    skipped = record(node, tick_run_id("job", T0 + 4_000))
    assert skipped.state is RunState.SKIPPED and starts[0].run_id in (skipped.error or "")
    node.finish(starts[0])
    node.advance(T0 + 6_000)
    assert [s.tick for s in node.take(StartRun)] == [T0 + 6_000]


def test_overlap_replace_cancels_the_running_one() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="replace"))
    node.advance(T0 + 4_000)
    first, second = node.take(StartRun)
    (cancel,) = node.take(CancelRun)
    assert cancel.run_id == first.run_id and "replaced" in cancel.reason
    assert record(node, first.run_id).state is RunState.CANCELLED
    assert record(node, second.run_id).state is RunState.RUNNING
    node.finish(first)  # it stopped anyway: the report of a cancelled run changes nothing
    assert record(node, first.run_id).state is RunState.CANCELLED


def test_overlap_allow_runs_both() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="allow"))
    node.advance(T0 + 4_000)
    assert len(node.take(StartRun)) == 2


def test_a_paused_job_does_not_run_and_resuming_owes_nothing_from_the_pause() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="allow"))
    node.scheduler.set_paused(T0, "job", True)
    node.advance(T0 + 10_000)
    assert not node.take(StartRun)
    node.scheduler.set_paused(node.maps.wall_ms, "job", False)
    node.advance(T0 + 14_000)
    assert [s.tick for s in node.take(StartRun)] == [T0 + 12_000, T0 + 14_000]


# -- one-off runs, retries, updates ----------------------------------------------------


def test_a_failed_run_is_retried_after_its_backoff_then_fails_for_good() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.advance(T0)
    run_id = node.scheduler.submit(T0, one_off(retries=1, backoff=2.0))
    node.advance(T0 + 10)
    (first,) = node.take(StartRun)
    assert (first.run_id, first.attempt) == (run_id, 1)
    node.finish(first, ok=False, result=None, error="ValueError: nope")
    pending = record(node, run_id)
    assert (pending.state, pending.attempt, pending.not_before) == (RunState.PENDING, 2, T0 + 10 + 2_000)
    node.advance(T0 + 1_900)
    assert not node.take(StartRun)
    node.advance(T0 + 2_100)
    (second,) = node.take(StartRun)
    assert second.attempt == 2
    node.finish(second, ok=False, result=None, error="ValueError: still no")
    failed = record(node, run_id)
    assert (failed.state, failed.attempt, failed.error) == (RunState.FAILED, 2, "ValueError: still no")
    assert node.scheduler.stats.retries == 1 and node.scheduler.stats.runs_failed == 1


def test_updates_reach_the_running_run_in_order_and_are_dropped_after() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.advance(T0)
    run_id = node.scheduler.submit(T0, one_off())
    node.scheduler.send(run_id, "early")  # sent before it starts: delivered at start
    node.advance(T0 + 10)
    (start,) = node.take(StartRun)
    node.scheduler.send(run_id, {"n": 1})
    node.scheduler.send(run_id, {"n": 2})
    node.advance(T0 + 20)
    assert [u.data for u in node.take(DeliverUpdate)] == ["early", {"n": 1}, {"n": 2}]
    node.finish(start)
    assert not list(node.maps.items(UPDATES))
    with pytest.raises(ValueError, match="has finished"):
        node.scheduler.send(run_id, "late")
    with pytest.raises(KeyError):
        node.scheduler.send("nope@x", 1)


def test_an_outcome_goes_straight_to_the_submitter_and_to_every_reader() -> None:
    """A one-off submitted through "sub", run by us: its outcome is handed
    to "sub" and to "reader" (which waits on it, and said so with a reader
    mark pushed to us) as well as to our successor, not only gossiped; a
    reader mark is no update for the run."""
    names = ("me", "sub", "reader", "x", "y")
    node = make_node(SchedulerConfig(settle=0.0), others=tuple(member(n) for n in names[1:]))
    node.advance(T0)

    def other(name: str) -> Scheduler:
        scheduler = Scheduler(name, SchedulerConfig(settle=0.0), Maps(f"{name}#1"), rng=random.Random(name), wall_ms=T0)
        scheduler.set_view(T0, [member(n) for n in names])
        scheduler.tick(T0)
        return scheduler

    submitter, reader = other("sub"), other("reader")

    def successor(run_id: str) -> str:
        return next(n for n in node.scheduler._placement.ring.preference(run_id, 2) if n != "me")

    # Submits until one is placed on us, with a successor that is neither
    # the submitter nor the reader (the ring decides, by run id).
    pending = next(
        record for record in (submitter.record(submitter.submit(T0, one_off())) for _ in range(50))
        if record is not None and record.owner == "me" and successor(record.id) in ("x", "y")
    )
    run_id = pending.id
    assert pending.via == "sub"
    node.maps.merge_from(submitter._store, RUNS, run_id)  # type: ignore[arg-type]
    reader._store.merge_from(submitter._store, RUNS, run_id)  # type: ignore[attr-defined]
    reader.on_changes(T0, reader._store.take_changes())  # type: ignore[attr-defined]
    reader.watch(run_id)
    mark = reader_key(run_id, "reader")
    assert (UPDATES, mark, ("me",)) in reader._store.pushed  # type: ignore[attr-defined]
    node.maps.merge_from(reader._store, UPDATES, mark)  # type: ignore[arg-type]
    node.advance(T0 + 10)
    (start,) = node.take(StartRun)
    assert node.take(DeliverUpdate) == []
    node.maps.pushed.clear()
    node.finish(start)
    assert node.maps.pushed == [(RUNS, run_id, tuple(sorted({"reader", "sub", successor(run_id)})))]
    # Watching a run that has finished asks for nothing.
    node.scheduler.watch(run_id)
    assert node.maps.get(UPDATES, reader_key(run_id, "me")) is None
    # A reader whose mark comes after the outcome gets it then, and the mark goes.
    late = other("x")
    late._store.merge_from(submitter._store, RUNS, run_id)  # type: ignore[attr-defined]
    late.on_changes(T0, late._store.take_changes())  # type: ignore[attr-defined]
    late.watch(run_id)
    node.maps.pushed.clear()
    node.maps.merge_from(late._store, UPDATES, reader_key(run_id, "x"))  # type: ignore[arg-type]
    node.advance(T0 + 20)
    assert node.maps.pushed == [(RUNS, run_id, ("x",))]
    assert node.maps.get(UPDATES, reader_key(run_id, "x")) is None


def test_progress_is_written_at_most_once_per_interval() -> None:
    node = make_node(SchedulerConfig(settle=0.0, progress_interval=0.5))
    node.advance(T0)
    run_id = node.scheduler.submit(T0, one_off())
    node.advance(T0 + 10)
    (start,) = node.take(StartRun)
    stamps = set()
    for step in range(10):  # a report every 100 ms for 900 ms
        node.maps.wall_ms = T0 + 600 + step * 100
        node.scheduler.run_progress(node.maps.wall_ms, run_id, 1, {"step": step})
        node.advance(node.maps.wall_ms)
        register = node.maps.get(RUNS, run_id)
        assert register is not None
        stamps.add(register.ts)
    assert len(stamps) == 2
    node.advance(T0 + 3_000)
    assert record(node, run_id).progress == {"step": 9}  # the last report is written too


# -- conflicts, failover, handoff ----------------------------------------------------------


def _competing_claim(node: Node, run_id: str, owner: str, attempt: int = 1) -> None:
    other = Maps(f"{owner}#1")
    other.hlc.observe(node.maps.hlc.now(node.maps.wall_ms), node.maps.wall_ms)
    other.wall_ms = node.maps.wall_ms
    current = node.scheduler.record(run_id)
    spec = current.spec if current is not None else None
    claim = RunRecord(id=run_id, job=run_id.split("@")[0], state=RunState.RUNNING, attempt=attempt, owner=owner, spec=spec)
    other.put(RUNS, run_id, claim.to_wire())
    node.maps.merge_from(other, RUNS, run_id)


def test_the_claimant_ranking_lower_cancels_and_the_winner_stands() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.advance(T0)
    run_id = node.scheduler.submit(T0, one_off())
    node.advance(T0 + 10)
    (start,) = node.take(StartRun)
    rival = next(name for name in (f"n{i}" for i in range(100)) if rank(run_id, name) > rank(run_id, "me"))
    _competing_claim(node, run_id, rival)
    node.advance(T0 + 20)
    (cancel,) = node.take(CancelRun)
    assert cancel.run_id == run_id and rival in cancel.reason
    assert record(node, run_id).owner == rival
    assert node.scheduler.stats.claims_lost == 1
    node.finish(start)  # too late: its claim lost
    assert record(node, run_id).state is RunState.RUNNING and record(node, run_id).owner == rival


def test_the_claimant_ranking_higher_keeps_running() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.advance(T0)
    run_id = node.scheduler.submit(T0, one_off())
    node.advance(T0 + 10)
    (start,) = node.take(StartRun)
    rival = next(name for name in (f"n{i}" for i in range(100)) if rank(run_id, name) < rank(run_id, "me"))
    _competing_claim(node, run_id, rival)
    node.advance(T0 + 20)
    assert not node.take(CancelRun)
    node.finish(start)
    assert record(node, run_id).state is RunState.SUCCEEDED


def test_a_run_whose_owner_failed_is_rerun_by_the_new_owner_who_tells_every_member() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.advance(T0)
    run_id = node.scheduler.submit(T0, one_off())
    # Someone else claimed it first (say when the view held only them).
    node.effects.clear()
    _competing_claim(node, run_id, "gone", attempt=1)
    node.scheduler.set_view(T0, [member("me"), member("gone", Status.DEAD), member("x"), member("y", meta=Role.STARTING.meta)])
    node.maps.pushed.clear()
    node.advance(T0 + 2_000)
    starts = node.take(StartRun)
    assert starts and starts[-1].attempt == 2
    assert record(node, run_id).owner == "me" and node.scheduler.stats.failovers >= 1
    # A takeover's claim goes to every live member at once, a starting one
    # too: any of them may be the next to think the run is its own.
    assert (RUNS, run_id, ("x", "y")) in node.maps.pushed


def test_a_run_of_a_previous_life_is_rerun_after_a_restart_once_the_node_holds_the_clusters_runs() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.history_caught_up = False
    claim = RunRecord(id="once@x", job="once", state=RunState.RUNNING, owner="me", spec=one_off().to_wire())
    node.maps.put(RUNS, "once@x", claim.to_wire())
    # Not while we may lack its final record: our runs map has matched no member's.
    node.advance(T0 + 20_000)
    assert not node.take(StartRun)
    # Caught up: its last record had the leave grace (5 s) to arrive, and did not.
    node.history_caught_up = True
    node.advance(T0 + 21_000)
    (start,) = node.take(StartRun)
    assert (start.run_id, start.attempt) == ("once@x", 2)


def test_a_run_of_a_previous_life_waits_the_leave_grace_after_the_start() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    claim = RunRecord(id="once@x", job="once", state=RunState.RUNNING, owner="me", spec=one_off().to_wire())
    node.maps.put(RUNS, "once@x", claim.to_wire())
    node.advance(T0 + 4_900)
    assert not node.take(StartRun)
    node.advance(T0 + 6_000)
    assert [start.attempt for start in node.take(StartRun)] == [2]


def test_a_claim_of_a_restarted_node_is_handed_on_while_its_grace_runs_then_rerun() -> None:
    """Another node's claim, whose writer restarted since: we may hold its
    only copy, so it goes to the node that would take over from us at once
    (once), and is re-run when the leave grace has passed."""
    node = make_node(SchedulerConfig(settle=0.0), others=(Member("other", ("127.0.0.1", 2), 1, Status.ALIVE, Role.READY.meta), member("x")))
    node.advance(T0)
    other = Maps("other#1")
    other.wall_ms = T0
    claim = RunRecord(id="once@2", job="once", state=RunState.RUNNING, owner="other", spec=one_off().to_wire())
    other.put(RUNS, "once@2", claim.to_wire())
    node.maps.merge_from(other, RUNS, "once@2")
    node.advance(T0 + 100)
    # "other" comes back as a new life (a new incarnation: its boot time).
    reborn = Member("other", ("127.0.0.1", 2), T0 + 50, Status.ALIVE, Role.READY.meta)
    node.scheduler.set_view(T0 + 100, [member("me"), reborn, member("x")])
    node.maps.pushed.clear()
    node.advance(T0 + 4_000)
    # Ours by the ring (me, then x, then other): handed to x, once.
    assert node.scheduler._placement.ring.preference("once@2", 3) == ["me", "x", "other"]
    assert [p for p in node.maps.pushed if p[1] == "once@2"] == [(RUNS, "once@2", ("x",))]
    assert not node.take(StartRun)
    node.advance(T0 + 6_000)
    assert [s.attempt for s in node.take(StartRun) if s.run_id == "once@2"] == [2]


def test_a_draining_node_lets_runs_finish_then_hands_back_the_rest() -> None:
    node = make_node(SchedulerConfig(settle=0.0, drain_timeout=5.0))
    node.advance(T0)
    quick = node.scheduler.submit(T0, one_off("quick"))
    slow = node.scheduler.submit(T0, one_off("slow"))
    node.advance(T0 + 10)
    starts = {s.run_id: s for s in node.take(StartRun)}
    node.scheduler.drain(node.maps.wall_ms)
    assert node.scheduler.role is Role.DRAINING and not node.scheduler.drained
    node.scheduler.submit(node.maps.wall_ms, one_off("new"))
    node.advance(T0 + 1_000)
    assert not node.take(StartRun)  # a draining node claims nothing new
    node.finish(starts[quick])
    assert record(node, quick).state is RunState.SUCCEEDED
    node.advance(T0 + 5_100)
    (cancel,) = node.take(CancelRun)
    assert cancel.run_id == slow
    handed = record(node, slow)
    assert (handed.state, handed.attempt, handed.owner) == (RunState.PENDING, 2, None)
    assert node.scheduler.drained


# -- records from elsewhere ----------------------------------------------------------------------


def test_garbage_in_the_maps_is_counted_and_ignored() -> None:
    node = make_node(SchedulerConfig(settle=0.0))
    node.maps.put(RUNS, "bad@1", {"state": "exploded"})
    node.maps.put(RUNS, "bad@2", [1, 2, 3])
    node.maps.put(JOBS, "bad", {"spec": {"id": 5}, "since": "yesterday"})
    node.maps.put(UPDATES, "nobody/1", "x")
    node.advance(T0 + 5_000)
    assert node.scheduler.stats.bad_records >= 3
    assert "bad" not in node.scheduler.jobs()


_states = st.sampled_from(list(RunState))


@given(_states, _states, st.integers(1, 3), st.integers(1, 3), st.integers(0, 10), st.integers(0, 10))
def test_precedence_puts_attempt_then_phase_above_timestamps(
    a_state: RunState, b_state: RunState, a_attempt: int, b_attempt: int, a_wall: int, b_wall: int
) -> None:
    def register(state: RunState, attempt: int, wall: int, owner: str) -> Register:
        value = RunRecord(id="r@1", job="r", state=state, attempt=attempt, owner=owner).to_wire()
        return Register(Timestamp(wall, 0, owner), value, None)

    a, b = register(a_state, a_attempt, a_wall, "a"), register(b_state, b_attempt, b_wall, "b")
    winner = max((a, b), key=precedence)
    if a_attempt != b_attempt:
        assert winner is (a if a_attempt > b_attempt else b)
    elif a_state.phase != b_state.phase:
        assert winner is (a if a_state.phase > b_state.phase else b)
    elif a_state is RunState.RUNNING and b_state is RunState.RUNNING:
        assert winner is (a if rank("r@1", "a") > rank("r@1", "b") else b)
    else:
        assert winner is max((a, b), key=lambda r: r.ts)
    garbage = Register(Timestamp(99, 0, "z"), {"state": "??"}, None)
    assert max((a, garbage), key=precedence) is a


def test_a_dead_owners_claim_blocks_no_tick_and_is_rerun() -> None:
    # overlap "forbid" skips a tick while the previous run still runs; a
    # claim by a node that died is not a run going on.
    node = make_node(SchedulerConfig(settle=0.0), others=(member("gone", Status.DEAD),))
    node.scheduler.add_job(T0, cron(overlap="forbid"))
    node.maps.wall_ms = T0 + 1_000
    recorded_elsewhere(node, T0 + 2_000, RunState.RUNNING, owner="gone")
    node.advance(T0 + 3_000)
    (rerun,) = node.take(StartRun)
    assert (rerun.tick, rerun.attempt) == (T0 + 2_000, 2)  # the dead owner's run, re-run
    node.finish(rerun)
    node.advance(T0 + 4_100)
    (next_tick,) = node.take(StartRun)
    assert (next_tick.tick, next_tick.attempt) == (T0 + 4_000, 1)  # and the next tick, not skipped
    assert node.scheduler.stats.ticks_skipped == 0



def test_a_run_recorded_lost_by_a_node_that_took_us_for_failed_runs_on_and_its_result_stands() -> None:
    """Chaos seed 8: across a partition, a node that had declared us dead
    recorded our run of a mode-all tick lost. We are alive: the run goes on,
    and its result supersedes the lost record everywhere."""
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(mode="all"))
    node.advance(T0 + 2_000)
    (start,) = node.take(StartRun)
    running = record(node, start.run_id)
    other = Maps("other#1")
    other.hlc.observe(node.maps.hlc.now(node.maps.wall_ms), node.maps.wall_ms)
    other.wall_ms = node.maps.wall_ms
    lost = running.evolve(state=RunState.LOST, finished=other.wall_ms, error="its node me failed")
    other.put(RUNS, start.run_id, lost.to_wire())
    node.maps.merge_from(other, RUNS, start.run_id)
    node.advance(T0 + 2_100)
    assert not node.take(CancelRun)
    assert node.scheduler.stats.lost_refuted == 1
    node.finish(start, result="ran")
    done = record(node, start.run_id)
    assert (done.state, done.result) == (RunState.SUCCEEDED, "ran")
    # And the other node, merging ours, reads the same.
    other.merge_from(node.maps, RUNS, start.run_id)
    assert RunRecord.from_wire(other.get(RUNS, start.run_id).value).state is RunState.SUCCEEDED  # type: ignore[union-attr]


def test_a_node_frozen_past_its_ticks_reads_what_came_meanwhile_before_claiming() -> None:
    """Real-process chaos (SIGSTOP): a node frozen past its ticks found them
    overdue on waking and ran one another node had run meanwhile, before
    reading the record waiting in its inbox. Waking, it now waits a handover."""
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="allow"))
    node.advance(T0 + 3_600)
    for start in node.take(StartRun):
        node.finish(start)
    node.maps.wall_ms = T0 + 9_000  # frozen from +3.6 s to +9 s
    node.advance(T0 + 9_000)
    assert not node.take(StartRun) and node.scheduler.stats.thaws == 1
    node.maps.wall_ms = T0 + 9_100
    recorded_elsewhere(node, T0 + 6_000, RunState.SUCCEEDED)  # by another node, which took us for failed
    node.advance(T0 + 10_600)
    assert sorted(s.tick for s in node.take(StartRun)) == [T0 + 4_000, T0 + 8_000, T0 + 10_000]


def test_a_draining_node_claims_nothing_new_and_does_not_spin() -> None:
    """Chaos seed 231: a node told to leave, with no run going, started a
    tick due a moment later and left with the run still going: its cursors
    outlived the drain, the ring's rebuild being held back (a burst of view
    changes makes one ring)."""
    node = make_node(SchedulerConfig(settle=0.0))
    node.scheduler.add_job(T0, cron(overlap="allow"))
    node.advance(T0 + 3_600)
    for start in node.take(StartRun):
        node.finish(start)
    # A member joins (and takes none of our jobs); the ring changes at +3.95 s.
    joiner = next(name for name in (f"n{i}" for i in range(50)) if Ring(("me", name)).owner("job") == "me")
    node.advance(T0 + 3_950)
    node.scheduler.set_view(T0 + 3_950, [member("me"), member(joiner)])
    node.advance(T0 + 3_950)
    node.scheduler.drain(T0 + 3_990)  # within the rebuild hold-back, 10 ms before a tick
    assert node.scheduler.drained
    node.advance(T0 + 4_000)  # woken at the tick (by a packet, say)
    node.advance(T0 + 8_000)
    assert not node.take(StartRun)
    assert node.scheduler.next_deadline() > T0 + 8_000  # nothing overdue: no busy loop


# -- back-pressure ------------------------------------------------------------------------


def bounded(limit: int, **fields: Any) -> Node:
    node = make_node(SchedulerConfig(settle=0.0, max_running_runs=limit, **fields))
    node.advance(T0)
    assert node.scheduler.role is Role.READY
    return node


def test_a_node_at_its_limit_claims_no_more_and_claims_the_rest_as_slots_free() -> None:
    node = bounded(2)
    ids = [node.scheduler.submit(T0, one_off(f"j{i}")) for i in range(5)]
    node.advance(T0 + 100)
    first = node.take(StartRun)
    assert [s.run_id for s in first] == ids[:2]
    # The rest stay pending, ours, in the runs map: not claimed, not lost, not missed.
    assert {record(node, i).state for i in ids[2:]} == {RunState.PENDING}
    assert {record(node, i).owner for i in ids[2:]} == {"me"}
    assert node.scheduler.queued() == 3 and node.scheduler.stats.runs_queued == 3
    node.advance(T0 + 5_000)  # scans and time change nothing while no slot frees
    assert node.take(StartRun) == [] and len(node.scheduler.running()) == 2
    node.finish(first[1])
    assert [s.run_id for s in node.take(StartRun)] == [ids[2]]  # the oldest waiting, at once
    node.finish(first[0])
    node.advance(T0 + 5_100)
    rest = node.take(StartRun)
    assert [s.run_id for s in rest] == [ids[3]]
    assert node.scheduler.queued() == 1


@given(
    limit=st.integers(min_value=1, max_value=3),
    count=st.integers(min_value=1, max_value=12),
    queue=st.integers(min_value=1, max_value=4),
    order=st.randoms(use_true_random=False),
)
def test_at_a_limit_every_run_runs_once_and_never_more_at_once_than_the_limit(
    limit: int, count: int, queue: int, order: random.Random
) -> None:
    node = bounded(limit, max_queued_runs=queue)
    ids = {node.scheduler.submit(T0, one_off(f"j{i}")) for i in range(count)}
    started: list[str] = []
    running: list[StartRun] = []
    now = T0
    while len(started) < count:
        now += 300  # the scan (every second) finds what the full queue left in the map
        node.advance(now)
        running.extend(node.take(StartRun))
        started = started + [s.run_id for s in running if s.run_id not in started]
        assert len(node.scheduler.running()) <= limit and len(running) <= limit
        assert node.scheduler.queued() <= queue
        if running:
            node.finish(running.pop(order.randrange(len(running))))
            running.extend(node.take(StartRun))
            started = started + [s.run_id for s in running if s.run_id not in started]
            assert len(running) <= limit
        assert now < T0 + 60_000, "a run was never claimed"
    assert sorted(started) == sorted(ids) and len(started) == count  # each once
    for start in running:
        node.finish(start)
    assert {record(node, i).state for i in ids} == {RunState.SUCCEEDED}
    assert {record(node, i).attempt for i in ids} == {1}


def test_a_tick_due_at_the_limit_waits_for_a_slot_ahead_of_submitted_runs() -> None:
    node = bounded(1)
    busy = node.scheduler.submit(T0, one_off("busy"))
    node.advance(T0 + 100)
    [running] = node.take(StartRun)
    waiting = node.scheduler.submit(T0 + 100, one_off("later"))
    node.scheduler.add_job(T0 + 100, cron(every="2s"))
    node.advance(T0 + 2_100)  # the tick at T0+2000 (after its handover wait), due: no slot
    assert node.take(StartRun) == []
    tick = tick_run_id("job", T0 + 2_000)
    deferred = record(node, tick)
    # Pending, ours, in the map: its walk moved on, it outlives us (handed to our successor).
    assert (deferred.state, deferred.owner, deferred.attempt) == (RunState.PENDING, "me", 1)
    assert node.scheduler.stats.ticks_run == 0 and node.scheduler.stats.ticks_missed == 0
    node.finish(running)
    assert record(node, busy).state is RunState.SUCCEEDED
    [started] = node.take(StartRun)
    assert (started.run_id, started.attempt, started.tick) == (tick, 1, T0 + 2_000)  # before the older one-off
    assert node.scheduler.stats.ticks_run == 1
    assert record(node, waiting).state is RunState.PENDING


def test_a_tick_that_waited_past_its_grace_follows_its_misfire_policy() -> None:
    node = bounded(1)
    node.scheduler.submit(T0, one_off("busy"))
    node.advance(T0 + 100)
    [running] = node.take(StartRun)
    node.scheduler.add_job(T0 + 100, cron(every="10s", misfire="skip", grace=2.0))
    node.advance(T0 + 15_000)
    assert node.take(StartRun) == []
    tick = tick_run_id("job", T0 + 10_000)
    node.finish(running)
    missed = record(node, tick)
    assert missed.state is RunState.MISSED and node.take(StartRun) == []
    assert missed.error is not None and "waiting for a free slot (at most 1 runs at once on me)" in missed.error
    assert node.scheduler.stats.ticks_missed == 1
    node.advance(T0 + 20_000)  # the next tick, on time, runs
    assert [s.tick for s in node.take(StartRun)] == [T0 + 20_000]


def test_a_submit_over_the_pending_backlog_is_refused_and_counted() -> None:
    node = bounded(1, max_pending_runs=3)
    ids = [node.scheduler.submit(T0, one_off(f"j{i}")) for i in range(3)]
    with pytest.raises(BacklogFull) as refused:
        node.scheduler.submit(T0, one_off("one-too-many"))
    assert (refused.value.backlog, refused.value.bound) == (3, 3)
    assert "backlog of pending runs is 3, at its bound of 3" in str(refused.value)
    assert node.scheduler.stats.submits_refused == 1 and node.scheduler.backlog() == 3
    node.advance(T0 + 100)  # one claimed: no longer pending
    assert node.scheduler.backlog() == 2
    node.scheduler.submit(T0 + 100, one_off("fits"))
    assert {record(node, i).state for i in ids[1:]} == {RunState.PENDING}


def test_one_offs_leave_a_quarter_of_the_slots_to_ticks() -> None:
    # 2,000 one-offs of a minute once filled every slot, and no tick ran until one ended.
    node = bounded(4)
    long_runs = [node.scheduler.submit(T0, one_off(f"long{i}")) for i in range(5)]
    node.advance(T0 + 100)
    started = node.take(StartRun)
    assert [s.run_id for s in started] == long_runs[:3]  # 3 of 4 slots: the fourth is kept for ticks
    assert record(node, long_runs[3]).state is RunState.PENDING and node.scheduler.queued() == 2
    node.scheduler.add_job(T0 + 100, cron(every="2s"))
    node.advance(T0 + 2_100)
    [tick] = node.take(StartRun)
    assert (tick.run_id, tick.tick) == (tick_run_id("job", T0 + 2_000), T0 + 2_000)  # on time, in the reserved slot
    assert node.scheduler.stats.ticks_run == 1 and len(node.scheduler.running()) == 4
    node.finish(tick)
    assert node.take(StartRun) == []  # the freed slot is the ticks' again: the one-offs still wait
    node.finish(started[0])
    assert [s.run_id for s in node.take(StartRun)] == [long_runs[3]]
