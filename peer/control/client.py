"""The Python client of a node's control API: ``peer.Client`` (sync) and
``peer.AsyncClient`` (asyncio and trio), and what the ``peer`` CLI talks through.

Theory of operation
-------------------
A program that does not hold a node (a Flask app beside a ``peer agent``, a
script, a service in another language's container) drives one over HTTP. The
client gives it ``peer.Node``'s methods, under the same names and signatures
where they apply, returning the same types (``RunRecord``, ``JobInfo``,
``JobSpec``, ``MemberInfo``) and raising the same exceptions (``RunFailed``,
``UnknownRun``, ``UnknownJob``, ``RunFinishedError``, ``BacklogFull``,
``JobError``, ``TimeoutError``), so code moves between the two unchanged.
What only HTTP can go wrong with (no agent, TLS, a wrong token, an answer
that makes no sense) is a ``ClientError`` whose message says what to check.

Each method is written once, as a generator of HTTP exchanges (``_Request``
out, ``_Answer`` in, its value returned): building the request, reading the
answer and mapping a status to an exception are there, without I/O. Two
drivers run them: ``Client`` over an ``httpx.Client``, ``AsyncClient`` over an
``httpx.AsyncClient`` (anyio, so asyncio and trio alike). Each client object
holds one connection pool for its life: ``close()`` or its ``with`` block ends it.

Waiting is the server's: ``result`` and ``wait`` long-poll ``GET
/runs/{run}?wait=`` in chunks of ``WAIT_CHUNK_SECONDS`` (as ``peer result
--wait``), and ``watch`` sends the record's ``ETag`` back as
``If-None-Match`` with ``?wait=``, which the API answers at the next change
(or 304 when the time is up). Nothing polls on a timer.

Where and how to reach the agent is an ``Endpoint``: its address, HTTPS or
not (and the CA file that verifies its certificate), and the bearer token.
``Client(api)`` resolves one from its arguments and ``PEER_API``,
``PEER_API_TOKEN``, ``PEER_API_TOKEN_FILE``, ``PEER_API_CA``, the variables the
CLI reads.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import attrs
import httpx

from membership.state import Address, Status
from peer.control.errors import RunFailed, RunFinishedError, UnknownJob, UnknownRun
from peer.jobs.definition import TARGET_KEYS, JobError, JobSpec, default_job_id, parse_job, program_name, with_tags_as_list
from peer.jobs.local import BacklogFull, Role
from peer.jobs.runs import RunRecord, RunState
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget, Target
from peer.runtime.addresses import AddressError, format_address, split_host_port
from peer.runtime.settings import CONVERTERS, DEFAULT_API_PORT, ConfigError, Settings, load

if TYPE_CHECKING:
    from peer.control.node import JobInfo, MemberInfo

__all__ = ["AsyncClient", "Client", "ClientError", "Endpoint"]

T = TypeVar("T")

# Seconds a request may take beyond what it asks the server to wait.
DEFAULT_TIMEOUT = 10.0
# A long-poll asks the agent to wait at most this long per request (the API takes up to 300).
WAIT_CHUNK_SECONDS = 60.0
# ``GET /runs`` answers this many records unless asked for more (the API's DEFAULT_RUNS_LIMIT).
RUNS_PAGE = 100
# The ETag of no record (``peer.control.api.run_tag``): a watch starts from it.
NO_RECORD_TAG = '"none"'
# Keys of a job definition a caller gives as arguments, not as **fields (as peer.Node).
_ONE_OFF_ONLY = ("schedule", "timezone", "mode", "overlap", "misfire", "grace", "paused")
_ENVIRONMENT = ("PEER_API_TOKEN", "PEER_API_TOKEN_FILE", "PEER_API_CA")


# -- where the agent is -------------------------------------------------------------------


@attrs.frozen
class Endpoint:
    """An agent's control API: ``address``; ``tls`` for HTTPS, verified
    against ``ca_file`` (else the system's CAs); ``token`` sent as
    ``Authorization: Bearer``."""

    address: Address
    tls: bool = False
    token: str | None = attrs.field(default=None, repr=False)
    ca_file: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{format_address(self.address)}"


def split_scheme(text: str) -> tuple[bool | None, str]:
    """``https://HOST:PORT`` -> ``(True, "HOST:PORT")``; ``http://`` -> False;
    no scheme -> None (as configured). A trailing ``/`` is dropped."""
    for scheme, tls in (("https://", True), ("http://", False)):
        if text.lower().startswith(scheme):
            return tls, text[len(scheme) :].rstrip("/")
    return None, text


def resolve_endpoint(
    api: str | Endpoint | None = None,
    *,
    token: str | None = None,
    token_file: str | None = None,
    ca: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoint:
    """The endpoint ``Client(...)`` talks to: ``api`` (``[https://]HOST[:PORT]``;
    a host name too) or ``PEER_API`` or ``127.0.0.1:7947``; the token from
    ``token`` or ``token_file``, else ``PEER_API_TOKEN`` or
    ``PEER_API_TOKEN_FILE``; the CA from ``ca``, else ``PEER_API_CA``.
    ``ConfigError`` for a bad value or an unreadable token file."""
    if isinstance(api, Endpoint):
        if token is not None or token_file is not None or ca is not None:
            raise TypeError("with an Endpoint, give its token and CA in it")
        return api
    environ = os.environ if environ is None else environ
    text = api if api is not None else environ.get("PEER_API") or f"127.0.0.1:{DEFAULT_API_PORT}"
    tls, address = split_scheme(text.strip())
    try:
        host, port = split_host_port(address, default_port=DEFAULT_API_PORT)
    except AddressError as error:
        raise ConfigError(f"api: {error}" if api is not None else f"PEER_API: {error}") from None
    if token is not None or token_file is not None:
        try:
            checked = CONVERTERS["api_token"](token)
        except ValueError as error:
            raise ConfigError(f"token: {error}") from None
        settings = Settings(api_token=checked, api_token_file=token_file)
    else:
        settings = load({}, environ={key: environ[key] for key in _ENVIRONMENT[:2] if key in environ})
    ca_file = ca if ca is not None else environ.get("PEER_API_CA") or None
    return Endpoint((host.strip("[]"), port), tls=bool(tls), token=settings.api_token_value(), ca_file=ca_file)


class ClientError(Exception):
    """The request failed: no agent answered, TLS or the token did not work,
    or the agent answered with an error the call does not turn into one of
    ``peer.Node``'s exceptions. ``status`` is the HTTP status when the agent
    answered (401 for a wrong token...), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def quote(segment: str) -> str:
    """One path segment, percent-encoded: run ids hold ``@`` and ``:``."""
    return urllib.parse.quote(segment, safe="")


def api_path(*segments: str, query: Mapping[str, Any] | None = None) -> str:
    """``/a/b?k=v`` from its segments (each quoted) and query (None values left out)."""
    text = "/" + "/".join(quote(segment) for segment in segments)
    given = {key: value for key, value in (query or {}).items() if value is not None}
    return f"{text}?{urllib.parse.urlencode(given)}" if given else text



# -- one exchange ----------------------------------------------------------------------------


@attrs.frozen
class _Request:
    method: str
    path: str
    body: Any = None  # sent as JSON when not None
    wait: float = 0.0  # seconds the agent may hold it: added to the timeout
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None  # None: the client's


@attrs.frozen
class _Answer:
    url: str
    status: int
    headers: Mapping[str, str]
    content: bytes
    token_sent: bool

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except ValueError as error:
            raise ClientError(f"{self.url}: the answer is not JSON: {error}", status=self.status) from None

    def document(self) -> dict[str, Any]:
        """The answer's JSON object, or the ``ClientError`` its status is."""
        if not self.ok:
            raise self.error()
        document = self.json()
        if not isinstance(document, dict):
            raise ClientError(f"{self.url}: expected a JSON object, got {type(document).__name__}", status=self.status)
        return document

    def detail(self) -> str:
        """An error answer's ``error``, else the status's reason phrase."""
        try:
            detail = self.json().get("error")
        except (ClientError, AttributeError):
            detail = None
        return detail if isinstance(detail, str) else httpx.codes.get_reason_phrase(self.status)

    def error(self) -> ClientError:
        detail = self.detail()
        if self.status == 401 and not self.token_sent:
            detail += " (no token was sent: give --api-token-file FILE, PEER_API_TOKEN or PEER_API_TOKEN_FILE)"
        return ClientError(f"{self.url}: HTTP {self.status}: {detail}", status=self.status)


# A method: the exchanges it makes, then its value.
Steps = Generator[_Request, _Answer, T]


class _Transport:
    """What both drivers share: the endpoint, its TLS context and headers,
    and turning httpx's failures into ``ClientError``."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        try:
            self.verify = _tls(endpoint.ca_file) if endpoint.tls else _no_tls()
        except (OSError, ssl.SSLError) as error:
            raise ClientError(f"cannot use {endpoint.ca_file} as the API's CA (--api-ca, PEER_API_CA): {error}") from None

    def arguments(self, request: _Request) -> dict[str, Any]:
        headers = dict(request.headers)
        content: bytes | None = None
        if request.body is not None:
            try:
                content = json.dumps(request.body).encode()
            except (TypeError, ValueError) as error:
                raise ValueError(f"{request.method} {request.path}: the data cannot be sent as JSON: {error}") from None
            headers["Content-Type"] = "application/json"
        if self.endpoint.token is not None:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        timeout = (self.timeout if request.timeout is None else request.timeout) + request.wait
        return {
            "method": request.method,
            "url": self.endpoint.url + request.path,
            "content": content,
            "headers": headers,
            "timeout": timeout,
            "follow_redirects": request.method == "GET",  # the API sends none
        }

    def answer(self, request: _Request, response: httpx.Response) -> _Answer:
        return _Answer(
            self.endpoint.url + request.path, response.status_code, response.headers, response.content, self.endpoint.token is not None
        )

    def failure(self, request: _Request, error: httpx.HTTPError) -> ClientError:
        where = format_address(self.endpoint.address)
        if isinstance(error, httpx.TimeoutException):
            timeout = (self.timeout if request.timeout is None else request.timeout) + request.wait
            return ClientError(f"the agent at {where} did not answer within {timeout:g}s")
        reason = _root_cause(error)
        if isinstance(reason, ConnectionRefusedError):
            return ClientError(
                f"no agent answers at {where} (connection refused): is `peer agent` running, and is --api (or PEER_API) its API address?"
            )
        if isinstance(reason, ssl.SSLError):
            return ClientError(
                f"TLS with the agent at {where} failed: {reason} (is its API HTTPS, and is its certificate's CA "
                "given with --api-ca or PEER_API_CA?)"
            )
        return ClientError(f"cannot reach the agent at {where}: {reason}")


@functools.cache
def _tls(ca_file: str | None) -> ssl.SSLContext:
    """A context verifying the agent's certificate: against ``ca_file``, or the system's CAs."""
    return ssl.create_default_context(cafile=ca_file)


@functools.cache
def _no_tls() -> ssl.SSLContext:
    """A context that trusts no certificate: for plain HTTP it is never
    used, and httpx's default would load a CA bundle (~20 ms) for every
    client."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _root_cause(error: BaseException) -> BaseException:
    """The error httpx wrapped (a ``ConnectionRefusedError``...)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return error


# -- the methods, once, as exchanges ------------------------------------------------------------


def _document(method: str, path: str, body: Any, timeout: float | None) -> Steps[dict[str, Any]]:
    answer = yield _Request(method, path, body, timeout=timeout)
    return answer.document()


def _raise_refused_definition(answer: _Answer, where: str) -> None:
    """A 400 the API answered for a ``JobError``: the same ``JobError``, named by the method."""
    if answer.status != 400:
        return
    try:
        document = answer.json()
    except ClientError:
        return
    if isinstance(document, dict) and isinstance(document.get("reason"), str):
        raise JobError(where, document["reason"], job=document.get("job"), field=document.get("field"))


def _submit_answer(answer: _Answer, where: str) -> str:
    if answer.status == 429:
        document = answer.json()
        raise BacklogFull(int(document["backlog"]), int(document["bound"]))
    _raise_refused_definition(answer, where)
    return str(answer.document()["run"])


def _submit(target: Callable[..., Any] | str | Target, kwargs: Mapping[str, Any], fields: dict[str, Any], where: str) -> Steps[str]:
    job_id = fields.pop("id", None)
    keys = _target_keys(target, kwargs, where, fields)
    data = with_tags_as_list({**fields, **keys, "id": job_id or default_job_id(keys.get("call") or program_name(keys))})
    parse_job(data, where=where)  # refused here, as peer.Node refuses it
    answer = yield _Request("POST", "/submit", data)
    return _submit_answer(answer, where)


def _trigger(job_id: str, kwargs: Mapping[str, Any]) -> Steps[str]:
    body: dict[str, Any] = {"job": job_id}
    if kwargs:
        body["kwargs"] = dict(kwargs)
    answer = yield _Request("POST", "/submit", body)
    if answer.status == 404:
        raise UnknownJob(job_id)
    return _submit_answer(answer, "trigger()")


def _run_path(run_id: str, *rest: str, wait: float = 0.0) -> str:
    # Below a millisecond is no wait: "?wait=1e-05" would be one all the same.
    return api_path("runs", run_id, *rest, query={"wait": f"{wait:.3f}" if wait >= 0.001 else None})


def _run(run_id: str) -> Steps[RunRecord | None]:
    answer = yield _Request("GET", _run_path(run_id))
    return None if answer.status == 404 else _record(answer.document())


def _runs(job: str | None, state: RunState | str | Iterable[RunState | str] | None, limit: int | None) -> Steps[list[RunRecord]]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a whole number >= 1, got {limit!r}")
    states = None if state is None else ",".join(sorted(s.value for s in _states(state)))
    query: dict[str, Any] = {"job": job, "state": states, "limit": limit}
    document = yield from _document("GET", api_path("runs", query=query), None, None)
    if limit is None and document["total"] > len(document["runs"]):
        # All of them, as peer.Node gives: ask again for as many as there are.
        document = yield from _document("GET", api_path("runs", query={**query, "limit": document["total"]}), None, None)
    return [_record(item) for item in document["runs"]]


def _wait(run_id: str, timeout: float | None) -> Steps[RunRecord]:
    """Long-polls until the run has finished, in chunks the API takes."""
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout: expected seconds >= 0 or None, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        chunk = WAIT_CHUNK_SECONDS if remaining is None else min(remaining, WAIT_CHUNK_SECONDS)
        answer = yield _Request("GET", _run_path(run_id, wait=chunk), wait=chunk)
        record = None if answer.status == 404 else _record(answer.document())
        if record is not None and record.state.finished:
            return record
        if remaining is not None and remaining <= chunk:
            break
    assert timeout is not None
    if record is None:
        raise UnknownRun(run_id, f" (nothing heard of it within {timeout:g} s)")
    raise TimeoutError(f"run {run_id} has not finished within {timeout:g} s (it is {record.state.value})")


def _result(run_id: str, timeout: float | None) -> Steps[Any]:
    record = yield from _wait(run_id, timeout)
    if record.state is RunState.SUCCEEDED:
        return record.result
    raise RunFailed(record)


def _next_change(run_id: str, tag: str) -> Steps[tuple[RunRecord | None, str]]:
    """The run's record once it differs from the one tagged ``tag`` (None
    if there is none, or no change within a chunk), and its tag."""
    answer = yield _Request("GET", _run_path(run_id, wait=WAIT_CHUNK_SECONDS), wait=WAIT_CHUNK_SECONDS, headers=(("If-None-Match", tag),))
    if answer.status == 304:
        return None, tag
    new_tag = answer.headers.get("etag", NO_RECORD_TAG)
    if answer.status == 404:
        return None, new_tag
    return _record(answer.document()), new_tag


def _send(run_id: str, data: Any) -> Steps[None]:
    answer = yield _Request("POST", _run_path(run_id, "send"), {"data": data})
    if answer.status == 404:
        raise UnknownRun(run_id)
    if answer.status == 409:
        record = yield from _run(run_id)
        if record is None:
            raise UnknownRun(run_id)
        raise RunFinishedError(record)
    if answer.status == 400:
        raise ValueError(answer.detail())  # the data was refused, as peer.Node refuses it
    answer.document()


def _schedule(
    job_id: str, schedule: str | None, target: Callable[..., Any] | str | Target, kwargs: Mapping[str, Any] | None, fields: dict[str, Any]
) -> Steps[bool]:
    data = {**fields, **_target_keys(target, kwargs, "schedule", fields), "id": job_id}
    if schedule is not None:
        data["schedule"] = schedule
    data = with_tags_as_list(data)
    parse_job(data, where="schedule()")
    answer = yield _Request("POST", "/jobs", data)
    _raise_refused_definition(answer, "schedule()")
    return bool(answer.document()["changed"])


def _remove_job(job_id: str) -> Steps[bool]:
    answer = yield _Request("DELETE", api_path("jobs", job_id))
    return False if answer.status == 404 else bool(answer.document()["removed"])


def _pause(job_id: str, paused: bool) -> Steps[JobSpec]:
    answer = yield _Request("POST", api_path("jobs", job_id, "pause" if paused else "resume"))
    if answer.status == 404:
        raise UnknownJob(job_id)
    return _spec(answer.document()["definition"], answer.url)


def _jobs() -> Steps[dict[str, JobInfo]]:
    document = yield from _document("GET", "/jobs", None, None)
    return {job["id"]: _job_info(job) for job in document["jobs"]}


def _job(job_id: str) -> Steps[JobInfo | None]:
    answer = yield _Request("GET", api_path("jobs", job_id))
    if answer.status == 404:
        return None
    return _job_info(answer.document())


def _members() -> Steps[list[MemberInfo]]:
    from peer.control.node import MemberInfo  # the embedding's value type; imported when first used

    document = yield from _document("GET", "/members", None, None)
    return [
        MemberInfo(
            name=member["name"],
            address=member["addr"],
            status=member["status"],
            incarnation=member["incarnation"],
            role=_role(member.get("meta", "")),
        )
        for member in document["members"]
    ]


def _member(name: str) -> Steps[MemberInfo | None]:
    members = yield from _members()
    return next((member for member in members if member.name == name), None)


def _live_members() -> Steps[list[MemberInfo]]:
    members = yield from _members()
    return [member for member in members if Status[member.status.upper()].is_live]


def _leave() -> Steps[None]:
    yield from _document("POST", "/leave", None, 60.0)  # answered once the leave has been gossiped


# -- from the API's documents back to peer's types -------------------------------------------


def _record(document: Mapping[str, Any]) -> RunRecord:
    """A run as ``GET /runs/{run}`` shows it -> the ``RunRecord`` (``iso`` is the API's)."""
    try:
        return RunRecord.from_wire({key: value for key, value in document.items() if key != "iso"})
    except (ValueError, TypeError) as error:
        raise ClientError(f"the agent sent a run record this client cannot read: {error}") from None


def _spec(definition: Any, where: str) -> JobSpec:
    try:
        return JobSpec.from_wire(definition)
    except JobError as error:
        raise ClientError(f"{where}: the agent sent a job definition this client cannot read: {error}") from None


def _job_info(document: Mapping[str, Any]) -> JobInfo:
    """A job as ``GET /jobs`` (each) or ``GET /jobs/{id}`` shows it -> its ``JobInfo``."""
    from peer.control.node import JobInfo  # the embedding's value type; imported when first used

    next_tick = document.get("next_tick")
    return JobInfo(
        spec=_spec(document["definition"], "/jobs"),
        owner=document.get("owner"),
        next_tick=None if next_tick is None else datetime.fromisoformat(next_tick),
        since=datetime.fromisoformat(document["since"]),
    )


def _role(meta: str) -> str | None:
    try:
        return Role(meta).value
    except ValueError:
        return None


def _states(state: RunState | str | Iterable[RunState | str]) -> frozenset[RunState]:
    items = [state] if isinstance(state, (RunState, str)) else list(state)
    try:
        return frozenset(RunState(item) for item in items)
    except ValueError:
        known = ", ".join(s.value for s in RunState)
        raise ValueError(f"state: expected some of {known}, got {state!r}") from None


def _target_keys(
    target: Callable[..., Any] | str | Target, kwargs: Mapping[str, Any] | None, where: str, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """The keys of a job definition naming ``target`` (as ``peer.Node``'s,
    but a function is named by where it is, for the agent to import it)."""
    clash = sorted(TARGET_KEYS & fields.keys())
    if clash:
        raise TypeError(f"{where} got an unexpected keyword argument {clash[0]!r} (the target is an argument of its own)")
    if isinstance(target, CallTarget):
        keys: dict[str, Any] = {"call": target.function, "kwargs": {**target.kwargs, **(kwargs or {})}}
        return keys if target.runtime == "auto" else {**keys, "runtime": target.runtime}
    if isinstance(target, (CommandTarget, HttpTarget)):
        if kwargs:
            raise JobError(where, "only a call target takes kwargs", field="kwargs")
        if isinstance(target, CommandTarget):
            command: str | list[str] = target.argv[0] if target.shell and len(target.argv) == 1 else list(target.argv)
            return {"command": command, "shell": target.shell, "env": dict(target.env), "cwd": target.cwd}
        return {"http": {"url": target.url, "method": target.method, "headers": dict(target.headers), "body": target.body}}
    if isinstance(target, str):
        name = target
    elif callable(target):
        module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
        if not module or module == "__main__" or not qualname or "<" in qualname or "." in qualname:
            raise ValueError(
                f"{target!r} cannot be named for the agent to import: pass 'package.module:function' "
                "(a module-level function of a module the agent can import)"
            )
        name = f"{module}:{qualname}"
    else:
        raise TypeError(f"a target is 'package.module:function', a module-level function or a Target, got {type(target).__name__}")
    return {"call": name, "kwargs": dict(kwargs or {})}




def _one_off_fields(target_id: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    for key in _ONE_OFF_ONLY:
        if key in fields:
            raise JobError("submit_with()", "a submitted run runs once, now; define jobs with schedule()", job=target_id, field=key)
    return {**fields, "id": target_id}


# -- the sync client ---------------------------------------------------------------------------


class Client:
    """A node's control API from a synchronous program::

        with peer.Client("127.0.0.1:7947") as client:        # or PEER_API, PEER_API_TOKEN...
            run_id = client.submit("app.jobs:resize", image="a.png", width=100)
            print(client.result(run_id, timeout=30))

    ``api`` is ``[https://]HOST[:PORT]`` (default ``PEER_API``, else
    ``127.0.0.1:7947``) or an ``Endpoint``; ``token`` or ``token_file`` (else
    ``PEER_API_TOKEN``, ``PEER_API_TOKEN_FILE``); ``ca``, the CA file of an
    HTTPS API's certificate (else ``PEER_API_CA``, else the system's);
    ``timeout``, seconds a request may take (beyond what a long-poll waits).
    ``ConfigError`` for a bad setting. One connection pool for the client's
    life; safe to share between threads. The methods are ``peer.Node``'s.
    """

    def __init__(
        self,
        api: str | Endpoint | None = None,
        *,
        token: str | None = None,
        token_file: str | None = None,
        ca: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.endpoint = resolve_endpoint(api, token=token, token_file=token_file, ca=ca)
        self._transport = _Transport(self.endpoint, timeout)
        self._http = httpx.Client(verify=self._transport.verify, timeout=timeout)

    def __repr__(self) -> str:
        return f"<peer.Client {self.endpoint.url}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; the client is not used after."""
        self._http.close()

    def _do(self, steps: Steps[T]) -> T:
        try:
            request = next(steps)
            while True:
                try:
                    response = self._http.request(**self._transport.arguments(request))
                except httpx.HTTPError as error:
                    raise self._transport.failure(request, error) from None
                request = steps.send(self._transport.answer(request, response))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    def request(self, method: str, path: str, *, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
        """The JSON document of any route (``api_path`` builds ``path``);
        ``ClientError`` for an error answer, with its ``status``."""
        return self._do(_document(method, path, body, timeout))

    def request_bytes(self, path: str, *, timeout: float | None = None) -> bytes:
        """The body of ``GET path`` as it is (``/metrics``)."""
        return self._do(_bytes(path, timeout))

    # -- runs

    def submit(self, target: Callable[..., Any] | str | Target, /, **kwargs: Any) -> str:
        """As ``peer.Node.submit``: ``target`` is ``"package.module:function"``, a
        module-level function (named so), or a ``CallTarget`` / ``CommandTarget`` /
        ``HttpTarget``; the run id. ``BacklogFull``, ``JobError``."""
        return self._do(_submit(target, kwargs, {}, "submit()"))

    def submit_with(
        self, target: Callable[..., Any] | str | Target, /, kwargs: Mapping[str, Any] | None = None, *, id: str | None = None, **fields: Any
    ) -> str:
        """``submit`` with a one-off job's options (``id``, ``timeout``, ``retries``, ...)."""
        return self._do(_submit(target, kwargs or {}, _one_off_fields(id, fields), "submit_with()"))

    def trigger(self, job_id: str, /, **kwargs: Any) -> str:
        """Run a defined job once, now; the run id. ``UnknownJob``."""
        return self._do(_trigger(job_id, kwargs))

    def result(self, run_id: str, *, timeout: float | None = None) -> Any:
        """The run's result once it has finished; ``RunFailed``, ``TimeoutError``, ``UnknownRun``."""
        return self._do(_result(run_id, timeout))

    def wait(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        """The run's record once it has finished, however it went."""
        return self._do(_wait(run_id, timeout))

    def watch(self, run_id: str) -> Iterator[RunRecord]:
        """The run's record when first known and at each change, ending with the finished one."""
        tag, last = NO_RECORD_TAG, None
        while True:
            record, tag = self._do(_next_change(run_id, tag))
            if record is not None and record != last:
                last = record
                yield record
                if record.state.finished:
                    return

    def send(self, run_id: str, data: Any) -> None:
        """An update to the run, wherever it runs; ``UnknownRun``, ``RunFinishedError``."""
        self._do(_send(run_id, data))

    def run(self, run_id: str) -> RunRecord | None:
        return self._do(_run(run_id))

    def runs(
        self, job: str | None = None, *, state: RunState | str | Iterable[RunState | str] | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs, newest first; only ``job``'s, only in ``state``(s), at most ``limit``."""
        return self._do(_runs(job, state, limit))

    # -- jobs

    def schedule(
        self,
        job_id: str,
        schedule: str | None,
        target: Callable[..., Any] | str | Target,
        /,
        *,
        kwargs: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Define or redefine a job (``POST /jobs``); True if it changed anything."""
        return self._do(_schedule(job_id, schedule, target, kwargs, fields))

    def remove_job(self, job_id: str) -> bool:
        return self._do(_remove_job(job_id))

    def pause_job(self, job_id: str) -> JobSpec:
        return self._do(_pause(job_id, True))

    def resume_job(self, job_id: str) -> JobSpec:
        return self._do(_pause(job_id, False))

    def jobs(self) -> dict[str, JobInfo]:
        return self._do(_jobs())

    def job(self, job_id: str) -> JobInfo | None:
        return self._do(_job(job_id))

    # -- the node

    def members(self) -> list[MemberInfo]:
        return self._do(_members())

    def member(self, name: str) -> MemberInfo | None:
        return self._do(_member(name))

    def live_members(self) -> list[MemberInfo]:
        return self._do(_live_members())

    def status(self) -> dict[str, Any]:
        """``GET /status``: the node's state and counters (README: The control API)."""
        return self.request("GET", "/status")

    def leave(self) -> None:
        """Make the node leave the cluster gracefully (its agent then exits)."""
        self._do(_leave())


def _bytes(path: str, timeout: float | None) -> Steps[bytes]:
    answer = yield _Request("GET", path, timeout=timeout)
    if not answer.ok:
        raise answer.error()
    return answer.content


# -- the async client ----------------------------------------------------------------------------


class AsyncClient:
    """``Client`` for an async program, asyncio or trio alike (``httpx.AsyncClient``)::

        async with peer.AsyncClient("127.0.0.1:7947") as client:
            run_id = await client.submit("app.jobs:resize", image="a.png", width=100)
            async for record in client.watch(run_id): ...

    The same arguments and methods as ``Client``, awaited; ``watch`` is an async iterator.
    """

    def __init__(
        self,
        api: str | Endpoint | None = None,
        *,
        token: str | None = None,
        token_file: str | None = None,
        ca: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.endpoint = resolve_endpoint(api, token=token, token_file=token_file, ca=ca)
        self._transport = _Transport(self.endpoint, timeout)
        self._http = httpx.AsyncClient(verify=self._transport.verify, timeout=timeout)

    def __repr__(self) -> str:
        return f"<peer.AsyncClient {self.endpoint.url}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections; the client is not used after."""
        await self._http.aclose()

    aclose = close  # for contextlib.aclosing

    async def _do(self, steps: Steps[T]) -> T:
        try:
            request = next(steps)
            while True:
                try:
                    response = await self._http.request(**self._transport.arguments(request))
                except httpx.HTTPError as error:
                    raise self._transport.failure(request, error) from None
                request = steps.send(self._transport.answer(request, response))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    async def request(self, method: str, path: str, *, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
        return await self._do(_document(method, path, body, timeout))

    async def request_bytes(self, path: str, *, timeout: float | None = None) -> bytes:
        return await self._do(_bytes(path, timeout))

    async def submit(self, target: Callable[..., Any] | str | Target, /, **kwargs: Any) -> str:
        return await self._do(_submit(target, kwargs, {}, "submit()"))

    async def submit_with(
        self, target: Callable[..., Any] | str | Target, /, kwargs: Mapping[str, Any] | None = None, *, id: str | None = None, **fields: Any
    ) -> str:
        return await self._do(_submit(target, kwargs or {}, _one_off_fields(id, fields), "submit_with()"))

    async def trigger(self, job_id: str, /, **kwargs: Any) -> str:
        return await self._do(_trigger(job_id, kwargs))

    async def result(self, run_id: str, *, timeout: float | None = None) -> Any:
        return await self._do(_result(run_id, timeout))

    async def wait(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        return await self._do(_wait(run_id, timeout))

    async def watch(self, run_id: str) -> AsyncIterator[RunRecord]:
        tag, last = NO_RECORD_TAG, None
        while True:
            record, tag = await self._do(_next_change(run_id, tag))
            if record is not None and record != last:
                last = record
                yield record
                if record.state.finished:
                    return

    async def send(self, run_id: str, data: Any) -> None:
        await self._do(_send(run_id, data))

    async def run(self, run_id: str) -> RunRecord | None:
        return await self._do(_run(run_id))

    async def runs(
        self, job: str | None = None, *, state: RunState | str | Iterable[RunState | str] | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        return await self._do(_runs(job, state, limit))

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
        return await self._do(_schedule(job_id, schedule, target, kwargs, fields))

    async def remove_job(self, job_id: str) -> bool:
        return await self._do(_remove_job(job_id))

    async def pause_job(self, job_id: str) -> JobSpec:
        return await self._do(_pause(job_id, True))

    async def resume_job(self, job_id: str) -> JobSpec:
        return await self._do(_pause(job_id, False))

    async def jobs(self) -> dict[str, JobInfo]:
        return await self._do(_jobs())

    async def job(self, job_id: str) -> JobInfo | None:
        return await self._do(_job(job_id))

    async def members(self) -> list[MemberInfo]:
        return await self._do(_members())

    async def member(self, name: str) -> MemberInfo | None:
        return await self._do(_member(name))

    async def live_members(self) -> list[MemberInfo]:
        return await self._do(_live_members())

    async def status(self) -> dict[str, Any]:
        return await self.request("GET", "/status")

    async def leave(self) -> None:
        await self._do(_leave())


# -- one request, for tools and tests ------------------------------------------------------------


def call(api: Address | Endpoint, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> dict[str, Any]:
    """The JSON document at ``path`` (a client for one request); ``body``, when not None, is sent as JSON."""
    with Client(api if isinstance(api, Endpoint) else Endpoint(api), timeout=timeout) as client:
        return client.request(method, path, body=body)


def fetch(api: Address | Endpoint, path: str, *, timeout: float = 5.0) -> bytes:
    """The body at ``GET path`` (a client for one request)."""
    with Client(api if isinstance(api, Endpoint) else Endpoint(api), timeout=timeout) as client:
        return client.request_bytes(path)
