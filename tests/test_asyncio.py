"""peer.Node in an asyncio program (a trio guest run on the program's loop),
asyncio job functions, and the rule that picks a coroutine's runtime.

The embedding tests are plain functions running ``asyncio.run`` (the suite
runs async tests under trio); nodes bind 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sniffio
import trio

import peer
from peer.jobs.runs import RunState
from peer.jobs.scheduler import SchedulerConfig
from peer.jobs.targets import CallTarget
from peer.runtime import aio
from peer.runtime.keys import generate_key
from peer.testing import samples
from peer.testing.cluster import LocalCluster, wait_for

FAST = {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}
QUICK = SchedulerConfig(settle=0.2, settle_max=2.0, handover=0.2, scan_interval=0.2, drain_timeout=5.0)
TIMEOUT = 30.0


def node(name: str, seeds: list[str] | None = None, **options: Any) -> peer.Node:
    return peer.Node(name=name, bind="127.0.0.1:0", seeds=seeds, profile="local", membership=FAST, scheduler=QUICK, **options)


async def until(condition: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


# -- functions the embedded nodes run -------------------------------------------------------

SEEN: dict[str, Any] = {}


def add(x: int, y: int) -> int:  # sync: a worker thread
    SEEN.setdefault("add_threads", set()).add(threading.current_thread().name)
    return x + y


def make_asyncio_jobs(lock: asyncio.Lock, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Functions that can only work on ``loop``: ``lock`` was made there
    before any node started."""

    async def guarded(run: peer.RunContext, x: int) -> dict[str, Any]:
        async with lock:  # an asyncio primitive of the host loop
            await asyncio.sleep(0.01)
        run.progress({"x": x})
        update = await run.next_update()
        return {
            "x": x,
            "update": update,
            "same_loop": asyncio.get_running_loop() is loop,
            "library": sniffio.current_async_library(),
            "thread": threading.current_thread() is threading.main_thread(),
        }

    async def sleeper(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            SEEN["sleeper_cancelled"] = True
            raise
        return "slept"

    async def on_trio() -> str:  # needs trio, as the job says
        await trio.sleep(0)
        return "trio"

    return {"guarded": guarded, "sleeper": sleeper, "on_trio": on_trio}


def test_asyncio_program_embeds_nodes_with_the_whole_api() -> None:
    SEEN.clear()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()
        jobs = make_asyncio_jobs(lock, loop)
        async with node("a") as a, node("b", seeds=[a.address]) as b:
            for n in (a, b):
                n.function(add)
                for function in jobs.values():
                    n.function(function)
            await a.wait_ready(TIMEOUT)
            await b.wait_ready(TIMEOUT)
            await until(lambda: {m.name: m.role for m in a.members()} == {"a": "ready", "b": "ready"})
            assert b.member("a") is not None and b.live_members()

            # A sync function: submitted on a, its result read on b.
            run_id = await a.submit(add, x=2, y=3)
            assert await b.result(run_id, timeout=TIMEOUT) == 5

            # An asyncio coroutine with progress, an update and watch; it runs on the host loop.
            async with lock:  # held: the job waits for the program to let go
                run_id = await a.submit(jobs["guarded"], x=7)
                await asyncio.sleep(0.2)
                assert a.run(run_id) is None or a.run(run_id).state is not RunState.SUCCEEDED  # type: ignore[union-attr]
            await until(lambda: b.run(run_id) is not None)
            await b.send(run_id, {"hello": "asyncio"})
            seen = [record async for record in b.watch(run_id)]
            assert seen[-1].state is RunState.SUCCEEDED
            assert seen[-1].progress == {"x": 7}
            assert await a.result(run_id) == {
                "x": 7, "update": {"hello": "asyncio"}, "same_loop": True, "library": "asyncio", "thread": True,
            }  # fmt: skip

            # Its timeout cancels the asyncio task, which sees CancelledError.
            run_id = await a.submit_with(jobs["sleeper"], {"seconds": 30}, timeout=0.3)
            with pytest.raises(peer.RunFailed, match="timed out") as failed:
                await b.result(run_id, timeout=TIMEOUT)
            assert failed.value.state is RunState.FAILED
            assert SEEN.get("sleeper_cancelled") is True

            # runtime="trio" on an asyncio node: a trio coroutine still runs.
            run_id = await a.submit_with(jobs["on_trio"], runtime="trio")
            assert await a.result(run_id, timeout=TIMEOUT) == "trio"
            # An asyncio one forced onto trio fails, saying what to set.
            run_id = await a.submit_with(jobs["sleeper"], {"seconds": 0.01}, runtime="trio")
            with pytest.raises(peer.RunFailed, match="unrecognized yield message") as wrong:
                await a.result(run_id, timeout=TIMEOUT)
            assert 'set runtime = "asyncio"' in (wrong.value.error or "")

            # Jobs: schedule, trigger, pause, resume, remove.
            assert await a.schedule("every", "@every 1h", add, kwargs={"x": 1, "y": 1}, runtime="auto")
            await until(lambda: b.job("every") is not None)
            assert await b.result(await b.trigger("every", y=10), timeout=TIMEOUT) == 11
            assert (await b.pause_job("every")).paused
            await until(lambda: a.jobs()["every"].paused)  # (a concurrent write would win over the removal: add-wins)
            assert not (await a.resume_job("every")).paused
            await until(lambda: not b.jobs()["every"].paused)
            assert await a.remove_job("every")
            await until(lambda: "every" not in b.jobs())
            with pytest.raises(peer.UnknownJob):
                await a.pause_job("every")
            assert a.runs(job="add", state="succeeded")

            # A cancelled asyncio caller cancels the trio call, which unwinds.
            guest = a._guest
            assert guest is not None and guest._calls is not None
            before = len(guest._calls.child_tasks)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(guest.call(lambda: trio.sleep(60)), 0.3)
            assert len(guest._calls.child_tasks) == before
            # A cancelled wait in the caller's own task (the fast path) leaves no waiter behind.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(a.wait("no-such-run", timeout=60), 0.3)
            assert a.agent._run_waits == {} and a.agent.scheduler.footprint()["watched"] == 0

            # Leaving b gracefully: a sees it left, not failed.
            await b.leave()
            assert not b.running
            await until(lambda: a.member("b") is not None and a.member("b").status == "left")  # type: ignore[union-attr]
        assert not a.running and a._guest is None

    asyncio.run(scenario())
    assert SEEN["add_threads"] and threading.main_thread().name not in SEEN["add_threads"]


def test_exceptions_and_failures_cross_the_bridge() -> None:
    async def scenario() -> None:
        # The body's exception comes out as itself, after the node has left.
        a = node("raiser")
        with pytest.raises(ValueError, match="from the body"):
            async with a:
                raise ValueError("from the body")
        assert not a.running

        # A bind error at once.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with pytest.raises(peer.BindError):
                async with peer.Node(name="clash", bind=f"127.0.0.1:{port}"):
                    pass

        # The node's own failure cancels the body and comes out as itself,
        # the body's cancellation taken back.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            lonely = node("lonely", seeds=[f"127.0.0.1:{silent.getsockname()[1]}"], join_timeout=0.5)
            body_cancelled = False
            with pytest.raises(peer.JoinFailed, match="no seed answered"):
                async with lonely:
                    try:
                        await asyncio.sleep(TIMEOUT)
                    except asyncio.CancelledError:
                        body_cancelled = True
                        raise
            assert body_cancelled
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            await asyncio.sleep(0)  # no cancellation left pending for the program

        # Cancelling the block (asyncio.timeout) leaves gracefully, and the timeout sees its own cancellation.
        c = node("cancelled")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async with c:
                    await asyncio.sleep(TIMEOUT)
        assert not c.running

        # A node can be entered again; calls outside its life say so.
        c.function(add)
        with pytest.raises(RuntimeError, match="not running"):
            await c.submit(add, x=1, y=1)
        async with c:
            await c.wait_ready(TIMEOUT)
            assert await c.result(await c.submit(add, x=1, y=1), timeout=TIMEOUT) == 2

    asyncio.run(scenario())


def boom(message: str) -> None:
    raise ValueError(message)


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


def test_fast_paths_give_what_the_trio_calls_give() -> None:
    """submit, submit_with, result, wait and watch run in the asyncio
    caller's own task (no trio task per call): each gives the same value
    and raises the same exception as the same call made on trio (through
    ``GuestRun.call``, where the method runs as in a trio program)."""

    async def scenario() -> None:
        async with node("fast") as a:
            for function in (add, boom, nap):
                a.function(function)
            await a.wait_ready(TIMEOUT)
            guest = a._guest
            assert guest is not None and guest.here()
            crossings = 0
            call = guest.call

            async def counted(function: Any) -> Any:
                nonlocal crossings
                crossings += 1
                return await call(function)

            guest.call = counted  # type: ignore[method-assign]

            async def on_trio(function: Any) -> Any:  # the slow path: the method run by a trio task
                return await call(function)

            async def outcome(make: Any) -> Any:
                try:
                    return ("value", await make())
                except Exception as error:  # noqa: BLE001 - compared below
                    return ("error", type(error), str(error))

            # submit: the record is there at once, and the run runs (its effects flushed by trio).
            run_id = await a.submit(add, x=2, y=3)
            record = a.run(run_id)
            assert record is not None and record.job == "add" and record.via == "fast"
            failed_id = await a.submit_with(boom, {"message": "no luck"}, id="doomed", retries=0)
            assert failed_id.startswith("doomed")
            assert await a.result(run_id, timeout=TIMEOUT) == 5
            await until(lambda: (r := a.run(failed_id)) is not None and r.state.finished)

            # Finished runs: the value, the record, RunFailed, the same both ways.
            for make in (
                lambda: a.result(run_id, timeout=TIMEOUT),
                lambda: a.wait(run_id),
                lambda: a.result(failed_id),
                lambda: a.wait(failed_id, timeout=0),
            ):
                assert await outcome(make) == await outcome(lambda make=make: on_trio(make))
            assert await outcome(lambda: a.result(run_id)) == ("value", 5)
            with pytest.raises(peer.RunFailed, match="no luck") as failed:
                await a.result(failed_id)
            assert failed.value.state is RunState.FAILED
            assert (await a.wait(failed_id)).state is RunState.FAILED

            # A run never heard of: UnknownRun; one not finished in time: TimeoutError (and not UnknownRun).
            slow_id = await a.submit(nap, seconds=2.0)
            fast_unknown = await outcome(lambda: a.result("no-such-run", timeout=0.2))
            assert fast_unknown[:2] == ("error", peer.UnknownRun)
            assert fast_unknown == await outcome(lambda: on_trio(lambda: a.result("no-such-run", timeout=0.2)))
            fast_timeout = await outcome(lambda: a.result(slow_id, timeout=0.2))
            assert fast_timeout[:2] == ("error", TimeoutError) and "has not finished within 0.2 s" in fast_timeout[2]
            slow_timeout = await outcome(lambda: on_trio(lambda: a.wait(slow_id, timeout=0.2)))
            assert slow_timeout[:2] == ("error", TimeoutError)
            # Waited on by both at once, woken by the same change.
            both = await asyncio.gather(a.result(slow_id, timeout=TIMEOUT), on_trio(lambda: a.result(slow_id, timeout=TIMEOUT)))
            assert both == ["rested", "rested"]

            # Refusals at the caller, as on trio.
            with pytest.raises(ValueError, match="not registered"):
                await a.submit(until)
            with pytest.raises(peer.JobError):
                await a.submit_with(add, {"x": 1, "y": 2}, schedule="@every 1s")

            # watch: every change, the finished record last.
            run_id = await a.submit(nap, seconds=0.05)
            seen = [record async for record in a.watch(run_id)]
            assert seen[-1].state is RunState.SUCCEEDED and seen[-1].result == "rested"
            assert all(not record.state.finished for record in seen[:-1])

            assert crossings == 0  # none of the above went through a trio task
            assert a.agent._run_waits == {}

            # A waiter in the caller's task when the node stops: it sees the node stopped.
            waiting = asyncio.create_task(a.result(await a.submit(nap, seconds=60.0)))
            await asyncio.sleep(0.1)
            await a.leave()
            with pytest.raises(RuntimeError, match="stopped"):
                await waiting

    asyncio.run(scenario())


def test_the_same_node_class_still_runs_under_trio() -> None:
    async def scenario() -> str:
        assert sniffio.current_async_library() == "trio"
        async with node("t") as t:
            assert t._guest is None
            t.function(add)
            await t.wait_ready(TIMEOUT)
            return str(await t.result(await t.submit(add, x=20, y=22), timeout=TIMEOUT))

    assert trio.run(scenario) == "42"


def test_a_blocking_sync_job_does_not_stall_asyncio_jobs() -> None:
    async def scenario() -> None:
        async with node("s") as s:
            release = threading.Event()

            def block() -> str:
                release.wait(TIMEOUT)
                return "released"

            async def quick() -> float:
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                return time.perf_counter() - started

            s.function(block)
            s.function(quick)
            await s.wait_ready(TIMEOUT)
            blocked = await s.submit(block)
            assert isinstance(await s.result(await s.submit(quick), timeout=TIMEOUT), float)
            assert s.run(blocked).state is RunState.RUNNING  # type: ignore[union-attr]
            release.set()
            assert await s.result(blocked, timeout=TIMEOUT) == "released"

    asyncio.run(scenario())


# -- the rule for runtime = "auto" ------------------------------------------------------------


async def uses_asyncio() -> None:
    await asyncio.sleep(0)


async def uses_trio() -> None:
    await trio.sleep(0)


async def uses_neither(x: int) -> int:
    return x


async def uses_asyncio_inside() -> None:
    async def inner() -> None:
        await asyncio.sleep(0)

    await inner()


class AsyncCallable:
    async def __call__(self) -> None:
        await asyncio.sleep(0)


def test_auto_detection_rule() -> None:
    assert aio.detect(uses_asyncio) == "asyncio"
    assert aio.detect(uses_trio) == "trio"
    assert aio.detect(uses_asyncio_inside) == "asyncio"  # nested code counts
    assert aio.detect(AsyncCallable()) == "asyncio"
    assert aio.detect(asyncio.sleep) == "asyncio"
    assert aio.detect(samples.asyncio_report) == "asyncio"
    assert aio.detect(samples.async_sleep) == "trio"
    # This module imports both: a function naming neither is undecided, and runs where the node does.
    assert aio.detect(uses_neither) is None
    assert aio.choose("auto", uses_neither, "trio") == "trio"
    assert aio.choose("auto", uses_neither, "asyncio") == "asyncio"
    assert aio.choose("trio", uses_asyncio, "asyncio") == "trio"
    # A coroutine object (an async function behind a plain decorator) is judged by its code.
    coroutine = uses_asyncio()
    assert aio.detect(coroutine) == "asyncio"
    coroutine.close()
    assert aio.library_of(asyncio) == "asyncio" and aio.library_of(trio.sleep) == "trio"
    assert aio.library_of(json) is None


def test_hints_name_the_runtime_to_set() -> None:
    assert 'runtime = "asyncio"' in (aio.hint(RuntimeError("no running event loop"), "trio") or "")
    assert 'runtime = "trio"' in (aio.hint(RuntimeError("must be called from async context"), "asyncio") or "")
    assert aio.hint(ValueError("bad input"), "trio") is None
    assert aio.hint(RuntimeError("no running event loop"), "asyncio") is None


# -- peer agent, a real process ----------------------------------------------------------------


def test_agent_runs_asyncio_job_functions_with_progress_updates_and_timeout(tmp_path: Path) -> None:
    cancelled = tmp_path / "cancelled.txt"
    with LocalCluster(tmp_path, profile="local", key=generate_key()) as cluster:
        agent = cluster.add("aio0")
        cluster.wait_api([agent], TIMEOUT)
        wait_for(lambda: agent.call("/status")["scheduler"]["role"] == "ready" or None, TIMEOUT, "the agent to be ready")

        # Through the CLI, --runtime asyncio; progress, then an update.
        submitted = agent.cli(
            "submit", "--call", "peer.testing.samples:asyncio_report", "--runtime", "asyncio",
            "--kwargs", json.dumps({"steps": 3, "delay": 0.05, "updates": 1}),
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip()
        wait_for(
            lambda: (agent.call(f"/runs/{run_id}").get("progress") or {}).get("step") == 3 or None, TIMEOUT, "progress"
        )
        agent.call(f"/runs/{run_id}/send", method="POST", body={"data": {"n": 1}})
        record = agent.call(f"/runs/{run_id}?wait={TIMEOUT}", timeout=TIMEOUT + 5)
        assert record["state"] == "succeeded", record
        assert record["result"] == {"steps": 3, "updates": [{"n": 1}], "library": "asyncio", "thread": "peer-asyncio"}

        # runtime auto finds asyncio by itself; the timeout cancels the task, which unwinds.
        body = {
            "id": "nap", "call": "peer.testing.samples:asyncio_sleep", "timeout": "0.5s",
            "kwargs": {"seconds": 60, "path": str(cancelled)},
        }  # fmt: skip
        run_id = agent.call("/submit", method="POST", body=body)["run"]
        record = agent.call(f"/runs/{run_id}?wait={TIMEOUT}", timeout=TIMEOUT + 5)
        assert record["state"] == "failed" and "timed out" in record["error"], record
        wait_for(lambda: cancelled.exists() or None, TIMEOUT, "the asyncio task to see its cancellation")

        # A plain asyncio function from the standard library: no more "no running event loop".
        run_id = agent.call("/submit", method="POST", body={"id": "stdlib", "call": "asyncio:sleep", "kwargs": {"delay": 0.01}})["run"]
        assert agent.call(f"/runs/{run_id}?wait={TIMEOUT}", timeout=TIMEOUT + 5)["state"] == "succeeded"

        # Forced onto trio, it fails, and the error says what to set.
        body = {"id": "forced", "call": "peer.testing.samples:asyncio_sleep", "runtime": "trio", "kwargs": {"seconds": 0.01}}
        run_id = agent.call("/submit", method="POST", body=body)["run"]
        record = agent.call(f"/runs/{run_id}?wait={TIMEOUT}", timeout=TIMEOUT + 5)
        assert record["state"] == "failed" and 'set runtime = "asyncio"' in record["error"], record


def test_executor_asyncio_loop_thread_lives_with_the_runs() -> None:
    from peer.runtime.executor import Executor

    async def scenario() -> None:
        executor = Executor()
        sender, receiver = trio.open_memory_channel[Any](10)
        sender.send_nowait("first")
        progress: list[Any] = []
        outcome = await executor.run(
            CallTarget("peer.testing.samples:asyncio_report", {"updates": 1}),
            run_id="r/1", attempt=1, timeout=TIMEOUT, updates=receiver, progress=progress.append,
        )  # fmt: skip
        assert outcome.ok, outcome
        assert outcome.result["updates"] == ["first"] and outcome.result["thread"] == "peer-asyncio"
        assert progress == [{"step": n, "of": 3} for n in (1, 2, 3)]
        assert any(thread.name == "peer-asyncio" for thread in threading.enumerate())
        await executor.aclose()
        assert not any(thread.name == "peer-asyncio" and thread.is_alive() for thread in threading.enumerate())

    trio.run(scenario)
