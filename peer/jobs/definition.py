"""Job definitions: what a user writes, validated into a ``JobSpec``.

A jobs file is TOML with one ``[[job]]`` table per job; the HTTP API takes
the same keys as a JSON object (where ``null`` means "not given")::

    [[job]]
    id = "report"                   # [A-Za-z0-9][A-Za-z0-9_.-]{0,127}, unique
    schedule = "*/5 * * * *"        # see peer.jobs.cron; absent: a one-off job,
                                    # run only when submitted
    timezone = "Europe/Paris"       # IANA name, default "UTC"; only with a schedule
    mode = "one"                    # "one": one owner runs each tick;
                                    # "all": every member does (needs a schedule)

    # the target: exactly one of call, command, http
    call = "myapp.tasks:report"     # "package.module:function" (imported by the
                                    # worker), or a bare name "report" / "tasks.report"
                                    # (no colon) registered with an embedding peer.Node
    kwargs = { region = "eu" }      # only with call: plain data (str, int, float,
                                    # bool, lists, tables with string keys)
    runtime = "auto"                # only with call: where an async def function runs:
                                    # auto (by what its code uses; see peer.runtime.aio)
                                    # | trio | asyncio
    # command = ["backup", "--fast"]  # a list, or a string split like a shell would
    #                                 # (shlex); with shell = true the string is
    #                                 # given to the shell as it is
    # shell = false ; env = { K = "v" } ; cwd = "/tmp"   # only with command
    # http = { url = "https://...", method = "POST", headers = {...}, body = {...} }
    #                                 # method GET POST PUT PATCH DELETE HEAD
    #                                 # (default POST); body is sent as JSON

    timeout = "30s"                 # > 0; absent: no timeout
    retries = 2                     # extra attempts after a failure, 0..100
    backoff = "1s"                  # delay before the first retry, doubling...
    backoff_max = "5m"              # ...up to this (>= backoff)
    overlap = "allow"               # a tick while the last run still runs:
                                    # allow (run both) | forbid (skip the new one,
                                    # recorded "skipped") | replace (cancel the old)
    misfire = "once"                # ticks missed while no one could run them:
                                    # skip | once (run the latest) | all (run each)
    grace = "60s"                   # how late a tick may start and still be on time
    result_ttl = "10m"              # how long a finished run's record stays, 1s..7d
    tags = ["nightly"]              # at most 32, each 1..64 printable characters
    paused = false

Durations are a number of seconds or a string such as ``"500ms"``, ``"30s"``,
``"5m"``, ``"1h30m"`` (``peer.jobs.cron.parse_duration``). Unknown keys, wrong
types and out-of-range values are refused with a ``JobError`` naming the file,
the job, the key and the reason, on one line.

A ``JobSpec`` travels between nodes as ``to_wire()``, a plain msgpack-able
dict (with a format version ``"v"``) of at most 64 KiB; ``from_wire`` checks
everything again, since the peer that wrote it may run another version. A call
target's ``runtime`` is on the wire only when it is not ``"auto"``: a
definition without it reads the same on every version, and one that needs
``asyncio`` is refused by a node too old to run it that way (rather than run
on the wrong loop).
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import msgpack

from peer.jobs.cron import Schedule, check_timezone, parse_duration, parse_schedule
from peer.jobs.targets import RUNTIMES, CallTarget, CommandTarget, HttpTarget, Target

__all__ = [
    "HTTP_METHODS",
    "MAX_WIRE_BYTES",
    "WIRE_VERSION",
    "JobError",
    "JobSpec",
    "TARGET_KEYS",
    "default_job_id",
    "load_jobs_file",
    "parse_job",
    "program_name",
    "with_tags_as_list",
]

WIRE_VERSION = 1
MAX_WIRE_BYTES = 64 * 1024
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_RETRIES = 100
MAX_DEPTH = 32
MAX_SECONDS = 7 * 86400.0  # bound of backoff, backoff_max, grace, result_ttl
MAX_TIMEOUT = 30 * 86400.0
MIN_RESULT_TTL = 1.0
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MODES = ("one", "all")
OVERLAPS = ("allow", "forbid", "replace")
MISFIRES = ("skip", "once", "all")

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*", re.ASCII)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)
_ENV_NAME_RE = re.compile(r"[^=\x00]+")


class JobError(ValueError):
    """A bad job definition: ``str(e)`` names where and which field and why,
    on one line, e.g. ``jobs.toml: job 'backup': schedule: '61 * * * *' is not
    a valid cron expression (minute '61' out of range 0-59)``. ``index`` is
    the job's position in its file (1-based), shown when its id is unknown."""

    def __init__(
        self,
        where: str,
        reason: str,
        *,
        job: str | None = None,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        self.where = where
        self.job = job
        self.field = field
        self.reason = reason
        self.index = index
        parts = [where]
        if job is not None:
            parts.append(f"job {job!r}")
        elif index is not None:
            parts.append(f"job #{index}")
        if field is not None:
            parts.append(field)
        parts.append(reason)
        super().__init__(": ".join(" ".join(part.splitlines()) for part in parts))

    def __reduce__(self) -> Any:
        return (_rebuild_error, (self.where, self.reason, self.job, self.field, self.index))


def _rebuild_error(where: str, reason: str, job: str | None, field: str | None, index: int | None) -> JobError:
    return JobError(where, reason, job=job, field=field, index=index)


class _FieldError(Exception):
    """A field's problem, before we know where it is reported."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


# --------------------------------------------------------------------------- checks


def _check_plain(value: Any, field: str, depth: int = 0) -> None:
    """Plain data: str, int (64-bit), finite float, bool, None, lists, and
    dicts with str keys -- what msgpack and JSON both carry unchanged."""
    if depth > MAX_DEPTH:
        raise _FieldError(field, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        _check_text(value, field)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise _FieldError(field, f"integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(field, f"{value!r} is not a finite number")
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, field, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError(field, f"keys must be strings, got {key!r}")
            _check_text(key, field)
            _check_plain(item, field, depth + 1)
        return
    raise _FieldError(
        field,
        f"{type(value).__name__} is not plain data (use str, int, float, bool, null, lists and tables)",
    )


def _check_text(value: str, field: str) -> None:
    """Strings travel as UTF-8: lone surrogates cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _FieldError(field, f"{value!r} is not valid Unicode text (it holds a lone surrogate)") from None


def _copy_plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy_plain(item) for key, item in value.items()}
    return value


