"""The control API: local HTTP/JSON, served by hypercorn's trio worker.

What it is: each node's door for operators and programs. It reads the node
(health, readiness, members, status, Prometheus metrics), defines, pauses and
removes jobs, submits runs, reads their records and sends running ones
updates. README.md's "The control API" documents every route and answer;
``ControlApi.__init__`` holds the same table.

How a request flows: hypercorn calls ``ControlApi``, which refuses a path
that is not UTF-8, rewrites the path so that Starlette routes it segment by
segment (``_routing_path``: a path parameter is one percent-encoded segment,
an encoded ``/`` stays inside it; run ids hold ``@`` and ``:``, which clients
quote with ``peer.control.client.quote``) and caps the body it receives.
Starlette picks the route by path and method; the route's endpoint reads the
whole body, then its handler answers with an ``IndentedJSONResponse``. Every
error is ``{"error": "..."}``: a handler raises Starlette's ``HTTPException``
(400 for a bad request, 404 for an unknown job or run, 409 for sending to a
finished run) or a ``JobError`` (a 400 naming the job and field); routing
answers 404 for an unknown path and 405, with ``Allow``, for a wrong method;
the body cap, 413; a bug in a handler is logged and answered 500.

Why Starlette: routing, query and body parsing and error answers through
exception handlers are what it does, so this module keeps only what is the
API's own. It runs on anyio, so on trio under hypercorn. It needs no
middleware: the one step before routing is ``ControlApi.__call__``.

The API binds 127.0.0.1 by default: it can make the node leave and run
code, so expose it only where that is wanted. The socket is bound before the
node starts (``HttpControlPlane.bind``), so a port in use is a clear error at
start, not a log line later.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from membership.core import MembershipStats
from membership.state import Address
from peer.core.replication import ReplicationStats
from peer.jobs.definition import JobError, JobSpec, parse_job
from peer.jobs.runs import RunRecord, RunState, format_time
from peer.jobs.scheduler import JobEntry, Role
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget
from peer.runtime.addresses import format_address, is_ipv6
from peer.runtime.transport import BindError, TransportStats, bind_error_message

if TYPE_CHECKING:
    from peer.runtime.agent import Agent

log = logging.getLogger("peer.api")

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

# The most a request body may hold: job definitions and updates are small.
MAX_BODY_BYTES = 1 << 20
# The longest ``GET /runs/{run}?wait=`` a request may ask for.
MAX_WAIT_SECONDS = 300.0
# ``GET /runs`` answers at most this many records unless ``limit`` says otherwise.
DEFAULT_RUNS_LIMIT = 100
# ``GET /jobs/{id}`` lists the job's latest runs, at most this many.
JOB_RUNS = 20
# The scope key holding the path as the client asked for it (decoded, as the
# server gave it): Starlette routes on ``_routing_path``, error messages and
# logs name this one.
ASKED_PATH = "peer.asked_path"

Handler = Callable[[Request], Awaitable[Response]]


def peer_version() -> str:
    try:
        return version("peer")
    except PackageNotFoundError:
        return "unknown"


class HttpControlPlane:
    """The control API as the agent's ``ControlPlane``: its socket, bound
    before the node starts, and hypercorn serving ``ControlApi`` on it."""

    def bind(self, address: Address) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if is_ipv6(address[0]) else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(64)
        except OSError as error:
            sock.close()
            raise BindError(bind_error_message("api", address, error, "--api")) from None
        return sock

    async def serve(self, agent: Agent, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None:
        config = HypercornConfig()
        # The server owns the descriptor from now on and closes it when it stops;
        # detached, our socket object will not close it (or a reused number) again.
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        app = ControlApi(agent)
        try:
            await serve(app, config, shutdown_trigger=agent.stopping.wait, task_status=task_status)  # type: ignore[arg-type]
        finally:
            agent.api_drained()


class IndentedJSONResponse(JSONResponse):
    """JSON as the API writes it: indented by one, ASCII, a newline at the
    end; data JSON cannot take (bytes from msgpack) made text first."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, indent=1)
        except (TypeError, ValueError):
            text = json.dumps(_json_compatible(content), indent=1, default=repr)
        return text.encode() + b"\n"


def _error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The API's error answer: ``{"error": message}``."""
    return IndentedJSONResponse({"error": message}, status, headers)


