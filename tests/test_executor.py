"""The executor: each kind of target, success and failure, updates and
progress, timeouts and cancellation (processes really gone), HTTP against a
local server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trio

from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget
from peer.runtime.executor import MAX_ERROR_BYTES, Executor, Outcome, RunContext

PYTHON = sys.executable


async def execute(
    target: Any,
    *,
    executor: Executor | None = None,
    timeout: float | None = 10.0,
    attempt: int = 1,
    updates: tuple[Any, ...] = (),
    close_updates: bool = False,
) -> tuple[Outcome, list[Any]]:
    """Run ``target`` with ``updates`` already sent; return the outcome and
    the progress reported."""
    sender, receiver = trio.open_memory_channel[Any](100)
    for value in updates:
        sender.send_nowait(value)
    if close_updates:
        sender.close()
    progress: list[Any] = []
    outcome = await (executor or Executor()).run(
        target, run_id="job/1", attempt=attempt, timeout=timeout, updates=receiver, progress=progress.append
    )
    return outcome, progress


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for a reaper that
    is not ours (a grandchild reparented in a container may stay one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- functions the tests call ----------------------------------------------------

abandoned_thread_saw: list[str] = []


def thread_ident() -> int:
    return threading.get_ident()


async def with_context(run: RunContext) -> dict[str, Any]:
    return {"run_id": run.run_id, "attempt": run.attempt, "pending": run.updates_nowait()}


async def get_update_on_trio_thread(run: RunContext) -> Any:
    return run.get_update(0.1)


async def bad_progress(run: RunContext) -> None:
    run.progress({1, 2})


def wait_for_update_forever(run: RunContext) -> None:
    try:
        run.get_update()
    except trio.EndOfChannel:
        abandoned_thread_saw.append("end")
        raise


def nowait_in_thread(run: RunContext) -> list[Any]:
    first = run.get_update(5)
    return [first, *run.updates_nowait()]


async def exits() -> None:
    sys.exit(2)


def deep_failure(depth: int) -> None:
    if depth:
        deep_failure(depth - 1)
    raise ValueError("x" * 10_000 + "\nsecond line")


def returns_coroutine() -> Any:
    return with_context_free()


async def with_context_free() -> str:
    await trio.lowlevel.checkpoint()
    return "awaited"


FUNCTIONS = {
    "thread_ident": thread_ident,
    "with_context": with_context,
    "get_update_on_trio_thread": get_update_on_trio_thread,
    "bad_progress": bad_progress,
    "wait_for_update_forever": wait_for_update_forever,
    "nowait_in_thread": nowait_in_thread,
    "exits": exits,
    "deep_failure": deep_failure,
    "returns_coroutine": returns_coroutine,
}


def executor(**options: Any) -> Executor:
    return Executor(functions=FUNCTIONS, **options)


# -- CallTarget ------------------------------------------------------------------


async def test_async_function_result_is_plain_data() -> None:
    outcome, _ = await execute(CallTarget("peer.testing.samples:async_sleep", {"seconds": 0, "result": {"x": (1, 2)}}))
    assert outcome == Outcome(ok=True, result={"x": [1, 2]})


async def test_sync_function_runs_in_a_thread_without_blocking_the_node() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        outcome, _ = await execute(CallTarget("peer.testing.samples:sleep", {"seconds": 0.3, "result": "done"}))
        nursery.cancel_scope.cancel()
    assert outcome == Outcome(ok=True, result="done")
    assert ticks >= 5  # the trio thread kept running while the job slept

    outcome, _ = await execute(CallTarget("thread_ident"), executor=executor())
    assert outcome.ok and outcome.result != threading.get_ident()


async def test_echo_by_import_path_and_by_registered_name() -> None:
    outcome, _ = await execute(CallTarget("peer.testing.samples:echo", {"a": 1, "b": "two"}))
    assert outcome == Outcome(ok=True, result={"a": 1, "b": "two"})

    ex = Executor(functions={"double": lambda x: x * 2})
    ex.register("triple", lambda x: x * 3)
    assert (await execute(CallTarget("double", {"x": 4}), executor=ex))[0].result == 8
    assert (await execute(CallTarget("triple", {"x": 4}), executor=ex))[0].result == 12
    outcome, _ = await execute(CallTarget("quadruple", {"x": 4}), executor=ex)
    assert not outcome.ok and outcome.error.startswith("no function registered as 'quadruple'")
    with pytest.raises(ValueError):
        ex.register("a:b", lambda: None)


async def test_import_errors_are_readable() -> None:
    cases = {
        "no_such_package.mod:f": (
            "cannot import 'no_such_package.mod:f': ModuleNotFoundError: No module named 'no_such_package'"
        ),
        "peer.testing.samples:nope": (
            "cannot import 'peer.testing.samples:nope': AttributeError: module 'peer.testing.samples' has no attribute 'nope'"
        ),
        "peer.testing.samples:": "cannot import 'peer.testing.samples:': expected 'package.module:function'",
        "peer.runtime.executor:MAX_ERROR_BYTES": "'peer.runtime.executor:MAX_ERROR_BYTES' is not callable: it is a int",
    }
    for function, error in cases.items():
        outcome, _ = await execute(CallTarget(function))
        assert outcome == Outcome(ok=False, error=error), function


async def test_bad_arguments_are_reported_before_the_call() -> None:
    outcome, _ = await execute(CallTarget("peer.testing.samples:sleep", {"secs": 1}))
    assert not outcome.ok
    assert outcome.error == "bad arguments for 'peer.testing.samples:sleep': missing a required argument: 'seconds'"
    outcome, _ = await execute(CallTarget("peer.testing.samples:flaky", {"run": 1, "fail_times": 0}))
    assert outcome.error == "bad arguments for 'peer.testing.samples:flaky': 'run' is reserved for the run context"


async def test_unserialisable_and_oversized_results_fail() -> None:
    outcome, _ = await execute(CallTarget("peer.testing.samples:echo", {"a": [1, {2, 3}]}))
    assert outcome == Outcome(ok=False, error="result is not serialisable: set")
    outcome, _ = await execute(CallTarget("peer.testing.samples:async_sleep", {"seconds": 0, "result": {1: "a"}}))
    assert outcome == Outcome(ok=False, error="result is not serialisable: a map key is not a string")
    outcome, _ = await execute(CallTarget("peer.testing.samples:echo", {"n": 2**70}))
    assert outcome == Outcome(ok=False, error="result is not serialisable: int out of range")

    small = Executor(max_result_bytes=100)
    outcome, _ = await execute(CallTarget("peer.testing.samples:echo", {"s": "x" * 200}), executor=small)
    size = len(msgpack.packb({"s": "x" * 200}))
    assert outcome == Outcome(ok=False, error=f"result is {size} bytes, over the limit of 100")
    outcome, _ = await execute(CallTarget("peer.testing.samples:echo", {"s": "x" * 50}), executor=small)
    assert outcome.ok


async def test_exception_text_is_one_line_then_a_short_traceback() -> None:
    outcome, _ = await execute(CallTarget("peer.testing.samples:fail", {"message": "bad input"}))
    assert not outcome.ok and not outcome.timed_out and outcome.result is None
    lines = outcome.error.splitlines()
    assert lines[0] == "RuntimeError: bad input"
    assert lines[1] == "Traceback (most recent call last):"
    assert "samples.py" in outcome.error and "in fail" in outcome.error
    assert "trio" not in outcome.error and "executor.py" not in outcome.error

    outcome, _ = await execute(CallTarget("deep_failure", {"depth": 20}), executor=executor())
    # A huge message is cut, and does not push out the frames.
    assert len(outcome.error.encode()) <= MAX_ERROR_BYTES
    headline, *rest = outcome.error.splitlines()
    assert headline.startswith("ValueError: xxx") and len(headline) <= 512
    assert rest[0] == "Traceback (most recent call last):"
    assert outcome.error.count("in deep_failure") == 3  # the tail, not the whole stack
    assert 'raise ValueError("x" * 10_000' in outcome.error


async def test_sys_exit_in_a_job_is_a_failure_not_the_end_of_the_node() -> None:
    outcome, _ = await execute(CallTarget("exits"), executor=executor())
    assert outcome.error.splitlines()[0] == "SystemExit: 2"


async def test_a_plain_function_returning_a_coroutine_is_awaited() -> None:
    outcome, _ = await execute(CallTarget("returns_coroutine"), executor=executor())
    assert outcome == Outcome(ok=True, result="awaited")


async def test_unknown_target_type() -> None:
    outcome, _ = await execute("peer.testing.samples:echo")
    assert outcome == Outcome(ok=False, error="unknown target type: str")


# -- RunContext --------------------------------------------------------------------


async def test_context_carries_run_id_attempt_and_pending_updates() -> None:
    outcome, _ = await execute(CallTarget("with_context"), executor=executor(), attempt=3, updates=("a", {"b": 1}))
    # The pump may not have run before the function looked; whatever it saw
    # is a prefix of what was sent.
    assert outcome.ok and outcome.result["run_id"] == "job/1" and outcome.result["attempt"] == 3
    assert outcome.result["pending"] == ["a", {"b": 1}][: len(outcome.result["pending"])]


async def test_async_function_waits_for_updates_and_reports_progress() -> None:
    sender, receiver = trio.open_memory_channel[Any](10)
    progress: list[Any] = []
    result: list[Outcome] = []

    async def job() -> None:
        result.append(
            await Executor().run(
                CallTarget("peer.testing.samples:count_updates", {"expected": 3}),
                run_id="r",
                attempt=1,
                timeout=10,
                updates=receiver,
                progress=progress.append,
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job)
        for n, value in enumerate(["one", {"two": 2}, [3]], start=1):
            await sender.send(value)
            await wait_until(lambda n=n: len(progress) == n)
        await wait_until(lambda: bool(result))
    assert result == [Outcome(ok=True, result=["one", {"two": 2}, [3]])]
    assert progress == [{"received": n, "of": 3} for n in (1, 2, 3)]


async def test_sync_function_gets_updates_and_reports_progress_from_its_thread() -> None:
    outcome, progress = await execute(
        CallTarget("peer.testing.samples:collect_updates", {"expected": 2, "timeout": 5}), updates=("a", "b")
    )
    assert outcome == Outcome(ok=True, result=["a", "b"])
    assert progress == [{"received": 1, "of": 2}, {"received": 2, "of": 2}]

    outcome, _ = await execute(CallTarget("nowait_in_thread"), executor=executor(), updates=(1, 2, 3))
    assert outcome.ok and outcome.result[0] == 1 and outcome.result == [1, 2, 3][: len(outcome.result)]

    outcome, _ = await execute(CallTarget("peer.testing.samples:collect_updates", {"expected": 1, "timeout": 0.05}))
    assert outcome.error.splitlines()[0] == "TimeoutError: no update within 0.05 s"


async def test_update_readers_see_the_end_of_the_channel() -> None:
    outcome, _ = await execute(
        CallTarget("peer.testing.samples:count_updates", {"expected": 2}), updates=("only",), close_updates=True
    )
    assert outcome.error.splitlines()[0] == "EndOfChannel: no more updates for this run"


async def test_report_and_flaky_samples() -> None:
    outcome, progress = await execute(CallTarget("peer.testing.samples:report", {"steps": 3, "delay": 0.01}), attempt=2)
    assert outcome.ok
    assert outcome.result == {
        "run_id": "job/1",
        "attempt": 2,
        "steps": 3,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    assert progress == [{"step": n, "of": 3} for n in (1, 2, 3)]

    first, _ = await execute(CallTarget("peer.testing.samples:flaky", {"fail_times": 1}), attempt=1)
    second, _ = await execute(CallTarget("peer.testing.samples:flaky", {"fail_times": 1}), attempt=2)
    assert not first.ok and first.error.startswith("RuntimeError: attempt 1 fails on purpose")
    assert second == Outcome(ok=True, result={"attempt": 2})


async def test_context_misuse_fails_the_job_clearly() -> None:
    outcome, _ = await execute(CallTarget("get_update_on_trio_thread"), executor=executor())
    assert outcome.error.splitlines()[0] == (
        "RuntimeError: get_update() blocks; in async code use `await run.next_update()`"
    )
    outcome, progress = await execute(CallTarget("bad_progress"), executor=executor())
    assert outcome.error.splitlines()[0] == "ValueError: progress value is not serialisable: set"
    assert progress == []


# -- timeouts and cancellation --------------------------------------------------------


async def test_async_call_times_out() -> None:
    start = trio.current_time()
    outcome, _ = await execute(CallTarget("peer.testing.samples:async_sleep", {"seconds": 30}), timeout=0.2)
    assert outcome == Outcome(ok=False, timed_out=True, error="timed out after 0.2 s")
    assert trio.current_time() - start < 5


async def test_sync_call_times_out_and_its_thread_is_abandoned() -> None:
    start = trio.current_time()
    outcome, _ = await execute(CallTarget("peer.testing.samples:sleep", {"seconds": 30}), timeout=0.2)
    assert outcome == Outcome(ok=False, timed_out=True, error="timed out after 0.2 s")
    assert trio.current_time() - start < 5


async def test_abandoned_thread_blocked_on_updates_is_woken_to_unwind() -> None:
    abandoned_thread_saw.clear()
    outcome, _ = await execute(CallTarget("wait_for_update_forever"), executor=executor(), timeout=0.2)
    assert outcome.timed_out
    await wait_until(lambda: abandoned_thread_saw == ["end"])


async def test_command_timeout_kills_the_process_group() -> None:
    # sh reports its own pid and a background child's, then waits.
    script = 'sleep 30 & echo "PEER-PROGRESS [$$, $!]"; wait'
    outcome, progress = await execute(CommandTarget(["sh", "-c", script]), timeout=0.5)
    assert outcome == Outcome(ok=False, timed_out=True, error="timed out after 0.5 s")
    [[shell, child]] = progress
    with pytest.raises(ProcessLookupError):
        os.kill(shell, 0)  # killed and reaped by the executor
    await wait_until(lambda: gone(child))


async def test_cancellation_from_outside_kills_the_process_and_propagates() -> None:
    _sender, receiver = trio.open_memory_channel[Any](1)
    progress: list[Any] = []
    propagated = []
    with trio.move_on_after(0.5) as scope:
        try:
            await Executor().run(
                CommandTarget(["sh", "-c", 'echo "PEER-PROGRESS $$"; exec sleep 30']),
                run_id="r",
                attempt=1,
                timeout=None,
                updates=receiver,
                progress=progress.append,
            )
        except trio.Cancelled:
            propagated.append(True)  # bare, not wrapped in a group
            raise
    assert scope.cancelled_caught and propagated == [True]
    [pid] = progress
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancellation_of_a_call_propagates() -> None:
    _sender, receiver = trio.open_memory_channel[Any](1)
    with trio.move_on_after(0.2) as scope:
        await Executor().run(
            CallTarget("peer.testing.samples:sleep", {"seconds": 30}),
            run_id="r",
            attempt=1,
            timeout=None,
            updates=receiver,
            progress=lambda value: None,
        )
        pytest.fail("run returned instead of being cancelled")
    assert scope.cancelled_caught


# -- CommandTarget -------------------------------------------------------------------

STDIN_SCRIPT = """
import json, sys
print("PEER-PROGRESS " + json.dumps({"started": True}), flush=True)
for n in range(2):
    line = sys.stdin.readline()
    print("got " + line.strip(), flush=True)
    print("PEER-PROGRESS not json", flush=True)
