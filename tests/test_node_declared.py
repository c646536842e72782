"""Jobs declared in code with @node.cron and @node.job: embedded nodes on
127.0.0.1, in one trio run, declaring the same jobs as replicas of a
service do, and rolling a changed definition out."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio

import peer
from peer.control.decorators import CronJob
from peer.jobs.declared import revision
from peer.jobs.definition import JobError
from peer.jobs.runs import RunState
from tests.test_node import FAST, QUICK, wait_until

CALLS: list[tuple[str, int]] = []  # (run id, version) of every call of beat


def beat(run: peer.RunContext, version: int) -> int:
    CALLS.append((run.run_id, version))
    return version


def resize(image: str, width: int, scale: float = 1.0) -> dict[str, Any]:
    return {"image": image, "size": round(width * scale)}


def service(name: str, version: int, seeds: list[str] | None = None, bind: str = "127.0.0.1:0") -> tuple[peer.Node, CronJob[Any, Any]]:
    """One replica of the service, version ``version``: what its code declares."""
    node = peer.Node(name=name, bind=bind, seeds=seeds, profile="local", membership=FAST, scheduler=QUICK)
    declared = node.cron("@every 1s", id="beat", kwargs={"version": version})(beat)
    return node, declared


class Replicas:
    """Replicas each held in a task of their own, stopped and started again
    one by one as a rollout does."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.nodes: dict[str, peer.Node] = {}
        self.stops: dict[str, tuple[trio.Event, trio.Event]] = {}
        self.binds: dict[str, str] = {}

    async def start(self, name: str, version: int) -> peer.Node:
        seeds = [node.address for other, node in self.nodes.items() if other != name and node.running]
        node, _ = service(name, version, seeds or None, self.binds.get(name, "127.0.0.1:0"))
        stop, done = trio.Event(), trio.Event()

        async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with node:
                    task_status.started()
                    await stop.wait()
            finally:
                done.set()

        await self.nursery.start(hold)
        self.binds[name] = node.address  # a restart comes back on the same port
        self.nodes[name], self.stops[name] = node, (stop, done)
        with trio.fail_after(15):
            await node.wait_ready()
        return node

    async def stop(self, name: str) -> None:
        stop, done = self.stops.pop(name)
        stop.set()
        await done.wait()

    async def restart(self, name: str, version: int) -> peer.Node:
        await self.stop(name)
        return await self.start(name, version)

    async def stop_all(self) -> None:
        for name in list(self.stops):
            await self.stop(name)


def beat_runs(node: peer.Node) -> list[peer.RunRecord]:
    return sorted((r for r in node.runs("beat") if r.tick is not None), key=lambda r: r.tick or 0)


async def test_a_cron_declared_on_every_replica_is_one_job_and_each_tick_runs_once() -> None:
    CALLS.clear()
    async with trio.open_nursery() as nursery:
        replicas = Replicas(nursery)
        a = await replicas.start("a", 1)
        await replicas.start("b", 1)
        await replicas.start("c", 1)
        await wait_until(lambda: all(len(n.live_members()) == 3 for n in replicas.nodes.values()))
        await wait_until(lambda: len([r for r in beat_runs(a) if r.state is RunState.SUCCEEDED]) >= 4, timeout=15)
        for node in replicas.nodes.values():
            assert list(node.jobs()) == ["beat"]
            info = node.jobs()["beat"]
            assert info.revision == revision(node.declared["beat"]) and info.owner in replicas.nodes
        runs = beat_runs(a)
        await replicas.stop_all()
    calls = Counter(run_id for run_id, _ in CALLS)
    assert calls and max(calls.values()) == 1, calls  # no tick ran twice
    ticks = [r.tick or 0 for r in runs]
    assert all(later - earlier == 1000 for earlier, later in zip(ticks, ticks[1:], strict=False)), ticks  # none missed


