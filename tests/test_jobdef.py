"""peer.jobs.definition: job definitions from users and from the wire, validated."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer.jobs.cron import parse_schedule
from peer.jobs.definition import MAX_WIRE_BYTES, JobError, JobSpec, load_jobs_file, parse_job
from peer.jobs.targets import CallTarget, CommandTarget, HttpTarget

FULL: dict[str, Any] = {
    "id": "report",
    "schedule": "*/5 * * * *",
    "timezone": "Europe/Paris",
    "mode": "one",
    "call": "myapp.tasks:report",
    "kwargs": {"region": "eu", "limits": [1, 2.5, None, True], "nested": {"a": {"b": []}}},
    "timeout": "30s",
    "retries": 2,
    "backoff": "1s",
    "backoff_max": "5m",
    "overlap": "forbid",
    "misfire": "once",
    "grace": "60s",
    "result_ttl": "10m",
    "tags": ["nightly", "eu"],
    "paused": False,
}


def test_full_definition() -> None:
    spec = parse_job(FULL, where="jobs.toml")
    assert spec == JobSpec(
        id="report",
        target=CallTarget("myapp.tasks:report", FULL["kwargs"]),
        schedule=parse_schedule("*/5 * * * *", "Europe/Paris"),
        mode="one",
        timeout=30.0,
        retries=2,
        backoff=1.0,
        backoff_max=300.0,
        overlap="forbid",
        misfire="once",
        grace=60.0,
        result_ttl=600.0,
        tags=("nightly", "eu"),
        paused=False,
    )
    assert isinstance(spec.target, CallTarget)
    assert spec.target.kwargs is not FULL["kwargs"]  # a copy, not the caller's dict


def test_minimal_definition_has_the_defaults() -> None:
    spec = parse_job({"id": "adhoc", "call": "cleanup"}, where="api")
    assert spec == JobSpec(id="adhoc", target=CallTarget("cleanup"), schedule=None)
    assert (spec.mode, spec.timeout, spec.retries, spec.backoff, spec.backoff_max) == ("one", None, 0, 1.0, 300.0)
    assert (spec.overlap, spec.misfire, spec.grace, spec.result_ttl) == ("allow", "once", 60.0, 600.0)
    assert (spec.tags, spec.paused) == ((), False)
    assert parse_job({"id": "t", "schedule": "@daily", "call": "x"}, where="api").schedule == parse_schedule("@daily")


def test_json_nulls_count_as_absent() -> None:
    spec = parse_job({"id": "a", "call": "x", "schedule": None, "timeout": None, "tags": None}, where="api")
    assert spec.schedule is None and spec.timeout is None and spec.tags == ()


def test_numbers_are_seconds() -> None:
    spec = parse_job({"id": "a", "call": "x", "timeout": 2.5, "grace": 0, "backoff": 3, "result_ttl": 1}, where="api")
    assert (spec.timeout, spec.grace, spec.backoff, spec.result_ttl) == (2.5, 0.0, 3.0, 1.0)
    assert isinstance(spec.backoff, float)


@pytest.mark.parametrize(
    ("table", "target"),
    [
        ({"call": "pkg.mod:fn"}, CallTarget("pkg.mod:fn")),
        ({"call": "mod:Class.method"}, CallTarget("mod:Class.method")),
        ({"call": "tasks.report"}, CallTarget("tasks.report")),
        ({"command": ["backup", "--fast"]}, CommandTarget(("backup", "--fast"))),
        ({"command": "backup --dir 'My Files'"}, CommandTarget(("backup", "--dir", "My Files"))),
        ({"command": "echo $HOME | wc", "shell": True}, CommandTarget(("echo $HOME | wc",), shell=True)),
        (
            {"command": "run", "env": {"K": "v"}, "cwd": "/tmp", "shell": False},
            CommandTarget(("run",), env={"K": "v"}, cwd="/tmp"),
        ),
        ({"http": {"url": "https://example.com/hook"}}, HttpTarget("https://example.com/hook")),
        (
            {"http": {"url": "http://10.0.0.1:8080/x?y=1", "method": "get", "headers": {"X-A": "b"}, "body": {"k": [1]}}},
            HttpTarget("http://10.0.0.1:8080/x?y=1", "GET", {"X-A": "b"}, {"k": [1]}),
        ),
    ],
)
def test_targets(table: dict[str, Any], target: Any) -> None:
    assert parse_job({"id": "j", **table}, where="api").target == target


BAD = [
    # (changes to FULL, field, words in the reason)
    ({"id": "-bad"}, "id", "not a valid id"),
    ({"id": "x" * 129}, "id", "not a valid id"),
    ({"id": "a b"}, "id", "not a valid id"),
    ({"id": 5}, "id", "not a valid id"),
    ({"scedule": "* * * * *"}, "scedule", "did you mean 'schedule'"),
    ({"colour": "red"}, "colour", "unknown key; known keys: id, schedule"),
    ({"schedule": "61 * * * *"}, "schedule", "'61 * * * *' is not a valid cron expression (minute '61' out of range 0-59)"),
    ({"schedule": 5}, "schedule", "expected a string"),
    ({"timezone": "Europe/Pariss"}, "timezone", "unknown time zone 'Europe/Pariss'"),
    ({"mode": "some"}, "mode", "'some' is not one of one, all"),
    ({"call": "a:b:c"}, "call", "neither 'package.module:function' nor a registered name"),
    ({"call": "my-app:run"}, "call", "neither"),
    ({"call": ""}, "call", "neither"),
    ({"call": 3}, "call", "expected a string"),
    ({"command": "ls"}, "command", "exactly one target, and 'call' is also given"),
    ({"kwargs": [1]}, "kwargs", "expected a table"),
    ({"kwargs": {"when": (1, 2)}}, "kwargs", "tuple is not plain data"),
    ({"kwargs": {"n": float("nan")}}, "kwargs", "not a finite number"),
    ({"kwargs": {"n": 2**64}}, "kwargs", "does not fit in 64 bits"),
    ({"kwargs": {"d": {1: 2}}}, "kwargs", "keys must be strings"),
    ({"shell": True}, "shell", "only used with 'command'"),
    ({"timeout": 0}, "timeout", "out of range (must be > 0s"),
    ({"timeout": "forever"}, "timeout", "not a duration"),
    ({"timeout": "31d"}, "timeout", "out of range"),
    ({"retries": -1}, "retries", "out of range (0..100)"),
    ({"retries": 101}, "retries", "out of range"),
    ({"retries": 1.5}, "retries", "expected a whole number"),
    ({"retries": True}, "retries", "expected a whole number"),
    ({"backoff": "-1s"}, "backoff", "not a duration"),
    ({"backoff": "10m"}, "backoff_max", "5m is less than backoff (10m)"),
    ({"backoff_max": "8d"}, "backoff_max", "out of range"),
    ({"overlap": "queue"}, "overlap", "'queue' is not one of allow, forbid, replace"),
    ({"misfire": "twice"}, "misfire", "not one of skip, once, all"),
    ({"grace": -1}, "grace", ">= 0"),
    ({"result_ttl": "500ms"}, "result_ttl", "out of range (must be >= 1s and <= 7d)"),
    ({"result_ttl": "8d"}, "result_ttl", "out of range"),
    ({"tags": "nightly"}, "tags", "expected a list of strings"),
    ({"tags": [1]}, "tags", "expected a list of strings"),
    ({"tags": [""]}, "tags", "not a valid tag"),
    ({"tags": ["x" * 65]}, "tags", "not a valid tag"),
    ({"tags": ["a\nb"]}, "tags", "not a valid tag"),
    ({"tags": [str(i) for i in range(33)]}, "tags", "33 tags, at most 32"),
    ({"tags": ["a", "a"]}, "tags", "duplicate"),
    ({"paused": "no"}, "paused", "expected true or false"),
    ({"kwargs": {"s": "\ud800"}}, "kwargs", "lone surrogate"),
    ({"kwargs": {"\udfff": 1}}, "kwargs", "lone surrogate"),
    ({"kwargs": {"blob": "x" * (MAX_WIRE_BYTES + 1)}}, None, "too large"),
]


@pytest.mark.parametrize(("changes", "field", "words"), BAD)
def test_bad_fields_are_named(changes: dict[str, Any], field: str | None, words: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job({**FULL, **changes}, where="jobs.toml")
    error = caught.value
    assert error.where == "jobs.toml"
    assert error.field == field
    assert words in error.reason
    message = str(error)
    assert "\n" not in message
    assert message.startswith("jobs.toml: ")
    if field is not None:
        assert f": {field}: " in message
    if error.job is not None:
        assert message.startswith(f"jobs.toml: job {error.job!r}: ")


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ({"id": "j"}, "call", "exactly one target, 'call', 'command' or 'http'"),
        ({"id": "j", "call": "x", "http": {"url": "http://h"}}, "http", "'call' is also given"),
        ({"id": "j", "command": []}, "command", "is empty"),
        ({"id": "j", "command": ""}, "command", "is empty"),
        ({"id": "j", "command": "echo 'unclosed"}, "command", "cannot split"),
        ({"id": "j", "command": ["a", 1]}, "command", "a string or a list of strings"),
        ({"id": "j", "command": ["a", "b"], "shell": True}, "command", "as one string"),
        ({"id": "j", "command": ["a\x00"]}, "command", "NUL"),
        ({"id": "j", "command": "a", "env": {"K": 1}}, "env", "table of strings to strings"),
        ({"id": "j", "command": "a", "env": {"A=B": "1"}}, "env", "not a valid environment variable"),
        ({"id": "j", "command": "a", "cwd": 7}, "cwd", "expected a string"),
        ({"id": "j", "command": "a", "cwd": "/\ud800"}, "cwd", "lone surrogate"),
        ({"id": "j", "command": ["a\ud800"]}, "command", "lone surrogate"),
        ({"id": "j", "command": "a", "env": {"K": "\ud800"}}, "env", "lone surrogate"),
        ({"id": "j", "command": "a", "kwargs": {}}, "kwargs", "only used with 'call'"),
        ({"id": "j", "http": "http://h"}, "http", "expected a table"),
        ({"id": "j", "http": {}}, "http.url", "missing"),
        ({"id": "j", "http": {"url": "ftp://h/x"}}, "http.url", "not an http:// or https:// URL"),
        ({"id": "j", "http": {"url": "http://"}}, "http.url", "not an http"),
        ({"id": "j", "http": {"url": "http://h:99999/"}}, "http.url", "not an http"),
        ({"id": "j", "http": {"url": "http://h/a b"}}, "http.url", "not an http"),
        ({"id": "j", "http": {"url": "http://h", "method": "FETCH"}}, "http.method", "not one of GET, POST"),
        ({"id": "j", "http": {"url": "http://h", "methd": "GET"}}, "http.methd", "did you mean 'http.method'"),
        ({"id": "j", "http": {"url": "http://h", "headers": {"A": "b\r\nEvil: 1"}}}, "http.headers", "not a valid header"),
        ({"id": "j", "http": {"url": "http://h", "headers": {"A B": "c"}}}, "http.headers", "not a valid header"),
        ({"id": "j", "http": {"url": "http://h", "body": {"t": b"x"}}}, "http.body", "bytes is not plain data"),
        ({"id": "j", "call": "x", "timezone": "UTC"}, "timezone", "only used with a schedule"),
        ({"id": "j", "call": "x", "mode": "all"}, "mode", "mode 'all' needs a schedule"),
        ({"id": "j", "call": "x", "schedule": "@every 1s", "timezone": 3}, "timezone", "time zone"),
        ({"call": "x"}, "id", "missing (every job needs an id)"),
    ],
)
def test_more_bad_definitions(table: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job(table, where="api")
    assert caught.value.field == field
    assert words in caught.value.reason
    assert f": {field}: " in str(caught.value)


def test_not_a_table() -> None:
    with pytest.raises(JobError, match=r"^api: expected a table of job settings, got list"):
        parse_job([1, 2], where="api")  # type: ignore[arg-type]


def test_error_message_shape_and_pickling() -> None:
    error = JobError("jobs.toml", "why", job="backup", field="schedule")
    assert str(error) == "jobs.toml: job 'backup': schedule: why"
    assert str(JobError("jobs.toml", "why", field="id", index=3)) == "jobs.toml: job #3: id: why"
    assert str(JobError("wire", "why")) == "wire: why"
    assert str(JobError("my  jobs.toml", "a\nb")) == "my  jobs.toml: a b"
    assert isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert (again.where, again.job, again.field, again.reason, str(again)) == (
        "jobs.toml",
        "backup",
        "schedule",
        "why",
        str(error),
    )


def test_direct_construction_is_validated() -> None:
    with pytest.raises(JobError, match=r"^job definition: job 'x': retries: "):
        JobSpec(id="x", target=CallTarget("f"), schedule=None, retries=1000)
    with pytest.raises(JobError, match=r"target: expected a CallTarget"):
        JobSpec(id="x", target="f", schedule=None)  # type: ignore[arg-type]
    with pytest.raises(JobError, match=r"schedule: expected a Schedule"):
        JobSpec(id="x", target=CallTarget("f"), schedule="* * * * *")  # type: ignore[arg-type]
    spec = JobSpec(id="x", target=CallTarget("f"), schedule=None, tags=["a"], timeout=5)  # type: ignore[arg-type]
    assert spec.tags == ("a",) and spec.timeout == 5.0 and isinstance(spec.timeout, float)


def test_retry_delay() -> None:
    spec = parse_job({"id": "r", "call": "f", "retries": 100, "backoff": "2s", "backoff_max": "30s"}, where="api")
    assert [spec.retry_delay(attempt) for attempt in range(1, 8)] == [0.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert spec.retry_delay(101) == 30.0
    assert spec.retry_delay(10**6) == 30.0
    assert parse_job({"id": "r", "call": "f", "backoff": 0}, where="api").retry_delay(5) == 0.0


# --------------------------------------------------------------------------- the wire

_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=10)
_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=10,
)
_chars = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
_identifiers = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,8}\Z")
_functions = st.one_of(
    st.builds(lambda a, b: f"{a}:{b}", st.lists(_identifiers, min_size=1, max_size=3).map(".".join), _identifiers),
    _identifiers,
)
_targets = st.one_of(
    st.builds(CallTarget, _functions, st.dictionaries(_text, _plain, max_size=3)),
    st.builds(
        CommandTarget,
        st.lists(st.text(alphabet=_chars, max_size=8), min_size=1, max_size=4).filter(
            lambda argv: argv[0] != ""
        ),
        st.just(False),
        st.dictionaries(st.from_regex(r"\A[A-Z_]{1,6}\Z"), st.text(alphabet=_chars, max_size=6), max_size=2),
        st.one_of(st.none(), st.just("/tmp")),
    ),
    st.builds(CommandTarget, st.just(("echo hi | wc -c",)), st.just(True)),
    st.builds(
        HttpTarget,
        st.sampled_from(["http://example.com/", "https://10.0.0.1:8443/hook?x=1", "http://h"]),
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
        st.dictionaries(st.from_regex(r"\A[A-Za-z-]{1,8}\Z"), st.text(alphabet="abc xyz", max_size=6), max_size=2),
        _plain,
    ),
)
_schedules = st.one_of(
    st.none(),
    st.builds(
        parse_schedule,
        st.sampled_from(["*/5 * * * *", "@daily", "@every 90s", "*/10 * * * * *", "30 2 * * mon-fri"]),
        st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
    ),
)
_seconds = st.floats(min_value=0, max_value=86400, allow_nan=False)


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    schedule = draw(_schedules)
    backoff = draw(_seconds)
    return JobSpec(
        id=draw(_ids),
        target=draw(_targets),
        schedule=schedule,
        mode=draw(st.sampled_from(["one", "all"] if schedule is not None else ["one"])),
        timeout=draw(st.one_of(st.none(), st.floats(min_value=0.001, max_value=86400))),
        retries=draw(st.integers(0, 100)),
        backoff=backoff,
        backoff_max=draw(st.floats(min_value=backoff, max_value=7 * 86400)),
        overlap=draw(st.sampled_from(["allow", "forbid", "replace"])),
        misfire=draw(st.sampled_from(["skip", "once", "all"])),
        grace=draw(_seconds),
        result_ttl=draw(st.floats(min_value=1, max_value=7 * 86400)),
        tags=tuple(draw(st.lists(st.text(alphabet="abcxyz-:", min_size=1, max_size=8), max_size=4, unique=True))),
        paused=draw(st.booleans()),
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs())
def test_wire_round_trip(spec: JobSpec) -> None:
    wire = spec.to_wire()
    assert JobSpec.from_wire(wire) == spec
    decoded = msgpack.unpackb(msgpack.packb(wire))
    assert decoded == wire
    again = JobSpec.from_wire(decoded)
    assert again == spec
    assert again.to_wire() == wire
    wire["tags"].append("mutated")  # to_wire hands out a copy
    assert spec.to_wire() != wire


def test_wire_is_plain_and_versioned() -> None:
    wire = parse_job(FULL, where="jobs.toml").to_wire()
    assert wire["v"] == 1
    assert wire["target"] == {"kind": "call", "function": "myapp.tasks:report", "kwargs": FULL["kwargs"]}
    assert (wire["schedule"], wire["timezone"], wire["timeout"]) == ("*/5 * * * *", "Europe/Paris", 30.0)
    one_off = parse_job({"id": "o", "command": "ls -l"}, where="api").to_wire()
    assert (one_off["schedule"], one_off["timezone"]) == (None, None)
    assert one_off["target"] == {"kind": "command", "argv": ["ls", "-l"], "shell": False, "env": {}, "cwd": None}


WIRE = parse_job(FULL, where="jobs.toml").to_wire()


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"v": 2}, "v", "unsupported wire version 2"),
        ({"v": True}, "v", "unsupported wire version"),
        ({"v": 1.0}, "v", "unsupported wire version"),
        ({"extra": 1}, None, "unknown key 'extra'"),
        ({"schedule": "*/5  * * * *"}, "schedule", "not in normal form"),
        ({"schedule": "61 * * * *"}, "schedule", "minute"),
        ({"schedule": None}, "timezone", "given without a schedule"),
        ({"timezone": "Nowhere/Land"}, "timezone", "unknown time zone"),
        ({"timeout": "30s"}, "timeout", "expected a number of seconds"),
        ({"timeout": 10**30}, "timeout", "expected a number of seconds"),
        ({"retries": 2.0}, "retries", "whole number"),
        ({"tags": "a"}, "tags", "list of strings"),
        ({"tags": [1]}, "tags", "list of strings"),
        ({"paused": 0}, "paused", "true or false"),
        ({"target": {"kind": "call", "function": "f"}}, "target", "missing kwargs"),
        ({"target": {"kind": "rpc"}}, "target", "kind call, command or http"),
        ({"target": {"kind": "command", "argv": "ls", "shell": False, "env": {}, "cwd": None}}, "command", "list"),
        ({"target": {"kind": "command", "argv": ["ls"], "shell": 1, "env": {}, "cwd": None}}, "shell", "true or false"),
        ({"target": {"kind": "http", "url": "http://h", "method": "post", "headers": {}, "body": None}}, "http.method", "not one of"),
        ({"target": {"kind": "call", "function": "f", "kwargs": [["a", 1]]}}, "kwargs", "expected a map"),
    ],
)
def test_from_wire_refuses(changes: dict[str, Any], field: str | None, words: str) -> None:
    with pytest.raises(JobError) as caught:
        JobSpec.from_wire({**WIRE, **changes})
    assert caught.value.where == "wire"
    assert caught.value.field == field
    assert words in caught.value.reason
    assert caught.value.job == "report"


def test_from_wire_refuses_missing_keys_and_non_maps() -> None:
    for key in WIRE:
        if key != "v":
            broken = dict(WIRE)
            del broken[key]
            with pytest.raises(JobError, match=f"missing {key}"):
                JobSpec.from_wire(broken)
    for garbage in (None, 1, "x", [WIRE], b"\x00"):
        with pytest.raises(JobError, match="^wire: "):
            JobSpec.from_wire(garbage)


_garbage = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(["one", "all", "call", "http", "command", "* * * * *", "UTC", "@every 1s"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.one_of(st.sampled_from(sorted(WIRE)), st.text(max_size=4), st.integers()), children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=200)
@given(data=_garbage)
def test_from_wire_only_raises_job_error_on_garbage(data: Any) -> None:
    try:
        JobSpec.from_wire(data)
    except JobError:
        pass


@settings(max_examples=200)
@given(
    key=st.sampled_from(sorted(WIRE)),
    value=_garbage,
    target_key=st.sampled_from(["kind", "function", "kwargs", "argv", "url", "method", "headers", "body", "x"]),
)
def test_from_wire_only_raises_job_error_on_mutated_specs(key: str, value: Any, target_key: str) -> None:
    for broken in ({**WIRE, key: value}, {**WIRE, "target": {**WIRE["target"], target_key: value}}):
        try:
            JobSpec.from_wire(broken)
        except JobError:
            pass


# --------------------------------------------------------------------------- files

JOBS_TOML = """
[[job]]
id = "report"
schedule = "*/5 * * * *"
timezone = "Europe/Paris"
call = "myapp.tasks:report"
kwargs = { region = "eu" }
timeout = "30s"
retries = 2