class ControlApi:
    """The ASGI application: the API's handlers, routed by Starlette."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self.registry.register(ProcessCollector(registry=None))
        # One method a route: a path's routes, in this order, make a 405's Allow.
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/health", self.health),
            ("GET", "/health/ready", self.ready),
            ("GET", "/metrics", self.metrics),
            ("GET", "/members", self.members),
            ("GET", "/status", self.status),
            ("POST", "/leave", self.leave),
            ("GET", "/jobs", self.list_jobs),
            ("POST", "/jobs", self.define_jobs),
            ("GET", "/jobs/{id}", self.show_job),
            ("DELETE", "/jobs/{id}", self.remove_job),
            ("POST", "/jobs/{id}/pause", self.pause_job),
            ("POST", "/jobs/{id}/resume", self.resume_job),
            ("POST", "/submit", self.submit),
            ("GET", "/runs", self.list_runs),
            ("GET", "/runs/{run}", self.show_run),
            ("POST", "/runs/{run}/send", self.send),
        ]
        # Each endpoint reads the body, then runs its handler; a bug is a 500.
        self.routes = [Route(path, _endpoint_for(handler), methods=[method]) for method, path, handler in table]
        self.app = Starlette(
            routes=self.routes,
            exception_handlers={
                405: self.answer_wrong_method,
                HTTPException: _answer_http_exception,
                JobError: _answer_job_error,
            },
        )
        # ``_routing_path`` has already dropped a trailing slash: a path that
        # still matches no route is unknown, not one to redirect.
        self.app.router.redirect_slashes = False
        # Its 404 names the path, where Starlette's says "Not Found".
        self.app.router.default = _no_such_resource

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hands Starlette a request whose path it can route segment by
        segment (``_routing_path``) and whose body stops at ``MAX_BODY_BYTES``."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)  # Starlette answers hypercorn's startup and shutdown
            return
        if scope["type"] != "http":
            return  # no websocket routes: hypercorn refuses the handshake
        path: str = scope["path"]
        raw_path = scope.get("raw_path") or urllib.parse.quote(path).encode()
        routing_path = _routing_path(raw_path)
        if routing_path is None:
            await _error_response(400, f"the path is not UTF-8 once decoded: {path}")(scope, receive, send)
            return
        scope = {**scope, "path": routing_path, ASKED_PATH: path}
        await self.app(scope, _receive_at_most(receive, MAX_BODY_BYTES), send)

    async def answer_wrong_method(self, request: Request, error: Exception) -> Response:
        # Starlette's own 405 allows the methods of the first route on the
        # path, HEAD among them; the API's allows those of all its routes.
        allowed = [
            method
            for route in self.routes
            if route.matches(request.scope)[0] is not Match.NONE
            for method in sorted(route.methods or ())
            if method != "HEAD"
        ]
        message = f"use {' or '.join(allowed)} for {request.scope[ASKED_PATH]}"
        return _error_response(405, message, {"Allow": ", ".join(allowed)})

    # -- the node ---------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return IndentedJSONResponse({"status": "ok", "ready": self.agent.ready})

    async def ready(self, request: Request) -> Response:
        ready = self.agent.ready
        return IndentedJSONResponse({"ready": ready, "leaving": self.agent.leaving}, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=PROMETHEUS)

    async def members(self, request: Request) -> Response:
        return IndentedJSONResponse(members_document(self.agent))

    async def status(self, request: Request) -> Response:
        return IndentedJSONResponse(status_document(self.agent))

    async def leave(self, request: Request) -> Response:
        await self.agent.leave()
        return IndentedJSONResponse({"left": True, "name": self.agent.name})

    # -- jobs -------------------------------------------------------------------------

    def _job_entry_or_404(self, job_id: str) -> JobEntry:
        entry = self.agent.scheduler.jobs().get(job_id)
        if entry is None:
            raise HTTPException(404, f"no such job: {job_id}")
        return entry

    async def list_jobs(self, request: Request) -> Response:
        now = self.agent.core.wall_ms()
        jobs = sorted(self.agent.scheduler.jobs().values(), key=lambda entry: entry.spec.id)
        return IndentedJSONResponse({"jobs": [job_document(self.agent, entry, now) for entry in jobs]})

    async def define_jobs(self, request: Request) -> Response:
        document = await _json_object_body(request)
        if "jobs" not in document:
            spec = parse_job(document, where="request")
            return IndentedJSONResponse({"id": spec.id, "changed": await self.agent.define_job(spec)})
        items = document["jobs"]
        if set(document) != {"jobs"}:
            extra = ", ".join(sorted(set(document) - {"jobs"}))
            raise HTTPException(400, f'request: a body with "jobs" holds nothing else (found {extra})')
        if not isinstance(items, list) or not items:
            raise HTTPException(400, 'request: "jobs" must be a non-empty list of job definitions')
        specs: list[JobSpec] = []
        for number, item in enumerate(items, start=1):
            spec = parse_job(item, where="request", index=number)
            if any(other.id == spec.id for other in specs):
                raise HTTPException(400, f"request: job {spec.id!r}: id: defined twice in this request")
            specs.append(spec)
        # Every definition is valid: define them all.
        answers = [{"id": spec.id, "changed": await self.agent.define_job(spec)} for spec in specs]
        return IndentedJSONResponse({"jobs": answers})

    async def show_job(self, request: Request) -> Response:
        job_id = _path_parameter(request, "id")
        entry = self._job_entry_or_404(job_id)
        now = self.agent.core.wall_ms()
        runs = sorted((r for r in self.agent.scheduler.records() if r.job == job_id), key=_newest_first)
        summary = job_document(self.agent, entry, now)
        document = {
            "id": job_id,
            "definition": entry.spec.to_wire(),
            "target": summary["target"],
            "owner": summary["owner"],
            "paused": entry.spec.paused,
            "since": summary["since"],
            "next_tick": summary["next_tick"],
            "runs": [run_document(record) for record in runs[:JOB_RUNS]],
        }
        return IndentedJSONResponse(document)

    async def remove_job(self, request: Request) -> Response:
        job_id = _path_parameter(request, "id")
        self._job_entry_or_404(job_id)
        removed = await self.agent.remove_job(job_id)
        return IndentedJSONResponse({"id": job_id, "removed": removed})

    async def pause_job(self, request: Request) -> Response:
        return await self._set_paused(_path_parameter(request, "id"), True)

    async def resume_job(self, request: Request) -> Response:
        return await self._set_paused(_path_parameter(request, "id"), False)

    async def _set_paused(self, job_id: str, paused: bool) -> Response:
        try:
            spec = await self.agent.pause_job(job_id, paused)
        except KeyError:
            raise HTTPException(404, f"no such job: {job_id}") from None
        return IndentedJSONResponse({"id": job_id, "paused": spec.paused})

    # -- runs -------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        document = await _json_object_body(request)
        if "job" in document:
            spec = self._existing_job_spec(document)
        else:
            if document.get("id") is None:
                raise HTTPException(
                    400, 'request: id: missing (a one-off job needs an id, which names its run; or give {"job": ID} to run a defined job)'
                )
            spec = parse_job(document, where="request")
            if spec.schedule is not None:
                raise HTTPException(
                    400, f"request: job {spec.id!r}: schedule: a submitted job runs once; define scheduled jobs with POST /jobs"
                )
        run_id = await self.agent.submit(spec)
        return IndentedJSONResponse({"run": run_id, "job": spec.id})

    def _existing_job_spec(self, document: dict[str, Any]) -> JobSpec:
        extra = set(document) - {"job", "kwargs"}
        if extra:
            raise HTTPException(400, f'request: with "job" a submit takes only "kwargs" (found {", ".join(sorted(extra))})')
        job_id = document["job"]
        if not isinstance(job_id, str):
            raise HTTPException(400, 'request: "job" must be a job id (a string)')
        spec = self._job_entry_or_404(job_id).spec
        kwargs = document.get("kwargs")
        if kwargs is None:
            return spec
        if not isinstance(kwargs, dict):
            raise HTTPException(400, 'request: "kwargs" must be an object')
        if not isinstance(spec.target, CallTarget):
            raise HTTPException(400, f"request: job {job_id!r}: kwargs: only a call target takes kwargs")
        target = attrs.evolve(spec.target, kwargs={**spec.target.kwargs, **kwargs})
        return attrs.evolve(spec, target=target)

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        job = query.get("job") or None
        states = _run_states(query.get("state", ""))
        limit = _positive_int(query.get("limit"), "limit", default=DEFAULT_RUNS_LIMIT)
        records = [
            record
            for record in self.agent.scheduler.records()
            if (job is None or record.job == job) and (states is None or record.state in states)
        ]
        records.sort(key=_newest_first)
        return IndentedJSONResponse({"runs": [run_document(record) for record in records[:limit]], "total": len(records)})

    async def show_run(self, request: Request) -> Response:
        run_id = _path_parameter(request, "run")
        wait = request.query_params.get("wait")
        if wait is None:
            record = self.agent.scheduler.record(run_id)
        else:
            seconds = _seconds_at_most(wait, "wait", MAX_WAIT_SECONDS)
            record = await self.agent.wait_for_run(run_id, seconds)
        if record is None:
            raise HTTPException(404, f"no such run: {run_id}")
        return IndentedJSONResponse(run_document(record))

    async def send(self, request: Request) -> Response:
        run_id = _path_parameter(request, "run")
        document = await _json_object_body(request)
        if "data" not in document:
            raise HTTPException(400, 'request: the body is {"data": ...}, the update to send')
        self._check_run_unfinished(run_id)
        try:
            await self.agent.send(run_id, document["data"])
        except KeyError:
            raise HTTPException(404, f"no such run: {run_id}") from None
        except ValueError as error:
            self._check_run_unfinished(run_id)  # it finished meanwhile: 409; else the data was refused
            raise HTTPException(400, f"cannot send to {run_id}: {error}") from None
        return IndentedJSONResponse({"sent": True, "run": run_id})

    def _check_run_unfinished(self, run_id: str) -> None:
        """404 for an unknown run, 409 for a finished one."""
        record = self.agent.scheduler.record(run_id)
        if record is None:
            raise HTTPException(404, f"no such run: {run_id}")
        if record.state.finished:
            raise HTTPException(409, f"run {run_id} has finished ({record.state.value}): nothing reads updates any more")


# -- from a request and back: the glue around Starlette ----------------------------------


def _routing_path(raw_path: bytes) -> str | None:
    """The path Starlette routes on: each segment percent-decoded on its own,
    with a ``/`` or ``%`` inside one escaped again (so ``/jobs/a%2Fpause`` is
    job ``a/pause``, not a longer path; ``_path_parameter`` decodes it), and
    no trailing slash (``/jobs/`` is ``/jobs``). None if a segment is not
    UTF-8 once decoded."""
    path = raw_path.split(b"?", 1)[0]  # some servers leave the query in
    if path.endswith(b"/"):
        path = path[:-1]
    try:
        segments = [urllib.parse.unquote_to_bytes(part).decode("utf-8") for part in path.split(b"/")[1:]]
    except UnicodeDecodeError:
        return None
    return "".join("/" + segment.replace("%", "%25").replace("/", "%2F") for segment in segments)


def _path_parameter(request: Request, name: str) -> str:
    """A ``{name}`` segment of the route, as the client meant it."""
    return urllib.parse.unquote(request.path_params[name])


def _receive_at_most(receive: Receive, limit: int) -> Receive:
    """``receive``, raising a 413 once the body has gone over ``limit`` bytes."""
    size = 0

    async def receive_within_limit() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise HTTPException(413, f"the body is over {limit} bytes")
        return message

    return receive_within_limit


def _endpoint_for(handler: Handler) -> Handler:
    """``handler`` as a route's endpoint: the body read first, a bug a 500."""

    async def endpoint(request: Request) -> Response:
        try:
            # Read whether the handler wants it or not: a body over the limit
            # is a 413 on every route.
            await request.body()
        except ClientDisconnect:
            return _error_response(400, "the client went away before the body's end")
        try:
            return await handler(request)
        except (HTTPException, JobError):
            raise  # answered by the application's exception handlers
        except Exception:  # a bug in a handler must not take the node down
            # Answered here rather than by a Starlette handler for Exception,
            # which would raise it on to hypercorn to log a second time.
            log.exception("control API handler failed for %s %s", request.method, request.scope[ASKED_PATH])
            return _error_response(500, "internal error; see the agent's log")

    return endpoint


