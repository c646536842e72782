"""peer: a peer-to-peer job scheduler for Python services.

Embedding (``peer.control.node``)::

    async with peer.Node(name="web-1", seeds=["10.0.0.2:7946"], key=KEY) as node:
        @node.function
        async def resize(image: str, width: int) -> dict: ...

        run_id = await node.submit(resize, image="a.png", width=100)
        result = await node.result(run_id, timeout=30)

Over a node's control API (``peer.control.client``), the same methods::

    with peer.Client("127.0.0.1:7947") as client:   # peer.AsyncClient for asyncio or trio
        result = client.result(client.submit("app.jobs:resize", image="a.png", width=100), timeout=30)

The names below are imported on first use, so ``import peer.runtime.wire`` (or the
CLI) does not pay for the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peer.control.client import AsyncClient, Client, ClientError
    from peer.control.decorators import CronJob, JobFunction
    from peer.control.errors import RunFailed, RunFinishedError, UnknownJob, UnknownRun
    from peer.control.node import JobInfo, MemberInfo, Node
    from peer.jobs.definition import JobError, JobSpec
    from peer.jobs.runs import RunRecord, RunState
    from peer.jobs.scheduler import BacklogFull, SchedulerConfig
    from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget
    from peer.runtime.agent import AgentError, JoinFailed
    from peer.runtime.executor import Executor, RunContext
    from peer.runtime.settings import ConfigError
    from peer.runtime.transport import BindError

_EXPORTS = {
    "Node": "peer.control.node",
    "Client": "peer.control.client",
    "AsyncClient": "peer.control.client",
    "ClientError": "peer.control.client",
    "JobInfo": "peer.control.node",
    "MemberInfo": "peer.control.node",
    "RunFailed": "peer.control.errors",
    "RunFinishedError": "peer.control.errors",
    "UnknownJob": "peer.control.errors",
    "UnknownRun": "peer.control.errors",
    "CronJob": "peer.control.decorators",
    "JobFunction": "peer.control.decorators",
    "RunContext": "peer.runtime.executor",
    "Executor": "peer.runtime.executor",
    "JobError": "peer.jobs.definition",
    "JobSpec": "peer.jobs.definition",
    "RunRecord": "peer.jobs.runs",
    "RunState": "peer.jobs.runs",
    "AgentError": "peer.runtime.agent",
    "JoinFailed": "peer.runtime.agent",
    "SchedulerConfig": "peer.jobs.scheduler",
    "BacklogFull": "peer.jobs.scheduler",
    "ConfigError": "peer.runtime.settings",
    "CallTarget": "peer.jobs.targets",
    "CommandTarget": "peer.jobs.targets",
    "HttpTarget": "peer.jobs.targets",
    "BindError": "peer.runtime.transport",
}

__all__ = [
    "AgentError",
    "AsyncClient",
    "BacklogFull",
    "BindError",
    "CallTarget",
    "Client",
    "ClientError",
    "CommandTarget",
    "ConfigError",
    "CronJob",
    "Executor",
    "HttpTarget",
    "JobError",
    "JobFunction",
    "JobInfo",
    "JobSpec",
    "JoinFailed",
    "MemberInfo",
    "Node",
    "RunContext",
    "RunFailed",
    "RunFinishedError",
    "RunRecord",
    "RunState",
    "SchedulerConfig",
    "UnknownJob",
    "UnknownRun",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'peer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
