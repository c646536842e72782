"""peer: a peer-to-peer job scheduler for Python services.

Embedding (``peer.control.node``)::

    async with peer.Node(name="web-1", seeds=["10.0.0.2:7946"], key=KEY) as node:
        @node.function
        async def resize(image: str, width: int) -> dict: ...

        run_id = await node.submit(resize, image="a.png", width=100)
        result = await node.result(run_id, timeout=30)

The names below are imported on first use, so ``import peer.runtime.wire`` (or the
CLI) does not pay for the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peer.control.decorators import CronJob, JobFunction
    from peer.control.node import (
        JobInfo,
        MemberInfo,
        Node,
        RunFailed,
        RunFinishedError,
        UnknownJob,
        UnknownRun,
    )
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
    "JobInfo": "peer.control.node",
    "MemberInfo": "peer.control.node",
    "RunFailed": "peer.control.node",
    "RunFinishedError": "peer.control.node",
    "UnknownJob": "peer.control.node",
    "UnknownRun": "peer.control.node",
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
    "BacklogFull",
    "BindError",
    "CallTarget",
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
