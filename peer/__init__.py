"""peer: a peer-to-peer job scheduler for Python services.

Embedding (``peer.node``)::

    async with peer.Node(name="web-1", seeds=["10.0.0.2:7946"], key=KEY) as node:
        @node.function
        async def resize(image: str, width: int) -> dict: ...

        run_id = await node.submit(resize, image="a.png", width=100)
        result = await node.result(run_id, timeout=30)

The names below are imported on first use, so ``import peer.wire`` (or the
CLI) does not pay for the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peer.executor import Executor, RunContext
    from peer.jobdef import JobError, JobSpec
    from peer.node import (
        JobInfo,
        MemberInfo,
        Node,
        RunFailed,
        RunFinishedError,
        UnknownJob,
        UnknownRun,
    )
    from peer.runs import RunRecord, RunState
    from peer.runtime import AgentError, JoinFailed
    from peer.scheduler import SchedulerConfig
    from peer.settings import ConfigError
    from peer.targets import CallTarget, CommandTarget, HttpTarget
    from peer.transport import BindError

_EXPORTS = {
    "Node": "peer.node",
    "JobInfo": "peer.node",
    "MemberInfo": "peer.node",
    "RunFailed": "peer.node",
    "RunFinishedError": "peer.node",
    "UnknownJob": "peer.node",
    "UnknownRun": "peer.node",
    "RunContext": "peer.executor",
    "Executor": "peer.executor",
    "JobError": "peer.jobdef",
    "JobSpec": "peer.jobdef",
    "RunRecord": "peer.runs",
    "RunState": "peer.runs",
    "AgentError": "peer.runtime",
    "JoinFailed": "peer.runtime",
    "SchedulerConfig": "peer.scheduler",
    "ConfigError": "peer.settings",
    "CallTarget": "peer.targets",
    "CommandTarget": "peer.targets",
    "HttpTarget": "peer.targets",
    "BindError": "peer.transport",
}

__all__ = [
    "AgentError",
    "BindError",
    "CallTarget",
    "CommandTarget",
    "ConfigError",
    "Executor",
    "HttpTarget",
    "JobError",
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
