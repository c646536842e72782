"""The embedding API: peer.Node in-process, on 127.0.0.1, in one trio run."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

import peer
from peer.jobs.runs import RunState
from peer.jobs.scheduler import SchedulerConfig

FAST = {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}
QUICK = SchedulerConfig(settle=0.2, settle_max=2.0, handover=0.2, scan_interval=0.2, drain_timeout=5.0)


def add(x: int, y: int) -> int:  # sync: runs in a worker thread
    return x + y


async def greet(run: peer.RunContext, name: str) -> dict[str, Any]:  # async, with the run's context
    await trio.lowlevel.checkpoint()
    return {"greeting": f"hello {name}", "run": run.run_id, "attempt": run.attempt}


def explode(value: int) -> None:
    raise ValueError(f"bad input {value}")


async def collect(run: peer.RunContext, count: int) -> list[Any]:
    got = []
    for _ in range(count):
        got.append(await run.next_update())
        run.progress({"got": len(got)})
    return got


def collect_sync(run: peer.RunContext, count: int) -> list[Any]:
    return [run.get_update(timeout=10) for _ in range(count)]


TICKS: list[float] = []


def tick() -> str:
    TICKS.append(time.time())
    return "ticked"


def node(name: str, seeds: list[str] | None = None, bind: str = "127.0.0.1:0", **options: Any) -> peer.Node:
    """A node on a free loopback port, with every function of the service."""
    n = peer.Node(
        name=name, bind=bind, seeds=seeds, profile="local", membership=FAST, scheduler=QUICK, **options
    )
    for function in (add, greet, explode, collect, collect_sync, tick):
        n.function(function)
    return n


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_two_nodes_run_functions_for_each_other() -> None:
    async with node("a") as a, node("b", seeds=[a.address]) as b:
        await wait_until(lambda: len(a.live_members()) == 2 and len(b.live_members()) == 2)
        with trio.fail_after(10):
            await a.wait_ready()
            await b.wait_ready()
        await wait_until(lambda: {m.name: m.role for m in a.members()} == {"a": "ready", "b": "ready"})

        # A sync function, submitted on a, read on b; until both nodes have run one.
        owners = set()
        for attempt in range(40):
            run_id = await a.submit(add, x=attempt, y=3)
            assert await b.result(run_id, timeout=10) == attempt + 3
            record = b.run(run_id)  # as b read it: a may not have the result yet
            assert record is not None and record.state is RunState.SUCCEEDED and record.job == "add"
            owners.add(record.owner)
            if owners == {"a", "b"}:
                break
        assert owners == {"a", "b"}

        # An async function taking the run's context, by its registered name.
        run_id = await b.submit("greet", name="peer")
        result = await a.result(run_id, timeout=10)
        assert result == {"greeting": "hello peer", "run": run_id, "attempt": 1}

        # A failure is RunFailed, with the error text, on any node.
        run_id = await a.submit(explode, value=42)
        with pytest.raises(peer.RunFailed) as failed:
            await b.result(run_id, timeout=10)
        assert failed.value.state is RunState.FAILED and failed.value.record.id == run_id
        assert failed.value.error is not None and failed.value.error.startswith("ValueError: bad input 42")
        assert "ValueError: bad input 42" in str(failed.value)

        # Updates sent from the other node reach the run, in order; progress is seen.
        for function in (collect, collect_sync):
            run_id = await a.submit_with(function, {"count": 2}, id="collector", timeout=20)
            assert run_id.startswith("collector@")
            await wait_until(lambda: b.run(run_id) is not None)  # noqa: B023
            await b.send(run_id, {"n": 1})
            await b.send(run_id, "two")
            records = [record async for record in a.watch(run_id)]
            assert records[-1].state is RunState.SUCCEEDED and records[-1].result == [{"n": 1}, "two"]
            assert all(not record.state.finished for record in records[:-1])
            await b.wait(run_id, timeout=10)  # a watched it finish; b may hear of it a moment later
            with pytest.raises(peer.RunFinishedError):
                await b.send(run_id, "late")

        # A result not there in time, and a run nobody heard of.
        run_id = await a.submit_with(collect, {"count": 1}, timeout=20)
        with pytest.raises(TimeoutError, match="has not finished"):
            await b.result(run_id, timeout=0.3)
        await a.send(run_id, "go")
        assert await b.result(run_id, timeout=10) == ["go"]
        with pytest.raises(peer.UnknownRun):
            await a.result("nope@2026-01-01T00:00:00Z", timeout=0.1)
        with pytest.raises(peer.UnknownRun):
            await a.send("nope@2026-01-01T00:00:00Z", 1)
        # Every wait, finished or given up, left nothing watched behind.
        for n in (a, b):
            assert n.agent._run_waits == {} and n.agent.scheduler.footprint()["watched"] == 0


async def test_cron_job_defined_with_schedule_runs() -> None:
    TICKS.clear()
    async with node("a") as a, node("b", seeds=[a.address]) as b:
        assert await a.schedule("every-second", "@every 1s", tick, overlap="allow", tags=("test",)) is True
        assert await a.schedule("every-second", "@every 1s", tick, overlap="allow", tags=("test",)) is False
        await wait_until(lambda: "every-second" in b.jobs())
        job = b.jobs()["every-second"]
        assert job.spec.schedule is not None and job.spec.schedule.text == "@every 1s"
        assert job.spec.tags == ("test",) and job.next_tick is not None

        def done() -> list[peer.RunRecord]:
            return b.runs("every-second", state="succeeded")

        await wait_until(lambda: len(done()) >= 2, timeout=10)
        records = done()
        assert all(r.tick is not None and r.id.startswith("every-second@") and r.result == "ticked" for r in records)
        assert len({r.tick for r in records}) == len(records)  # each tick once
        await wait_until(lambda: b.jobs()["every-second"].owner in {"a", "b"})

        # Pausing stops the ticks; removing removes the job everywhere.
        await b.pause_job("every-second")
        await wait_until(lambda: a.jobs()["every-second"].paused)
        assert await b.remove_job("every-second") is True
        await wait_until(lambda: "every-second" not in a.jobs())
        with pytest.raises(peer.UnknownJob):
            await a.resume_job("every-second")
    assert len(TICKS) >= 2


async def test_trigger_a_defined_job_with_kwargs() -> None:
    async with node("a") as a:
        assert await a.schedule("adder", None, add, kwargs={"x": 1, "y": 1}, retries=1, timeout="10s")
        run_id = await a.trigger("adder", y=41)
        assert await a.result(run_id, timeout=10) == 42
        with pytest.raises(peer.UnknownJob):
            await a.trigger("nothing")


async def test_bad_definitions_are_one_line_errors() -> None:
    async with node("a") as a:
        with pytest.raises(peer.JobError, match=r"^schedule\(\): job 'bad': schedule: '61 \* \* \* \*'"):
            await a.schedule("bad", "61 * * * *", add)
        with pytest.raises(peer.JobError, match=r"^schedule\(\): job 'bad': timezone: unknown time zone 'Mars/Base'"):
            await a.schedule("bad", "0 3 * * *", add, timezone="Mars/Base")
        with pytest.raises(peer.JobError, match="did you mean 'retries'"):
            await a.schedule("bad", "0 3 * * *", add, retrys=2)
        with pytest.raises(peer.JobError, match=r"^submit\(\): job 'add': kwargs: set is not plain data"):
            await a.submit(add, x={1}, y=2)
        with pytest.raises(peer.JobError, match=r"^submit_with\(\): job 'x': schedule: a submitted run runs once"):
            await a.submit_with(add, {"x": 1, "y": 2}, id="x", schedule="* * * * *")
        with pytest.raises(TypeError, match="unexpected keyword argument 'call'"):
            await a.schedule("bad", "0 3 * * *", add, call="other")

        def stranger() -> None: ...

        with pytest.raises(ValueError, match="is not registered with this node"):
            await a.submit(stranger)
        assert a.jobs() == {}


FINISHED: list[str] = []


async def slow(run: peer.RunContext, seconds: float) -> str:
    await trio.sleep(seconds)
    FINISHED.append(run.run_id)
    return "slept"


async def running_on(leaver: peer.Node, submitter: peer.Node, seconds: float) -> str:
    """A run of ``slow`` that ``leaver`` owns and runs (the ring picks the
    owner of each run id: submit until it is ``leaver``)."""
    for _ in range(40):
        run_id = await submitter.submit(slow, seconds=seconds)
        await wait_until(lambda: (r := leaver.run(run_id)) is not None and r.owner is not None)  # noqa: B023
        record = leaver.run(run_id)
        assert record is not None
        if record.owner == leaver.name and record.state is RunState.RUNNING:
            return run_id
    raise AssertionError(f"{leaver.name} never owned a run")


async def finished_before_it_left(observer: peer.Node, leaver: str, run_id: str) -> None:
    """``leaver`` left (never failed, to ``observer``) after finishing its run, once."""
    member = observer.member(leaver)
    assert member is not None and member.status == "left"
    assert observer.agent.events["failed"] == 0
    assert await observer.result(run_id, timeout=10) == "slept"
    record = observer.run(run_id)
    assert record is not None and record.owner == leaver and record.attempt == 1


async def test_exit_drains_and_the_others_see_left() -> None:
    async with node("a") as a:
        a.function(slow)
        b = node("b", seeds=[a.address])
        b.function(slow)
        async with b:
            await wait_until(lambda: len(a.live_members()) == 2)
            with trio.fail_after(10):
                await b.wait_ready()
            run_id = await running_on(b, a, 0.5)
        # b left: a sees it left, never failed, and b's run was not cut short.
        assert not b.running
        assert run_id in FINISHED
        await finished_before_it_left(a, "b", run_id)


async def test_body_exception_or_cancellation_still_leave_gracefully() -> None:
    async with node("a") as a:
        a.function(slow)
        b = node("b", seeds=[a.address])
        with pytest.raises(KeyError, match="boom"):
            async with b:
                await wait_until(lambda: len(a.live_members()) == 2)
                raise KeyError("boom")
        await wait_until(lambda: (m := a.member("b")) is not None and m.status == "left", timeout=5)
        assert a.agent.events["failed"] == 0

        # Cancelled from outside, with a run going: the run finishes, the node
        # leaves, then the cancellation carries on.
        c = node("c", seeds=[a.address])
        c.function(slow)
        with trio.move_on_after(20) as outer:
            async with c:
                await wait_until(lambda: len(a.live_members()) == 2)
                with trio.fail_after(10):
                    await c.wait_ready()
                    run_id = await running_on(c, a, 0.5)
                outer.cancel()
                await trio.sleep_forever()
        assert outer.cancelled_caught
        assert run_id in FINISHED
        await finished_before_it_left(a, "c", run_id)

        # A node may be entered again: a new life, rejoining as itself.
        async with c:
            await wait_until(lambda: (m := a.member("c")) is not None and m.status == "alive")


async def test_join_failure_propagates_from_the_nodes_tasks() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        seed = f"127.0.0.1:{silent.getsockname()[1]}"
        lonely = node("lonely", seeds=[seed], join_timeout=0.5)
        with trio.fail_after(10), pytest.raises(peer.JoinFailed, match="no seed answered within 0.5s"):
            async with lonely:
                await trio.sleep_forever()
        assert not lonely.running


async def test_control_api_is_optional() -> None:
    from peer.control.client import call

    async with node("quiet") as quiet:
        assert quiet.api_address is None
    async with node("served", api="127.0.0.1:0") as served:
        assert served.api_address is not None
        host, port = served.api_address.rsplit(":", 1)
        status = await trio.to_thread.run_sync(call, (host, int(port)), "/status")
        assert status["name"] == "served"


def test_settings_are_checked_like_the_agents() -> None:
    with pytest.raises(peer.ConfigError, match=r"^bind: 'nope'"):
        peer.Node(bind="nope")
    with pytest.raises(peer.ConfigError, match=r"^profile: 'fast' is not one of lan, wan, local$"):
        peer.Node(profile="fast")
    with pytest.raises(peer.ConfigError, match=r"^membership: unknown setting 'probe_intervl'"):
        peer.Node(membership={"probe_intervl": 1})
    with pytest.raises(peer.ConfigError, match=r"^key line 1: not base64"):
        peer.Node(key="not a key!")
    with pytest.raises(peer.ConfigError, match=r"^key: a cluster key must be"):
        peer.Node(key=b"short")
    with pytest.raises(peer.ConfigError, match="key or key_file, not both"):
        peer.Node(key="a" * 44, key_file="/tmp/x")
    assert peer.Node(seeds=("10.0.0.1:7946", "dns:peers")).settings.seeds == ("10.0.0.1:7946", "dns:peers")
    assert peer.Node(key=b"k" * 32).keyring is not None
    assert peer.Node(drain_timeout=3, scheduler=QUICK).scheduler_config.drain_timeout == 3.0
    assert peer.Node(load_factor=1.1, scheduler=QUICK).scheduler_config.load_factor == 1.1
    with pytest.raises(peer.ConfigError, match=r"^load_factor: expected a number >= 1"):
        peer.Node(load_factor=0.5)


async def test_a_port_in_use_is_a_bind_error_at_entry() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = node("busy", bind=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(peer.BindError, match="the port is in use"):
            async with busy:
                raise AssertionError("entered")
        assert not busy.running


def test_function_registration() -> None:
    n = peer.Node(name="n")
    assert n.function(add) is add

    @n.function("maths.double")
    def double(x: int) -> int:
        return 2 * x

    assert double(2) == 4 and n.functions == {"add": add, "maths.double": double}
    n.function(add)  # the same function again: fine
    with pytest.raises(ValueError, match="another function is registered as 'add'"):
        n.register(lambda x, y: x, "add")
    with pytest.raises(ValueError, match="has no usable name"):
        n.function(lambda: None)
    with pytest.raises(ValueError, match="not a valid function name"):
        n.function("mod:fn")(add)
    with pytest.raises(RuntimeError, match="not running"):
        n.members()
