"""Several ``peer agent`` processes on this machine's loopback.

Used by ``peer demo``, by the real-process tests and by the benchmarks: one
way to start agents on free ports, ask them what they see, kill, stop and
restart them, and never leave one behind. Every process is tracked by PID
(``peer.testing.processes``, which also picks the ports); ``close()`` (also
on leaving the ``with`` block, whatever happened) kills whatever still runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from membership.state import Address
from peer.control.client import ClientError, call, fetch
from peer.runtime.addresses import format_address
from peer.testing.processes import Ports, Processes, is_running, kill, send_signal, wait

__all__ = ["AgentProcess", "LocalCluster", "wait_for"]

T = TypeVar("T")


@attrs.define
class AgentProcess:
    name: str
    bind: Address
    api: Address
    args: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    processes: Processes = attrs.Factory(Processes)  # every life's process, killed on the way out

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return is_running(self.process)

    @property
    def addr(self) -> str:
        return format_address(self.bind)

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = self.processes.spawn(
                [sys.executable, "-m", "peer", "agent", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        finally:
            log.close()

    def signal(self, signum: int) -> None:
        if self.process is not None:
            send_signal(self.process, signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout``."""
        assert self.process is not None
        return wait(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL and reap: the crash of a server."""
        if self.process is not None:
            kill(self.process)

    @property
    def api_addr(self) -> str:
        return format_address(self.api)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (a graceful leave: drain, hand back, leave) and wait for
        the exit; its code, or None if still running after ``timeout``."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def call(self, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> dict[str, Any]:
        """The JSON document at ``path``; ``body``, when not None, is sent as JSON."""
        return call(self.api, path, method=method, body=body, timeout=timeout)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``peer ARGS`` (a client command) against this agent's API."""
        env = dict(self.env, PEER_API=self.api_addr)
        env.pop("PEER_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "peer", *args],
            check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env,
        )

    def answers_ready(self, timeout: float = 1.0) -> bool:
        """Does ``GET /health/ready`` answer 200 (joined, not leaving, the
        scheduler ready)?"""
        try:
            self.call("/health/ready", timeout=timeout)
        except ClientError:
            return False
        return True

    def call_text(self, path: str, *, timeout: float = 5.0) -> str:
        return fetch(self.api, path, timeout=timeout).decode()

    def view(self) -> dict[str, str]:
        """name -> status, as this agent sees the cluster."""
        return {member["name"]: member["status"] for member in self.call("/members")["members"]}

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalCluster:
    """Agents named ``{prefix}{i}`` on ``host``, joining through the first."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        prefix: str = "node-",
        profile: str = "local",
        key: str | None = None,
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.prefix = prefix
        self.profile = profile
        self.key = key
        self.extra_args = list(extra_args)
        self.env = dict(os.environ if env is None else env)
        self.env.pop("PEER_KEY", None)
        self.env.pop("PEER_CONFIG", None)
        self.agents: dict[str, AgentProcess] = {}
        self.processes = Processes()
        # Never the same port twice, bound yet or not (CI once saw node-0's
        # API port taken by node-1's, and node-0 exit 1).
        self.ports = Ports()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(
        self,
        name: str | None = None,
        *,
        seeds: Iterable[str] | None = None,
        key: str | None = None,
        host: str | None = None,
        port: int | None = None,
        extra_args: Iterable[str] = (),
        start: bool = True,
    ) -> AgentProcess:
        """Start an agent; by default it joins through the first agent."""
        name = name or f"{self.prefix}{len(self.agents)}"
        host = host or self.host
        if port is not None:
            self.ports.claim(port)
        bind = (host, port or self.ports.take(host))
        api = (self.host, self.ports.take(self.host))
        if seeds is None:
            seeds = [first.addr for first in list(self.agents.values())[:1]]
        args = ["--name", name, "--bind", format_address(bind), "--api", format_address(api)]
        args += ["--profile", self.profile, "--log-format", "json", "--log-level", "debug"]
        seeds = list(seeds)
        if seeds:
            args += ["--seeds", ",".join(seeds)]
        # The name the agent is given, also for the jobs it runs (peer.testing.samples.journal).
        env = dict(self.env, PEER_NAME=name)
        key = key if key is not None else self.key
        if key:
            env["PEER_KEY"] = key
        agent = AgentProcess(
            name, bind, api, args + self.extra_args + list(extra_args), self.workdir / f"{name}.log", env, processes=self.processes
        )
        self.agents[name] = agent
        if start:
            agent.start()
        return agent

    def add_mesh(self, count: int, *, extra_args: Iterable[str] = ()) -> list[AgentProcess]:
        """Start ``count`` agents named ``{prefix}{i}`` on ports picked up
        front, each with all the others as seeds (as a deploy gives every
        replica the same list), so that any of them can restart alone."""
        ports = [self.ports.take(self.host) for _ in range(count)]
        addresses = [format_address((self.host, port)) for port in ports]
        return [
            self.add(
                f"{self.prefix}{index}", port=port, extra_args=extra_args,
                seeds=[address for other, address in enumerate(addresses) if other != index],
            )
            for index, port in enumerate(ports)
        ]

    def running(self) -> list[AgentProcess]:
        return [agent for agent in self.agents.values() if agent.running]

    def wait_api(self, agents: Iterable[AgentProcess], timeout: float) -> None:
        """Until every agent's API answers (it has bound its sockets)."""
        for agent in agents:
            wait_for(lambda agent=agent: _answers(agent), timeout, f"{agent.name}'s API to answer")  # type: ignore[misc]

    def views(self, agents: Iterable[AgentProcess] | None = None) -> dict[str, dict[str, str]]:
        """Each running agent's view (an agent whose API fails is left out)."""
        views = {}
        for agent in self.running() if agents is None else agents:
            try:
                views[agent.name] = agent.view()
            except ClientError:
                pass
        return views

    def converged(self, expected: Mapping[str, str], agents: Iterable[AgentProcess] | None = None) -> bool:
        """Every running agent (or those given) sees each member of
        ``expected`` (name -> status) with that status."""
        agents = list(self.running() if agents is None else agents)
        views = self.views(agents)
        return len(views) == len(agents) and all(
            all(view.get(name) == status for name, status in expected.items()) for view in views.values()
        )

    def close(self) -> None:
        self.processes.kill_all()


def _answers(agent: AgentProcess) -> bool:
    if not agent.running:
        raise RuntimeError(f"{agent.name} exited with {agent.process and agent.process.returncode}:\n{agent.log_text()}")
    try:
        agent.call("/health", timeout=1.0)
    except ClientError:
        return False
    return True


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something true; ``TimeoutError``
    naming ``what`` if it never does within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