def _check_string_map(value: Any, field: str) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _FieldError(field, "expected a table of strings to strings")
    for key, text in value.items():
        _check_text(key, field)
        _check_text(text, field)


def _check_target(target: Any) -> None:
    if isinstance(target, CallTarget):
        function = target.function
        if not isinstance(function, str) or not (
            len(function) <= 256 and (_IMPORT_RE.fullmatch(function) or _NAME_RE.fullmatch(function))
        ):
            raise _FieldError(
                "call",
                f"{function!r} is neither 'package.module:function' nor a registered name like 'report'",
            )
        if not isinstance(target.kwargs, dict):
            raise _FieldError("kwargs", "expected a table")
        _check_plain(dict(target.kwargs), "kwargs")
        _check_choice(target.runtime, "runtime", RUNTIMES)
    elif isinstance(target, CommandTarget):
        argv = target.argv
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise _FieldError("command", "expected a non-empty list of strings")
        if not argv[0]:
            raise _FieldError("command", "the program name is empty")
        if any("\x00" in arg for arg in argv):
            raise _FieldError("command", "contains a NUL character")
        for arg in argv:
            _check_text(arg, "command")
        if not isinstance(target.shell, bool):
            raise _FieldError("shell", f"expected true or false, got {target.shell!r}")
        if target.shell and len(argv) != 1:
            raise _FieldError("command", "with shell = true, the command is one string")
        _check_string_map(target.env, "env")
        for name, text in target.env.items():
            if not _ENV_NAME_RE.fullmatch(name) or "\x00" in text:
                raise _FieldError("env", f"{name!r} is not a valid environment variable")
        if target.cwd is not None:
            if not isinstance(target.cwd, str) or not target.cwd or "\x00" in target.cwd:
                raise _FieldError("cwd", f"expected a directory path, got {target.cwd!r}")
            _check_text(target.cwd, "cwd")
    elif isinstance(target, HttpTarget):
        url = target.url
        if not isinstance(url, str):
            raise _FieldError("http.url", f"expected a string, got {url!r}")
        try:
            parts = urlsplit(url)
            _ = parts.port  # a bad port raises ValueError
            valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid or not url.isprintable() or " " in url or len(url) > 8192:
            raise _FieldError("http.url", f"{url!r} is not an http:// or https:// URL")
        if target.method not in HTTP_METHODS:
            raise _FieldError("http.method", f"{target.method!r} is not one of {', '.join(HTTP_METHODS)}")
        _check_string_map(target.headers, "http.headers")
        for name, text in target.headers.items():
            if not _HEADER_NAME_RE.fullmatch(name) or any(c in text for c in "\r\n\x00"):
                raise _FieldError("http.headers", f"{name!r} is not a valid header")
        _check_plain(target.body, "http.body")
    else:
        raise _FieldError("target", f"expected a CallTarget, CommandTarget or HttpTarget, got {type(target).__name__}")


