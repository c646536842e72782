"""The ``peer`` command: run an agent, ask one about its cluster, make keys.

    peer agent   [--name NAME] [--bind HOST:PORT] [--advertise HOST:PORT] [--seeds LIST]
                 [--api HOST:PORT] [--key-file F] [--profile lan|wan|local] [--config peer.toml] ...
    peer members [--json]      peer status [--json]      peer leave      peer keygen
    peer demo    [--nodes N]

Every agent option is also read from the TOML config and from ``PEER_*``
variables (``peer.settings``); flags win. Errors a person can act on are one
line on stderr, ``peer: error: ...``, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from peer.client import ClientError, call
from peer.keys import KeyringError, generate_key, load_keyring
from peer.settings import ConfigError, Settings, load
from peer.transport import BindError

EXIT_ERROR = 1

# (flag, settings key, help) for the agent's options.
AGENT_OPTIONS: list[tuple[str, str, str]] = [
    ("--name", "name", "node name, unique in the cluster (default: the host name)"),
    ("--bind", "bind", "HOST:PORT for gossip, UDP and TCP (default 0.0.0.0:7946; port 0: any free one)"),
    ("--advertise", "advertise", "HOST:PORT others reach this node at (default: the bound address)"),
    ("--seeds", "seeds", "comma-separated HOST:PORT or dns:NAME[:PORT] to join through"),
    ("--api", "api", "HOST:PORT of the control API (default 127.0.0.1:7947)"),
    ("--key-file", "key_file", "file of base64 cluster keys, one per line, the first signs (or PEER_KEY)"),
    ("--profile", "profile", "timing profile: lan (default), wan or local"),
    ("--join-timeout", "join_timeout", "seconds to wait for a seed to answer before giving up (0: forever; default 60)"),
    ("--dns-interval", "dns_interval", "seconds between resolutions of seed names (default 30)"),
    ("--hosts-file", "hosts_file", "an /etc/hosts-style file that answers for seed names before DNS"),
    ("--log-format", "log_format", "text (default) or json, one object per line"),
    ("--log-level", "log_level", "debug, info (default), warning or error"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.command(args)
        return result
    except (ConfigError, KeyringError, BindError, ClientError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"peer: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peer", description="A peer-to-peer job scheduler node.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    agent = commands.add_parser("agent", help="run a node")
    for flag, key, text in AGENT_OPTIONS:
        agent.add_argument(flag, dest=key, default=None, help=text)
    agent.add_argument("--config", help="TOML settings file (or PEER_CONFIG)")
    agent.set_defaults(command=run_agent)

    for name, function, text in [
        ("members", members, "list the members this agent knows"),
        ("status", status, "this agent's state and counters"),
        ("leave", leave, "make this agent leave the cluster gracefully and exit"),
    ]:
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--api", default=None, help="the agent's API HOST:PORT (default 127.0.0.1:7947, or PEER_API)")
        sub.add_argument("--config", help="TOML settings file to read api from (or PEER_CONFIG)")
        if name != "leave":
            sub.add_argument("--json", action="store_true", help="print one JSON document")
        sub.set_defaults(command=function)

    keygen = commands.add_parser("keygen", help="print a new random cluster key")
    keygen.set_defaults(command=lambda args: print(generate_key()) or 0)

    demo = commands.add_parser("demo", help="start a local cluster and show it at work")
    demo.add_argument("--nodes", type=int, default=5, help="agents to start (default 5)")
    demo.add_argument("--keep", action="store_true", help="keep the cluster running at the end, until Ctrl-C")
    demo.set_defaults(command=run_demo)
    return parser


# -- peer agent ------------------------------------------------------------------


def run_agent(args: argparse.Namespace) -> int:
    from peer.logs import configure
    from peer.runtime import Agent, AgentError

    flags = {key: getattr(args, key) for _, key, _ in AGENT_OPTIONS}
    settings = load(flags, config_path=args.config)
    configure(settings.log_format, settings.log_level)
    keyring = load_keyring(settings.key_file, os.environ)
    agent = Agent(settings, keyring)
    try:
        trio.run(_agent_main, agent)
    except BaseExceptionGroup as group:
        error = _find(group, (AgentError, BindError))
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
    from peer.runtime import AgentError

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if agent.leaving:
                raise AgentError(f"{signal.Signals(signum).name} again while leaving: stopped before the leave was complete")
            nursery.start_soon(agent.leave)


def _find(group: BaseExceptionGroup, types: tuple[type[BaseException], ...]) -> BaseException | None:
    for error in group.exceptions:
        if isinstance(error, types):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = _find(error, types)
            if found is not None:
                return found
    return None


# -- client commands ---------------------------------------------------------------


def _client_settings(args: argparse.Namespace) -> Settings:
    return load({"api": args.api}, config_path=args.config)


def members(args: argparse.Namespace) -> int:
    document = call(_client_settings(args).api, "/members")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    rows = [("NAME", "ADDRESS", "STATUS", "INCARNATION")]
    rows += [(m["name"], m["addr"], m["status"], str(m["incarnation"])) for m in document["members"]]
    print(format_table(rows))
    return 0


def status(args: argparse.Namespace) -> int:
    document = call(_client_settings(args).api, "/status")
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
        ("version", document["version"]),
    ]
    print(format_table(lines))
    return 0


def leave(args: argparse.Namespace) -> int:
    document = call(_client_settings(args).api, "/leave", method="POST", timeout=60.0)
    print(f"{document['name']} left the cluster")
    return 0


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from peer.demo import run

    return run(args.nodes, keep=args.keep)
