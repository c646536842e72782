"""The sidecar example's job functions: plain synchronous Python, imported by the agent.

The web app never imports this module: it names its functions
(``client.submit("tasks:build_report", ...)``) and the `peer agent` beside it,
started with this folder on its ``PYTHONPATH``, imports them and runs each in a
worker thread. Every agent of the cluster must be able to import them (they
run wherever a run's owner is): ship this file with every replica, as here.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import peer


def build_report(run: peer.RunContext, region: str, rows: int = 3, delay: float = 0.2) -> dict[str, Any]:
    """A stand-in for a slow report: ``rows`` steps of ``delay`` seconds, progress after each.
    An unknown region fails the run (the app answers it as a failure)."""
    if region not in ("eu", "us", "apac"):
        raise ValueError(f"unknown region {region!r}: eu, us or apac")
    lines = []
    for row in range(1, rows + 1):
        time.sleep(delay)
        lines.append(f"{region}-{row}")
        run.progress({"rows": row, "of": rows})
    return {"region": region, "lines": lines, "node": _node()}


def cleanup() -> dict[str, Any]:
    """The cron job (jobs.toml): here, only a line in ``$SIDECAR_JOURNAL`` per run, so that
    a test can see it run."""
    line = {"job": "cleanup", "node": _node(), "at_ms": int(time.time() * 1000)}
    path = os.environ.get("SIDECAR_JOURNAL")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
    return line


def _node() -> str:
    # The agent's name when it was given one through the environment, else the host's.
    return os.environ.get("PEER_NAME") or socket.gethostname()