print("bye", file=sys.stderr)
"""


async def test_command_reads_updates_from_stdin_and_reports_progress() -> None:
    outcome, progress = await execute(CommandTarget([PYTHON, "-c", STDIN_SCRIPT]), updates=("hello", {"n": 1}))
    assert outcome == Outcome(
        ok=True, result={"exit_code": 0, "stdout": 'got hello\ngot {"n": 1}\n', "stderr": "bye\n"}
    )
    assert progress == [{"started": True}, "not json", "not json"]


async def test_command_stdin_is_closed_when_the_updates_end() -> None:
    outcome, _ = await execute(CommandTarget(["cat"]), updates=("a", "b\n", 3), close_updates=True)
    assert outcome == Outcome(ok=True, result={"exit_code": 0, "stdout": "a\nb\n3\n", "stderr": ""})


async def test_command_exit_status_and_last_stderr_line() -> None:
    outcome, _ = await execute(CommandTarget(["sh", "-c", "echo out; echo first >&2; echo last >&2; exit 3"]))
    assert outcome == Outcome(
        ok=False,
        error="exit status 3: last",
        result={"exit_code": 3, "stdout": "out\n", "stderr": "first\nlast\n"},
    )
    outcome, _ = await execute(CommandTarget(["sh", "-c", "exit 4"]))
    assert outcome.error == "exit status 4"
    outcome, _ = await execute(CommandTarget(["sh", "-c", "kill -TERM $$"]))
    assert outcome.error == "killed by signal SIGTERM" and outcome.result["exit_code"] == -15


async def test_command_output_keeps_the_tail_within_the_bounds() -> None:
    script = "for i in range(5000): print(f'line {i}')\nimport sys; print('e' * 5000, file=sys.stderr, end='')"
    outcome, _ = await execute(CommandTarget([PYTHON, "-c", script]), executor=Executor(max_output_bytes=1000))
    assert outcome.ok
    assert len(outcome.result["stdout"]) == 1000 and outcome.result["stdout"].endswith("line 4999\n")
    assert outcome.result["stderr"] == "e" * 1000

    # Both streams large: the whole result still fits max_result_bytes.
    ex = Executor(max_result_bytes=2000)
    script = "import sys; print('o' * 50000); print('x' * 50000 + 'END', file=sys.stderr)"
    outcome, _ = await execute(CommandTarget([PYTHON, "-c", script]), executor=ex)
    assert outcome.ok and len(msgpack.packb(outcome.result)) <= 2000
    assert outcome.result["stderr"].endswith("END\n") and len(outcome.result["stderr"]) > 900


async def test_an_overlong_stdout_line_is_output_not_progress() -> None:
    script = "print('PEER-PROGRESS ' + 'y' * 300 + ' 1'); print('PEER-PROGRESS 2')"
    outcome, progress = await execute(CommandTarget([PYTHON, "-c", script]), executor=Executor(max_output_bytes=100))
    assert progress == [2]
    assert outcome.result["stdout"].endswith("y 1\n")


async def test_command_not_found_and_bad_cwd() -> None:
    outcome, _ = await execute(CommandTarget(["no-such-command-here", "x"]))
    assert outcome == Outcome(ok=False, error="command not found: no-such-command-here")
    outcome, _ = await execute(CommandTarget(["pwd"], cwd="/no/such/dir"))
    assert outcome == Outcome(ok=False, error="working directory not found: /no/such/dir")


async def test_shell_env_and_cwd(tmp_path: Any) -> None:
    target = CommandTarget(
        ['echo "$GREETING from $(pwd)" | tr a-z A-Z'], shell=True, env={"GREETING": "hi"}, cwd=str(tmp_path)
    )
    outcome, _ = await execute(target)
    assert outcome.ok and outcome.result["stdout"] == f"HI FROM {str(tmp_path).upper()}\n"
    # Without a shell the same string is one (missing) program name.
    outcome, _ = await execute(CommandTarget(["echo hi"]))
    assert outcome.error == "command not found: echo hi"
    # env is merged over the node's environment: PATH still finds env(1).
    outcome, _ = await execute(CommandTarget(["env"], env={"PEER_TEST_VAR": "42"}))
    assert "PEER_TEST_VAR=42\n" in outcome.result["stdout"] and "PATH=" in outcome.result["stdout"]


# -- HttpTarget ----------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/json":
            self.answer(200, b'{"answer": 42}', "application/json; charset=utf-8")
        elif self.path == "/text":
            self.answer(200, b"plain " * 100, "text/plain")
        elif self.path == "/broken":
            self.answer(500, b'{"error": "boom"}', "application/json")
        else:
            self.answer(404, b"not here", "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        echo = {"content_type": self.headers["Content-Type"], "body": json.loads(body), "x": self.headers["X-Test"]}
        self.answer(201, json.dumps(echo).encode(), "application/json")


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_http_json_and_text(server: str) -> None:
    outcome, _ = await execute(HttpTarget(f"{server}/json", method="GET"))
    assert outcome == Outcome(ok=True, result={"status": 200, "body": {"answer": 42}})
    outcome, _ = await execute(HttpTarget(f"{server}/text", method="GET"), executor=Executor(max_output_bytes=20))
    assert outcome == Outcome(ok=True, result={"status": 200, "body": "plain plain plain pl"})


async def test_http_post_sends_json(server: str) -> None:
    target = HttpTarget(f"{server}/anything", headers={"X-Test": "yes"}, body={"a": [1, 2]})
    outcome, _ = await execute(target)
    assert outcome == Outcome(
        ok=True,
        result={"status": 201, "body": {"content_type": "application/json", "body": {"a": [1, 2]}, "x": "yes"}},
    )


async def test_http_error_status_fails_with_the_answer(server: str) -> None:
    outcome, _ = await execute(HttpTarget(f"{server}/broken", method="GET"))
    assert outcome == Outcome(
        ok=False, error="HTTP 500 Internal Server Error", result={"status": 500, "body": {"error": "boom"}}
    )
    outcome, _ = await execute(HttpTarget(f"{server}/missing", method="GET"))
    assert outcome == Outcome(ok=False, error="HTTP 404 Not Found", result={"status": 404, "body": "not here"})


async def test_http_connection_refused_and_bad_scheme() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome, _ = await execute(HttpTarget(f"http://127.0.0.1:{port}/x"))
    assert outcome == Outcome(ok=False, error=f"cannot reach http://127.0.0.1:{port}/x: Connection refused")
    outcome, _ = await execute(HttpTarget("file:///etc/passwd"))
    assert outcome.error == "unsupported URL scheme 'file' in 'file:///etc/passwd': only http and https"


async def test_http_timeout() -> None:
    # A listener that never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        outcome, _ = await execute(HttpTarget(f"http://127.0.0.1:{port}/", method="GET"), timeout=0.3)
    assert outcome == Outcome(ok=False, timed_out=True, error="timed out after 0.3 s")


@pytest.mark.parametrize("ending", ["cancelled", "timed out"])
async def test_http_run_that_ends_closes_its_connection(ending: str) -> None:
    # A server that reads the request and never answers: only the client
    # going away ends the connection. An abandoned request (urllib in a
    # worker thread) would keep it open until its socket timed out.
    connected = trio.Event()
    closed = trio.Event()
    run_ended = trio.Event()
    outcomes: list[Outcome] = []

    async def silent(stream: trio.SocketStream) -> None:
        connected.set()
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # a reset is a close too
        closed.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
                run_scope = trio.CancelScope()

                async def run() -> None:
                    try:
                        with run_scope:
                            target = HttpTarget(f"http://127.0.0.1:{port}/", method="GET")
                            outcome, _ = await execute(target, timeout=0.5 if ending == "timed out" else 30.0)
                            outcomes.append(outcome)
                    finally:
                        run_ended.set()

                nursery.start_soon(run)
                await connected.wait()
                if ending == "cancelled":
                    run_scope.cancel()
                else:
                    await run_ended.wait()
                # Long before the request's own 30 s timeout, which is when an
                # abandoned request would let go: not a speed limit, a cause.
                with trio.fail_after(10):
                    await closed.wait()
                    await run_ended.wait()
            finally:
                nursery.cancel_scope.cancel()
    if ending == "cancelled":
        assert run_scope.cancelled_caught and outcomes == []
    else:
        assert outcomes == [Outcome(ok=False, timed_out=True, error="timed out after 0.5 s")]


async def test_sync_functions_share_a_bounded_pool_of_threads() -> None:
    """Never a thread per run: five sync runs on an executor of two threads
    run two at a time, and all finish."""
    lock = threading.Lock()
    inside = [0, 0]  # now, most
    release = threading.Event()

    def hold() -> str:
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
        release.wait(10)
        with lock:
            inside[0] -= 1
        return "done"

    executor = Executor(functions={"hold": hold}, max_threads=2)
    outcomes: list[Outcome] = []

    async def one() -> None:
        outcomes.append((await execute(CallTarget("hold"), executor=executor, timeout=30))[0])

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
        await wait_until(lambda: inside[0] == 2)
        await trio.sleep(0.2)  # the other three wait for a thread, not in one
        assert inside == [2, 2]
        release.set()
    assert [o.ok for o in outcomes] == [True] * 5 and inside[1] == 2
    with pytest.raises(ValueError, match="max_threads is at least 1"):
        Executor(max_threads=0)


# -- asyncio coroutines (runtime) ------------------------------------------------------


async def test_asyncio_coroutine_runs_on_the_executors_loop_with_progress_and_updates() -> None:
    ex = executor()
    try:
        outcome, progress = await execute(
            CallTarget("peer.testing.samples:asyncio_report", {"steps": 2, "delay": 0.01, "updates": 2}),
            executor=ex, updates=("one", "two"),
        )  # fmt: skip
        assert outcome.ok, outcome.error
        assert outcome.result == {"steps": 2, "updates": ["one", "two"], "library": "asyncio", "thread": "peer-asyncio"}
        assert progress == [{"step": 1, "of": 2}, {"step": 2, "of": 2}]
    finally:
        await ex.aclose()


async def test_asyncio_coroutine_is_cancelled_on_timeout_and_unwinds(tmp_path: Any) -> None:
    ex = executor()
    marker = tmp_path / "cancelled"
    try:
        outcome, _ = await execute(
            CallTarget("peer.testing.samples:asyncio_sleep", {"seconds": 30, "path": str(marker)}), executor=ex, timeout=0.2
        )
        assert outcome.timed_out and not outcome.ok
        assert marker.read_text() == "cancelled\n"  # the task saw CancelledError before the run ended
    finally:
        await ex.aclose()


async def test_wrong_runtime_fails_with_a_hint() -> None:
    outcome, _ = await execute(CallTarget("peer.testing.samples:asyncio_sleep", {"seconds": 0.01}, runtime="trio"))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith("RuntimeError: no running event loop\nhint:")
    assert 'set runtime = "asyncio"' in outcome.error
    ex = executor()
    try:
        outcome, _ = await execute(CallTarget("peer.testing.samples:async_sleep", {"seconds": 0.01}, runtime="asyncio"), executor=ex)
        assert not outcome.ok and 'set runtime = "trio"' in (outcome.error or "")
    finally:
        await ex.aclose()
