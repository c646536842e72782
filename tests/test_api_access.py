"""The control API refuses whoever should not use it and cannot be exhausted:
a token, Host and Origin checks, JSON only, bounded bodies, waits and
connections, target allow-lists, TLS; every refusal counted. Agents run
in-process on 127.0.0.1 (as in test_jobs_api), with real HTTP; one test runs
real ``peer agent`` processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from peer.control.api import MAX_BODY_BYTES
from peer.control.cli import main
from peer.control.client import ClientError, Endpoint, api_path, call, split_scheme
from peer.control.metrics import ApiStats
from peer.control.server import HttpControlPlane
from peer.jobs.definition import parse_job
from peer.jobs.targets import CallTarget, CommandTarget, TargetPolicy
from peer.runtime.agent import Agent
from peer.runtime.settings import ConfigError, Settings, load
from peer.runtime.transport import BindError
from peer.testing.cluster import wait_for
from peer.testing.processes import Processes, free_port
from tests.test_jobs_api import FAST, SCHEDULER, wait_until

TOKEN = "s3cret-token-for-tests-0123456789"


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[Agent]:
    """A lone agent whose API has ``overrides`` (Settings fields)."""
    settings = Settings(name="solo", bind=("127.0.0.1", 0), api=("127.0.0.1", 0), profile="local", membership=FAST, **overrides)
    agent = Agent(settings, None, control_plane=HttpControlPlane(), scheduler=SCHEDULER)
    await agent.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await wait_until(lambda: agent.scheduler.eligible() == ("solo",))
        yield agent
        with trio.fail_after(10):
            await agent.leave()


def stats(agent: Agent) -> ApiStats:
    plane = agent.control_plane
    assert isinstance(plane, HttpControlPlane)
    return plane.stats


async def request(
    agent: Agent, method: str, path: str, *, headers: dict[str, str] | None = None, body: Any = None, content: bytes | None = None,
    scheme: str = "http", verify: Any = False,
) -> httpx.Response:  # fmt: skip
    """One request as any HTTP client may send it (no token unless in ``headers``)."""
    url = f"{scheme}://127.0.0.1:{agent.api_address[1]}{path}"

    def send() -> httpx.Response:
        with httpx.Client(timeout=10, verify=verify) as client:
            return client.request(method, url, headers=headers, json=body, content=content)

    return await trio.to_thread.run_sync(send)


def refused(agent: Agent, reason: str) -> int:
    return stats(agent).refused[reason]


async def test_a_token_is_needed_for_everything_but_health(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(api_token=TOKEN) as agent:
        for path in ("/status", "/members", "/jobs", "/metrics", "/nothing", "/runs/x"):
            answer = await request(agent, "GET", path)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "needs a token" in answer.json()["error"]
        answer = await request(agent, "POST", "/submit", body={"id": "x", "call": "os:system", "kwargs": {"command": "true"}})
        assert answer.status_code == 401 and not list(agent.scheduler.records())
        wrong = await request(agent, "GET", "/status", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "the token is wrong"}
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = await request(agent, "GET", "/status", headers={"Authorization": "Basic " + TOKEN})
        assert basic.status_code == 401
        assert refused(agent, "unauthenticated") == 9

        # Probes need no token.
        assert (await request(agent, "GET", "/health")).status_code == 200
        assert (await request(agent, "GET", "/health/ready")).status_code == 200

        # The token: the client sends it; counters in /metrics and /status.
        endpoint = Endpoint(agent.api_address, token=TOKEN)
        status = await trio.to_thread.run_sync(lambda: call(endpoint, "/status"))
        assert status["api"]["refused"]["unauthenticated"] == 9
        metrics = (await request(agent, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
        assert 'peer_api_refused_total{reason="unauthenticated"} 9.0' in metrics
        assert 'peer_api_refused_total{reason="forbidden_origin"} 0.0' in metrics
        without = Endpoint(agent.api_address)
        with pytest.raises(ClientError) as error:
            await trio.to_thread.run_sync(lambda: call(without, "/status"))
        assert error.value.status == 401 and "no token was sent" in str(error.value)
    assert TOKEN not in caplog.text


async def test_metrics_public_serves_metrics_only() -> None:
    async with serving(api_token=TOKEN, metrics_public=True) as agent:
        assert (await request(agent, "GET", "/metrics")).status_code == 200
        assert (await request(agent, "GET", "/status")).status_code == 401


async def test_foreign_hosts_and_cross_site_requests_are_refused_with_or_without_a_token() -> None:
    async with serving(api_hosts=("peer.internal",), api_origins=("https://ops.example",)) as agent:
        port = agent.api_address[1]
        for host in (f"127.0.0.1:{port}", "127.0.0.1", "10.1.2.3:80", "[::1]:7947", "localhost", f"LOCALHOST:{port}", "peer.internal:1"):
            assert (await request(agent, "GET", "/status", headers={"Host": host})).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "peer.internal.evil.example"):
            answer = await request(agent, "GET", "/health", headers={"Host": host})
            assert answer.status_code == 403 and "api_hosts" in answer.json()["error"], host
        assert refused(agent, "forbidden_host") == 4

        # A browser on another origin: refused, the job not defined; an allowed origin is served.
        job = {"id": "evil", "command": "touch /tmp/pwned", "mode": "all"}
        answer = await request(agent, "POST", "/jobs", headers={"Origin": "http://evil.example"}, body=job)
        assert answer.status_code == 403 and "api_origins" in answer.json()["error"]
        assert "evil" not in agent.scheduler.jobs()
        assert (await request(agent, "GET", "/status", headers={"Origin": "null"})).status_code == 403
        no_cors = await request(agent, "GET", "/runs/x?wait=300", headers={"Sec-Fetch-Site": "cross-site"})
        assert no_cors.status_code == 403
        assert (await request(agent, "GET", "/status", headers={"Sec-Fetch-Site": "same-site"})).status_code == 403
        assert (await request(agent, "GET", "/status", headers={"Sec-Fetch-Site": "none"})).status_code == 200
        assert (await request(agent, "GET", "/status", headers={"Origin": "https://OPS.example/"})).status_code == 200
        assert refused(agent, "forbidden_origin") == 4

    async with serving(api_token=TOKEN) as agent:
        with_token = {"Authorization": f"Bearer {TOKEN}"}
        assert (await request(agent, "GET", "/status", headers={**with_token, "Host": "evil.example"})).status_code == 403
        assert (await request(agent, "GET", "/status", headers={**with_token, "Origin": "http://x.example"})).status_code == 403


async def test_bodies_are_json_bounded_and_shallow(caplog: pytest.LogCaptureFixture) -> None:
    async with serving() as agent:
        job = json.dumps({"id": "j", "call": "peer.testing.samples:echo"}).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {} if content_type is None else {"Content-Type": content_type}
            answer = await request(agent, "POST", "/jobs", headers=headers, content=job)
            assert answer.status_code == 415 and "Content-Type: application/json" in answer.json()["error"], content_type
        # A body-less POST with a form's type is refused too (a cross-site form cannot leave the node).
        answer = await request(agent, "POST", "/leave", headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415 and not agent.leaving
        assert refused(agent, "content_type") == 5 and "j" not in agent.scheduler.jobs()
        answer = await request(agent, "POST", "/jobs", headers={"Content-Type": "application/json; charset=utf-8"}, content=job)
        assert answer.status_code == 200

        # JSON nested 1,000 deep: a 400 that says so, not a 500 and a logged RecursionError.
        caplog.clear()
        for depth in (1000, 65):
            deep = b'{"id": "d", "call": "m:f", "kwargs": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
            answer = await request(agent, "POST", "/jobs", headers={"Content-Type": "application/json"}, content=deep)
            assert answer.status_code == 400 and "deeper than 64 levels" in answer.json()["error"], depth
        assert refused(agent, "too_deep") == 2
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
        fine = {"id": "d", "call": "peer.testing.samples:echo", "kwargs": {"a": [[[[1]]]]}}
        assert (await request(agent, "POST", "/jobs", body=fine)).status_code == 200

        # A declared length over the limit: 413 before a byte of the body is sent.
        port = agent.api_address[1]
        head = (
            f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {10 * MAX_BODY_BYTES}\r\n\r\n"
        ).encode()
        assert (await trio.to_thread.run_sync(exchange, port, head, b"")).startswith(b"HTTP/1.1 413")
        # A chunked body is cut off once past the limit, before its end.
        head = b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n" % (64 * 1024) + b" " * (64 * 1024) + b"\r\n"
        body = chunk * (MAX_BODY_BYTES // (64 * 1024) + 2)  # no last chunk: the body never ends
        assert (await trio.to_thread.run_sync(exchange, port, head, body)).startswith(b"HTTP/1.1 413")
        assert refused(agent, "too_large") == 2


def exchange(port: int, head: bytes, body: bytes) -> bytes:
    """Send ``head`` and ``body`` on a raw connection; the first bytes answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        return sock.recv(65536)