async def test_a_rollout_applies_the_new_definition_once_and_an_old_restart_does_not_revert_it() -> None:
    CALLS.clear()
    async with trio.open_nursery() as nursery:
        replicas = Replicas(nursery)
        await replicas.start("a", 1)
        await replicas.start("b", 1)
        c = await replicas.start("c", 1)
        await wait_until(lambda: all(len(n.live_members()) == 3 for n in replicas.nodes.values()))
        await trio.sleep(2)
        # The rollout to version 2, one replica at a time; b crashes and
        # comes back as version 1 in the middle of it.
        a = await replicas.restart("a", 2)
        await wait_until(lambda: all(n.jobs()["beat"].spec.target.kwargs == {"version": 2} for n in replicas.nodes.values()))
        await trio.sleep(1.5)
        b = await replicas.restart("b", 1)
        await trio.sleep(1.5)
        assert b.jobs()["beat"].spec.target.kwargs == {"version": 2}
        assert replicas.nodes["b"].declared["beat"].target.kwargs == {"version": 1}
        await replicas.restart("b", 2)
        await replicas.restart("c", 2)
        await trio.sleep(2)
        for node in replicas.nodes.values():
            info = node.jobs()["beat"]
            assert list(node.jobs()) == ["beat"]
            assert info.spec.target.kwargs == {"version": 2} and info.revision == revision(node.declared["beat"])
        runs = beat_runs(replicas.nodes["c"])
        await replicas.stop_all()
    assert c is not replicas.nodes["c"] and a is not None
    calls = Counter(run_id for run_id, _ in CALLS)
    assert max(calls.values()) == 1, calls  # no tick ran twice
    ticks = [r.tick or 0 for r in runs]
    assert all(later - earlier == 1000 for earlier, later in zip(ticks, ticks[1:], strict=False)), ticks  # none missed
    # Each run used one of the two definitions, and once the new one ran the old one never did again.
    versions = [r.result for r in runs if r.state is RunState.SUCCEEDED]
    assert set(versions) == {1, 2} and versions == sorted(versions), versions


async def test_decorators_declare_before_and_while_running_and_check_arguments_at_the_caller() -> None:
    node = peer.Node(name="solo", bind="127.0.0.1:0", profile="local", membership=FAST, scheduler=QUICK)

    @node.job(timeout="10s", retries=1)
    def scaled(image: str, width: int, scale: float = 1.0) -> dict[str, Any]:
        return resize(image, width, scale)

    assert scaled("a.png", 10, scale=2) == {"image": "a.png", "size": 20}  # still the function
    assert scaled.id == "scaled" and scaled.spec.timeout == 10.0 and scaled.status == "not running"
    with pytest.raises(JobError, match="schedule: '61 \\* \\* \\* \\*' is not a valid cron expression"):
        node.cron("61 * * * *")(beat)
    with pytest.raises(TypeError, match="missing a required argument: 'version'"):
        node.cron("@every 1s", id="bad")(beat)
    with pytest.raises(JobError, match="paused"):
        node.cron("@every 1s", kwargs={"version": 1}, paused=True)(beat)
    async with node:
        await node.wait_ready(timeout=10)
        await wait_until(lambda: node.job("scaled") is not None and scaled.status == "current")
        info = node.job("scaled")
        assert info is not None and info.spec.schedule is None and info.revision == scaled.revision
        with pytest.raises(TypeError, match=r"scaled.submit\(\): missing a required argument: 'width'"):
            await scaled.submit(image="a.png")
        with pytest.raises(TypeError, match="argument 'width' expects int, got str"):
            await scaled.submit(image="a.png", width="10")
        run_id = await scaled.submit(image="b.png", width=4, scale=0.5)
        assert run_id.startswith("scaled@") and await scaled.result(run_id, timeout=10) == {"image": "b.png", "size": 2}
        record = node.run(run_id)
        assert record is not None and record.spec is not None and record.spec["timeout"] == 10.0

        # Declared while running: applied in the background.
        every = node.cron("@every 1s", id="beat", kwargs={"version": 7}, retries=2)(beat)
        await wait_until(lambda: node.job("beat") is not None and every.status == "current")
        assert node.jobs()["beat"].spec.retries == 2
        assert await every.result(await every.trigger(version=8), timeout=10) == 8
        assert await every.result(await every.submit(), timeout=10) == 7
        # Paused by the operator: declaring it again (a restart does) keeps it paused.
        await node.pause_job("beat")
        node.cron("@every 1s", id="beat", kwargs={"version": 7}, retries=2)(beat)
        await trio.sleep(0.2)
        assert node.jobs()["beat"].paused
        with pytest.raises(ValueError, match="declared already on this node"):
            node.cron("@every 2s", id="beat", kwargs={"version": 7})(beat)
