"""The ``peer`` program: the control plane's commands (``peer.control.cli``)
and the tools' (``peer demo``). It sits above every layer, so the CLI need
not import the tools built on it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from peer.control.cli import main as control_main


def add_demo_command(commands: Any) -> None:
    demo = commands.add_parser("demo", help="start a local cluster and show it at work")
    demo.add_argument("--nodes", type=int, default=5, help="agents to start (default 5)")
    demo.add_argument("--keep", action="store_true", help="keep the cluster running at the end, until Ctrl-C")
    demo.set_defaults(command=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from peer.tools.demo import run  # only when asked: it starts a whole cluster's tooling

    return run(args.nodes, keep=args.keep)


def main(argv: Sequence[str] | None = None) -> int:
    return control_main(argv, tools=(add_demo_command,))


if __name__ == "__main__":
    raise SystemExit(main())
