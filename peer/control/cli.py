"""The ``peer`` command: run an agent, ask one about its cluster and its jobs, make keys.

    peer agent   [--name NAME] [--bind HOST:PORT] [--advertise HOST:PORT] [--seeds LIST]
                 [--api HOST:PORT] [--key-file F] [--profile lan|wan|local] [--config peer.toml] ...
    peer members [--json]      peer status [--json]      peer leave      peer keygen
    peer jobs    [list | add FILE|- | show ID | pause ID | resume ID | rm ID] [--json]
    peer submit  JOB [--kwargs JSON] | --call MOD:FN [--kwargs JSON] [--runtime R] | --command CMD
                 [--id NAME] [--timeout S] [--retries N]           (prints the run id)
    peer runs    [JOB] [--state S] [--limit N] [--json]
    peer result  RUN [--wait [SECONDS]] [--json]   (exit 0 succeeded, 1 failed, 2 not finished)
    peer send    RUN DATA [--json]
    peer demo    [--nodes N] [--keep]

Every agent option is also read from the TOML config and from ``PEER_*``
variables (``peer.runtime.settings``); flags win. The client commands take ``--api``
and ``--config`` (or ``PEER_API``, ``PEER_CONFIG``) to find the agent,
``--api-token-file`` (or ``PEER_API_TOKEN``, ``PEER_API_TOKEN_FILE``) for its
token and ``--api-ca`` (or ``PEER_API_CA``) for an HTTPS API's CA, and
``--json`` to print the API's document instead of a table. Errors a person
can act on are one line on stderr, ``peer: error: ...``, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

import trio

from peer.control.client import WAIT_CHUNK_SECONDS, Client, ClientError, Endpoint, api_path, split_scheme
from peer.control.text import format_table
from peer.jobs.definition import JobError, default_job_id, load_jobs_file, parse_job
from peer.runtime.keys import KeyringError, generate_key, load_keyring
from peer.runtime.settings import ConfigError, load
from peer.runtime.transport import BindError

EXIT_ERROR = 1
EXIT_NOT_FINISHED = 2  # `peer result`: the run has not finished (yet)

# Runs in these states are over; anything else may still change.
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "lost", "missed", "skipped"})

# (flag, settings key, help) for the agent's options.
AGENT_OPTIONS: list[tuple[str, str, str]] = [
    ("--name", "name", "node name, unique in the cluster (default: the host name)"),
    ("--bind", "bind", "HOST:PORT for gossip, UDP and TCP (default 0.0.0.0:7946; port 0: any free one)"),
    ("--advertise", "advertise", "HOST:PORT others reach this node at (default: the bound address)"),
    ("--seeds", "seeds", "comma-separated HOST:PORT or dns:NAME[:PORT] to join through"),
    ("--api", "api", "HOST:PORT of the control API (default 127.0.0.1:7947)"),
    ("--key-file", "key_file", "file of base64 cluster keys, one per line, the first signs (or PEER_KEY)"),
    ("--encrypt", "encrypt", "encrypt gossip and streams with the cluster key: on (the flag alone), off or switching"),
    ("--profile", "profile", "timing profile: lan (default), wan or local"),
    ("--join-timeout", "join_timeout", "seconds to wait for a seed to answer before giving up (0: forever; default 60)"),
    ("--dns-interval", "dns_interval", "seconds between resolutions of seed names (default 30)"),
    ("--hosts-file", "hosts_file", "an /etc/hosts-style file that answers for seed names before DNS"),
    ("--log-format", "log_format", "text (default) or json, one object per line"),
    ("--log-level", "log_level", "debug, info (default), warning or error"),
    ("--jobs", "jobs", "a TOML file of jobs ([[job]] tables) to define when the node is up"),
    ("--drain-timeout", "drain_timeout", "seconds a leaving node lets its running jobs finish (default 30)"),
    ("--load-factor", "load_factor", "bounded loads: no node owns more than this x the mean of the cron jobs (default: none)"),
    (
        "--api-token-file", "api_token_file",
        "file holding the API's bearer token (or PEER_API_TOKEN, or api_token in the config); needed to serve the API beyond loopback",
    ),
    ("--api-hosts", "api_hosts", "comma-separated host names the API answers to, besides IP addresses and localhost"),
    ("--api-origins", "api_origins", "comma-separated browser origins allowed to call the API (default: none)"),
    ("--api-tls-cert", "api_tls_cert", "certificate (PEM) to serve the API over HTTPS; with --api-tls-key"),
    ("--api-tls-key", "api_tls_key", "the certificate's private key (PEM)"),
    ("--api-max-waits", "api_max_waits", "most requests waiting on runs (?wait=) at a time; more get 429 (default 256)"),
    ("--api-max-connections", "api_max_connections", "most API connections open at a time (default 512)"),
    ("--allowed-commands", "allowed_commands", "comma-separated programs this node's runs may run (default: any; '' for none)"),
    ("--allowed-calls", "allowed_calls", "comma-separated modules whose functions this node's runs may call (default: any)"),
    ("--max-running-runs", "max_running_runs", "runs this node runs at once; more wait, pending (default 64)"),
    ("--max-pending-runs", "max_pending_runs", "pending runs in the cluster past which submits are refused with 429 (default 5000)"),
]
# (flag, settings key, help) for the agent's on/off options: given, they are on.
AGENT_SWITCHES: list[tuple[str, str, str]] = [
    ("--metrics-public", "metrics_public", "serve /metrics without the token (for a scraper that has none)"),
]


def main(argv: Sequence[str] | None = None, *, tools: Sequence[AddCommand] = ()) -> int:
    """The ``peer`` program; ``tools`` add the commands of the layer above
    (``peer demo``: see ``peer.__main__``)."""
    parser = _parser(tools)
    args = parser.parse_args(argv)
    try:
        result: int = args.command(args)
        return result
    except (ConfigError, KeyringError, BindError, ClientError, JobError, UsageError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130


class UsageError(Exception):
    """A combination of arguments that makes no sense; the message says why."""


def _fail(message: str) -> int:
    print(f"peer: error: {message}", file=sys.stderr)
    return EXIT_ERROR


# Adds a subcommand to the ``peer`` program's subparsers.
AddCommand = Callable[[Any], None]


def _parser(tools: Sequence[AddCommand] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peer", description="A peer-to-peer job scheduler node.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    agent = commands.add_parser("agent", help="run a node")
    for flag, key, text in AGENT_OPTIONS:
        if key == "encrypt":  # --encrypt alone means on
            agent.add_argument(flag, dest=key, default=None, help=text, nargs="?", const="on")
        else:
            agent.add_argument(flag, dest=key, default=None, help=text)
    for flag, key, text in AGENT_SWITCHES:
        agent.add_argument(flag, dest=key, action="store_const", const=True, default=None, help=text)
    agent.add_argument("--config", help="TOML settings file (or PEER_CONFIG)")
    agent.set_defaults(command=run_agent)

    for name, function, text in [
        ("members", members, "list the members this agent knows"),
        ("status", status, "this agent's state and counters"),
        ("leave", leave, "make this agent leave the cluster gracefully and exit"),
    ]:
        sub = commands.add_parser(name, help=text)
        _client_options(sub, json_flag=name != "leave")
        sub.set_defaults(command=function)

    _jobs_parser(commands)

    submit_parser = commands.add_parser(
        "submit", help="run a job once, somewhere in the cluster; prints the run id",
        description="Run a defined job once (JOB), or a one-off --call or --command. Prints the run id only.",
    )
    submit_parser.add_argument("job", nargs="?", metavar="JOB", help="the id of a defined job to run now")
    target = submit_parser.add_mutually_exclusive_group()
    target.add_argument("--call", metavar="MOD:FN", help="run this Python function (package.module:function)")
    target.add_argument("--command", dest="command_line", metavar="CMD", help="run this command line (split like a shell would)")
    submit_parser.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the function, a JSON object")
    submit_parser.add_argument(
        "--runtime", choices=("auto", "trio", "asyncio"), help="where an async --call function runs (default auto: by its code)"
    )
    submit_parser.add_argument(
        "--id", metavar="NAME", help="the one-off job's id, which names its run (default: the function or program name)"
    )
    submit_parser.add_argument("--timeout", metavar="S", help="seconds (or 30s, 5m...) before the run is stopped")
    submit_parser.add_argument("--retries", metavar="N", type=int, help="extra attempts after a failure")
    _client_options(submit_parser, json_flag=True)
    submit_parser.set_defaults(command=submit)

    runs_parser = commands.add_parser("runs", help="list runs, newest first")
    runs_parser.add_argument("job", nargs="?", metavar="JOB", help="only this job's runs")
    runs_parser.add_argument("--state", help="only runs in this state (pending, running, succeeded, failed, ...; comma-separated)")
    runs_parser.add_argument("--limit", type=int, default=None, help="at most this many (default 100)")
    _client_options(runs_parser, json_flag=True)
    runs_parser.set_defaults(command=runs)

    result_parser = commands.add_parser(
        "result", help="print a run's result",
        description="Print a run's result as JSON. Exit status: 0 succeeded; 1 failed (or cancelled, lost, "
        "missed, skipped: the error goes to stderr) or an error; 2 not finished (its state goes to stderr).",
    )
    result_parser.add_argument("run", metavar="RUN_ID")
    result_parser.add_argument(
        "--wait", nargs="?", type=float, const=math.inf, default=None, metavar="SECONDS",
        help="wait until the run has finished (at most SECONDS, if given)",
    )
    _client_options(result_parser, json_flag=True)
    result_parser.set_defaults(command=result)

    send_parser = commands.add_parser("send", help="send an update to a running run")
    send_parser.add_argument("run", metavar="RUN_ID")
    send_parser.add_argument("data", metavar="DATA", help="JSON if it parses as JSON, else sent as a string")
    _client_options(send_parser, json_flag=True)
    send_parser.set_defaults(command=send)

    keygen = commands.add_parser("keygen", help="print a new random cluster key")
    keygen.set_defaults(command=lambda args: print(generate_key()) or 0)

    for add_command in tools:
        add_command(commands)
    return parser


# -- peer agent ------------------------------------------------------------------


def run_agent(args: argparse.Namespace) -> int:
    from peer.control.server import HttpControlPlane, raise_descriptor_limit
    from peer.runtime.agent import Agent, AgentError
    from peer.runtime.exceptions import leaf_exceptions
    from peer.runtime.logs import configure

    flags = {key: getattr(args, key) for _, key, _ in (*AGENT_OPTIONS, *AGENT_SWITCHES)}
    settings = load(flags, config_path=args.config)
    configure(settings.log_format, settings.log_level)
    before, after = raise_descriptor_limit()  # descriptors for gossip, whatever the API's clients hold
    if after > before:
        logging.getLogger("peer.agent").debug("open file limit raised from %d to %d", before, after)
    keyring = load_keyring(settings.key_file, os.environ)
    jobs = load_jobs_file(settings.jobs) if settings.jobs else []
    agent = Agent(settings, keyring, jobs=jobs, control_plane=HttpControlPlane())
    try:
        trio.run(_agent_main, agent)
    except BaseExceptionGroup as group:
        error = next((leaf for leaf in leaf_exceptions(group) if isinstance(leaf, (AgentError, BindError))), None)
        if error is None:
            raise
        return _fail(str(error))
    except (AgentError, BindError) as error:
        return _fail(str(error))
    return 0


async def _agent_main(agent: Any) -> None:
    await agent.bind()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_leave_on_signal, agent, nursery)
        await agent.run()
        nursery.cancel_scope.cancel()


async def _leave_on_signal(agent: Any, nursery: trio.Nursery) -> None:
    from peer.runtime.agent import AgentError

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if agent.leaving:
                raise AgentError(f"{signal.Signals(signum).name} again while leaving: stopped before the leave was complete")
            nursery.start_soon(agent.leave)


# -- client commands ---------------------------------------------------------------


def _client_options(parser: argparse.ArgumentParser, *, json_flag: bool, inherited: bool = False) -> None:
    """``--api``, ``--config``, ``--api-token-file``, ``--api-ca`` and
    ``--json``. A subcommand of a command that has them too (``peer jobs
    list``) takes them as well, without resetting what was given before it
    (``peer jobs --api X list``)."""
    default: Any = argparse.SUPPRESS if inherited else None
    parser.add_argument(
        "--api", default=default, help="the agent's API [https://]HOST:PORT (default 127.0.0.1:7947, or PEER_API)"
    )
    parser.add_argument("--config", default=default, help="TOML settings file to read api from (or PEER_CONFIG)")
    parser.add_argument(
        "--api-token-file", default=default, help="file holding the API's token (or PEER_API_TOKEN_FILE, PEER_API_TOKEN)"
    )
    parser.add_argument("--api-ca", default=default, help="CA file to verify an HTTPS API's certificate (or PEER_API_CA)")
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS if inherited else False, help="print the API's JSON document"
        )


def _endpoint(args: argparse.Namespace) -> Endpoint:
    """The agent's API as the flags, ``PEER_*`` and the config say: its
    address (``https://`` for TLS, also implied by ``api_tls_cert`` in the
    config), its token and the CA that verifies it."""
    environ = dict(os.environ)
    text = args.api if args.api is not None else environ.get("PEER_API")
    environ.pop("PEER_API", None)  # read here: it may carry a scheme
    if args.api_token_file is not None:
        environ.pop("PEER_API_TOKEN", None)  # the flag wins
    tls, address = (None, None) if text is None else split_scheme(text)
    flags = {"api": address, "api_token_file": args.api_token_file, "api_ca": args.api_ca}
    settings = load(flags, environ=environ, config_path=args.config)
    if tls is None:
        tls = settings.api_tls_cert is not None
    return Endpoint(settings.api, tls=tls, token=settings.api_token_value(), ca_file=settings.api_ca)


def _call(args: argparse.Namespace, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> dict[str, Any]:
    """The JSON document at ``path``, through ``peer.Client`` (the one HTTP path)."""
    with Client(_endpoint(args), timeout=timeout) as client:
        return client.request(method, path, body=body)


def members(args: argparse.Namespace) -> int:
    document = _call(args, "/members")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    rows = [("NAME", "ADDRESS", "STATUS", "INCARNATION")]
    rows += [(m["name"], m["addr"], m["status"], str(m["incarnation"])) for m in document["members"]]
    print(format_table(rows))
    return 0


def status(args: argparse.Namespace) -> int:
    document = _call(args, "/status")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    counts = document["members"]
    lines = [
        ("node", f"{document['name']} at {document['addr']} ({document['state']}, incarnation {document['incarnation']})"),
        ("ready", "yes" if document["ready"] else "no"),
        ("members", ", ".join(f"{count} {status}" for status, count in counts.items())),
        ("cluster key", "yes" if document["cluster_key"] else "NO: the cluster is open"),
        ("health score", str(document["health_score"])),
        ("uptime", f"{document['uptime_seconds']:.0f}s"),
        ("dropped frames", ", ".join(f"{n} {reason}" for reason, n in document["drops"].items() if n) or "none"),
    ]
    scheduler = document.get("scheduler")
    if scheduler is not None:
        lines += [
            ("scheduler", f"{scheduler['role']}, {scheduler['eligible']} eligible node(s)"),
            ("jobs", f"{scheduler['jobs']} defined, {scheduler['unowned']} without an owner"),
            ("running", ", ".join(scheduler["running"]) or "none"),
            ("late jobs", ", ".join(f"{job} (tick {tick})" for job, tick in scheduler["late"].items()) or "none"),
        ]
    lines += [
        ("version", document["version"]),
    ]
    print(format_table(lines))
    return 0


def leave(args: argparse.Namespace) -> int:
    document = _call(args, "/leave", method="POST", timeout=60.0)
    print(f"{document['name']} left the cluster")
    return 0


# -- jobs and runs ------------------------------------------------------------------


def _jobs_parser(commands: Any) -> None:
    jobs_parser = commands.add_parser("jobs", help="list, add, show, pause, resume and remove jobs")
    _client_options(jobs_parser, json_flag=True)
    jobs_parser.set_defaults(command=jobs_list)
    actions = jobs_parser.add_subparsers(metavar="ACTION")
    listing = actions.add_parser("list", help="every job, with its owner and next tick (the default)")
    listing.set_defaults(command=jobs_list)
    add = actions.add_parser(
        "add", help="define or redefine jobs",
        description="Define or redefine jobs from a TOML file of [[job]] tables, or from JSON on stdin "
        "with '-' (one job object, a list of them, or {\"jobs\": [...]}). Every job is checked here first; "
        "none is defined unless all are valid.",
    )
    add.add_argument("file", metavar="FILE|-")
    add.set_defaults(command=jobs_add)
    for name, function, text in [
        ("show", jobs_show, "a job's definition, owner, next tick and latest runs"),
        ("pause", jobs_pause, "stop a job's ticks (a running run carries on)"),
        ("resume", jobs_resume, "start a paused job's ticks again, from now"),
        ("rm", jobs_rm, "remove a job (its runs' records stay until they expire)"),
    ]:
        action = actions.add_parser(name, help=text)
        action.add_argument("id", metavar="ID")
        action.set_defaults(command=function)
    for action in (listing, add, *(actions.choices[name] for name in ("show", "pause", "resume", "rm"))):
        _client_options(action, json_flag=True, inherited=True)


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2))


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def jobs_list(args: argparse.Namespace) -> int:
    document = _call(args, "/jobs")
    if args.json:
        _print_json(document)
        return 0
    rows = [("ID", "SCHEDULE", "MODE", "OWNER", "NEXT", "PAUSED")]
    for job in document["jobs"]:
        rows.append(
            (job["id"], _schedule_text(job), job["mode"], _dash(job["owner"]), _dash(job["next_tick"]), "yes" if job["paused"] else "no")
        )
    print(format_table(rows))
    return 0


def _schedule_text(job: dict[str, Any]) -> str:
    if job["schedule"] is None:
        return "- (on submit)"
    zone = job.get("timezone")
    return job["schedule"] if zone in (None, "UTC") else f"{job['schedule']} ({zone})"


def _read_job_tables(source: str) -> list[Any]:
    """The job definitions of a TOML file or of JSON on stdin (``-``), each
    checked here first (``JobError`` naming the file, the job and the field)."""
    if source == "-":
        text = sys.stdin.read()
        try:
            document = json.loads(text)
        except ValueError as error:
            raise JobError("-", f"not valid JSON: {error}") from None
        if isinstance(document, dict) and "jobs" in document:
            document = document["jobs"]
        tables = document if isinstance(document, list) else [document]
        seen: set[str] = set()
        for number, table in enumerate(tables, start=1):
            spec = parse_job(table, where="-", index=number)
            if spec.id in seen:
                raise JobError("-", "duplicate id", job=spec.id, field="id")
            seen.add(spec.id)
    else:
        load_jobs_file(source)  # every check, with the file's name in the message
        with open(source, "rb") as file:
            tables = tomllib.load(file).get("job", [])
    if not tables:
        raise JobError(source, "no jobs in it ([[job]] tables)")
    return list(tables)


def jobs_add(args: argparse.Namespace) -> int:
    tables = _read_job_tables(args.file)
    document = _call(args, "/jobs", method="POST", body={"jobs": tables}, timeout=10.0)
    if args.json:
        _print_json(document)
        return 0
    for job in document["jobs"]:
        print(f"{'defined' if job['changed'] else 'unchanged'} {job['id']}")
    return 0


def jobs_show(args: argparse.Namespace) -> int:
    document = _call(args, api_path("jobs", args.id))
    if args.json:
        _print_json(document)
        return 0
    spec = document["definition"]
    timeout = "none" if spec["timeout"] is None else f"{spec['timeout']:g}s"
    retries = f"{spec['retries']}"
    if spec["retries"]:
        retries += f" (backoff {spec['backoff']:g}s, doubling up to {spec['backoff_max']:g}s)"
    lines = [
        ("id", document["id"]),
        ("schedule", _schedule_text(spec)),
        ("mode", spec["mode"]),
        ("target", f"{document['target']['kind']} {document['target']['summary']}"),
        ("owner", _dash(document["owner"])),
        ("next tick", _dash(document["next_tick"])),
        ("paused", "yes" if document["paused"] else "no"),
        ("timeout", timeout),
        ("retries", retries),
        ("overlap", spec["overlap"]),
        ("misfire", f"{spec['misfire']} (grace {spec['grace']:g}s)"),
        ("result ttl", f"{spec['result_ttl']:g}s"),
        ("tags", ", ".join(spec["tags"]) or "-"),
        ("since", document["since"]),
    ]
    print(format_table(lines))
    print()
    print(_runs_table(document["runs"]) if document["runs"] else "no runs")
    return 0


def _job_action(args: argparse.Namespace, action: str, method: str, done: str) -> int:
    segments = ("jobs", args.id, action) if action else ("jobs", args.id)
    document = _call(args, api_path(*segments), method=method)
    if args.json:
        _print_json(document)
    else:
        print(f"{done} {args.id}")
    return 0


def jobs_pause(args: argparse.Namespace) -> int:
    return _job_action(args, "pause", "POST", "paused")


def jobs_resume(args: argparse.Namespace) -> int:
    return _job_action(args, "resume", "POST", "resumed")


def jobs_rm(args: argparse.Namespace) -> int:
    return _job_action(args, "", "DELETE", "removed")


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise UsageError(f"{flag}: not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: expected a JSON object, like '{{\"n\": 3}}'")
    return value


def submit(args: argparse.Namespace) -> int:
    given = [what for what, value in (("JOB", args.job), ("--call", args.call), ("--command", args.command_line)) if value]
    if len(given) != 1:
        raise UsageError(
            "give one of JOB (a defined job), --call MOD:FN or --command CMD" + (f"; got {' and '.join(given)}" if given else "")
        )
    kwargs = None if args.kwargs is None else _json_object(args.kwargs, "--kwargs")
    if args.job:
        extra = [
            flag
            for flag, value in (("--id", args.id), ("--timeout", args.timeout), ("--retries", args.retries), ("--runtime", args.runtime))
            if value is not None
        ]
        if extra:
            raise UsageError(f"{', '.join(extra)}: only for a one-off --call or --command; JOB runs as defined")
        body: dict[str, Any] = {"job": args.job}
        if kwargs is not None:
            body["kwargs"] = kwargs
    else:
        if args.command_line and kwargs is not None:
            raise UsageError("--kwargs: only for --call")
        if args.command_line and args.runtime is not None:
            raise UsageError("--runtime: only for --call")
        name = args.call or (args.command_line.split() or ["adhoc"])[0]
        body = {"id": args.id or default_job_id(name)}
        if args.call:
            body["call"] = args.call
            if kwargs is not None:
                body["kwargs"] = kwargs
            if args.runtime is not None:
                body["runtime"] = args.runtime
        else:
            body["command"] = args.command_line
        if args.timeout is not None:
            body["timeout"] = args.timeout
        if args.retries is not None:
            body["retries"] = args.retries
        parse_job(body, where="submit")  # refuse it here, naming the flag's field
    document = _call(args, "/submit", method="POST", body=body)
    if args.json:
        _print_json(document)
    else:
        print(document["run"])
    return 0


def _runs_table(records: Sequence[dict[str, Any]]) -> str:
    rows = [("RUN", "STATE", "ATTEMPT", "OWNER", "STARTED", "FINISHED")]
    for record in records:
        times = record.get("iso", {})
        rows.append(
            (
                record["id"], record["state"], str(record.get("attempt", 1)), _dash(record.get("owner")),
                _dash(times.get("started")), _dash(times.get("finished")),
            )
        )
    return format_table(rows)


def runs(args: argparse.Namespace) -> int:
    query = {"job": args.job, "state": args.state, "limit": args.limit}
    document = _call(args, api_path("runs", query=query))
    if args.json:
        _print_json(document)
        return 0
    print(_runs_table(document["runs"]))
    return 0


def result(args: argparse.Namespace) -> int:
    if args.wait is not None and not args.wait >= 0:
        raise UsageError(f"--wait: expected seconds >= 0, got {args.wait:g}")
    remaining = args.wait
    with Client(_endpoint(args), timeout=10.0) as client:
        while True:
            wait = None if remaining is None else min(remaining, WAIT_CHUNK_SECONDS)
            path = api_path("runs", args.run, query={"wait": None if wait is None else f"{wait:g}"})
            record = client.request("GET", path, timeout=10.0 + (wait or 0.0))
            if record["state"] in FINISHED_STATES or wait is None or remaining <= wait:
                break
            remaining -= wait
    if args.json:
        _print_json(record)
    state = record["state"]
    if state == "succeeded":
        if not args.json:
            print(json.dumps(record.get("result")))
        return 0
    if state in FINISHED_STATES:
        print(f"peer: run {record['id']} {state}: {record.get('error') or 'no error given'}", file=sys.stderr)
        return EXIT_ERROR
    where = f" on {record['owner']}" if record.get("owner") else ""
    print(f"peer: run {record['id']} has not finished: {state} (attempt {record.get('attempt', 1)}{where})", file=sys.stderr)
    return EXIT_NOT_FINISHED


def send(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError:
        data = args.data
    document = _call(args, api_path("runs", args.run, "send"), method="POST", body={"data": data})
    if args.json:
        _print_json(document)
    else:
        print(f"sent to {args.run}")
    return 0
