"""The examples' services as processes on loopback, for their tests and benchmark.

``examples/fastapi/app.py`` run by uvicorn, one process per replica, each
embedding a node; started, killed (SIGKILL: a crash), stopped (SIGTERM: uvicorn's
graceful shutdown, which leaves the cluster) and restarted under the same name
and ports, like ``LocalCluster``'s agents. Every process is tracked by PID
(``peer.testing.processes``) and killed on the way out of the ``with`` block,
whatever happened. The examples are not part of the installed package: they
are found beside it, in a source checkout (``pip install -e``).

Each replica's cron job appends to a journal file of its own (``APP_JOURNAL``),
one JSON line per execution; ``journal()`` reads them all. ``roll()`` deploys
another release (``APP_VERSION``) as a rolling restart does: each replica in
turn stopped with SIGTERM, started again on the new version, waited for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx

from peer.runtime.addresses import format_address
from peer.testing.cluster import wait_for
from peer.testing.processes import LOOPBACK, Ports, Processes, is_running, kill, send_signal, wait

__all__ = ["EXAMPLES", "FastApiReplica", "FastApiReplicas", "RollStep", "quote_run"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FASTAPI_APP = EXAMPLES / "fastapi"


def quote_run(run_id: str) -> str:
    """A run id as one path segment (run ids hold ``@`` and ``:``)."""
    return urllib.parse.quote(run_id, safe="")


@attrs.define
class FastApiReplica:
    """One replica of the FastAPI example: a uvicorn process."""

    name: str
    bind: str  # gossip HOST:PORT
    http: str  # the app's HOST:PORT
    journal: Path
    log_path: Path
    env: dict[str, str]
    processes: Processes
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return is_running(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def version(self) -> str:
        """The app's release this replica runs (``APP_VERSION``; the app's default is 1)."""
        return self.env.get("APP_VERSION", "1")

    def start(self, version: str | None = None) -> None:
        """Start the replica's process; ``version``: run that release (``APP_VERSION``) from now on."""
        assert not self.running, f"{self.name} is already running"
        if version is not None:
            self.env["APP_VERSION"] = version
        self.starts += 1
        host, port = self.http.rsplit(":", 1)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = self.processes.spawn(
                [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(FASTAPI_APP), "--host", host, "--port", port,
                 "--log-level", "info", "--no-access-log"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            )  # fmt: skip
        finally:
            log.close()

    def kill(self) -> None:
        """SIGKILL and reap: the crash of a server."""
        if self.process is not None:
            kill(self.process)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (uvicorn shuts down; the node leaves gracefully) and wait: the
        exit code, or None if still running after ``timeout``."""
        if self.process is None:
            return None
        send_signal(self.process, signal.SIGTERM)
        return wait(self.process, timeout)

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def get(self, path: str, *, timeout: float = 10.0, **params: Any) -> httpx.Response:
        return httpx.get(self.url(path), params=params, timeout=timeout)

    def post(self, path: str, body: Any, *, timeout: float = 10.0) -> httpx.Response:
        return httpx.post(self.url(path), json=body, timeout=timeout)

    def ready(self) -> bool:
        """Does ``GET /health`` answer 200 (the node joined and caught up)?"""
        try:
            return self.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def member_status(self, name: str) -> str | None:
        """The status of member ``name`` as this replica's ``/health`` says (None: no answer)."""
        try:
            members = self.get("/health", timeout=2.0).json().get("members", {})
        except (httpx.HTTPError, ValueError):
            return None
        status = members.get(name)
        return status if isinstance(status, str) else None

    def submit(self, numbers: list[float], delay: float = 0.2) -> str:
        """Submit the example's one-off job through this replica: its run id."""
        response = self.post("/jobs/summarize", {"numbers": numbers, "delay": delay})
        if response.status_code != 202:
            raise AssertionError(f"{self.name}: POST /jobs/summarize answered {response.status_code}: {response.text}")
        run_id = response.json()["run"]
        assert isinstance(run_id, str)
        return run_id

    def result(self, run_id: str, wait: float = 0.0) -> httpx.Response:
        """``GET /results/{run}`` on this replica (waiting up to ``wait`` s)."""
        return self.get(f"/results/{quote_run(run_id)}", timeout=wait + 10.0, wait=wait)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# What uvicorn logs (at level info) once the app's lifespan has exited without an error:
# the node in it has left the cluster.
SHUTDOWN_COMPLETE = "Application shutdown complete."


@attrs.frozen
class RollStep:
    """One replica's restart in ``FastApiReplicas.roll``: SIGTERM at ``stopped_ms``
    (epoch ms), exit ``exit_code`` (None: still running after the timeout, then
    killed) ``exit_s`` seconds later, started on ``version``, ready ``ready_s``
    seconds after its start (at ``ready_ms``). ``graceful``: the app shut down completely, and
    ``left``: another replica saw its node leave (status ``left``)."""

    name: str
    old_version: str
    version: str
    stopped_ms: int
    exit_code: int | None
    exit_s: float
    graceful: bool
    left: bool
    ready_s: float
    ready_ms: int

    @property
    def clean(self) -> bool:
        """Exited by itself after a complete shutdown, its node having left.
        uvicorn (0.29 on) ends a shutdown caused by a signal by raising that
        signal again, with its default action, so that whoever sent it sees
        it: the exit status of a clean stop is then -SIGTERM (143 in a shell),
        not 0, and only the log tells it from a process killed outright."""
        return self.exit_code in (0, -signal.SIGTERM) and self.graceful and self.left


class FastApiReplicas:
    """Replicas of the FastAPI example on loopback, ``{prefix}{i}``, all in one
    cluster: each has every other's gossip address as a seed, and a cluster key."""

    def __init__(
        self,
        workdir: Path,
        count: int,
        *,
        key: str,
        prefix: str = "app-",
        profile: str = "lan",
        drain_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.processes = Processes()
        self.ports = Ports()
        self.drain_timeout = drain_timeout
        key_file = workdir / "cluster.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        base = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith(("PEER_", "APP_"))}
        names = [f"{prefix}{i}" for i in range(count)]
        binds = {name: format_address((LOOPBACK, self.ports.take())) for name in names}
        self.replicas: list[FastApiReplica] = []
        for name in names:
            replica_env = dict(
                base,
                PEER_NAME=name,
                PEER_BIND=binds[name],
                PEER_SEEDS=",".join(binds[other] for other in names if other != name),
                PEER_KEY_FILE=str(key_file),
                PEER_PROFILE=profile,
                PEER_DRAIN_TIMEOUT=str(drain_timeout),
                APP_JOURNAL=str(workdir / f"{name}.jsonl"),
            )
            self.replicas.append(
                FastApiReplica(
                    name, binds[name], format_address((LOOPBACK, self.ports.take())), workdir / f"{name}.jsonl",
                    workdir / f"{name}.log", replica_env, self.processes,
                )
            )  # fmt: skip

    def __enter__(self) -> FastApiReplicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.processes.kill_all()

    def __iter__(self) -> Iterator[FastApiReplica]:
        return iter(self.replicas)

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    def wait_ready(self, timeout: float, replicas: list[FastApiReplica] | None = None) -> None:
        """Until each replica answers ``/health`` 200; ``AssertionError``, with
        the log of one that did not, after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for replica in replicas if replicas is not None else self.replicas:
            while not replica.ready():
                if not replica.running or time.monotonic() > deadline:
                    state = "exited" if not replica.running else "not ready"
                    raise AssertionError(f"{replica.name} {state} after {timeout:g} s; its log:\n{replica.log_text()[-3000:]}")
                time.sleep(0.2)

    def restart(self, replica: FastApiReplica, version: str, *, stop_timeout: float, ready_timeout: float) -> RollStep:
        """A graceful restart as a deploy does it: SIGTERM (the node leaves,
        draining its runs), wait for the exit (``kill -9`` if it takes longer
        than ``stop_timeout``: the step says so), start on ``version``, wait
        until ready (``AssertionError`` after ``ready_timeout``)."""
        old = replica.version
        logged = replica.log_path.stat().st_size if replica.log_path.exists() else 0
        others = [other for other in self.replicas if other is not replica and other.running]
        stopped_ms = int(time.time() * 1000)
        began = time.monotonic()
        code = replica.stop(stop_timeout)
        exit_s = time.monotonic() - began
        if code is None:
            replica.kill()
        with replica.log_path.open("rb") as log:
            log.seek(logged)
            shutdown = log.read().decode(errors="replace")
        graceful = code is not None and SHUTDOWN_COMPLETE in shutdown and "Traceback" not in shutdown
        # Its leave reaches the others before it exits; a moment for the answer's round trip.
        left = False
        if others:
            try:
                left = wait_for(lambda: others[0].member_status(replica.name) == "left", 5.0, "the leave", interval=0.1)
            except TimeoutError:
                pass
        began = time.monotonic()
        replica.start(version)
        self.wait_ready(ready_timeout, [replica])
        ready_s = time.monotonic() - began
        return RollStep(replica.name, old, version, stopped_ms, code, exit_s, graceful, left, ready_s, int(time.time() * 1000))

    def roll(
        self, version: str, *, ready_timeout: float, stop_timeout: float | None = None, old_restart_after: int | None = None,
    ) -> list[RollStep]:  # fmt: skip
        """Deploy ``version`` to every replica, one after the other (``restart``),
        in their order. ``old_restart_after=K``: once K replicas run the new
        version and a tick has run with its definition (the journal says so),
        restart the last not-yet-upgraded one on its old version (a crash
        loop, a node drained meanwhile: an old replica starting in the middle
        of the rollout, after the switch). ``stop_timeout``: default the
        drain timeout plus 10 s."""
        stop_timeout = self.drain_timeout + 10.0 if stop_timeout is None else stop_timeout
        steps: list[RollStep] = []
        for index, replica in enumerate(self.replicas):
            steps.append(self.restart(replica, version, stop_timeout=stop_timeout, ready_timeout=ready_timeout))
            old = [other for other in self.replicas[index + 1 :] if other.version != version]
            if old_restart_after == index + 1 and old:
                # Once the new definition is in place (a tick ran with it), not before: the
                # old replica then finds its own declaration replaced.
                wait_for(lambda: any(line.get("version") == version for line in self.journal()), ready_timeout,
                         f"a tick with version {version}'s definition", interval=0.2)  # fmt: skip
                steps.append(self.restart(old[-1], old[-1].version, stop_timeout=stop_timeout, ready_timeout=ready_timeout))
        return steps

    def journal(self) -> list[dict[str, Any]]:
        """Every line of every replica's journal (whole lines only: a line being
        written as we read is left for the next read)."""
        lines: list[dict[str, Any]] = []
        for replica in self.replicas:
            if replica.journal.exists():
                for text in replica.journal.read_text().splitlines(keepends=True):
                    if text.endswith("\n"):
                        lines.append(json.loads(text))
        return lines
