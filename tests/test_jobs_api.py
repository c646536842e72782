"""Jobs and runs over the control API and the CLI: agents in-process on
127.0.0.1, a real HTTP server, the client functions and ``peer.control.cli.main``."""

from __future__ import annotations

import functools
import io
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from peer.control.cli import main
from peer.control.client import ClientError, api_path, call, fetch
from peer.control.metrics import _SCHEDULER_HELP
from peer.control.server import HttpControlPlane
from peer.jobs.scheduler import SchedulerConfig, SchedulerStats
from peer.runtime.agent import Agent
from peer.runtime.settings import Settings

FAST = {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}
SCHEDULER = SchedulerConfig(settle=0.2, scan_interval=0.2, drain_timeout=2.0, late_check_interval=0.5)


def settings(name: str, seeds: tuple[str, ...] = ()) -> Settings:
    return Settings(name=name, bind=("127.0.0.1", 0), api=("127.0.0.1", 0), seeds=seeds, profile="local", membership=FAST)


async def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def api(agent: Agent, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> dict[str, Any]:
    request = functools.partial(call, agent.api_address, path, method=method, body=body, timeout=timeout)
    return await trio.to_thread.run_sync(request)


async def api_error(agent: Agent, path: str, *, method: str = "GET", body: Any = None) -> ClientError:
    with pytest.raises(ClientError) as info:
        await api(agent, path, method=method, body=body)
    return info.value


async def eventually(agent: Agent, path: str, accept, timeout: float = 10.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The document at ``path`` once ``accept(document)`` holds."""
    with trio.fail_after(timeout):
        while True:
            try:
                document = await api(agent, path)
            except ClientError as error:
                if error.status != 404:
                    raise
            else:
                if accept(document):
                    return document
            await trio.sleep(0.05)


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Agent, Agent]]:
    a = Agent(settings("a"), None, control_plane=HttpControlPlane(), scheduler=SCHEDULER)
    await a.bind()
    b = Agent(settings("b", seeds=(f"127.0.0.1:{a.transport.port}",)), None, control_plane=HttpControlPlane(), scheduler=SCHEDULER)
    await b.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await wait_until(lambda: len(a.scheduler.eligible()) == 2 and len(b.scheduler.eligible()) == 2)
        yield a, b
        with trio.fail_after(10):
            await b.leave()
            await a.leave()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    alone = Agent(settings("solo"), None, control_plane=HttpControlPlane(), scheduler=SCHEDULER)
    await alone.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(alone.run)
        await wait_until(lambda: alone.scheduler.eligible() == ("solo",))
        yield alone
        with trio.fail_after(10):
            await alone.leave()


async def test_jobs_runs_and_updates_across_two_nodes(cluster: tuple[Agent, Agent]) -> None:
    a, b = cluster

    # A bad definition: 400, naming the job and the field.
    error = await api_error(a, "/jobs", method="POST", body={"id": "echo", "call": "peer.testing.samples:echo", "retries": "many"})
    assert error.status == 400 and "job 'echo': retries: expected a whole number" in str(error)
    error = await api_error(a, "/jobs", method="POST", body={"id": "x", "call": "peer.testing.samples:echo", "colour": 1})
    assert error.status == 400 and "colour: unknown key" in str(error)
    error = await api_error(a, "/jobs", method="POST", body={"jobs": [{"id": "ok", "call": "m:f"}, {"id": "ok", "call": "m:f"}]})
    assert error.status == 400 and "defined twice" in str(error)
    assert "ok" not in a.scheduler.jobs()  # nothing of a refused request is defined

    # A good one-off job; defining it again changes nothing.
    echo = {"id": "echo", "call": "peer.testing.samples:echo", "kwargs": {"a": 1}, "tags": ["t1"]}
    assert await api(a, "/jobs", method="POST", body=echo) == {"id": "echo", "changed": True}
    assert await api(a, "/jobs", method="POST", body=echo) == {"id": "echo", "changed": False}
    listing = await eventually(b, "/jobs", lambda doc: [job["id"] for job in doc["jobs"]] == ["echo"])
    job = listing["jobs"][0]
    assert job["schedule"] is None and job["owner"] is None and job["next_tick"] is None and job["mode"] == "one"
    assert job["target"] == {"kind": "call", "summary": "peer.testing.samples:echo(a=1)"} and job["tags"] == ["t1"]

    # Submitted on a with kwargs merged over the job's, read on b with ?wait.
    submitted = await api(a, "/submit", method="POST", body={"job": "echo", "kwargs": {"b": 2}})
    run_id = submitted["run"]
    assert submitted["job"] == "echo" and run_id.startswith("echo@") and ":" in run_id
    record = await api(b, api_path("runs", run_id, query={"wait": 10}), timeout=15)
    assert record["state"] == "succeeded" and record["result"] == {"a": 1, "b": 2}, record
    assert record["owner"] in ("a", "b") and record["iso"]["created"].endswith("Z")
    # Whichever node ran it, the other reads the same record once it has arrived.
    await eventually(a, api_path("runs", run_id), lambda doc: doc["state"] == "succeeded" and doc["result"] == {"a": 1, "b": 2})
    # An unknown run, even after waiting, is a 404.
    error = await api_error(b, api_path("runs", "nope@2020-01-01T00:00:00Z", query={"wait": 0.2}))
    assert error.status == 404 and "no such run" in str(error)

    # A run reading updates, sent through b whichever node runs it.
    counter = {"id": "counter", "call": "peer.testing.samples:count_updates", "kwargs": {"expected": 2}, "timeout": 20}
    run_id = (await api(a, "/submit", method="POST", body=counter))["run"]
    with trio.fail_after(5):
        while b.scheduler.record(run_id) is None:
            await trio.sleep(0.02)
    assert await api(b, api_path("runs", run_id, "send"), method="POST", body={"data": "first"}) == {"sent": True, "run": run_id}
    # Its progress, as it reports it, is readable from any node too.
    await eventually(a, api_path("runs", run_id), lambda doc: doc.get("progress") == {"received": 1, "of": 2})
    await api(b, api_path("runs", run_id, "send"), method="POST", body={"data": {"n": 2}})
    record = await api(b, api_path("runs", run_id, query={"wait": 10}), timeout=15)
    assert record["state"] == "succeeded" and record["result"] == ["first", {"n": 2}], record
    # Sending to a finished run is a conflict; to an unknown run, a 404; without data, a 400.
    error = await api_error(b, api_path("runs", run_id, "send"), method="POST", body={"data": 3})
    assert error.status == 409 and "has finished" in str(error)
    assert (await api_error(b, api_path("runs", "echo@x", "send"), method="POST", body={"data": 3})).status == 404
    assert (await api_error(b, api_path("runs", run_id, "send"), method="POST", body={"date": 3})).status == 400

    # Submit errors.
    for body, status, text in [
        ({"job": "nope"}, 404, "no such job: nope"),
        ({"job": "echo", "kwargs": [1]}, 400, "kwargs"),
        ({"job": "echo", "timeout": 3}, 400, "only"),
        ({"call": "peer.testing.samples:echo"}, 400, "id: missing"),
        ({"id": "cron", "call": "peer.testing.samples:echo", "schedule": "@every 1s"}, 400, "schedule: a submitted job runs once"),
        ({"id": "bad", "call": "not a function"}, 400, "job 'bad': call:"),
    ]:
        error = await api_error(a, "/submit", method="POST", body=body)
        assert error.status == status and text in str(error), (body, error)
    await api(a, "/jobs", method="POST", body={"id": "shell", "command": "true"})
    error = await api_error(a, "/submit", method="POST", body={"job": "shell", "kwargs": {"a": 1}})
    assert error.status == 400 and "only a call target takes kwargs" in str(error)

    # A cron job: owned by one node, ticks, pauses, resumes, goes.
    cron = {"jobs": [{"id": "tick", "schedule": "@every 1s", "call": "peer.testing.samples:echo", "kwargs": {"t": True}}]}
    assert await api(b, "/jobs", method="POST", body=cron) == {"jobs": [{"id": "tick", "changed": True}]}
    shown = await eventually(a, "/jobs/tick", lambda doc: doc["owner"] in ("a", "b"))
    assert shown["definition"]["schedule"] == "@every 1s" and shown["next_tick"] is not None and not shown["paused"]
    owner = shown["owner"]
    assert b.scheduler.job_owner("tick") == owner  # both views agree
    shown = await eventually(a, "/jobs/tick", lambda doc: any(r["state"] == "succeeded" for r in doc["runs"]))
    assert all(r["job"] == "tick" and r["result"] == {"t": True} for r in shown["runs"] if r["state"] == "succeeded")
    pause = await api(a, "/jobs/tick/pause", method="POST")
    assert pause["id"] == "tick" and pause["paused"] and pause["definition"]["paused"]
    paused = await eventually(b, "/jobs/tick", lambda doc: doc["paused"])
    assert paused["owner"] is None and paused["next_tick"] is None
    resume = await api(b, "/jobs/tick/resume", method="POST")
    assert resume["id"] == "tick" and not resume["paused"] and not resume["definition"]["paused"]
    await eventually(a, "/jobs/tick", lambda doc: not doc["paused"] and doc["owner"] is not None)
    assert (await api_error(a, "/jobs/nope/pause", method="POST")).status == 404

    # /runs: filters, newest first, limit.
    runs = (await api(a, "/runs?job=echo"))["runs"]
    assert runs and all(r["job"] == "echo" for r in runs)
    everything = await api(b, "/runs")
    created = [r.get("created") or r.get("tick") for r in everything["runs"]]
    assert created == sorted(created, reverse=True) and everything["total"] == len(everything["runs"]) >= 3
    succeeded = (await api(b, "/runs?state=succeeded,failed"))["runs"]
    assert succeeded and all(r["state"] in ("succeeded", "failed") for r in succeeded)
    limited = await api(b, "/runs?limit=1")
    assert len(limited["runs"]) == 1 and limited["total"] >= everything["total"]
    for query, text in [("state=bogus", "unknown run state 'bogus'"), ("limit=0", "at least 1"), ("limit=x", "whole number")]:
        error = await api_error(b, f"/runs?{query}")
        assert error.status == 400 and text in str(error)
    assert (await api_error(b, api_path("runs", run_id, query={"wait": "forever"}))).status == 400

    # /status and /metrics: the scheduler's state on each node.
    statuses = [(await api(node, "/status"))["scheduler"] for node in (a, b)]
    for status in statuses:
        assert status["role"] == "ready" and status["eligible"] == 2 and status["jobs"] == 3
        assert status["unowned"] == 0 and isinstance(status["running"], list) and isinstance(status["late"], dict)
        assert set(status["stats"]) == {field.name for field in attrs.fields(SchedulerStats)}
    assert sum(status["stats"]["runs_succeeded"] for status in statuses) >= 3
    assert sum(status["stats"]["ticks_run"] for status in statuses) >= 1
    metrics = (await trio.to_thread.run_sync(fetch, a.api_address, "/metrics")).decode()
    for line in [
        'peer_scheduler_role{role="ready"} 1.0',
        'peer_scheduler_role{role="draining"} 0.0',
        "peer_scheduler_jobs 3.0",
        "peer_scheduler_eligible_nodes 2.0",
        "peer_scheduler_unowned_jobs 0.0",
        "peer_scheduler_late_jobs 0.0",
        f"peer_scheduler_runs_succeeded_total {float(a.scheduler.stats.runs_succeeded)}",
    ]:
        assert line in metrics.splitlines(), line
    assert "peer_scheduler_running_runs " in metrics and "# HELP peer_scheduler_failovers_total Runs re-run" in metrics
    footprint = (await api(a, "/status"))["footprint"]
    assert set(footprint) == {"replication", "scheduler", "agent"} and footprint["replication"]["peers"] == 1
    assert set(footprint["scheduler"]) == set(a.scheduler.footprint()) and footprint["agent"]["threads"] >= 1
    assert 'peer_footprint{part="replication",table="peers"} 1.0' in metrics.splitlines()
    assert 'peer_footprint{part="replication",table="runs.tombstones"}' in metrics
    assert set(_SCHEDULER_HELP) == {field.name for field in attrs.fields(SchedulerStats)}

    # Removing: gone everywhere; a second removal is a 404.
    assert await api(b, "/jobs/tick", method="DELETE") == {"id": "tick", "removed": True}
    assert (await api_error(b, "/jobs/tick", method="DELETE")).status == 404
    with trio.fail_after(5):
        while "tick" in a.scheduler.jobs():
            await trio.sleep(0.02)
    assert (await api_error(a, "/jobs/tick")).status == 404


def raw(agent: Agent, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request without the client's niceties."""
    url = f"http://127.0.0.1:{agent.api_address[1]}{path}"
    headers = {} if body is None else {"Content-Type": "application/json"}  # urllib's default is a form's
    request = urllib.request.Request(url, method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_router_paths_methods_and_bodies(agent: Agent) -> None:
    async def request(method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        return await trio.to_thread.run_sync(raw, agent, method, path, body)

    status, headers, body = await request("PUT", "/jobs")
    assert status == 405 and headers["allow"] == "GET, POST" and b"use GET or POST" in body
    status, headers, _ = await request("GET", "/jobs/x/pause")
    assert status == 405 and headers["allow"] == "POST"
    assert (await request("GET", "/nothing"))[0] == 404
    assert (await request("GET", "/jobs/x/pause/more"))[0] == 404
    assert (await request("GET", "/jobs/"))[0] == 200  # a trailing slash is the same resource
    status, headers, body = await request("HEAD", "/jobs")
    assert status == 200 and body == b""
    # An encoded '/' stays inside its segment: a job id, not a longer path.
    status, _, body = await request("GET", "/jobs/a%2Fpause")
    assert status == 404 and json.loads(body) == {"error": "no such job: a/pause"}
    status, _, body = await request("POST", "/jobs", b"{not json")
    assert status == 400 and "not JSON" in json.loads(body)["error"]
    status, _, body = await request("POST", "/jobs", b"[1, 2]")
    assert status == 400 and "JSON object" in json.loads(body)["error"]
    status, _, body = await request("POST", "/jobs", b"")
    assert status == 400 and "needs a JSON body" in json.loads(body)["error"]
    status, _, body = await request("POST", "/submit", b"x" * ((1 << 20) + 1))
    assert status == 413
    # The existing routes still answer.
    assert (await request("GET", "/health"))[0] == 200
    assert json.loads((await request("GET", "/status"))[2])["scheduler"]["eligible"] == 1


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_jobs_submit_result_send(
    agent: Agent, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{agent.api_address[1]}"
    target = ("--api", address)

    # A bad jobs file is refused here, one line naming the file, the job and the field.
    bad = tmp_path / "bad.toml"
    bad.write_text('[[job]]\nid = "hello"\ncall = "peer.testing.samples:echo"\nschedule = "61 * * * *"\n')
    code, out, err = await cli(capsys, "jobs", "add", str(bad), *target)
    assert code == 1 and out == ""
    assert err.startswith(f"peer: error: {bad}: job 'hello': schedule: ") and err.count("\n") == 1, err
    assert "hello" not in agent.scheduler.jobs()

    good = tmp_path / "jobs.toml"
    good.write_text(
        '[[job]]\nid = "hello"\ncall = "peer.testing.samples:echo"\nkwargs = { greeting = "hi" }\ntimeout = "30s"\n\n'
        '[[job]]\nid = "nightly"\nschedule = "0 3 * * *"\ntimezone = "Europe/Paris"\ncommand = "true"\npaused = true\n'
    )
    assert await cli(capsys, "jobs", "add", str(good), *target) == (0, "defined hello\ndefined nightly\n", "")
    assert await cli(capsys, "jobs", "add", str(good), *target) == (0, "unchanged hello\nunchanged nightly\n", "")

    # JSON on stdin.
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"id": "later", "command": ["sleep", "0"], "retries": 1})))
    assert await cli(capsys, "jobs", "add", "-", *target) == (0, "defined later\n", "")
    monkeypatch.setattr("sys.stdin", io.StringIO('[{"id": "x", "call": "m:f", "mode": "sometimes"}]'))
    code, _, err = await cli(capsys, "jobs", "add", "-", *target)
    assert code == 1 and err.startswith("peer: error: -: job 'x': mode: 'sometimes' is not one of one, all"), err

    # The table, and the same as JSON (options before or after the action).
    code, out, _ = await cli(capsys, "jobs", *target)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "SCHEDULE", "MODE", "OWNER", "NEXT", "PAUSED"]
    assert lines[1].split()[0] == "hello" and lines[1].split()[-1] == "no"
    assert "0 3 * * * (Europe/Paris)" in lines[3] and lines[3].split()[-1] == "yes"
    code, out, _ = await cli(capsys, "jobs", "--api", address, "list", "--json")
    assert code == 0 and [job["id"] for job in json.loads(out)["jobs"]] == ["hello", "later", "nightly"]
    code, out, _ = await cli(capsys, "jobs", "show", "hello", *target)
    assert code == 0 and "peer.testing.samples:echo(greeting='hi')" in out and "timeout     30s" in out and "no runs" in out

    # Submit a defined job: stdout is the run id alone; its result as JSON.
    code, out, _err = await cli(capsys, "submit", "hello", "--kwargs", '{"n": 3}', *target)
    run_id = out.strip()
    assert code == 0 and out == run_id + "\n" and run_id.startswith("hello@"), (out, _err)
    assert await cli(capsys, "result", run_id, "--wait", "10", *target) == (0, '{"greeting": "hi", "n": 3}\n', "")
    code, out, _ = await cli(capsys, "result", run_id, "--json", *target)
    assert code == 0 and json.loads(out)["state"] == "succeeded"

    # A one-off that fails: the error on stderr, exit 1.
    code, out, _ = await cli(capsys, "submit", "--call", "peer.testing.samples:fail", "--id", "boom", *target)
    assert code == 0 and out.startswith("boom@")
    code, out, err = await cli(capsys, "result", out.strip(), "--wait", *target)
    assert code == 1 and out == "" and "failed" in err and "failed on purpose" in err

    # A run waiting for updates: not finished (exit 2) until sent one.
    code, out, _ = await cli(capsys, "submit", "--call", "peer.testing.samples:count_updates", "--kwargs", '{"expected": 2}', *target)
    run_id = out.strip()
    assert code == 0 and run_id.startswith("count_updates@")
    code, out, err = await cli(capsys, "result", run_id, *target)
    assert code == 2 and out == "" and "has not finished" in err
    assert await cli(capsys, "send", run_id, "not json", *target) == (0, f"sent to {run_id}\n", "")
    code, out, _ = await cli(capsys, "send", run_id, '{"k": [1]}', "--json", *target)
    assert code == 0 and json.loads(out) == {"sent": True, "run": run_id}
    assert await cli(capsys, "result", run_id, "--wait", "10", *target) == (0, '["not json", {"k": [1]}]\n', "")
    code, _, err = await cli(capsys, "send", run_id, "1", *target)
    assert code == 1 and "HTTP 409" in err and "has finished" in err

    # A command one-off, with a timeout and retries.
    code, out, _ = await cli(capsys, "submit", "--command", "echo hello there", "--timeout", "5s", "--retries", "1", *target)
    assert code == 0 and out.startswith("echo@")
    code, out, _ = await cli(capsys, "result", out.strip(), "--wait", "10", "--json", *target)
    assert code == 0 and "hello there" in json.dumps(json.loads(out)["result"])

    # Runs: the table, filtered.
    code, out, _ = await cli(capsys, "runs", "hello", *target)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["RUN", "STATE", "ATTEMPT", "OWNER", "STARTED", "FINISHED"]
    assert len(lines) == 2 and lines[1].split()[1:4] == ["succeeded", "1", "solo"]
    code, out, _ = await cli(capsys, "runs", "--state", "failed", "--json", *target)
    assert code == 0 and [r["job"] for r in json.loads(out)["runs"]] == ["boom"]
    code, out, _ = await cli(capsys, "runs", "--limit", "2", *target)
    assert code == 0 and len(out.splitlines()) == 3

    # Pause, resume, remove.
    assert await cli(capsys, "jobs", "pause", "hello", *target) == (0, "paused hello\n", "")
    assert agent.scheduler.jobs()["hello"].spec.paused
    assert await cli(capsys, "jobs", "resume", "hello", *target) == (0, "resumed hello\n", "")
    assert await cli(capsys, "jobs", "rm", "later", *target) == (0, "removed later\n", "")
    assert "later" not in agent.scheduler.jobs()

    # Errors: one line, exit 1.
    for argv, text in [
        (("jobs", "show", "later"), "HTTP 404: no such job: later"),
        (("jobs", "rm", "later"), "HTTP 404"),
        (("submit",), "give one of JOB"),
        (("submit", "hello", "--call", "m:f"), "give one of JOB"),
        (("submit", "hello", "--timeout", "5"), "--timeout: only for a one-off"),
        (("submit", "hello", "--kwargs", "[1]"), "--kwargs: expected a JSON object"),
        (("submit", "--command", "ls", "--kwargs", "{}"), "--kwargs: only for --call"),
        (("submit", "--call", "peer.testing.samples:echo", "--timeout", "-1"), "submit: job 'echo': timeout:"),
        (("submit", "nope"), "HTTP 404: no such job: nope"),
        (("result", "nope@1", "--wait", "0.1"), "HTTP 404: no such run: nope@1"),
        (("runs", "--state", "done"), "unknown run state 'done'"),
        (("jobs", "add", str(tmp_path / "missing.toml")), "cannot read jobs file"),
    ]:
        code, out, err = await cli(capsys, *argv, *target)
        assert code == 1 and out == "" and err.startswith("peer: error: ") and text in err and err.count("\n") == 1, (argv, err)