async def _no_such_resource(scope: Scope, receive: Receive, send: Send) -> None:
    raise HTTPException(404, f"no such resource: {scope[ASKED_PATH]}")


async def _answer_http_exception(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error_response(error.status_code, error.detail, error.headers)


async def _answer_job_error(request: Request, error: Exception) -> Response:
    return _error_response(400, str(error))


async def _json_object_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object; a 400 unless it is one."""
    if not (await request.body()).strip():
        raise HTTPException(400, "the request needs a JSON body")
    try:
        document = await request.json()
    except ValueError as error:
        raise HTTPException(400, f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise HTTPException(400, f"the body must be a JSON object, not {type(document).__name__}")
    return document


def _run_states(text: str) -> frozenset[RunState] | None:
    """The states of ``?state=S[,S...]``; None, for any state, when empty."""
    if not text:
        return None
    states = set()
    for name in text.split(","):
        try:
            states.add(RunState(name.strip()))
        except ValueError:
            known = ", ".join(state.value for state in RunState)
            raise HTTPException(400, f"state: unknown run state {name!r} (known: {known})") from None
    return frozenset(states)


def _positive_int(text: str | None, name: str, *, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HTTPException(400, f"{name}: expected a whole number, got {text!r}") from None
    if value < 1:
        raise HTTPException(400, f"{name}: must be at least 1, got {value}")
    return value


def _seconds_at_most(text: str, name: str, maximum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(400, f"{name}: expected seconds, got {text!r}") from None
    if not 0 <= value <= maximum:  # also refuses nan
        raise HTTPException(400, f"{name}: must be between 0 and {maximum:g} seconds, got {text}")
    return value


def _newest_first(record: RunRecord) -> tuple[int, str]:
    # A key for sorted(): the newest (by creation, else tick) first.
    return (-(record.created or record.tick or 0), record.id)


def _json_compatible(value: Any) -> Any:
    """Data from the maps as JSON can take it (msgpack allows bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(_json_compatible(key)): _json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_compatible(item) for item in value]
    return value


# -- documents ----------------------------------------------------------------------------

RUN_TIMES = ("tick", "created", "not_before", "started", "finished")


def run_document(record: RunRecord) -> dict[str, Any]:
    """A run record as the API shows it: its fields (times in epoch ms), and
    the same times in ISO 8601 under ``iso``."""
    document = record.to_wire()
    document["iso"] = {name: format_time(document[name]) for name in RUN_TIMES if document.get(name) is not None}
    return document


def target_document(target: Any) -> dict[str, str]:
    """What a job runs: its kind (``call``, ``command`` or ``http``) and a
    one-line summary."""
    if isinstance(target, CallTarget):
        arguments = ", ".join(f"{name}={value!r}" for name, value in target.kwargs.items())
        return {"kind": "call", "summary": _shortened(f"{target.function}({arguments})")}
    if isinstance(target, CommandTarget):
        command = target.argv[0] if target.shell and target.argv else shlex.join(target.argv)
        return {"kind": "command", "summary": _shortened(command)}
    if isinstance(target, HttpTarget):
        return {"kind": "http", "summary": _shortened(f"{target.method} {target.url}")}
    return {"kind": type(target).__name__.lower(), "summary": _shortened(repr(target))}


def _shortened(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_time_or_none(ms: int | None) -> str | None:
    return None if ms is None else format_time(ms)


def job_document(agent: Agent, entry: JobEntry, now_ms: int) -> dict[str, Any]:
    spec = entry.spec
    schedule = spec.schedule
    return {
        "id": spec.id,
        "schedule": None if schedule is None else schedule.text,
        "timezone": None if schedule is None else schedule.timezone,
        "mode": spec.mode,
        "target": target_document(spec.target),
        "paused": spec.paused,
        "tags": list(spec.tags),
        "owner": agent.scheduler.runs_ticks_of(spec),
        "next_tick": _format_time_or_none(entry.next_tick(now_ms)),
        "since": format_time(entry.since),
    }


def unowned_jobs(agent: Agent) -> int:
    """Cron jobs in mode one, not paused, that no node owns by this view."""
    scheduler = agent.scheduler
    return sum(
        1
        for job_id, entry in scheduler.jobs().items()
        if entry.spec.schedule is not None
        and entry.spec.mode == "one"
        and not entry.spec.paused
        and scheduler.job_owner(job_id) is None
    )


def scheduler_document(agent: Agent) -> dict[str, Any]:
    scheduler = agent.scheduler
    return {
        "role": scheduler.role.value,
        "eligible": len(scheduler.eligible()),
        "jobs": len(scheduler.jobs()),
        "running": sorted(scheduler.running()),
        "late": {job: format_time(tick) for job, tick in sorted(scheduler.late_jobs().items())},
        "unowned": unowned_jobs(agent),
        "stats": attrs.asdict(scheduler.stats),
    }


def members_document(agent: Agent) -> dict[str, Any]:
    members = sorted(agent.membership.members(), key=lambda member: member.name)
    return {
        "node": agent.name,
        "members": [
            {
                "name": member.name,
                "addr": format_address(member.addr),
                "status": member.status.name.lower(),
                "incarnation": member.incarnation,
                "meta": member.meta.decode("utf-8", "backslashreplace"),
            }
            for member in members
        ],
    }


def status_document(agent: Agent) -> dict[str, Any]:
    core = agent.core
    return {
        "name": agent.name,
        "addr": format_address(agent.advertise),
        "bind": format_address(agent.settings.bind),
        "incarnation": core.incarnation,
        "state": "leaving" if core.leaving else "alive",
        "ready": agent.ready,
        "version": peer_version(),
        "profile": agent.settings.profile,
        "cluster_key": agent.keyed,
        "uptime_seconds": round(time.time() - agent.started_at, 3),
        "seeds": [format_address(addr) for addr in agent.seed_addresses],
        "members": agent.member_counts(),
        "checksum": core.checksum,
        "health_score": agent.membership.awareness,
        **agent.stats(),
        "scheduler": scheduler_document(agent),
        "footprint": agent.footprint(),
    }


# What each counter means, for the metrics' HELP lines.
_MEMBERSHIP_HELP = {
    "probes": "Members probed",
    "probes_failed": "Probes that got no ack in their round",
    "ping_requests": "Indirect probes this node asked others to make",
    "relayed_pings": "Indirect probes this node made for others",
    "suspicions": "Members this node suspected",
    "declared_dead": "Suspicions of this node's that timed out into a failure",
    "refutations": "Suspicions of this node that it refuted",
    "push_pulls": "Full state exchanges started on a differing digest",
    "digests_in_sync": "View digests that matched: nothing to exchange",
    "reconnects": "Reconnect attempts to seeds, dead or left members",
    "rejoins": "State sent to members that went lately, in case they are back",
    "corrections": "Newer claims re-gossiped over older ones heard",
    "misdirected_pings": "Pings naming another node (a stale address)",
    "name_conflicts": "Claims by another process to this node's name",
    "reaped": "Dead or left members forgotten after their timeout",
}
_TRANSPORT_HELP = {
    "datagrams_in": "Datagrams received",
    "datagrams_out": "Datagrams sent",
    "streams_in": "Stream frames received",
    "streams_out": "Stream frames sent",
    "bytes_in": "Bytes received",
    "bytes_out": "Bytes sent",
    "send_errors": "Datagrams the kernel refused and stream frames that failed",
    "streams_refused": "Inbound streams refused: over the limit, or a bad frame length",
    "streams_dropped": "Outbound stream frames dropped: too many in flight",
}
_REPLICATION_HELP = {
    "writes": "Writes made on this node",
    "deltas_gossiped": "Local deltas queued for gossip",
    "deltas_too_big": "Local deltas too big to gossip, left to digest sync",
    "deltas_relayed": "Received deltas passed on",
    "backlog_pushes": "Batches of unsent deltas pushed to a few members over the reliable channel",
    "direct_pushes": "Entries handed to chosen members directly (a run to its assignee, a lease to its new holder)",
    "deltas_received": "Deltas received (gossip and sync answers)",
    "keys_changed": "Keys changed by merging what was received",
    "syncs_started": "Digest syncs started",
    "syncs_in_sync": "Digest probes whose roots matched",
    "probes_sent": "Digest probes sent while descending",
    "entries_sent": "Entries sent by digest sync",
    "entries_received": "Entries received by digest sync",
    "registers_refused": "Registers refused for a timestamp too far ahead",
    "malformed": "Replication messages that made no sense here",
    "expired": "Entries dropped by expiry",
}
_SCHEDULER_HELP = {
    "ticks_run": "Cron ticks this node started",
    "ticks_late": "Cron ticks started later than their grace",
    "ticks_missed": "Cron ticks recorded missed (misfire policy)",
    "ticks_skipped": "Cron ticks recorded skipped (overlap policy)",
    "runs_started": "Runs (attempts) this node started",
    "runs_succeeded": "Runs this node finished successfully",
    "runs_failed": "Runs this node finished failed, after their last attempt",
    "retries": "Failed attempts queued again for a retry",
    "failovers": "Runs re-run after their owner failed",
    "claims_lost": "Runs cancelled here because another claim won",
    "lost_refuted": "Runs of ours others recorded lost, taking us for failed, that ran on",
    "thaws": "Times this node found it had been frozen (or its clock jumped) and read before claiming",
    "handed_back": "Runs handed back to their next owner when leaving",
    "lost": "Runs recorded lost",
    "bad_records": "Job definitions or run records from peers that did not parse",
}
assert set(_MEMBERSHIP_HELP) == {field.name for field in attrs.fields(MembershipStats)}
assert set(_REPLICATION_HELP) == {field.name for field in attrs.fields(ReplicationStats)}
assert set(_TRANSPORT_HELP) == {field.name for field in attrs.fields(TransportStats)}


class AgentCollector(Collector):
    """Reads the agent's counters when scraped: nothing to keep in sync."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        members = GaugeMetricFamily("peer_members", "Members in this node's view, by status", labels=["status"])
        for status, count in agent.member_counts().items():
            members.add_metric([status], count)
        yield members
        yield GaugeMetricFamily(
            "peer_ready", "1 when part of a cluster, not leaving, and the scheduler ready (caught up)", value=int(agent.ready)
        )
        yield GaugeMetricFamily("peer_leaving", "1 while leaving gracefully", value=int(agent.leaving))
        yield GaugeMetricFamily("peer_cluster_key", "1 when frames are authenticated with a key", value=int(agent.keyed))
        yield GaugeMetricFamily(
            "peer_health_score", "Lifeguard local health: 0 is healthy, higher probes slower", value=agent.membership.awareness
        )
        stats = agent.stats()
        for name, value in stats["membership"].items():
            yield CounterMetricFamily(f"peer_membership_{name}", _MEMBERSHIP_HELP[name], value=value)
        for name, value in stats["replication"].items():
            yield CounterMetricFamily(f"peer_replication_{name}", _REPLICATION_HELP[name], value=value)
        for name, value in stats["transport"].items():
            yield CounterMetricFamily(f"peer_transport_{name}", _TRANSPORT_HELP[name], value=value)
        drops = CounterMetricFamily(
            "peer_frames_dropped", "Frames dropped unread (bad_mac: a wrong or missing key)", labels=["reason"]
        )
        for reason, count in stats["drops"].items():
            drops.add_metric([reason], count)
        yield drops
        events = CounterMetricFamily("peer_member_events", "Membership changes seen, by kind", labels=["event"])
        for kind, count in stats["events"].items():
            events.add_metric([kind], count)
        yield events
        yield from scheduler_metrics(agent)
        footprint = GaugeMetricFamily(
            "peer_footprint", "Entries held in each of this node's tables, by part: none grows but with live data", labels=["part", "table"]
        )
        for part, tables in agent.footprint().items():
            for table, size in tables.items():
                footprint.add_metric([part, table], size)
        yield footprint


def scheduler_metrics(agent: Agent) -> Iterator[Metric]:
    scheduler = agent.scheduler
    for name, value in attrs.asdict(scheduler.stats).items():
        # A counter added to the scheduler shows up before it has its help line.
        text = _SCHEDULER_HELP.get(name, name.replace("_", " ").capitalize())
        yield CounterMetricFamily(f"peer_scheduler_{name}", text, value=value)
    yield GaugeMetricFamily("peer_scheduler_jobs", "Jobs defined", value=len(scheduler.jobs()))
    yield GaugeMetricFamily("peer_scheduler_running_runs", "Runs this node is running", value=len(scheduler.running()))
    yield GaugeMetricFamily(
        "peer_scheduler_late_jobs", "Jobs whose latest tick is overdue beyond its grace with no record", value=len(scheduler.late_jobs())
    )
    yield GaugeMetricFamily(
        "peer_scheduler_unowned_jobs", "Cron jobs in mode one, not paused, that no node owns", value=unowned_jobs(agent)
    )
    yield GaugeMetricFamily("peer_scheduler_eligible_nodes", "Nodes that may own work, by this view", value=len(scheduler.eligible()))
    role = GaugeMetricFamily("peer_scheduler_role", "1 for this node's scheduler role: starting, ready or draining", labels=["role"])
    for each in Role:
        role.add_metric([each.value], int(scheduler.role is each))
    yield role