[[job]]
id = "backup"
schedule = "30 2 * * *"
command = "backup --fast"
env = { K = "v" }

[[job]]
id = "ping"
schedule = "@every 30s"
mode = "all"
http = { url = "https://example.com/ping", method = "GET" }

[[job]]
id = "adhoc"
command = ["cleanup", "--all"]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    return str(path)


def test_load_jobs_file(tmp_path: Path) -> None:
    jobs = load_jobs_file(write(tmp_path, JOBS_TOML))
    assert [job.id for job in jobs] == ["report", "backup", "ping", "adhoc"]
    assert jobs[0].target == CallTarget("myapp.tasks:report", {"region": "eu"})
    assert jobs[0].schedule == parse_schedule("*/5 * * * *", "Europe/Paris")
    assert jobs[1].target == CommandTarget(("backup", "--fast"), env={"K": "v"})
    assert jobs[2].mode == "all" and jobs[2].target == HttpTarget("https://example.com/ping", "GET")
    assert jobs[3].schedule is None
    assert load_jobs_file(write(tmp_path, "")) == []


def test_load_jobs_file_refuses_duplicate_ids(tmp_path: Path) -> None:
    path = write(tmp_path, JOBS_TOML + '\n[[job]]\nid = "backup"\ncall = "x"\n')
    with pytest.raises(JobError) as caught:
        load_jobs_file(path)
    assert (caught.value.where, caught.value.job, caught.value.field) == (path, "backup", "id")
    assert str(caught.value) == f"{path}: job 'backup': id: duplicate id (job #2 has it too)"


