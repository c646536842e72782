"""What a job runs: a Python callable, a command line, or an HTTP request.

These are values: they travel inside job definitions in the replicated jobs
map, so every node runs the same target whichever owns the job. Parsing and
validating them from a jobs file or the API is ``peer.jobs.definition``'s business;
running them is ``peer.runtime.executor``'s.

A node may restrict what it runs (``TargetPolicy``: the agent's
``allowed_commands`` and ``allowed_calls``). The API refuses a definition or
a submit outside the policy, and the executor refuses to run one (a
definition replicated from a node with another policy), so the check is in
one place: ``TargetPolicy.refusal``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import attrs


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


# Which event loop an ``async def`` call target runs on (``CallTarget.runtime``).
RUNTIMES = ("auto", "trio", "asyncio")


@attrs.frozen
class CallTarget:
    """``package.module:function``, or a name registered with an embedding
    ``peer.Node``. Sync functions run in a worker thread; coroutine functions
    on trio or on asyncio, as ``runtime`` says: ``"auto"`` (what the
    function's code refers to decides, see ``peer.runtime.aio``),
    ``"trio"`` or ``"asyncio"``. A function with a parameter named ``run`` is
    given the run's context."""

    function: str
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    runtime: str = "auto"


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


# The program a shell command runs: what ``allowed_commands`` must name to allow shell commands.
SHELL_PROGRAMS = ("sh", "/bin/sh")


def _normalized_programs(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(posixpath.normpath(item) if "/" in item else item for item in value)


def _optional_strings(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class TargetPolicy:
    """What a node agrees to run. None: anything (the default); a list:
    only what it names, so an empty list allows none.

    ``allowed_commands`` names programs: an entry with a ``/`` is a path that
    the command's program must be exactly (normalised); an entry without one
    allows only that bare name, looked up in ``PATH`` (so ``python`` does not
    allow ``/tmp/x/python``). A shell command (``shell = true``) runs
    ``/bin/sh``, so it is allowed only when ``sh`` or ``/bin/sh`` is listed.

    ``allowed_calls`` names modules: ``myapp.jobs`` allows ``myapp.jobs:f``
    and ``myapp.jobs.nightly:g``, not ``myapp.jobsx:h``; an entry with a
    ``:`` allows that one function. A name an embedding program registered
    (no colon) is always allowed: it can only run what the program chose.
    HTTP targets are not restricted."""

    allowed_commands: tuple[str, ...] | None = attrs.field(default=None, converter=_normalized_programs)
    allowed_calls: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_strings)

    @property
    def restricts(self) -> bool:
        return self.allowed_commands is not None or self.allowed_calls is not None

    def refusal(self, target: Target) -> str | None:
        """None if ``target`` may run here, else why not: the target and the setting."""
        if isinstance(target, CommandTarget) and self.allowed_commands is not None:
            if target.shell:
                if any(program in self.allowed_commands for program in SHELL_PROGRAMS):
                    return None
                return "a shell command is not allowed by allowed_commands here (list sh to allow shell commands)"
            program = target.argv[0] if target.argv else ""
            key = posixpath.normpath(program) if "/" in program else program
            if key in self.allowed_commands:
                return None
            return f"command {program!r} is not allowed by allowed_commands here ({_listed(self.allowed_commands)})"
        if isinstance(target, CallTarget) and self.allowed_calls is not None:
            function = target.function
            module, colon, _ = function.partition(":")
            if not colon or any(
                function == entry or (":" not in entry and (module == entry or module.startswith(entry + ".")))
                for entry in self.allowed_calls
            ):
                return None
            return f"call {function!r} is not allowed by allowed_calls here ({_listed(self.allowed_calls)})"
        return None


def _listed(entries: tuple[str, ...]) -> str:
    return "allowed: " + ", ".join(entries) if entries else "it allows none"