async def test_a_submit_over_the_pending_backlog_is_refused_with_429(capsys: pytest.CaptureFixture[str]) -> None:
    """One run at a time and a backlog of two: runs that wait for updates
    fill the node, and the next submit is refused, said and counted."""
    config = attrs.evolve(SCHEDULER, max_running_runs=1, max_pending_runs=2)
    alone = Agent(settings("solo"), None, control_plane=HttpControlPlane(), scheduler=config)
    await alone.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(alone.run)
        await wait_until(lambda: alone.scheduler.eligible() == ("solo",))
        waiting = {"id": "wait", "call": "peer.testing.samples:count_updates", "kwargs": {"expected": 1}}
        runs = [(await api(alone, "/submit", method="POST", body=waiting))["run"]]
        await wait_until(lambda: len(alone.scheduler.running()) == 1)
        runs += [(await api(alone, "/submit", method="POST", body=waiting))["run"] for _ in range(2)]
        await wait_until(lambda: alone.scheduler.queued() == 2)
        assert len(alone.scheduler.running()) == 1  # the limit: the other two wait, pending

        def refused() -> tuple[int, dict[str, str], bytes]:
            url = f"http://127.0.0.1:{alone.api_address[1]}/submit"
            request = urllib.request.Request(url, method="POST", data=json.dumps(waiting).encode())
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers), error.read()

        status, headers, body = await trio.to_thread.run_sync(refused)
        assert status == 429 and headers["retry-after"] == "1", (status, headers)
        document = json.loads(body)
        assert (document["backlog"], document["bound"]) == (2, 2)
        assert "backlog of pending runs is 2, at its bound of 2 (max_pending_runs)" in document["error"]
        code, out, err = await cli(capsys, "submit", "--call", "peer.testing.samples:echo", "--api", f"127.0.0.1:{alone.api_address[1]}")
        assert code == 1 and out == "" and "HTTP 429" in err and "backlog of pending runs is 2" in err, err

        scheduler = (await api(alone, "/status"))["scheduler"]
        assert (scheduler["backlog"], scheduler["queued"], scheduler["max_running_runs"], scheduler["max_pending_runs"]) == (2, 2, 1, 2)
        assert scheduler["stats"]["submits_refused"] == 2 and scheduler["stats"]["runs_queued"] == 2
        metrics = (await trio.to_thread.run_sync(fetch, alone.api_address, "/metrics")).decode()
        assert "peer_scheduler_submits_refused_total 2.0" in metrics and "peer_scheduler_pending_runs 2.0" in metrics
        assert "peer_scheduler_queued_runs 2.0" in metrics and "peer_scheduler_max_running_runs 1.0" in metrics

        # Each run, sent its update, finishes; the next takes its slot; then submits are taken again.
        for run_id in runs:
            await wait_until(lambda run_id=run_id: run_id in alone.scheduler.running())
            await api(alone, api_path("runs", run_id, "send"), method="POST", body={"data": 1})
        for run_id in runs:
            assert (await api(alone, api_path("runs", run_id, query={"wait": 10}), timeout=15))["state"] == "succeeded"
        assert (await api(alone, "/submit", method="POST", body={"id": "echo", "call": "peer.testing.samples:echo"}))["run"]
        with trio.fail_after(10):
            await alone.leave()