def _check_seconds(value: Any, field: str, *, low: float, high: float, low_open: bool = False) -> None:
    if not isinstance(value, float) or not math.isfinite(value):
        raise _FieldError(field, f"expected a number of seconds, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        low_text = f"> {_human(low)}" if low_open else f">= {_human(low)}"
        raise _FieldError(field, f"{_human(value)} is out of range (must be {low_text} and <= {_human(high)})")


def _human(seconds: float) -> str:
    """``604800.0`` -> ``"7d"``, ``300.0`` -> ``"5m"``, ``90.0`` -> ``"90s"``, ``0.5`` -> ``"0.5s"``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _check_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices or not isinstance(value, str):
        raise _FieldError(field, f"{value!r} is not one of {', '.join(choices)}")


def _float(value: Any) -> Any:
    """Whole seconds as float (the wire and the checks want floats); anything
    else is left for the checks to refuse."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return float(value)
    return value


def _optional_float(value: Any) -> Any:
    return None if value is None else _float(value)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- the spec


@attrs.frozen
class JobSpec:
    """A validated job definition; constructing one checks every field and
    raises ``JobError`` (``where`` is ``"job definition"``)."""

    id: str
    target: Target
    schedule: Schedule | None
    mode: str = "one"
    timeout: float | None = attrs.field(default=None, converter=_optional_float)
    retries: int = 0
    backoff: float = attrs.field(default=1.0, converter=_float)
    backoff_max: float = attrs.field(default=300.0, converter=_float)
    overlap: str = "allow"
    misfire: str = "once"
    grace: float = attrs.field(default=60.0, converter=_float)
    result_ttl: float = attrs.field(default=600.0, converter=_float)
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    paused: bool = False

    def __attrs_post_init__(self) -> None:
        job = self.id if isinstance(self.id, str) and _ID_RE.fullmatch(self.id) else None
        try:
            self._check()
        except _FieldError as bad:
            raise JobError("job definition", bad.reason, job=job, field=bad.field) from None

    def _check(self) -> None:
        if not isinstance(self.id, str) or not _ID_RE.fullmatch(self.id):
            raise _FieldError("id", f"{self.id!r} is not a valid id (letters, digits, '_', '.', '-'; at most 128)")
        _check_target(self.target)
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise _FieldError("schedule", f"expected a Schedule or None, got {type(self.schedule).__name__}")
        _check_choice(self.mode, "mode", MODES)
        if self.mode == "all" and self.schedule is None:
            raise _FieldError("mode", "mode 'all' needs a schedule (a job without one runs once, on one node, when submitted)")
        if self.timeout is not None:
            _check_seconds(self.timeout, "timeout", low=0.0, high=MAX_TIMEOUT, low_open=True)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise _FieldError("retries", f"expected a whole number, got {self.retries!r}")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise _FieldError("retries", f"{self.retries} is out of range (0..{MAX_RETRIES})")
        _check_seconds(self.backoff, "backoff", low=0.0, high=MAX_SECONDS)
        _check_seconds(self.backoff_max, "backoff_max", low=0.0, high=MAX_SECONDS)
        if self.backoff_max < self.backoff:
            raise _FieldError("backoff_max", f"{_human(self.backoff_max)} is less than backoff ({_human(self.backoff)})")
        _check_choice(self.overlap, "overlap", OVERLAPS)
        _check_choice(self.misfire, "misfire", MISFIRES)
        _check_seconds(self.grace, "grace", low=0.0, high=MAX_SECONDS)
        _check_seconds(self.result_ttl, "result_ttl", low=MIN_RESULT_TTL, high=MAX_SECONDS)
        if not isinstance(self.tags, tuple) or not all(isinstance(tag, str) for tag in self.tags):
            raise _FieldError("tags", "expected a list of strings")
        if len(self.tags) > MAX_TAGS:
            raise _FieldError("tags", f"{len(self.tags)} tags, at most {MAX_TAGS}")
        for tag in self.tags:
            if not tag or len(tag) > MAX_TAG_CHARS or not tag.isprintable() or not tag.strip():
                raise _FieldError("tags", f"{tag!r} is not a valid tag (1..{MAX_TAG_CHARS} printable characters)")
        if len(set(self.tags)) != len(self.tags):
            raise _FieldError("tags", "duplicate tags")
        if not isinstance(self.paused, bool):
            raise _FieldError("paused", f"expected true or false, got {self.paused!r}")
        try:
            size = len(msgpack.packb(self.to_wire()))
        except (ValueError, TypeError, OverflowError) as error:  # a check above should have caught it
            raise _FieldError(None, f"cannot be encoded: {error}") from None
        if size > MAX_WIRE_BYTES:
            raise _FieldError(None, f"the definition is too large ({size} bytes encoded, at most {MAX_WIRE_BYTES})")

    def to_wire(self) -> dict[str, Any]:
        """A plain msgpack-able dict (a fresh copy); ``from_wire`` rebuilds an
        equal spec from it."""
        return {
            "v": WIRE_VERSION,
            "id": self.id,
            "target": _target_to_wire(self.target),
            "schedule": None if self.schedule is None else self.schedule.text,
            "timezone": None if self.schedule is None else self.schedule.timezone,
            "mode": self.mode,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff": self.backoff,
            "backoff_max": self.backoff_max,
            "overlap": self.overlap,
            "misfire": self.misfire,
            "grace": self.grace,
            "result_ttl": self.result_ttl,
            "tags": list(self.tags),
            "paused": self.paused,
        }

    @classmethod
    def from_wire(cls, data: Any) -> JobSpec:
        """The spec ``to_wire`` gave; anything else -- a wrong type, a missing
        or unknown key, another wire version, a bad value -- is a ``JobError``
        (``where`` is ``"wire"``)."""
        job = data.get("id") if isinstance(data, dict) else None
        if not isinstance(job, str) or not _ID_RE.fullmatch(job):
            job = None
        try:
            return _from_wire(data)
        except _FieldError as bad:
            raise JobError("wire", bad.reason, job=job, field=bad.field) from None
        except JobError as error:
            raise JobError("wire", error.reason, job=job, field=error.field) from None

    def retry_delay(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` (1 is the first run, so no
        delay; 2 is the first retry): ``min(backoff * 2**(attempt - 2), backoff_max)``."""
        if attempt < 2:
            return 0.0
        return min(self.backoff * float(2 ** min(attempt - 2, 1000)), self.backoff_max)


_WIRE_TARGET_KEYS = {
    "call": {"kind", "function", "kwargs"},
    "command": {"kind", "argv", "shell", "env", "cwd"},
    "http": {"kind", "url", "method", "headers", "body"},
}


def _target_to_wire(target: Target) -> dict[str, Any]:
    if isinstance(target, CallTarget):
        wire = {"kind": "call", "function": target.function, "kwargs": _copy_plain(dict(target.kwargs))}
        if target.runtime != "auto":
            wire["runtime"] = target.runtime  # absent for auto: what every version reads
        return wire
    if isinstance(target, CommandTarget):
        return {
            "kind": "command",
            "argv": list(target.argv),
            "shell": target.shell,
            "env": dict(target.env),
            "cwd": target.cwd,
        }
    return {
        "kind": "http",
        "url": target.url,
        "method": target.method,
        "headers": dict(target.headers),
        "body": _copy_plain(target.body),
    }


def _wire_keys(data: Any, expected: set[str], field: str | None) -> None:
    if not isinstance(data, dict):
        raise _FieldError(field, f"expected a map, got {type(data).__name__}")
    missing = expected - data.keys()
    if missing:
        raise _FieldError(field, f"missing {', '.join(sorted(missing))}")
    extra = [key for key in data if key not in expected]
    if extra:
        raise _FieldError(field, f"unknown key {extra[0]!r}")


def _target_from_wire(data: Any) -> Target:
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or data["kind"] not in _WIRE_TARGET_KEYS:
        raise _FieldError("target", "expected a map with kind call, command or http")
    kind = data["kind"]
    if kind == "call" and "runtime" in data:
        runtime = data["runtime"]
        if runtime == "auto":
            raise _FieldError("runtime", "auto is written by leaving runtime out")  # one wire form per spec
        data = {key: value for key, value in data.items() if key != "runtime"}
    else:
        runtime = "auto"
    _wire_keys(data, _WIRE_TARGET_KEYS[kind], "target")
    if kind == "call":
        if not isinstance(data["kwargs"], dict):
            raise _FieldError("kwargs", "expected a map")
        _check_plain(data["kwargs"], "kwargs")
        return CallTarget(function=data["function"], kwargs=_copy_plain(data["kwargs"]), runtime=runtime)
    if kind == "command":
        if not isinstance(data["argv"], list):
            raise _FieldError("command", "expected a list of strings")
        _check_string_map(data["env"], "env")
        return CommandTarget(argv=data["argv"], shell=data["shell"], env=data["env"], cwd=data["cwd"])
    _check_string_map(data["headers"], "http.headers")
    _check_plain(data["body"], "http.body")
    return HttpTarget(url=data["url"], method=data["method"], headers=data["headers"], body=_copy_plain(data["body"]))


_WIRE_KEYS = {
    "v", "id", "target", "schedule", "timezone", "mode", "timeout", "retries", "backoff",
    "backoff_max", "overlap", "misfire", "grace", "result_ttl", "tags", "paused",
}  # fmt: skip


def _from_wire(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise _FieldError(None, f"expected a map, got {type(data).__name__}")
    version = data.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise _FieldError("v", f"unsupported wire version {version!r} (this peer reads {WIRE_VERSION})")
    _wire_keys(data, _WIRE_KEYS, None)
    if not isinstance(data["tags"], list):
        raise _FieldError("tags", "expected a list of strings")
    schedule: Schedule | None = None
    text, zone = data["schedule"], data["timezone"]
    if text is None:
        if zone is not None:
            raise _FieldError("timezone", "given without a schedule")
    else:
        if not isinstance(text, str) or len(text) > 1024:
            raise _FieldError("schedule", "expected a string")
        schedule = _schedule(text, zone)
        if schedule.text != text:
            raise _FieldError("schedule", f"{text!r} is not in normal form")
    return JobSpec(
        id=data["id"],
        target=_target_from_wire(data["target"]),
        schedule=schedule,
        mode=data["mode"],
        timeout=data["timeout"],
        retries=data["retries"],
        backoff=data["backoff"],
        backoff_max=data["backoff_max"],
        overlap=data["overlap"],
        misfire=data["misfire"],
        grace=data["grace"],
        result_ttl=data["result_ttl"],
        tags=tuple(data["tags"]),
        paused=data["paused"],
    )


# --------------------------------------------------------------------------- the user format

_TARGET_KEYS = ("call", "command", "http")
_USER_KEYS = (
    "id", "schedule", "timezone", "mode", "call", "kwargs", "runtime", "command", "shell", "env", "cwd", "http",
    "timeout", "retries", "backoff", "backoff_max", "overlap", "misfire", "grace", "result_ttl",
    "tags", "paused",
)  # fmt: skip
_ONLY_WITH = {"kwargs": "call", "runtime": "call", "shell": "command", "env": "command", "cwd": "command"}
_HTTP_KEYS = ("url", "method", "headers", "body")


def _unknown(key: Any, known: tuple[str, ...], prefix: str = "") -> _FieldError:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
    return _FieldError(f"{prefix}{key}", f"unknown key{hint}")


def _user_string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _FieldError(field, f"expected a string, got {_describe(value)}")
    return value


def _user_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(field, f"expected true or false, got {_describe(value)}")
    return value


def _user_duration(value: Any, field: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise _FieldError(field, str(error)) from None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _user_target(data: Mapping[str, Any]) -> Target:
    given = [key for key in _TARGET_KEYS if key in data]
    if not given:
        raise _FieldError("call", "missing: a job needs exactly one target, 'call', 'command' or 'http'")
    if len(given) > 1:
        raise _FieldError(given[1], f"a job has exactly one target, and {given[0]!r} is also given")
    kind = given[0]
    for key, needs in _ONLY_WITH.items():
        if key in data and needs != kind:
            raise _FieldError(key, f"only used with {needs!r}")
    if kind == "call":
        kwargs = data.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise _FieldError("kwargs", f"expected a table, got {_describe(kwargs)}")
        _check_plain(kwargs, "kwargs")
        runtime = _user_string(data.get("runtime", "auto"), "runtime")
        _check_choice(runtime, "runtime", RUNTIMES)
        return CallTarget(function=_user_string(data["call"], "call"), kwargs=_copy_plain(kwargs), runtime=runtime)
    if kind == "command":
        shell = _user_bool(data.get("shell", False), "shell")
        command = data["command"]
        if isinstance(command, str):
            if shell:
                argv = [command]
            else:
                try:
                    argv = shlex.split(command)
                except ValueError as error:
                    raise _FieldError("command", f"cannot split {command!r}: {error}") from None
        elif isinstance(command, list) and all(isinstance(arg, str) for arg in command):
            if shell:
                raise _FieldError("command", "with shell = true, give the command as one string")
            argv = list(command)
        else:
            raise _FieldError("command", f"expected a string or a list of strings, got {_describe(command)}")
        if not argv:
            raise _FieldError("command", "is empty")
        env = data.get("env", {})
        _check_string_map(env, "env")
        cwd = data.get("cwd")
        if cwd is not None:
            _user_string(cwd, "cwd")
        return CommandTarget(argv=argv, shell=shell, env=dict(env), cwd=cwd)
    http = data["http"]
    if not isinstance(http, dict):
        raise _FieldError("http", f"expected a table with url, method, headers, body, got {_describe(http)}")
    for key in http:
        if key not in _HTTP_KEYS:
            raise _unknown(key, _HTTP_KEYS, "http.")
    if "url" not in http:
        raise _FieldError("http.url", "missing")
    method = _user_string(http.get("method", "POST"), "http.method").upper()
    headers = http.get("headers", {})
    _check_string_map(headers, "http.headers")
    body = http.get("body")
    _check_plain(body, "http.body")
    return HttpTarget(
        url=_user_string(http["url"], "http.url"), method=method, headers=dict(headers), body=_copy_plain(body)
    )


def _schedule(text: str, zone: Any) -> Schedule:
    """A schedule in its timezone; ``_FieldError`` naming whichever is wrong."""
    try:
        check_timezone(zone)
    except ValueError as error:
        raise _FieldError("timezone", str(error)) from None
    try:
        return parse_schedule(text, zone)
    except ValueError as error:
        raise _FieldError("schedule", str(error)) from None


def _user_job(data: Mapping[str, Any]) -> JobSpec:
    for key in data:
        if key not in _USER_KEYS:
            raise _unknown(key, _USER_KEYS)
    target = _user_target(data)
    schedule: Schedule | None = None
    if "schedule" in data:
        text = _user_string(data["schedule"], "schedule")
        schedule = _schedule(text, data.get("timezone", "UTC"))
    elif "timezone" in data:
        raise _FieldError("timezone", "only used with a schedule (this job has none)")
    values: dict[str, Any] = {}
    for key in ("mode", "overlap", "misfire"):
        if key in data:
            values[key] = _user_string(data[key], key)
    if "timeout" in data:
        values["timeout"] = _user_duration(data["timeout"], "timeout")
    for key in ("backoff", "backoff_max", "grace", "result_ttl"):
        if key in data:
            values[key] = _user_duration(data[key], key)
    if "retries" in data:
        retries = data["retries"]
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise _FieldError("retries", f"expected a whole number, got {_describe(retries)}")
        values["retries"] = retries
    if "tags" in data:
        tags = data["tags"]
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise _FieldError("tags", f"expected a list of strings, got {_describe(tags)}")
        values["tags"] = tuple(tags)
    if "paused" in data:
        values["paused"] = _user_bool(data["paused"], "paused")
    return JobSpec(id=data["id"], target=target, schedule=schedule, **values)



# The keys of a definition that name its target (or the job): given as the
# target argument of ``schedule()`` / ``submit_with()``, never as a field.
TARGET_KEYS = frozenset({"id", "schedule", "call", "kwargs", "command", "shell", "env", "cwd", "http"})


def default_job_id(name: str) -> str:
    """A job id from a function or program name: ``pkg.mod:fn`` -> ``fn``
    (what ``peer submit``, ``Node.submit`` and ``Client.submit`` make)."""
    base = re.split(r"[:./\\]", name.strip())[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("_.-")[:128] or "adhoc"


def program_name(keys: Mapping[str, Any]) -> str:
    """What to name a one-off by when it has no ``call``: its command's program, or ``http``."""
    command = keys.get("command")
    if isinstance(command, list) and command:
        return str(command[0])
    if isinstance(command, str):
        return (command.split() or ["adhoc"])[0]
    return "http"


def with_tags_as_list(data: dict[str, Any]) -> dict[str, Any]:
    """Tuples of tags (as Python callers pass them) as the list a definition takes."""
    if isinstance(data.get("tags"), tuple):
        data["tags"] = list(data["tags"])
    return data


def parse_job(data: Mapping[str, Any], *, where: str, index: int | None = None) -> JobSpec:
    """A ``JobSpec`` from a TOML table or JSON object as a user writes it (see
    the module docstring). Keys set to ``None`` (JSON ``null``) count as not
    given. Raises ``JobError`` naming ``where``, the job (its id, or
    ``#index`` in its file) and the key."""
    if not isinstance(data, Mapping):
        raise JobError(where, f"expected a table of job settings, got {_describe(data)}", index=index)
    data = {key: value for key, value in data.items() if value is not None}
    if not all(isinstance(key, str) for key in data):
        raise JobError(where, "keys must be strings", index=index)
    job_id = data.get("id")
    if job_id is None:
        raise JobError(where, "missing (every job needs an id)", field="id", index=index)
    if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
        raise JobError(
            where,
            f"{job_id!r} is not a valid id (letters, digits, '_', '.', '-'; at most 128; starting with a letter or digit)",
            field="id",
            index=index,
        )
    try:
        return _user_job(data)
    except _FieldError as bad:
        raise JobError(where, bad.reason, job=job_id, field=bad.field) from None
    except JobError as error:
        raise JobError(where, error.reason, job=job_id, field=error.field) from None


def load_jobs_file(path: str) -> list[JobSpec]:
    """The jobs of a TOML file of ``[[job]]`` tables, in file order. Raises
    ``JobError`` (``where`` is ``path``) if the file cannot be read, is not
    valid TOML, has other top-level keys, a bad job, or two jobs with one id."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise JobError(path, f"cannot read jobs file: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise JobError(path, f"not valid TOML: {error}") from None
    for key in document:
        if key != "job":
            bad = _unknown(key, ("job",))
            raise JobError(path, f"{bad.reason}; jobs are [[job]] tables", field=bad.field)
    tables = document.get("job", [])
    if not isinstance(tables, list):
        raise JobError(path, "expected [[job]] tables (an array of tables)", field="job")
    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for number, table in enumerate(tables, start=1):
        spec = parse_job(table, where=path, index=number)
        if spec.id in seen:
            raise JobError(path, f"duplicate id (job #{seen[spec.id]} has it too)", job=spec.id, field="id")
        seen[spec.id] = number
        jobs.append(spec)
    return jobs
