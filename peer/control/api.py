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
finished run; a submit over the cluster's pending backlog is a 429 with
``Retry-After``, its answer also holding the backlog and its bound) or a ``JobError`` (a 400 naming the job and field); routing
answers 404 for an unknown path and 405, with ``Allow``, for a wrong method;
the body cap, 413; a bug in a handler is logged and answered 500.

Why Starlette: routing, query and body parsing and error answers through
exception handlers are what it does, so this module keeps only what is the
API's own. It runs on anyio, so on trio under hypercorn. It needs no
middleware: the one step before routing is ``ControlApi.__call__``.

Who may use it: the API can make the node leave and run code. Before any
route, ``ControlApi.refusal`` turns away a foreign ``Host`` (DNS rebinding), a
browser's cross-site request, a body that is not JSON or is over the limit,
and, when the node has a token, a request without it (only the probes are
open); every refusal is counted by reason (``peer.control.metrics.ApiStats``).
The socket, TLS and the accept loop are ``peer.control.server``'s.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import shlex
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from peer.control.metrics import AgentCollector, ApiCollector, ApiStats, api_document, unowned_jobs
from peer.jobs.definition import JobError, JobSpec, parse_job
from peer.jobs.runs import RunRecord, RunState, format_time
from peer.jobs.scheduler import BacklogFull, JobEntry
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget, TargetPolicy
from peer.runtime.addresses import format_address

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


# The deepest JSON body accepted: job definitions and updates are shallow;
# deeper ones would cost recursion in every layer that walks them.
MAX_JSON_DEPTH = 64
# Paths served without the token: probes have none.
PUBLIC_PATHS = frozenset({"/health", "/health/ready"})


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


# Seconds a refused submit is told to wait: the backlog is judged afresh at each submit.
SUBMIT_RETRY_AFTER = 1


def _backlog_full_response(error: BacklogFull) -> Response:
    """A submit over the cluster's pending backlog: 429, with the backlog and its bound."""
    document = {"error": str(error), "backlog": error.backlog, "bound": error.bound}
    return IndentedJSONResponse(document, 429, {"Retry-After": str(SUBMIT_RETRY_AFTER)})


