"""The control API: local HTTP/JSON, served by hypercorn's trio worker.

Routes (JSON in and out unless said otherwise; documented in README.md):

    GET    /health               200 {"status": "ok", "ready": bool}: the process serves (liveness)
    GET    /health/ready         200 when part of a cluster, not leaving and the scheduler ready, else 503 (readiness)
    GET    /metrics              Prometheus text format
    GET    /members              this node's view: every member with address, status, incarnation
    GET    /status               the node itself, member counts, counters, the scheduler's state
    POST   /leave                leave gracefully; answers once the leave has been gossiped

    GET    /jobs                 every job defined, with its owner and next tick
    POST   /jobs                 define or redefine a job (body: one definition, or {"jobs": [...]})
    GET    /jobs/{id}            one job: its definition, owner, next tick and latest runs
    DELETE /jobs/{id}            remove a job (its runs' records stay until they expire)
    POST   /jobs/{id}/pause      stop a job's ticks; POST /jobs/{id}/resume starts them again
    POST   /submit               run once: {"job": ID, "kwargs": {...}} or a one-off definition
    GET    /runs                 run records, newest first; ?job=ID&state=S[,S...]&limit=N
    GET    /runs/{run}           one run's record; ?wait=SECONDS waits until it has finished
    POST   /runs/{run}/send      send {"data": ...} to a running (or pending) run

Errors are {"error": "..."}: 400 for a bad request (a bad job definition
says which job and field), 404 for an unknown job or run, 405 for the wrong
method, 409 for sending to a finished run. Path parameters are single
percent-encoded segments: run ids hold ``@`` and ``:``, which clients
should quote (``peer.control.client.quote``).

The API binds 127.0.0.1 by default: it can make the node leave and run
code, so expose it only where that is wanted. The socket is bound before the
node starts (``bind_api_socket``), so a port in use is a clear error at
start, not a log line later.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from membership.core import MembershipStats
from membership.state import Address
from peer.runtime.addresses import format_address, is_ipv6
from peer.jobs.definition import JobError, JobSpec, parse_job
from peer.core.replication import ReplicationStats
from peer.jobs.runs import RunRecord, RunState, format_time
from peer.jobs.scheduler import JobEntry, Role
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget
from peer.runtime.transport import BindError, TransportStats, bind_error_message

if TYPE_CHECKING:
    from peer.runtime.agent import Agent

log = logging.getLogger("peer.api")

JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"

Response = tuple[int, bytes, bytes]  # status, content type, body


def peer_version() -> str:
    try:
        return version("peer")
    except PackageNotFoundError:
        return "unknown"


def bind_api_socket(addr: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if is_ipv6(addr[0]) else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise BindError(bind_error_message("api", addr, error, "--api")) from None
    return sock


class HttpControlPlane:
    """The control API as the agent's ``ControlPlane``."""

    def bind(self, address: Address) -> socket.socket:
        return bind_api_socket(address)

    async def serve(self, agent: Agent, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None:
        await serve_api(agent, sock, task_status=task_status)


async def serve_api(agent: Agent, sock: socket.socket, *, task_status: trio.TaskStatus[None]) -> None:
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


class HttpError(Exception):
    """An answer other than 200, raised by a handler: ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The most a request body may hold: job definitions and updates are small.
MAX_BODY_BYTES = 1 << 20
# The longest ``GET /runs/{run}?wait=`` a request may ask for.
MAX_WAIT_SECONDS = 300.0
# ``GET /runs`` answers at most this many records unless ``limit`` says otherwise.
DEFAULT_RUNS_LIMIT = 100
# ``GET /jobs/{id}`` lists the job's latest runs, at most this many.
JOB_RUNS = 20


@attrs.frozen
class Request:
    method: str
    path: str
    params: dict[str, str]  # the pattern's ``{name}`` segments, percent-decoded
    query: dict[str, str]  # the last value of each query parameter
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ``HttpError(400)`` unless it is."""
        if not self.body.strip():
            raise HttpError(400, "the request needs a JSON body")
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise HttpError(400, f"the body is not JSON: {error}") from None

    def json_object(self) -> dict[str, Any]:
        document = self.json()
        if not isinstance(document, dict):
            raise HttpError(400, f"the body must be a JSON object, not {type(document).__name__}")
        return document


Handler = Callable[[Request], Awaitable[Response]]


def _segments(raw_path: bytes) -> list[str] | None:
    """A path's segments, each percent-decoded on its own (so an encoded
    ``/`` stays inside its segment); None if one is not UTF-8."""
    path = raw_path.split(b"?", 1)[0]
    if path.endswith(b"/"):
        path = path[:-1]
    try:
        return [urllib.parse.unquote_to_bytes(part).decode("utf-8") for part in path.split(b"/")[1:]]
    except UnicodeDecodeError:
        return None


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(pattern, segments):
        if part.startswith("{") and part.endswith("}"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


class ControlApi:
    """A minimal ASGI application: a table of routes, JSON answers."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self.registry.register(ProcessCollector(registry=None))
        # (method, path pattern, handler); a ``{name}`` segment matches any one segment.
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
        self.routes = [(method, tuple(pattern.split("/")[1:]), handler) for method, pattern, handler in table]

    def route(self, method: str, segments: list[str]) -> tuple[Handler | None, dict[str, str], list[str]]:
        """The handler for a request and its parameters, or (None, {}, the
        methods the path allows: empty for an unknown path)."""
        allowed: list[str] = []
        for route_method, pattern, handler in self.routes:
            params = _match(pattern, segments)
            if params is None:
                continue
            if route_method == method or (method == "HEAD" and route_method == "GET"):
                return handler, params, []
            allowed.append(route_method)
        return None, {}, allowed

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = []
        status, content_type, body = await self._answer(scope, receive, headers)
        headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def _answer(self, scope: dict[str, Any], receive: Callable[..., Any], headers: list[tuple[bytes, bytes]]) -> Response:
        path: str = scope["path"]
        raw_path = scope.get("raw_path") or urllib.parse.quote(path).encode()
        segments = _segments(raw_path)
        if segments is None:
            return _json(400, {"error": f"the path is not UTF-8 once decoded: {path}"})
        handler, params, allowed = self.route(scope["method"], segments)
        if handler is None:
            if not allowed:
                return _json(404, {"error": f"no such resource: {path}"})
            headers.append((b"allow", ", ".join(allowed).encode()))
            return _json(405, {"error": f"use {' or '.join(allowed)} for {path}"})
        body = await _read_body(receive)
        if body is None:
            return _json(413, {"error": f"the body is over {MAX_BODY_BYTES} bytes"})
        query = {
            name: values[-1]
            for name, values in urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).items()
        }
        request = Request(scope["method"], path, params, query, body)
        try:
            return await handler(request)
        except HttpError as error:
            return _json(error.status, {"error": error.message})
        except JobError as error:
            return _json(400, {"error": str(error)})
        except Exception:  # a bug in a handler must not take the node down
            log.exception("control API handler failed for %s %s", scope["method"], path)
            return _json(500, {"error": "internal error; see the agent's log"})

    # -- the node ---------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return _json(200, {"status": "ok", "ready": self.agent.ready})

    async def ready(self, request: Request) -> Response:
        ready = self.agent.ready
        return _json(200 if ready else 503, {"ready": ready, "leaving": self.agent.leaving})

    async def metrics(self, request: Request) -> Response:
        return 200, PROMETHEUS, generate_latest(self.registry)

    async def members(self, request: Request) -> Response:
        return _json(200, members_document(self.agent))

    async def status(self, request: Request) -> Response:
        return _json(200, status_document(self.agent))

    async def leave(self, request: Request) -> Response:
        await self.agent.leave()
        return _json(200, {"left": True, "name": self.agent.name})

    # -- jobs -------------------------------------------------------------------------

    def _entry(self, job_id: str) -> JobEntry:
        entry = self.agent.scheduler.jobs().get(job_id)
        if entry is None:
            raise HttpError(404, f"no such job: {job_id}")
        return entry

    async def list_jobs(self, request: Request) -> Response:
        now = self.agent.core.wall_ms()
        jobs = sorted(self.agent.scheduler.jobs().values(), key=lambda entry: entry.spec.id)
        return _json(200, {"jobs": [job_document(self.agent, entry, now) for entry in jobs]})

    async def define_jobs(self, request: Request) -> Response:
        document = request.json_object()
        if "jobs" not in document:
            spec = parse_job(document, where="request")
            return _json(200, {"id": spec.id, "changed": await self.agent.define_job(spec)})
        items = document["jobs"]
        if set(document) != {"jobs"}:
            extra = ", ".join(sorted(set(document) - {"jobs"}))
            raise HttpError(400, f'request: a body with "jobs" holds nothing else (found {extra})')
        if not isinstance(items, list) or not items:
            raise HttpError(400, 'request: "jobs" must be a non-empty list of job definitions')
        specs: list[JobSpec] = []
        for number, item in enumerate(items, start=1):
            spec = parse_job(item, where="request", index=number)
            if any(other.id == spec.id for other in specs):
                raise HttpError(400, f"request: job {spec.id!r}: id: defined twice in this request")
            specs.append(spec)
        # Every definition is valid: define them all.
        answers = [{"id": spec.id, "changed": await self.agent.define_job(spec)} for spec in specs]
        return _json(200, {"jobs": answers})

    async def show_job(self, request: Request) -> Response:
        job_id = request.params["id"]
        entry = self._entry(job_id)
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
        return _json(200, document)

    async def remove_job(self, request: Request) -> Response:
        job_id = request.params["id"]
        self._entry(job_id)
        removed = await self.agent.remove_job(job_id)
        return _json(200, {"id": job_id, "removed": removed})

    async def pause_job(self, request: Request) -> Response:
        return await self._pause(request.params["id"], True)

    async def resume_job(self, request: Request) -> Response:
        return await self._pause(request.params["id"], False)

    async def _pause(self, job_id: str, paused: bool) -> Response:
        try:
            spec = await self.agent.pause_job(job_id, paused)
        except KeyError:
            raise HttpError(404, f"no such job: {job_id}") from None
        return _json(200, {"id": job_id, "paused": spec.paused})

    # -- runs -------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        document = request.json_object()
        if "job" in document:
            spec = self._existing_job_spec(document)
        else:
            if document.get("id") is None:
                raise HttpError(
                    400, 'request: id: missing (a one-off job needs an id, which names its run; or give {"job": ID} to run a defined job)'
                )
            spec = parse_job(document, where="request")
            if spec.schedule is not None:
                raise HttpError(
                    400, f"request: job {spec.id!r}: schedule: a submitted job runs once; define scheduled jobs with POST /jobs"
                )
        run_id = await self.agent.submit(spec)
        return _json(200, {"run": run_id, "job": spec.id})

    def _existing_job_spec(self, document: dict[str, Any]) -> JobSpec:
        extra = set(document) - {"job", "kwargs"}
        if extra:
            raise HttpError(400, f'request: with "job" a submit takes only "kwargs" (found {", ".join(sorted(extra))})')
        job_id = document["job"]
        if not isinstance(job_id, str):
            raise HttpError(400, 'request: "job" must be a job id (a string)')
        spec = self._entry(job_id).spec
        kwargs = document.get("kwargs")
        if kwargs is None:
            return spec
        if not isinstance(kwargs, dict):
            raise HttpError(400, 'request: "kwargs" must be an object')
        if not isinstance(spec.target, CallTarget):
            raise HttpError(400, f"request: job {job_id!r}: kwargs: only a call target takes kwargs")
        target = attrs.evolve(spec.target, kwargs={**spec.target.kwargs, **kwargs})
        return attrs.evolve(spec, target=target)

    async def list_runs(self, request: Request) -> Response:
        job = request.query.get("job") or None
        states = _states(request.query.get("state", ""))
        limit = _bounded_int(request.query.get("limit"), "limit", default=DEFAULT_RUNS_LIMIT)
        records = [
            record
            for record in self.agent.scheduler.records()
            if (job is None or record.job == job) and (states is None or record.state in states)
        ]
        records.sort(key=_newest_first)
        return _json(200, {"runs": [run_document(record) for record in records[:limit]], "total": len(records)})

    async def show_run(self, request: Request) -> Response:
        run_id = request.params["run"]
        wait = request.query.get("wait")
        if wait is None:
            record = self.agent.scheduler.record(run_id)
        else:
            seconds = _seconds(wait, "wait", MAX_WAIT_SECONDS)
            record = await self.agent.wait_for_run(run_id, seconds)
        if record is None:
            raise HttpError(404, f"no such run: {run_id}")
        return _json(200, run_document(record))

    async def send(self, request: Request) -> Response:
        run_id = request.params["run"]
        document = request.json_object()
        if "data" not in document:
            raise HttpError(400, 'request: the body is {"data": ...}, the update to send')
        self._unfinished_run(run_id)
        try:
            await self.agent.send(run_id, document["data"])
        except KeyError:
            raise HttpError(404, f"no such run: {run_id}") from None
        except ValueError as error:
            self._unfinished_run(run_id)  # it finished meanwhile: 409; else the data was refused
            raise HttpError(400, f"cannot send to {run_id}: {error}") from None
        return _json(200, {"sent": True, "run": run_id})

    def _unfinished_run(self, run_id: str) -> None:
        record = self.agent.scheduler.record(run_id)
        if record is None:
            raise HttpError(404, f"no such run: {run_id}")
        if record.state.finished:
            raise HttpError(409, f"run {run_id} has finished ({record.state.value}): nothing reads updates any more")


async def _read_body(receive: Callable[..., Any]) -> bytes | None:
    """The request's body; None once it is over ``MAX_BODY_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _states(text: str) -> frozenset[RunState] | None:
    if not text:
        return None
    states = set()
    for name in text.split(","):
        try:
            states.add(RunState(name.strip()))
        except ValueError:
            known = ", ".join(state.value for state in RunState)
            raise HttpError(400, f"state: unknown run state {name!r} (known: {known})") from None
    return frozenset(states)


def _bounded_int(text: str | None, name: str, *, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, f"{name}: expected a whole number, got {text!r}") from None
    if value < 1:
        raise HttpError(400, f"{name}: must be at least 1, got {value}")
    return value


def _seconds(text: str, name: str, maximum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HttpError(400, f"{name}: expected seconds, got {text!r}") from None
    if not 0 <= value <= maximum:  # also refuses nan
        raise HttpError(400, f"{name}: must be between 0 and {maximum:g} seconds, got {text}")
    return value


def _newest_first(record: RunRecord) -> tuple[int, str]:
    # A key for sorted(): the newest (by creation, else tick) first.
    return (-(record.created or record.tick or 0), record.id)


def _plain(value: Any) -> Any:
    """Data from the maps as JSON can take it (msgpack allows bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(_plain(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _json(status: int, document: dict[str, Any]) -> Response:
    try:
        text = json.dumps(document, indent=1)
    except (TypeError, ValueError):
        text = json.dumps(_plain(document), indent=1, default=repr)
    return status, JSON, text.encode() + b"\n"


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
        return {"kind": "call", "summary": _short(f"{target.function}({arguments})")}
    if isinstance(target, CommandTarget):
        command = target.argv[0] if target.shell and target.argv else shlex.join(target.argv)
        return {"kind": "command", "summary": _short(command)}
    if isinstance(target, HttpTarget):
        return {"kind": "http", "summary": _short(f"{target.method} {target.url}")}
    return {"kind": type(target).__name__.lower(), "summary": _short(repr(target))}


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_or_none(ms: int | None) -> str | None:
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
        "next_tick": _time_or_none(entry.next_tick(now_ms)),
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
        yield GaugeMetricFamily("peer_ready", "1 when part of a cluster, not leaving, and the scheduler ready (caught up)", value=int(agent.ready))
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