def test_load_jobs_file_syntax_error_names_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[[job]]\nid = "a"\ncall = "x\n')
    with pytest.raises(JobError) as caught:
        load_jobs_file(path)
    assert caught.value.where == path
    assert str(caught.value).startswith(f"{path}: not valid TOML: ")
    assert "line 3" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_load_jobs_file_errors(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read jobs file"):
        load_jobs_file(str(tmp_path / "missing.toml"))
    path = write(tmp_path, '[[jobs]]\nid = "a"\ncall = "x"\n')
    with pytest.raises(JobError, match=r"jobs: unknown key \(did you mean 'job'\?\); jobs are \[\[job\]\] tables"):
        load_jobs_file(path)
    path = write(tmp_path, 'job = "x"\n')
    with pytest.raises(JobError, match=r"job: expected \[\[job\]\] tables"):
        load_jobs_file(path)
    path = write(tmp_path, '[[job]]\nid = "a"\ncall = "x"\n[[job]]\ncall = "y"\n')
    with pytest.raises(JobError, match=r"jobs.toml: job #2: id: missing"):
        load_jobs_file(path)
    path = write(tmp_path, '[[job]]\nid = "backup"\nschedule = "61 * * * *"\ncall = "x"\n')
    with pytest.raises(JobError) as caught:
        load_jobs_file(path)
    assert str(caught.value) == (
        f"{path}: job 'backup': schedule: '61 * * * *' is not a valid cron expression (minute '61' out of range 0-59)"
    )
    path = write(tmp_path, '[[job]]\nid = "a"\ncall = "x"\nkwargs = { when = 2026-01-01 }\n')
    with pytest.raises(JobError, match=r"job 'a': kwargs: date is not plain data"):
        load_jobs_file(path)
    (tmp_path / "bad.toml").write_bytes(b'[[job]]\nid = "\xff"\n')
    with pytest.raises(JobError, match="not valid TOML"):
        load_jobs_file(str(tmp_path / "bad.toml"))


# -- runtime (where an async def call runs) ---------------------------------------------------


def test_runtime_key_is_parsed_checked_and_only_for_call() -> None:
    spec = parse_job({"id": "a", "call": "m:f", "runtime": "asyncio"}, where="t")
    assert spec.target == CallTarget("m:f", runtime="asyncio")
    assert parse_job({"id": "a", "call": "m:f"}, where="t").target.runtime == "auto"  # type: ignore[union-attr]
    with pytest.raises(JobError, match="runtime: 'curio' is not one of auto, trio, asyncio"):
        parse_job({"id": "a", "call": "m:f", "runtime": "curio"}, where="t")
    with pytest.raises(JobError, match="runtime: only used with 'call'"):
        parse_job({"id": "a", "command": "true", "runtime": "asyncio"}, where="t")
    with pytest.raises(JobError, match="runtime"):
        JobSpec(id="a", target=CallTarget("m:f", runtime="gevent"), schedule=None)


def test_runtime_travels_on_the_wire_only_when_not_auto() -> None:
    auto = JobSpec(id="a", target=CallTarget("m:f"), schedule=None)
    assert "runtime" not in auto.to_wire()["target"]  # what every version reads
    forced = JobSpec(id="a", target=CallTarget("m:f", runtime="asyncio"), schedule=None)
    wire = forced.to_wire()
    assert wire["target"]["runtime"] == "asyncio"
    assert JobSpec.from_wire(wire) == forced
    assert JobSpec.from_wire(auto.to_wire()) == auto
    wire["target"]["runtime"] = "auto"  # one wire form per spec
    with pytest.raises(JobError, match="runtime"):
        JobSpec.from_wire(wire)
    wire["target"]["runtime"] = 3
    with pytest.raises(JobError, match="runtime"):
        JobSpec.from_wire(wire)
