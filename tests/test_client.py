"""``peer.Client`` and ``peer.AsyncClient`` against real ``peer agent`` processes on 127.0.0.1.

Every method is called and its value checked against what the agent holds
(a job's ``JobSpec`` against the definition parsed here); every HTTP answer
the client turns into one of ``peer.Node``'s exceptions is provoked and the
exception's type and fields asserted, so a broken mapping fails here. The
async client runs under trio and under asyncio (``asyncio.run`` inside the
test). Token, TLS and the ``PEER_API*`` variables are checked on an agent that
serves HTTPS with a token. Every agent is started through ``LocalCluster``,
which kills it by PID when the module ends, passed or failed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import peer
from peer.control import client as client_module
from peer.control.client import ClientError, Endpoint
from peer.jobs.definition import parse_job
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget
from peer.runtime.settings import ConfigError
from peer.testing.cluster import AgentProcess, LocalCluster, wait_for
from peer.testing.processes import free_port
from tests.test_api_access import make_certificate

TIMEOUT = 30.0  # generous: the machines running CI are shared and slow
TOKEN = "client-test-token-0123456789"
SAMPLES = "peer.testing.samples"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("client")) as local:
        yield local


@pytest.fixture(scope="module")
def agent(cluster: LocalCluster) -> AgentProcess:
    """One agent, plain HTTP, no token; two runs at a time and two pending
    in the cluster, so that a test can fill the backlog."""
    node = cluster.add("plain", extra_args=["--max-running-runs", "2", "--max-pending-runs", "2"])
    cluster.wait_api([node], TIMEOUT)
    wait_for(node.answers_ready, TIMEOUT, "the agent to be ready")
    return node


@pytest.fixture
def client(agent: AgentProcess) -> Iterator[peer.Client]:
    with peer.Client(agent.api_addr) as made:
        yield made


def counting(client: peer.Client | peer.AsyncClient) -> list[str]:
    """The requests the client sends from now on (method and URL), recorded."""
    sent: list[str] = []
    http: Any = client._http
    original = http.request

    def request(*args: Any, **kwargs: Any) -> Any:
        sent.append(f"{kwargs['method']} {kwargs['url']}")
        return original(*args, **kwargs)

    http.request = request
    return sent


# -- sync: every method ----------------------------------------------------------------------


def test_members_status_and_jobs(client: peer.Client, agent: AgentProcess) -> None:
    members = client.members()
    assert [(m.name, m.address, m.status, m.role) for m in members] == [("plain", agent.addr, "alive", "ready")]
    assert isinstance(members[0], peer.MemberInfo) and members[0].incarnation > 0
    assert client.member("plain") == members[0] and client.member("nobody") is None
    assert client.live_members() == members
    status = client.status()
    assert status["name"] == "plain" and status["scheduler"]["max_pending_runs"] == 2

    # A job with every kind of target; the JobSpec read back is the one defined.
    assert client.schedule("nightly", "0 3 * * *", f"{SAMPLES}:echo", kwargs={"n": 1}, timezone="Europe/Paris", retries=2, tags=("a",))
    assert not client.schedule("nightly", "0 3 * * *", f"{SAMPLES}:echo", kwargs={"n": 1}, timezone="Europe/Paris", retries=2, tags=["a"])
    assert client.schedule("shell", None, CommandTarget(argv=["echo", "hi"]), timeout="30s")
    assert client.schedule("hook", "@every 1h", HttpTarget(url="http://127.0.0.1:1/x", method="GET"), paused=True)
    expected = parse_job(
        {
            "id": "nightly",
            "schedule": "0 3 * * *",
            "timezone": "Europe/Paris",
            "call": f"{SAMPLES}:echo",
            "kwargs": {"n": 1},
            "retries": 2,
            "tags": ["a"],
        },
        where="test",
    )
    jobs = client.jobs()
    assert {"nightly", "shell", "hook"} <= set(jobs)
    nightly = jobs["nightly"]
    assert isinstance(nightly, peer.JobInfo) and nightly.spec == expected
    assert nightly.owner == "plain" and nightly.next_tick is not None and nightly.next_tick.hour in (1, 2)  # 03:00 Paris, in UTC
    assert nightly.since.tzinfo is not None
    assert client.job("nightly") == nightly
    assert jobs["shell"].spec.target == CommandTarget(argv=["echo", "hi"]) and jobs["shell"].spec.timeout == 30.0
    assert jobs["shell"].owner is None and jobs["shell"].next_tick is None  # no schedule
    assert jobs["hook"].paused and jobs["hook"].owner is None
    assert client.job("nope") is None

    paused = client.pause_job("nightly")
    assert isinstance(paused, peer.JobSpec) and paused.paused and paused.id == "nightly"
    assert client.job("nightly").owner is None  # type: ignore[union-attr]
    resumed = client.resume_job("nightly")
    assert not resumed.paused and resumed == expected
    for job_id in ("nightly", "shell", "hook"):
        assert client.remove_job(job_id)
    assert not client.remove_job("nightly")
    assert "nightly" not in client.jobs()


def test_submit_trigger_result_wait_and_runs(client: peer.Client) -> None:
    run_id = client.submit(f"{SAMPLES}:echo", a=1, b=[1, 2])
    assert run_id.startswith("echo@")
    assert client.result(run_id, timeout=TIMEOUT) == {"a": 1, "b": [1, 2]}
    record = client.wait(run_id, timeout=TIMEOUT)
    assert isinstance(record, peer.RunRecord) and record.state is peer.RunState.SUCCEEDED and record.id == run_id
    assert record.owner == "plain" and record.spec is not None and record.spec["target"]["function"] == f"{SAMPLES}:echo"
    assert client.run(run_id) == record
    assert client.run("echo@nothing") is None

    # submit_with: an id of its own and a one-off's options; a module-level function names itself.
    from peer.testing import samples

    own = client.submit_with(samples.echo, {"x": "y"}, id="mine", retries=1, timeout=20)
    assert own.startswith("mine@") and client.result(own, timeout=TIMEOUT) == {"x": "y"}
    assert client.run(own).spec["retries"] == 1  # type: ignore[union-attr,index]
    call = client.submit(CallTarget(f"{SAMPLES}:echo", kwargs={"k": 1, "j": 0}), j=2)
    assert client.result(call, timeout=TIMEOUT) == {"k": 1, "j": 2}
    # The job key runtime travels: from a CallTarget, and as a field.
    on_trio = client.submit(CallTarget(f"{SAMPLES}:async_sleep", kwargs={"seconds": 0.01, "result": 1}, runtime="trio"))
    assert client.run(on_trio).spec["target"]["runtime"] == "trio"  # type: ignore[union-attr,index]
    assert client.result(on_trio, timeout=TIMEOUT) == 1
    on_asyncio = client.submit_with(f"{SAMPLES}:asyncio_sleep", {"seconds": 0.01}, runtime="asyncio")
    assert client.run(on_asyncio).spec["target"]["runtime"] == "asyncio"  # type: ignore[union-attr,index]
    assert client.result(on_asyncio, timeout=TIMEOUT) == "slept"
    command = client.submit(CommandTarget(argv=["echo", "hello"]))
    assert command.startswith("echo@") and client.result(command, timeout=TIMEOUT)["stdout"] == "hello\n"

    # trigger: a defined job, its kwargs merged over the definition's.
    client.schedule("manual", None, f"{SAMPLES}:echo", kwargs={"a": 1, "b": 2})
    triggered = client.trigger("manual", b=3)
    assert triggered.startswith("manual@") and client.result(triggered, timeout=TIMEOUT) == {"a": 1, "b": 3}

    # runs: newest first, filtered as peer.Node's.
    manual = client.runs("manual")
    assert [r.id for r in manual] == [triggered]
    mine = client.runs("mine", state="succeeded")
    assert [r.id for r in mine] == [own] and client.runs("mine", state=["failed", peer.RunState.LOST]) == []
    newest = client.runs(limit=2)
    assert [r.id for r in newest] == [r.id for r in client.runs()[:2]] and len(newest) == 2
    everything = client.runs()
    assert {run_id, own, call, command, triggered} <= {r.id for r in everything}
    assert all(a.created >= b.created for a, b in zip(everything, everything[1:], strict=False))  # type: ignore[operator]
    with pytest.raises(ValueError, match="state"):
        client.runs(state="sleeping")
    client.remove_job("manual")


def test_runs_beyond_the_apis_default_page() -> None:
    """``runs()`` gives all the runs, as ``peer.Node.runs()``, not the API's
    first page: driven here with answers made up (the methods are sans-IO)."""
    record = {"id": "a@1", "job": "a", "state": "succeeded"}
    steps = client_module._runs(None, None, None)
    first = next(steps)
    assert (first.method, first.path) == ("GET", "/runs")
    second = steps.send(answer({"runs": [record] * 100, "total": 150}))
    assert second.path == "/runs?limit=150"
    with pytest.raises(StopIteration) as done:
        steps.send(answer({"runs": [record] * 150, "total": 150}))
    assert len(done.value.value) == 150 and done.value.value[0] == peer.RunRecord.from_wire(record)
    # With a limit, one request.
    steps = client_module._runs("a", ["failed", peer.RunState.LOST], 5)
    assert next(steps).path == "/runs?job=a&state=failed%2Clost&limit=5"
    with pytest.raises(StopIteration):
        steps.send(answer({"runs": [], "total": 0}))


def test_long_polls_come_in_chunks_the_api_takes() -> None:
    """``wait(timeout=None)`` asks for at most WAIT_CHUNK_SECONDS at a time,
    and asks again while the run is unknown or unfinished."""
    steps = client_module._wait("a@1", None)
    request = next(steps)
    assert request.path == "/runs/a%401?wait=60.000" and request.wait == 60.0
    request = steps.send(client_module._Answer("u", 404, {}, b'{"error": "no such run: a@1"}', False))
    assert request.wait == 60.0
    request = steps.send(answer({"id": "a@1", "job": "a", "state": "running", "attempt": 1}))
    assert request.wait == 60.0
    with pytest.raises(StopIteration) as done:
        steps.send(answer({"id": "a@1", "job": "a", "state": "lost", "iso": {}}))
    assert done.value.value.state is peer.RunState.LOST


def answer(document: dict[str, Any], status: int = 200) -> Any:
    return client_module._Answer("http://x", status, {}, json.dumps(document).encode(), False)


def test_watch_and_send_wait_on_the_server(client: peer.Client) -> None:
    """``watch`` yields each change once and ends with the finished record,
    with one request per change (long-polls, not a timer); ``send`` reaches
    the run; ``result`` is one request however long the run takes."""
    run_id = client.submit_with(f"{SAMPLES}:collect_updates", {"expected": 2, "timeout": 20}, id="collector")
    sent = counting(client)
    seen: list[peer.RunRecord] = []
    for record in client.watch(run_id):
        seen.append(record)
        if record.state is peer.RunState.RUNNING and len(sent) < 10 and not any(line.startswith("POST") for line in sent):
            client.send(run_id, {"n": 1})
            client.send(run_id, "two")
    assert seen[-1].state is peer.RunState.SUCCEEDED and seen[-1].result == [{"n": 1}, "two"]
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))  # each a change
    assert any(r.progress == {"received": 1, "of": 2} or r.progress == {"received": 2, "of": 2} for r in seen)
    watches = [line for line in sent if line.startswith("GET")]
    # A record read per change, plus a few for a chunk that ended without one: never a busy loop.
    assert len(watches) <= len(seen) + 3, sent

    # The API's side: a record's ETag; If-None-Match with it is a 304 (at once, or after ?wait= without a change).
    url = f"{client.endpoint.url}/runs/{run_id.replace('@', '%40')}"
    tag = httpx.get(url).headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": tag}).status_code == 304
    assert httpx.get(url + "?wait=0.2", headers={"If-None-Match": tag}).status_code == 304
    assert httpx.get(url, headers={"If-None-Match": '"other"'}).json()["id"] == run_id
    assert httpx.get(url + "x").headers["etag"] == '"none"'

    slow = client.submit(f"{SAMPLES}:sleep", seconds=1.5, result="late")
    sent.clear()
    assert client.result(slow, timeout=TIMEOUT) == "late"
    assert len(sent) == 1 and "wait=" in sent[0], sent


def test_exceptions_are_peer_nodes(client: peer.Client) -> None:
    # RunFailed, with the real record.
    failing = client.submit(f"{SAMPLES}:fail", message="no luck")
    with pytest.raises(peer.RunFailed) as failed:
        client.result(failing, timeout=TIMEOUT)
    assert failed.value.state is peer.RunState.FAILED and failed.value.run_id == failing
    assert isinstance(failed.value.record, peer.RunRecord) and failed.value.record.id == failing
    assert "no luck" in (failed.value.error or "") and str(failed.value).startswith(f"run {failing} failed: ")
    assert client.wait(failing).state is peer.RunState.FAILED  # wait gives it, whatever the state

    # TimeoutError while it runs; UnknownRun when nothing is heard of it.
    sleeping = client.submit(f"{SAMPLES}:sleep", seconds=3)
    with pytest.raises(TimeoutError, match=f"run {sleeping} has not finished within 0.3 s"):
        client.result(sleeping, timeout=0.3)
    with pytest.raises(peer.UnknownRun) as unknown:
        client.result("ghost@1", timeout=0.3)
    assert unknown.value.run_id == "ghost@1" and "nothing heard of it within 0.3 s" in str(unknown.value)

    # send: unknown, finished (RunFinishedError holds the finished record), data refused.
    with pytest.raises(peer.UnknownRun):
        client.send("ghost@1", "hi")
    with pytest.raises(peer.RunFinishedError) as finished:
        client.send(failing, "too late")
    assert finished.value.record.id == failing and finished.value.record.state is peer.RunState.FAILED
    with pytest.raises(ValueError, match="JSON"):
        client.send(sleeping, {1, 2})

    # Jobs: unknown ones, and a bad definition, refused here as peer.Node refuses it...
    with pytest.raises(peer.UnknownJob) as no_job:
        client.trigger("nope")
    assert no_job.value.job_id == "nope"
    with pytest.raises(peer.UnknownJob):
        client.pause_job("nope")
    with pytest.raises(peer.UnknownJob):
        client.resume_job("nope")
    with pytest.raises(peer.JobError) as bad:
        client.schedule("bad", "@every 1s", f"{SAMPLES}:echo", retries="many")
    assert (bad.value.where, bad.value.job, bad.value.field) == ("schedule()", "bad", "retries")
    with pytest.raises(peer.JobError, match="submit_with\\(\\): .*schedule"):
        client.submit_with(f"{SAMPLES}:echo", schedule="@daily")
    with pytest.raises(TypeError, match="'call'"):
        client.schedule("x", None, f"{SAMPLES}:echo", call="other:f")
    with pytest.raises(ValueError, match="cannot be named"):
        client.submit(lambda: None)
    # ... and one only the agent can refuse (the target is its): the same JobError, named by the method.
    client.schedule("shell", None, CommandTarget(argv=["true"]))
    with pytest.raises(peer.JobError) as refused:
        client.trigger("shell", n=1)
    assert (refused.value.where, refused.value.job, refused.value.field) == ("trigger()", "shell", "kwargs")
    assert str(refused.value) == "trigger(): job 'shell': kwargs: only a call target takes kwargs"
    client.remove_job("shell")
    client.wait(sleeping, timeout=TIMEOUT)

    # Anything else the agent refuses is a ClientError with its status.
    with pytest.raises(ClientError) as other:
        client.request("GET", "/nowhere")
    assert other.value.status == 404 and "no such resource" in str(other.value)


def test_backlog_full(client: peer.Client) -> None:
    """Past ``max_pending_runs`` (2 here): ``BacklogFull`` with the backlog and its bound; nothing submitted."""
    waiting: list[str] = []
    try:
        with pytest.raises(peer.BacklogFull) as full:
            for i in range(12):
                waiting.append(client.submit_with(f"{SAMPLES}:count_updates", {"expected": 1}, id=f"waits-{i}"))
                time.sleep(0.2)  # the claims land: the backlog counts the runs that wait
        assert (full.value.backlog, full.value.bound) == (2, 2)
        assert "max_pending_runs" in str(full.value) and len(waiting) >= 2
        assert {r.id for r in client.runs(job=None)} >= set(waiting)
    finally:
        for run_id in waiting:
            client.send(run_id, "go")
        for run_id in waiting:
            assert client.result(run_id, timeout=TIMEOUT) == ["go"]


def test_no_agent_is_a_client_error() -> None:
    with peer.Client(f"127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(ClientError, match="connection refused") as refused:
            client.members()
        assert refused.value.status is None


# -- async: trio and asyncio -----------------------------------------------------------------


async def async_session(api: str) -> dict[str, Any]:
    """The same calls, under whichever loop runs it."""
    async with peer.AsyncClient(api) as client:
        run_id = await client.submit_with(f"{SAMPLES}:collect_updates", {"expected": 1, "timeout": 20}, id="async-collector")
        states = []
        async for record in client.watch(run_id):
            states.append(record.state)
            if record.state is peer.RunState.RUNNING and states.count(peer.RunState.RUNNING) == 1:
                await client.send(run_id, "ping")
        echo = await client.submit(f"{SAMPLES}:echo", where="async")
        failing = await client.submit(f"{SAMPLES}:fail")
        try:
            await client.result(failing, timeout=TIMEOUT)
            raise AssertionError("no RunFailed")
        except peer.RunFailed as error:
            failed = error.record
        try:
            await client.trigger("nope")
            raise AssertionError("no UnknownJob")
        except peer.UnknownJob as error:
            unknown = error.job_id
        assert await client.schedule("async-job", None, f"{SAMPLES}:echo", kwargs={"a": 1})
        job = await client.job("async-job")
        paused = await client.pause_job("async-job")
        await client.resume_job("async-job")
        removed = await client.remove_job("async-job")
        return {
            "states": states,
            "collected": (await client.wait(run_id)).result,
            "echo": await client.result(echo, timeout=TIMEOUT),
            "failed": failed,
            "unknown": unknown,
            "job": job,
            "paused": paused.paused,
            "removed": removed,
            "members": [m.name for m in await client.members()],
            "runs": [r.id for r in await client.runs("echo", limit=1)],
            "run": await client.run(echo),
            "jobs": await client.jobs(),
            "status": (await client.status())["name"],
            "echo_id": echo,
        }


def check_async_session(outcome: dict[str, Any]) -> None:
    assert outcome["states"][-1] is peer.RunState.SUCCEEDED and peer.RunState.RUNNING in outcome["states"]
    assert outcome["collected"] == ["ping"]
    assert outcome["echo"] == {"where": "async"}
    assert isinstance(outcome["failed"], peer.RunRecord) and outcome["failed"].state is peer.RunState.FAILED
    assert outcome["unknown"] == "nope"
    assert isinstance(outcome["job"], peer.JobInfo) and outcome["job"].spec.target == CallTarget(f"{SAMPLES}:echo", {"a": 1})
    assert outcome["paused"] is True and outcome["removed"] is True
    assert outcome["members"] == ["plain"] and outcome["status"] == "plain"
    assert outcome["runs"] == [outcome["echo_id"]] and outcome["run"].result == {"where": "async"}
    assert "async-job" not in outcome["jobs"]


def test_async_client_under_trio(agent: AgentProcess) -> None:
    check_async_session(trio.run(async_session, agent.api_addr))


def test_async_client_under_asyncio(agent: AgentProcess) -> None:
    check_async_session(asyncio.run(async_session(agent.api_addr)))


# -- token, TLS and the environment ------------------------------------------------------------


def test_token_tls_and_environment(cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = make_certificate(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    secure = cluster.add(
        "secure",
        seeds=[],
        extra_args=["--api-token-file", str(token_file), "--api-tls-cert", str(cert), "--api-tls-key", str(key)],
    )
    url = f"https://{secure.api_addr}"
    for name in ("PEER_API", "PEER_API_TOKEN", "PEER_API_TOKEN_FILE", "PEER_API_CA", "PEER_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    def answers(client: peer.Client) -> Callable[[], bool]:
        def ready() -> bool:
            try:
                return bool(client.request("GET", "/health/ready"))
            except ClientError:
                return False

        return ready

    with peer.Client(url, token=TOKEN, ca=str(cert)) as client:
        assert client.endpoint == Endpoint(secure.api, tls=True, token=TOKEN, ca_file=str(cert))
        wait_for(answers(client), TIMEOUT, "the secure agent to be ready")
        assert client.status()["name"] == "secure"
        assert client.result(client.submit(f"{SAMPLES}:echo", tls=True), timeout=TIMEOUT) == {"tls": True}

    # A missing or wrong token, TLS without the CA, plain HTTP to HTTPS: ClientError, saying what to check.
    with peer.Client(url, ca=str(cert)) as client:
        with pytest.raises(ClientError, match="no token was sent") as no_token:
            client.members()
        assert no_token.value.status == 401
        assert client.request("GET", "/health")["status"] == "ok"  # probes need none
    with peer.Client(url, token="w" * 20, ca=str(cert)) as client, pytest.raises(ClientError, match="the token is wrong"):
        client.members()
    with peer.Client(url, token=TOKEN) as client, pytest.raises(ClientError, match="TLS with the agent"):
        client.members()
    with peer.Client(f"http://{secure.api_addr}", token=TOKEN) as client, pytest.raises(ClientError):
        client.members()

    # The environment: PEER_API (with its scheme), PEER_API_TOKEN or PEER_API_TOKEN_FILE, PEER_API_CA.
    monkeypatch.setenv("PEER_API", url)
    monkeypatch.setenv("PEER_API_CA", str(cert))
    monkeypatch.setenv("PEER_API_TOKEN", TOKEN)
    with peer.Client() as client:
        assert client.endpoint.tls and client.endpoint.token == TOKEN and client.members()[0].name == "secure"
    monkeypatch.delenv("PEER_API_TOKEN")
    monkeypatch.setenv("PEER_API_TOKEN_FILE", str(token_file))
    with peer.Client() as client:
        assert client.endpoint.token == TOKEN and client.status()["name"] == "secure"
    # Arguments win over the environment; both token variables at once is a mistake.
    with peer.Client(token_file=str(token_file)) as client:
        assert client.endpoint.token == TOKEN
    monkeypatch.setenv("PEER_API_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="give one of them"):
        peer.Client()
    with peer.Client(token=TOKEN) as client:
        assert client.endpoint.token == TOKEN
    with pytest.raises(ConfigError, match="token: a token is at least 16 characters"):
        peer.Client(url, token="short")
    with pytest.raises(ConfigError, match="cannot read"):
        peer.Client(url, token_file=str(tmp_path / "missing"))
    monkeypatch.setenv("PEER_API", "not:an:address")
    with pytest.raises(ConfigError, match="PEER_API"):
        peer.Client(token=TOKEN)

    # The async client under both loops, from the environment too.
    monkeypatch.setenv("PEER_API", url)
    monkeypatch.delenv("PEER_API_TOKEN_FILE")

    async def name() -> str:
        async with peer.AsyncClient() as client:
            return str((await client.status())["name"])

    assert trio.run(name) == "secure" and asyncio.run(name()) == "secure"

    # The CLI reads the same variables, through the same client.
    cli = subprocess.run(
        [sys.executable, "-m", "peer", "status", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert cli.returncode == 0 and json.loads(cli.stdout)["name"] == "secure", cli.stderr
    secure.kill()
