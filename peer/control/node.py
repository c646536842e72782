"""Embedding peer in a trio or asyncio program: ``async with peer.Node(...) as node``.

Theory of operation
-------------------
A ``Node`` is a thin layer over ``peer.runtime.agent.Agent``, the same driver the
``peer agent`` command runs: membership, the replicated maps and the
scheduler are the agent's, and no scheduling decision is made here. What the
layer adds is what a program needs to hold a node in its own process:

- Settings as keyword arguments. Each goes through the converter
  ``peer.runtime.settings`` uses for the TOML file, the environment and the flags,
  so a bad value is the same one-line message, here a ``ConfigError`` naming
  the keyword (``bind: ...``). Nothing is read from the environment: the
  program decides. The control API is off unless ``api=`` is given.
- A function registry. ``@node.function`` registers a callable with the
  node's executor under a name (the function's own by default). A run names
  its function, not the object, and runs on whichever node owns it, so every
  node that may run it must register it under the same name: the normal case
  when every instance of a service runs a node from the same code.
- A lifetime. Entering binds the sockets (``BindError`` at once for a port
  in use) and starts the agent in a task of a nursery opened there; the
  agent runs in a shielded cancel scope, so that however the ``async with``
  body ends -- normally, with an exception, or cancelled -- exiting first
  leaves gracefully: the scheduler drains (running runs get up to
  ``drain_timeout`` to finish, then are handed back), the node pushes its
  state to a few members, and the others see it ``left``, never ``failed``.
  That leave is bounded (drain, leave gossip and a margin); past the bound,
  or on a second interrupt, the agent is stopped where it is. An exception
  in the agent's own tasks (a seed that never answers: ``JoinFailed``)
  cancels the body and comes out of the ``async with`` as itself, not
  wrapped in an exception group (a group only when there are several).
- Jobs declared in code. ``@node.cron(...)`` and ``@node.job(...)`` register
  the function and declare a job calling it (``peer.control.decorators``
  holds what they return). The node keeps its declarations and hands them
  to its scheduler at each start (``Agent.declare_job``; on a running node
  through the trio token, so the decorator needs no trio context), which
  applies them once settled and again whenever the job's entry changes,
  by the rule of ``peer.jobs.declared``: every replica declaring the same
  id makes one job; an identical declaration changes nothing; a
  declaration carries a revision (a hash of the definition), and the
  entry the revisions it replaced, so a new version's definition is
  applied when its first replica has settled, once, and an old replica
  (re)starting while versions are mixed finds its revision replaced and
  leaves the job alone. While versions are mixed, every node (old or new)
  runs the ticks with the new definition. A redefinition that keeps the
  timing (schedule, mode) keeps the walk of the schedule: no tick is
  missed or run twice. The operator's ``paused`` is kept; a job no
  longer declared is not removed (``peer jobs rm`` it once no live node
  declares it: one that does defines it again at once).
- Awaitable reads over the replicated runs map: ``result`` and ``watch``
  poll this node's copy (which every node holds), so a run submitted on one
  node can be awaited on any other.

Under asyncio the same class runs the node as a trio guest run on the
program's loop (``peer.control.asyncio_host`` has the how and the costs):
every ``async def`` method is marked ``@bridged``, which runs it as it is
from trio and as a trio task of the guest run from asyncio, or ``@inlined``
(submit, submit_with, result, wait, watch), which runs it in the asyncio
caller's task: code written for both, that waits only with
``Node._run_changed`` and submits with ``Agent.submit_soon`` there. A new
``async def`` method must be marked too. A node is used from the thread its loop runs in. It never prints; it logs
through ``logging`` (``peer.control.node``, ``peer.agent``, ``peer.jobs.scheduler``...),
and leaves configuring handlers to the program.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, Self, TypeVar, overload

import attrs
import trio

from membership.state import Status
from peer.control.asyncio_host import GuestRun, bridged, inlined
from peer.control.decorators import CronJob, JobFunction, check_arguments
from peer.control.errors import RunFailed, RunFinishedError, UnknownJob, UnknownRun
from peer.control.server import HttpControlPlane
from peer.core.replication import ReplicationConfig
from peer.jobs.definition import TARGET_KEYS, JobError, JobSpec, default_job_id, parse_job, program_name, with_tags_as_list
from peer.jobs.runs import RunRecord, RunState
from peer.jobs.scheduler import JobEntry, Role, Scheduler, SchedulerConfig
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget, Target
from peer.runtime import aio
from peer.runtime.addresses import format_address
from peer.runtime.agent import API_DRAIN_SECONDS, MAX_RESULT_BYTES, RUN_WAIT_RECHECK, Agent
from peer.runtime.exceptions import leaf_exceptions
from peer.runtime.executor import Executor
from peer.runtime.keys import KeyringError, load_keyring, parse_keys
from peer.runtime.settings import CONVERTERS, ConfigError, Settings
from peer.runtime.wire import Keyring

__all__ = [
    "JobInfo",
    "MemberInfo",
    "Node",
    "RunFailed",
    "RunFinishedError",
    "UnknownJob",
    "UnknownRun",
]

log = logging.getLogger("peer.node")

F = TypeVar("F", bound=Callable[..., Any])
J = TypeVar("J", bound=JobFunction[Any, Any])
P = ParamSpec("P")
R = TypeVar("R")

# How often awaiting a result, a run or readiness looks again at the node's state.
POLL_SECONDS = 0.02
# Beyond the drain and the leave gossip, how long a graceful exit may take.
LEAVE_MARGIN_SECONDS = 5.0

# The settings a Node takes as keywords (Settings fields; logging and the
# jobs file are the program's business).
_SETTING_KEYS = (
    "name", "bind", "advertise", "seeds", "key_file", "encrypt", "profile", "join_timeout",
    "dns_interval", "hosts_file", "drain_timeout", "load_factor", "membership",
    "api_token", "api_token_file", "metrics_public", "api_hosts", "api_origins", "api_tls_cert", "api_tls_key",
    "api_max_waits", "api_max_connections", "allowed_commands", "allowed_calls", "max_running_runs", "max_pending_runs",
)  # fmt: skip
# Keys of a job definition that a one-off (submit_with) cannot have.
_ONE_OFF_ONLY = ("schedule", "timezone", "mode", "overlap", "misfire", "grace", "paused")


# -- values -----------------------------------------------------------------------------


@attrs.frozen
class MemberInfo:
    """A member as this node sees it. ``role`` is its scheduler's
    (``starting``, ``ready``, ``draining``), None if it has not said."""

    name: str
    address: str  # HOST:PORT
    status: str  # alive, suspect, dead, left
    incarnation: int
    role: str | None


@attrs.frozen
class JobInfo:
    """A defined job: its definition, who runs its ticks by this node's view
    (a node's name; ``"all"`` for mode all; None with no schedule, paused,
    or no eligible node), when it next ticks, and since when its schedule
    counts (times in UTC)."""

    spec: JobSpec
    owner: str | None
    next_tick: datetime | None
    since: datetime
    revision: str | None = None  # of the declaration in code it is, for a job declared there (@node.cron, @node.job)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def paused(self) -> bool:
        return self.spec.paused


# -- the node ---------------------------------------------------------------------------


class Node:
    """One peer node inside a trio program::

        async with peer.Node(name="web-1", bind="0.0.0.0:7946", seeds=["10.0.0.2:7946"], key=KEY) as node:
            @node.function
            async def resize(run: peer.RunContext, image: str, width: int) -> dict: ...

            run_id = await node.submit(resize, image="a.png", width=100)
            print(await node.result(run_id, timeout=30))

    Keywords (all optional; ``peer agent`` documents each): ``name`` (default
    the host name), ``bind`` and ``advertise`` (``HOST:PORT``; port 0 picks a
    free one), ``seeds`` (a list, or a comma-separated string, of
    ``HOST:PORT`` and ``dns:NAME[:PORT]``), ``api`` (``HOST:PORT`` to serve
    the control API, so the ``peer`` CLI can talk to this node; default
    None: none), ``key`` (the cluster key(s): base64 text as ``peer keygen``
    prints, comma-separated for several, raw bytes, a list of either, or a
    ``peer.runtime.wire.Keyring``) or ``key_file``, ``encrypt`` (True, or
    ``"switching"``), ``profile``, ``join_timeout``,
    ``dns_interval``, ``hosts_file``, ``drain_timeout``, ``load_factor``,
    ``max_running_runs``, ``max_pending_runs`` (back-pressure: ``submit``
    raises ``BacklogFull`` past the latter), ``membership`` (a mapping of
    membership timings). The API's access control
    as ``peer agent``'s: ``api_token`` or ``api_token_file`` (needed for an
    ``api`` beyond loopback), ``metrics_public``, ``api_hosts``, ``api_origins``
    (lists), ``api_tls_cert`` and ``api_tls_key``, ``api_max_waits``,
    ``api_max_connections``; and what the node's runs may run:
    ``allowed_commands``, ``allowed_calls`` (lists; None: anything). ``scheduler``, ``replication`` and
    ``executor`` take the configuration objects themselves (a
    ``SchedulerConfig`` with a short ``settle`` makes tests fast).

    A bad value raises ``ConfigError`` (a ``ValueError``) here, before any
    socket is opened. A node may be entered again after it has exited: it
    rejoins as itself, a new life.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        bind: str | None = None,
        advertise: str | None = None,
        seeds: Sequence[str] | str | None = None,
        api: str | None = None,
        key: str | bytes | Sequence[str | bytes] | Keyring | None = None,
        key_file: str | None = None,
        encrypt: bool | str | None = None,
        profile: str | None = None,
        join_timeout: float | None = None,
        dns_interval: float | None = None,
        hosts_file: str | None = None,
        drain_timeout: float | None = None,
        load_factor: float | None = None,
        max_running_runs: int | None = None,
        max_pending_runs: int | None = None,
        membership: Mapping[str, Any] | None = None,
        api_token: str | None = None,
        api_token_file: str | None = None,
        metrics_public: bool | None = None,
        api_hosts: Sequence[str] | None = None,
        api_origins: Sequence[str] | None = None,
        api_tls_cert: str | None = None,
        api_tls_key: str | None = None,
        api_max_waits: int | None = None,
        api_max_connections: int | None = None,
        allowed_commands: Sequence[str] | None = None,
        allowed_calls: Sequence[str] | None = None,
        scheduler: SchedulerConfig | None = None,
        replication: ReplicationConfig | None = None,
        executor: Executor | None = None,
    ) -> None:
        given: dict[str, Any] = {
            "name": name, "bind": bind, "advertise": advertise, "seeds": seeds, "key_file": key_file, "encrypt": encrypt,
            "profile": profile, "join_timeout": join_timeout, "dns_interval": dns_interval,
            "hosts_file": hosts_file, "drain_timeout": drain_timeout, "load_factor": load_factor,
            "membership": membership, "api_token": api_token, "api_token_file": api_token_file,
            "metrics_public": metrics_public, "api_hosts": api_hosts, "api_origins": api_origins,
            "api_tls_cert": api_tls_cert, "api_tls_key": api_tls_key, "api_max_waits": api_max_waits,
            "api_max_connections": api_max_connections, "allowed_commands": allowed_commands, "allowed_calls": allowed_calls,
            "max_running_runs": max_running_runs, "max_pending_runs": max_pending_runs,
        }  # fmt: skip
        values: dict[str, Any] = {}
        for setting in _SETTING_KEYS:
            value = given[setting]
            if value is None:
                continue
            if setting in ("seeds", "api_hosts", "api_origins", "allowed_commands", "allowed_calls") and (
                not isinstance(value, str) and isinstance(value, Iterable)
            ):
                value = list(value)
            elif setting == "membership" and isinstance(value, Mapping):
                value = dict(value)
            values[setting] = _convert(setting, value)
        if api is not None:
            values["api"] = _convert("api", api)
        self.settings = Settings(**values)
        self.settings.membership_config()  # a bad timing fails now (ConfigError "membership: ...")
        self._serve_api = api is not None
        self.keyring = _keyring(key, self.settings.key_file)
        self.settings.check_encryption(self.keyring is not None)
        if scheduler is not None:
            # Keywords given win over the same fields of a SchedulerConfig.
            if drain_timeout is not None:
                scheduler = attrs.evolve(scheduler, drain_timeout=self.settings.drain_timeout)
            if load_factor is not None:
                scheduler = attrs.evolve(scheduler, load_factor=self.settings.load_factor)
            if max_running_runs is not None:
                scheduler = attrs.evolve(scheduler, max_running_runs=self.settings.max_running_runs)
            if max_pending_runs is not None:
                scheduler = attrs.evolve(scheduler, max_pending_runs=self.settings.max_pending_runs)
        self.scheduler_config = scheduler or self.settings.scheduler_config()
        self.replication_config = replication
        self.settings.api_token_value()  # an unreadable token file fails now, too
        # Worker threads of sync functions: as many as runs may run at once.
        self.executor = executor or Executor(max_result_bytes=MAX_RESULT_BYTES, max_threads=self.scheduler_config.max_running_runs)
        self._functions: dict[str, Callable[..., Any]] = {}
        self._declared: dict[str, JobSpec] = {}  # jobs declared in code: applied at each start
        self._declaration_errors: dict[str, str] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._agent: Agent | None = None
        self._stopped = trio.Event()
        self._agent_scope: trio.CancelScope | None = None
        self._lifetime: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._guest: GuestRun | None = None  # entered from asyncio: the trio guest run

    def __repr__(self) -> str:
        state = "running" if self._agent is not None else "stopped"
        return f"<peer.Node {self.name!r} {state}>"

    # -- functions ------------------------------------------------------------------------

    @overload
    def function(self, function: F, /) -> F: ...

    @overload
    def function(self, name: str | None = None, /) -> Callable[[F], F]: ...

    def function(self, function: F | str | None = None, /) -> F | Callable[[F], F]:
        """Register a function that runs may call, by name: ``@node.function``
        (its ``__name__``) or ``@node.function("name")``. Sync functions run
        in a worker thread, async ones on trio; one with a parameter named
        ``run`` is given the run's ``peer.RunContext`` (progress, updates).
        The function is returned unchanged. Register the same functions under
        the same names on every node: a run executes on whichever node owns
        it, which finds the function by its name there."""
        if callable(function):
            self.register(function)
            return function
        if function is not None and not isinstance(function, str):
            raise TypeError(f"@node.function takes a function or a name, got {type(function).__name__}")
        name = function

        def decorate(fn: F) -> F:
            self.register(fn, name)
            return fn

        return decorate

    def register(self, function: Callable[..., Any], name: str | None = None) -> str:
        """``@node.function`` without the decorator; the registered name.
        ``ValueError`` if another function has that name already."""
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
        if name is None:
            name = getattr(function, "__name__", None)
            if not isinstance(name, str) or not _valid_function_name(name):
                raise ValueError(f"{function!r} has no usable name: register it with @node.function('a_name')")
        if not _valid_function_name(name):
            raise ValueError(
                f"{name!r} is not a valid function name (letters, digits, '_' and '.', not starting with a digit)"
            )
        current = self._functions.get(name)
        if current is not None and current is not function and current != function:
            raise ValueError(
                f"another function is registered as {name!r} ({_describe(current)}); "
                f"register {_describe(function)} under another name: @node.function('other_name')"
            )
        self.executor.register(name, function)
        self._functions[name] = function
        return name

    @property
    def functions(self) -> dict[str, Callable[..., Any]]:
        """The registered functions, by name."""
        return dict(self._functions)

    # -- jobs declared in code --------------------------------------------------------------

    def cron(
        self,
        schedule: str,
        /,
        *,
        id: str | None = None,
        name: str | None = None,
        mode: str = "one",
        timezone: str | None = None,
        retries: int | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Callable[[Callable[P, R]], CronJob[P, R]]:
        """``@node.cron("*/5 * * * *")``: register the function (as
        ``@node.function``, under ``name``, default its own) and declare a
        cron job calling it: ``id`` (default the function's name), ``mode``,
        ``timezone``, ``retries``, ``kwargs`` (checked against the signature
        now), and the other keys of a job definition as ``schedule()`` takes
        them, except ``paused`` (the operator's: ``peer jobs pause``). A bad
        definition raises ``JobError`` here. Returns a ``CronJob``: still
        the function, plus ``id``, ``submit``, ``trigger``, ``result``,
        ``status``. The declaration is applied by the node once it has
        settled (or at once, in the background, on a running node): every
        replica declaring it makes one job, and a changed definition rolls
        out as the class docstring says."""
        _check_declared_fields(fields, "@node.cron")
        data = {**fields, "schedule": schedule, "mode": mode, "timezone": timezone, "retries": retries}

        def decorate(function: Callable[P, R]) -> CronJob[P, R]:
            # Its ticks call it with its kwargs: checked now, not at each tick.
            registered, spec = self._declaration(function, name, id, data, dict(kwargs or {}), "@node.cron")
            return self._declare(CronJob(self, function, registered, spec), function)

        return decorate

    @overload
    def job(self, job_id: str, /) -> JobInfo | None: ...

    @overload
    def job(self, function: Callable[P, R], /) -> JobFunction[P, R]: ...

    @overload
    def job(
        self, *, id: str | None = None, name: str | None = None, timeout: float | str | None = None,
        retries: int | None = None, **fields: Any,
    ) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...  # fmt: skip

    def job(  # type: ignore[misc]  # mypy: positional-only here, **fields in an overload
        self,
        function: Any = None,
        /,
        *,
        id: str | None = None,
        name: str | None = None,
        timeout: float | str | None = None,
        retries: int | None = None,
        **fields: Any,
    ) -> Any:
        """``node.job("report")``: the job of that id (``jobs()[id]``), or None.

        ``@node.job`` or ``@node.job(timeout="30s", retries=2)``: register
        the function (as ``@node.function``) and declare a job without a
        schedule calling it, for one-off runs with typed keyword arguments:
        ``await f.submit(image="a.png")`` checks them against the signature
        where it is called and gives the run id; ``peer trigger ID`` runs it
        too. Options as ``submit_with``'s (``timeout``, ``retries``,
        ``backoff``, ``backoff_max``, ``result_ttl``, ``tags``)."""
        if isinstance(function, str):
            if id is not None or name is not None or timeout is not None or retries is not None or fields:
                raise TypeError("node.job(job_id) looks a job up; to declare one, decorate a function: @node.job(...)")
            return self.jobs().get(function)
        for key in _ONE_OFF_ONLY:
            if key in fields:
                raise JobError("@node.job", "a job without a schedule; declare cron jobs with @node.cron", job=id, field=key)
        _check_declared_fields(fields, "@node.job")
        data = {**fields, "timeout": timeout, "retries": retries}

        def decorate(fn: Callable[..., Any]) -> JobFunction[Any, Any]:
            registered, spec = self._declaration(fn, name, id, data, None, "@node.job")
            return self._declare(JobFunction(self, fn, registered, spec), fn)

        return decorate if function is None else decorate(function)

    def _declaration(
        self,
        function: Callable[..., Any],
        name: str | None,
        job_id: str | None,
        data: dict[str, Any],
        kwargs: Mapping[str, Any] | None,
        where: str,
    ) -> tuple[str, JobSpec]:
        """The registered name and the job a decorator declares, checked."""
        if not callable(function):
            raise TypeError(f"{where} decorates a function, got {type(function).__name__}")
        registered = name if name is not None else getattr(function, "__name__", None)
        if not isinstance(registered, str) or not _valid_function_name(registered):
            raise ValueError(f"{function!r} has no usable name: give one with {where}(name='a_name')")
        spec = parse_job(
            with_tags_as_list({**data, "id": job_id or default_job_id(registered), "call": registered, "kwargs": kwargs}),
            where=where,
        )
        if kwargs is not None:
            check_arguments(function, kwargs, f"{where}: job {spec.id!r}")
        declared = self._declared.get(spec.id)
        if declared is not None and declared.to_wire() != spec.to_wire():
            raise ValueError(f"job {spec.id!r} is declared already on this node, otherwise: give one of them another id=")
        self.register(function, registered)
        return registered, spec

    def _declare(self, declared: J, function: Callable[..., Any]) -> J:
        """Note a declaration; a running node applies it in its own task."""
        spec = declared.spec
        self._declared[spec.id] = spec
        agent, token = self._agent, self._token
        if agent is not None and token is not None and not self._stopped.is_set():
            # Thread-safe and needs no trio context: the decorator may run
            # in an asyncio task, or anywhere; errors are logged there.
            token.run_sync_soon(self._apply_declaration, agent, spec)
        return declared

    def _apply_declaration(self, agent: Agent, spec: JobSpec) -> None:
        if agent is not self._agent or self._stopped.is_set():
            return  # stopped meanwhile: the next life declares it
        try:
            agent.declare_job(spec)
        except Exception:  # noqa: BLE001 - the decorator has returned: logged, and status says it
            self._declaration_errors[spec.id] = "failed: see the log"
            log.exception("job %s: declaring it failed", spec.id, extra={"node": self.name})

    def _declaration_status(self, job_id: str) -> str:
        if job_id in self._declaration_errors:
            return self._declaration_errors[job_id]
        if not self.running:
            return "not running"
        assert self._agent is not None
        return self._agent.scheduler.declarations().get(job_id, ("", "waiting"))[1]

    @property
    def declared(self) -> dict[str, JobSpec]:
        """The jobs this node declares in code (``@node.cron``, ``@node.job``), by id."""
        return dict(self._declared)

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._lifetime is not None:
            raise RuntimeError(f"node {self.name!r} is already running")
        lifetime: contextlib.AbstractAsyncContextManager[Any]
        if aio.running_asyncio():
            lifetime = self._guest = GuestRun(self, self._life)
        else:
            lifetime = self._life()
        self._lifetime = lifetime
        try:
            await lifetime.__aenter__()
            return self
        except BaseException:
            self._lifetime = self._guest = None
            raise

    async def __aexit__(self, *exc_info: object) -> bool | None:
        lifetime = self._lifetime
        assert lifetime is not None
        try:
            return await lifetime.__aexit__(*exc_info)  # type: ignore[arg-type]
        finally:
            self._lifetime = self._guest = None

    @contextlib.asynccontextmanager
    async def _life(self) -> AsyncIterator[None]:
        agent = Agent(
            self.settings,
            self.keyring,
            replication=self.replication_config,
            scheduler=self.scheduler_config,
            executor=self.executor,
            control_plane=HttpControlPlane() if self._serve_api else None,
        )
        await agent.bind()  # BindError, before anything runs
        self._stopped = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._declaration_errors.clear()
        for spec in self._declared.values():
            agent.declare_job(spec)  # applied by the scheduler once settled
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._agent = agent
                await nursery.start(self._drive, agent)
                try:
                    yield
                finally:
                    await self._exit(agent)
        except BaseExceptionGroup as group:
            leaves = leaf_exceptions(group)
            if len(leaves) != 1:
                raise
            failure = leaves[0]
        finally:
            self._agent = None
            self._agent_scope = None
            self._token = None
            agent.close()
        if failure is not None:
            # Raised outside the handler, so it keeps its own context.
            raise failure

    async def _drive(self, agent: Agent, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Shielded: a cancelled body must not stop the node before it has
        # left; _exit stops it, gracefully or not.
        with trio.CancelScope(shield=True) as scope:
            self._agent_scope = scope
            try:
                await agent.run(task_status=task_status)
            finally:
                self._stopped.set()
                agent.release_run_waits()  # callers waiting on a run look again now, and see it stopped

    async def _exit(self, agent: Agent) -> None:
        """Leave gracefully, within a bound, even when cancelled; stop the
        agent where it is if that fails or takes too long."""
        if self._stopped.is_set():
            return  # it left already (leave()), or failed
        bound = (
            self.scheduler_config.drain_timeout
            + agent.config.leave_timeout
            + (API_DRAIN_SECONDS if self._serve_api else 0.0)
            + LEAVE_MARGIN_SECONDS
        )
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(bound) as leaving:
                    async with trio.open_nursery() as race:
                        race.start_soon(agent.leave)
                        await self._stopped.wait()  # left, or the agent failed meanwhile
                        race.cancel_scope.cancel()
                if leaving.cancelled_caught:
                    log.warning(
                        "node %s did not finish leaving within %g s; stopping it anyway",
                        self.name,
                        bound,
                        extra={"node": self.name},
                    )
        finally:
            if self._agent_scope is not None:
                self._agent_scope.cancel()

    @bridged
    async def leave(self) -> None:
        """Leave the cluster gracefully now (what exiting the ``async with``
        does); the node is stopped once it returns."""
        agent = self._require()
        await agent.leave()
        await self._stopped.wait()

    # -- state ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def running(self) -> bool:
        """Entered and not stopped (it may be leaving)."""
        return self._agent is not None and not self._stopped.is_set()

    @property
    def agent(self) -> Agent:
        """The underlying ``peer.runtime.agent.Agent`` (for what this layer does not offer)."""
        return self._require()

    @property
    def address(self) -> str:
        """``HOST:PORT`` others reach this node at (the bound port if 0 was asked)."""
        return format_address(self._require().advertise)

    @property
    def api_address(self) -> str | None:
        """``HOST:PORT`` of the control API, None when not served."""
        agent = self._require()
        return format_address(agent.api_address) if self._serve_api else None

    @property
    def ready(self) -> bool:
        """Part of the cluster (or meant to be alone) and settled: this node
        holds the cluster's jobs and may own work."""
        agent = self._require()
        return agent.ready

    @bridged
    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``ready``; ``TimeoutError`` after ``timeout`` seconds."""
        await self._poll(lambda: self.ready, timeout, lambda: TimeoutError(f"node {self.name} not ready within {timeout:g} s"))

    def members(self) -> list[MemberInfo]:
        """Every member this node knows, itself included, sorted by name."""
        agent = self._require()
        return [
            MemberInfo(
                name=member.name,
                address=format_address(member.addr),
                status=member.status.name.lower(),
                incarnation=member.incarnation,
                role=_role(member.meta),
            )
            for member in sorted(agent.membership.members(), key=lambda m: m.name)
        ]

    def member(self, name: str) -> MemberInfo | None:
        return next((member for member in self.members() if member.name == name), None)

    def live_members(self) -> list[MemberInfo]:
        """The members that are alive or suspect."""
        return [m for m in self.members() if Status[m.status.upper()].is_live]

    # -- jobs ---------------------------------------------------------------------------------

    @bridged
    async def schedule(
        self,
        job_id: str,
        schedule: str | None,
        target: Callable[..., Any] | str | Target,
        /,
        *,
        kwargs: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Define (or redefine) a job, cluster-wide; False if it was defined
        so already. ``schedule`` is cron text (``"0 3 * * *"``, six fields
        with seconds first, ``@daily``, ``@every 30s``), or None for a job that
        runs only when triggered. ``target`` is a registered function (or
        its name), ``"package.module:function"``, or a ``CommandTarget`` /
        ``HttpTarget``; ``kwargs`` are the call's arguments (plain data).
        ``fields`` are the other keys of a job definition (``timezone``,
        ``mode``, ``timeout``, ``retries``, ``backoff``, ``backoff_max``,
        ``overlap``, ``misfire``, ``grace``, ``result_ttl``, ``tags``,
        ``paused``; durations as seconds or ``"30s"``), checked as a jobs
        file's are: ``JobError`` names the job, the key and why.

        A node that has just started first waits until it has settled (holds
        the cluster's job definitions, at most a few seconds), so a restart
        re-defining the same job changes nothing and its schedule carries on.
        """
        data = {**fields, **self._target_keys(target, kwargs, "schedule", fields), "id": job_id}
        if schedule is not None:
            data["schedule"] = schedule
        spec = parse_job(with_tags_as_list(data), where="schedule()")
        agent = self._require()
        await self._settled()
        return await agent.define_job(spec)

    @bridged
    async def remove_job(self, job_id: str) -> bool:
        """Remove a job, cluster-wide; False if there was none. Its runs'
        records stay readable until they expire."""
        agent = self._require()
        await self._settled()
        return await agent.remove_job(job_id)

    @bridged
    async def pause_job(self, job_id: str) -> JobSpec:
        """Stop a job's ticks (a running run carries on); ``UnknownJob``."""
        return await self._pause(job_id, True)

    @bridged
    async def resume_job(self, job_id: str) -> JobSpec:
        """Start a paused job's ticks again, from now (ticks due while it was
        paused are not owed); ``UnknownJob``."""
        return await self._pause(job_id, False)

    async def _pause(self, job_id: str, paused: bool) -> JobSpec:
        agent = self._require()
        await self._settled()
        try:
            return await agent.pause_job(job_id, paused)
        except KeyError:
            raise UnknownJob(job_id) from None

    def jobs(self) -> dict[str, JobInfo]:
        """Every job defined in the cluster, by id (sorted), as this node sees it."""
        scheduler = self._require().scheduler
        now_ms = self._require().core.wall_ms()
        return {job_id: _job_info(scheduler, entry, now_ms) for job_id, entry in sorted(scheduler.jobs().items())}


    # -- runs ---------------------------------------------------------------------------------

    @inlined
    async def submit(self, target: Callable[..., Any] | str | Target, /, **kwargs: Any) -> str:
        """Run ``target`` once, now, somewhere in the cluster; the run id.
        ``kwargs`` are the function's arguments (plain data: str, int,
        float, bool, None, lists, dicts with str keys). The run's job id is
        the function's name. For a timeout, retries or an id of your own,
        use ``submit_with``. ``peer.BacklogFull`` (nothing submitted) when
        the cluster's pending runs are at ``max_pending_runs``: try later."""
        return await self._submit(target, kwargs, {}, "submit()")

    @inlined
    async def submit_with(
        self,
        target: Callable[..., Any] | str | Target,
        /,
        kwargs: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        **fields: Any,
    ) -> str:
        """``submit`` with the options of a one-off job: ``id`` (names the
        run; default the function's name), ``timeout``, ``retries``,
        ``backoff``, ``backoff_max``, ``result_ttl``, ``tags``."""
        for key in _ONE_OFF_ONLY:
            if key in fields:
                raise JobError(
                    "submit_with()", "a submitted run runs once, now; define jobs with schedule()", job=id, field=key
                )
        return await self._submit(target, kwargs or {}, {**fields, "id": id}, "submit_with()")

    async def _submit(
        self, target: Callable[..., Any] | str | Target, kwargs: Mapping[str, Any], fields: dict[str, Any], where: str
    ) -> str:
        job_id = fields.pop("id", None)
        keys = self._target_keys(target, kwargs, where, fields)
        job_id = job_id or default_job_id(keys.get("call") or program_name(keys))
        spec = parse_job(with_tags_as_list({**fields, **keys, "id": job_id}), where=where)
        agent = self._require()
        if self._here():
            return agent.submit_soon(spec)  # the same submit; trio flushes it just after
        return await agent.submit(spec)

    @bridged
    async def trigger(self, job_id: str, /, **kwargs: Any) -> str:
        """Run a defined job once, now, as defined (``kwargs``, for a call
        target, merged over its own); the run id. ``UnknownJob``."""
        agent = self._require()
        await self._settled()
        entry = agent.scheduler.jobs().get(job_id)
        if entry is None:
            raise UnknownJob(job_id)
        spec = entry.spec
        if kwargs:
            if not isinstance(spec.target, CallTarget):
                raise JobError("trigger()", "only a call target takes kwargs", job=job_id, field="kwargs")
            target = attrs.evolve(spec.target, kwargs={**spec.target.kwargs, **kwargs})
            try:
                spec = attrs.evolve(spec, target=target)  # checked again, kwargs included
            except JobError as error:
                raise JobError("trigger()", error.reason, job=job_id, field=error.field) from None
        return await agent.submit(spec)

    def run(self, run_id: str) -> RunRecord | None:
        """A run's record as this node holds it now, or None."""
        return self._require().scheduler.record(run_id)

    def runs(
        self,
        job: str | None = None,
        *,
        state: RunState | str | Iterable[RunState | str] | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs this node holds (every node holds them all), newest first (by
        creation, else tick); only ``job``'s, only in ``state``(s)."""
        states = None if state is None else _states(state)
        records = [
            record
            for record in self._require().scheduler.records()
            if (job is None or record.job == job) and (states is None or record.state in states)
        ]
        records.sort(key=lambda record: (-(record.created or record.tick or 0), record.id))
        return records if limit is None else records[:limit]

    @inlined
    async def result(self, run_id: str, *, timeout: float | None = None) -> Any:
        """Wait until the run has finished and give its result (what the
        function returned, as plain data: tuples come back as lists).
        ``RunFailed`` if it finished otherwise; ``TimeoutError`` if it has
        not finished within ``timeout`` seconds (None: as long as it takes).
        A run id this node has not heard of yet is waited for too (a run
        submitted on another node takes a moment to arrive); after
        ``timeout``, that is ``UnknownRun``."""
        record = await self.wait(run_id, timeout=timeout)
        if record.state is RunState.SUCCEEDED:
            return record.result
        raise RunFailed(record)

    @inlined
    async def wait(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        """Wait until the run has finished, however it went; its record.
        ``TimeoutError``, ``UnknownRun`` as ``result``."""
        record = None
        deadline = trio.current_time() + (math.inf if timeout is None else timeout)
        while True:
            agent = self._require()
            record = agent.scheduler.record(run_id)
            if record is not None and record.state.finished:
                return record
            if trio.current_time() >= deadline:
                break
            await self._run_changed(agent, run_id, min(RUN_WAIT_RECHECK, deadline - trio.current_time()))
        if record is None:
            raise UnknownRun(run_id, f" (nothing heard of it within {timeout:g} s)")
        raise TimeoutError(f"run {run_id} has not finished within {timeout:g} s (it is {record.state.value})")

    def watch(self, run_id: str, *, interval: float = RUN_WAIT_RECHECK) -> AsyncIterator[RunRecord]:
        """``async for record in node.watch(run_id)``: the run's record when
        first known and each time it changes (state, attempt, progress...),
        as soon as this node holds the change (and looked at every
        ``interval`` seconds anyway); ends after the finished one."""
        return _Watch(self, run_id, interval)

    @bridged
    async def send(self, run_id: str, data: Any) -> None:
        """Send ``data`` (plain data) to a run, on whichever node runs it or
        will: a function reads it with ``await run.next_update()`` (async)
        or ``run.get_update()`` (sync). ``UnknownRun`` if this node has not
        heard of the run; ``RunFinishedError`` if it has finished."""
        agent = self._require()
        record = agent.scheduler.record(run_id)
        if record is None:
            raise UnknownRun(run_id)
        if record.state.finished:
            raise RunFinishedError(record)
        await agent.send(run_id, data)

    # -- internals ----------------------------------------------------------------------------

    def _require(self) -> Agent:
        agent = self._agent
        if agent is None:
            raise RuntimeError(f"node {self.name!r} is not running: use `async with node:`")
        if self._stopped.is_set():
            raise RuntimeError(f"node {self.name!r} has stopped")
        return agent

    def _here(self) -> bool:
        """Called from an asyncio task on the node's own loop (``GuestRun.here``)."""
        guest = self._guest
        return guest is not None and guest.here()

    async def _run_changed(self, agent: Agent, run_id: str, at_most: float) -> None:
        """Return at the run's next change on this node, or after ``at_most``
        seconds: in a trio task, ``Agent.run_changed``; in an asyncio task on
        the node's loop, the same wait on an asyncio future."""
        guest = self._guest
        if guest is not None and guest.here():
            await guest.run_changed(agent, run_id, at_most)
        else:
            await agent.run_changed(run_id, at_most=at_most)

    async def _settled(self) -> None:
        """Wait until the scheduler has caught up (no longer ``starting``)."""
        agent = self._require()
        if agent.scheduler.role is Role.STARTING:
            log.debug("waiting to settle before changing jobs", extra={"node": self.name})
            await self._poll(lambda: agent.scheduler.role is not Role.STARTING)

    async def _poll(
        self,
        condition: Callable[[], bool],
        timeout: float | None = None,
        error: Callable[[], BaseException] = lambda: TimeoutError(),
    ) -> None:
        """Wait until ``condition()``; ``error()`` is raised past ``timeout``."""
        deadline = trio.current_time() + (math.inf if timeout is None else timeout)
        while not condition():
            if self._stopped.is_set():
                raise RuntimeError(f"node {self.name!r} stopped while waiting")
            if trio.current_time() >= deadline:
                raise error()
            await trio.sleep(min(POLL_SECONDS, max(0.0, deadline - trio.current_time())))

    def _target_keys(
        self, target: Callable[..., Any] | str | Target, kwargs: Mapping[str, Any] | None, where: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The keys of a job definition naming ``target``."""
        clash = sorted(TARGET_KEYS & fields.keys())
        if clash:
            raise TypeError(f"{where} got an unexpected keyword argument {clash[0]!r} (the target is an argument of its own)")
        if isinstance(target, CallTarget):
            keys = {"call": target.function, "kwargs": {**target.kwargs, **(kwargs or {})}}
            return keys if target.runtime == "auto" else {**keys, "runtime": target.runtime}
        if isinstance(target, (CommandTarget, HttpTarget)):
            if kwargs:
                raise JobError(where, "only a call target takes kwargs", field="kwargs")
            if isinstance(target, CommandTarget):
                command: str | list[str] = target.argv[0] if target.shell and len(target.argv) == 1 else list(target.argv)
                return {"command": command, "shell": target.shell, "env": dict(target.env), "cwd": target.cwd}
            return {
                "http": {"url": target.url, "method": target.method, "headers": dict(target.headers), "body": target.body}
            }
        if isinstance(target, str):
            name = target
        elif isinstance(target, JobFunction):
            name = target.name
        elif callable(target):
            found = self._name_of(target)
            if found is None:
                raise ValueError(
                    f"{_describe(target)} is not registered with this node: decorate it with @node.function "
                    "(on every node), or pass its name or 'package.module:function'"
                )
            name = found
        else:
            raise TypeError(
                f"a target is a registered function, its name, 'package.module:function' or a Target, got {type(target).__name__}"
            )
        return {"call": name, "kwargs": dict(kwargs or {})}

    def _name_of(self, function: Callable[..., Any]) -> str | None:
        for name, registered in self._functions.items():
            if registered is function:
                return name
        # Bound methods are a new object at every access, equal to the last.
        return next((name for name, registered in self._functions.items() if _equal(registered, function)), None)


class _Watch:
    """The async iterator of ``Node.watch``: woken by each change of the
    run's record, with nothing to clean up."""

    def __init__(self, node: Node, run_id: str, interval: float) -> None:
        self._node = node
        self._run_id = run_id
        self._interval = interval
        self._last: RunRecord | None = None
        self._done = False

    def __aiter__(self) -> _Watch:
        return self

    @property
    def _guest(self) -> GuestRun | None:
        return self._node._guest

    @inlined
    async def __anext__(self) -> RunRecord:
        if self._done:
            raise StopAsyncIteration
        while True:
            record = self._node.run(self._run_id)
            if record is not None and record != self._last:
                self._last = record
                self._done = record.state.finished
                return record
            await self._node._run_changed(self._node._require(), self._run_id, self._interval)


# -- helpers ---------------------------------------------------------------------------------


def _convert(key: str, value: Any) -> Any:
    try:
        return CONVERTERS[key](value)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def _keyring(key: str | bytes | Sequence[str | bytes] | Keyring | None, key_file: str | None) -> Keyring | None:
    if key is not None and key_file is not None:
        raise ConfigError("key: give key or key_file, not both")
    try:
        if key is None:
            return load_keyring(key_file, {})
        if isinstance(key, Keyring):
            return key
        items: list[str | bytes] = [key] if isinstance(key, (str, bytes)) else list(key)
        keys: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                keys.append(item)
            elif isinstance(item, str):
                keys.extend(parse_keys(item.replace(",", "\n").splitlines(), "key").keys)
            else:
                raise ConfigError(f"key: expected base64 text or bytes, got {type(item).__name__}")
        return Keyring(keys)
    except KeyringError as error:
        raise ConfigError(str(error)) from None
    except ValueError as error:  # Keyring's own checks: sizes, duplicates
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"key: {error}") from None


def _check_declared_fields(fields: Mapping[str, Any], where: str) -> None:
    if "paused" in fields:
        raise JobError(where, "pausing is the operator's (peer jobs pause, node.pause_job): kept across restarts", field="paused")
    clash = sorted(TARGET_KEYS & fields.keys())
    if clash:
        raise TypeError(f"{where} got an unexpected keyword argument {clash[0]!r}")


def _valid_function_name(name: str) -> bool:
    try:
        JobSpec(id="x", target=CallTarget(name), schedule=None)
    except JobError:
        return False
    return ":" not in name


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an odd __eq__ is no match
        return False


def _describe(function: Any) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(function)





def _states(state: RunState | str | Iterable[RunState | str]) -> frozenset[RunState]:
    items = [state] if isinstance(state, (RunState, str)) else list(state)
    try:
        return frozenset(RunState(item) for item in items)
    except ValueError:
        known = ", ".join(s.value for s in RunState)
        raise ValueError(f"state: expected some of {known}, got {state!r}") from None


def _role(meta: bytes) -> str | None:
    try:
        return Role(meta.decode()).value
    except (UnicodeDecodeError, ValueError):
        return None


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _job_info(scheduler: Scheduler, entry: JobEntry, now_ms: int) -> JobInfo:
    next_tick = entry.next_tick(now_ms)
    return JobInfo(
        spec=entry.spec,
        owner=scheduler.runs_ticks_of(entry.spec),
        next_tick=None if next_tick is None else _utc(next_tick),
        since=_utc(entry.since),
        revision=None if entry.code is None else entry.code.rev,
    )