async def test_long_polls_end_with_their_client_and_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(api_max_waits=2) as agent:
        port = agent.api_address[1]
        polls = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(f"GET {api_path('runs', 'nope@1:1', query={'wait': 300})} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            polls.append(sock)
        await wait_until(lambda: stats(agent).waits == 2)
        answer = await request(agent, "GET", "/runs/nope?wait=300")
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        assert "api_max_waits" in answer.json()["error"] and refused(agent, "too_many_waits") == 1
        assert (await request(agent, "GET", "/runs/nope?wait=0")).status_code == 404  # a wait of 0 still answers
        # The clients go away: their waits end, and the runs map stops watching for them.
        for sock in polls:
            sock.close()
        await wait_until(lambda: stats(agent).waits == 0 and not agent._run_waits)
        assert (await request(agent, "GET", "/runs/nope?wait=0.1")).status_code == 404
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_connections_are_bounded() -> None:
    async with serving(api_max_connections=2) as agent:
        port = agent.api_address[1]
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            await wait_until(lambda: stats(agent).connections == 2 and stats(agent).accept_paused >= 1)
            await trio.sleep(0.2)
            assert stats(agent).connections == 2  # the third waits in the backlog
            idle.pop(0).close()
            await wait_until(lambda: stats(agent).connections == 2 and stats(agent).accept_paused >= 1)
        finally:
            for sock in idle:
                sock.close()
        assert (await request(agent, "GET", "/health")).status_code == 200
        metrics = (await request(agent, "GET", "/metrics")).text
        assert "peer_api_accept_paused_total" in metrics and "peer_api_connections " in metrics


def test_no_token_no_api_beyond_loopback(tmp_path: Path) -> None:
    plane = HttpControlPlane()
    for host in ("0.0.0.0", "::", "10.0.0.1"):
        with pytest.raises(BindError) as error:
            plane.bind(Settings(api=(host, 0)))
        assert "without a token" in str(error.value) and "--api-token-file" in str(error.value)
    for host in ("127.0.0.1", "127.0.0.2"):
        plane.bind(Settings(api=(host, 0))).close()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    plane.bind(Settings(api=("0.0.0.0", 0), api_token_file=str(token_file))).close()
    assert plane.token == TOKEN


def test_token_settings(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n\n")
    assert load({}, environ={"PEER_API_TOKEN": TOKEN}).api_token_value() == TOKEN
    assert load({"api_token_file": str(token_file)}, environ={}).api_token_value() == TOKEN
    assert TOKEN not in repr(load({}, environ={"PEER_API_TOKEN": TOKEN}))
    with pytest.raises(ConfigError, match="not both"):
        load({"api_token_file": str(token_file)}, environ={"PEER_API_TOKEN": TOKEN}).api_token_value()
    with pytest.raises(ConfigError, match="at least 16"):
        load({}, environ={"PEER_API_TOKEN": "short"})
    with pytest.raises(ConfigError, match="cannot read"):
        load({"api_token_file": str(tmp_path / "missing")}, environ={}).api_token_value()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load({"api_token_file": str(tmp_path / "empty")}, environ={}).api_token_value()
    config = tmp_path / "peer.toml"
    config.write_text('metrics_public = true\napi_hosts = ["peer.internal"]\nallowed_calls = []\napi_max_waits = 8\n')
    settings = load({}, environ={"PEER_API_ORIGINS": "https://a.example, https://b.example"}, config_path=str(config))
    assert settings.metrics_public and settings.api_hosts == ("peer.internal",) and settings.allowed_calls == ()
    assert settings.api_origins == ("https://a.example", "https://b.example") and settings.api_max_waits == 8
    assert settings.allowed_commands is None
    with pytest.raises(ConfigError, match="PEER_METRICS_PUBLIC: expected true or false"):
        load({}, environ={"PEER_METRICS_PUBLIC": "maybe"})
    assert split_scheme("https://127.0.0.1:7947/") == (True, "127.0.0.1:7947") and split_scheme("h:1") == (None, "h:1")


def test_target_policy() -> None:
    anything = TargetPolicy()
    assert not anything.restricts and anything.refusal(CommandTarget(["rm", "-rf", "/"])) is None
    policy = TargetPolicy(allowed_commands=("true", "/usr/local/bin/backup"), allowed_calls=("myapp.jobs", "tools.x:f"))
    assert policy.refusal(CommandTarget(["true"])) is None
    assert policy.refusal(CommandTarget(["/usr/local/bin/../bin/backup", "--now"])) is None
    refusal = policy.refusal(CommandTarget(["/tmp/x/true"]))
    assert refusal == "command '/tmp/x/true' is not allowed by allowed_commands here (allowed: true, /usr/local/bin/backup)"
    assert "list sh" in str(policy.refusal(CommandTarget(["true"], shell=True)))
    assert TargetPolicy(allowed_commands=("sh",)).refusal(CommandTarget(["echo hi"], shell=True)) is None
    assert policy.refusal(CallTarget("myapp.jobs:f")) is None and policy.refusal(CallTarget("myapp.jobs.nightly:g")) is None
    assert policy.refusal(CallTarget("tools.x:f")) is None and policy.refusal(CallTarget("registered_name")) is None
    for function in ("myapp.jobsx:h", "os:system", "tools.x:g", "tools:f"):
        assert "is not allowed by allowed_calls" in str(policy.refusal(CallTarget(function))), function
    assert TargetPolicy(allowed_calls=()).refusal(CallTarget("a:b")) == "call 'a:b' is not allowed by allowed_calls here (it allows none)"


async def test_targets_outside_the_allow_lists_are_refused_and_never_run() -> None:
    async with serving(allowed_calls=("peer.testing",), allowed_commands=("true",)) as agent:
        answer = await request(agent, "POST", "/submit", body={"id": "x", "call": "os:system", "kwargs": {"command": "true"}})
        assert answer.status_code == 403
        assert answer.json()["error"] == "job 'x': call 'os:system' is not allowed by allowed_calls here (allowed: peer.testing)"
        answer = await request(agent, "POST", "/jobs", body={"jobs": [{"id": "a", "command": "true"}, {"id": "b", "command": "sh -c id"}]})
        assert answer.status_code == 403 and "command 'sh'" in answer.json()["error"] and "allowed_commands" in answer.json()["error"]
        assert not agent.scheduler.jobs()  # nothing of a refused request is defined
        assert refused(agent, "target_not_allowed") == 2
        ok = await request(agent, "POST", "/submit", body={"id": "echo", "call": "peer.testing.samples:echo", "kwargs": {"a": 1}})
        run = (await request(agent, "GET", api_path("runs", ok.json()["run"], query={"wait": 10}))).json()
        assert run["state"] == "succeeded"

        # A definition that reached this node another way (replicated from a
        # node that allows it): its run fails here, saying why, and nothing runs.
        spec = parse_job({"id": "foreign", "call": "os:getcwd"}, where="test")
        await agent.define_job(spec)
        run_id = await agent.submit(spec)
        with trio.fail_after(10):
            record = await agent.wait_for_run(run_id, 10)
        assert record is not None and record.state.value == "failed"
        assert record.error == "refused on this node: call 'os:getcwd' is not allowed by allowed_calls here (allowed: peer.testing)"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "api.crt", directory / "api.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = make_certificate(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    async with serving(api_tls_cert=str(cert), api_tls_key=str(key), api_token=TOKEN) as agent:
        endpoint = Endpoint(agent.api_address, tls=True, token=TOKEN, ca_file=str(cert))
        assert (await trio.to_thread.run_sync(lambda: call(endpoint, "/status")))["name"] == "solo"
        with pytest.raises(ClientError, match="TLS with the agent"):
            await trio.to_thread.run_sync(lambda: call(attrs.evolve(endpoint, ca_file=None), "/status"))
        with pytest.raises(ClientError):
            await trio.to_thread.run_sync(lambda: call(attrs.evolve(endpoint, tls=False), "/status"))
        # The CLI: https:// in --api, the CA and the token from their flags.
        address = f"https://127.0.0.1:{agent.api_address[1]}"
        argv = ["status", "--json", "--api", address, "--api-ca", str(cert), "--api-token-file", str(token_file)]
        code = await trio.to_thread.run_sync(main, argv)
        assert code == 0 and json.loads(capsys.readouterr().out)["name"] == "solo"
    with pytest.raises(ConfigError, match="give both"):
        HttpControlPlane().bind(Settings(api=("127.0.0.1", 0), api_tls_cert=str(cert)))
    with pytest.raises(ConfigError, match="cannot load"):
        HttpControlPlane().bind(Settings(api=("127.0.0.1", 0), api_tls_cert=str(key), api_tls_key=str(key)))


def test_a_real_agent_with_a_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    api = f"127.0.0.1:{free_port()}"
    peer = [sys.executable, "-m", "peer"]
    agent_args = ["agent", "--name", "t", "--bind", "127.0.0.1:0", "--profile", "local", "--api", api]

    def cli(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("PEER_")}
        return subprocess.run([*peer, *args], capture_output=True, text=True, timeout=60, env={**env, **environ})

    with Processes() as processes:
        refused_process = processes.spawn([*peer, *agent_args[:-1], "0.0.0.0:0"], stderr=subprocess.PIPE, text=True)
        agent = processes.spawn([*peer, *agent_args, "--api-token-file", str(token_file)], stderr=subprocess.DEVNULL)
        _, stderr = refused_process.communicate(timeout=60)
        assert refused_process.returncode == 1 and stderr.startswith("peer: error: api: refusing to serve the control API on 0.0.0.0")
        wait_for(lambda: port_open(api), 60, "the agent's API")
        answer = cli("status", "--json", "--api", api, "--api-token-file", str(token_file))
        assert answer.returncode == 0 and json.loads(answer.stdout)["name"] == "t", answer.stderr
        denied = cli("status", "--api", api)
        assert denied.returncode == 1 and "HTTP 401" in denied.stderr and "no token was sent" in denied.stderr
        assert cli("members", "--api", api, PEER_API_TOKEN=TOKEN).returncode == 0
        assert cli("members", "--api", api, PEER_API_TOKEN_FILE=str(token_file)).returncode == 0
        assert cli("leave", "--api", api, PEER_API_TOKEN=TOKEN).returncode == 0
        assert agent.wait(timeout=60) == 0


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True
