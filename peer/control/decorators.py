"""What ``@node.cron`` and ``@node.job`` return: the function, still callable,
with the job it declares.

The declaring itself (where a declaration goes, when it is applied, what
happens across a rollout) is ``peer.control.node.Node.cron`` and
``peer.jobs.declared``. Here: the wrapper, and the check of a call's keyword
arguments against the function's signature, made where ``submit`` is
called, so a missing or unknown argument is a ``TypeError`` there and not a
failed run on another node later.

The wrapper awaits only ``Node``'s own async methods, so it works wherever
the node does (trio, or asyncio through the node's bridge).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from peer.jobs.declared import revision
from peer.jobs.definition import JobSpec
from peer.jobs.targets import CallTarget

if TYPE_CHECKING:
    from peer.control.node import Node

__all__ = ["CronJob", "JobFunction", "check_arguments"]

P = ParamSpec("P")
R = TypeVar("R")

# The options of a declared job that a one-off run of it takes too (submit_with's).
_RUN_OPTIONS = ("timeout", "retries", "backoff", "backoff_max", "result_ttl", "tags")


class JobFunction(Generic[P, R]):
    """A function declared as a job with ``@node.job`` (``CronJob`` for
    ``@node.cron``). Calling it calls the function, here, as before;
    ``await f.submit(**kwargs)`` runs it once somewhere in the cluster with
    the job's options (timeout, retries...) and gives the run id."""

    def __init__(self, node: Node, function: Callable[P, R], name: str, spec: JobSpec) -> None:
        self._node = node
        self._function = function
        self._name = name
        self._spec = spec
        self._revision = revision(spec)
        functools.update_wrapper(self, function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} calling {self._name!r}>"

    @property
    def id(self) -> str:
        """The job's id (its runs' ``job``)."""
        return self._spec.id

    @property
    def name(self) -> str:
        """The name the function is registered under (what its runs call)."""
        return self._name

    @property
    def function(self) -> Callable[P, R]:
        return self._function

    @property
    def spec(self) -> JobSpec:
        """The definition this node declares (the cluster may run another
        revision for a while: ``status``)."""
        return self._spec

    @property
    def revision(self) -> str:
        """This declaration's revision (``peer.jobs.declared``)."""
        return self._revision

    @property
    def status(self) -> str:
        """What became of this node's declaration: ``not running`` (the node
        is not), ``waiting`` (to settle), ``current`` (the cluster runs it),
        ``replaced by revision ...`` (a newer version's), ``defined otherwise
        ...`` while being applied."""
        return self._node._declaration_status(self.id)

    def check(self, kwargs: Mapping[str, Any], where: str = "submit()") -> None:
        """``TypeError`` unless the function can be called with ``kwargs``."""
        check_arguments(self._function, kwargs, f"{self.id}.{where}")

    async def submit(self, **kwargs: Any) -> str:
        """Run the function once, now, somewhere in the cluster, with the
        job's options and these arguments (a cron job's own ``kwargs``
        under them); the run id. ``TypeError`` at once for arguments the
        function does not take, or lacks, or of the wrong simple type
        (``check_arguments``)."""
        merged = {**self._declared_kwargs(), **kwargs}
        self.check(merged)
        options = {key: getattr(self._spec, key) for key in _RUN_OPTIONS}
        return await self._node.submit_with(self._name, merged, id=self.id, **options)

    async def result(self, run_id: str, *, timeout: float | None = None) -> Any:
        """``node.result``: the run's result, ``RunFailed``, ``TimeoutError``."""
        return await self._node.result(run_id, timeout=timeout)

    def _declared_kwargs(self) -> dict[str, Any]:
        target = self._spec.target
        return dict(target.kwargs) if isinstance(target, CallTarget) else {}


class CronJob(JobFunction[P, R]):
    """A function declared as a cron job with ``@node.cron``; also
    ``await f.trigger(**kwargs)``: a run now of the job as the cluster
    defines it (``peer trigger``)."""

    async def trigger(self, **kwargs: Any) -> str:
        """Run the job once, now, as the cluster defines it, ``kwargs``
        merged over its own; the run id. ``TypeError`` as ``submit``."""
        self.check({**self._declared_kwargs(), **kwargs}, "trigger()")
        return await self._node.trigger(self.id, **kwargs)


def check_arguments(function: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """``TypeError`` (starting with ``where``) unless ``function`` can be
    called with ``kwargs`` as the executor calls it: by keyword, with a
    parameter ``run`` given the run's context. Checked: missing and unknown
    arguments, and the type of each argument whose annotation is a simple
    one: ``str``, ``int`` (not a bool), ``float`` (an int too), ``bool``,
    ``list``, ``dict``, ``None``, ``list[...]`` and ``dict[...]`` (the outer
    type only), ``Any``, and unions of these (``X | None``, ``Optional[X]``);
    other annotations, and annotations that cannot be resolved, are not."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: nothing to check
        return
    run = signature.parameters.get("run")
    takes_run = run is not None and run.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if takes_run:
        if "run" in kwargs:
            raise TypeError(f"{where}: 'run' is the run's context, not an argument")
        signature = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "run"])
    try:
        bound = signature.bind(**kwargs)
    except TypeError as error:
        raise TypeError(f"{where}: {error}") from None
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - a name the annotations use is not importable here: not checked
        return
    for key, value in bound.arguments.items():
        hint = hints.get(key)
        parameter = signature.parameters[key]
        if hint is None or parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if _matches(value, hint) is False:
            raise TypeError(f"{where}: argument {key!r} expects {_hint_text(hint)}, got {type(value).__name__} {value!r:.60}")


def _matches(value: Any, hint: Any) -> bool | None:
    """Does ``value`` fit ``hint``? None: not a hint checked here."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, list, dict):
        return isinstance(value, hint)
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return isinstance(value, origin)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_matches(value, arg) for arg in typing.get_args(hint)]
        if any(verdict is None for verdict in verdicts):
            return None  # a member we do not check might take it
        return any(verdicts)
    return None


def _hint_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) and typing.get_origin(hint) is None else str(hint).replace("typing.", "")
