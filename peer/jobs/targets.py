"""What a job runs: a Python callable, a command line, or an HTTP request.

These are values: they travel inside job definitions in the replicated jobs
map, so every node runs the same target whichever owns the job. Parsing and
validating them from a jobs file or the API is ``peer.jobs.definition``'s business;
running them is ``peer.runtime.executor``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class CallTarget:
    """``package.module:function``, or a name registered with an embedding
    ``peer.Node``. Sync functions run in a worker thread, async ones on trio;
    a function with a parameter named ``run`` is given the run's context."""

    function: str
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen
class CommandTarget:
    """A command line, run without a shell unless ``shell`` is set (then
    ``argv`` holds one string, the shell's command)."""

    argv: tuple[str, ...] = attrs.field(converter=_strings)
    shell: bool = False
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    cwd: str | None = None


@attrs.frozen
class HttpTarget:
    """An HTTP request; a 2xx answer is success. ``body``, when given, is
    sent as JSON."""

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    body: Any = None


Target = CallTarget | CommandTarget | HttpTarget