class ControlApi:
    """The ASGI application: the API's handlers, routed by Starlette."""

    def __init__(self, agent: Agent, *, token: str | None = None, stats: ApiStats | None = None) -> None:
        self.agent = agent
        self.token = token
        self.stats = stats or ApiStats()
        settings = agent.settings
        self.public_paths = PUBLIC_PATHS | ({"/metrics"} if settings.metrics_public else set())
        self.hosts = frozenset(_host_name(host) for host in settings.api_hosts)
        self.origins = frozenset(_origin(origin) for origin in settings.api_origins)
        self.max_waits = settings.api_max_waits
        self.policy: TargetPolicy = settings.target_policy()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self.registry.register(ApiCollector(self.stats))
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
        self.app.state.api_stats = self.stats  # for the handlers' refusals
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
        refusal = self.refusal(scope)
        if refusal is not None:
            reason, response = refusal
            self.stats.refuse(reason)
            await response(scope, receive, send)
            return
        await self.app(scope, _receive_at_most(receive, MAX_BODY_BYTES, self.stats), send)

    def refusal(self, scope: Scope) -> tuple[str, Response] | None:
        """Why this request is refused before routing, if it is, and the
        answer: a foreign Host (DNS rebinding) or a browser's cross-site
        request (403), no or a wrong token (401), a body declared over the
        limit (413, unread) or a body that is not declared JSON (415)."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is not None and not self._host_allowed(host):
            return "forbidden_host", _error_response(
                403, f"Host {host!r} is not served here: use an IP address or localhost, or list the name in api_hosts"
            )
        origin = headers.get("origin")
        cross_site = headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site")
        if (origin is not None or cross_site) and (origin is None or _origin(origin) not in self.origins):
            described = f"Origin {origin!r}" if origin is not None else "a cross-site request (Sec-Fetch-Site)"
            return "forbidden_origin", _error_response(
                403, f"{described} is refused: browsers may call this API only from an origin listed in api_origins"
            )
        if self.token is not None and scope["path"] not in self.public_paths:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return "unauthenticated", _error_response(
                    401,
                    "this API needs a token: send Authorization: Bearer TOKEN (peer commands: --api-token-file FILE, "
                    "PEER_API_TOKEN or api_token)",
                    {"WWW-Authenticate": 'Bearer realm="peer"'},
                )
            if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return "unauthenticated", _error_response(
                    401, "the token is wrong", {"WWW-Authenticate": 'Bearer realm="peer", error="invalid_token"'}
                )
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > MAX_BODY_BYTES:
            return "too_large", _error_response(
                413, f"the body is over {MAX_BODY_BYTES} bytes (Content-Length {int(length)})", {"Connection": "close"}
            )
        content_type = headers.get("content-type")
        has_body = (length is not None and length.strip() not in ("", "0")) or "transfer-encoding" in headers
        if content_type is not None or has_body:
            media_type = (content_type or "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                got = f"got {content_type!r}" if content_type else "got none"
                return "content_type", _error_response(
                    415, f"request bodies are JSON: send them with Content-Type: application/json ({got})"
                )
        return None

    def _host_allowed(self, host: str) -> bool:
        # IP literals are always served: probes and scrapers reach a pod by
        # its IP, and a rebinding attack needs a name.
        name = _host_name(host)
        if name == "localhost" or name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

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
        return IndentedJSONResponse({**status_document(self.agent), "api": api_document(self.stats)})

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
            spec = self._allowed(parse_job(document, where="request"))
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
            specs.append(self._allowed(spec))
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
        return IndentedJSONResponse({"id": job_id, "paused": spec.paused, "definition": spec.to_wire()})

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
        try:
            run_id = await self.agent.submit(self._allowed(spec))
        except BacklogFull as error:
            return _backlog_full_response(error)
        return IndentedJSONResponse({"run": run_id, "job": spec.id})

    def _allowed(self, spec: JobSpec) -> JobSpec:
        """``spec``, unless its target is outside this node's allow-lists: 403."""
        refusal = self.policy.refusal(spec.target)
        if refusal is not None:
            self.stats.refuse("target_not_allowed")
            raise HTTPException(403, f"job {spec.id!r}: {refusal}")
        return spec

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
            raise JobError("request", "only a call target takes kwargs", job=job_id, field="kwargs")
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
        seconds = 0.0 if wait is None else _seconds_at_most(wait, "wait", MAX_WAIT_SECONDS)
        # With If-None-Match (the ETag of what the client has), the wait is for
        # any change, not for the finish, and no change is a 304 (a watch).
        seen = request.headers.get("if-none-match")
        record = self.agent.scheduler.record(run_id)
        if seconds > 0:
            if seen is None:
                record, present = await self._wait(request, lambda: self.agent.wait_for_run(run_id, seconds))
            else:
                record, present = await self._wait(request, lambda: self._run_change(run_id, seen, seconds))
            if not present:
                return Response(status_code=499)  # nobody reads it: the client went away
        tag = run_tag(record)
        if seen is not None and seen == tag:
            return Response(status_code=304, headers={"ETag": tag})
        if record is None:
            raise HTTPException(404, f"no such run: {run_id}", {"ETag": tag})
        return IndentedJSONResponse(run_document(record), headers={"ETag": tag})

    async def _wait(self, request: Request, work: Callable[[], Awaitable[RunRecord | None]]) -> tuple[RunRecord | None, bool]:
        """``work()``'s record, counted in ``waits`` and bounded by ``api_max_waits``;
        ``(None, False)`` if the client went away meanwhile."""
        if self.stats.waits >= self.max_waits:
            self.stats.refuse("too_many_waits")
            raise HTTPException(
                429,
                f"{self.stats.waits} requests are waiting on runs already, the most this node takes (api_max_waits): "
                "retry shortly, or ask without ?wait",
                # Closed at once: a refused client must not hold a connection slot that a probe needs.
                {"Retry-After": "1", "Connection": "close"},
            )
        self.stats.waits += 1
        try:
            return await _unless_disconnected(request, work())
        finally:
            self.stats.waits -= 1

    async def _run_change(self, run_id: str, seen: str, seconds: float) -> RunRecord | None:
        """The run's record once its ETag is no longer ``seen``, or as it is after ``seconds``."""
        with trio.move_on_after(seconds):
            while run_tag(self.agent.scheduler.record(run_id)) == seen:
                await self.agent.run_changed(run_id)
        return self.agent.scheduler.record(run_id)

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


