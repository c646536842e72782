"""Jobs declared in code (peer.jobs.declared): the rule, and schedulers
(sans-IO, time by hand) applying it across a rollout."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest

from peer.control.decorators import check_arguments
from peer.jobs.declared import MAX_REPLACED, CodeRevision, judge, revision
from peer.jobs.definition import JobSpec
from peer.jobs.records import job_entry_from_wire
from peer.jobs.runs import tick_run_id
from peer.jobs.scheduler import JOBS, Role, Scheduler, SchedulerConfig, StartRun
from tests.test_scheduler import T0, Maps, Node, cron, member


def test_revision_covers_the_definition_but_not_paused() -> None:
    a = cron()
    assert revision(a) == revision(cron())
    assert revision(attrs.evolve(a, paused=True)) == revision(a)
    assert revision(cron(every="3s")) != revision(a)
    assert revision(cron(retries=2)) != revision(a)
    assert len(revision(a)) == 16


def test_judge_defines_a_new_job_and_leaves_an_identical_one() -> None:
    spec, rev = cron(), revision(cron())
    verdict = judge(spec, rev, None, None)
    assert verdict.apply and verdict.spec == spec and verdict.code == CodeRevision(rev)
    assert not judge(spec, rev, spec, CodeRevision(rev)).apply


def test_a_new_revision_replaces_the_current_and_an_old_one_never_comes_back() -> None:
    old, new = cron(retries=0), cron(retries=1)
    r_old, r_new = revision(old), revision(new)
    applied = judge(new, r_new, old, CodeRevision(r_old))
    assert applied.apply and applied.code == CodeRevision(r_new, (r_old,))
    # An old replica (re)starting while the new definition is in place: left alone.
    kept = judge(old, r_old, new, applied.code)
    assert not kept.apply and kept.why == f"replaced by revision {r_new}"
    # A third version replaces it again, and remembers both.
    newer = cron(retries=2)
    third = judge(newer, revision(newer), new, applied.code)
    assert third.apply and third.code == CodeRevision(revision(newer), (r_new, r_old))


def test_the_operator_keeps_paused_and_a_job_defined_otherwise_is_taken_over() -> None:
    old, new = cron(retries=0), cron(retries=1)
    paused = attrs.evolve(old, paused=True)
    verdict = judge(new, revision(new), paused, CodeRevision(revision(old)))
    assert verdict.apply and verdict.spec == attrs.evolve(new, paused=True)
    taken = judge(new, revision(new), old, None)
    assert taken.apply and taken.code == CodeRevision(revision(new)) and "takes it over" in taken.why


def test_replaced_revisions_are_bounded_and_the_wire_form_is_checked() -> None:
    code = CodeRevision("0" * 16)
    for n in range(1, MAX_REPLACED + 5):
        code = code.succeeded_by(f"{n:016x}")
    assert len(code.replaced) == MAX_REPLACED and code.replaced[0] == f"{MAX_REPLACED + 3:016x}"
    assert CodeRevision.from_wire(code.to_wire()) == code
    for bad in (None, [], {"rev": "x"}, {"rev": "0" * 16, "replaced": ["nothex!" * 2]}, {"rev": "0" * 16}):
        assert CodeRevision.from_wire(bad) is None


def test_a_jobs_entry_with_or_without_a_revision_reads_and_older_peers_ignore_it() -> None:
    spec = cron()
    plain = job_entry_from_wire({"spec": spec.to_wire(), "since": T0})
    assert plain.code is None
    code = CodeRevision(revision(spec))
    entry = job_entry_from_wire({"spec": spec.to_wire(), "since": T0, "code": code.to_wire()})
    assert entry.code == code and entry.spec == spec
    # A peer without this feature reads the spec and since keys only: the extra key is harmless.
    assert set(entry.to_wire()) == {"spec", "since", "code"}


# -- schedulers applying it -------------------------------------------------------------------


class Cluster:
    """Nodes sharing their jobs map by hand: each write reaches the others
    when ``spread`` is called (replication's merge, without the network)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.lives: dict[str, int] = {}
        self.now = T0
        self.writes: list[tuple[str, str | None]] = []  # (node, revision) of every write of the job's entry

    def start(self, name: str, spec: JobSpec | None) -> Node:
        self.lives[name] = self.lives.get(name, 0) + 1
        maps = Maps(f"{name}#{self.lives[name]}")
        maps.wall_ms = self.now
        scheduler = Scheduler(name, SchedulerConfig(settle=1.0), maps, rng=random.Random(7), wall_ms=self.now, life=self.lives[name])
        scheduler.set_view(self.now, [member(n) for n in self.nodes if n != name] + [member(name, meta=Role.STARTING.meta)])
        node = Node(scheduler, maps)
        # What it catches up while settling: the others' jobs map.
        for other in self.nodes.values():
            if other is not node and other.scheduler.name != name:
                maps.maps[JOBS].merge(other.maps.maps[JOBS].state(), self.now)
        maps.take_changes()
        if spec is not None:
            scheduler.declare(self.now, spec)
        self.nodes[name] = node
        return node

    def spread(self) -> None:
        for _ in range(3):  # a write made in reaction to another goes round too
            for node in self.nodes.values():
                for other in self.nodes.values():
                    if other is not node:
                        node.maps.maps[JOBS].merge(other.maps.maps[JOBS].state(), self.now)
                        node.maps.changes[JOBS].add("job")
            for node in self.nodes.values():
                before = node.scheduler.stats.declarations_applied
                node.advance(self.now)
                if node.scheduler.stats.declarations_applied != before:
                    self.writes.append((node.scheduler.name, node.scheduler.declarations()["job"][0]))

    def advance(self, ms: int) -> None:
        self.now += ms
        self.spread()

    def definitions(self) -> set[str | None]:
        revisions = set()
        for node in self.nodes.values():
            entry = node.scheduler.jobs().get("job")
            revisions.add(None if entry is None or entry.code is None else entry.code.rev)
        return revisions



def test_a_rollout_changes_the_definition_once_and_an_old_restart_does_not_revert_it() -> None:
    old, new = cron(retries=0), cron(retries=1)
    cluster = Cluster()
    for name in ("a", "b", "c"):
        cluster.start(name, old)
    cluster.advance(2_000)
    assert cluster.definitions() == {revision(old)}
    first_writes = len(cluster.writes)
    assert first_writes >= 1

    # Rolling: a restarts new; then b restarts, still old (a crash mid-rollout); then b and c new.
    cluster.start("a", new)
    cluster.advance(2_000)
    assert cluster.definitions() == {revision(new)}
    cluster.start("b", old)
    cluster.advance(2_000)
    assert cluster.definitions() == {revision(new)}
    assert cluster.nodes["b"].scheduler.declarations()["job"] == (revision(old), f"replaced by revision {revision(new)}")
    cluster.start("b", new)
    cluster.advance(2_000)
    cluster.start("c", new)
    cluster.advance(2_000)
    assert cluster.definitions() == {revision(new)}
    # One write for the whole rollout: no flip-flop.
    assert cluster.writes[first_writes:] == [("a", revision(new))]


def test_a_write_that_lost_is_put_right_by_the_newer_declaration() -> None:
    """An old node that turned ready without the cluster's definitions
    writes its own over the new one: the new nodes write theirs back, and
    the old revision stays replaced."""
    old, new = cron(retries=0), cron(retries=1)
    cluster = Cluster()
    for name in ("a", "b"):
        cluster.start(name, new)
    cluster.advance(2_000)
    # c: an old node, settled alone (nothing merged before it wrote).
    lone = Cluster()
    stray = lone.start("c", old)
    lone.now = cluster.now
    stray.advance(cluster.now)
    assert stray.scheduler.jobs()["job"].code == CodeRevision(revision(old))
    cluster.nodes["c"] = stray
    cluster.spread()
    assert cluster.definitions() == {revision(new)}
    entry = cluster.nodes["a"].scheduler.jobs()["job"]
    assert entry.code is not None and revision(old) in entry.code.replaced


def test_paused_by_the_operator_stays_paused_across_restarts_and_new_revisions() -> None:
    old, new = cron(retries=0), cron(retries=1)
    cluster = Cluster()
    a = cluster.start("a", old)
    cluster.start("b", old)
    cluster.advance(2_000)
    a.scheduler.set_paused(cluster.now, "job", True)
    cluster.spread()
    cluster.start("a", old)  # a restart of the same version
    cluster.advance(2_000)
    assert cluster.nodes["a"].scheduler.jobs()["job"].spec.paused
    cluster.start("a", new)  # a new revision: applied, still paused
    cluster.advance(2_000)
    assert cluster.definitions() == {revision(new)}
    entry = cluster.nodes["b"].scheduler.jobs()["job"]
    assert entry.spec.paused and entry.spec.retries == 1 and entry.code is not None and entry.code.rev == revision(new)


def test_a_kwargs_change_does_not_restart_the_schedule_nor_run_a_tick_twice() -> None:
    node_cluster = Cluster()
    a = node_cluster.start("a", cron())
    node_cluster.advance(1_000)
    a.advance(T0 + 4_500)
    node_cluster.now = T0 + 4_500
    ticks = [s.tick for s in a.take(StartRun)]
    since = a.scheduler.jobs()["job"].since
    redefined = attrs.evolve(cron(), retries=3)
    a.scheduler.declare(node_cluster.now, redefined)
    assert a.scheduler.jobs()["job"].since == since  # same timing: the schedule carries on
    a.advance(T0 + 8_500)
    later = [s.tick for s in a.take(StartRun)]
    assert later and min(later) > max(ticks) and len(set(ticks + later)) == len(ticks + later)
    assert tick_run_id("job", later[0]) not in {tick_run_id("job", t) for t in ticks}


# -- the check of arguments where submit is called ---------------------------------------------------


def _resize(run: Any, image: str, width: int, scale: float = 1.0, tags: list[str] | None = None, extra: Any = None) -> None:
    """A job function: ``run`` is the run's context."""


def test_arguments_are_checked_against_the_signature_and_simple_annotations() -> None:
    check_arguments(_resize, {"image": "a.png", "width": 3}, "resize.submit()")
    check_arguments(_resize, {"image": "a", "width": 3, "scale": 2, "tags": None, "extra": object()}, "w")
    with pytest.raises(TypeError, match=r"resize.submit\(\): missing a required argument: 'width'"):
        check_arguments(_resize, {"image": "a.png"}, "resize.submit()")
    with pytest.raises(TypeError, match="unexpected keyword argument 'height'"):
        check_arguments(_resize, {"image": "a.png", "width": 1, "height": 2}, "w")
    with pytest.raises(TypeError, match="argument 'width' expects int, got str"):
        check_arguments(_resize, {"image": "a.png", "width": "3"}, "w")
    with pytest.raises(TypeError, match="argument 'width' expects int, got bool"):
        check_arguments(_resize, {"image": "a.png", "width": True}, "w")
    with pytest.raises(TypeError, match="argument 'tags' expects"):
        check_arguments(_resize, {"image": "a.png", "width": 1, "tags": "x"}, "w")
    with pytest.raises(TypeError, match="'run' is the run's context"):
        check_arguments(_resize, {"image": "a.png", "width": 1, "run": 1}, "w")