T = TypeVar("T")


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[T | None, bool]:
    """``(result, True)`` once ``work`` is done, or ``(None, False)`` as soon
    as the client disconnects: a long-poll ends with its client. The body
    has been read, so the next message from the server is the disconnect."""
    outcome: list[T] = []

    async def do_work(cancel: trio.CancelScope) -> None:
        outcome.append(await work)
        cancel.cancel()

    async def watch(cancel: trio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(do_work, nursery.cancel_scope)
        nursery.start_soon(watch, nursery.cancel_scope)
    return (outcome[0], True) if outcome else (None, False)


def _host_name(host: str) -> str:
    """A Host header's name: no port, no brackets, lower case, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def _origin(origin: str) -> str:
    """An Origin as compared: lower case, no trailing slash."""
    return origin.strip().lower().rstrip("/")


def _json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects, walked without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _path_parameter(request: Request, name: str) -> str:
    """A ``{name}`` segment of the route, as the client meant it."""
    return urllib.parse.unquote(request.path_params[name])


def _receive_at_most(receive: Receive, limit: int, stats: ApiStats) -> Receive:
    """``receive``, raising a 413 as soon as the body has gone over ``limit``
    bytes (a chunked one: a declared length over it is refused unread)."""
    size = 0

    async def receive_within_limit() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                stats.refuse("too_large")
                raise HTTPException(413, f"the body is over {limit} bytes", {"Connection": "close"})
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
    # Its parts too, so that a client can raise the same JobError (peer.Client).
    assert isinstance(error, JobError)
    document = {"error": str(error), "job": error.job, "field": error.field, "reason": error.reason}
    return IndentedJSONResponse(document, 400)


async def _json_object_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object; a 400 unless it is one."""
    if not (await request.body()).strip():
        raise HTTPException(400, "the request needs a JSON body")
    try:
        document = await request.json()
    except ValueError as error:
        raise HTTPException(400, f"the body is not JSON: {error}") from None
    except RecursionError:
        too_deep = True  # the parser's own limit: deeper than any depth we take
    else:
        too_deep = _json_depth(document) > MAX_JSON_DEPTH
    if too_deep:
        request.app.state.api_stats.refuse("too_deep")
        raise HTTPException(400, f"the body nests lists and objects deeper than {MAX_JSON_DEPTH} levels")
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


def run_tag(record: RunRecord | None) -> str:
    """A run record's ETag (``GET /runs/{run}``): equal for equal records; ``"none"`` for no record."""
    if record is None:
        return '"none"'
    text = json.dumps(_json_compatible(record.to_wire()), sort_keys=True, default=repr)
    return '"' + hashlib.blake2b(text.encode(), digest_size=12).hexdigest() + '"'


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
        "definition": spec.to_wire(),
        "owner": agent.scheduler.runs_ticks_of(spec),
        "next_tick": _format_time_or_none(entry.next_tick(now_ms)),
        "since": format_time(entry.since),
    }


def scheduler_document(agent: Agent) -> dict[str, Any]:
    scheduler = agent.scheduler
    return {
        "role": scheduler.role.value,
        "eligible": len(scheduler.eligible()),
        "jobs": len(scheduler.jobs()),
        "running": sorted(scheduler.running()),
        "max_running_runs": scheduler.config.max_running_runs,
        "queued": scheduler.queued(),
        "backlog": scheduler.backlog(),
        "max_pending_runs": scheduler.config.max_pending_runs,
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
